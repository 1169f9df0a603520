"""Reading compiled HLO text in tests: its computations, their ops, and which computations each op calls.

    module = compiled_hlo(fn, *args)              # jax.jit(fn).lower(*args).compile(), parsed
    [op for op in module.ops("dot") if op.dims[-1] == vocab]

`ops` walks every computation reachable from the entry (or from `root`), following while bodies and
conditions, fusions' `calls=`, reductions' `to_apply=` and conditionals' branches; each computation is
visited once, however many ops call it. The CPU compiler folds leading dimensions together (a
[b, c, v] dot is printed as [b*c, v]), so compare products of dimensions, not shapes, where that matters.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator

import jax

# compiled text names each computation's signature; the text JAX hands XLA (Lowered.as_text(dialect="hlo")) does not
_HEADER = re.compile(r"^(?P<entry>ENTRY\s+)?%?(?P<name>[\w.\-]+)(?:\s+\(.*\)\s*->\s*.*)?\s*\{\s*$")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")
_ARRAY = re.compile(r"(?P<dtype>[a-z]+[0-9a-z]*)\[(?P<dims>[0-9,]*)\]")
_OPCODE = re.compile(r"\s*(?P<opcode>[\w\-]+)\(")
_ONE_CALL = re.compile(r"\b(?:calls|body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_CALL_LIST = re.compile(r"\b(?:calls|branch_computations|called_computations)=\{([^}]*)\}")


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    opcode: str
    dtype: str | None  # None for tuple-shaped results
    dims: tuple[int, ...] | None
    calls: tuple[str, ...]  # computations this op runs
    text: str

    @property
    def size(self) -> int:
        return math.prod(self.dims) if self.dims is not None else 0


@dataclasses.dataclass
class HloModule:
    computations: dict[str, list[Op]]
    entry: str

    def reachable(self, root: str | None = None) -> list[str]:
        """Names of the computations `root` (default: the entry) runs, itself included, each once."""
        seen, stack = [], [root or self.entry]
        while stack:
            name = stack.pop()
            if name in seen or name not in self.computations:
                continue
            seen.append(name)
            stack.extend(called for op in self.computations[name] for called in op.calls)
        return seen

    def ops(self, opcode: str | None = None, root: str | None = None) -> Iterator[Op]:
        for name in self.reachable(root):
            yield from (op for op in self.computations[name] if opcode is None or op.opcode == opcode)

    def while_bodies(self) -> list[str]:
        return [body for op in self.ops("while") for body in re.findall(r"\bbody=%?([\w.\-]+)", op.text)]


def _shape_end(rest: str) -> int:
    """Where the result shape at the start of `rest` ends: a balanced (...) tuple, or one array token."""
    if not rest.startswith("("):
        return len(rest.split(" ", 1)[0])
    depth = 0
    for i, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return i + 1
    raise ValueError(f"unbalanced tuple shape in {rest!r}")


def _parse_op(line: str) -> Op | None:
    match = _OP.match(line)
    if match is None:
        return None
    rest = match["rest"]
    end = _shape_end(rest)
    shape, after = rest[:end], rest[end:]
    opcode = _OPCODE.match(after)
    if opcode is None:
        return None
    array = _ARRAY.match(shape)
    dtype, dims = (None, None) if array is None else (
        array["dtype"], tuple(int(d) for d in array["dims"].split(",") if d))
    calls = set(_ONE_CALL.findall(after))
    for listed in _CALL_LIST.findall(after):
        calls.update(name.strip().lstrip("%") for name in listed.split(",") if name.strip())
    return Op(match["name"], opcode["opcode"], dtype, dims, tuple(sorted(calls)), line.strip())


def parse_hlo(text: str) -> HloModule:
    """The computations of an HLO module's text (`Compiled.as_text()`, or a Lowered's `as_text(dialect="hlo")`),
    by name."""
    computations: dict[str, list[Op]] = {}
    entry, current = None, None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header is not None:
            current = header["name"]
            computations[current] = []
            if header["entry"]:
                entry = current
        elif line.startswith("}"):
            current = None
        elif current is not None:
            op = _parse_op(line)
            if op is not None:
                computations[current].append(op)
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    return HloModule(computations, entry)


def compiled_hlo(fn, *args, **kwargs) -> HloModule:
    """`fn` (jitted here unless it already is) compiled for these arguments, parsed."""
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    return parse_hlo(jitted.lower(*args, **kwargs).compile().as_text())
