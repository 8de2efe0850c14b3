"""The trainer: recipe parsing and its errors, the LR schedule at exact steps, exact resume after a simulated crash,
atomic checkpoints (a crash mid-save leaves the last good one resumable), refusal of pickle files, metrics.jsonl
contents checked against an independent recomputation, gradient checkpointing, fine-tuning from a checkpoint, and
a tiny model that learns a copy task.

The copy task is a data source registered here, by a third party, without editing mmdiff: the prompt is 8 random
digits, the answer the same digits (SFT: only the answer is a target).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mmdiff.diffusion import get_schedule
from mmdiff.io import load_safetensors
from mmdiff.modeling import DiffusionModel
from mmdiff.registry import DATASETS
from mmdiff.tasks.text import TextTask
from mmdiff.train import (
    CheckpointError,
    ConfigError,
    TrainConfig,
    build_model,
    build_optimizer,
    build_scheduler,
    load_train_config,
    lr_multiplier,
    parse_overrides,
    train,
)
from mmdiff.train import checkpoint as ckpt
from mmdiff.train.config import OptimSection, apply_cli_overrides
from mmdiff.vocab import VocabLayout

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- a third-party source
@DATASETS.register("test-copy", override=True)
class CopySource:
    """Copy task: prompt = `length` random digits, answer = the same digits; the answer alone is the target."""

    task = "text"
    specials = ("mask", "eos", "pad", "bos")

    def __init__(self, length: int = 8, train_size: int = 40, val_size: int = 32, seed: int = 0) -> None:
        self.length, self.train_size, self.val_size, self.seed = length, train_size, val_size, seed

    def tokenizer(self) -> Any:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel({str(d): d for d in range(10)}, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=tok)

    def digits(self, split: str) -> torch.Tensor:
        size, stream = (self.train_size, 1) if split == "train" else (self.val_size, 2)
        g = torch.Generator().manual_seed(self.seed * 1000 + stream)
        return torch.randint(0, 10, (size, self.length), generator=g)  # (N, length)

    def dataset(self, split: str, vocab: VocabLayout) -> list[dict[str, torch.Tensor]]:
        maskable = torch.arange(2 * self.length) >= self.length
        return [{"ids": torch.cat([row, row]), "maskable": maskable} for row in self.digits(split)]

    @torch.no_grad()
    def evaluate(self, model: DiffusionModel, split: str = "val", limit: int | None = None) -> dict[str, float]:
        prompts = self.digits(split)[:limit]
        out = model.generate(prompts, gen_length=self.length, steps=self.length, block_length=self.length)
        right = out[:, self.length :].cpu() == prompts  # (N, length)
        return {"exact_match": right.all(1).float().mean().item(), "token_accuracy": right.float().mean().item()}


def tiny_recipe(out_dir: Path, *overrides: str) -> TrainConfig:
    """6 steps of a 1-layer model with dropout, grad accumulation 2 and an epoch of 5 micro-batches."""
    base = TrainConfig.from_dict({
        "name": "copy-test",
        "seed": 0,
        "model": {"core": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 16, "dropout": 0.1}},
        "data": {"name": "test-copy", "options": {"train_size": 40, "val_size": 32}},
        "objective": {"normalize": "sft"},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "weight_decay": 0.1, "min_lr_ratio": 0.1},
        "train": {"steps": 6, "batch_size": 8, "grad_accum": 2, "log_every": 1, "eval_every": 3, "eval_batches": 2,
                  "eval_metrics_limit": 8, "save_every": 2, "keep_checkpoints": 2, "out_dir": str(out_dir)},
        "sampler": {"gen_length": 8, "steps": 8, "block_length": 8},
    })
    return apply_cli_overrides(base, list(overrides))


def records(out_dir: Path, split: str | None = None) -> list[dict[str, Any]]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


def losses(out_dir: Path, split: str = "train") -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(out_dir, split)}


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(out_dir / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of `tiny_recipe`."""
    out = tmp_path_factory.mktemp("reference")
    assert train(tiny_recipe(out)) == out / "final"
    return out


