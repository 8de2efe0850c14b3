"""Training checkpoints: one folder per step, safetensors and JSON/YAML only (never pickle), written atomically.

Layout of `out_dir/checkpoints/`:

    step-000123/
        config.json, sampler_config.json, model.safetensors, tokenizer files   (a loadable model folder:
                                                                               DiffusionModel.from_pretrained works)
        optimizer.safetensors + optimizer.json        optimizer tensors / everything else (per rank under FSDP:
                                                       optimizer-rank{r}.*)
        scheduler.json                                LR scheduler state
        trainer_state.json                            step, data position, world size, log window, ...
        rng-rank{r}.json                              python / numpy / torch / CUDA / masking-generator RNG states
        config.yaml                                   the resolved training recipe
        manifest.json                                 every file and its size, written last
    latest                                            the name of the newest complete folder

A folder is built under `.tmp-step-000123` and renamed into place when complete, then `latest` is rewritten
atomically; a crash at any point leaves the previous checkpoint and `latest` untouched.

>>> tensors, meta = optimizer_state_to_safe({"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]})
>>> optimizer_state_from_safe(tensors, meta)
{'state': {}, 'param_groups': [{'lr': 0.1, 'params': [0]}]}
"""

from __future__ import annotations

import base64
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmdiff.io import (
    PICKLE_SUFFIXES,
    atomic_write,
    fsync_dir,
    load_json,
    load_safetensors,
    save_json,
    save_safetensors,
    swap_folder,
)

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "TrainingState",
    "CHECKPOINTS_DIR",
    "step_dir_name",
    "list_checkpoints",
    "find_resume_checkpoint",
    "verify_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "optimizer_state_to_safe",
    "optimizer_state_from_safe",
    "shard_like_params",
    "merge_shards",
    "LiveValue",
    "tree_to_safe",
    "tree_from_safe",
    "resolve_live",
    "capture_rng",
    "restore_rng",
]

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
SCHEDULER = "scheduler.json"
TRAINER_STATE = "trainer_state.json"
CONFIG_YAML = "config.yaml"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the folder and the fix."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (a full disk, a quota, a lost mount): nothing of it was kept, the previous
    checkpoint and `latest` are untouched; the message names the error, the previous checkpoint and the fix."""


def _write_failed(root: Path, name: str, err: OSError) -> CheckpointWriteError:
    pointer = root / LATEST
    previous = pointer.read_text().strip() if pointer.is_file() else None
    kept = (f"the previous checkpoint {root / previous} is untouched and `latest` still names it"
            if previous else "no earlier checkpoint exists")
    return CheckpointWriteError(
        f"writing checkpoint {name} into {root} failed: {err}. Nothing of it was kept; {kept}. Free space on that "
        "disk (or lower train.keep_checkpoints, or point train.out_dir at a larger disk) and run the same command "
        "again: training resumes from the latest checkpoint.")


def step_dir_name(step: int) -> str:
    """`step-000123`."""
    return f"step-{step:06d}"


def _optimizer_names(rank: int | None) -> tuple[str, str]:
    stem = "optimizer" if rank is None else f"optimizer-rank{rank}"
    return f"{stem}.safetensors", f"{stem}.json"


def _rng_name(rank: int) -> str:
    return f"rng-rank{rank}.json"


# ------------------------------------------------------------------------------------------- optimizer state
def optimizer_state_to_safe(state_dict: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Splits `optimizer.state_dict()` into tensors (for safetensors) and JSON-able metadata.

    Tensors go under `state.{param_id}.{key}`; other per-parameter values and the param groups stay in the metadata.
    A sharded value (an FSDP2 `DTensor`) is written as this process's shard (`shard_like_params` wraps it again).
    """
    tensors: dict[str, Tensor] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for pid, values in state_dict["state"].items():
        plain = {}
        for key, value in values.items():
            if isinstance(value, Tensor):
                local = value.to_local() if _is_dtensor(value) else value
                tensors[f"state.{pid}.{key}"] = local.detach().cpu().contiguous()
            else:
                plain[key] = value
        state_meta[str(pid)] = plain
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]]
    tuples = sorted({k for g in state_dict["param_groups"] for k, v in g.items() if isinstance(v, tuple)})
    meta = {"state": state_meta, "param_groups": groups, "tuple_keys": tuples, "param_ids": [
        str(pid) for pid in state_dict["state"]]}
    return tensors, meta


