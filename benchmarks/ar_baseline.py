"""The autoregressive baseline of the sampler benchmark: the same core as the masked-diffusion entry
`running-sums-small`, trained with causal attention and the next-token loss on the same task and budget, and decoded
greedily with a KV cache.

Issue 3 asks whether parallel diffusion decoding is faster than autoregressive decoding at equal quality (D2F, Wang et
al. 2025, "Diffusion LLMs Can Do Faster-Than-AR Inference via Discrete Diffusion Forcing", reports 2.5x); this is the
autoregressive side of that comparison. Training is the standard next-token objective (Radford et al. 2018/2019, GPT)
on the row read after a BOS token (`[bos, t_0, ..., t_{L-2}]`, see `build_ar_model` for why the BOS is needed): the
logit before token j predicts it, scored only where token j is a running sum (the digits are random and given, as in
the diffusion recipe where they are never masked). Decoding is greedy with cached keys and values
(Pope et al. 2022, "Efficiently Scaling Transformer Inference"): each forward pass runs only the tokens that became
known since the last one (the committed sum and the digit after it) against the cache.

Same budget as the diffusion recipe: `Stage.from_recipe` reads the recipe files
(`configs/reasoning/running-sums-small.yaml`, then `-stage2.yaml` and `-stage3.yaml`) for the data sizes, steps, batch
sizes, AdamW settings and warmup + cosine schedule, and the batches come from the trainer's own `BatchStream` with each
recipe's seed, so both models see the same problems in the same order. The autoregressive loss scores every sum of an
example (the diffusion loss scores the masked fraction t of them), which is the usual advantage of next-token training.

    python benchmarks/ar_baseline.py train --out runs/ar-running-sums            # the full three-stage budget
    python benchmarks/ar_baseline.py train --out runs/ar-smoke --steps-scale 0.01
    python benchmarks/ar_baseline.py eval runs/ar-running-sums/final --limit 256 --batch-size 32

>>> source = RunningSumsSource(n_min=2, n_max=3, val_size=4)
>>> model = build_ar_model(source, {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 8})
>>> canvas, attention = running_sums_canvases([[3, 9], [4, 1, 5]], model.vocab)
>>> out = ar_fill(model.core, canvas, attention, mask_id=model.vocab.mask_id, bos_id=model_bos_id(model))
>>> out.nfe, out.commit_step.tolist()   # one forward pass per sum column; which pass filled each position
(3, [[-1, -1, -1, 1, -1, 2], [-1, 0, -1, 1, -1, 2]])
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# OpenMP threads that spin while waiting collapse when other processes share the cores; set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from mmdiff.canvas import Canvas  # noqa: E402
from mmdiff.core.config import CoreConfig  # noqa: E402
from mmdiff.core.masks import block_causal_mask  # noqa: E402
from mmdiff.core.model import KVCache, MaskedDiffusionTransformer  # noqa: E402
from mmdiff.data.running_sums import VOCAB, Grade, RunningSumsSource, grade_answer  # noqa: E402
from mmdiff.modeling import DiffusionModel, ModelConfig  # noqa: E402
from mmdiff.sampling.output import GIVEN, SamplerOutput  # noqa: E402
from mmdiff.tasks.text import TextTask, left_pad  # noqa: E402
from mmdiff.train.config import OptimSection, load_train_config  # noqa: E402
from mmdiff.train.loop import BatchStream, build_optimizer, build_scheduler  # noqa: E402
from mmdiff.vocab import VocabLayout  # noqa: E402

__all__ = [
    "Stage",
    "RECIPES",
    "AR_NAME",
    "default_stages",
    "build_ar_model",
    "model_bos_id",
    "causal_mask",
    "next_token_loss",
    "train_ar",
    "ar_fill",
    "running_sums_canvases",
    "evaluate_ar",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DIFFUSION_ONLY_CORE = ("attention", "block_size")  # recipe core fields the causal baseline does not take
RECIPES = ("configs/reasoning/running-sums-small.yaml", "configs/reasoning/running-sums-small-stage2.yaml",
           "configs/reasoning/running-sums-small-stage3.yaml")
AR_NAME = "running-sums-small-ar"
TRAINING_JSON = "ar_training.json"
METRICS_JSONL = "metrics.jsonl"


# ================================================================================================== the budget
@dataclass(frozen=True)
class Stage:
    """One training stage of the budget.

    Args:
        name: label in logs and the training JSON.
        data: `RunningSumsSource` options (n_min, n_max, val_size, ...).
        steps: optimizer steps.
        batch_size: problems per step.
        optim: AdamW, warmup and cosine settings (`mmdiff.train.config.OptimSection`).
        core: `CoreConfig` fields of the model (the first stage's build it; later stages must agree or be empty).
        seed: orders the batches (the recipe's seed, as the trainer uses it).
    """

    name: str
    data: Mapping[str, Any]
    steps: int
    batch_size: int
    optim: OptimSection = field(default_factory=OptimSection)
    core: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"stage {self.name!r}: steps and batch_size must be >= 1, got {self.steps} and "
                             f"{self.batch_size}")

    @classmethod
    def from_recipe(cls, path: str | os.PathLike) -> Stage:
        """The budget of one diffusion recipe (relative paths are read from the repository root).

        >>> Stage.from_recipe(RECIPES[0]).steps, Stage.from_recipe(RECIPES[1]).batch_size
        (1500, 32)
        """
        path = Path(path)
        path = path if path.is_absolute() or path.is_file() else REPO_ROOT / path
        recipe = load_train_config(path)
        if recipe.data.name != "running-sums":
            raise ValueError(f"{path}: the autoregressive baseline trains on 'running-sums', this recipe uses data "
                             f"source {recipe.data.name!r}")
        if recipe.train.grad_accum != 1:
            raise ValueError(f"{path}: train.grad_accum={recipe.train.grad_accum}; the baseline runs one batch per "
                             "step, so give the recipe grad_accum 1 and the whole batch in batch_size")
        # the recipe's attention layout is the diffusion model's (the baseline is causal by its objective)
        core = {k: v for k, v in recipe.model.core.items() if k not in DIFFUSION_ONLY_CORE}
        return cls(name=path.stem, data=dict(recipe.data.options), steps=recipe.train.steps,
                   batch_size=recipe.train.batch_size, optim=recipe.optim, core=core, seed=recipe.seed)

    def scaled(self, factor: float) -> Stage:
        """The same stage with `steps` and `warmup_steps` multiplied by `factor` (at least one step each).

        >>> Stage("s", {}, steps=1500, batch_size=64, optim=OptimSection(warmup_steps=100)).scaled(0.01).steps
        15
        """
        if factor <= 0:
            raise ValueError(f"steps scale must be > 0, got {factor}")
        warmup = self.optim.warmup_steps
        optim = replace(self.optim, warmup_steps=max(1, round(warmup * factor)) if warmup else 0)
        return replace(self, steps=max(1, round(self.steps * factor)), optim=optim)


def default_stages(steps_scale: float = 1.0) -> list[Stage]:
    """The diffusion entry's three stages (`RECIPES`), their steps optionally scaled."""
    stages = [Stage.from_recipe(p) for p in RECIPES]
    return stages if steps_scale == 1.0 else [s.scaled(steps_scale) for s in stages]


def build_ar_model(source: RunningSumsSource, core: Mapping[str, Any], *, bos: bool = True) -> DiffusionModel:
    """A fresh model with the source's vocabulary, built exactly as the diffusion entry's (the global torch RNG
    initialises it). `config.task_options` records the data source, that it is autoregressive, and the BOS id it
    reads before each row (`bos_id`, None without one).

    Why a BOS: RoPE rotates queries and keys, never values, so under causal attention a row that starts with k equal
    tokens gives those k positions identical hidden states; without a BOS, a problem whose first two digits are
    equal (`7 7 7 ...`: d1, s1 = d1, d2 = d1; one problem in ten) predicts s2 from the same state that predicted s1
    and is always wrong. The BOS makes the positions distinguishable; the diffusion model does not need it (it sees
    the whole canvas).
    """
    tokenizer = source.tokenizer()
    vocab = VocabLayout.build(len(tokenizer), source.specials)
    if bos and vocab.bos_id is None:
        raise ValueError("the source's specials have no 'bos'; build the model with bos=False")
    task_options = {"data": {"name": "running-sums", "options": _source_options(source)},
                    "objective": "next_token", "attention": "causal", "bos_id": vocab.bos_id if bos else None}
    config = ModelConfig(CoreConfig(vocab=vocab, **core), task=source.task, name=AR_NAME, task_options=task_options)
    return DiffusionModel(config, tokenizer=tokenizer)


def model_bos_id(model: DiffusionModel) -> int | None:
    """The BOS id an autoregressive baseline was trained with (`build_ar_model` records it), or None."""
    if model.config.task_options.get("objective") != "next_token":
        raise ValueError(f"model {model.config.name or ''} is not an autoregressive baseline (config.json "
                         "task_options['objective'] is not 'next_token'); train one with benchmarks/ar_baseline.py")
    return model.config.task_options.get("bos_id")


def _source_options(source: RunningSumsSource) -> dict[str, Any]:
    return {"n_min": source.n_min, "n_max": source.n_max, "train_size": source.train_size,
            "val_size": source.val_size, "seed": source.seed, "eval_batch_size": source.eval_batch_size}


# ==================================================================================================== the loss
def causal_mask(attention_mask: Tensor | None, length: int, device: torch.device | None = None) -> Tensor:
    """Causal boolean mask (True = may attend) with padding keys hidden.

    A padding query sees only itself, so no attention row is empty (older torch releases and some fused kernels give
    NaN for an empty row, which would reach the cache); real queries never see padding.

    Args:
        attention_mask: (B, L) True at real tokens, or None (no padding).
        length: L.
        device: where to build the mask (default: the attention mask's device).

    Returns:
        (B, 1, L, L), or (1, 1, L, L) without an attention mask.

    >>> causal_mask(torch.tensor([[False, True, True]]), 3)[0, 0].int().tolist()
    [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    """
    device = attention_mask.device if attention_mask is not None and device is None else device
    causal = block_causal_mask(length, 1, device=device)  # (1, 1, L, L): prompt of 0, one token per block
    if attention_mask is None:
        return causal
    if attention_mask.shape[-1] != length:
        raise ValueError(f"attention_mask has {attention_mask.shape[-1]} positions, the sequence has {length}")
    keys = attention_mask.to(device).bool()[:, None, None, :]  # (B, 1, 1, L)
    eye = torch.eye(length, dtype=torch.bool, device=device)  # (L, L)
    return causal & (keys | eye)  # (B, 1, L, L)


def next_token_loss(core: MaskedDiffusionTransformer, canvas: Canvas, *, bos_id: int | None = None) -> Tensor:
    """Mean next-token cross-entropy over the target positions of a right-padded canvas.

    Token j is predicted from the logit of the input position before it: position j-1 of the canvas, or, with
    `bos_id`, position j of the input `[bos, t_0, ..., t_{L-2}]` (the canvas shifted right by a BOS token; the last
    token is never an input, so the input keeps length L). Only positions j with `canvas.maskable[:, j]` count, and
    logits are computed there only.

    Args:
        core: the core (run with a causal mask).
        canvas: ids (B, L), maskable (B, L) targets, attention_mask (B, L) right padding or None.
        bos_id: prepend this token (None: no BOS; then position 0 cannot be a target).

    >>> _ = torch.manual_seed(0)
    >>> src = RunningSumsSource(n_min=2, n_max=2)
    >>> model = build_ar_model(src, {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 8})
    >>> canvas = TextTask.collate([src.example([1, 2], model.vocab)], model.vocab)
    >>> round(next_token_loss(model.core, canvas).item(), 2)   # near ln(14) = 2.64 at initialisation
    2.57
    """
    targets, ids = canvas.maskable.bool(), canvas.ids
    if not targets.any():
        raise ValueError("the canvas has no target positions (maskable is all False); nothing to score")
    if bos_id is None:
        if targets[:, 0].any():
            raise ValueError("a target at position 0 has no previous position to predict it from; pass bos_id (a "
                             "BOS token before each row) or give a token before the first target")
        inputs, at = ids, F.pad(targets[:, 1:], (0, 1), value=False)  # (B, L): True at j-1 where j is a target
    else:
        bos = torch.full_like(ids[:, :1], bos_id)  # (B, 1)
        inputs, at = torch.cat([bos, ids[:, :-1]], dim=1), targets  # (B, L): input j is token j-1
    mask = causal_mask(canvas.attention_mask, ids.shape[1], ids.device)
    logits = core(inputs, attention_mask=mask, logits_at=at, check_inputs=False).logits  # (N, V), row-major order
    return F.cross_entropy(logits.float(), ids[targets])  # labels in the same row-major order


# ================================================================================================== training
def train_ar(
    out_dir: str | os.PathLike,
    *,
    stages: Sequence[Stage] | None = None,
    core: Mapping[str, Any] | None = None,
    seed: int = 0,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    bos: bool = True,
    init: str | os.PathLike | None = None,
    log_every: int = 20,
    log: Callable[[str], Any] = print,
) -> Path:
    """Trains the autoregressive baseline through `stages` and saves it as `out_dir/final`.

    Each stage builds a fresh AdamW + warmup-cosine schedule (as each diffusion recipe does) and continues from the
    weights of the stage before. Writes `out_dir/metrics.jsonl` (loss, lr, tokens/s every `log_every` steps) and
    `out_dir/ar_training.json` (per stage and in total: steps, wall seconds (batches included), compute seconds
    (the updates alone), training tokens and tokens/s of compute, the device).

    Args:
        out_dir: run folder.
        stages: the budget; default `default_stages()` (the diffusion entry's three recipes).
        core: `CoreConfig` fields; default the first stage's `core` (d_model 128, 4 layers, 4 heads, max_seq_len 256).
        seed: seeds the fresh weights (each stage's own `seed` orders its batches).
        threads: torch CPU threads while training (None: torch's current setting; restored afterwards).
        device: where to train.
        bos: read a BOS token before each row (see `build_ar_model`; ignored with `init`).
        init: continue a trained baseline instead of building a fresh one: a model folder written by this function
            (`OUT/final`, or the shipped `benchmarks/baselines/ar-running-sums`) with its `ar_training.json` beside
            it or one level up; its stages open the new training record, so the record covers the whole budget.
        log_every: steps between log lines and metrics records.
        log: called with each log line.

    Returns:
        The saved model folder `out_dir/final` (load it with `DiffusionModel.from_pretrained`).

    >>> # train_ar("runs/ar-running-sums")                                     # the full budget
    >>> # train_ar("runs/ar-smoke", stages=[s.scaled(0.01) for s in default_stages()])
    >>> # train_ar("runs/ar-more", stages=[Stage.from_recipe("next.yml")], init="benchmarks/baselines/ar-running-sums")
    """
    stages = list(default_stages() if stages is None else stages)
    if not stages:
        raise ValueError("stages is empty; give at least one Stage (default_stages() is the diffusion budget)")
    core = dict(stages[0].core if core is None else core)
    for stage in stages[1:]:
        clash = {k: v for k, v in stage.core.items() if core.get(k) != v}
        if clash:
            raise ValueError(f"stage {stage.name!r} sets core fields {clash} that differ from the model's {core}; "
                             "every stage trains the same model")
    out_dir, device = Path(out_dir), torch.device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_JSONL).write_text("")
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads or previous_threads)
        torch.manual_seed(seed)
        if init is None:
            model, history = build_ar_model(RunningSumsSource(**stages[0].data), core, bos=bos), []
        else:
            model, history = _load_trained(init, core)
        model = model.to(device).train()
        log(f"{AR_NAME}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(stages)} "
            f"stage(s) after {len(history)} earlier, {torch.get_num_threads()} thread(s) on {device}")
        reports = history + [_train_stage(model, stage, device, out_dir, log_every, log) for stage in stages]
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)

    model.eval()
    model.config.task_options["data"]["options"] = _source_options(RunningSumsSource(**stages[-1].data))
    final = model.save_pretrained(out_dir / "final", card=_model_card(reports, core, seed))
    summary = {
        "name": AR_NAME, "seed": seed, "core": core, "device": str(device), "threads": used_threads,
        "torch": torch.__version__, "platform": platform.platform(),
        "wall_s": sum(r["wall_s"] for r in reports), "compute_s": sum(r["compute_s"] for r in reports),
        "steps": sum(r["steps"] for r in reports), "stages": reports,
    }
    (out_dir / TRAINING_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    log(f"saved {final} ({summary['steps']} steps, {summary['wall_s']:.1f} s)")
    return final


def _train_stage(model: DiffusionModel, stage: Stage, device: torch.device, out_dir: Path, log_every: int,
                 log: Callable[[str], Any]) -> dict[str, Any]:
    """Runs one stage in place on `model`; returns its record for the training JSON."""
    source = RunningSumsSource(**stage.data)
    vocab = model.vocab
    if VocabLayout.build(len(source.tokenizer()), source.specials).to_dict() != vocab.to_dict():
        raise ValueError(f"stage {stage.name!r}: its data source builds another vocabulary than the model's")
    stream = BatchStream(source.dataset("train", vocab), lambda examples: TextTask.collate(examples, vocab),
                         batch_size=stage.batch_size, seed=stage.seed)
    optimizer = build_optimizer(model, stage.optim)
    scheduler = build_scheduler(optimizer, stage.optim, stage.steps)
    max_norm = stage.optim.grad_clip if stage.optim.grad_clip > 0 else float("inf")
    bos_id = model_bos_id(model)
    compute, tokens, window, losses, last_loss = 0.0, 0, {"tokens": 0, "time": 0.0}, [], float("nan")
    stage_started = time.perf_counter()
    for step in range(1, stage.steps + 1):
        canvas = next(stream).to(device)
        started = time.perf_counter()
        loss = _update(model, canvas, bos_id, optimizer, scheduler, max_norm)
        took = time.perf_counter() - started
        n_tokens = int(canvas.attention_mask.sum()) if canvas.attention_mask is not None else canvas.ids.numel()
        compute, tokens = compute + took, tokens + n_tokens
        window["tokens"], window["time"] = window["tokens"] + n_tokens, window["time"] + took
        losses.append(loss)
        if step % log_every == 0 or step == stage.steps:
            record = {"stage": stage.name, "step": step, "loss": float(torch.stack(losses).mean()),
                      "lr": scheduler.get_last_lr()[0], "tokens_per_s": window["tokens"] / max(window["time"], 1e-9),
                      "elapsed_s": time.perf_counter() - stage_started}
            with open(out_dir / METRICS_JSONL, "a") as f:
                f.write(json.dumps(record) + "\n")
            log(f"{stage.name} step {step}/{stage.steps}: loss {record['loss']:.4f}, "
                f"{record['tokens_per_s']:,.0f} tokens/s")
            window, losses, last_loss = {"tokens": 0, "time": 0.0}, [], record["loss"]
    return {"name": stage.name, "data": dict(stage.data), "steps": stage.steps, "batch_size": stage.batch_size,
            "lr": stage.optim.lr, "warmup_steps": stage.optim.warmup_steps, "seed": stage.seed, "device": str(device),
            "wall_s": time.perf_counter() - stage_started, "compute_s": compute, "tokens": tokens,
            "tokens_per_s": tokens / max(compute, 1e-9), "final_loss": last_loss}


def _update(model: DiffusionModel, canvas: Canvas, bos_id: int | None, optimizer: torch.optim.Optimizer,
            scheduler: Any, max_norm: float) -> Tensor:
    """One AdamW update on one batch; returns the detached loss."""
    loss = next_token_loss(model.core, canvas, bos_id=bos_id)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return loss.detach()


def _load_trained(folder: str | os.PathLike, core: Mapping[str, Any]) -> tuple[DiffusionModel, list[dict[str, Any]]]:
    """A trained baseline to continue, and the stage records of its training JSON."""
    folder = Path(folder)
    records = [p / TRAINING_JSON for p in (folder, folder.parent) if (p / TRAINING_JSON).is_file()]
    if not records:
        raise FileNotFoundError(f"{folder}: no {TRAINING_JSON} in it or one level up; continue a baseline written by "
                                "`ar_baseline.py train` (its OUT/final) so that the record covers its whole budget")
    model = DiffusionModel.from_pretrained(folder)
    model_bos_id(model)  # raises unless it is an autoregressive baseline
    shape = {k: getattr(model.core.config, k) for k in core if k != "max_seq_len"}
    if shape != {k: v for k, v in core.items() if k != "max_seq_len"}:
        raise ValueError(f"{folder}: its core {shape} differs from the stages' {dict(core)}; every stage trains the "
                         "same model (only max_seq_len may grow: no weight depends on it)")
    if core.get("max_seq_len", model.core.config.max_seq_len) < model.core.config.max_seq_len:
        raise ValueError(f"{folder}: max_seq_len {model.core.config.max_seq_len} would shrink to "
                         f"{core['max_seq_len']}; continue with the same or a longer one")
    if "max_seq_len" in core:  # longer canvases (RoPE: no weight changes)
        model.config.core = replace(model.config.core, max_seq_len=core["max_seq_len"])
        model.core.config = model.config.core
    return model, json.loads(records[0].read_text())["stages"]


def _model_card(reports: Sequence[dict[str, Any]], core: Mapping[str, Any], seed: int) -> str:
    lines = [f"# {AR_NAME}", "",
             "The autoregressive baseline of the sampler benchmark (not a diffusion model): the mmdiff core with "
             "causal attention, trained with the next-token loss on the running sums. Decode it with "
             "`benchmarks/ar_baseline.py` (`ar_fill` / `evaluate_ar`), not with `model.generate`.", "",
             f"Core: {dict(core)}; seed {seed}.", "",
             "| stage | data | steps | batch | lr | device | wall (s) | final loss |",
             "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        lines.append(f"| {r['name']} | {r['data']} | {r['steps']} | {r['batch_size']} | {r['lr']} | "
                     f"{r.get('device', '')} | {r['wall_s']:.1f} | {r['final_loss']:.4f} |")
    return "\n".join(lines) + "\n"


# ==================================================================================================== decoding
@torch.no_grad()
def ar_fill(core: MaskedDiffusionTransformer, canvas: Tensor, attention_mask: Tensor | None = None, *,
            mask_id: int, bos_id: int | None = None) -> SamplerOutput:
    """Greedy autoregressive infilling with a KV cache: every mask id at a real position is replaced, left to right,
    by the argmax of the logit at the input position before it.

    The input is what the diffusion sampler gets (`model.generate(canvas, attention, gen_length=0, infill=True)`):
    a left-padded batch. With `bos_id` the model reads each row as `[bos, t_0, t_1, ...]` (as `next_token_loss`
    trained it), without it as the row itself. RoPE positions count from each row's first real input (as in
    training with right padding). One forward pass per column holding a mask in some row: it runs the inputs that
    became known since the previous pass (for running sums: the committed sum and the next digit) against the cache
    of everything before.

    Args:
        core: a core trained with causal attention and `next_token_loss` (`logits_shift="none"`).
        canvas: (B, L) token ids with `mask_id` at the positions to fill.
        attention_mask: (B, L) True at real tokens (left padding False), or None.
        mask_id: the id marking positions to fill.
        bos_id: the BOS token the model was trained with (`model.config.task_options["bos_id"]`), or None.

    Returns:
        `SamplerOutput`: sequences (B, L), commit_step (B, L) (the forward pass that filled each position, `GIVEN`
        elsewhere), nfe (forward passes).

    >>> # out = ar_fill(model.core, canvas, attention, mask_id=model.vocab.mask_id, bos_id=model_bos_id(model))
    """
    real, todo = _check_fill_inputs(core, canvas, attention_mask, mask_id, bos_id)
    B, L = canvas.shape
    x = canvas.clone()
    commit_step = torch.full_like(canvas, GIVEN)
    columns = todo.any(0).nonzero().flatten().tolist()  # the loop's plan, read once: columns needing a prediction
    if not columns:
        return SamplerOutput(sequences=x, commit_step=commit_step, nfe=0)
    shift = 0 if bos_id is None else 1  # input position i + shift holds canvas token i
    inputs = x if bos_id is None else _shift_in_bos(x, real, bos_id)  # (B, L); shares x's storage without a BOS
    positions = (real.long().cumsum(1) - 1).clamp(min=0)  # (B, L): 0 at each row's first real input
    mask = causal_mask(real, L)  # (B, 1, L, L); a cached call uses its window's rows
    cache = _empty_cache(core, B, L, canvas.device)  # written window by window
    zero = torch.zeros(B, 1, dtype=torch.long, device=canvas.device)  # (B, 1) index into the window
    start = 0
    for step, col in enumerate(columns):
        stop = col + shift  # run inputs [start, stop): all known now; the last one's logit predicts column col
        # the core sees a canvas of `stop` positions (keys right of the window are never attended): it concatenates
        # and attends over `stop` keys instead of L
        prefix = KVCache([k[:, :, :stop] for k in cache.keys], [v[:, :, :stop] for v in cache.values])
        out = core(inputs[:, start:stop], attention_mask=mask[:, :, :, :stop], position_ids=positions[:, start:stop],
                   logits_at=zero + (stop - 1 - start), cache=prefix, cache_window=(start, stop), use_cache=True,
                   check_inputs=False)
        for kept, fresh in zip(cache.keys + cache.values, out.cache.keys + out.cache.values, strict=True):
            kept[:, :, start:stop] = fresh[:, :, start:stop]
        predicted = out.logits[:, 0].argmax(-1)  # (B,)
        fill = todo[:, col]
        x[:, col] = torch.where(fill, predicted, x[:, col])
        if shift and col + 1 < L:  # the filled token is the next input (only where filled: a BOS may sit there)
            inputs[:, col + 1] = torch.where(fill, predicted, inputs[:, col + 1])
        commit_step[:, col] = torch.where(fill, step, GIVEN)
        start = stop
    return SamplerOutput(sequences=x, commit_step=commit_step, nfe=len(columns))


def _shift_in_bos(x: Tensor, real: Tensor, bos_id: int) -> Tensor:
    """(B, L) left-padded canvas -> the model's input: BOS at each row's first real column, then the row shifted
    right by one (its last token dropped: it is never an input)."""
    inputs = torch.cat([x[:, :1], x[:, :-1]], dim=1)  # (B, L): input i = token i - 1
    first = real.long().argmax(1, keepdim=True)  # (B, 1)
    return inputs.scatter(1, first, torch.full_like(first, bos_id))


def _check_fill_inputs(core: MaskedDiffusionTransformer, canvas: Tensor, attention_mask: Tensor | None,
                       mask_id: int, bos_id: int | None) -> tuple[Tensor, Tensor]:
    """Validates `ar_fill`'s inputs; returns (real (B, L), positions to fill (B, L))."""
    if canvas.dim() != 2 or canvas.dtype != torch.long:
        raise ValueError(f"canvas must be a (B, L) long tensor of token ids, got {canvas.dtype} of shape "
                         f"{tuple(canvas.shape)}")
    if attention_mask is not None and attention_mask.shape != canvas.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have the canvas's shape "
                         f"{tuple(canvas.shape)}")
    if core.config.logits_shift != "none":
        raise ValueError(f"ar_fill takes a core whose logit at j predicts token j+1 through its own head "
                         f"(logits_shift='none'); this core has logits_shift={core.config.logits_shift!r}")
    real = torch.ones_like(canvas, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if not real.any(1).all():
        raise ValueError("a row of the canvas has no real token (its attention mask is all False)")
    core.check_ids(canvas)
    if bos_id is not None and not 0 <= bos_id < core.config.vocab_size:
        raise ValueError(f"bos_id {bos_id} is outside the vocabulary [0, {core.config.vocab_size})")
    todo = (canvas == mask_id) & real
    first = real.long().argmax(1, keepdim=True)  # (B, 1) column of each row's first real token
    if bos_id is None and todo.gather(1, first).any():
        row = int(todo.gather(1, first).flatten().nonzero()[0])
        raise ValueError(f"row {row} starts with the mask id {mask_id}: without a BOS token an autoregressive model "
                         "needs a given token before the first position it fills; pass bos_id")
    return real, todo


def _empty_cache(core: MaskedDiffusionTransformer, batch: int, length: int, device: torch.device) -> KVCache:
    """A zero cache of `length` positions; every key a query may see is written by a window before it is read."""
    cfg, dtype = core.config, core.embed_tokens.weight.dtype
    shape = (batch, cfg.n_kv_heads, length, cfg.head_dim)
    return KVCache(keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)],
                   values=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)])


