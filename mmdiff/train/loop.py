"""The training loop on Hugging Face accelerate: one code path for a CPU, one GPU, DDP, FSDP and DeepSpeed ZeRO (the
distributed ones come from `accelerate launch` and the configs of configs/accelerate/, never from code here; FSDP on
GPUs only, see `check_launch`; what DeepSpeed's engine changes: `mmdiff.train.zero`).

It minimises the masked-diffusion loss (MDLM, Sahoo et al. 2024; LLaDA, Nie et al. 2025: cross-entropy on masked
target positions weighted by the schedule's ELBO weight; LLaDA's SFT normalisation; LaViDa's complementary masking,
Li et al. 2025) with AdamW (Loshchilov & Hutter 2019), linear warmup and cosine decay, gradient clipping and
accumulation, bf16 autocast on CUDA, periodic evaluation, atomic checkpoints and exact resume.

Memory levers, each a recipe option that changes memory and speed but not the gradient: activation checkpointing per
block (`model.gradient_checkpointing`), the loss at masked positions only and, with `objective.loss_chunk_size`, in
chunks of masked positions (`mmdiff.diffusion.objective.chunked_cross_entropy`), LoRA on a frozen base
(`model.lora`), sequence packing of text examples with per-sequence attention (`train.pack_length`) and gradient
accumulation (`train.grad_accum`). benchmarks/train.py --levers measures them.

Exact resume: the data order is a seeded permutation per epoch (the position is saved), masking noise comes from a
dedicated generator (saved), dropout from the global RNGs (saved per process), evaluation never touches either, and
optimizer / scheduler states round-trip bit for bit; so an interrupted-and-resumed run logs the same losses as an
uninterrupted one.

>>> # from mmdiff.train import load_train_config, train
>>> # final = train(load_train_config("configs/toy/copy-tiny.yaml", ["--train.steps=50"]))
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import hashlib
import importlib
import inspect
import json
import math
import os
import pkgutil
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from mmdiff.canvas import Canvas
from mmdiff.core.config import CoreConfig
from mmdiff.diffusion.schedules import Schedule
from mmdiff.io import atomic_write, swap_folder
from mmdiff.lora import FROZEN_DTYPES, apply_lora, has_lora, save_lora, set_trainable, store_frozen
from mmdiff.modeling import DiffusionModel, ModelConfig
from mmdiff.registry import DATASETS, TASKS
from mmdiff.train import checkpoint as ckpt
from mmdiff.train import zero
from mmdiff.train.config import ConfigError, DataSection, ModelSection, OptimSection, TrainConfig
from mmdiff.vocab import VocabLayout

__all__ = [
    "train",
    "Trainer",
    "build_source",
    "build_model",
    "fit_adapters",
    "build_optimizer",
    "build_scheduler",
    "lr_multiplier",
    "WarmupCosine",
    "BatchStream",
    "resolve_mixed_precision",
    "METRICS_FILE",
]

METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"


# ------------------------------------------------------------------------------------------- data and model
def _ensure_registered(name: str) -> None:
    """Imports `mmdiff.data` submodules (the likely one first) until `name` is registered."""
    if name in DATASETS:
        return
    import mmdiff.data as package

    guess = name.replace("-", "_")
    modules = sorted((m.name for m in pkgutil.iter_modules(package.__path__)), key=lambda m: m != guess)
    failures = {}
    for module in modules:
        try:
            importlib.import_module(f"{package.__name__}.{module}")
        except Exception as err:  # a broken module must not hide the others; it is reported below
            failures[module] = f"{type(err).__name__}: {err}"
        if name in DATASETS:
            return
    broken = f" (modules that failed to import: {failures})" if failures else ""
    raise ConfigError(f"TrainConfig.data.name: {DATASETS.unknown_message(name)}{broken}. A third-party source "
                      "registers itself with @mmdiff.registry.DATASETS.register(name) before training starts")


def build_source(data: DataSection) -> Any:
    """The data source of a recipe: `DATASETS.get(data.name)(**data.options)`, with errors naming the option.

    Building a source loads no data; only `source.dataset(...)` does.

    >>> from mmdiff.train.config import DataSection
    >>> build_source(DataSection("running-sums", {"n_min": 4, "n_max": 8})).task
    'text'
    """
    _ensure_registered(data.name)
    cls = DATASETS.get(data.name)
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in data.options if k not in params]
        if unknown:
            close = [f"{k!r} -> {m[0]!r}" for k in unknown if (m := difflib.get_close_matches(k, list(params), n=1))]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown option(s) {unknown} in TrainConfig.data.options for data source "
                              f"{data.name!r}{hint}; it takes: {', '.join(params) or '(no options)'}")
    try:
        return cls(**data.options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"TrainConfig.data.options for {data.name!r}: {err}") from err


INIT_OVERRIDABLE = ("logits_shift", "max_seq_len")  # core fields a recipe may change on an init_from checkpoint
AR_TASK_OPTIONS = ("objective", "attention", "bos_id")  # what marks an autoregressive baseline (ar_baseline.py)


def build_model(config: TrainConfig, source: Any = None) -> DiffusionModel:
    """The model a recipe trains: a fresh core sized by `model.core` and the source's tokenizer, or `model.init_from`.

    Only the source's tokenizer and specials are needed (no data is loaded). The global torch RNG initialises the
    weights (the trainer seeds it first).

    >>> from mmdiff.train.config import DataSection
    >>> cfg = TrainConfig("demo", DataSection("running-sums", {"n_min": 4, "n_max": 8}))
    >>> build_model(cfg).vocab.size   # 10 text ids (digits) + mask, eos, pad, bos
    14
    """
    import mmdiff.tasks  # noqa: F401  (registers the built-in tasks)

    source = build_source(config.data) if source is None else source
    TASKS.get(source.task)
    tokenizer = source.tokenizer()
    adapters, ranges = _adapter_settings(config.model.adapters, config.model.core.get("d_model"))
    vocab = VocabLayout.build(text_size=len(tokenizer), specials=source.specials, ranges=ranges)
    task_options = {"data": {"name": config.data.name, "options": copy.deepcopy(config.data.options)},
                    **copy.deepcopy(getattr(source, "task_options", {}))}  # e.g. the VLM's answer length
    sampler = copy.deepcopy(config.sampler)
    if config.model.init_from is None:
        core = CoreConfig(vocab=vocab, **config.model.core)
        model_config = ModelConfig(core=core, task=source.task, name=config.name, task_options=task_options,
                                   adapters=adapters)
        return _fine_tuning(config.model, DiffusionModel(model_config, tokenizer=tokenizer, sampler_config=sampler))
    model = _load_init(config.model.init_from)
    _check_init_matches(config, model, vocab, source.task)
    _override_core(model, config.model.core)
    model.config.name = config.name
    if model.config.task_options.get("objective") == "next_token":  # a causal baseline adapted to masked diffusion
        for key in AR_TASK_OPTIONS:
            model.config.task_options.pop(key, None)
    model.config.task_options = {**model.config.task_options, **task_options}
    model.sampler_config = sampler
    model.tokenizer = model.tokenizer if model.tokenizer is not None else tokenizer
    return _fine_tuning(config.model, model).train()


def fit_adapters(source: Any, model: DiffusionModel) -> list[str]:
    """Adapter statistics fitted on the source's training data, for the adapters that still lack them (an action
    tokenizer's q01 / q99, a state MLP's mean / std): `source.fit_adapters(model)` when the source has it (it
    returns the modalities fitted), else nothing. The statistics live in the adapter configs, so no weight depends on
    them and fitting after `build_model` is the same as before it; `build_model` itself reads no data.

    >>> fit_adapters(object(), None)
    []
    """
    fit = getattr(source, "fit_adapters", None)
    return list(fit(model)) if callable(fit) else []


def _adapter_settings(adapters: Mapping[str, Any], d_model: int | None) -> tuple[dict[str, Any], dict[str, int]]:
    """The recipe's adapter configs completed for the core (continuous adapters get its d_model), and the vocabulary
    ranges the discrete ones need (range name -> codebook size)."""
    from mmdiff.adapters import build_adapter
    from mmdiff.registry import ADAPTERS

    completed, ranges = {}, {}
    for modality, adapter in copy.deepcopy(dict(adapters)).items():
        if ADAPTERS.get(adapter.get("adapter", "")).trains_with_core:
            completed[modality] = {**adapter, "d_model": d_model if d_model is not None else CoreConfig.d_model}
        else:  # built once, untrained, to read its codebook size
            tokenizer = build_adapter(adapter, load_pretrained=False)
            ranges[tokenizer.vocab_range] = tokenizer.codebook_size
            completed[modality] = adapter
    return completed, ranges


def _fine_tuning(section: ModelSection, model: DiffusionModel) -> DiffusionModel:
    """`model.lora` (LoRA layers through PEFT) and `model.trainable` (the rest frozen), see `mmdiff.lora`."""
    if section.lora is None and section.trainable is None:
        return model
    if section.lora is not None:
        try:
            apply_lora(model, section.lora, base=section.init_from)
        except ValueError as err:
            raise ConfigError(f"TrainConfig.model.lora: {err}") from err
    try:
        set_trainable(model, section.trainable)
    except ValueError as err:
        raise ConfigError(f"TrainConfig.model.trainable: {err}") from err
    if section.frozen_dtype is not None:
        store_frozen(model, FROZEN_DTYPES[section.frozen_dtype])
    return model


def _load_init(ref: str) -> DiffusionModel:
    from mmdiff.zoo import create_model

    try:
        return create_model(ref, pretrained=True)
    except (KeyError, FileNotFoundError, ValueError) as err:
        raise ConfigError(f"TrainConfig.model.init_from={ref!r} is neither a checkpoint folder nor a loadable zoo "
                          f"entry: {err}") from err


def _check_init_matches(config: TrainConfig, model: DiffusionModel, vocab: VocabLayout, task: str) -> None:
    ref = config.model.init_from
    if model.vocab.to_dict() != vocab.to_dict():
        raise ConfigError(f"TrainConfig.model.init_from={ref!r} has vocabulary {model.vocab.to_dict()}, but data "
                          f"source {config.data.name!r} builds {vocab.to_dict()}; fine-tune on a source with the same "
                          "tokenizer and specials")
    if model.config.task != task:
        raise ConfigError(f"TrainConfig.model.init_from={ref!r} is a {model.config.task!r} model, data source "
                          f"{config.data.name!r} is a {task!r} task")
    attention = model.config.core.attention
    if config.objective.block_diffusion != (attention == "block_causal"):
        fix = ("fine-tune it with objective.block_diffusion: true" if attention == "block_causal" else
               "block diffusion needs a core built block-causal; drop objective.block_diffusion")
        raise ConfigError(f"TrainConfig.model.init_from={ref!r} has {attention!r} attention but "
                          f"objective.block_diffusion is {config.objective.block_diffusion}: {fix}")
    clash = {k: (v, getattr(model.config.core, k)) for k, v in config.model.core.items()
             if getattr(model.config.core, k) != v and k not in INIT_OVERRIDABLE}
    if clash:
        detail = ", ".join(f"{k}: recipe {a!r} vs checkpoint {b!r}" for k, (a, b) in clash.items())
        raise ConfigError(f"TrainConfig.model.core disagrees with init_from={ref!r} ({detail}); remove model.core "
                          f"(the checkpoint's shape is used) or make it match (only {', '.join(INIT_OVERRIDABLE)} may "
                          "differ: they change no weight)")


def _override_core(model: DiffusionModel, core: Mapping[str, Any]) -> None:
    """The recipe's `INIT_OVERRIDABLE` core fields replace the init checkpoint's (its weights stay as they are)."""
    changes = {k: v for k, v in core.items() if k in INIT_OVERRIDABLE}
    if changes:
        model.config.core = dataclasses.replace(model.config.core, **changes)
        model.core.config = model.config.core


class BatchStream:
    """Deterministic, resumable micro-batches of one process.

    Epoch e is a permutation of the dataset seeded by (seed, e); each global batch takes `batch_size * world_size`
    consecutive indices of it and process r takes its r-th slice. `position` counts the micro-batches this process
    has drawn, so a stream rebuilt at the same position continues exactly where the old one stopped.

    >>> stream = BatchStream(list(range(10)), lambda xs: xs, batch_size=2, seed=0)
    >>> first = [next(stream) for _ in range(3)]
    >>> BatchStream(list(range(10)), lambda xs: xs, batch_size=2, seed=0, position=2).__next__() == first[2]
    True
    """

    def __init__(
        self,
        dataset: Any,
        collate: Callable[[list[Any]], Any],
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        position: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise TypeError("the trainer needs a map-style dataset (len() and indexing) for deterministic shuffling "
                            f"and exact resume; the data source returned {type(dataset).__name__}")
        self.dataset, self.collate = dataset, collate
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.per_epoch = len(dataset) // (batch_size * world_size)
        if self.per_epoch == 0:
            raise ValueError(f"the train split has {len(dataset)} examples, fewer than one global batch "
                             f"(batch_size {batch_size} x {world_size} processes); lower train.batch_size")
        self.position = position
        self.pin_memory = pin_memory
        self._iter: Iterator[Any] | None = None

    @property
    def epoch(self) -> float:
        return self.position / self.per_epoch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's batches (lists of dataset indices) of epoch `epoch`."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, "data", epoch))
        used = self.per_epoch * self.batch_size * self.world_size
        perm = torch.randperm(len(self.dataset), generator=g)[:used]
        return perm.view(self.per_epoch, self.world_size, self.batch_size)[:, self.rank].tolist()  # (per_epoch, B)

    def _start(self) -> None:
        epoch, offset = divmod(self.position, self.per_epoch)
        batches = self.epoch_batches(epoch)[offset:]
        # a private generator: DataLoader draws a base seed per iterator, which must not move the global RNG
        loader = DataLoader(self.dataset, batch_sampler=batches, collate_fn=self.collate, num_workers=0,
                            pin_memory=self.pin_memory, generator=torch.Generator())
        self._iter = iter(loader)
        self._left = len(batches)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Any:
        if self._iter is None or self._left == 0:
            self._start()
        batch = next(self._iter)
        self._left -= 1
        self.position += 1
        return batch


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed derived from `seed` and labels (independent streams for data, masking, ...)."""
    digest = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# ------------------------------------------------------------------------------------------ optimizer and LR