def optimizer_state_from_safe(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `optimizer_state_to_safe`."""
    state: dict[Any, dict[str, Any]] = {}
    for pid in meta["param_ids"]:
        key = int(pid) if pid.lstrip("-").isdigit() else pid
        state[key] = dict(meta["state"].get(pid, {}))
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state[int(pid) if pid.lstrip("-").isdigit() else pid][key] = value
    tuples = set(meta.get("tuple_keys", []))
    groups = [{k: tuple(v) if k in tuples else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------ any nested state, no pickle
class LiveValue:
    """A value `tree_to_safe` could not write as a tensor or JSON (an engine's own object: DeepSpeed's loss scaler,
    an enum, a named tuple); `resolve_live` takes it from the live object's state at the same place, with the
    plain attributes that were saved set on it."""

    def __init__(self, path: str, type_name: str, attrs: dict[str, Any]) -> None:
        self.path, self.type_name, self.attrs = path, type_name, attrs

    def __repr__(self) -> str:
        return f"LiveValue({self.path!r}, {self.type_name})"


_PLAIN = (bool, int, float, str)


def _child(path: str, key: Any) -> str:
    return f"{path}/{key}" if path else str(key)


def tree_to_safe(tree: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Splits any nested state (dicts, lists, tuples of tensors and plain values, e.g. a DeepSpeed ZeRO
    optimizer's `state_dict()`) into tensors for safetensors, named by their path, and a JSON description.

    Objects of other types are described by their type and plain attributes only (`LiveValue` on reading).

    >>> tensors, meta = tree_to_safe({"step": 3, "groups": [torch.ones(2)], "betas": (0.9, 0.99)})
    >>> list(tensors), tree_from_safe(tensors, meta)["betas"]
    (['groups/0'], (0.9, 0.99))
    """
    tensors: dict[str, Tensor] = {}

    def encode(value: Any, path: str) -> Any:
        if isinstance(value, Tensor):
            local = value.to_local() if _is_dtensor(value) else value
            tensors[path] = local.detach().cpu().contiguous()
            return {"tensor": path}
        if value is None or type(value) in _PLAIN:
            return {"value": value}
        if type(value) in (list, tuple):
            return {type(value).__name__: [encode(v, _child(path, i)) for i, v in enumerate(value)]}
        if isinstance(value, dict) and all(type(k) in _PLAIN for k in value):
            return {"dict": [[k, encode(v, _child(path, k))] for k, v in value.items()]}
        attrs = {k: v for k, v in getattr(value, "__dict__", {}).items() if v is None or type(v) in _PLAIN}
        return {"live": type(value).__name__, "attrs": attrs}

    meta = {"codec": "tree", "tree": encode(tree, "")}
    return tensors, meta


def tree_from_safe(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Any:
    """Inverse of `tree_to_safe` (objects come back as `LiveValue` placeholders: see `resolve_live`)."""

    def decode(node: Mapping[str, Any], path: str) -> Any:
        if "tensor" in node:
            return tensors[node["tensor"]]
        if "value" in node:
            return node["value"]
        if "list" in node or "tuple" in node:
            items = [decode(v, _child(path, i)) for i, v in enumerate(node.get("list", node.get("tuple")))]
            return items if "list" in node else tuple(items)
        if "dict" in node:
            return {k: decode(v, _child(path, k)) for k, v in node["dict"]}
        return LiveValue(path, node["live"], dict(node.get("attrs", {})))

    return decode(meta["tree"], "")


def resolve_live(tree: Any, live: Any) -> Any:
    """`tree` with each `LiveValue` replaced by the value at the same place in `live` (the running engine's own
    state), its saved plain attributes set on it.

    Raises:
        CheckpointError: `live` has no such value, or one of another type (the engine is not the one that saved).
    """
    if isinstance(tree, LiveValue):
        if type(live).__name__ != tree.type_name:
            raise CheckpointError(f"optimizer state at {tree.path or '/'}: the checkpoint holds a {tree.type_name}, "
                                  f"this run's engine a {type(live).__name__}: resume with the launch config "
                                  "(DeepSpeed stage, precision) the checkpoint was saved with")
        for key, value in tree.attrs.items():
            setattr(live, key, value)
        return live
    if isinstance(tree, dict):
        return {k: resolve_live(v, live.get(k) if isinstance(live, Mapping) else None) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        items = [resolve_live(v, live[i] if isinstance(live, (list, tuple)) and i < len(live) else None)
                 for i, v in enumerate(tree)]
        return items if isinstance(tree, list) else tuple(items)
    return tree


def _is_dtensor(value: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(value, DTensor)


def merge_shards(shards: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One full optimizer state dict from every process's FSDP2 shard (in rank order): each per-parameter tensor of
    one or more dimensions is split along dimension 0 over the processes, so they are concatenated; scalars (AdamW's
    `step`) and the param groups are the first process's.

    >>> half = lambda x: {"state": {0: {"step": torch.tensor(2.0), "exp_avg": x}}, "param_groups": []}
    >>> merge_shards([half(torch.ones(2)), half(torch.zeros(1))])["state"][0]["exp_avg"]
    tensor([1., 1., 0.])
    """
    first = shards[0]
    state = {pid: {key: torch.cat([s["state"][pid][key] for s in shards])
                   if isinstance(value, Tensor) and value.dim() > 0 else value for key, value in values.items()}
             for pid, values in first["state"].items()}
    return {"state": state, "param_groups": first["param_groups"]}


def shard_like_params(state_dict: Mapping[str, Any], params: list[Tensor]) -> dict[str, Any]:
    """An optimizer state dict read from a checkpoint, with each per-parameter tensor that has the shape of its
    parameter's local shard made a `DTensor` like that parameter (FSDP2: same device mesh and placements); a tensor
    of the parameter's full shape (a checkpoint of one process, DDP, or `merge_shards` of another number of
    processes) is cut to this process's shard first (FSDP2's split: `torch.chunk` along dimension 0); scalars (AdamW's
    `step`) and the state of unsharded parameters are left as they are.

    Args:
        state_dict: `optimizer_state_from_safe(...)` of this process's shard files, or a full state.
        params: the optimizer's parameters in state-dict order (its param groups' `params`, concatenated).
    """
    state: dict[Any, dict[str, Any]] = {}
    for pid, values in state_dict["state"].items():
        param = params[int(pid)]
        if not _is_dtensor(param):
            state[pid] = dict(values)
            continue
        from torch.distributed.tensor import DTensor

        local = param.to_local()
        values = {key: _local_part(value, param, local) for key, value in values.items()}
        state[pid] = {
            key: DTensor.from_local(value.to(local.device), param.device_mesh, param.placements, run_check=False,
                                    shape=param.shape, stride=param.stride())
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape == local.shape else value
            for key, value in values.items()
        }
    return {"state": state, "param_groups": state_dict["param_groups"]}


def _local_part(value: Any, param: Tensor, local: Tensor) -> Any:
    """A full-shape tensor cut to this process's dimension-0 chunk of `param` (FSDP2's split); anything else as is."""
    if not isinstance(value, Tensor) or value.dim() == 0 or value.shape == local.shape or value.shape != param.shape:
        return value
    mesh = param.device_mesh
    chunks = torch.chunk(value, mesh.size(), dim=0)
    rank = mesh.get_local_rank()
    part = chunks[rank] if rank < len(chunks) else value[:0]
    if part.shape != local.shape:
        raise CheckpointError(f"an optimizer tensor of shape {tuple(value.shape)} does not split into this "
                              f"process's shard {tuple(local.shape)} (FSDP2 chunks dimension 0)")
    return part.clone()


# ------------------------------------------------------------------------------------------------- RNG states
def _b64(t: Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, numpy, torch CPU, CUDA (when present) and `generator` states as JSON-able values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = {"device": str(generator.device), "state": _b64(generator.get_state())}
    return state


def restore_rng(state: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
    """Restores what `capture_rng` captured (CUDA states only when the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    cuda = state.get("cuda", [])
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])
        else:
            warnings.warn(f"checkpoint has CUDA RNG states for {len(cuda)} devices, this process sees "
                          f"{torch.cuda.device_count()}; CUDA random numbers will differ from the original run",
                          stacklevel=2)
    if generator is not None and "generator" in state:
        generator.set_state(_unb64(state["generator"]["state"]))