# ------------------------------------------------------------------------------------------------- recipes
RECIPE = """\
name: demo
data:
  name: test-copy
  options: {train_size: 40}
model:
  core: {d_model: 32, n_layers: 1, n_heads: 2, max_seq_len: 16}
optim:
  lr: 1e-3
  betas: [0.9, 0.99]
train:
  steps: 5
  out_dir: runs/demo
"""


def write_recipe(tmp_path: Path, text: str = RECIPE) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_recipe_loads_with_defaults_overrides_and_roundtrips(tmp_path):
    cfg = load_train_config(write_recipe(tmp_path), ["--optim.lr=2e-4", "train.batch_size=4", "--seed", "7",
                                                     "--model.core.n_layers=2", "--data.options.val_size=16"])
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.lr, float)
    assert (cfg.train.batch_size, cfg.seed, cfg.model.core["n_layers"]) == (4, 7, 2)
    assert cfg.data.options == {"train_size": 40, "val_size": 16}
    assert cfg.optim.betas == (0.9, 0.99) and cfg.optim.warmup_steps == 100  # from the file / the default
    assert cfg.objective.normalize == "elbo" and cfg.sampler.gen_length == 128
    # 1e-3 in the file is a float (YAML 1.2), as is 1e-3 on the command line
    assert load_train_config(write_recipe(tmp_path)).optim.lr == 1e-3
    assert parse_overrides(["--optim.lr=1e-3", "x.y=null", "a=[1, 2]", "b=true", "c=-2E+1", "d=e5", "e=1.5"]) == {
        "optim.lr": 1e-3, "x.y": None, "a": [1, 2], "b": True, "c": -20.0, "d": "e5", "e": 1.5}
    saved = cfg.save(tmp_path / "resolved.yaml")
    assert load_train_config(saved) == cfg


@pytest.mark.parametrize("override, named", [
    ("--optim.lrr=1", "'lrr'"),
    ("--optimizer.lr=1", "'optimizer'"),
    ("--model.core.d_modle=64", "'d_modle' -> 'd_model'"),
    ("--model.core.vocab_size=64", "vocab_size"),
    ("--train.steps=many", "TrainConfig.train.steps must be int"),
    ("--model.core.d_model=abc", "TrainConfig.model.core.d_model must be int"),
    ("--model.core.n_heads=3", "n_heads=3"),
    ("--train.mixed_precision=fp16", "TrainConfig.train.mixed_precision must be one of"),
    ("--objective.schedule=linaer", "Did you mean: linear"),
    ("--optim.betas=[0.9]", "TrainConfig.optim.betas"),
    ("--train.batch_size=0", "TrainConfig.train.batch_size must be >= 1"),
])
def test_bad_overrides_name_the_field(tmp_path, override, named):
    with pytest.raises(ConfigError) as err:
        load_train_config(write_recipe(tmp_path), [override])
    assert named in str(err.value) and "recipe.yaml" in str(err.value)


def test_yaml_bare_no_reads_as_the_word_no(tmp_path):
    """YAML 1.1 reads `no` as False; a choice spelled "no" still gets it (from a recipe file and from the CLI)."""
    assert load_train_config(write_recipe(tmp_path), ["--train.mixed_precision=no"]).train.mixed_precision == "no"
    recipe = write_recipe(tmp_path, RECIPE.replace("train:\n", "train:\n  mixed_precision: no\n"))
    assert load_train_config(recipe).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="must be one of"):
        load_train_config(write_recipe(tmp_path), ["--train.mixed_precision=yes"])


def test_missing_fields_and_malformed_input_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required field TrainConfig\.data\.name"):
        load_train_config(write_recipe(tmp_path, RECIPE.replace("  name: test-copy\n", "")))
    with pytest.raises(ConfigError, match=r"missing required field TrainConfig\.name"):
        load_train_config(write_recipe(tmp_path, RECIPE.replace("name: demo\n", "")))
    with pytest.raises(ConfigError, match="is empty"):
        load_train_config(write_recipe(tmp_path, "# nothing\n"))
    with pytest.raises(ConfigError, match="has no value"):
        load_train_config(write_recipe(tmp_path), ["--optim.lr"])
    with pytest.raises(ConfigError, match="not a dotted field name"):
        parse_overrides(["optim..lr=1"])
    with pytest.raises(FileNotFoundError, match="configs/"):
        load_train_config(tmp_path / "nope.yaml")


