"""LoRA fine-tuning of mmdiff models through PEFT, and freezing recipes (which parameter groups train).

Implements LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models": W x + (alpha / r) B A x with
A (r, in), B (out, r), B = 0 at the start) and rank-stabilised scaling (Kalajdzievski 2023, rsLoRA: alpha / sqrt(r)),
both computed by PEFT's own LoRA layers.

Words: in mmdiff an "adapter" is a modality adapter (`model.adapters`); low-rank fine-tuning weights are "LoRA". The
files stay PEFT's, so a LoRA folder is what `peft.PeftModel.save_pretrained` writes for a `DiffusionModel`:

    adapter_config.json         a `peft.LoraConfig`: r, lora_alpha, target_modules (a regex over module paths such
                                as `core.blocks.0.attn.q_proj`), base_model_name_or_path (the base's zoo name or
                                folder) and modules_to_save (modules trained in full, e.g. adapters.vision.projector)
    adapter_model.safetensors   base_model.model.<module path>.lora_A.weight / .lora_B.weight, and every tensor of
                                the modules_to_save as base_model.model.<module path>.<name>; its header metadata
                                records the base's config fingerprint and a digest of its frozen weights

LoRA layers are injected into the `DiffusionModel` in place (`peft.inject_adapter_in_model`): `model.core(...)`,
the samplers and the trainer see the same objects and signatures as before; the model's state dict keys become
PEFT's (`...q_proj.base_layer.weight`, `...q_proj.lora_A.default.weight`).

>>> # model = create_model("mnist-grid-vlm")
>>> # apply_lora(model, LoraSettings(r=8)); set_trainable(model, ["projector"])   # LoRA on the core + projector
>>> # ... train ...; save_lora(model, "runs/my-lora")
>>> # tuned = create_model("mnist-grid-vlm", lora="runs/my-lora")
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmdiff.io import PICKLE_SUFFIXES, load_json, load_safetensors, save_json, save_safetensors

__all__ = [
    "LoraSettings",
    "LoraMismatch",
    "TRAINABLE_GROUPS",
    "LORA_CONFIG_NAME",
    "LORA_WEIGHTS_NAME",
    "PEFT_PREFIX",
    "apply_lora",
    "has_lora",
    "set_trainable",
    "store_frozen",
    "FROZEN_DTYPES",
    "select_parameters",
    "check_groups",
    "save_lora",
    "load_lora",
    "merge_lora",
    "lora_base",
    "is_lora_folder",
    "config_fingerprint",
]

LORA_CONFIG_NAME = "adapter_config.json"
LORA_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the DiffusionModel
ADAPTER_NAME = "default"  # PEFT's adapter name; one LoRA per model here
DIGEST_VALUES = 64  # leading values per tensor in the base-weights digest
# the core reads these weights directly (`output_weight`, tied embeddings): a LoRA layer there would be bypassed
_BYPASSED = ("core.lm_head", "core.embed_tokens")

TRAINABLE_GROUPS: dict[str, tuple[str, str]] = {
    # name: (regex over parameter names, what it is)
    "all": (r".*", "every parameter"),
    "core": (r"core\..*", "the core transformer"),
    "embeddings": (r"core\.embed_tokens\..*", "the token embedding (also the output matrix when tied)"),
    "head": (r"core\.lm_head\..*", "the untied output projection"),
    "norms": (r"core\.(?:.*\.)?\w*norm\.weight", "the core's RMSNorm gains"),
    "adapters": (r"adapters\..*", "every modality adapter"),
    "tower": (r"adapters\.[^.]+\.tower\..*", "the modality encoders (vision towers, ...)"),
    "projector": (r"adapters\.[^.]+\.projector\..*", "the adapters' projectors into d_model"),
    "lora": (r"(?!)", "the LoRA weights (always trained when model.lora is set)"),
}


class LoraMismatch(ValueError):
    """A LoRA folder that does not fit the model (another base, other keys or shapes); the message names the fix."""


@dataclass
class LoraSettings:
    """Where LoRA goes and its shape (the recipe's `model.lora` section); fields follow `peft.LoraConfig`.

    >>> LoraSettings(r=4).to_peft_config().target_modules
    'core\\\\.(?:.*\\\\.)?(?:q_proj|k_proj|v_proj|o_proj)'
    """

    r: int = field(default=8, metadata={"help": "LoRA rank: A is (r, in_features), B is (out_features, r)."})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha: the update is scaled by alpha / r (by "
                                                          "alpha / sqrt(r) with use_rslora)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input during training."})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "Module names (or dotted suffixes such as 'attn.q_proj') inside `scope` that get LoRA; "
                          "the core also has gate_proj, up_proj, down_proj."})
    scope: str = field(default="core", metadata={"help": "Sub-module searched for target_modules: 'core', an "
                                                         "adapter ('adapters.vision.tower') or '' (the whole model)."})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised scaling alpha / sqrt(r) (rsLoRA)."})

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA r must be a positive integer (the rank), got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ValueError(f"LoRA target_modules must be a non-empty list of module names such as "
                             f"['q_proj', 'v_proj'], got {self.target_modules!r}")

    def target_regex(self) -> str:
        """The module-path regex PEFT matches (`re.fullmatch`) and `adapter_config.json` stores."""
        names = "|".join(re.escape(t) for t in self.target_modules)
        scope = f"{re.escape(self.scope)}\\." if self.scope else ""
        return f"{scope}(?:.*\\.)?(?:{names})"

    def to_peft_config(self, base: str | None = None) -> Any:
        """The `peft.LoraConfig` of these settings."""
        peft = _peft()
        return peft.LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                               target_modules=self.target_regex(), use_rslora=self.use_rslora,
                               base_model_name_or_path=base)


# ------------------------------------------------------------------------------------------------------ apply
def apply_lora(model: nn.Module, settings: LoraSettings | None = None, *, base: str | None = None) -> nn.Module:
    """Injects LoRA layers into `model` in place (PEFT's LoRA layers, B = 0: outputs are unchanged at first).

    Afterwards only the LoRA weights are trainable; `set_trainable` adds groups trained in full.

    Args:
        model: a `DiffusionModel` without LoRA.
        settings: rank, alpha, dropout and target modules (default: r 8 on the core's q/k/v/o projections).
        base: the base's zoo name or folder, recorded by `save_lora` (default: the zoo card's name or the folder
            the model was loaded from, when `create_model` loaded it).

    Returns:
        The same model.

    >>> from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout
    >>> model = DiffusionModel(ModelConfig(CoreConfig(VocabLayout.build(8), d_model=16, n_layers=1, n_heads=2)))
    >>> sorted(set_trainable(apply_lora(model, LoraSettings(r=2, target_modules=["q_proj"]))))
    ['core.blocks.0.attn.q_proj.lora_A.default.weight', 'core.blocks.0.attn.q_proj.lora_B.default.weight']
    """
    settings = settings or LoraSettings()
    if has_lora(model):
        raise ValueError("this model already carries LoRA; merge it first (merge_lora) or start from the base model")
    _check_targets(model, settings)
    _inject(model, settings.to_peft_config(base if base is not None else _default_base(model)))
    return model


def has_lora(model: nn.Module) -> bool:
    """True when LoRA layers are injected (and not merged)."""
    return bool(getattr(model, "peft_config", None))


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise ImportError("LoRA fine-tuning needs PEFT: pip install peft") from err
    return peft


def _default_base(model: nn.Module) -> str | None:
    card = getattr(model, "card", None)
    if card is not None:
        return card.name
    folder = getattr(model, "checkpoint_folder", None)
    return None if folder is None else str(folder)


def _check_targets(model: nn.Module, settings: LoraSettings) -> None:
    """Clear errors before PEFT sees the settings: unknown scope, no match, or a weight the core bypasses."""
    scopes = [n for n, m in model.named_modules() if n.count(".") < 2 and any(True for _ in m.parameters())]
    if settings.scope and settings.scope not in dict(model.named_modules()):
        raise ValueError(f"LoRA scope {settings.scope!r} is not a sub-module of this model; use one of "
                         f"{[s for s in scopes if s]} or '' (the whole model)")
    pattern = re.compile(settings.target_regex())
    matched = [n for n, _ in model.named_modules() if pattern.fullmatch(n)]
    if not matched:
        prefix = f"{settings.scope}." if settings.scope else ""
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if n.startswith(prefix) and isinstance(m, (nn.Linear, nn.Conv2d))})
        raise ValueError(f"LoRA target_modules {settings.target_modules} match no module in "
                         f"{settings.scope or 'the model'!r}; its linear layers are named: {', '.join(leaves)}")
    bypassed = [n for n in matched if n in _BYPASSED]
    if bypassed:
        raise ValueError(f"LoRA cannot target {bypassed}: the core reads their weights directly (output_weight, "
                         "tied embeddings), so a LoRA there would be ignored; train them in full instead with "
                         "model.trainable: [head] or [embeddings]")


def _inject(model: nn.Module, config: Any) -> dict[str, bool]:
    """`peft.inject_adapter_in_model`; returns the previous requires_grad flags (to roll back)."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        _peft().inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    except (ValueError, TypeError, RuntimeError) as err:
        raise LoraMismatch(f"PEFT could not add LoRA layers for target_modules {config.target_modules!r}: {err}; "
                           "check that the target modules exist in this model and are linear layers") from err
    return flags


def _lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The LoRA parameters by name (`core.blocks.0.attn.q_proj.lora_A.default.weight`, ...)."""
    if not has_lora(model):
        return {}
    from peft.tuners.tuners_utils import BaseTunerLayer

    out: dict[str, nn.Parameter] = {}
    for path, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names:
                for name, p in getattr(module, attr).named_parameters():
                    out[f"{path}.{attr}.{name}"] = p
    return out


def _config(model: nn.Module) -> Any:
    if not has_lora(model):
        raise ValueError("this model carries no LoRA; apply_lora(model, settings) or load_lora(model, folder) first")
    return model.peft_config[ADAPTER_NAME]


# -------------------------------------------------------------------------------------------------- freezing
def check_groups(groups: Sequence[str] | None) -> None:
    """Validates trainable-group names without a model: each is a name in `TRAINABLE_GROUPS` or a dotted module
    path (`core.blocks.3`, `adapters.vision.projector`).

    >>> check_groups(["projector", "core.blocks.1"])
    >>> check_groups(["projecter"])
    Traceback (most recent call last):
    ...
    ValueError: unknown trainable group 'projecter' (did you mean 'projector'?); groups: all, core, embeddings, \
head, norms, adapters, tower, projector, lora, or a dotted module path such as core.blocks.0
    """
    if groups is None:
        return
    if isinstance(groups, str) or not all(isinstance(g, str) and g for g in groups):
        raise ValueError(f"trainable groups must be a list of names such as ['projector'], got {groups!r}")
    for group in groups:
        if "." not in group and group not in TRAINABLE_GROUPS:
            close = difflib.get_close_matches(group, TRAINABLE_GROUPS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown trainable group {group!r}{hint}; groups: {', '.join(TRAINABLE_GROUPS)}, or a "
                             "dotted module path such as core.blocks.0")


def select_parameters(model: nn.Module, groups: Sequence[str]) -> list[str]:
    """Names of the (non-LoRA) parameters the groups select, in model order; a group selecting nothing is an error.

    >>> from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout
    >>> model = DiffusionModel(ModelConfig(CoreConfig(VocabLayout.build(8), d_model=16, n_layers=1, n_heads=2)))
    >>> select_parameters(model, ["norms"])
    ['core.blocks.0.attn_norm.weight', 'core.blocks.0.mlp_norm.weight', 'core.norm.weight']
    """
    check_groups(groups)
    lora = set(_lora_parameters(model))
    names = [n for n, _ in model.named_parameters() if n not in lora]
    chosen: set[str] = set()
    for group in groups:
        if group == "lora":
            if not lora:
                raise ValueError("trainable group 'lora' selects nothing: this model carries no LoRA (set model.lora)")
            continue
        if group in TRAINABLE_GROUPS:
            pattern = re.compile(TRAINABLE_GROUPS[group][0])
            hits = [n for n in names if pattern.fullmatch(n)]
        else:
            hits = [n for n in names if n == group or n.startswith(group + ".")]
        if not hits:
            what = TRAINABLE_GROUPS[group][1] if group in TRAINABLE_GROUPS else "a module path"
            raise ValueError(f"trainable group {group!r} ({what}) selects no parameter of this model; its top-level "
                             f"modules: {sorted({n.rsplit('.', 2)[0] for n in names if n.count('.') >= 2})[:12]}")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def set_trainable(model: nn.Module, groups: Sequence[str] | None = None) -> list[str]:
    """Freezes everything except `groups` (and the LoRA weights, which always train when LoRA is applied).

    Args:
        model: a `DiffusionModel` (after `apply_lora` when using LoRA).
        groups: names in `TRAINABLE_GROUPS` ("projector", "tower", "core", "norms", ...) or dotted module paths;
            None = everything without LoRA, only the LoRA weights with it. With LoRA, the modules trained in full
            are recorded as PEFT's `modules_to_save` and `save_lora` writes them with the LoRA weights.

    Returns:
        The names of the trainable parameters.

    >>> # set_trainable(model, ["projector"])   # a frozen core and tower, a trained vision projector
    """
    lora = _lora_parameters(model)
    if groups is None:
        chosen = [] if lora else [n for n, _ in model.named_parameters()]
    else:
        chosen = select_parameters(model, groups)
    if not chosen and not lora:
        raise ValueError(f"trainable groups {groups!r} leave nothing to train; name at least one group")
    wrapped = [n for n in chosen if ".base_layer." in n]
    if wrapped:
        raise ValueError(f"trainable groups {list(groups or [])} select weights that LoRA wraps ({wrapped[:3]} ...); "
                         "with LoRA they stay frozen: name narrower groups (e.g. 'norms', 'projector') or drop "
                         "model.lora")
    modules = _owning_modules(model, set(chosen)) if lora else []
    selected = set(chosen) | set(lora)
    for name, p in model.named_parameters():
        p.requires_grad_(name in selected)
    if lora:
        _config(model).modules_to_save = modules or None
    return [n for n, _ in model.named_parameters() if n in selected]


# `model.frozen_dtype` values: the trainer autocasts to bf16 only (fp16 training would need a loss scaler, whose
# state the pickle-free checkpoints do not hold), and a frozen base must match the autocast type
FROZEN_DTYPES = {"bfloat16": torch.bfloat16}


def store_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Stores the frozen weights of every `nn.Linear` (the LoRA-wrapped base layers included) in `dtype`, the
    QLoRA-style frozen low-precision base (Dettmers et al. 2023 quantise it further, to 4 bits): half the memory of
    float32 weights, and no float32-to-`dtype` copy of each weight per step. Under autocast to the same `dtype` the
    forward pass is unchanged, bit for bit: autocast casts a float32 weight to it before every matmul anyway.
    Trainable tensors (the LoRA weights, modules trained in full), embeddings and norms stay as they are. Returns
    the number of parameters converted.

    >>> from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout
    >>> model = DiffusionModel(ModelConfig(CoreConfig(VocabLayout.build(8), d_model=16, n_layers=1, n_heads=2)))
    >>> _ = set_trainable(apply_lora(model, LoraSettings(r=2)))
    >>> store_frozen(model, torch.bfloat16), model.core.blocks[0].mlp.up_proj.weight.dtype
    (4288, torch.bfloat16)
    """
    converted = 0
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        for param in list(module.parameters(recurse=False)):
            if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
                converted += param.numel()
    return converted


def _owning_modules(model: nn.Module, names: set[str]) -> list[str]:
    """The outermost modules all of whose parameters are in `names` (PEFT saves trained modules whole)."""
    chosen: list[str] = []
    for path, module in model.named_modules():
        if not path or any(path.startswith(c + ".") for c in chosen):
            continue
        params = [f"{path}.{n}" for n, _ in module.named_parameters()]
        if params and all(p in names for p in params):
            chosen.append(path)
    covered = {f"{c}.{n}" for c in chosen for n, _ in model.get_submodule(c).named_parameters()}
    partial = sorted(names - covered)
    if partial:
        raise ValueError(f"with LoRA, parameters trained in full are saved per module (PEFT's modules_to_save), but "
                         f"the trainable groups select only part of a module: {partial[:4]}; select whole modules")
    return chosen


# ------------------------------------------------------------------------------------------------ fingerprint
def config_fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex digits) of the base's architecture, core config and adapter configs: a LoRA folder loads only
    onto a model with the same fingerprint.

    >>> from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout
    >>> config = ModelConfig(CoreConfig(VocabLayout.build(8), d_model=16, n_layers=1, n_heads=2))
    >>> len(config_fingerprint(DiffusionModel(config)))
    16
    """
    config = model.config
    data = {"architecture": config.architecture, "core": config.core.to_dict(), "adapters": config.adapters}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _weights_digest(state: Mapping[str, Tensor], skip: Sequence[str]) -> str:
    """sha256 over the leading values (rounded to bfloat16, so a bf16 copy of the base matches) of every frozen base
    tensor: LoRA tensors and the modules in `skip` (trained in full) are left out."""
    digest = hashlib.sha256()
    for name in sorted(state):
        base = name.replace(".base_layer.", ".")
        if ".lora_" in name or any(base.startswith(m + ".") for m in skip) or not state[name].is_floating_point():
            continue
        values = state[name].detach().reshape(-1)[:DIGEST_VALUES].to(torch.bfloat16).float().cpu()
        digest.update(base.encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- save
def save_lora(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    base: str | None = None,
    weights: Mapping[str, Tensor] | None = None,
) -> Path:
    """Writes the LoRA folder (PEFT's files, each written atomically, safetensors only).

    Args:
        model: a `DiffusionModel` with LoRA (`apply_lora` or `load_lora`).
        directory: the folder to write (created).
        base: the base's zoo name or folder, recorded as `base_model_name_or_path` (default: what `apply_lora`
            recorded); `create_model(base, lora=directory)` loads it back.
        weights: the model's tensors in `DiffusionModel.weights()` layout (an FSDP run passes the gathered state);
            default the live model's.

    Returns:
        `directory`.

    >>> # save_lora(model, "runs/my-lora", base="mnist-grid-vlm")
    """
    config = copy.deepcopy(_config(model))
    config.base_model_name_or_path = base if base is not None else config.base_model_name_or_path
    if not config.base_model_name_or_path:
        raise ValueError("save_lora needs the base model's zoo name or folder: pass base=..., so the LoRA folder "
                         "can be loaded back with create_model(base, lora=folder)")
    config.inference_mode = True
    config.auto_mapping = {"base_model_class": type(model).__name__, "parent_library": type(model).__module__}
    state = _full_state(model, weights)
    keep = config.modules_to_save or []
    tensors = {_saved_key(n): state[n] for n in _lora_parameters(model)}
    for path in keep:
        for name in model.get_submodule(path).state_dict():
            tensors[f"{PEFT_PREFIX}{path}.{name}"] = state[f"{path}.{name}"]
    metadata = {"format": "pt", "mmdiff_base": str(config.base_model_name_or_path),
                "mmdiff_base_config": config_fingerprint(model), "mmdiff_base_weights": _weights_digest(state, keep)}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(directory / LORA_WEIGHTS_NAME, tensors, metadata=metadata)
    save_json(directory / LORA_CONFIG_NAME, _config_dict(config))
    return directory


def _saved_key(name: str) -> str:
    """`core.x.lora_A.default.weight` -> `base_model.model.core.x.lora_A.weight` (PEFT drops the adapter name)."""
    return PEFT_PREFIX + name.replace(f".{ADAPTER_NAME}", "")


def _full_state(model: nn.Module, weights: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """Module-path keyed tensors: the live state dict, or `weights()`-layout tensors (core keys unprefixed)."""
    if weights is None:
        return dict(model.state_dict())
    return {k if k.startswith("adapters.") else f"core.{k}": v for k, v in weights.items()}


def _config_dict(config: Any) -> dict[str, Any]:
    """`adapter_config.json` as PEFT writes it (sets as lists, enums as their values)."""
    data = config.to_dict()
    data["peft_type"] = getattr(data["peft_type"], "value", data["peft_type"])
    data["task_type"] = getattr(data.get("task_type"), "value", data.get("task_type"))
    return {k: sorted(v) if isinstance(v, set) else v for k, v in sorted(data.items())}


# --------------------------------------------------------------------------------------------------- load
def is_lora_folder(path: str | os.PathLike) -> bool:
    """True for a folder holding `adapter_config.json` (a LoRA folder, not a full checkpoint)."""
    return (Path(path) / LORA_CONFIG_NAME).is_file()


def lora_base(directory: str | os.PathLike) -> str | None:
    """The base a LoRA folder records (`base_model_name_or_path`): a zoo name or a checkpoint folder, or None.

    >>> # create_model(lora_base("runs/my-lora"), lora="runs/my-lora")
    """
    data = load_json(_check_folder(Path(directory)) / LORA_CONFIG_NAME)
    return data.get("base_model_name_or_path") or None


def load_lora(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Loads a LoRA folder onto a base model in place, strictly (every key and shape must fit).

    Args:
        model: the base `DiffusionModel` (without LoRA), e.g. `create_model(base)`.
        directory: a folder written by `save_lora` (or by `peft.PeftModel.save_pretrained` on a DiffusionModel).

    Returns:
        The same model, with LoRA layers (trainable) and the folder's modules_to_save loaded (trainable too).

    Raises:
        FileNotFoundError: missing folder or files (pickle files are refused).
        LoraMismatch: a folder for another base (config fingerprint), or keys / shapes that do not fit.

    >>> # load_lora(create_model("mnist-grid-vlm"), "runs/my-lora")   # = create_model(..., lora="runs/my-lora")
    """
    directory = _check_folder(Path(directory))
    config = _read_config(directory)
    path = directory / LORA_WEIGHTS_NAME
    tensors = load_safetensors(path)
    metadata = _metadata(path)
    if has_lora(model):
        raise ValueError("this model already carries LoRA; load the folder onto a fresh base "
                         "(create_model(base, lora=folder)) or merge_lora(model) first")
    _check_base(model, metadata, config, directory)
    keep = _resolve_modules(model, config.modules_to_save or [], directory)
    if metadata.get("mmdiff_base_weights") and metadata["mmdiff_base_weights"] != _weights_digest(
            model.state_dict(), keep):
        warnings.warn(f"{directory} was trained on base {config.base_model_name_or_path!r}, and this model's frozen "
                      "weights differ from that base's (same shapes, other values): outputs will not be the trained "
                      "ones; load the LoRA onto the base it was trained on", stacklevel=2)
    inject = copy.deepcopy(config)
    inject.modules_to_save, inject.inference_mode = None, False
    flags = _inject(model, inject)
    try:
        _copy_tensors(model, tensors, keep, directory)
    except BaseException:
        _unload(model, merge=False)
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, True))
        raise
    for path_ in keep:
        model.get_submodule(path_).requires_grad_(True)
    _config(model).modules_to_save = keep or None
    return model