# ================================================================================================== evaluation
def running_sums_canvases(problems: Sequence[Sequence[int]], vocab: VocabLayout) -> tuple[Tensor, Tensor]:
    """Left-padded canvases `d1 [mask] d2 [mask] ...` of a batch of problems and their attention mask, the input
    `RunningSumsSource.evaluate` gives the diffusion sampler.

    >>> vocab = VocabLayout.build(10, RunningSumsSource.specials)
    >>> ids, attention = running_sums_canvases([[3], [4, 1]], vocab)
    >>> ids.tolist(), attention.int().tolist()
    ([[12, 12, 3, 10], [4, 10, 1, 10]], [[0, 0, 1, 1], [1, 1, 1, 1]])
    """
    if vocab.pad_id is None:
        raise ValueError("the vocabulary has no 'pad' id; build it with RunningSumsSource.specials")
    rows = []
    for digits in problems:
        ids = torch.tensor([VOCAB[str(v)] for v in digits], dtype=torch.long)  # (n,)
        row = torch.full((2 * len(digits),), vocab.mask_id, dtype=torch.long)  # (2n,): d1 s1 d2 s2 ...
        row[0::2] = ids
        rows.append(row)
    return left_pad(rows, vocab.pad_id)


@torch.no_grad()
def evaluate_ar(
    model: DiffusionModel,
    source: RunningSumsSource,
    limit: int | None = None,
    batch_size: int | None = None,
    *,
    split: str = "val",
    warmup: bool = True,
) -> dict[str, float]:
    """Fills in the running sums with `ar_fill` and grades them like `RunningSumsSource.evaluate`.

    Problems are sorted by size and batched (left-padded); decoding time is measured around each `ar_fill` call
    (device synchronised), after one untimed call on the first batch when `warmup`.

    Args:
        model: the autoregressive baseline (`train_ar`'s folder, loaded with `DiffusionModel.from_pretrained`).
        source: the running-sums source whose problems are graded.
        limit: grade this many problems (val: spread evenly over the sizes; None = all).
        batch_size: problems per `ar_fill` call (default `source.eval_batch_size`).
        split: "val" or "train".
        warmup: decode the first batch once, untimed, before timing.

    Returns:
        `RunningSumsSource.evaluate`'s metrics ("exact_match", "token_accuracy", "exact_match_n{lo}_{hi}",
        "problems") plus "generated_tokens" (sums filled), "decode_s", "tokens_per_s" (sums / decode seconds),
        "nfe" (forward passes in all), "nfe_per_batch" and "batches".

    >>> # evaluate_ar(DiffusionModel.from_pretrained("runs/ar-running-sums/final"), RunningSumsSource(), limit=256)
    """
    problems = source._eval_problems(split, limit)
    order = sorted(range(len(problems)), key=lambda i: len(problems[i]))
    size = batch_size or source.eval_batch_size
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    vocab, device = model.vocab, model.device
    names = source.tokenizer().convert_ids_to_tokens(list(range(len(VOCAB))))
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    was_training = model.training
    model.eval()
    try:
        if warmup:
            _decode([problems[i] for i in batches[0]], model, vocab, device)
        grades: list[Grade] = [None] * len(problems)  # type: ignore[list-item]
        seconds, nfe = 0.0, 0
        for idx in batches:
            batch = [problems[i] for i in idx]
            rows, took, passes = _decode(batch, model, vocab, device)
            seconds, nfe = seconds + took, nfe + passes
            for i, row in zip(idx, rows, strict=True):
                grades[i] = grade_answer(problems[i], [names[t] if 0 <= t < len(names) else f"<{t}>" for t in row])
    finally:
        model.train(was_training)
    metrics = source._summarize(problems, grades)
    generated = sum(len(p) for p in problems)
    metrics.update(generated_tokens=float(generated), decode_s=seconds, tokens_per_s=generated / max(seconds, 1e-9),
                   nfe=float(nfe), nfe_per_batch=nfe / len(batches), batches=float(len(batches)))
    return metrics