def test_data_source_errors_name_the_option():
    cfg = tiny_recipe(Path("unused"))
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['size'\].*takes: length, train_size"):
        build_model(apply_cli_overrides(cfg, ["--data.options.size=3"]))
    with pytest.raises(ConfigError, match="unknown dataset 'test-cpy'.*Did you mean: test-copy"):
        build_model(apply_cli_overrides(cfg, ["--data.name=test-cpy"]))


# ------------------------------------------------------------------------------------------------ LR schedule
def test_lr_schedule_values_at_exact_steps():
    # warmup 2, 6 updates, min ratio 0.1: (s+1)/2 while warming up, then cosine with progress (s-1)/4
    expected = [0.5, 1.0, 0.1 + 0.45 * (1 + math.cos(math.pi / 4)), 0.55, 0.1 + 0.45 * (1 + math.cos(3 * math.pi / 4)),
                0.1]
    assert expected[2] == pytest.approx(0.8681980515339464, abs=1e-15)
    assert [lr_multiplier(s, 2, 6, 0.1) for s in range(6)] == pytest.approx(expected, abs=1e-15)
    assert lr_multiplier(0, 0, 4, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # no warmup
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, OptimSection(lr=2.0, warmup_steps=2, min_lr_ratio=0.1))
    scheduler = build_scheduler(optimizer, OptimSection(lr=2.0, warmup_steps=2, min_lr_ratio=0.1), 6)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert seen == [[2.0 * f] * 2 for f in expected]  # both groups (decay, no decay) follow it
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]  # the bias is not decayed


# ------------------------------------------------------------------------------------------- metrics.jsonl
def test_metrics_jsonl_contents(reference):
    train_rows = records(reference, "train")
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in train_rows] == pytest.approx([3e-3 * lr_multiplier(s, 2, 6, 0.1) for s in range(6)],
                                                          abs=1e-18)
    assert [r["tokens"] for r in train_rows] == [256 * s for s in range(1, 7)]  # 2 x 8 rows x 16 tokens per step
    assert [r["epoch"] for r in train_rows] == [2 * s / 5 for s in range(1, 7)]  # 5 micro-batches per epoch
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in train_rows)
    val_rows = records(reference, "val")
    assert [r["step"] for r in val_rows] == [3, 6]
    # independent recomputation of the final val loss: 2 fixed batches of 8, masks from a generator seeded 0
    model = DiffusionModel.from_pretrained(reference / "final")
    source = CopySource(train_size=40, val_size=32)
    val = source.dataset("val", model.vocab)
    generator = torch.Generator().manual_seed(0)
    schedule = get_schedule("linear", eps=1e-3)
    batch_losses = [model.loss(TextTask.collate(val[b * 8 : (b + 1) * 8], model.vocab), schedule, normalize="sft",
                               generator=generator).loss.item() for b in range(2)]
    assert val_rows[-1]["loss"] == pytest.approx(sum(batch_losses) / 2, abs=1e-6)
    assert val_rows[-1]["exact_match"] == source.evaluate(model, "val", 8)["exact_match"]
    assert val_rows[-1]["token_accuracy"] == source.evaluate(model, "val", 8)["token_accuracy"]
    card = (reference / "final" / "README.md").read_text()
    assert "# copy-test" in card and "steps: 6" in card and f"{val_rows[-1]['loss']:.4f}" in card
    assert json.loads((reference / "final" / "sampler_config.json").read_text())["gen_length"] == 8
    assert model.config.task_options["data"] == {"name": "test-copy", "options": {"train_size": 40, "val_size": 32}}
    assert model.config.name == "copy-test" and model.tokenizer is not None
    assert TrainConfig.from_yaml((reference / "config.yaml").read_text()) == tiny_recipe(reference)