def _check_folder(directory: Path) -> Path:
    if not directory.is_dir():
        raise FileNotFoundError(f"LoRA folder {directory} not found")
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    missing = [n for n in (LORA_CONFIG_NAME, LORA_WEIGHTS_NAME) if not (directory / n).is_file()]
    if missing:
        if pickles:
            hint = (f"found pickle files {pickles}, which are refused: convert them once in a trusted environment "
                    "with safetensors.torch.save_file(torch.load(path), 'adapter_model.safetensors')")
        elif (directory / "config.json").is_file():
            hint = "it holds config.json, so it is a full checkpoint: pass it as the base, not as lora="
        else:
            hint = "write LoRA folders with mmdiff.lora.save_lora (or peft's save_pretrained)"
        raise FileNotFoundError(f"LoRA folder {directory} lacks {', '.join(missing)}; {hint}")
    return directory


def _read_config(directory: Path) -> Any:
    peft = _peft()
    data = load_json(directory / LORA_CONFIG_NAME)
    kind = data.get("peft_type") if isinstance(data, dict) else None
    if kind != "LORA":
        raise ValueError(f"{directory / LORA_CONFIG_NAME} has peft_type {kind!r}; mmdiff loads LoRA folders "
                         "(peft_type 'LORA') only")
    try:
        return peft.LoraConfig.from_peft_type(**peft.LoraConfig.check_kwargs(**data))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{directory / LORA_CONFIG_NAME} is not a valid LoraConfig: {err}") from err


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def _check_base(model: nn.Module, metadata: Mapping[str, str], config: Any, directory: Path) -> None:
    want = metadata.get("mmdiff_base_config")
    if want is None or not hasattr(model, "config"):
        return  # a folder written by PEFT itself: the strict key and shape check still applies
    got = config_fingerprint(model)
    if got != want:
        base = config.base_model_name_or_path
        name = getattr(model.config, "name", None) or "this model"
        raise LoraMismatch(f"{directory} is a LoRA for base {base!r} (config fingerprint {want}), but {name!r} has "
                           f"fingerprint {got} (another architecture, core shape, vocabulary or adapters); load it "
                           f"onto its base: create_model({base!r}, lora={str(directory)!r})")


