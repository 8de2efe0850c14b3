"""Safe, strict, atomic file I/O: safetensors only (never pickle), temp-name-then-rename writes of files and of
whole folders, and one readable report of missing, unexpected and mis-shaped keys."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "atomic_write",
    "write_folder",
    "swap_folder",
    "fsync_dir",
    "interrupted_folder",
    "save_json",
    "load_json",
    "save_safetensors",
    "load_safetensors",
    "load_state_dict_strict",
    "StateDictMismatch",
    "PICKLE_SUFFIXES",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

logger = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls `write(tmp_path)` then renames onto `path`, so a crash never leaves a half-written file.

    The temporary file lives in the same folder (a rename is atomic only within one file system) and gets the
    permissions a plainly created file would (mkstemp makes it owner-only).

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "x.txt"
    >>> atomic_write(target, lambda tmp: Path(tmp).write_text("hi"))
    >>> target.read_text()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _sibling(path: Path, kind: str) -> Path:
    """The hidden folder beside `path` that `write_folder` uses: kind "new" (being written) or "old" (set aside)."""
    return path.with_name(f".{path.name}.{kind}-mmdiff")


def interrupted_folder(path: str | os.PathLike) -> Path | None:
    """The complete previous folder that a save interrupted between its two renames set aside, if any.

    `write_folder` renames the old folder aside and then the new one in; a crash between the two leaves `path`
    missing and the old folder, complete, at this name (the next `write_folder` puts it back first).
    """
    old = _sibling(Path(os.path.abspath(path)), "old")
    return old if old.is_dir() and not Path(path).exists() else None


def write_folder(
    path: str | os.PathLike,
    write: Callable[[Path], None],
    *,
    replace: Callable[[Path], bool] | bool = True,
    what: str = "folder",
) -> Path:
    """Writes a whole folder atomically: `write(tmp)` fills a hidden folder beside `path`, which is then swapped in.

    The swap renames an existing `path` aside, renames the new folder in and deletes the old one, so a crash at any
    point leaves either the complete old folder or the complete new one (never a mix), and files of the old folder
    that the new one does not write are gone. Leftovers of an interrupted earlier call are cleaned first (a
    half-written folder is deleted; an old folder set aside with `path` missing is put back).

    Args:
        path: the folder to write.
        write: fills the (empty) temporary folder it is given.
        replace: whether an existing non-empty `path` may be replaced: a bool, or a predicate on the folder. Checked
            before anything is written; a refusal raises `FileExistsError`.
        what: what the folder is, for the messages ("checkpoint folder").

    Returns:
        `path` as a `Path`.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "ckpt"
    >>> _ = write_folder(target, lambda tmp: (tmp / "a.txt").write_text("1"))
    >>> _ = write_folder(target, lambda tmp: (tmp / "b.txt").write_text("2"))
    >>> sorted(p.name for p in target.iterdir())
    ['b.txt']
    """
    target = Path(os.path.abspath(path))
    new, old = _sibling(target, "new"), _sibling(target, "old")
    target.parent.mkdir(parents=True, exist_ok=True)
    if old.is_dir() and not target.exists():
        os.rename(old, target)  # a crash between the two renames: the complete old folder goes back
        logger.warning("restored %s from %s, set aside by an interrupted save", target, old.name)
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} is a file, not a folder; choose another path for the {what}")
    existing = target.is_dir() and any(target.iterdir())
    if existing and not (replace(target) if callable(replace) else replace):
        raise FileExistsError(f"{target} exists and is not empty; refusing to replace it with a {what}")
    new.mkdir()
    try:
        write(new)
        fsync_dir(new)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if swap_folder(new, target) and existing:
        logger.warning("replaced the existing %s %s (its previous files were removed)", what, target)
    return Path(path)


def swap_folder(new: str | os.PathLike, target: str | os.PathLike) -> bool:
    """Renames the complete folder `new` onto `target`: an existing `target` is renamed aside first and deleted
    after, so a crash leaves either folder complete (`write_folder` puts an aside folder back). Returns whether a
    folder was replaced."""
    new, target = Path(new), Path(target)
    replaced = target.exists()
    if replaced:
        old = _sibling(target, "old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, target)
    fsync_dir(target.parent)
    return replaced


def fsync_dir(path: str | os.PathLike) -> None:
    """Flushes a folder's entries (renames, new files) to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0o022)  # os.umask can only be read by setting it: done once, at import time
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def save_json(path: str | os.PathLike, data: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")

    atomic_write(path, write)


def load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the file is corrupt or truncated") from err


def save_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: dict | None = None
) -> None:
    """Writes tensors (made contiguous, shared storage split) atomically as safetensors."""
    tensors = {
        k: v.detach().contiguous().clone() if _shares_storage(v, tensors) else v.detach().contiguous()
        for k, v in tensors.items()
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _shares_storage(t: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return sum(1 for v in tensors.values() if v.untyped_storage().data_ptr() == ptr) > 1


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Loads a safetensors file; pickle formats are refused and a corrupt file gets a clear error."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path} is a pickle checkpoint; mmdiff loads safetensors only (pickle can run arbitrary code). "
            "Convert it once in a trusted environment: "
            "safetensors.torch.save_file(torch.load(path), 'model.safetensors')"
        )
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); it may be truncated or corrupt") from err


class StateDictMismatch(ValueError):
    """Raised by strict loading; its message lists every missing, unexpected and mis-shaped key."""


def load_state_dict_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint",
    skip_prefixes: tuple[str, ...] = (),
) -> None:
    """Loads `state` into `module` only if keys and shapes match exactly; otherwise one report names them all.

    Keys under `skip_prefixes` are not expected in `state` (weights the module holds from elsewhere, such as a frozen
    pretrained tower read from its own source) and are left as they are; `state` must not hold them either.
    """
    expected = {k: v for k, v in module.state_dict().items() if not k.startswith(skip_prefixes)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        lines = [f"{source} does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_key_list(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_key_list(unexpected)}")
        for key, got, want in shapes:
            lines.append(f"  {key}: checkpoint has shape {got}, model expects {want}")
        lines.append("  check that config.json belongs to these weights, or convert the checkpoint (mmdiff.convert)")
        raise StateDictMismatch("\n".join(lines))
    module.load_state_dict(state, strict=not skip_prefixes)


def _key_list(keys: list[str], limit: int = 20) -> str:
    return ", ".join(keys[:limit]) + (" ..." if len(keys) > limit else "")
