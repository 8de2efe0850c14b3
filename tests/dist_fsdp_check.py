"""Launched by tests/test_train_dist.py under `python -m torch.distributed.run --nproc_per_node 2` on CPU (gloo):
FSDP2 (PyTorch's `fully_shard`, one unit per core `Block`, what configs/accelerate/fsdp.yaml asks accelerate for)
on a tiny core, saved and restored with the trainer's checkpoint functions.

accelerate (1.x) runs FSDP only for a process group on an accelerator, so the trainer cannot be run under FSDP on
CPU; this check drives the same sharding with torch directly: three AdamW steps uninterrupted against two steps, a
checkpoint (gathered weights in one model.safetensors on rank 0, each process's optimizer shard as safetensors), a
rebuilt and re-sharded model and optimizer, and the third step. The weights must be equal bit for bit, the optimizer
files must hold half of each sharded state, and the weights must load into an unsharded core in one process. The
uninterrupted run must also compute what one unsharded process computes from both processes' batches (the mean of
their gradients): the same losses and weights within float32 rounding.

Usage: dist_fsdp_check.py OUT_DIR. Prints FSDP_CHECK_OK on success.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from mmdiff.canvas import Canvas
from mmdiff.core.config import CoreConfig
from mmdiff.core.model import MaskedDiffusionTransformer
from mmdiff.diffusion import diffusion_loss
from mmdiff.io import load_json, load_safetensors, save_safetensors
from mmdiff.train import checkpoint as ckpt
from mmdiff.train.config import OptimSection
from mmdiff.train.loop import build_optimizer
from mmdiff.vocab import VocabLayout

VOCAB = VocabLayout.build(text_size=16)
OPTIM = OptimSection(lr=1e-2, weight_decay=0.1)


def build(weights: dict[str, torch.Tensor] | None = None) -> MaskedDiffusionTransformer:
    """The same initial core on every process (or `weights`), then sharded: each Block, then the root."""
    torch.manual_seed(0)
    core = MaskedDiffusionTransformer(CoreConfig(vocab=VOCAB, d_model=32, n_layers=2, n_heads=2, max_seq_len=16))
    if weights is not None:
        core.load_state_dict(weights)
    for block in core.blocks:
        fully_shard(block)
    fully_shard(core)
    return core


def batch_loss(core: MaskedDiffusionTransformer, number: int, rank: int) -> torch.Tensor:
    """The loss of process `rank`'s batch at step `number` (ids and masks seeded by both)."""
    g = torch.Generator().manual_seed(100 * number + rank)
    canvas = Canvas(ids=torch.randint(0, 16, (4, 16), generator=g), maskable=torch.ones(4, 16, dtype=torch.bool))
    return diffusion_loss(core, canvas, "linear", mask_id=VOCAB.mask_id, generator=g).loss


