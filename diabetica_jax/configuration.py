"""Typed YAML configuration: nested dataclasses, dotted command-line overrides, strict validation.

A config file is a YAML mapping whose keys mirror the dataclass fields. Unknown keys, wrong types
and impossible values are errors that name the file and the dotted key, raised before any work
starts: types are checked here, values by each section's `__post_init__` (raising FieldError), and
checks spanning sections by the parent's. Each field's `help` metadata documents it (and generates
the config reference in docs/configuration.md); `path` metadata marks the fields holding file paths.

A section that renamed a key lists it in a `RENAMED_KEYS` class variable ({old: new dotted key, relative to the
section}): an old key in a config is an error naming the new one, and `upgrade_renamed_keys` moves the old keys
of a file the program wrote itself (a run directory's config) to the new ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from diabetica_jax.errors import UserError


def cache_dir() -> Path:
    """This user's cache of converted tokenizers and token stores: $DIABETICA_JAX_CACHE, else
    $XDG_CACHE_HOME/diabetica_jax (~/.cache/diabetica_jax)."""
    root = os.environ.get("DIABETICA_JAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "diabetica_jax")
    return Path(root)

T = TypeVar("T")

# A config is a few levels of sections and lists, and at most a few thousand values. YAML aliases let a short file
# stand for an exponentially large tree (a "billion laughs": nine aliases of nine aliases ...), and nesting
# thousands deep overflows Python's stack in PyYAML, in build() and in repr(): past these bounds a config is
# refused where it is read, before anything walks it.
MAX_DEPTH = 32  # nested mappings and lists (dotted override keys too)
MAX_NODES = 100_000  # values, with every alias expanded


class ConfigFileError(UserError, ValueError):
    """A configuration that cannot be used; the message names the source and the dotted key."""


class InputError(UserError, ValueError):
    """An input file or directory a user gave that cannot be used (missing, empty, binary, wrong columns, from
    another version or model). The message names the file (and the record, row or key) and says what to do; the
    CLI prints it as one line and exits with 2."""


class FieldError(ValueError):
    """A section's `__post_init__` refusing the value at `key` (dotted, relative to that section).

    build() reports it under the section's own dotted prefix, so the same section names its keys
    correctly wherever it is nested (`data.seq_len` in a train config, `train.data.seq_len` in a run).
    """

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


_REPR = reprlib.Repr()  # a few items of a few levels: never the whole of a large (or alias-expanded) value
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def shown(value: Any, limit: int = 80) -> str:
    """repr(value) for an error message, at most `limit` characters, built without walking all of `value`."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def finite_number(value: Any, where: str, error: type[Exception]) -> float:
    """A finite number; a numeric string too (PyYAML reads 1e-4, without a dot, as a string). NaN and infinity
    (YAML's .nan / .inf, the "nan" string, Python's json reading NaN) are `error` naming `where`: no setting means
    them, and NaN trains silently."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{where}: expected a number, got {shown(value)}")
    if not math.isfinite(value):
        raise error(f"{where}: must be a finite number, got {value}")
    return float(value)


def require_positive(section: Any, *names: str) -> None:
    """FieldError for the first of the section's fields `names` that is not > 0."""
    for name in names:
        value = getattr(section, name)
        if value <= 0:
            raise FieldError(name, f"must be positive, got {shown(value)}")


def require_at_most(section: Any, limit: int, *names: str, why: str = "") -> None:
    """FieldError for the first of the section's fields `names` above `limit` (a size no hardware could hold: refused
    before any work, not as an allocation failure once the run started). `why` says where the bound comes from."""
    for name in names:
        value = getattr(section, name)
        if value > limit:
            raise FieldError(name, f"{value} is beyond the largest possible, {limit}" + (f" ({why})" if why else ""))


