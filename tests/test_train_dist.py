"""Two training processes on CPU (a gloo group), each test under 30 s on 2 cores, so they run in the default suite:

- `mmdiff train --accelerate-config ddp --num-processes 2`: the DDP run computes what one process computes (losses
  and weights), and its checkpoint loads, and resumes, in one process;
- FSDP2 sharding (torch's `fully_shard` per core Block, what configs/accelerate/fsdp.yaml asks for; accelerate itself
  runs FSDP only on GPUs): the losses and weights of one unsharded process, and saved and restored with the trainer's
  checkpoint functions (tests/dist_fsdp_check.py);
- `mmdiff train --accelerate-config deepspeed-zero2 / -zero3` (DeepSpeed's CPU accelerator over gloo): the same
  losses and weights as one process, and a run stopped after step 2 resumes bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mmdiff.io import load_safetensors
from mmdiff.modeling import DiffusionModel
from mmdiff.train import CheckpointError, load_train_config, train

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "configs" / "toy" / "copy-tiny.yaml")


def _child_env() -> dict[str, str]:
    """The launcher's environment: this checkout first on the path, 1 thread, offline, and no ACCELERATE_USE_CPU
    (`mmdiff train --accelerate-config` sets it itself on a machine without CUDA)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# copy-tiny, 4 steps; eps near 1 masks (almost surely) every target with weight ~1, so that the masks and weights do
# not depend on how the rows are split over the processes
DDP_RUN = ["--train.steps=4", "--train.batch_size=8", "--train.batch_scope=global", "--train.grad_accum=2",
           "--train.log_every=1", "--train.eval_every=2", "--train.eval_batches=2", "--train.eval_metrics_limit=0",
           "--train.save_every=2", "--train.keep_checkpoints=0", "--train.mixed_precision=no",
           "--objective.eps=0.999999"]


