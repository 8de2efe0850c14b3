"""Small name -> object registries (after timm's `_registry.py`): architectures, modality adapters, heads,
samplers, tasks and schedules are all found by name, and a third party adds its own with `register`.

>>> from mmdiff.registry import Registry
>>> colors = Registry("color")
>>> @colors.register("red")
... def red(): return "#f00"
>>> colors.get("red")()
'#f00'

A registry may name the modules that register its built-in entries (`provided_by`); they are imported on its first
lookup, not before, so `import mmdiff` declares every built-in without importing torch or any model code.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "Registry",
    "ARCHITECTURES",
    "ADAPTERS",
    "HEADS",
    "SAMPLERS",
    "TASKS",
    "SCHEDULES",
    "DATASETS",
    "CONVERTERS",
]


def natural_key(name: str) -> list[Any]:
    """Sort key that orders `model-2` before `model-10`."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class Registry:
    """A named table of objects with helpful lookup errors.

    Args:
        kind: what the entries are ("sampler", "schedule", ...); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._providers: list[str] = []  # modules still to import before the next lookup (see `provided_by`)

    def provided_by(self, *modules: str) -> None:
        """Names modules whose import registers entries here; each is imported on the registry's first use after
        this call (a lookup, `in`, `list`, `len`, `add`), once, so declaring them costs nothing until then.

        The package (`mmdiff/__init__.py`, the top floor) declares the built-ins this way: a lower floor that looks
        up a converter or a task by name finds it without importing the floor above, and `import mmdiff` stays
        light. A module that fails to import raises from the lookup and is tried again on the next one.

        >>> widgets = Registry("widget")
        >>> widgets.provided_by("colorsys")  # a module whose import would call widgets.add(...)
        >>> widgets.list()  # the first lookup imports it
        []
        """
        self._providers += [m for m in modules if m not in self._providers]

    def _load_providers(self) -> None:
        while self._providers:
            module = self._providers.pop(0)  # popped first: the module's own lookups while importing don't recurse
            try:
                importlib.import_module(module)
            except BaseException:
                self._providers.insert(0, module)
                raise

    def register(self, name: str | None = None, *, override: bool = False, **meta: Any) -> Callable[[Any], Any]:
        """Decorator that adds an object under `name` (default: its `__name__`).

        Works with and without parentheses: `@reg.register`, `@reg.register()`, `@reg.register("name")`.

        Args:
            name: lookup name.
            override: replace an existing entry instead of raising.
            **meta: free-form metadata kept beside the entry (see `meta`).
        """
        if name is not None and not isinstance(name, str):  # used bare: `@reg.register` hands us the object
            obj, name = name, None
            self.add(obj.__name__, obj, override=override, **meta)
            return obj

        def decorator(obj: Any) -> Any:
            self.add(name or obj.__name__, obj, override=override, **meta)
            return obj

        return decorator

    def add(self, name: str, obj: Any, *, override: bool = False, **meta: Any) -> None:
        """Adds `obj` under `name` (the non-decorator form of `register`)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} names must be non-empty strings, got {name!r}")
        self._load_providers()  # a built-in of the same name is there first, as if the package were imported eagerly
        if name in self._entries and not override and self._entries[name] is not obj:
            raise ValueError(
                f"{self.kind} {name!r} is already registered; pass override=True to replace it or pick another name"
            )
        self._entries[name] = obj
        self._meta[name] = dict(meta)

    def remove(self, name: str) -> Any:
        """Removes and returns the entry called `name` (unknown names raise like `get`)."""
        obj = self.get(name)
        del self._entries[name]
        del self._meta[name]
        return obj

    def get(self, name: str) -> Any:
        """Returns the entry called `name`; an unknown name raises KeyError listing the closest names."""
        self._load_providers()
        if name in self._entries:
            return self._entries[name]
        raise KeyError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        self._load_providers()
        close = difflib.get_close_matches(name, list(self._entries), n=5, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        known = ", ".join(self.list()) or "(none registered)"
        return f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {known}"

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata given to `register` for `name`."""
        self.get(name)
        return self._meta[name]

    def list(self, pattern: str | list[str] = "*") -> list[str]:
        """Names matching one or more fnmatch patterns, in natural order."""
        self._load_providers()
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        names = [n for n in self._entries if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        return sorted(names, key=natural_key)

    def __contains__(self, name: object) -> bool:
        self._load_providers()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        self._load_providers()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


ARCHITECTURES = Registry("architecture")
ADAPTERS = Registry("adapter")  # keys are "modality/name", e.g. "vision/timm", "action/bins"
HEADS = Registry("head")
SAMPLERS = Registry("sampler")
TASKS = Registry("task")
SCHEDULES = Registry("schedule")
DATASETS = Registry("dataset")
# foreign checkpoint layouts (LLaDA, Dream, ...): name -> callable(folder, *, pretrained, device, dtype) -> model;
# a zoo card's `converter` field names one, `mmdiff.convert` registers them
CONVERTERS = Registry("converter")