# ------------------------------------------------------------------------------------------------ the folders
def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """`step-*` folders under `root` (complete or not), oldest first; temporary folders are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(folder: str | os.PathLike) -> int:
    match = _STEP_DIR.match(Path(folder).name)
    if not match:
        raise CheckpointError(f"{folder} is not a checkpoint folder (expected a name like step-000123)")
    return int(match.group(1))


def verify_checkpoint(folder: str | os.PathLike) -> dict[str, Any]:
    """Checks that `folder` is complete: manifest present, every listed file there with its size, no pickle files.

    Returns:
        the manifest.

    Raises:
        CheckpointError: naming the folder, what is wrong and how to go on.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist. {_fix_hint(folder)}")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"checkpoint {folder} contains pickle file(s) {pickles}; mmdiff never loads pickle (it can run arbitrary "
            f"code) and never writes it. Remove them if the folder came from mmdiff, or convert their tensors to "
            f"safetensors in a trusted environment. {_fix_hint(folder)}"
        )
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {folder} has no {MANIFEST}: it was not completely written. "
                              f"{_fix_hint(folder)}")
    try:
        manifest = load_json(manifest_path)
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is unreadable ({err}). {_fix_hint(folder)}") from err
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder} is missing {name}. {_fix_hint(folder)}")
        if path.stat().st_size != size:
            raise CheckpointError(f"checkpoint {folder}: {name} has {path.stat().st_size} bytes, the manifest says "
                                  f"{size}: the file is truncated or was changed. {_fix_hint(folder)}")
    for required in (WEIGHTS, SCHEDULER, TRAINER_STATE, CONFIG_YAML):
        if required not in files:
            raise CheckpointError(f"checkpoint {folder} has no {required}. {_fix_hint(folder)}")
    return manifest


