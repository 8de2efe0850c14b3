"""DeepSpeed ZeRO under accelerate (`configs/accelerate/deepspeed-zero2.yaml`, `-zero3.yaml`): what the trainer does
differently when DeepSpeed's engine runs the step.

The engine runs backward, gradient clipping (the recipe's `optim.grad_clip`) and the optimizer step on its
partitioned state; mmdiff keeps its LR schedule, its data order and its pickle-free checkpoints:

- a checkpoint's `model.safetensors` holds the fp32 master weights gathered from every process (`full_weights`), so
  the folder loads in one process like any other (and resumes under DDP or FSDP);
- each process writes its ZeRO partition (fp32 master weights, AdamW moments, loss-scale state) as
  `optimizer-rank{r}.safetensors` + `.json` (`mmdiff.train.checkpoint.tree_to_safe`), which `load_optimizer_state`
  puts back into the live engine: resuming needs the same ZeRO stage and number of processes.

Without CUDA, DeepSpeed runs on its CPU accelerator and the processes form a gloo group (`process_group_kwargs`):
that is how the tests run it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mmdiff.train.checkpoint import resolve_live

__all__ = ["deepspeed_launch", "process_group_kwargs", "configure", "register_direct_weights", "full_weights",
           "optimizer_state", "load_optimizer_state", "engine_counters", "restore_engine_counters"]

# the engine's step counters (DeepSpeed's own schedulers and logging read them), saved with each process's files
_COUNTERS = ("global_steps", "global_samples", "micro_steps", "skipped_steps")


def deepspeed_launch(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started by `accelerate launch` with a DeepSpeed config."""
    env = os.environ if environ is None else environ
    return str(env.get("ACCELERATE_USE_DEEPSPEED", "")).lower() == "true"


def process_group_kwargs(environ: Mapping[str, str] | None = None) -> list[Any]:
    """accelerate's `kwargs_handlers` for a DeepSpeed launch without CUDA: a gloo process group (accelerate would
    otherwise find no backend and start each process as a lone run); none in every other case."""
    if not deepspeed_launch(environ) or torch.cuda.is_available():
        return []
    from accelerate.utils import InitProcessGroupKwargs

    return [InitProcessGroupKwargs(backend="gloo")]


def configure(accelerator: Any, *, micro_batch: int, grad_clip: float) -> None:
    """Fills the DeepSpeed config values mmdiff owns before `accelerator.prepare`: the per-process micro-batch (the
    trainer feeds batches itself, so accelerate cannot read it off a DataLoader) and the recipe's clipping norm
    (0: none)."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch
    config["gradient_clipping"] = float(grad_clip)


def register_direct_weights(loss_module: nn.Module) -> None:
    """ZeRO-3 gathers a layer's weights for that layer's own forward: the weights the model reads directly (the
    output projection, which is the embedding matrix when tied, read by the core's head and by the chunked loss)
    are declared used by the whole loss module, so they stay gathered for its forward and backward."""
    import deepspeed

    core = loss_module.model.core
    deepspeed.zero.register_external_parameter(loss_module, core.output_weight)


def full_weights(module: nn.Module) -> dict[str, Tensor]:
    """`module.state_dict()` on the CPU with every trained parameter replaced by its fp32 master copy, gathered
    from the processes' partitions. A collective: every process calls it."""
    from deepspeed.utils import safe_get_full_fp32_param

    params = list(module.parameters())
    gather: Any = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3: parameters live in partitions between forwards
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gather:
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    masters: dict[int, Tensor | None] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) not in masters:
            masters[id(param)] = safe_get_full_fp32_param(param)  # None for a frozen parameter
        master = masters[id(param)]
        if master is not None:
            state[name] = master.detach().float().cpu().clone()
    return state


def _zero_optimizer(optimizer: Any) -> Any:
    """The engine's optimizer (ZeRO's) inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def optimizer_state(optimizer: Any) -> dict[str, Any]:
    """This process's ZeRO optimizer state (its partition), as DeepSpeed's `state_dict()` gives it."""
    return _zero_optimizer(optimizer).state_dict()


def load_optimizer_state(optimizer: Any, saved: Mapping[str, Any], *, rank: int, world_size: int) -> None:
    """Puts a partition `optimizer_state` saved (read back by `tree_from_safe`) into the live engine, the fp32 master
    weights included (exactly, not re-derived from bf16 ones)."""
    zero = _zero_optimizer(optimizer)
    state = resolve_live(saved, zero.state_dict())
    states = [state if r == rank else None for r in range(world_size)]  # DeepSpeed reads its own rank's entry
    zero.load_state_dict(states, load_optimizer_states=True, load_from_fp32_weights=True)


def engine_counters(engine: Any) -> dict[str, int]:
    """The DeepSpeed engine's step counters."""
    return {name: int(getattr(engine, name)) for name in _COUNTERS if hasattr(engine, name)}


def restore_engine_counters(engine: Any, counters: Mapping[str, Any]) -> None:
    for name, value in counters.items():
        if name in _COUNTERS:
            setattr(engine, name, int(value))
