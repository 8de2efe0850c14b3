"""Training at scale, the parts a CPU can check: gradients pinned (two accumulated micro-batches of 4 equal one
batch of 8; clipping caps the applied gradient, checked against a hand-computed clipped AdamW step), exact resume of
a real `mmdiff train` process killed with SIGKILL, the accelerate configs of configs/accelerate/ (parsed by
accelerate's own launcher code; `mmdiff train --accelerate-config`; the 2-process DDP run is in test_train_ddp.py),
and the errors for bad input (an unknown recipe key names the closest one; a world size that does
not divide a global batch; a full disk during a checkpoint write, which keeps the previous checkpoint; resuming a
checkpoint of another core shape).

The gradient tests mask every target (a schedule registered here, by a third party): the masks then do not depend
on how the rows are split into micro-batches, so the accumulated and the big-batch gradients must be equal, not just
close in distribution.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import AllMasked
from torch import Tensor

from mmdiff.io import load_safetensors
from mmdiff.modeling import DiffusionModel
from mmdiff.registry import DATASETS
from mmdiff.train import ConfigError, TrainConfig, Trainer, build_model, build_source, load_train_config
from mmdiff.train import checkpoint as ckpt
from mmdiff.train.config import TrainSection, apply_cli_overrides
from mmdiff.train.launch import accelerate_configs, launch_command, launch_env, resolve_accelerate_config
from mmdiff.train.loop import BatchStream, check_launch
from mmdiff.vocab import VocabLayout

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "configs" / "toy" / "copy-tiny.yaml")


# ------------------------------------------------------------------------------------- third-party plug-ins
@DATASETS.register("test-copy-scale", override=True)
class CopySource:
    """Prompt = 6 random digits, answer = the same digits (every row has 6 targets)."""

    task = "text"
    specials = ("mask", "eos", "pad", "bos")

    def __init__(self, train_size: int = 64, val_size: int = 16) -> None:
        self.train_size, self.val_size = train_size, val_size

    def tokenizer(self) -> Any:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel({str(d): d for d in range(10)}, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=tok)

    def dataset(self, split: str, vocab: VocabLayout) -> list[dict[str, Tensor]]:
        size, stream = (self.train_size, 1) if split == "train" else (self.val_size, 2)
        digits = torch.randint(0, 10, (size, 6), generator=torch.Generator().manual_seed(stream))
        maskable = torch.arange(12) >= 6
        return [{"ids": torch.cat([row, row]), "maskable": maskable} for row in digits]


def recipe(out_dir: Path, *overrides: str) -> TrainConfig:
    """A 1-layer core without dropout on the copy task, every target masked, constant LR (no warmup, no decay)."""
    base = TrainConfig.from_dict({
        "name": "scale-test",
        "model": {"core": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 16}},
        "data": {"name": "test-copy-scale"},
        "objective": {"schedule": "test-all-masked", "normalize": "sft"},
        "optim": {"lr": 1e-2, "warmup_steps": 0, "min_lr_ratio": 1.0, "weight_decay": 0.1, "betas": [0.9, 0.95],
                  "grad_clip": 0.0},
        "train": {"steps": 3, "batch_size": 8, "grad_accum": 1, "mixed_precision": "no", "log_every": 1,
                  "eval_every": 0, "eval_batches": 1, "save_every": 0, "out_dir": str(out_dir)},
    })
    return apply_cli_overrides(base, list(overrides))


def started(config: TrainConfig) -> Trainer:
    trainer = Trainer(config)
    trainer.setup(resume=False)
    return trainer


def applied_gradient(trainer: Trainer) -> dict[str, Tensor]:
    """The gradient the first AdamW step used (after clipping): exp_avg = (1 - beta1) g after one step."""
    beta1 = trainer.config.optim.betas[0]
    return {name: trainer.optimizer.state[p]["exp_avg"] / (1 - beta1)
            for name, p in trainer.model.named_parameters() if p in trainer.optimizer.state}


def params(model: torch.nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def fresh_model(config: TrainConfig) -> DiffusionModel:
    """The initial weights of a run, built as the trainer builds them (seed, then the model)."""
    from accelerate.utils import set_seed

    set_seed(config.seed)
    return build_model(config, build_source(config.data))


def hand_batches(model: DiffusionModel, config: TrainConfig, size: int) -> BatchStream:
    """The run's first examples in order, `size` rows at a time."""
    from mmdiff.tasks.text import TextTask

    source = build_source(config.data)
    return BatchStream(source.dataset("train", model.vocab), lambda rows: TextTask.collate(rows, model.vocab),
                       batch_size=size, seed=config.seed)