def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Factor on the peak LR for optimizer update number `step` (0-based).

    Warmup: (step + 1) / warmup_steps, so update `warmup_steps - 1` runs at the peak. Then cosine from the peak down
    to `min_lr_ratio`, reached exactly at the last update `total_steps - 1`:
    progress = (step - warmup_steps + 1) / (total_steps - warmup_steps),
    factor = min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * progress)) / 2.

    >>> [round(lr_multiplier(s, 2, 6, 0.1), 4) for s in range(6)]
    [0.5, 1.0, 0.8682, 0.55, 0.2318, 0.1]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps + 1) / decay_steps, 1.0)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosine:
    """`lr_multiplier` as a picklable-free callable for `torch.optim.lr_scheduler.LambdaLR`."""

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, self.warmup_steps, self.total_steps, self.min_lr_ratio)


def build_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (no decay on norms, biases and embeddings).

    >>> from mmdiff import CoreConfig, ModelConfig
    >>> m = DiffusionModel(ModelConfig(CoreConfig(VocabLayout.build(8), d_model=16, n_layers=1, n_heads=2)))
    >>> [g["weight_decay"] for g in build_optimizer(m, OptimSection(weight_decay=0.1)).param_groups]
    [0.1, 0.0]
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "embed" in name or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=tuple(optim.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimSection, total_steps: int):
    """LambdaLR with `lr_multiplier`; call `.step()` once per optimizer update."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(optim.warmup_steps, total_steps,
                                                                     optim.min_lr_ratio))


def _launch_device() -> torch.device:
    """The device accelerate will pick, found without initialising its state (which would pre-empt the settings
    `accelerate launch` passes through the environment, e.g. ACCELERATE_USE_CPU)."""
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    return torch.device("cpu" if cpu else "cuda")


def _forget_other_precision(mixed: str) -> None:
    """A second `train()` in one single-process session may use another precision: accelerate keeps its state in
    a process-wide singleton that refuses the change, so that part of it is reset (the process group is kept)."""
    from accelerate.state import AcceleratorState, DistributedType, PartialState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed):
        if PartialState().distributed_type != DistributedType.NO:
            raise RuntimeError(f"this process already trained with mixed precision {state['_mixed_precision']!r}; "
                               f"under a distributed launch start a new process for {mixed!r}")
        AcceleratorState._reset_state(reset_partial_state=False)


def _check_frozen_precision(frozen_dtype: str | None, mixed: str) -> None:
    """A frozen base stored in bf16 needs autocast to that type (its float32 inputs would meet the weights)."""
    needed = {"bfloat16": "bf16"}.get(frozen_dtype or "")
    if needed is not None and mixed != needed:
        raise ConfigError(f"TrainConfig.model.frozen_dtype={frozen_dtype!r} needs train.mixed_precision: {needed} "
                          f"(autocast runs the matmuls in {frozen_dtype}); this run resolves to {mixed!r}: set "
                          f"mixed_precision: {needed} (CPUs autocast to bf16 too) or drop frozen_dtype")


def resolve_mixed_precision(setting: str, device: torch.device) -> str:
    """"auto" -> "bf16" on a CUDA device that supports it, else "no"; other settings pass through."""
    if setting != "auto":
        return setting
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"


def check_launch(accelerator: Any, environ: Mapping[str, str] | None = None) -> None:
    """Refuses launches that accelerate would run as something else than asked, before any file is written.

    - processes started as N > 1 (WORLD_SIZE) that accelerate set up as N lone runs (on a machine without CUDA
      unless ACCELERATE_USE_CPU=1): each would train alone and overwrite the others' files;
    - an FSDP launch (ACCELERATE_USE_FSDP) that did not become FSDP: accelerate (1.x) picks FSDP only for process
      groups on an accelerator (CUDA, XPU, ...); on CPU it silently trains with DDP instead;
    - a DeepSpeed launch that did not become DeepSpeed (ACCELERATE_USE_CPU=1 turns it into plain DDP on CPU).
    """
    from accelerate.utils import DistributedType

    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    kind = accelerator.distributed_type
    if world > 1 and accelerator.num_processes == 1:
        raise ConfigError(f"this process is one of {world} (WORLD_SIZE={world}) but accelerate set it up as a "
                          "single-process run, so every process would train alone and overwrite the others' files. "
                          "Without CUDA, launch with ACCELERATE_USE_CPU=1 (a gloo group on CPU; `mmdiff train "
                          "--accelerate-config NAME` sets it)")
    if str(env.get("ACCELERATE_USE_FSDP", "")).lower() == "true" and kind != DistributedType.FSDP:
        raise ConfigError(f"an FSDP launch became {kind.value}: accelerate runs FSDP only on GPUs (and other "
                          "accelerators); on CPU it would silently train with plain DDP. Use "
                          "configs/accelerate/ddp.yaml on CPU, fsdp.yaml on GPUs")
    if zero.deepspeed_launch(env) and kind != DistributedType.DEEPSPEED:
        raise ConfigError(f"a DeepSpeed launch became {kind.value}: with ACCELERATE_USE_CPU=1 accelerate trains "
                          "plain DDP instead. Unset ACCELERATE_USE_CPU: without CUDA DeepSpeed runs on its CPU "
                          "accelerator over gloo (`mmdiff train --accelerate-config deepspeed-zero2` does this)")


# --------------------------------------------------------------------------------------------- the loss module
def _model_weights(loss_module_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`DiffusionModel.weights()` keys from the loss module's state dict (model.core.*, model.adapters.*)."""
    return {k.removeprefix("model.").removeprefix("core."): v for k, v in loss_module_state.items()}


