"""Typed YAML configuration: nested dataclasses, dotted command-line overrides, strict validation.

A config file is a YAML mapping whose keys mirror the dataclass fields. Unknown keys, wrong types
and impossible values are errors that name the file and the dotted key, raised before any work
starts. Each field's `help` metadata documents it (and generates the README's config reference).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigFileError(ValueError):
    """A configuration that cannot be used; the message names the source and the dotted key."""


def field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with documentation."""
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return dataclasses.field(default_factory=lambda d=default: d, metadata={"help": help}, **kwargs)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigFileError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping of sections")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides; values are parsed as YAML scalars or lists."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigFileError(f"override {item!r}: expected KEY=VALUE, e.g. loop.steps=100")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise ConfigFileError(f"override {item!r}: cannot parse value ({e})") from e
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigFileError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def build(cls: type[T], data: dict[str, Any], source: str, prefix: str = "") -> T:
    """Instantiate dataclass `cls` from `data`, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigFileError(f"{source}: {prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
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
    except (TypeError, ValueError) as e:
        raise ConfigFileError(f"{source}: {prefix.rstrip('.') or 'config'}: {e}") from e


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
        raise ConfigFileError(errors[0] if errors else f"{source}: {key}: unexpected value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigFileError(f"{source}: {key}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigFileError(f"{source}: {key}: expected a mapping, got {value!r}")
        return {_coerce(key_type, k, source, f"{key}.{k}"): _coerce(value_type, v, source, f"{key}.{k}")
                for k, v in value.items()}
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigFileError(f"{source}: {key}: expected a list, got {value!r}")
        items = [_coerce(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigFileError(f"{source}: {key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigFileError(f"{source}: {key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigFileError(f"{source}: {key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigFileError(f"{source}: {key}: expected a string, got {value!r}")
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
        item = typing.get_args(hint)[0] if typing.get_origin(hint) is list and typing.get_args(hint) else None
        if dataclasses.is_dataclass(item):  # a list of sections: document one entry's keys
            rows.extend(reference(item, f"{prefix}{f.name}[]."))
    return rows


def markdown_reference(cls: type) -> str:
    """The configuration reference as a Markdown table (embedded in the README; a test keeps it current)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, type_name, default, help_text in reference(cls):
        type_name = type_name.replace("|", "or")
        lines.append(f"| `{key}` | {type_name} | `{default}` | {help_text} |")
    return "\n".join(lines)