def test_checkpoint_folder_layout(reference):
    root = reference / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-000004", "step-000006"]  # keep_checkpoints: 2
    assert (root / "latest").read_text().strip() == "step-000006"
    folder = root / "step-000006"
    names = sorted(p.name for p in folder.iterdir())
    assert {"model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "trainer_state.json",
            "rng-rank0.json", "config.yaml", "config.json", "manifest.json"} <= set(names)
    assert all(name.endswith((".safetensors", ".json", ".yaml")) for name in names)
    state = json.loads((folder / "trainer_state.json").read_text())
    assert (state["step"], state["micro_batches"], state["batch_size"], state["world_size"]) == (6, 12, 8, 1)
    # the checkpoint is also a model folder, identical to the final model at the last step
    final, saved = final_weights(reference), load_safetensors(folder / "model.safetensors")
    assert final.keys() == saved.keys() and all(torch.equal(final[k], saved[k]) for k in final)
    assert not list(root.glob(".tmp-*"))


def test_optimizer_state_roundtrips_exactly_without_pickle():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model, OptimSection(lr=0.1))
    for _ in range(2):
        model(torch.randn(5, 3)).square().sum().backward()
        optimizer.step()
    state = optimizer.state_dict()
    tensors, meta = ckpt.optimizer_state_to_safe(state)
    json.dumps(meta)  # JSON-able
    back = ckpt.optimizer_state_from_safe(tensors, meta)
    assert back["param_groups"] == state["param_groups"]
    assert back["state"].keys() == state["state"].keys()
    for pid, values in state["state"].items():
        assert all(torch.equal(values[k], back["state"][pid][k]) for k in values)


# --------------------------------------------------------------------------------------------- exact resume
def test_interrupted_run_resumes_exactly(reference, tmp_path):
    out = tmp_path / "run"
    stopped = train(tiny_recipe(out), max_steps=5)  # "crash" after step 5; the last checkpoint is step 4
    assert stopped == out / "checkpoints" / "step-000004" and not (out / "final").exists()
    assert max(losses(out)) == 5
    train(tiny_recipe(out))
    assert losses(out) == losses(reference)  # bit for bit, steps 1..6 (step 5 rerun from the checkpoint)
    assert losses(out, "val") == losses(reference, "val")
    assert [(r["step"], r["split"]) for r in records(out)] == [(r["step"], r["split"]) for r in records(reference)]
    ref, got = final_weights(reference), final_weights(out)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_evaluation_does_not_change_training(reference, tmp_path):
    out = tmp_path / "run"
    train(tiny_recipe(out, "--train.eval_every=0", "--train.eval_metrics_limit=0", "--train.save_every=0"))
    assert losses(out) == losses(reference)
    assert [r["step"] for r in records(out, "val")] == [6]  # evaluated at the end only
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-000006"]


def test_metrics_line_cut_by_a_crash_is_dropped_on_resume(reference, tmp_path):
    out = tmp_path / "run"
    train(tiny_recipe(out), max_steps=5)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "split": "tra')  # a record cut short by the crash
    train(tiny_recipe(out))
    timing = ("tokens_per_s", "elapsed_s")  # wall-clock values differ between runs; everything else is equal
    assert [{k: v for k, v in r.items() if k not in timing} for r in records(out)] == [
        {k: v for k, v in r.items() if k not in timing} for r in records(reference)]


