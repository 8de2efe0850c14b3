"""Imports run one way, from the ground up (DESIGN.md, "Parts and their words"): a module never imports one on a
higher floor, not at module level and not lazily inside a function (a lazy upward import is still upward, it only
hides the cycle until run time); where a lower floor needs something above it, a registry lookup by name serves.

The floors, lowest first (`FLOORS`), and what sits on each (`FLOOR_OF`, an explicit table: a module under `mmdiff/`
that the table does not place fails the test, so a new module gets a floor when it is added):

- core: the base every part stands on: the core transformer (`core/`), `vocab`, `registry`, `io`, `dataclass_io`,
  the zoo card dataclass (`card`, plain data, so the model can declare it), `hub` (a leaf download helper that imports
  nothing of mmdiff; the adapters fetch tower weights with it), the `canvas` data structure every task hands to the
  core, and the masked-diffusion objective and schedules (`diffusion/`).
- sampling: the samplers (`sampling/`) and the views of their decoding trajectories (`viz`), which task pipelines
  show from the command line.
- adapters: modality adapters (`adapters/`) and the audio input they read (`audio`).
- heads: output heads (`heads`).
- modeling: `DiffusionModel` (`modeling`) and LoRA weights on it (`lora`).
- tasks: one module per task (`tasks/`).
- evaluation: what trains and judges a task's model without the zoo: datasets (`data/`), simulators (`sim/`), metrics,
  the generated-output judges (`evaluation/`).
- zoo: foreign checkpoint layouts (`convert/`) and the zoo of named entries (`zoo`).
- train: runners that load zoo models: the training loop (`train/`) and the lm-eval harness (`harness`).
- cli: the command line (`cli`).
- package: `mmdiff/__init__.py`, the flat public API that re-exports every floor.

There are no exceptions. Private names (a leading underscore, or a name left out of its module's `__all__`) are
imported only inside their own package.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mmdiff"
FLOORS = ("core", "sampling", "adapters", "heads", "modeling", "tasks", "evaluation", "zoo", "train", "cli", "package")

# module or package -> floor; the longest matching prefix places a module (a package entry covers its submodules)
FLOOR_OF: dict[str, str] = {
    "mmdiff.core": "core",
    "mmdiff.vocab": "core",
    "mmdiff.registry": "core",
    "mmdiff.io": "core",
    "mmdiff.dataclass_io": "core",
    "mmdiff.card": "core",
    "mmdiff.hub": "core",
    "mmdiff.canvas": "core",
    "mmdiff.diffusion": "core",
    "mmdiff.sampling": "sampling",
    "mmdiff.adapters": "adapters",
    "mmdiff.audio": "adapters",
    "mmdiff.heads": "heads",
    "mmdiff.modeling": "modeling",
    "mmdiff.lora": "modeling",
    "mmdiff.tasks": "tasks",
    "mmdiff.data": "evaluation",
    "mmdiff.data.lerobot": "evaluation",
    "mmdiff.sim": "evaluation",
    "mmdiff.metrics": "evaluation",
    "mmdiff.evaluation": "evaluation",
    "mmdiff.viz": "sampling",
    "mmdiff.convert": "zoo",
    "mmdiff.zoo": "zoo",
    "mmdiff.pipelines": "zoo",
    "mmdiff.train": "train",
    "mmdiff.harness": "train",
    "mmdiff.cli": "cli",
    "mmdiff": "package",
}

# (importing module, imported module) -> why it is still there; delete an entry when its import is gone
@dataclass(frozen=True)
class Import:
    """One import statement (or `importlib.import_module("...")` call) of an mmdiff module."""

    source: str  # importing module
    path: Path
    line: int
    target: str  # imported module
    names: tuple[str, ...]  # names taken from it (`from target import names`)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def mmdiff_modules() -> dict[str, Path]:
    """Every module of the package (symlinked data folders such as `zoo_entries` are not code of the package)."""
    found = {}
    for folder, dirs, files in os.walk(ROOT):  # followlinks=False: zoo_entries -> ../zoo is skipped
        dirs[:] = [d for d in dirs if (Path(folder) / d / "__init__.py").is_file()]
        found.update({module_name(Path(folder) / f): Path(folder) / f for f in files if f.endswith(".py")})
    return found


def floor_of(module: str) -> str | None:
    """The floor of a module by its longest prefix in `FLOOR_OF`; None when the table does not place it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in FLOOR_OF:
            return FLOOR_OF[key]
    return None