def field(default: Any, help: str, path: bool | Callable[[dict], bool] = False, **kwargs: Any) -> Any:
    """A dataclass field with documentation.

    path: the field holds a file path (or a list of them), so a relative one written in a config
    file is read relative to that file's folder. A function of the section's YAML mapping instead
    of True decides per entry (an input's `path` is a hub dataset name with `format: hf_hub`).
    """
    metadata = {"help": help, "path": path}
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return dataclasses.field(default_factory=lambda d=default: d, metadata=metadata, **kwargs)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def read_text_file(path: str | Path, what: str = "file", error: type[Exception] = InputError) -> str:
    """The UTF-8 text (a BOM dropped) of a file a user named (`what` says what it should be, e.g. "config
    file"). `error` naming the path when it is missing, a directory, not a regular file (a FIFO would block the
    read) or not text (a binary file)."""
    path = Path(path)
    if not path.is_file():
        problem = (f"a directory, not a {what}" if path.is_dir() else
                   "not a regular file (a pipe or a device?)" if path.exists() else f"{what} not found")
        raise error(f"{path}: {problem}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); binary data where "
                    f"a {what} belongs") from e


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that no config is: nested past MAX_DEPTH, past MAX_NODES with its aliases expanded, or an
    alias inside the node it names (a structure that contains itself). `key`: the dotted key where, if any."""

    def __init__(self, problem: str, mark, key: str):
        super().__init__(problem=problem, problem_mark=mark)
        self.key = key if len(key) <= 60 else key[:57] + "..."


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: each node's size and depth with aliases expanded are added up as the file is
    composed (an alias adds its node's figures, known already), so the bounds hold before anything is built, in
    time linear in the file however far its aliases would expand. A refusal names the dotted key it happened at."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._keys: list[str] = []  # the dotted key of the node being composed, part by part
        self._extent: dict[yaml.Node, tuple[int, int]] = {}  # node -> (nodes, depth), aliases expanded

    def _refuse(self, problem: str, mark) -> _Refused:
        return _Refused(problem, mark, "".join(self._keys).lstrip("."))

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            if node not in self._extent:  # still being composed: the alias is inside its own anchor
                raise self._refuse(f"alias *{event.anchor} is inside the node it names (a structure that contains "
                                   "itself)", event.start_mark)
            return node
        # a mapping's value comes with its key's node, a list item with its position, a mapping's key with None
        self._keys.append(f".{index.value}" if isinstance(index, yaml.ScalarNode) else
                          f"[{index}]" if isinstance(index, int) else "")
        try:
            if len(self._keys) > MAX_DEPTH:  # before PyYAML's own recursion goes deeper
                raise self._refuse(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            node = super().compose_node(parent, index)
            if isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            else:
                children = node.value if isinstance(node, yaml.SequenceNode) else []
            nodes = 1 + sum(self._extent[c][0] for c in children)
            depth = 1 + max((self._extent[c][1] for c in children), default=0)
            if depth > MAX_DEPTH:
                raise self._refuse(f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded",
                                   node.start_mark)
            if nodes > MAX_NODES:
                raise self._refuse(f"holds more than {MAX_NODES} values once its aliases are expanded (an alias "
                                   "bomb?); a config needs far fewer", node.start_mark)
        finally:
            self._keys.pop()
        self._extent[node] = (nodes, depth)
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except ValueError as e:  # a date like 2024-13-45, an integer of 5,000 digits: at the node it comes from
            raise yaml.constructor.ConstructorError(None, None, str(e), node.start_mark) from e


def parse_yaml(text: str) -> Any:
    """The value of one YAML document, within MAX_DEPTH and MAX_NODES; yaml.YAMLError otherwise (yaml_problem()
    words it in one line)."""
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: where (the key, line and column) and what; PyYAML's own message spans four lines."""
    if not isinstance(error, yaml.MarkedYAMLError):
        return str(error).replace("\n", " ")

    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    if isinstance(error, _Refused):
        where = at(error.problem_mark)
        return f"{error.key} ({where}): {error.problem}" if error.key else f"{where}: {error.problem}"
    mark = error.problem_mark or error.context_mark
    text = f"{at(mark)}: {error.problem or error.context}" if mark else str(error.problem or error.context)
    if error.context and error.problem:
        text += f" ({error.context}" + (f" at {at(error.context_mark)}" if error.context_mark else "") + ")"
    return f"not valid YAML at {text}"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping. Missing, a folder, not UTF-8 text (a binary file), not YAML, empty (nothing but
    comments: a truncated or wrong file; write `{}` for all defaults), not a mapping, or past the bounds (MAX_DEPTH,
    MAX_NODES): ConfigFileError."""
    path = Path(path)
    try:
        data = parse_yaml(read_text_file(path, "config file", ConfigFileError))
    except yaml.YAMLError as e:
        raise ConfigFileError(f"{path}: {yaml_problem(e)}") from e
    if data is None:
        raise ConfigFileError(f"{path}: empty config file (no settings, only blanks or comments); write `{{}}` "
                              "in it for all the defaults, or check that this is the file you meant")
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping of sections")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides; values are parsed as YAML scalars or lists."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigFileError(f"override {shown(item)}: expected KEY=VALUE, e.g. loop.steps=100")
        parts = key.split(".")
        if len(parts) > MAX_DEPTH:
            raise ConfigFileError(f"override {shown(item)}: a key of {len(parts)} dotted parts; configs nest at "
                                  f"most {MAX_DEPTH} deep")
        try:
            value = parse_yaml(raw) if raw else ""
        except yaml.YAMLError as e:
            raise ConfigFileError(f"override {shown(item)}: cannot parse the value ({yaml_problem(e)})") from e
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigFileError(f"override {shown(item)}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def as_override(key: str, value: Any) -> str:
    """The `key=value` override that sets `key` to `value` (as apply_overrides reads it back): a string as it
    is when YAML reads it back as that string, else quoted (JSON is YAML); anything else as JSON."""
    if isinstance(value, str):
        try:
            plain = parse_yaml(value) == value
        except yaml.YAMLError:
            plain = False
        return f"{key}={value if plain else json.dumps(value)}"
    return f"{key}={json.dumps(value)}"


def field_info(cls: type, key: str) -> tuple[Any, str, Any]:
    """(default, help, type) of the field at dotted `key` of config dataclass `cls`, for the option that sets it."""
    *sections, name = key.split(".")
    for part in sections:
        cls = typing.get_type_hints(cls)[part]
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return default, f.metadata.get("help", ""), typing.get_type_hints(cls)[name]


def config_data(cls: type, path: str | Path | None, overrides: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """The mapping that a config file (none: all defaults) and `key=value` overrides make, ready for
    build(), and the source name that errors quote.

    Relative paths written in the file are made relative to the file's folder before the overrides
    apply: paths given on the command line stay relative to the working directory.
    """
    data, source = {}, "defaults"
    if path:
        data, source = load_yaml(path), str(path)
        resolve_paths(cls, data, Path(path).parent)
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides"
    return data, source


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Config dataclass `cls` from a YAML file (None: the defaults) and `key=value` overrides, checked."""
    return build(cls, *config_data(cls, path, overrides))