def step(core: MaskedDiffusionTransformer, optimizer: torch.optim.Optimizer, number: int) -> float:
    """One update on this process's own batch, clipped like the trainer's; returns the mean loss of the processes."""
    loss = batch_loss(core, number, dist.get_rank())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(core.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    return float(mean) / dist.get_world_size()


def one_process(world: int, steps: int, resume: tuple[dict, dict] | None = None
                ) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The same steps in one unsharded process: each step's gradient is the mean over the processes' batches; with
    `resume` (weights, full optimizer state of step `steps - 1`) only the last step."""
    torch.manual_seed(0)
    core = MaskedDiffusionTransformer(CoreConfig(vocab=VOCAB, d_model=32, n_layers=2, n_heads=2, max_seq_len=16))
    optimizer = build_optimizer(core, OPTIM)
    first = 1
    if resume is not None:
        core.load_state_dict(resume[0])
        optimizer.load_state_dict(resume[1])
        first = steps
    losses = []
    for number in range(first, steps + 1):
        total = 0.0
        for rank in range(world):
            loss = batch_loss(core, number, rank) / world
            loss.backward()
            total += float(loss)
        torch.nn.utils.clip_grad_norm_(core.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    return losses, core.state_dict()


def full_weights(core: MaskedDiffusionTransformer) -> dict[str, torch.Tensor]:
    """The gathered state dict (on rank 0; empty elsewhere), as the trainer's `get_state_dict` gathers it."""
    return get_model_state_dict(core, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def main(out: Path) -> int:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    folder = out / "step-000002"
    if rank == 0:
        folder.mkdir(parents=True)
    dist.barrier()

    # uninterrupted: 3 steps, with the checkpoint of step 2 written on the way
    core = build()
    optimizer = build_optimizer(core, OPTIM)
    losses = [step(core, optimizer, number) for number in (1, 2)]
    assert any(isinstance(v, DTensor) for s in optimizer.state_dict()["state"].values() for v in s.values())
    weights = full_weights(core)
    if rank == 0:
        save_safetensors(folder / ckpt.WEIGHTS, weights)
    ckpt.write_optimizer(folder, optimizer.state_dict(), rank=rank)
    dist.barrier()
    losses.append(step(core, optimizer, 3))
    expected = full_weights(core)

    # resumed: a new core from the gathered weights, sharded again, the optimizer shard restored
    saved = load_safetensors(folder / ckpt.WEIGHTS)
    shards = [ckpt.optimizer_state_from_safe(load_safetensors(folder / f"optimizer-rank{r}.safetensors"),
                                             load_json(folder / f"optimizer-rank{r}.json"))
              for r in range(dist.get_world_size())]
    merged = ckpt.merge_shards(shards)  # what one process or DDP resumes from
    core = build(saved)
    optimizer = build_optimizer(core, OPTIM)
    tensors_name, meta_name = f"optimizer-rank{rank}.safetensors", f"optimizer-rank{rank}.json"
    shard = load_safetensors(folder / tensors_name)
    state = ckpt.optimizer_state_from_safe(shard, load_json(folder / meta_name))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for pid, values in state["state"].items():  # each file holds this process's half of every sharded state
        if values["exp_avg"].dim() > 0:
            assert values["exp_avg"].shape[0] == params[int(pid)].shape[0] // 2, (pid, values["exp_avg"].shape)
    optimizer.load_state_dict(ckpt.shard_like_params(state, params))
    step(core, optimizer, 3)
    got = full_weights(core)
    # the full (merged) state cut to each process's shard again: the same resumed step, bit for bit
    core = build(saved)
    optimizer = build_optimizer(core, OPTIM)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.load_state_dict(ckpt.shard_like_params(copy.deepcopy(merged), params))  # its `step` moves on in place
    step(core, optimizer, 3)
    from_full = full_weights(core)
    if rank == 0:
        assert expected.keys() == got.keys()
        different = [k for k in expected if not torch.equal(expected[k], got[k])]
        assert not different, f"resumed FSDP2 weights differ from the uninterrupted run: {different}"
        different = [k for k in expected if not torch.equal(expected[k], from_full[k])]
        assert not different, f"FSDP2 resumed from the merged full state differs: {different}"
        # one unsharded process resumes the FSDP checkpoint (merged optimizer state) and takes the third step
        alone_losses, alone = one_process(dist.get_world_size(), 3, resume=(saved, merged))
        drift = max(float((expected[k] - alone[k]).abs().max()) for k in alone)
        assert drift < 1e-5 and abs(alone_losses[-1] - losses[-1]) <= 1e-5 * abs(losses[-1]), (drift, alone_losses)
        # FSDP computes what one process computes from both batches
        single_losses, single = one_process(dist.get_world_size(), 3)
        assert all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(losses, single_losses, strict=True)), (
            losses, single_losses)
        drift = max(float((expected[k] - single[k]).abs().max()) for k in single)
        assert single.keys() == expected.keys() and drift < 1e-5, drift
        # the gathered checkpoint loads into an unsharded core in one process
        alone = MaskedDiffusionTransformer(CoreConfig(vocab=VOCAB, d_model=32, n_layers=2, n_heads=2,
                                                      max_seq_len=16))
        alone.load_state_dict(saved)
        print("FSDP_CHECK_OK", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