def loss_and_grads(model: DiffusionModel, canvas: Any) -> tuple[float, dict[str, Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model.loss(canvas, AllMasked(), normalize="sft").loss
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close(got: dict[str, Tensor], want: dict[str, Tensor], *, atol: float, rtol: float = 0.0) -> float:
    assert got.keys() == want.keys()
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")
    return worst


# -------------------------------------------------------------------------------------------- gradients pinned
def test_two_accumulated_batches_of_4_equal_one_batch_of_8(tmp_path):
    """Same examples, same masks: the gradient applied by (batch 4, grad_accum 2) is the batch-8 gradient, and so
    are the parameters after 3 steps. A loss not divided by grad_accum doubles the applied gradient and fails."""
    cfg = recipe(tmp_path / "big")
    model = fresh_model(cfg)
    initial = params(model)
    # the batch-8 gradient by hand: the first 8 rows of the epoch, every target masked
    loss, grads = loss_and_grads(model, next(hand_batches(model, cfg, 8)))
    norm = math.sqrt(sum(float(g.square().sum()) for g in grads.values()))
    finals = []
    # one trainer at a time: accelerate keeps the accumulation count in a process-wide state
    for overrides in ([], ["--train.batch_size=4", "--train.grad_accum=2"]):
        trainer = started(recipe(tmp_path / f"run{len(finals)}", *overrides))
        assert_close(params(trainer.model), initial, atol=0.0)  # the same initial weights
        step_loss, grad_norm, _, tokens = trainer.train_step()
        assert float(step_loss) == pytest.approx(loss, rel=1e-6)
        assert float(grad_norm) == pytest.approx(norm, rel=1e-5)
        assert tokens == 8 * 12  # the same 8 rows of 12 tokens
        assert_close(applied_gradient(trainer), grads, atol=1e-7, rtol=1e-5)
        for _ in range(2):
            trainer.train_step()
        finals.append(params(trainer.model))
    assert_close(finals[1], finals[0], atol=2e-6)


def test_clipping_caps_the_applied_gradient_and_matches_a_hand_computed_adamw(tmp_path):
    """grad_clip 0.05 (the raw norm is ~50x that): two AdamW steps by hand, with torch's clipping rule
    (g * min(1, clip / (norm + 1e-6))), give the trainer's parameters; the applied gradient's norm is the clip. With
    clipping switched off the second step's direction changes (AdamW mixes two differently scaled gradients)."""
    clip, lr, wd, (b1, b2), eps = 0.05, 1e-2, 0.1, (0.9, 0.95), 1e-8
    cfg = recipe(tmp_path / "clip", f"--optim.grad_clip={clip}", "--train.steps=2")
    trainer = started(cfg)
    model = fresh_model(cfg)
    batches = hand_batches(model, cfg, 8)
    decayed = {n for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n}  # build_optimizer's rule
    state = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in model.named_parameters()}
    hand = params(model)
    for step in (1, 2):
        _, grads = loss_and_grads(model, next(batches))
        norm = math.sqrt(sum(float(g.square().sum()) for g in grads.values()))
        _, grad_norm, used_lr, _ = trainer.train_step()
        assert float(grad_norm) == pytest.approx(norm, rel=1e-5) and norm > 10 * clip  # reported: before clipping
        assert used_lr == lr
        if step == 1:
            applied = applied_gradient(trainer)
            applied_norm = math.sqrt(sum(float(g.square().sum()) for g in applied.values()))
            assert applied_norm <= clip * (1 + 1e-5) and applied_norm == pytest.approx(clip, rel=1e-4)
        scale = min(1.0, clip / (norm + 1e-6))
        for name, p in hand.items():
            if name not in grads:  # torch's AdamW skips a parameter without a gradient (no decay either)
                continue
            g = grads[name] * scale
            m, v = state[name]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).add_(g * g, alpha=1 - b2)
            if name in decayed:
                p.mul_(1 - lr * wd)
            p.sub_(lr * (m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + eps))
        with torch.no_grad():  # the hand model follows the hand update, for the next step's gradient
            for name, p in model.named_parameters():
                p.copy_(hand[name])
    assert_close(params(trainer.model), hand, atol=2e-6)