def resolve_paths(cls: type, data: Any, base: Path) -> None:
    """In place: the relative values of `cls`'s path fields (recursively) joined onto `base`."""
    if not isinstance(data, dict):
        return  # build() reports the wrong shape
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        hint, value, item_type = hints[f.name], data[f.name], _section_list(hints[f.name])
        if dataclasses.is_dataclass(hint):
            resolve_paths(hint, value, base)
        elif item_type is not None and isinstance(value, list):
            for item in value:
                resolve_paths(item_type, item, base)
        else:
            mark = f.metadata.get("path")
            if mark is True or (callable(mark) and mark(data)):
                data[f.name] = _joined(base, value)


def _section_list(hint: Any) -> type | None:
    """The section type of a `list[Section]` field, else None."""
    args = typing.get_args(hint)
    return args[0] if typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]) else None


def _joined(base: Path, value: Any) -> Any:
    if isinstance(value, list):
        return [_joined(base, v) for v in value]
    if isinstance(value, str) and value and not Path(value).is_absolute():
        return str((base / value).resolve())
    return value  # absolute, empty, or not a string (build() checks the type)


def build(cls: type[T], data: dict[str, Any], source: str, prefix: str = "") -> T:
    """Instantiate dataclass `cls` from `data`, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigFileError(f"{source}: {prefix.rstrip('.') or 'config'}: expected a mapping, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    renamed = _renamed_keys(cls, data, hints)
    if renamed:
        old, new = next(iter(renamed.items()))
        raise ConfigFileError(f"{source}: {prefix}{old}: renamed to {prefix}{new}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigFileError(f"{source}: unknown key '{prefix}{unknown[0]}'; known keys: {sorted(fields)}")
    values = {}
    for name, value in data.items():
        values[name] = _coerce(hints[name], value, source, f"{prefix}{name}")
    try:
        return cls(**values)
    except ConfigFileError:
        raise
    except FieldError as e:
        raise ConfigFileError(f"{source}: {prefix}{e.key}: {e.message}") from e
    except (TypeError, ValueError) as e:
        raise ConfigFileError(f"{source}: {prefix.rstrip('.') or 'config'}: {e}") from e


def _renamed_keys(cls: type, data: dict[str, Any], hints: dict[str, Any]) -> dict[str, str]:
    """The old keys of `cls` (its RENAMED_KEYS) that `data` uses, with their new names. An old key may be the name
    of a section now (eval's `model: DIR` is `model: {path: DIR}`): it is the old one when its value is no mapping."""
    def is_old(key: str) -> bool:
        if key not in hints:
            return True
        value = data[key]
        return dataclasses.is_dataclass(hints[key]) and value is not None and not isinstance(value, dict)

    return {old: new for old, new in getattr(cls, "RENAMED_KEYS", {}).items() if old in data and is_old(old)}


def upgrade_renamed_keys(cls: type[T], data: Any) -> Any:
    """In place: the renamed keys of `cls` (recursively) moved to their new names, for reading a file this program
    wrote before the rename (a training run's train_config.json). Returns `data`."""
    if not isinstance(data, dict):
        return data  # build() reports the wrong shape
    hints = typing.get_type_hints(cls)
    for old, new in _renamed_keys(cls, data, hints).items():
        value = data.pop(old)
        *sections, last = new.split(".")
        node = data
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]) and f.name in data:
            upgrade_renamed_keys(hints[f.name], data[f.name])
    return data


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value if value is not None else {}, source, key + ".")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, source, key)
            except ConfigFileError as e:
                errors.append(str(e))
        raise ConfigFileError(errors[0] if errors else f"{source}: {key}: unexpected value {shown(value)}")
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigFileError(f"{source}: {key}: {shown(value)} is not one of {list(typing.get_args(hint))}")
        return value
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigFileError(f"{source}: {key}: expected a mapping, got {shown(value)}")
        return {_coerce(key_type, k, source, f"{key}.{k}"): _coerce(value_type, v, source, f"{key}.{k}")
                for k, v in value.items()}
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigFileError(f"{source}: {key}: expected a list, got {shown(value)}")
        items = [_coerce(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigFileError(f"{source}: {key}: expected true or false, got {shown(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigFileError(f"{source}: {key}: expected an integer, got {shown(value)}")
        return value
    if hint is float:
        return finite_number(value, f"{source}: {key}", ConfigFileError)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigFileError(f"{source}: {key}: expected a string, got {shown(value)}")
        return value
    if hint is Any:
        return value
    raise ConfigFileError(f"{source}: {key}: unsupported field type {hint}")


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def reference(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every field, recursively: the configuration reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(reference(hint, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if typing.get_origin(hint) is typing.Literal:
            type_name = "one of " + ", ".join(map(str, typing.get_args(hint)))
        else:
            type_name = str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__
            type_name = re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", type_name)  # no module paths
        shown = repr(default)
        if len(shown) > 60:  # long built-in lists (term weights, targets) are summarised
            shown = f"{type(default).__name__} of {len(default)} (built in)"
        rows.append((f"{prefix}{f.name}", type_name, shown, f.metadata.get("help", "")))
        item = _section_list(hint)
        if item is not None:  # a list of sections: document one entry's keys
            rows.extend(reference(item, f"{prefix}{f.name}[]."))
    return rows


def markdown_reference(cls: type) -> str:
    """The configuration reference as a Markdown table (embedded in docs/configuration.md; a test keeps it current)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, type_name, default, help_text in reference(cls):
        type_name = type_name.replace("|", "or")
        lines.append(f"| `{key}` | {type_name} | `{default}` | {help_text} |")
    return "\n".join(lines)