def imports_of(module: str, path: Path, modules: set[str], text: str | None = None) -> list[Import]:
    """The mmdiff imports of a file (or of `text` as if it were that file), at any depth: module level, functions,
    TYPE_CHECKING blocks."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(module, path, node.lineno, a.name, ()) for a in node.names if _ours(a.name)]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, package)
            if not _ours(target):
                continue
            subs = [a.name for a in node.names if f"{target}.{a.name}" in modules]  # `from pkg import submodule`
            found += [Import(module, path, node.lineno, f"{target}.{s}", ()) for s in subs]
            rest = tuple(a.name for a in node.names if a.name not in subs)
            found += [Import(module, path, node.lineno, target, rest)] if rest else []
        elif isinstance(node, ast.Call) and _is_import_call(node):
            found.append(Import(module, path, node.lineno, node.args[0].value, ()))  # type: ignore[attr-defined]
    return found


def _ours(name: str) -> bool:
    return name == "mmdiff" or name.startswith("mmdiff.")


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _is_import_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    first = node.args[0] if node.args else None
    return (name in ("import_module", "__import__") and isinstance(first, ast.Constant)
            and isinstance(first.value, str) and _ours(first.value))


def all_imports() -> list[Import]:
    modules = mmdiff_modules()
    return [imp for name, path in sorted(modules.items()) for imp in imports_of(name, path, set(modules))]


def level(module: str) -> int:
    """The floor's height (an unplaced module counts as the ground floor; test_every_module_has_a_floor names it)."""
    return FLOORS.index(floor_of(module) or FLOORS[0])


def upward(imports: list[Import]) -> list[Import]:
    return [i for i in imports if level(i.target) > level(i.source)]


def private(imports: list[Import]) -> list[Import]:
    """Imports that take private names from a module of another package (mmdiff.<package>): a name with a leading
    underscore, or one its module leaves out of a declared `__all__`."""
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    return [i for i in imports if package(i.source) != package(i.target) and _private_names(i)]


def _private_names(i: Import) -> list[str]:
    exported = _declared_all(i.target)
    return [n for n in i.names if n.startswith("_") or (exported is not None and n not in exported)]


def _declared_all(module: str) -> set[str] | None:
    """The names in a module's literal `__all__`, or None when it declares none."""
    path = mmdiff_modules().get(module)
    if path is None:
        return None
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


def describe(i: Import) -> str:
    where = i.path.relative_to(ROOT.parent)
    return (f"{where}:{i.line} imports {i.target} (floor {floor_of(i.target)!r}) from {i.source} "
            f"(floor {floor_of(i.source)!r})")


# ---------------------------------------------------------------------------------------------------- tests
def test_every_module_has_a_floor():
    unplaced = sorted(m for m in mmdiff_modules() if floor_of(m) is None)
    assert not unplaced, f"modules with no floor: {unplaced}; add them to FLOOR_OF in tests/test_imports.py"
    assert set(FLOOR_OF.values()) <= set(FLOORS)


def test_no_upward_imports():
    found = upward(all_imports())
    new = [describe(i) for i in found]
    assert not new, "imports that run upward (use a registry lookup by name instead):\n  " + "\n  ".join(new)


def test_no_private_names_across_packages():
    found = private(all_imports())
    new = [f"{describe(i)}: private {_private_names(i)}" for i in found]
    assert not new, "private names imported from another package (make them public):\n  " + "\n  ".join(new)


def test_the_checker_sees_lazy_relative_and_dynamic_imports():
    """The parser on a hand-written file: a function-level import, a relative one, `from pkg import submodule`,
    and `importlib.import_module` are all found, on their lines."""
    source = ("import os\n"
              "from mmdiff.sampling import llada\n"
              "def f():\n"
              "    from ..zoo import create_model\n"
              "    import importlib\n"
              "    return importlib.import_module('mmdiff.train.loop')\n"
              "from .text import _private\n")
    found = imports_of("mmdiff.tasks.probe", ROOT / "tasks" / "probe.py", set(mmdiff_modules()), text=source)
    got = sorted((i.line, i.target, i.names) for i in found)
    assert got == [(2, "mmdiff.sampling.llada", ()), (4, "mmdiff.zoo", ("create_model",)),
                   (6, "mmdiff.train.loop", ()), (7, "mmdiff.tasks.text", ("_private",))]
    assert sorted((i.line, floor_of(i.target)) for i in upward(found)) == [(4, "zoo"), (6, "train")]
    assert private(found) == []  # tasks.text is in the same package
    from_sampling = imports_of("mmdiff.tasks.probe", ROOT / "tasks" / "probe.py", set(mmdiff_modules()),
                               text="from mmdiff.sampling.llada import _helper, public\n")
    assert [(i.target, i.names) for i in private(from_sampling)] == [("mmdiff.sampling.llada", ("_helper", "public"))]