def test_ddp_on_two_cpu_processes_equals_one_process_and_its_checkpoint_resumes_in_one(tmp_path):
    """`mmdiff train --accelerate-config ddp --num-processes 2` (gloo on CPU): each process draws 4 of the 8 rows of
    a global micro-batch; losses and weights equal the single-process run, and the DDP checkpoint of step 2 resumed
    in one process finishes the single-process run."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train(load_train_config(TOY, [*DDP_RUN, f"--train.out_dir={single}"]))
    cmd = [sys.executable, "-m", "mmdiff.cli", "train", TOY, "--accelerate-config", "ddp", "--num-processes", "2",
           "--main-process-port", str(_free_port()), *DDP_RUN, f"--train.out_dir={ddp}"]
    done = subprocess.run(cmd, env=_child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "accelerate.commands.launch --config_file" in done.stdout and "2 process(es) on cpu" in done.stdout

    def curve(out: Path) -> list[tuple[int, str, float]]:
        return [(r["step"], r["split"], r["loss"]) for r in _records(out)]

    assert [(s, k) for s, k, _ in curve(ddp)] == [(s, k) for s, k, _ in curve(single)]
    assert [loss for *_, loss in curve(ddp)] == pytest.approx([loss for *_, loss in curve(single)], rel=1e-5)
    assert [r["tokens"] for r in _records(ddp) if r["split"] == "train"] == [
        r["tokens"] for r in _records(single) if r["split"] == "train"]
    ref, got = (load_safetensors(out / "final" / "model.safetensors") for out in (single, ddp))
    assert max(float((ref[k] - got[k]).abs().max()) for k in ref) < 1e-5

    # the DDP checkpoint of step 2 is a model folder one process loads, and a run one process resumes
    step2 = ddp / "checkpoints" / "step-000002"
    loaded = DiffusionModel.from_pretrained(step2)
    assert loaded.vocab.to_dict() == DiffusionModel.from_pretrained(single / "final").vocab.to_dict()
    moved = tmp_path / "resumed"
    (moved / "checkpoints").mkdir(parents=True)
    shutil.copytree(step2, moved / "checkpoints" / step2.name)
    (moved / "checkpoints" / "latest").write_text(step2.name + "\n")
    shutil.copy(ddp / "metrics.jsonl", moved / "metrics.jsonl")
    with pytest.warns(UserWarning, match="resuming on 1 process.*saved on 2: the data order is kept"):
        train(load_train_config(TOY, [*DDP_RUN, f"--train.out_dir={moved}"]))
    assert [loss for *_, loss in curve(moved)] == pytest.approx([loss for *_, loss in curve(single)], rel=1e-5)
    got = load_safetensors(moved / "final" / "model.safetensors")
    assert max(float((ref[k] - got[k]).abs().max()) for k in ref) < 1e-5


def test_fsdp2_sharded_optimizer_state_saves_and_resumes_exactly(tmp_path):
    """Two FSDP2 processes compute the losses and weights one unsharded process computes from both batches (within
    float32 rounding); optimizer shards (DTensors) written as each process's half in safetensors and wrapped again on
    load: a resumed third step equals the uninterrupted one bit for bit; the gathered weights load in one process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(REPO / "tests" / "dist_fsdp_check.py"), str(tmp_path / "out")]
    done = subprocess.run(cmd, env=_child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "FSDP_CHECK_OK" in done.stdout
    files = sorted(p.name for p in (tmp_path / "out" / "step-000002").iterdir())
    assert files == ["model.safetensors", "optimizer-rank0.json", "optimizer-rank0.safetensors",
                     "optimizer-rank1.json", "optimizer-rank1.safetensors"]


def _deepspeed_missing() -> str | None:
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        return f"deepspeed is not installed (`make install` installs it): {err}"
    return None


@pytest.mark.skipif(_deepspeed_missing() is not None, reason=str(_deepspeed_missing()))
@pytest.mark.parametrize("stage", [2, pytest.param(3, marks=pytest.mark.dist)])  # 50 s each: ZeRO-3 in test-all
def test_deepspeed_zero_on_two_cpu_processes_equals_one_process_and_resumes_exactly(tmp_path, stage):
    """`mmdiff train --accelerate-config deepspeed-zero{2,3} --num-processes 2`: the losses and the gathered fp32
    weights equal the single-process run; a run stopped after its step-2 checkpoint (each process's ZeRO partition in
    safetensors + JSON, no pickle) and launched again logs the same losses and ends with the same weights, bit for
    bit, as the uninterrupted one; the checkpoint is a model folder one process loads."""
    single, whole, broken = tmp_path / "single", tmp_path / "whole", tmp_path / "broken"
    train(load_train_config(TOY, [*DDP_RUN, f"--train.out_dir={single}"]))

    def launch(out: Path, *flags: str) -> None:
        cmd = [sys.executable, "-m", "mmdiff.cli", "train", TOY, "--accelerate-config", f"deepspeed-zero{stage}",
               "--num-processes", "2", "--main-process-port", str(_free_port()), *flags, *DDP_RUN,
               f"--train.out_dir={out}"]
        done = subprocess.run(cmd, env=_child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        assert "2 process(es) on cpu" in done.stdout and "ACCELERATE_USE_CPU" not in done.stdout

    launch(whole)
    launch(broken, "--max-steps", "2")
    assert not (broken / "final").exists()
    step2 = broken / "checkpoints" / "step-000002"
    assert {"optimizer-rank0.safetensors", "optimizer-rank1.json"} <= {p.name for p in step2.iterdir()}
    assert not any(p.suffix in (".pt", ".bin", ".pkl") for p in step2.iterdir())
    launch(broken)

    def curve(out: Path) -> list[tuple[int, str, float]]:
        return [(r["step"], r["split"], r["loss"]) for r in _records(out)]

    assert [(s, k) for s, k, _ in curve(whole)] == [(s, k) for s, k, _ in curve(single)]
    assert [loss for *_, loss in curve(whole)] == pytest.approx([loss for *_, loss in curve(single)], rel=1e-5)
    ref, got = (load_safetensors(out / "final" / "model.safetensors") for out in (single, whole))
    assert all(got[k].dtype == torch.float32 for k in got) and ref.keys() == got.keys()
    assert max(float((ref[k] - got[k]).abs().max()) for k in ref) < 1e-5
    assert curve(broken) == curve(whole)
    resumed = load_safetensors(broken / "final" / "model.safetensors")
    assert all(torch.equal(resumed[k], got[k]) for k in got)
    loaded = DiffusionModel.from_pretrained(step2)  # one process, no DeepSpeed
    assert all(torch.equal(v, load_safetensors(step2 / "model.safetensors")[k]) for k, v in loaded.weights().items())
    with pytest.raises(CheckpointError, match=r"written under DeepSpeed .*this run is NO: resume it with the "
                                              r"accelerate config .*--model.init_from="):
        train(load_train_config(TOY, [*DDP_RUN, f"--train.out_dir={broken}"]))
