"""Training recipes as typed dataclasses; YAML is only their serialisation.

A recipe has one section per concern (see `TrainConfig`): `model` (core shape or a checkpoint to fine-tune),
`data` (a data source in `mmdiff.registry.DATASETS` and its options), `objective` (the masked-diffusion loss of
MDLM, Sahoo et al. 2024, and LLaDA, Nie et al. 2025: schedule, ELBO or SFT normalisation, LaViDa's complementary
masking, BD3-LM's block diffusion), `optim` (AdamW, warmup + cosine), `train` (steps, batch, precision, logging,
checkpoints) and `sampler` (the sampling defaults saved with the final model). Unknown or missing fields are
errors that name the field.

>>> cfg = TrainConfig.from_dict({"name": "demo", "data": {"name": "running-sums"}})
>>> cfg.optim.lr, cfg.train.mixed_precision
(0.0003, 'auto')
>>> apply_cli_overrides(cfg, ["--optim.lr=1e-3", "train.steps=50"]).optim.lr
0.001
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from mmdiff.core.config import CoreConfig
from mmdiff.dataclass_io import apply_overrides, from_dict, load_yaml, parse_override_value, to_dict
from mmdiff.io import atomic_write
from mmdiff.lora import FROZEN_DTYPES, LoraSettings, check_groups
from mmdiff.modeling import SamplerConfig
from mmdiff.vocab import VocabLayout

if TYPE_CHECKING:
    from mmdiff.diffusion.schedules import Schedule

__all__ = [
    "TrainConfig",
    "ModelSection",
    "DataSection",
    "ObjectiveSection",
    "OptimSection",
    "TrainSection",
    "ConfigError",
    "load_train_config",
    "resolve_recipe",
    "shipped_recipes",
    "parse_overrides",
    "apply_cli_overrides",
    "CORE_FROM_DATA",
]

# CoreConfig fields a recipe may not set: the data source's tokenizer and specials decide them.
CORE_FROM_DATA = ("vocab", "vocab_size")


class ConfigError(ValueError):
    """A recipe that cannot be used; the message names the field (and the file or override) and the fix."""


# ------------------------------------------------------------------------------------------------------ sections
@dataclass
class ModelSection:
    """What to train.

    Args:
        init_from: a checkpoint folder (or, once the zoo knows it, a zoo name) to fine-tune; None trains from scratch.
        core: `CoreConfig` fields except `vocab` / `vocab_size`, which come from the data source.
        gradient_checkpointing: recompute block activations in the backward pass (less memory, more compute).
        adapters: modality adapters by modality, each an adapter config dict without `d_model` (the core's is used),
            e.g. {"vision": {"adapter": "vision/timm", "model_name": "vit_tiny_patch16_224", ...}}.
        lora: LoRA through PEFT (`mmdiff.lora.LoraSettings`: r, alpha, dropout, target_modules, scope; default
            targets the core's q/k/v/o projections); needs `init_from`. The run's final folder is then the LoRA
            folder (adapter_config.json + adapter_model.safetensors), loaded with `create_model(init_from, lora=...)`.
        trainable: which parameter groups train (`mmdiff.lora.TRAINABLE_GROUPS`: projector, tower, adapters, core,
            norms, embeddings, head, all, or dotted module paths), the rest is frozen; null = everything (only the
            LoRA weights with `lora`). With `lora`, the groups are trained in full and saved with the LoRA.
        frozen_dtype: with `lora`, store the frozen base's Linear weights in "bfloat16" (`mmdiff.lora.store_frozen`,
            the QLoRA-style frozen low-precision base): needs `train.mixed_precision: bf16`, under which the loss is
            unchanged. null = as loaded (float32).
    """

    init_from: str | None = None
    core: dict[str, Any] = field(default_factory=dict)
    gradient_checkpointing: bool = False
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)
    lora: LoraSettings | None = None
    trainable: list[str] | None = None
    frozen_dtype: str | None = None

    def __post_init__(self) -> None:
        self.core = validate_core_options(self.core)
        try:
            check_groups(self.trainable)
        except ValueError as err:
            raise ConfigError(f"TrainConfig.model.trainable: {err}") from err
        if self.lora is not None and self.init_from is None:
            raise ConfigError("TrainConfig.model.lora needs model.init_from: LoRA fine-tunes a trained base (a zoo "
                              "name or checkpoint folder); train from scratch without model.lora")
        if self.frozen_dtype is not None:
            if self.frozen_dtype not in FROZEN_DTYPES:
                raise ConfigError(f"TrainConfig.model.frozen_dtype={self.frozen_dtype!r} is not one of "
                                  f"{sorted(FROZEN_DTYPES)} (or null: the base as loaded)")
            if self.lora is None:
                raise ConfigError("TrainConfig.model.frozen_dtype stores the frozen base of a LoRA run in low "
                                  "precision; add model.lora (a frozen base without LoRA would be saved rounded) or "
                                  "drop frozen_dtype")


@dataclass
class DataSection:
    """Where the examples come from.

    Args:
        name: a data source in `mmdiff.registry.DATASETS` ("shakespeare", "running-sums", ...).
        options: keyword arguments of that source's constructor.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("TrainConfig.data.name is empty; give a data source name (see mmdiff.registry.DATASETS)")


@dataclass
class ObjectiveSection:
    """The masked-diffusion loss.

    Args:
        schedule: masking schedule name in `mmdiff.registry.SCHEDULES` ("linear", "log-linear", "cosine").
        eps: smallest masking time (keeps the ELBO weight 1/t finite).
        t_range: [low, high]: sample the diffusion time t only in this interval (BD3-LM's clipped schedule, e.g.
            [0.5, 1.0] for a block-diffusion model to decode whole blocks in few passes: the heavily masked blocks
            the sampler meets first); None = [eps, 1].
        normalize: "elbo" (pre-training: weighted CE / target tokens) or "sft" (per-row answer-length
            normalisation; the prompt is never masked).
        complementary: LaViDa's complementary masking (each row twice, with a mask and its complement).
        block_diffusion: block diffusion (BD3-LM, Arriola et al. 2025): the core is block-causal (set
            `model.core.attention: block_causal` and `model.core.block_size`) and each step runs it once on the
            noised and the clean canvas together, every noised block predicted from the clean blocks before it; the
            model then decodes with sampler "block-diffusion" (an exact block key/value cache).
        loss_chunk_size: a memory lever: > 0 computes the output projection and cross-entropy over at most this many
            masked positions at a time, each chunk recomputed in the backward pass, so the float32 logits of one
            chunk exist at a time instead of those of every masked position (`mmdiff.diffusion.
            chunked_cross_entropy`; the same loss and gradients, a second output projection per chunk). 0: all at
            once. Worth it when masked positions x vocabulary is large (e.g. 4096 x 128k x 4 bytes = 2 GiB).
        attention_anneal_steps: adapting a causal (autoregressive) checkpoint (`model.init_from`) to a
            masked-diffusion model with DiffuLLaMA's attention annealing (Gong et al. 2025, "Scaling Diffusion
            Language Models via Adaptation from Autoregressive Models"): for the first N steps the attention is
            causal plus each later key with probability step / N, then full. 0: full attention from the start.
    """

    schedule: str = "linear"
    eps: float = 1e-3
    t_range: list[float] | None = None
    normalize: Literal["elbo", "sft"] = "elbo"
    complementary: bool = False
    block_diffusion: bool = False
    loss_chunk_size: int = 0
    attention_anneal_steps: int = 0

    def __post_init__(self) -> None:
        import mmdiff.diffusion  # noqa: F401  (registers the built-in schedules)
        from mmdiff.registry import SCHEDULES

        if self.schedule not in SCHEDULES:
            raise ConfigError(f"TrainConfig.objective.schedule: {SCHEDULES.unknown_message(self.schedule)}")
        if not 0 <= self.eps < 1:
            raise ConfigError(f"TrainConfig.objective.eps must be in [0, 1), got {self.eps}")
        if self.t_range is not None:
            r = self.t_range
            if (not isinstance(r, (list, tuple)) or len(r) != 2 or any(isinstance(v, bool) for v in r)
                    or not all(isinstance(v, (int, float)) for v in r) or not self.eps <= r[0] < r[1] <= 1):
                raise ConfigError(f"TrainConfig.objective.t_range must be [low, high] with eps={self.eps} <= low < "
                                  f"high <= 1 (e.g. [0.5, 1.0]), or null for [eps, 1]; got {r!r}")
        if isinstance(self.loss_chunk_size, bool) or self.loss_chunk_size < 0:
            raise ConfigError(f"TrainConfig.objective.loss_chunk_size must be 0 (no chunks) or a positive number of "
                              f"masked positions per chunk (e.g. 1024), got {self.loss_chunk_size!r}")
        steps = self.attention_anneal_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError("TrainConfig.objective.attention_anneal_steps must be 0 (full attention) or a number "
                              f"of steps (e.g. 500), got {steps!r}")
        if steps and self.block_diffusion:
            raise ConfigError("TrainConfig.objective.attention_anneal_steps anneals a causal core to full attention; "
                              "block diffusion keeps its block-causal attention: drop one of them")

    def attention_anneal(self, step: int) -> float | None:
        """The annealing ratio of optimizer step `step` (0-based): step / attention_anneal_steps while annealing,
        None (the core's own attention) afterwards and without annealing."""
        n = self.attention_anneal_steps
        return step / n if step < n else None

    def make_schedule(self) -> Schedule:
        """The loss's masking schedule: `schedule` with `eps` and `t_range`."""
        from mmdiff.diffusion.schedules import get_schedule

        return get_schedule(self.schedule, eps=self.eps, t_range=None if self.t_range is None else tuple(self.t_range))

    @property
    def chunk_size(self) -> int | None:
        """`loss_chunk_size` as `diffusion_loss` takes it (None: no chunks)."""
        return self.loss_chunk_size or None


@dataclass
class OptimSection:
    """AdamW with linear warmup then cosine decay.

    Args:
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay (not applied to norms, biases and embeddings).
        betas: AdamW (beta1, beta2).
        warmup_steps: optimizer steps of linear warmup (the last warmup step reaches `lr`).
        min_lr_ratio: the cosine decays to `lr * min_lr_ratio` at the last step.
        grad_clip: clip the global gradient norm to this value; 0 disables clipping.
    """

    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"TrainConfig.optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.lr < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError(f"TrainConfig.optim.lr / weight_decay / grad_clip must be >= 0, got {self.lr}, "
                              f"{self.weight_decay}, {self.grad_clip}")
        if self.warmup_steps < 0:
            raise ConfigError(f"TrainConfig.optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"TrainConfig.optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class TrainSection:
    """The loop.

    Args:
        steps: optimizer steps in total.
        batch_size: examples per micro-batch: per process (`batch_scope: process`), or over all processes together
            (`batch_scope: global`).
        batch_scope: "process" (each process draws `batch_size` examples per micro-batch, so an optimizer step sees
            batch_size x grad_accum x processes) or "global" (the processes split `batch_size` between them, so an
            optimizer step sees batch_size x grad_accum examples whatever the number of processes, and a run on N
            processes computes what one process computes; N must divide batch_size).
        grad_accum: micro-batches per optimizer step (a memory lever: the same step in smaller micro-batches).
        pack_length: a memory and speed lever for text data: > 0 packs each micro-batch's `batch_size` examples into
            rows of at most this many positions (`mmdiff.tasks.text.TextTask.pack`), each example attending only to
            itself with RoPE positions from 0, and each counted as one example by the loss (its own diffusion time
            and normalisation), so fewer positions are padding; evaluation batches stay unpacked. The longest
            example must fit. 0: one example per row, right-padded.
        mixed_precision: "no", "bf16", or "auto" (bf16 on CUDA, no on CPU).
        log_every: write a train record to metrics.jsonl (and the progress bar) every this many steps.
        eval_every: evaluate every this many steps (0: only at the end).
        eval_batches: validation micro-batches per evaluation (fixed batches and masks, so numbers compare).
        eval_metrics_limit: > 0: also call `source.evaluate(model, "val", limit)` at each evaluation.
        save_every: checkpoint every this many steps (0: only at the end).
        out_dir: run folder (metrics.jsonl, checkpoints/, final/).
        keep_checkpoints: keep this many newest checkpoints (0: keep all).
    """

    steps: int = 1000
    batch_size: int = 32
    batch_scope: Literal["process", "global"] = "process"
    grad_accum: int = 1
    pack_length: int = 0
    mixed_precision: Literal["no", "bf16", "auto"] = "auto"
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 8
    eval_metrics_limit: int = 0
    save_every: int = 500
    out_dir: str = "runs/run"
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "eval_metrics_limit", "save_every", "keep_checkpoints", "pack_length"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.train.{name} must be >= 0 (0 turns it off), got {getattr(self, name)}")
        if not self.out_dir:
            raise ConfigError("TrainConfig.train.out_dir is empty; give the run folder")

    def micro_batch(self, world_size: int) -> int:
        """Examples one process draws per micro-batch when `world_size` processes train.

        >>> TrainSection(batch_size=8, batch_scope="global").micro_batch(2)
        4
        >>> TrainSection(batch_size=8).micro_batch(2)
        8
        """
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if self.batch_scope == "process":
            return self.batch_size
        if self.batch_size % world_size:
            fits = [n for n in range(1, self.batch_size + 1) if self.batch_size % n == 0]
            raise ConfigError(
                f"TrainConfig.train.batch_size={self.batch_size} with batch_scope=global is split over the processes, "
                f"and {world_size} processes do not divide it; launch {', '.join(map(str, fits))} processes, or make "
                f"batch_size a multiple of {world_size} (e.g. --train.batch_size="
                f"{-(-self.batch_size // world_size) * world_size}), or use batch_scope=process")
        return self.batch_size // world_size


@dataclass
class TrainConfig:
    """A training recipe (the schema of the YAML files under `configs/`).

    Args:
        name: run and model name (becomes `ModelConfig.name`).
        seed: seeds model init, data order and masking.
        model, data, objective, optim, train, sampler: the sections (see their classes).

    >>> cfg = TrainConfig(name="demo", data=DataSection("running-sums", {"n_min": 4, "n_max": 8}))
    >>> TrainConfig.from_yaml(cfg.to_yaml()) == cfg
    True
    """

    name: str
    data: DataSection
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("TrainConfig.name is empty; give the run a name")
        block_core = self.model.core.get("attention", "full") == "block_causal"
        if self.objective.block_diffusion and not block_core and self.model.init_from is None:
            raise ConfigError("TrainConfig.objective.block_diffusion needs a block-causal core: set "
                              "model.core.attention: block_causal and model.core.block_size (the block length, "
                              "e.g. 8)")
        if block_core and not self.objective.block_diffusion:
            raise ConfigError("TrainConfig.model.core.attention is 'block_causal': such a core is trained with clean "
                              "and noised copies in one pass; set objective.block_diffusion: true")
        if self.train.pack_length and (self.objective.block_diffusion
                                       or self.model.core.get("logits_shift", "none") != "none"):
            raise ConfigError("TrainConfig.train.pack_length packs examples for a core with full attention and "
                              "logits_shift 'none'; block diffusion and shifted logits would read across packed "
                              "examples: set train.pack_length: 0")

    # ------------------------------------------------------------------------------------------ serialisation
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "TrainConfig") -> TrainConfig:
        """Builds a config strictly: unknown, missing or ill-typed fields raise `ConfigError` naming them (an unknown
        one with the closest valid name)."""
        check_known_keys(cls, data, where)
        try:
            return from_dict(cls, data, where=where)
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(str(err)) from err

    def to_dict(self) -> dict[str, Any]:
        """Plain containers (tuples as lists), the same layout as the YAML file."""
        return {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_yaml(self) -> str:
        """The resolved recipe as YAML (sections in schema order)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, width=119)

    @classmethod
    def from_yaml(cls, text: str, *, where: str = "TrainConfig") -> TrainConfig:
        return cls.from_dict(_load_yaml_mapping(text, where), where=where)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the resolved recipe to `path` atomically."""
        path = Path(path)
        text = self.to_yaml()
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return path


# ------------------------------------------------------------------------------------------------- unknown keys
def check_known_keys(cls: type, data: Any, where: str) -> None:
    """Raises `ConfigError` for the first key of `data` (nested sections included) that dataclass `cls` does not
    have, naming the closest valid key (or every valid key when none is close).

    >>> try:
    ...     check_known_keys(TrainConfig, {"name": "x", "data": {"name": "y"}, "train": {"batchsize": 4}}, "recipe")
    ... except ConfigError as err:
    ...     print(str(err).split(" (known")[0])
    unknown field 'batchsize' in recipe.train: did you mean 'batch_size'?
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(data, Mapping)):
        return  # wrong types are reported by from_dict
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key in fields:
            continue
        close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown field {key!r} in {where}: {hint}(known fields: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        section = _dataclass_in(hints[key])
        if section is not None:
            check_known_keys(section, value, f"{where}.{key}")


def _dataclass_in(annotation: Any) -> type | None:
    """The dataclass an annotation names (`X` or `X | None`), else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


# ------------------------------------------------------------------------------------------------------ core keys
def validate_core_options(core: Mapping[str, Any]) -> dict[str, Any]:
    """Checks `model.core` against `CoreConfig` (names, types, consistency) and returns the converted values."""
    if not isinstance(core, Mapping):
        raise ConfigError(f"TrainConfig.model.core must be a mapping of CoreConfig fields, got {core!r}")
    known = [f.name for f in dataclasses.fields(CoreConfig) if f.name not in CORE_FROM_DATA]
    fixed = [k for k in core if k in CORE_FROM_DATA]
    if fixed:
        raise ConfigError(f"TrainConfig.model.core sets {fixed}: the vocabulary comes from the data source's "
                          "tokenizer and specials; remove these keys")
    unknown = [k for k in core if k not in known]
    if unknown:
        hints = [f"{k!r} -> {difflib.get_close_matches(k, known, n=1)[0]!r}" for k in unknown
                 if difflib.get_close_matches(k, known, n=1)]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ConfigError(f"unknown field(s) {unknown} in TrainConfig.model.core{hint}; known fields: "
                          f"{', '.join(known)}")
    placeholder = VocabLayout.build(text_size=1, specials=("mask",))
    try:
        built = from_dict(CoreConfig, {**core, "vocab": placeholder}, where="TrainConfig.model.core")
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from err
    return {k: getattr(built, k) for k in core}


# ------------------------------------------------------------------------------------------------------- YAML
def _load_yaml_mapping(text: str, where: str) -> dict[str, Any]:
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from err
    if data is None:
        raise ConfigError(f"{where} is empty; a recipe needs at least `name` and `data.name`")
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """A command-line value with YAML rules (`3`, `true`, `[1, 2]`, `null`), YAML 1.2 floats included (`1e-3`)."""
    return parse_override_value(text)


# -------------------------------------------------------------------------------------------------- overrides
def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`["--optim.lr=1e-3", "train.steps=5", "--seed", "3"]` -> `{"optim.lr": 0.001, "train.steps": 5, "seed": 3}`.

    >>> parse_overrides(["--optim.lr=1e-3", "--optim.betas", "[0.9, 0.99]"])
    {'optim.lr': 0.001, 'optim.betas': [0.9, 0.99]}
    """
    parsed: dict[str, Any] = {}
    items = list(overrides)
    i = 0
    while i < len(items):
        item = items[i]
        body = item[2:] if item.startswith("--") else item
        if "=" in body:
            key, text = body.split("=", 1)
        elif item.startswith("--") and i + 1 < len(items) and not items[i + 1].startswith("--"):
            key, text = body, items[i + 1]
            i += 1
        else:
            raise ConfigError(f"override {item!r} has no value; write it as --section.key=value "
                              "(e.g. --optim.lr=1e-3)")
        key = key.strip()
        if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
            raise ConfigError(f"override {item!r}: {key!r} is not a dotted field name like optim.lr")
        parsed[key] = parse_value(text)
        i += 1
    return parsed


def _apply(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    parsed = parse_overrides(overrides)
    try:
        return apply_overrides(data, parsed)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def apply_cli_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """A copy of `config` with `--section.key=value` overrides applied (and validated)."""
    data = _apply(config.to_dict(), overrides)
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{err} (after overrides {list(overrides)})") from err


def shipped_recipes() -> Path | None:
    """The folder of the recipes shipped with mmdiff: the `configs/` folder beside the package when it runs from a
    source checkout, else the installed package's `mmdiff.configs` (the repository's `configs/` as package data).

    (The checkout comes first: an editable install maps `mmdiff.configs` to the folder it was installed from, which
    is another checkout's when several git worktrees share one environment.)
    """
    import importlib.resources

    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs").is_dir():
        return checkout / "configs"
    try:
        root = importlib.resources.files("mmdiff.configs")
        if isinstance(root, Path) and root.is_dir():
            return root
    except ModuleNotFoundError:
        pass
    return None


def resolve_recipe(path: str | os.PathLike) -> Path:
    """The recipe file `path` names: the file itself if it exists, else a shipped recipe, so the zoo cards'
    `mmdiff train configs/...yaml` commands work after `pip install mmdiff` too.

    A shipped recipe is found by its path under `configs/` (with or without the leading `configs/` and `.yaml`)
    or by its bare name when that is unique.

    >>> resolve_recipe("configs/toy/copy-tiny.yaml").parts[-2:]
    ('toy', 'copy-tiny.yaml')
    >>> resolve_recipe("copy-tiny") == resolve_recipe("toy/copy-tiny")
    True
    """
    given = Path(path)
    if given.is_file():
        return _not_a_launch_config(given)
    root = shipped_recipes()
    if root is not None and not given.is_absolute():
        rel = Path(*given.parts[1:]) if given.parts[:1] == ("configs",) else given
        candidates = [root / rel, root / rel.with_name(rel.name + ".yaml")]
        if len(rel.parts) == 1:
            candidates += [p for p in sorted(root.glob(f"*/{rel.stem}.yaml")) if p.parent.name != LAUNCH_CONFIGS]
        found = list(dict.fromkeys(p for p in candidates if p.is_file()))
        if len(found) == 1 or (found and found[0] in candidates[:2]):
            return _not_a_launch_config(found[0])
    names = sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.yaml")
                   if p.parent.name != LAUNCH_CONFIGS) if root else []
    raise FileNotFoundError(f"training recipe {given} not found, neither as a file nor among the shipped recipes "
                            f"(configs/: {', '.join(names) or 'none found'}); give a YAML file or a shipped name, "
                            "e.g. configs/toy/copy-tiny.yaml")


LAUNCH_CONFIGS = "accelerate"  # configs/accelerate/ holds `accelerate launch` configs, not training recipes


def _not_a_launch_config(path: Path) -> Path:
    """`path`, unless it is an accelerate launch config (which `mmdiff train --accelerate-config` takes)."""
    head = path.read_text()[:4000] if path.suffix in (".yaml", ".yml") else ""
    if re.search(r"^(distributed_type|compute_environment):", head, re.MULTILINE):
        raise ConfigError(f"{path} is an accelerate launch config, not a training recipe: give a recipe and pass "
                          f"this file as `mmdiff train RECIPE --accelerate-config {path.stem}` (or `accelerate launch "
                          f"--config_file {path} -m mmdiff.cli train RECIPE`)")
    return path


def load_train_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
    """Reads a YAML recipe, applies command-line overrides and returns the typed, validated config.

    Args:
        path: the recipe file.
        overrides: `--section.key=value` or `section.key=value` items (or `--section.key value` pairs); values
            follow YAML rules (`1e-3`, `true`, `[0.9, 0.95]`, `null`).

    Raises:
        ConfigError: unknown, missing or ill-typed fields (named, with the file), or a malformed override.

    >>> # cfg = load_train_config("configs/toy/copy-tiny.yaml", ["--train.steps=20"])
    """
    path = resolve_recipe(path)
    data = _apply(_load_yaml_mapping(path.read_text(), str(path)), overrides)
    suffix = f" (after overrides {list(overrides)})" if overrides else ""
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}{suffix}") from err