def _resolve_modules(model: nn.Module, names: Sequence[str], directory: Path) -> list[str]:
    """PEFT's modules_to_save entries (exact paths or dotted suffixes) -> the outermost matching module paths."""
    paths = [n for n, _ in model.named_modules() if n]
    out: list[str] = []
    for name in names:
        hits = [p for p in paths if p == name or p.endswith("." + name)]
        if not hits:
            raise LoraMismatch(f"{directory / LORA_CONFIG_NAME} lists modules_to_save {name!r}, which this model "
                               "does not have; load the folder onto the base it was trained on")
        out += hits
    return [p for p in dict.fromkeys(out) if not any(p.startswith(o + ".") for o in out)]  # outermost, in order
    return out


def _copy_tensors(model: nn.Module, tensors: Mapping[str, Tensor], keep: Sequence[str], directory: Path) -> None:
    """Strict: the file's keys and shapes must be exactly the model's LoRA tensors and modules_to_save tensors."""
    state = model.state_dict(keep_vars=True)
    expected = {_saved_key(n): p for n, p in _lora_parameters(model).items()}
    for path in keep:
        expected.update({f"{PEFT_PREFIX}{path}.{n}": state[f"{path}.{n}"] for n in model.get_submodule(path)
                         .state_dict()})
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    shapes = [f"{k}: file {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)}"
              for k in sorted(set(tensors) & set(expected)) if tensors[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        lines = [f"{directory / LORA_WEIGHTS_NAME} does not fit this model:"]
        lines += [f"  missing keys ({len(missing)}): {', '.join(missing[:12])}"] if missing else []
        lines += [f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:12])}"] if unexpected else []
        lines += [f"  {s}" for s in shapes[:12]]
        lines.append(f"  load it onto the base it was trained on ({lora_base(directory)!r}), with the LoRA settings "
                     "of its adapter_config.json")
        raise LoraMismatch("\n".join(lines))
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key])


# -------------------------------------------------------------------------------------------------- merge
def merge_lora(model: nn.Module) -> nn.Module:
    """Folds LoRA into the base weights (W + scale * B A) and removes the LoRA layers: a plain model again, as fast
    as the base, whose `save_pretrained` writes a full checkpoint. Parameters keep their requires_grad flags.

    >>> # merged = merge_lora(create_model("mnist-grid-vlm", lora="runs/my-lora"))
    """
    _config(model)
    _unload(model, merge=True)
    return model


def _unload(model: nn.Module, *, merge: bool) -> None:
    """Replaces every LoRA layer by its base layer (merged into it first when `merge`)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for path, layer in layers:
        if merge:
            layer.merge(safe_merge=True)
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    del model.peft_config
