"""Typed dataclasses <-> plain dicts / YAML, strictly: an unknown or missing field is an error that names it.

Every config in mmdiff (core, training recipes, sampler defaults) is a dataclass; JSON and YAML are only their
serialisation. Typed values from command-line text live here too (`parse_override_value`, `positive_int`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["from_dict", "to_dict", "apply_overrides", "parse_override_value", "positive_int", "load_yaml"]


def to_dict(obj: Any) -> Any:
    """Recursively turns dataclasses (and objects with `to_dict`) into plain containers."""
    if hasattr(obj, "to_dict"):  # objects that define their own serialised form (VocabLayout, configs)
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


_YAML_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise TypeError(f"{where}: {value!r} fits none of {annotation}: {'; '.join(errors)}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if hasattr(annotation, "from_dict"):
            return annotation.from_dict(value)
        return from_dict(annotation, value, where=where)
    if origin is typing.Literal:
        if isinstance(value, bool) and value not in args:  # YAML 1.1 reads a bare no / off / yes / on as a bool
            value = next((a for a in args if isinstance(a, str) and a.lower() in _YAML_BOOL_WORDS[value]), value)
        if value not in args:
            raise ValueError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise TypeError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if annotation in (int, float, str, bool) and not isinstance(value, annotation):
        raise TypeError(f"{where} must be {annotation.__name__}, got {value!r}")
    if annotation is int and isinstance(value, bool):
        raise TypeError(f"{where} must be int, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str | None = None) -> T:
    """Builds dataclass `cls` from `data`, converting nested dataclasses, and rejecting unknown/missing fields."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise TypeError(f"{where} must be a mapping of fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in {where}; known fields: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"missing required field {where}.{name}")
    return cls(**kwargs)


def load_yaml(text: str) -> Any:
    """Safe YAML with YAML 1.2 floats: `1e-3` is a number (PyYAML's 1.1 rules read it as a string)."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass


@functools.cache
def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+0123456789."))
    return Loader


YAML12_FLOAT = re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$")


def parse_override_value(text: str) -> Any:
    """Parses a command-line value with YAML rules (`3`, `1e-3`, `true`, `[1, 2]`, `null`)."""
    return load_yaml(text)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (the command-line flags of the CLI and of every task's pipeline).

    >>> positive_int("3")
    3
    """
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Sets dotted keys (`optim.lr`) in a nested dict; values are kept as given."""
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {} if node.get(part) is None else node[part]
                if not isinstance(node[part], dict):
                    raise ValueError(f"override {dotted!r}: {part!r} is not a section")
            node = node[part]
        node[parts[-1]] = value
    return data