# ---------------------------------------------------------------------------------------------- exact resume
KILL_RUN = ["--train.steps=40", "--train.batch_size=8", "--train.grad_accum=2", "--train.log_every=1",
            "--train.eval_every=5", "--train.eval_batches=1", "--train.eval_metrics_limit=0", "--train.save_every=5",
            "--train.keep_checkpoints=2", "--train.mixed_precision=no", "--model.core.dropout=0.1"]


def _mmdiff_train(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmdiff.cli", "train", TOY, *KILL_RUN, f"--train.out_dir={out}", *extra]


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_a_killed_training_process_resumes_exactly(tmp_path):
    """`mmdiff train` (grad_accum 2, dropout 0.1, evaluation every 5 steps) killed with SIGKILL once its step-10
    checkpoint is written, wherever it is then, and run again: the same losses (train and val, every step) and the
    same final weights, bit for bit, as an uninterrupted run."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    done = subprocess.run(_mmdiff_train(whole), env=_child_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    child = subprocess.Popen(_mmdiff_train(broken), env=_child_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    latest, deadline = broken / "checkpoints" / "latest", time.monotonic() + 240
    while not (latest.is_file() and latest.read_text().strip() >= "step-000010"):
        assert child.poll() is None and time.monotonic() < deadline, "the run ended before its step-10 checkpoint"
        time.sleep(0.002)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    assert not (broken / "final").exists()
    killed_at = max(r["step"] for r in _records(broken))
    resumed = subprocess.run(_mmdiff_train(broken), env=_child_env(), cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert not list((broken / "checkpoints").glob(".tmp-*"))

    def curve(out: Path) -> list[tuple[int, str, float]]:
        return [(r["step"], r["split"], r["loss"]) for r in _records(out)]

    assert len(curve(whole)) == 40 + 8 and curve(broken) == curve(whole), f"killed after step {killed_at}"
    ref, got = (load_safetensors(out / "final" / "model.safetensors") for out in (whole, broken))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


# ---------------------------------------------------------------------------------------- accelerate configs
def _launch_args(config: Path) -> Any:
    """accelerate's own reading of a config file: `accelerate launch --config_file CONFIG` up to the launcher."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config), "--num_processes", "2", "-m",
                                               "mmdiff.cli", "train", TOY])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def test_shipped_accelerate_configs_are_what_accelerate_reads():
    from accelerate import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils import patch_environment
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
    from torch.distributed.fsdp import StateDictType

    from mmdiff.core.model import Block

    configs = accelerate_configs()
    assert sorted(configs) == ["ddp", "deepspeed-zero2", "deepspeed-zero3", "fsdp"]
    assert all(p.parent == REPO / "configs" / "accelerate" for p in configs.values())

    args, _ = _launch_args(configs["ddp"])
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed, args.mixed_precision) == (True, False, False, "bf16")

    args, _ = _launch_args(configs["fsdp"])
    assert (args.use_fsdp, args.mixed_precision) == (True, "bf16")
    env = {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("FSDP_", "ACCELERATE_"))}
    with patch_environment(**env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.transformer_cls_names_to_wrap == [Block.__name__]  # the core's transformer block
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT
    core = fresh_model(recipe(Path("unused"))).core  # the wrap policy finds the blocks by that class name
    assert sum(type(m).__name__ == "Block" for m in core.modules()) == core.config.n_layers

    for name, stage in (("deepspeed-zero2", 2), ("deepspeed-zero3", 3)):  # deepspeed itself need not be installed
        args, defaults = _launch_args(configs[name])
        assert args.use_deepspeed
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as `launch` sets it
        _, env = prepare_deepspeed_cmd_env(args)
        with patch_environment(**{k: v for k, v in env.items() if k.startswith("ACCELERATE_")}):
            plugin = DeepSpeedPlugin()
        assert plugin.deepspeed_config["zero_optimization"]["stage"] == stage
        # accumulation and clipping are "auto": accelerate fills them from the recipe's grad_accum and grad_clip
        assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
        assert plugin.deepspeed_config["gradient_clipping"] == "auto"


def test_launch_command_and_its_errors():
    cmd = launch_command(TOY, ["--train.steps=5"], "fsdp", num_processes=16, num_machines=2, machine_rank=1,
                         main_process_ip="10.0.0.1", main_process_port=29501, train_flags=["--no-resume"],
                         python="python")
    assert cmd == ["python", "-m", "accelerate.commands.launch", "--config_file",
                   str(REPO / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "16", "--num_machines", "2",
                   "--machine_rank", "1", "--main_process_ip", "10.0.0.1", "--main_process_port", "29501", "-m",
                   "mmdiff.cli", "train", "--no-resume", TOY, "--train.steps=5"]
    assert resolve_accelerate_config("configs/accelerate/ddp.yaml").samefile(REPO / "configs/accelerate/ddp.yaml")
    with pytest.raises(ConfigError, match=r"'fdsp' is neither a file nor a shipped config.*ddp, deepspeed-zero2"):
        resolve_accelerate_config("fdsp")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device.*--num-processes 2"):
            launch_command(TOY, [], "ddp")
    # a launch config given as the recipe is named as such
    with pytest.raises(ConfigError, match="is an accelerate launch config, not a training recipe.*--accelerate"):
        load_train_config(REPO / "configs" / "accelerate" / "fsdp.yaml")


def test_mmdiff_train_launch_flags_need_an_accelerate_config(capsys):
    from mmdiff.cli import main

    assert main(["train", TOY, "--num-processes", "2"]) == 2
    assert "--num-processes need(s) --accelerate-config NAME" in capsys.readouterr().err
    assert main(["train", TOY, "--accelerate-config", "fdsp", "--num-processes", "2"]) == 2
    assert "'fdsp' is neither a file nor a shipped config" in capsys.readouterr().err


def test_launches_accelerate_would_run_as_something_else_are_refused():
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="no")  # this process: a single-process run
    check_launch(accelerator, {})
    with pytest.raises(ConfigError, match="one of 2 .*ACCELERATE_USE_CPU=1"):
        check_launch(accelerator, {"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="FSDP launch became NO: accelerate runs FSDP only on GPUs"):
        check_launch(accelerator, {"ACCELERATE_USE_FSDP": "true"})
    with pytest.raises(ConfigError, match="DeepSpeed launch became NO: with ACCELERATE_USE_CPU=1 .*Unset"):
        check_launch(accelerator, {"ACCELERATE_USE_DEEPSPEED": "true"})
    assert "ACCELERATE_USE_CPU" not in launch_env({}, "deepspeed-zero3")  # DeepSpeed has its own CPU accelerator


def test_fsdp_shards_are_merged_for_one_process_or_ddp_and_kept_for_fsdp_on_the_same_processes(tmp_path):
    """An FSDP2 checkpoint of 2 processes (each AdamW tensor split along dimension 0, 5 rows as 3 + 2): one process,
    DDP, or FSDP on another number of processes read the merged full state; FSDP on 2 reads its own shard; DeepSpeed
    partitions are never merged."""
    exp_avg = torch.arange(10.0).view(5, 2)
    groups = [{"lr": 0.1, "betas": (0.9, 0.95), "params": [0]}]

    def shard(rows: slice) -> dict:
        return {"state": {0: {"step": torch.tensor(3.0), "exp_avg": exp_avg[rows]}}, "param_groups": groups}

    def write_main(folder: Path) -> None:
        from mmdiff.io import save_safetensors

        save_safetensors(folder / ckpt.WEIGHTS, {"w": torch.zeros(1)})
        ckpt.write_training_files(folder, optimizer_state=None, scheduler_state={}, config_yaml="",
                                  trainer_state={"step": 2, "world_size": 2})

    def write_ranks(folder: Path) -> None:
        for rank, rows in ((0, slice(0, 3)), (1, slice(3, 5))):
            ckpt.write_optimizer(folder, shard(rows), rank=rank)

    folder = ckpt.save_checkpoint(tmp_path / "fsdp", 2, write_main=write_main, write_rank=write_ranks)
    for rank, world, sharded, rows in ((0, 1, False, slice(None)), (1, 2, False, slice(None)),
                                       (1, 2, True, slice(3, 5)), (0, 4, True, slice(None))):
        state = ckpt.load_checkpoint(folder, rank=rank, world_size=world, sharded=sharded).optimizer_state
        assert torch.equal(state["state"][0]["exp_avg"], exp_avg[rows]) and float(state["state"][0]["step"]) == 3
        assert state["param_groups"] == groups
    zero = ckpt.save_checkpoint(tmp_path / "zero", 2, write_main=write_main, write_rank=lambda f: [
        ckpt.write_optimizer(f, {"partition": torch.ones(r + 1)}, rank=r, tree=True) for r in range(2)])
    with pytest.raises(ckpt.CheckpointError, match="DeepSpeed ZeRO partitions of 2 processes and this is process 2"):
        ckpt.load_checkpoint(zero, rank=2, world_size=3)
    assert torch.equal(ckpt.load_checkpoint(zero, rank=1).optimizer_state["partition"], torch.ones(2))


def test_any_nested_optimizer_state_round_trips_without_pickle_and_engine_objects_come_from_the_live_engine():
    """DeepSpeed's ZeRO state: tensors, scalars, tuples, int-keyed dicts and engine objects (a loss scaler, an enum);
    the objects are taken from the running engine with their saved plain attributes, or refused when of another
    type."""
    import enum

    class Scaler:
        def __init__(self, scale: float) -> None:
            self.cur_scale, self.hook = scale, print

    class Stage(int, enum.Enum):
        GRADIENTS = 2

    saved = {"loss_scaler": Scaler(1024.0), "stage": Stage.GRADIENTS, "step": 7, "clip": float("inf"),
             "base": {"state": {0: {"exp_avg": torch.arange(3.0)}}, "betas": (0.9, 0.95)},
             "fp32": [torch.ones(2, 2), torch.zeros(0)], "version": "0.19.8", "overflow": False}
    tensors, meta = ckpt.tree_to_safe(saved)
    assert sorted(tensors) == ["base/state/0/exp_avg", "fp32/0", "fp32/1"]
    meta = json.loads(json.dumps(meta))  # what the JSON file holds
    back = ckpt.tree_from_safe(tensors, meta)
    assert isinstance(back["loss_scaler"], ckpt.LiveValue) and back["loss_scaler"].attrs == {"cur_scale": 1024.0}
    live = {"loss_scaler": Scaler(1.0), "stage": Stage.GRADIENTS}
    state = ckpt.resolve_live(back, live)
    assert state["loss_scaler"] is live["loss_scaler"] and live["loss_scaler"].cur_scale == 1024.0
    assert state["stage"] is Stage.GRADIENTS and state["step"] == 7 and state["clip"] == math.inf
    assert state["base"]["betas"] == (0.9, 0.95) and list(state["base"]["state"]) == [0]
    assert torch.equal(state["base"]["state"][0]["exp_avg"], torch.arange(3.0)) and state["fp32"][1].numel() == 0
    with pytest.raises(ckpt.CheckpointError, match="at loss_scaler: the checkpoint holds a Scaler, this run's engine "
                                                    "a NoneType: resume with the launch config"):
        ckpt.resolve_live(back, {})


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("override, message", [
    ("--train.batchsize=4", "unknown field 'batchsize' in TrainConfig.train: did you mean 'batch_size'?"),
    ("--train.grad_acum=2", "unknown field 'grad_acum' in TrainConfig.train: did you mean 'grad_accum'?"),
    ("--optimizer.lr=1", "unknown field 'optimizer' in TrainConfig: did you mean 'optim'?"),
    ("--trian.steps=3", "unknown field 'trian' in TrainConfig: did you mean 'train'?"),
    ("--sampler.gen_lenght=4", "unknown field 'gen_lenght' in TrainConfig.sampler: did you mean 'gen_length'?"),
    ("--objective.shedule=cosine", "did you mean 'schedule'?"),
    ("--model.core.d_modle=64", "'d_modle' -> 'd_model'"),
    ("--train.xyz=1", "unknown field 'xyz' in TrainConfig.train: (known fields: steps, batch_size"),
])
def test_an_unknown_recipe_key_names_the_closest_valid_one(override, message):
    with pytest.raises(ConfigError) as err:
        load_train_config(TOY, [override])
    assert message in str(err.value) and "copy-tiny.yaml" in str(err.value)


def test_an_unknown_data_option_names_the_closest_one():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['train_sise'\].*did you mean 'train_sise' -> "
                                          r"'train_size'\?.*takes: train_size, val_size"):
        build_source(recipe(Path("unused"), "--data.options={train_sise: 3}").data)


def test_a_world_size_that_does_not_divide_the_global_batch_is_named():
    section = TrainSection(batch_size=8, batch_scope="global")
    assert [section.micro_batch(n) for n in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ConfigError) as err:
        section.micro_batch(3)
    message = str(err.value)
    assert "batch_size=8 with batch_scope=global" in message and "3 processes do not divide it" in message
    assert "launch 1, 2, 4, 8 processes" in message and "--train.batch_size=9" in message
    assert TrainSection(batch_size=8).micro_batch(3) == 8  # per-process batches: any number of processes
    with pytest.raises(ConfigError, match="batch_scope must be one of"):
        load_train_config(TOY, ["--train.batch_scope=world"])


def test_doctests_pass():
    import doctest

    import mmdiff.train.config
    import mmdiff.train.launch

    for module in (mmdiff.train.config, mmdiff.train.launch):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_a_full_disk_during_a_checkpoint_write_is_named_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    import errno

    import mmdiff.io as mio
    from mmdiff.train import checkpoint as ckpt

    config = recipe(tmp_path / "run", "--train.steps=2", "--train.save_every=1")
    Trainer(config).run(resume=False, max_steps=1)  # checkpoint step 1 written
    real_save = mio.save_file

    def full_disk(tensors, path, metadata=None):
        real_save(tensors, path, metadata=metadata)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mio, "save_file", full_disk)
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        Trainer(config).run(resume=True)
    message = str(err.value)
    assert "checkpoint step-000002" in message and "No space left on device" in message
    assert "step-000001 is untouched" in message and "Free space" in message
    monkeypatch.undo()
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-000001"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001"]  # no half-written folder left
    assert ckpt.load_checkpoint(root / "step-000001").step == 1
    Trainer(config).run(resume=True)  # space again: the run goes on from step 1
    assert (root / "latest").read_text().strip() == "step-000002"


def test_resuming_a_checkpoint_of_another_core_shape_names_the_shapes_and_the_fix(tmp_path):
    from mmdiff.train import checkpoint as ckpt

    Trainer(recipe(tmp_path / "run", "--train.steps=1", "--train.save_every=1")).run(resume=False)
    wider = recipe(tmp_path / "run", "--train.steps=2", "--model.core.d_model=48")
    with pytest.raises(ckpt.CheckpointError) as err:
        Trainer(wider).run(resume=True)
    message = str(err.value)
    assert "d_model" in message and "32" in message and "48" in message
    assert "--no-resume" in message or "train.out_dir" in message