class LossModule(nn.Module):
    """Wraps a `DiffusionModel` so that the loss runs inside `forward`: DDP / FSDP hooks and accelerate's autocast
    see it."""

    def __init__(self, model: DiffusionModel, schedule: Schedule, normalize: str, complementary: bool,
                 chunk_size: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.schedule, self.normalize, self.complementary = schedule, normalize, complementary
        self.chunk_size = chunk_size

    def forward(self, canvas: Canvas, generator: torch.Generator | None = None,
                attention_anneal: float | None = None) -> dict[str, Tensor]:
        out = self.model.loss(canvas, self.schedule, normalize=self.normalize, complementary=self.complementary,
                              generator=generator, chunk_size=self.chunk_size, attention_anneal=attention_anneal)
        return {"loss": out.loss, "n_masked": out.n_masked}


@contextlib.contextmanager
def preserve_rng(devices: list[torch.device] | None = None) -> Iterator[None]:
    """Runs a block (evaluation) without moving the python, numpy or torch RNG streams."""
    py, np_state = random.getstate(), np.random.get_state()
    cuda = [d for d in (devices or []) if d.type == "cuda"]
    with torch.random.fork_rng(devices=cuda, enabled=True, device_type="cuda"):
        yield
    random.setstate(py)
    np.random.set_state(np_state)


def _tokens(canvas: Canvas) -> int:
    return int(canvas.attention_mask.sum()) if canvas.attention_mask is not None else canvas.ids.numel()


# ---------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """One run of a recipe (see `train`). Every process of an `accelerate launch` builds one."""

    def __init__(self, config: TrainConfig) -> None:
        from accelerate import Accelerator

        self.config = config
        mixed = resolve_mixed_precision(config.train.mixed_precision, _launch_device())
        _check_frozen_precision(config.model.frozen_dtype, mixed)
        _forget_other_precision(mixed)
        self.accelerator = Accelerator(mixed_precision=mixed, gradient_accumulation_steps=config.train.grad_accum,
                                       kwargs_handlers=zero.process_group_kwargs())
        check_launch(self.accelerator)
        config.train.micro_batch(self.accelerator.num_processes)  # a world size that cannot split a global batch
        self.out_dir = Path(config.train.out_dir)
        self.ckpt_root = self.out_dir / ckpt.CHECKPOINTS_DIR
        self.metrics_path = self.out_dir / METRICS_FILE

    # -------------------------------------------------------------------------------------------------- setup
    def setup(self, resume: bool) -> None:
        """Builds data, model, optimizer and scheduler; restores the latest checkpoint when resuming."""
        from accelerate.utils import DistributedType, set_seed

        acc, cfg = self.accelerator, self.config
        if acc.is_main_process and not resume:
            _move_previous_run_aside(self.out_dir)
        acc.wait_for_everyone()
        folder = ckpt.find_resume_checkpoint(self.ckpt_root) if resume else None
        loaded = None if folder is None else ckpt.load_checkpoint(
            folder, rank=acc.process_index, world_size=acc.num_processes,
            sharded=acc.distributed_type == DistributedType.FSDP)  # FSDP, DDP and one process resume each other

        set_seed(cfg.seed)  # the same initial weights on every process
        self.source = build_source(cfg.data)
        self.model = build_model(cfg, self.source)
        fit_adapters(self.source, self.model)
        self.model.core.set_gradient_checkpointing(cfg.model.gradient_checkpointing)
        if loaded is not None:
            _check_same_core(loaded, cfg)
            self.model.load_weights(loaded.weights, source=str(loaded.folder / ckpt.WEIGHTS))
        vocab = self.model.vocab
        self.collate = TASKS.get(self.source.task).collator(self.model)
        self.val_set = self.source.dataset("val", vocab)
        self.stream = BatchStream(self.source.dataset("train", vocab), self._train_collate(),
                                  batch_size=cfg.train.micro_batch(acc.num_processes), seed=cfg.seed,
                                  rank=acc.process_index, world_size=acc.num_processes,
                                  pin_memory=acc.device.type == "cuda")

        schedule = cfg.objective.make_schedule()
        optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
        loss_module = LossModule(self.model, schedule, cfg.objective.normalize, cfg.objective.complementary,
                                 cfg.objective.chunk_size)
        self.sharded = acc.distributed_type == DistributedType.FSDP
        self.zero = acc.distributed_type == DistributedType.DEEPSPEED  # the engine steps; see mmdiff.train.zero
        self.zero3 = self.zero and acc.state.deepspeed_plugin.zero_stage == 3  # parameters partitioned too
        if self.zero:
            zero.configure(acc, micro_batch=self.stream.batch_size, grad_clip=cfg.optim.grad_clip)
        self.loss_module, self.optimizer = acc.prepare(loss_module, optimizer)
        if self.zero3:
            zero.register_direct_weights(acc.unwrap_model(self.loss_module))

        set_seed(cfg.seed, device_specific=True)  # dropout differs between processes
        self.mask_generator = torch.Generator(acc.device).manual_seed(
            derive_seed(cfg.seed, "mask", acc.process_index))
        if cfg.train.eval_metrics_limit > 0 and not callable(getattr(self.source, "evaluate", None)):
            warnings.warn(f"train.eval_metrics_limit > 0 but data source {cfg.data.name!r} has no evaluate(); only "
                          "the val loss is reported", stacklevel=3)
        self.step, self.log_window, self.tokens_local, self.elapsed = 0, [], 0, 0.0
        self.last_eval: dict[str, Any] = {}
        if loaded is not None:
            self._restore(loaded)
        self._start_metrics()

    def _train_collate(self) -> Callable[[list[Any]], Canvas]:
        """The training batches' collate: the task's, or its packing one with `train.pack_length` (evaluation
        batches stay unpacked, so validation losses compare between packed and unpacked runs)."""
        length = self.config.train.pack_length
        if not length:
            return self.collate
        task = TASKS.get(self.source.task)
        packer = getattr(task, "packed_collator", None)
        if packer is None:
            raise ConfigError(f"TrainConfig.train.pack_length: data source {self.config.data.name!r} is a "
                              f"{self.source.task!r} task, whose examples cannot be packed (the text task packs); "
                              "set train.pack_length: 0")
        if self.model.core.config.logits_shift != "none" or self.model.core.config.attention != "full":
            raise ConfigError("TrainConfig.train.pack_length packs examples for a core with full attention and "
                              "logits_shift 'none' (this checkpoint's core reads across packed examples); set "
                              "train.pack_length: 0")
        return packer(self.model, length)

    def _restore(self, loaded: ckpt.TrainingState) -> None:
        acc, state = self.accelerator, loaded.trainer_state
        optimizer_state = loaded.optimizer_state
        saved_by_zero = "param_groups" not in optimizer_state  # ZeRO partitions, not a torch optimizer's state
        if saved_by_zero != self.zero:
            how = ("under DeepSpeed (its optimizer state is ZeRO partitions)" if saved_by_zero else
                   "without DeepSpeed (its optimizer state is a torch optimizer's)")
            raise ckpt.CheckpointError(
                f"checkpoint {loaded.folder} was written {how}, and this run is {acc.distributed_type.value}: resume "
                "it with the accelerate config and number of processes that wrote it, or start a new run from its "
                f"weights with --model.init_from={loaded.folder} (or --no-resume in another train.out_dir)")
        if self.sharded:  # this process's shard, as plain tensors: DTensors again, like the sharded parameters
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            optimizer_state = ckpt.shard_like_params(optimizer_state, params)
        if self.zero:
            zero.load_optimizer_state(self.optimizer, optimizer_state, rank=acc.process_index,
                                      world_size=acc.num_processes)
            zero.restore_engine_counters(self.loss_module, loaded.rank_extra.get("deepspeed", {}))
        else:
            self.optimizer.load_state_dict(optimizer_state)
        self.scheduler.load_state_dict({**loaded.scheduler_state,
                                        "lr_lambdas": [None] * len(self.scheduler.lr_lambdas)})
        self.step = loaded.step
        self.elapsed = float(state.get("elapsed_s", 0.0))
        fallback = int(state.get("tokens_seen", 0)) // acc.num_processes
        self.tokens_local = int(loaded.rank_extra.get("tokens_local", fallback))
        self.last_eval = dict(state.get("last_eval", {}))
        examples = int(state["micro_batches"]) * int(state["batch_size"]) * int(state["world_size"])
        per_process = self.stream.batch_size * self.stream.world_size
        if examples % per_process or per_process != int(state["batch_size"]) * int(state["world_size"]):
            warnings.warn(f"resuming with batch_size x processes = {self.stream.batch_size} x {acc.num_processes}, "
                          f"the checkpoint used {state['batch_size']} x {state['world_size']}: the data order differs "
                          "from the original run from here on", stacklevel=2)
        elif state["world_size"] != acc.num_processes:
            warnings.warn(f"resuming on {acc.num_processes} process(es) a run saved on {state['world_size']}: the "
                          "data order is kept, but masking and dropout noise come from other random streams from here "
                          "on", stacklevel=2)
        self.stream.position = examples // per_process
        if loaded.rng_state is None:
            warnings.warn(f"{loaded.folder} has no RNG state for process {acc.process_index}; its random numbers "
                          "differ from the original run", stacklevel=2)
        else:
            ckpt.restore_rng(loaded.rng_state, self.mask_generator)
        self.log_window = [float(x) for x in loaded.rank_extra.get("log_window", [])]
        _warn_config_changes(loaded.config_yaml, self.config)
        acc.print(f"resumed from {loaded.folder} (step {self.step})")

    def _start_metrics(self) -> None:
        """Writes the resolved recipe and drops metrics records after the resume point (a crashed run's tail)."""
        if not self.accelerator.is_main_process:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config.save(self.out_dir / "config.yaml")
        lines = self.metrics_path.read_text().splitlines() if self.metrics_path.is_file() else []
        kept = [line for line in lines if _record_step(line) <= self.step]
        text = "".join(line + "\n" for line in kept)
        atomic_write(self.metrics_path, lambda tmp: Path(tmp).write_text(text))

    # --------------------------------------------------------------------------------------------------- steps
    def train_step(self) -> tuple[Tensor, Tensor, float, int]:
        """One optimizer update over `grad_accum` micro-batches; returns (mean loss, grad norm, lr used, tokens)."""
        acc, cfg = self.accelerator, self.config
        self.loss_module.train()
        total = torch.zeros((), device=acc.device)
        tokens = 0
        for _ in range(cfg.train.grad_accum):
            canvas = next(self.stream)
            tokens += _tokens(canvas)
            canvas = canvas.to(acc.device)
            with acc.accumulate(self.loss_module):
                loss = self.loss_module(canvas, self.mask_generator,
                                        cfg.objective.attention_anneal(self.step))["loss"]
                acc.backward(loss)
            total += loss.detach().float()
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = acc.clip_grad_norm_(self.loss_module.parameters(), max_norm)  # DeepSpeed: clipped in backward
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return total / cfg.train.grad_accum, grad_norm, lr, tokens

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Mean val loss over fixed batches and fixed masks (rank 0 seeds its masking generator with the recipe
        seed), plus `source.evaluate` metrics when `train.eval_metrics_limit > 0`."""
        acc, cfg = self.accelerator, self.config
        record: dict[str, Any] = {"step": self.step, "split": "val"}
        with preserve_rng([acc.device]):
            self.loss_module.eval()
            try:
                loss = self._val_loss()
                if loss is not None:
                    record["loss"] = loss
                if cfg.train.eval_metrics_limit > 0 and callable(getattr(self.source, "evaluate", None)):
                    record.update(self._source_metrics())
            finally:
                self.loss_module.train()
        self.last_eval = record
        return record

    def _val_loss(self) -> float | None:
        acc, cfg = self.accelerator, self.config
        world, rank = acc.num_processes, acc.process_index
        size = min(self.stream.batch_size, len(self.val_set) // world)
        n_batches = min(cfg.train.eval_batches, len(self.val_set) // (size * world)) if size else 0
        if n_batches == 0:
            warnings.warn(f"the val split has {len(self.val_set)} examples, too few for {world} processes; "
                          "skipping the val loss", stacklevel=2)
            return None
        generator = torch.Generator(acc.device).manual_seed(cfg.seed + 1_000_003 * rank)
        total = torch.zeros((), device=acc.device)
        for b in range(n_batches):
            start = (b * world + rank) * size
            canvas = self.collate([self.val_set[i] for i in range(start, start + size)]).to(acc.device)
            total += self.loss_module(canvas, generator)["loss"].float()
        return float(acc.reduce(total, "sum")) / (n_batches * world)

    def _source_metrics(self) -> dict[str, Any]:
        acc = self.accelerator
        metrics: dict[str, Any] = {}
        if acc.is_main_process or self.zero3:  # ZeRO-3 gathers each layer's weights from every process in its forward
            model = acc.unwrap_model(self.loss_module).model
            with acc.autocast():
                raw = self.source.evaluate(model, "val", self.config.train.eval_metrics_limit)
            reserved = {"step", "split", "loss"}
            metrics = {(f"eval_{k}" if k in reserved else k): float(v) if isinstance(v, (int, float)) else v
                       for k, v in raw.items()}
        acc.wait_for_everyone()
        return metrics

    # -------------------------------------------------------------------------------------------------- saving
    def save(self) -> Path:
        """Writes checkpoint `step` (every process calls this)."""
        acc, cfg = self.accelerator, self.config
        weights = self._gathered_weights()
        per_rank = self.sharded or self.zero  # each process writes its optimizer shard
        shared_optimizer = None if per_rank else self.optimizer.state_dict()
        tokens_seen = self.tokens_seen()  # a collective: every process is here
        trainer_state = {
            "step": self.step,
            "micro_batches": self.stream.position,
            "batch_size": self.stream.batch_size,  # per process
            "world_size": acc.num_processes,
            "tokens_seen": tokens_seen,
            "elapsed_s": self.elapsed,
            "last_eval": self.last_eval,
        }
        model = acc.unwrap_model(self.loss_module).model
        scheduler_state = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}

        def write_main(folder: Path) -> None:
            ckpt.write_model_files(folder, model, weights)
            ckpt.write_training_files(folder, optimizer_state=shared_optimizer, scheduler_state=scheduler_state,
                                      trainer_state=trainer_state, config_yaml=cfg.to_yaml())

        def write_rank(folder: Path) -> None:
            if self.sharded:
                ckpt.write_optimizer(folder, self.optimizer.state_dict(), rank=acc.process_index)
            elif self.zero:
                ckpt.write_optimizer(folder, zero.optimizer_state(self.optimizer), rank=acc.process_index, tree=True)
            extra: dict[str, Any] = {"log_window": self.log_window, "tokens_local": self.tokens_local}
            if self.zero:
                extra["deepspeed"] = zero.engine_counters(self.loss_module)
            elif acc.num_processes > 1 and not self.sharded:
                extra["params_sha256"] = _params_digest(model)
            ckpt.write_rank_files(folder, acc.process_index, ckpt.capture_rng(self.mask_generator), extra)

        return ckpt.save_checkpoint(self.ckpt_root, self.step, write_main=write_main, write_rank=write_rank,
                                    is_main=acc.is_main_process, barrier=acc.wait_for_everyone,
                                    keep_last=cfg.train.keep_checkpoints)

    def save_final(self) -> Path:
        """`out_dir/final`: the model folder (`save_pretrained`), or with `model.lora` the LoRA folder
        (`mmdiff.lora.save_lora`), with a model card; written under a temp name."""
        acc = self.accelerator
        final = self.out_dir / FINAL_DIR
        weights = self._gathered_weights()
        tokens_seen = self.tokens_seen()
        if acc.is_main_process:
            model = acc.unwrap_model(self.loss_module).model
            tmp = self.out_dir / f".tmp-{FINAL_DIR}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            card = model_card(self.config, self.step, self.last_eval, tokens_seen, self.elapsed, model)
            if has_lora(model):  # the LoRA folder instead of the full model
                base = self.config.model.init_from
                save_lora(model, tmp, base=base, weights=weights)
                card += f"\n## LoRA\n\nLoad it onto its base: `mmdiff.create_model({base!r}, lora=<this folder>)`.\n"
            else:
                ckpt.write_model_files(tmp, model, weights)
            (tmp / "README.md").write_text(card)
            swap_folder(tmp, final)
        acc.wait_for_everyone()
        return final

    def _gathered_weights(self) -> dict[str, Tensor] | None:
        """The full weights (FSDP: on the main process; DeepSpeed: the fp32 masters), a collective; None when every
        process holds them (`model.weights()`)."""
        if self.sharded:
            return _model_weights(self.accelerator.get_state_dict(self.loss_module))
        if self.zero:
            return _model_weights(zero.full_weights(self.accelerator.unwrap_model(self.loss_module)))
        return None

    # -------------------------------------------------------------------------------------------------- metrics
    def write_record(self, record: Mapping[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(dict(record)) + "\n")

    # ------------------------------------------------------------------------------------------------------ run
    def run(self, *, resume: bool = True, max_steps: int | None = None) -> Path:
        """Trains to `train.steps` (or stops after `max_steps` as if interrupted) and returns the final folder
        (the latest checkpoint folder when stopped early)."""
        from tqdm.auto import tqdm

        self.setup(resume)
        acc, cfg = self.accelerator, self.config
        total = cfg.train.steps
        acc.print(f"{cfg.name}: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M parameters, "
                  f"{acc.num_processes} process(es) on {acc.device}, mixed precision {acc.mixed_precision}, "
                  f"steps {self.step} -> {total}")
        bar = tqdm(total=total, initial=self.step, desc=cfg.name, disable=not acc.is_main_process, dynamic_ncols=True)
        window = {"tokens": 0, "time": 0.0}  # tokens/s counts training time only (not eval or saving)
        try:
            while self.step < total:
                if max_steps is not None and self.step >= max_steps:
                    return self._stopped()
                # one optimizer update
                started = time.perf_counter()
                loss, grad_norm, lr, tokens = self.train_step()
                took = time.perf_counter() - started
                self.step += 1
                self.elapsed += took
                self.tokens_local += tokens
                window["tokens"] += tokens
                window["time"] += took
                self.log_window.append(loss)
                bar.update(1)
                # then, on their steps (and always at the last one): log, evaluate, checkpoint
                self._periodic(bar, grad_norm, lr, window)
        finally:
            bar.close()
        return self.save_final()

    def _periodic(self, bar: Any, grad_norm: Tensor, lr: float, window: dict[str, Any]) -> None:
        acc, every, last = self.accelerator, self.config.train, self.step == self.config.train.steps
        if self.step % every.log_every == 0 or last:
            record = self._train_record(grad_norm, lr, window["tokens"], window["time"])
            self.write_record(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}")
            window.update(tokens=0, time=0.0)
        if (every.eval_every and self.step % every.eval_every == 0) or last:
            record = self.evaluate()
            self.write_record(record)
            if acc.is_main_process:
                bar.write(_format_eval(record))
        if (every.save_every and self.step % every.save_every == 0) or last:
            self.log_window = [float(x) for x in self.log_window]
            self.save()

    def _stopped(self) -> Path:
        folder = ckpt.find_resume_checkpoint(self.ckpt_root) if self.ckpt_root.is_dir() else None
        return folder if folder is not None else self.out_dir

    def tokens_seen(self) -> int:
        """Training tokens (non-padding positions) over all processes; a collective call."""
        local = torch.tensor([self.tokens_local], device=self.accelerator.device, dtype=torch.float64)
        return int(self.accelerator.reduce(local, "sum").item())

    def _train_record(self, grad_norm: Tensor, lr: float, window_tokens: int, window_time: float) -> dict[str, Any]:
        """The mean loss over the steps since the last record (and all processes), LR, tokens/s; a collective."""
        acc = self.accelerator
        window = torch.stack([torch.as_tensor(x, device=acc.device, dtype=torch.float32) for x in self.log_window])
        loss = float(acc.reduce(window, "mean").mean())
        counts = torch.tensor([window_tokens, self.tokens_local], device=acc.device, dtype=torch.float64)
        window_all, tokens_all = acc.reduce(counts, "sum").tolist()
        self.log_window = []
        return {"step": self.step, "split": "train", "loss": loss, "lr": lr,
                "grad_norm": math.nan if grad_norm is None else float(grad_norm),
                "tokens_per_s": window_all / max(window_time, 1e-9), "tokens": int(tokens_all),
                "epoch": self.stream.epoch, "elapsed_s": self.elapsed}


def _record_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line cut short by a crash counts as after every step (dropped)."""
    try:
        return float(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return math.inf


def _format_eval(record: Mapping[str, Any]) -> str:
    parts = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items() if k != "split"]
    return "eval: " + ", ".join(parts)


def _params_digest(model: nn.Module) -> str:
    """sha256 of every parameter's bytes: equal on every DDP process when they are in sync."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _move_previous_run_aside(out_dir: Path) -> None:
    """`resume=False` on a used run folder: its checkpoints, metrics, config and final model move to
    `out_dir/replaced-N/` (nothing is deleted)."""
    names = [ckpt.CHECKPOINTS_DIR, METRICS_FILE, "config.yaml", FINAL_DIR]
    present = [n for n in names if (out_dir / n).exists()]
    if not present:
        return
    n = 1
    while (out_dir / f"replaced-{n}").exists():
        n += 1
    target = out_dir / f"replaced-{n}"
    target.mkdir(parents=True)
    for name in present:
        os.rename(out_dir / name, target / name)
    warnings.warn(f"starting over in {out_dir}: the previous run's {present} moved to {target}", stacklevel=3)


def _check_same_core(loaded: ckpt.TrainingState, config: TrainConfig) -> None:
    """Raises `CheckpointError` when the checkpoint was trained with another core (its recipe's `model.core`
    differs): its weights cannot be resumed into this model, the message names the fields and the fixes."""
    try:
        saved = TrainConfig.from_yaml(loaded.config_yaml).to_dict()["model"]["core"]
    except ConfigError:
        return  # an older recipe format: the strict weight loading still names every mis-shaped tensor
    now = config.to_dict()["model"]["core"]
    changed = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}
    if changed:
        fields = ", ".join(f"{k}: checkpoint {a!r}, recipe {b!r}" for k, (a, b) in changed.items())
        raise ckpt.CheckpointError(
            f"checkpoint {loaded.folder} was trained with another core ({fields}): its weights do not fit this "
            "model. Resume with the checkpoint's model.core settings, start over with --no-resume (the old run "
            "moves to replaced-N/), or set train.out_dir to a new folder.")


def _warn_config_changes(saved_yaml: str, config: TrainConfig) -> None:
    try:
        saved = TrainConfig.from_yaml(saved_yaml).to_dict()
    except ConfigError:
        return
    now = config.to_dict()
    changed = [f"{section}.{key}" for section in now if isinstance(now[section], dict)
               for key in now[section] if saved.get(section, {}).get(key) != now[section][key]]
    changed += [k for k in now if not isinstance(now[k], dict) and saved.get(k) != now[k]]
    changed = [k for k in changed if k not in ("train.out_dir", "train.keep_checkpoints")]  # these change no numbers
    if changed:
        warnings.warn(f"resuming with a recipe that differs from the checkpoint's in {changed}; the run will not "
                      "match an uninterrupted one", stacklevel=3)


def model_card(config: TrainConfig, step: int, last_eval: Mapping[str, Any], tokens: int, elapsed: float,
               model: DiffusionModel) -> str:
    """A minimal README.md for the final model: name, task, data, steps, final eval numbers and the recipe."""
    params = sum(p.numel() for p in model.core.parameters())
    evals = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                      for k, v in last_eval.items() if k not in ("split", "step"))
    return (
        f"# {config.name}\n\n"
        f"A masked-diffusion `{model.config.task}` model ({params / 1e6:.2f}M parameters) trained with mmdiff on "
        f"`{config.data.name}` {json.dumps(config.data.options)}.\n\n"
        f"- steps: {step} (batch {config.train.batch_size} x grad_accum {config.train.grad_accum} "
        f"{'in all' if config.train.batch_scope == 'global' else 'per process'}), "
        f"{tokens:,} tokens, {elapsed / 60:.1f} min of training\n"
        f"- objective: {config.objective.normalize} loss, {config.objective.schedule} schedule\n"
        f"- reproduce: save the recipe below as `recipe.yaml`, then `mmdiff train recipe.yaml`\n\n"
        f"## Final evaluation (step {last_eval.get('step', step)})\n\n| metric | value |\n|---|---|\n{evals}\n\n"
        f"## Recipe\n\n```yaml\n{config.to_yaml()}```\n"
    )


def train(config: TrainConfig, *, resume: bool = True, max_steps: int | None = None) -> Path:
    """Trains a recipe and writes `out_dir/final` (a `DiffusionModel` folder with a model card).

    Runs as is on a CPU or one GPU; under `accelerate launch` (DDP, FSDP) every process calls it.

    Args:
        config: the recipe (`load_train_config`).
        resume: continue from `out_dir/checkpoints/latest` when there is one; False starts over and moves the
            previous run's files to `out_dir/replaced-N/`.
        max_steps: stop once this many optimizer steps are done (counted from step 0, resumed steps included) as
            if the run were interrupted: no final model, the returned path is the latest checkpoint folder.

    Returns:
        `out_dir/final`, or the latest checkpoint folder (or `out_dir`) when stopped by `max_steps`.

    >>> # cfg = load_train_config("configs/toy/copy-tiny.yaml", ["--train.steps=20", "--train.out_dir=runs/demo"])
    >>> # train(cfg)  -> PosixPath('runs/demo/final')
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train() takes a TrainConfig (see load_train_config), got {type(config).__name__}")
    if max_steps is not None and max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    return Trainer(config).run(resume=resume, max_steps=max_steps)