def _decode(batch: list[list[int]], model: DiffusionModel, vocab: VocabLayout,
            device: torch.device) -> tuple[list[list[int]], float, int]:
    """(rows of filled ids without padding, seconds, forward passes) of one batch."""
    ids, attention = running_sums_canvases(batch, vocab)
    ids, attention = ids.to(device), attention.to(device)
    _sync(device)
    started = time.perf_counter()
    out = ar_fill(model.core, ids, attention, mask_id=vocab.mask_id, bos_id=model_bos_id(model))
    _sync(device)
    took = time.perf_counter() - started
    rows = [row[keep].tolist() for row, keep in zip(out.sequences.cpu(), attention.cpu(), strict=True)]
    return rows, took, out.nfe


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ========================================================================================================= CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the baseline on the diffusion entry's budget")
    train.add_argument("--out", required=True, help="run folder (the model goes to OUT/final)")
    train.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's steps (smoke runs)")
    train.add_argument("--recipes", nargs="+", default=list(RECIPES), help="diffusion recipes giving the budget")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--device", default="cpu")
    train.add_argument("--log-every", type=int, default=20)
    train.add_argument("--init", default=None, help="continue this trained baseline (a folder written by train, with "
                       "its ar_training.json) instead of starting from scratch")
    evaluate = commands.add_parser("eval", help="exact match and decoding speed of a trained baseline")
    evaluate.add_argument("model", help="the model folder written by train (OUT/final)")
    evaluate.add_argument("--limit", type=int, default=None, help="problems to grade (default: the whole val split)")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    evaluate.add_argument("--device", default="cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        stages = [Stage.from_recipe(p) for p in args.recipes]
        if args.steps_scale != 1.0:
            stages = [s.scaled(args.steps_scale) for s in stages]
        train_ar(args.out, stages=stages, seed=args.seed, threads=args.threads, device=args.device,
                 init=args.init, log_every=args.log_every)
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = DiffusionModel.from_pretrained(args.model, device=args.device)
    spec = model.config.task_options.get("data") or {}
    if spec.get("name") != "running-sums":
        raise SystemExit(f"{args.model} records no running-sums data source in config.json task_options['data']; "
                         "it was not written by benchmarks/ar_baseline.py train")
    metrics = evaluate_ar(model, RunningSumsSource(**spec["options"]), args.limit, args.batch_size)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