def test_crash_during_save_keeps_the_previous_checkpoint(reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = ckpt.write_training_files

    def crash_at_step_4(folder: Path, **kwargs: Any) -> None:
        if kwargs["trainer_state"]["step"] == 4:
            ckpt.write_optimizer(folder, kwargs["optimizer_state"], rank=None)  # half of the files, then a crash
            raise KeyboardInterrupt("simulated crash while saving")
        real(folder, **kwargs)

    monkeypatch.setattr(ckpt, "write_training_files", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_recipe(out))
    monkeypatch.undo()
    root = out / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-000002"]
    assert (root / "latest").read_text().strip() == "step-000002"
    assert not list(root.glob(".tmp-*"))  # the half-written folder is gone
    ckpt.verify_checkpoint(root / "step-000002")
    (root / ".tmp-step-000004").mkdir()  # what a hard kill (no cleanup) would leave behind
    (root / ".tmp-step-000004" / "model.safetensors").write_bytes(b"junk")
    train(tiny_recipe(out))
    assert losses(out) == losses(reference)
    assert not list(root.glob(".tmp-*"))


def test_truncated_checkpoint_is_named_and_deleting_it_falls_back(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    weights = out / "checkpoints" / "step-000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        train(tiny_recipe(out))
    message = str(err.value)
    assert "step-000006" in message and "truncated" in message
    assert "Delete" in message and "step-000004" in message and "--no-resume" in message
    shutil.rmtree(out / "checkpoints" / "step-000006")
    with pytest.warns(UserWarning, match="resuming from the newest complete checkpoint step-000004"):
        train(tiny_recipe(out))
    assert losses(out) == losses(reference)


def test_pickle_files_in_a_checkpoint_are_refused(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "checkpoints" / "step-000006" / "optimizer.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match=r"pickle file\(s\) \['optimizer.pt'\].*never loads pickle"):
        train(tiny_recipe(out))
    with pytest.raises(CheckpointError, match="pickle"):
        ckpt.load_checkpoint(out / "checkpoints" / "step-000006")


def test_missing_checkpoint_error_names_it(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    root.mkdir(parents=True)
    (root / "latest").write_text("step-000009\n")
    with pytest.raises(CheckpointError, match="names step-000009, which does not exist.*--no-resume"):
        train(tiny_recipe(tmp_path / "run"))
    (root / "step-000003").mkdir()  # a folder without its manifest: an incomplete write
    with pytest.raises(CheckpointError, match=r"step-000003 has no manifest.json.*No other good checkpoint"):
        train(tiny_recipe(tmp_path / "run"))


def test_no_resume_moves_the_previous_run_aside(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    with pytest.warns(UserWarning, match="starting over"):
        train(tiny_recipe(out), resume=False, max_steps=1)
    assert (out / "replaced-1" / "final" / "model.safetensors").is_file()
    assert (out / "replaced-1" / "checkpoints" / "step-000006").is_dir()
    assert losses(out) == {1: losses(reference)[1]}  # a fresh run from step 0


# ------------------------------------------------------------------------------------- model-side switches
def test_gradient_checkpointing_is_used_and_changes_nothing(reference, tmp_path, monkeypatch):
    import mmdiff.core.model as core_model

    calls = []
    real = core_model.checkpoint

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(core_model, "checkpoint", spy)
    out = tmp_path / "run"
    train(tiny_recipe(out, "--model.gradient_checkpointing=true"))
    assert len(calls) == 12  # 1 block x 2 micro-batches x 6 steps; evaluation runs in eval mode, not checkpointed
    assert losses(out) == pytest.approx(losses(reference), abs=1e-6)


def test_fine_tune_from_a_checkpoint_folder(reference, tmp_path):
    out = tmp_path / "tuned"
    init = str(reference / "final")
    train(tiny_recipe(out, f"--model.init_from={init}", "--optim.lr=0", "--train.steps=2", "--name=copy-tuned"))
    ref, got = final_weights(reference), final_weights(out)
    assert all(torch.equal(ref[k], got[k]) for k in ref)  # lr 0: the loaded weights come through unchanged
    tuned = DiffusionModel.from_pretrained(out / "final")
    assert tuned.config.name == "copy-tuned"
    with pytest.raises(ConfigError, match="d_model: recipe 64 vs checkpoint 32"):
        build_model(tiny_recipe(out, f"--model.init_from={init}", "--model.core.d_model=64"))
    with pytest.raises(ConfigError, match="init_from='nowhere/at-all'"):
        build_model(tiny_recipe(out, "--model.init_from=nowhere/at-all"))


def test_bf16_autocast_and_back_to_fp32_in_one_process(reference, tmp_path):
    out = tmp_path / "bf16"
    train(tiny_recipe(out, "--train.mixed_precision=bf16", "--train.steps=2", "--train.eval_metrics_limit=0"))
    first = losses(out)[1]
    assert math.isfinite(first) and first != losses(reference)[1]  # bf16 matmuls: close to, not equal to, fp32
    assert first == pytest.approx(losses(reference)[1], rel=0.02)
    train(tiny_recipe(tmp_path / "fp32", "--train.steps=2", "--train.eval_metrics_limit=0"))
    assert losses(tmp_path / "fp32")[1] == losses(reference)[1]  # "no" again: the fp32 numbers exactly


# --------------------------------------------------------------------------------------------- it learns
def test_tiny_model_learns_the_copy_task(tmp_path):
    cfg = tiny_recipe(
        tmp_path / "learn", "--model.core={d_model: 32, n_layers: 1, n_heads: 2, max_seq_len: 16}",
        "--data.options={train_size: 4096, val_size: 64}", "--optim.lr=1e-2", "--optim.warmup_steps=10",
        "--train.steps=60", "--train.batch_size=32", "--train.grad_accum=1", "--train.log_every=10",
        "--train.eval_every=0", "--train.eval_metrics_limit=64", "--train.save_every=0",
    )
    train(cfg)
    final = records(tmp_path / "learn", "val")[-1]
    # chance is 10 % per token and 1e-8 per answer
    assert final["token_accuracy"] >= 0.9, final
    assert final["exact_match"] >= 0.5, final
    assert records(tmp_path / "learn", "train")[-1]["loss"] < 0.5 * records(tmp_path / "learn", "train")[0]["loss"]
    model = DiffusionModel.from_pretrained(tmp_path / "learn" / "final")  # the saved model generates the same
    assert CopySource(train_size=4096, val_size=64).evaluate(model, "val", 64)["exact_match"] == final["exact_match"]


# ------------------------------------------------------------------------------------------- distributed
def _launch(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 ...`: two CPU processes with gloo.

    (In accelerate 1.x, `--cpu --num_processes 2` starts a single process unless mpirun is used; the torchrun
    launcher behind `--multi_gpu` with ACCELERATE_USE_CPU gives the 2-process gloo group.)
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(_free_port()), str(REPO / "tests" / "dist_train_check.py"), *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert result.returncode == 0, f"accelerate launch failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TOY = str(REPO / "configs" / "toy" / "copy-tiny.yaml")
TOY_SMALL = ["--train.steps=4", "--train.batch_size=8", "--train.log_every=1", "--train.eval_every=2",
             "--train.eval_batches=1", "--train.eval_metrics_limit=4", "--train.save_every=2"]


@pytest.mark.dist
def test_two_cpu_processes_train_in_sync(tmp_path):
    out = tmp_path / "dist"
    result = _launch([TOY, str(out), *TOY_SMALL])
    assert "DIST_CHECK_OK" in result.stdout
    assert (out / "final" / "model.safetensors").is_file()
    assert [r["step"] for r in records(out, "train")] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in records(out))
    # 4 steps x 2 processes x 8 rows of 8..16 real tokens (4..8 digits, each followed by its running sum)
    assert 4 * 2 * 8 * 8 <= records(out, "train")[-1]["tokens"] <= 4 * 2 * 8 * 16
    for step in ("step-000002", "step-000004"):
        ranks = [json.loads((out / "checkpoints" / step / f"rng-rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]  # identical weights on both processes
        assert ranks[0]["rng"]["torch"] != ranks[1]["rng"]["torch"]  # each process has its own dropout stream


@pytest.mark.dist
def test_two_cpu_processes_resume_exactly(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    _launch([TOY, str(whole), *TOY_SMALL])
    _launch([TOY, str(broken), *TOY_SMALL, "--max-steps=3"])
    _launch([TOY, str(broken), *TOY_SMALL, "--resume"])
    assert losses(broken) == losses(whole)
    ref, got = final_weights(whole), final_weights(broken)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
