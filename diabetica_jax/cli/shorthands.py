"""The options of generate, chat and serve as shorthands of their settings' keys: `--port 8001` is the override
`port=8001`, applied after those written out (so the option wins) and absent when not given (so a settings file's
value stands). An option's help and default come from the settings' field, and how it parses from its type: the
settings are declared once, in their dataclasses. No JAX is loaded here (`--help` answers at once).
"""

from __future__ import annotations

import argparse
import types
import typing

from diabetica_jax.configuration import as_override, field_info

# The dest of an option that is the shorthand of a config key: SHORTHAND + the dotted key.
SHORTHAND = "config key "


def shorthand(p, flag: str, cls: type, key: str, help: str | None = None, **kwargs) -> None:
    """Option `flag` as the shorthand of the dotted config key `key` of `cls`: given, it becomes the override
    `key=VALUE` (after the overrides written out, so the option wins); not given, the config's value stands, so the
    option has no default of its own. Its help is the field's (or `help`), with the field's default; how it parses
    follows the field's type unless `kwargs` say otherwise."""
    default, field_help, hint = field_info(cls, key)
    if help is None:
        absent = default is None or default is False or default == [] or default == {}  # 0 is a default to show
        help = field_help + ("" if absent else f" (default: {default})")
    kwargs = {**_parsing(flag, hint), **kwargs}
    if "action" not in kwargs and "choices" not in kwargs:  # choices show themselves
        kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
    p.add_argument(flag, dest=SHORTHAND + key, default=argparse.SUPPRESS, help=help, **kwargs)


def shorthands(p, cls: type, *keys: str) -> None:
    """shorthand() for each key, as the option its last part names: model.runtime.dtype -> --dtype."""
    for key in keys:
        shorthand(p, "--" + key.rsplit(".", 1)[-1].replace("_", "-"), cls, key)


def _parsing(flag: str, hint) -> dict:
    """How argparse reads an option for a field of type `hint`: a bool is a switch (--no-NAME sets it false), a
    list collects repeats, a Literal offers its values, numbers are parsed as such (a bad one: a usage error)."""
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(options) == 1:
        hint = options[0]  # X | None: as X
    if hint is bool:
        return {"action": "store_const", "const": not flag.startswith("--no-")}
    if typing.get_origin(hint) is list:
        return {"action": "append"}
    if typing.get_origin(hint) is typing.Literal:
        return {"choices": typing.get_args(hint)}
    return {"type": hint} if hint in (int, float) else {}


def shorthand_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides that the shorthand options given make, e.g. ["port=8001"] for --port 8001."""
    return [as_override(dest.removeprefix(SHORTHAND), value) for dest, value in vars(args).items()
            if dest.startswith(SHORTHAND)]


def mesh_sizes(text: str) -> dict[str, int]:
    """--mesh fsdp=4,tensor=2 -> {"fsdp": 4, "tensor": 2}."""
    sizes = {}
    for part in text.split(","):
        axis, _, size = part.partition("=")
        try:
            sizes[axis.strip()] = int(size)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected AXIS=SIZE[,AXIS=SIZE], got {text!r}") from None
    return sizes
