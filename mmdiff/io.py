"""Safe, strict, atomic file I/O: safetensors only (never pickle), temp-name-then-rename writes, and one readable
report of missing, unexpected and mis-shaped keys."""

from __future__ import annotations

import json
import os
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
    "save_json",
    "load_json",
    "save_safetensors",
    "load_safetensors",
    "load_state_dict_strict",
    "StateDictMismatch",
    "PICKLE_SUFFIXES",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


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
    module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint"
) -> None:
    """Loads `state` into `module` only if keys and shapes match exactly; otherwise one report names them all."""
    expected = module.state_dict()
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
    module.load_state_dict(state, strict=True)


def _key_list(keys: list[str], limit: int = 20) -> str:
    return ", ".join(keys[:limit]) + (" ..." if len(keys) > limit else "")