def _is_complete(folder: Path) -> bool:
    try:
        verify_checkpoint(folder)
    except CheckpointError:
        return False
    return True


def _fix_hint(bad: Path) -> str:
    others = [p for p in list_checkpoints(bad.parent) if p != bad and _manifest_ok(p)]
    older = [p for p in others if checkpoint_step(p) < _step_or(bad, 1 << 62)]
    if older:
        return (f"Delete {bad} to resume from the previous good checkpoint {older[-1].name} (good ones: "
                f"{', '.join(p.name for p in others)}), or start over with resume=False (`--no-resume`).")
    return f"No other good checkpoint is there: delete {bad.parent} or start over with resume=False (`--no-resume`)."


def _manifest_ok(folder: Path) -> bool:
    """Cheap completeness check used by error hints (no recursion into `_fix_hint`)."""
    try:
        files = load_json(folder / MANIFEST)["files"]
        return all((folder / n).is_file() and (folder / n).stat().st_size == s for n, s in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _step_or(folder: Path, default: int) -> int:
    match = _STEP_DIR.match(folder.name)
    return int(match.group(1)) if match else default


def find_resume_checkpoint(root: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: the folder `latest` names, verified; None when `root` holds none.

    When `latest` is missing, unreadable or names a folder that is gone (deleted to fall back), the newest complete
    folder is used with a warning. A `latest` folder that exists but is incomplete raises `CheckpointError`.
    """
    root = Path(root)
    folders = list_checkpoints(root)
    pointer = root / LATEST
    named = pointer.read_text().strip() if pointer.is_file() else ""
    if named:
        target = root / named
        if target.is_dir():
            verify_checkpoint(target)
            return target
    if not folders:
        if named:
            raise CheckpointError(f"{pointer} names {named}, which does not exist, and {root} holds no other "
                                  "checkpoint. Delete the `latest` file (or the run folder) or start over with "
                                  "resume=False (`--no-resume`).")
        return None
    complete = [p for p in folders if _is_complete(p)]
    if not complete:
        verify_checkpoint(folders[-1])  # raises, naming the newest folder and the fix
    reason = f"names {named}, which is gone" if named else "is missing"
    warnings.warn(f"{pointer} {reason}; resuming from the newest complete checkpoint {complete[-1].name}",
                  stacklevel=2)
    return complete[-1]


# ------------------------------------------------------------------------------------------------------ saving
def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    *,
    write_main: Callable[[Path], None],
    write_rank: Callable[[Path], None],
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
    keep_last: int = 0,
) -> Path:
    """Writes checkpoint `step` atomically; every process calls it.

    Args:
        root: the `checkpoints/` folder.
        step: optimizer steps done.
        write_main: writes the shared files (model, optimizer, scheduler, trainer state, config) into the folder
            given; called on the main process only.
        write_rank: writes this process's own files (RNG state, optimizer shard); called on every process.
        is_main: whether this is the main process.
        barrier: waits for every process (`accelerator.wait_for_everyone`); needs a folder all processes see.
        keep_last: keep this many newest checkpoints (0: all).

    Returns:
        the checkpoint folder.
    """
    root = Path(root)
    final = root / step_dir_name(step)
    tmp = root / f"{_TMP_PREFIX}{final.name}"
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)  # left by an earlier crash
        tmp.mkdir(parents=True)
    barrier()
    try:
        if is_main:
            write_main(tmp)
        write_rank(tmp)
    except BaseException as err:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise _write_failed(root, final.name, err) from err
        raise
    barrier()
    if is_main:
        try:
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            save_json(tmp / MANIFEST, {"format": FORMAT_VERSION, "step": step, "files": files})
            fsync_dir(tmp)
            swap_folder(tmp, final)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, OSError):
                raise _write_failed(root, final.name, err) from err
            raise
        atomic_write(root / LATEST, lambda t: Path(t).write_text(final.name + "\n"))
        fsync_dir(root)
        if keep_last:
            prune_checkpoints(root, keep_last)
    barrier()
    return final


def prune_checkpoints(root: str | os.PathLike, keep_last: int) -> list[Path]:
    """Deletes all but the `keep_last` newest step folders (never the one `latest` names); returns the deleted."""
    root = Path(root)
    pointer = root / LATEST
    protected = pointer.read_text().strip() if pointer.is_file() else None
    folders = list_checkpoints(root)
    doomed = [p for p in folders[: max(len(folders) - keep_last, 0)] if p.name != protected]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# ---------------------------------------------------------------------------------------- file writers/readers
def write_model_files(folder: Path, model: Any, weights: Mapping[str, Tensor] | None = None) -> None:
    """config.json, sampler_config.json, model.safetensors and the tokenizer: a folder `from_pretrained` loads.

    Args:
        model: the (unwrapped) `DiffusionModel`.
        weights: the state dict to write (default `model.weights()`: core and adapters; FSDP passes the gathered
            one).
    """
    from mmdiff.modeling import CONFIG_NAME, SAMPLER_CONFIG_NAME

    save_json(folder / CONFIG_NAME, model.config.to_dict())
    save_json(folder / SAMPLER_CONFIG_NAME, model.sampler_config.to_dict())
    state = model.weights() if weights is None else weights
    save_safetensors(folder / WEIGHTS, {k: v.detach().cpu() for k, v in state.items()},
                     metadata={"format": "pt", "mmdiff": "core"})
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(folder))


def write_training_files(
    folder: Path,
    *,
    optimizer_state: Mapping[str, Any] | None,
    scheduler_state: Mapping[str, Any],
    trainer_state: Mapping[str, Any],
    config_yaml: str,
) -> None:
    """The shared training state (optimizer None when each process writes its own shard)."""
    if optimizer_state is not None:
        write_optimizer(folder, optimizer_state, rank=None)
    save_json(folder / SCHEDULER, _jsonable(scheduler_state))
    save_json(folder / TRAINER_STATE, {"format": FORMAT_VERSION, **trainer_state})
    atomic_write(folder / CONFIG_YAML, lambda t: Path(t).write_text(config_yaml))


def write_optimizer(folder: Path, optimizer_state: Mapping[str, Any], rank: int | None, *, tree: bool = False) -> None:
    """A torch optimizer's state dict; with `tree`, any nested state (a DeepSpeed ZeRO optimizer's: `tree_to_safe`;
    `load_checkpoint` reads either)."""
    tensors_name, meta_name = _optimizer_names(rank)
    tensors, meta = tree_to_safe(optimizer_state) if tree else optimizer_state_to_safe(optimizer_state)
    save_safetensors(folder / tensors_name, tensors, metadata={"format": "pt", "mmdiff": "optimizer"})
    save_json(folder / meta_name, meta)


def write_rank_files(folder: Path, rank: int, rng_state: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    save_json(folder / _rng_name(rank), {"rank": rank, **extra, "rng": dict(rng_state)})


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None  # callables and other objects (e.g. LambdaLR's lr_lambdas) are rebuilt from the recipe


def _read_optimizer(folder: Path, files: Mapping[str, Any], rank: int, world_size: int | None, sharded: bool,
                    trainer_state: Mapping[str, Any]) -> dict[str, Any]:
    """The optimizer state `load_checkpoint` gives process `rank` (see there)."""
    def read(rank_of_file: int | None) -> tuple[dict[str, Any], bool]:
        tensors_name, meta_name = _optimizer_names(rank_of_file)
        meta = load_json(folder / meta_name)
        tree = meta.get("codec") == "tree"
        state = (tree_from_safe if tree else optimizer_state_from_safe)(load_safetensors(folder / tensors_name), meta)
        return state, tree

    if _optimizer_names(None)[1] in files:
        return read(None)[0]
    saved_world = int(trainer_state.get("world_size", 0))
    own = read(rank) if _optimizer_names(rank)[1] in files else None
    if own is not None and (own[1] or (sharded and (world_size is None or world_size == saved_world))):
        return own[0]  # a ZeRO partition, or this process's FSDP shard on the same processes
    ranks = sorted(int(m.group(1)) for name in files if (m := re.fullmatch(r"optimizer-rank(\d+)\.json", name)))
    if not ranks or ranks != list(range(len(ranks))):
        raise CheckpointError(f"checkpoint {folder} has no optimizer state for rank {rank} (optimizer files of ranks "
                              f"{ranks}). {_fix_hint(folder)}")
    shards = [own if r == rank and own is not None else read(r) for r in ranks]  # this process's file read once
    if any(tree for _, tree in shards):
        raise CheckpointError(f"checkpoint {folder} holds DeepSpeed ZeRO partitions of {len(ranks)} processes and "
                              f"this is process {rank}: resume it with the DeepSpeed config and number of processes "
                              f"that wrote it. {_fix_hint(folder)}")
    return merge_shards([state for state, _ in shards])


@dataclass
class TrainingState:
    """What `load_checkpoint` returns.

    Args:
        folder: the checkpoint folder.
        step: optimizer steps done.
        weights: the core state dict.
        optimizer_state: the optimizer state dict (this rank's shard when saved per rank).
        scheduler_state: the LR scheduler state dict.
        trainer_state: step, data position, world size, ...
        rng_state: this rank's RNG states (None when the checkpoint has none for this rank).
        rank_extra: the other values this rank saved (e.g. a parameter fingerprint).
        config_yaml: the resolved recipe the checkpoint was written with.
    """

    folder: Path
    step: int
    weights: dict[str, Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    trainer_state: dict[str, Any]
    rng_state: dict[str, Any] | None
    rank_extra: dict[str, Any]
    config_yaml: str


def load_checkpoint(folder: str | os.PathLike, *, rank: int = 0, world_size: int | None = None,
                    sharded: bool = False) -> TrainingState:
    """Verifies and reads a checkpoint folder for process `rank`.

    The optimizer state: the shared one (one process, DDP), or this process's shard when the run is `sharded`
    (FSDP2) on the `world_size` that wrote it; otherwise every process's FSDP2 shard merged into the full state
    (`merge_shards`: an FSDP checkpoint resumed by one process, DDP, or FSDP on another number of processes, which
    `shard_like_params` cuts again). A DeepSpeed ZeRO partition is this process's own.

    Raises:
        CheckpointError: incomplete, truncated or corrupt files, or pickle files (named, with the fix).
    """
    folder = Path(folder)
    manifest = verify_checkpoint(folder)
    files = manifest["files"]
    try:
        weights = load_safetensors(folder / WEIGHTS)
        trainer_state = load_json(folder / TRAINER_STATE)
        optimizer_state = _read_optimizer(folder, files, rank, world_size, sharded, trainer_state)
        scheduler_state = load_json(folder / SCHEDULER)
        rank_file = folder / _rng_name(rank)
        rank_data = load_json(rank_file) if rank_file.is_file() else {}
        config_yaml = (folder / CONFIG_YAML).read_text()
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {folder} is unreadable: {err}. {_fix_hint(folder)}") from err
    rng_state = rank_data.pop("rng", None)
    return TrainingState(folder=folder, step=int(trainer_state["step"]), weights=weights,
                         optimizer_state=optimizer_state, scheduler_state=scheduler_state, trainer_state=trainer_state,
                         rng_state=rng_state, rank_extra=rank_data, config_yaml=config_yaml)
