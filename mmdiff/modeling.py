"""`DiffusionModel`: the object users load, train and sample: the shared core plus its vocabulary layout, task,
tokenizer and sampler defaults, saved as one checkpoint folder.

A checkpoint folder holds `config.json` (core + vocabulary layout + task), `model.safetensors`,
`sampler_config.json`, tokenizer files and a `README.md` model card.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmdiff.canvas import Canvas, CanvasCore
from mmdiff.core.config import CoreConfig
from mmdiff.dataclass_io import from_dict
from mmdiff.diffusion.objective import LossOutput, diffusion_loss
from mmdiff.diffusion.schedules import Schedule
from mmdiff.io import (
    PICKLE_SUFFIXES,
    load_json,
    load_safetensors,
    load_state_dict_strict,
    save_json,
    save_safetensors,
)
from mmdiff.registry import ARCHITECTURES, SAMPLERS
from mmdiff.vocab import VocabLayout

__all__ = ["DiffusionModel", "ModelConfig", "SamplerConfig", "CONFIG_NAME", "WEIGHTS_NAME", "SAMPLER_CONFIG_NAME"]

ADAPTER_PREFIX = "adapters."  # adapter weights in model.safetensors: adapters.<modality>.<key>
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SAMPLER_CONFIG_NAME = "sampler_config.json"
FORMAT_VERSION = 1


@dataclass
class ModelConfig:
    """What `config.json` holds.

    Args:
        core: the core transformer's shape and vocabulary layout.
        task: task name in `mmdiff.registry.TASKS` ("text", ...).
        architecture: core class in `mmdiff.registry.ARCHITECTURES`.
        name: zoo name, if any.
        task_options: task-specific settings (e.g. prompt format of a synthetic task).
        adapters: modality adapters by modality, each its config dict (`mmdiff.adapters.build_adapter` builds it),
            e.g. {"vision": {"adapter": "vision/timm", "model_name": ..., "d_model": ...}}; their soft tokens take
            the canvas positions of the modality's placeholder id.
    """

    core: CoreConfig
    task: str = "text"
    architecture: str = "masked_diffusion_transformer"
    name: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mmdiff_format": FORMAT_VERSION,
            "architecture": self.architecture,
            "task": self.task,
            "name": self.name,
            "task_options": dict(self.task_options),
            "adapters": {modality: dict(cfg) for modality, cfg in self.adapters.items()},
            "core": self.core.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        version = data.pop("mmdiff_format", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(
                f"config.json has mmdiff_format {version}; this mmdiff reads up to {FORMAT_VERSION}: upgrade mmdiff"
            )
        if "core" not in data:
            raise ValueError("config.json has no 'core' section; is this an mmdiff checkpoint? Foreign layouts go "
                             "through mmdiff.convert")
        data["core"] = CoreConfig.from_dict(data["core"])
        return from_dict(cls, data, where="config.json")


@dataclass
class SamplerConfig:
    """Sampling defaults saved with a checkpoint (`sampler_config.json`); `generate` arguments override them.

    Args:
        sampler: name in `mmdiff.registry.SAMPLERS`.
        gen_length: answer length in tokens (0: only fill the mask ids of the input, infilling).
        steps: denoising steps (forward passes).
        block_length: semi-autoregressive block size.
        temperature: 0 = greedy.
        remasking: which predictions to commit first (e.g. "low_confidence", "margin", "entropy", "random").
        options: further keyword defaults of the sampler (e.g. {"threshold": 0.9, "cache": "dual"}).
    """

    sampler: str = "llada"
    gen_length: int = 128
    steps: int = 128
    block_length: int = 32
    temperature: float = 0.0
    remasking: str = "low_confidence"
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def defaults(self) -> dict[str, Any]:
        """The flat keyword defaults: the named fields, then `options`."""
        named = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        return {**named, **self.options}


class DiffusionModel(nn.Module):
    """A masked-diffusion model: core + vocabulary layout + tokenizer + sampler defaults.

    >>> from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout
    >>> model = DiffusionModel(ModelConfig(CoreConfig(VocabLayout.build(16), d_model=32, n_layers=1, n_heads=2)))
    >>> model.generate(torch.tensor([[1, 2, 3]]), gen_length=4, steps=4, block_length=4).shape
    torch.Size([1, 7])
    """

    def __init__(self, config: ModelConfig, *, tokenizer: Any = None, sampler_config: SamplerConfig | None = None,
                 load_pretrained_adapters: bool | None = None):
        """Builds the model; `load_pretrained_adapters=False` skips an adapter config's pretrained tower weights
        (a checkpoint brings its own)."""
        super().__init__()
        self.config = config
        self.core = ARCHITECTURES.get(config.architecture)(config.core)
        self.adapters = nn.ModuleDict()
        if config.adapters:
            from mmdiff.adapters import build_adapter

            for modality, adapter_config in config.adapters.items():
                adapter = build_adapter(adapter_config, load_pretrained=load_pretrained_adapters)
                if adapter.modality != modality:
                    raise ValueError(f"ModelConfig.adapters[{modality!r}] is a {adapter.modality!r} adapter "
                                     f"({adapter.key}); put it under {adapter.modality!r}")
                adapter.check_fits(config.core)
                if adapter.trains_with_core is False:  # a discrete tokenizer: no gradient reaches it, EMA stays put
                    adapter.requires_grad_(False)
                self.adapters[modality] = adapter
                config.adapters[modality] = adapter.config.to_dict()  # resolved (e.g. the tower's preprocessing)
        self.tokenizer = tokenizer
        self.sampler_config = sampler_config or SamplerConfig()

    @property
    def vocab(self) -> VocabLayout:
        return self.config.core.vocab

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, input_ids: Tensor | None = None, **kwargs: Any):
        """Runs the core (see `MaskedDiffusionTransformer.forward`)."""
        return self.core(input_ids, **kwargs)

    def loss(
        self,
        canvas: Canvas,
        schedule: str | Schedule = "linear",
        *,
        normalize: str = "elbo",
        complementary: bool = False,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        """The masked-diffusion loss on a canvas (see `mmdiff.diffusion.diffusion_loss`); the canvas's raw modality
        signals run through the adapters first."""
        self.core.check_ids(canvas.ids)
        canvas = self.embed_signals(canvas)
        return diffusion_loss(self.core, canvas, schedule, mask_id=self.vocab.mask_id, normalize=normalize,
                              complementary=complementary, t=t, generator=generator)

    def log_likelihood(
        self,
        prompt: Sequence[int] | str | Sequence[Sequence[int] | str],
        answer: Sequence[int] | str | Sequence[Sequence[int] | str],
        *,
        mc_samples: int = 128,
        batch_size: int = 16,
        cfg_scale: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> float | list[float]:
        """Monte-Carlo ELBO estimate of log p(answer | prompt) in nats (LLaDA's estimator with stratified mask
        counts; see `mmdiff.diffusion.likelihood`). Texts are encoded with the tokenizer; lists of prompts and answers
        give a list of estimates.

        >>> # model.log_likelihood("Q: 2+2? A:", " 4", mc_samples=64)
        """
        from mmdiff.diffusion.likelihood import elbo_log_likelihood

        def ids(x: Any) -> list[int]:
            return self.encode(x)[0] if isinstance(x, str) else [int(i) for i in x]

        single = _is_one_text(answer) or (len(answer) == 0 and _is_one_text(prompt))  # a prompt may be empty
        prompts, answers = ([prompt], [answer]) if single else (list(prompt), list(answer))
        if len(prompts) != len(answers):
            raise ValueError(f"got {len(prompts)} prompts and {len(answers)} answers; give one answer per prompt")
        was_training = self.training
        self.eval()
        try:
            out = [elbo_log_likelihood(self.core, ids(p), ids(a), mask_id=self.vocab.mask_id, mc_samples=mc_samples,
                                       batch_size=batch_size, cfg_scale=cfg_scale, generator=generator)
                   for p, a in zip(prompts, answers, strict=True)]
        finally:
            self.train(was_training)
        return out[0] if single else out

    def embed_signals(self, canvas: Canvas) -> Canvas:
        """The canvas with its raw modality signals (`canvas.signals`) turned into soft tokens by the adapters."""
        if not canvas.signals:
            return canvas
        unknown = [m for m in canvas.signals if m not in self.adapters]
        if unknown:
            raise ValueError(f"the canvas carries {unknown} inputs but this model has adapters for "
                             f"{list(self.adapters) or 'no modality'}; use a model built with such an adapter")
        soft = [self.adapters[m].embed(signal) for m, signal in canvas.signals.items()]  # each (B, N_m, d_model)
        embeds = torch.cat(soft, dim=1) if len(soft) > 1 else soft[0]
        if canvas.soft_positions is None or canvas.soft_positions.shape != embeds.shape[:2]:
            got = None if canvas.soft_positions is None else tuple(canvas.soft_positions.shape)
            raise ValueError(f"the adapters give {tuple(embeds.shape[:2])} soft tokens (batch, count) but the canvas "
                             f"has soft_positions {got}; build the canvas with the task's collate / processor")
        return replace(canvas, soft_embeds=embeds, signals=None)

    # ------------------------------------------------------------------------------------------------ weights
    def weights(self) -> dict[str, Tensor]:
        """What `model.safetensors` holds: the core's state dict, then each adapter's under `adapters.<modality>.`."""
        state = dict(self.core.state_dict())
        state.update({f"{ADAPTER_PREFIX}{k}": v for k, v in self.adapters.state_dict().items()})
        return state

    def load_weights(self, state: dict[str, Tensor], *, source: str = "checkpoint") -> None:
        """Strictly loads what `weights()` gives (every key and shape must match)."""
        core = {k: v for k, v in state.items() if not k.startswith(ADAPTER_PREFIX)}
        adapters = {k.removeprefix(ADAPTER_PREFIX): v for k, v in state.items() if k.startswith(ADAPTER_PREFIX)}
        load_state_dict_strict(self.core, core, source=source)
        load_state_dict_strict(self.adapters, adapters, source=f"{source} (adapter weights)")

    # ------------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, input_ids: Tensor | Canvas, attention_mask: Tensor | None = None, **overrides: Any) -> Tensor:
        """Samples answers after `input_ids` (B, P) with the checkpoint's sampler defaults, overridden by keywords.

        The sampler is `SAMPLERS.get(sampler)`, called as `sampler(core, input_ids, attention_mask, mask_id=...,
        **options)`; a keyword it does not take is an error naming the ones it does. A `Canvas` (a prompt built by a
        task: soft tokens, raw signals for the adapters, an attention kind) can stand for `input_ids`: its ids and
        padding mask are the prompt and the sampler runs a `CanvasCore` that places its soft tokens and applies its
        attention kind at every forward pass.

        Returns:
            (B, P + gen_length): prompt then answer, on the model's device (inputs are moved there).
        """
        options = {**self.sampler_config.defaults(), **overrides}
        name = options.pop("sampler")
        sampler = SAMPLERS.get(name)
        params = inspect.signature(sampler).parameters
        special = {"mask_id": self.vocab.mask_id, "eos_id": self.vocab.eos_id, "eot_id": self.vocab.get_id("eot")}
        reserved = ("core", "input_ids", "attention_mask", *special)
        clash = [k for k in overrides if k in reserved]
        if clash:
            raise TypeError(f"generate() sets {clash} itself; pass input_ids and attention_mask positionally")
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        accepted = [k for k, p in params.items() if k not in reserved and p.kind is not inspect.Parameter.VAR_KEYWORD]
        unknown = [k for k in overrides if k not in accepted and k != "sampler"]
        if unknown and not takes_any:
            raise TypeError(f"sampler {name!r} does not take {unknown}; it accepts: {', '.join(accepted)}")
        # checkpoint defaults the sampler does not take are dropped; explicit overrides always reach a **kwargs sampler
        options = {k: v for k, v in options.items() if k in accepted or (k in overrides and takes_any)}
        # inputs follow the model: a CPU prompt works with a model on the GPU (the output is on the model's device)
        device = self.device
        input_ids = input_ids.to(device)
        attention_mask = attention_mask.to(device) if attention_mask is not None else None
        options = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in options.items()}
        was_training = self.training
        self.eval()
        try:
            core: nn.Module = self.core
            if isinstance(input_ids, Canvas):
                if attention_mask is not None:
                    raise TypeError("a Canvas carries its own attention mask; do not pass attention_mask with it")
                canvas = self.embed_signals(input_ids)
                core, input_ids, attention_mask = CanvasCore(self.core, canvas), canvas.ids, canvas.attention_mask
            given = {k: v for k, v in special.items() if k == "mask_id" or k in params}
            return sampler(core, input_ids, attention_mask, **given, **options)
        finally:
            self.train(was_training)

    # ---------------------------------------------------------------------------------------------- text helpers
    def encode(self, text: str | list[str]) -> list[list[int]]:
        """Token ids of one or more strings (no special tokens)."""
        self._need_tokenizer()
        texts = [text] if isinstance(text, str) else text
        return [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]

    def chat_prompt(self, message: str | list[dict[str, str]]) -> str:
        """The text of a chat turn to answer: `message` (a user message, or a list of {"role", "content"} turns)
        rendered with the tokenizer's chat template, or the zoo card's `chat_template` when the tokenizer has none,
        ending with the assistant's turn opened.

        >>> # ids = model.encode(model.chat_prompt("What is 2 + 2?"))
        """
        self._need_tokenizer()
        messages = [{"role": "user", "content": message}] if isinstance(message, str) else list(message)
        card = getattr(self, "card", None)
        template = getattr(self.tokenizer, "chat_template", None) or (card.chat_template if card else None)
        if not template:
            raise ValueError("this model has no chat template (neither its tokenizer files nor its zoo card give "
                             "one); prompt it with plain text instead of --chat")
        return self.tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                                  tokenize=False)

    def decode(self, ids: Tensor | list[int], *, stop_at_eos: bool = True) -> str:
        """Text of a 1-D id sequence; stops at the first EOS (or EOT) and drops special ids."""
        self._need_tokenizer()
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if stop_at_eos:
            stops = [ids.index(i) for i in (self.vocab.eos_id, self.vocab.get_id("eot")) if i is not None and i in ids]
            ids = ids[: min(stops)] if stops else ids
        lo, hi = self.vocab.range("text")
        special = set(self.vocab.special.values())  # foreign layouts keep special ids inside the text range
        return self.tokenizer.decode([i for i in ids if lo <= i < hi and i not in special])

    def _need_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass token ids, or load a checkpoint that ships one")

    # ------------------------------------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | os.PathLike, *, card: str | None = None,
                        layout: str | None = None) -> Path:
        """Writes the checkpoint folder (each file atomically): mmdiff's layout, or with `layout` ("llada", "dream",
        "mmada") the original layout of that family (config.json + safetensors with its key names), so a converted
        checkpoint round-trips bit for bit."""
        if layout is not None:
            from mmdiff.convert import save_foreign

            return save_foreign(self, directory, layout)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_json(directory / CONFIG_NAME, self.config.to_dict())
        save_json(directory / SAMPLER_CONFIG_NAME, self.sampler_config.to_dict())
        save_safetensors(directory / WEIGHTS_NAME, self.weights(), metadata={"format": "pt", "mmdiff": "core"})
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))
        if card is not None:
            (directory / "README.md").write_text(card)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        pretrained: bool = True,
    ) -> DiffusionModel:
        """Loads a checkpoint folder written by `save_pretrained` (strictly: every key and shape must match)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"checkpoint folder {directory} not found")
        config = ModelConfig.from_dict(load_json(directory / CONFIG_NAME))
        sampler_path = directory / SAMPLER_CONFIG_NAME
        sampler_config = (from_dict(SamplerConfig, load_json(sampler_path), where=SAMPLER_CONFIG_NAME)
                          if sampler_path.is_file() else SamplerConfig())
        model = cls(config, tokenizer=load_tokenizer(directory), sampler_config=sampler_config,
                    load_pretrained_adapters=False if pretrained else None)
        if pretrained:
            weights = directory / WEIGHTS_NAME
            if not weights.is_file():
                pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
                hint = f" (found pickle files {pickles}: they are refused; convert to safetensors)" if pickles else ""
                raise FileNotFoundError(f"{weights} not found{hint}")
            model.load_weights(load_safetensors(weights), source=str(weights))
        if dtype is not None:
            model.to(dtype)
        return model.to(device).eval()


def _is_one_text(x: Any) -> bool:
    """True for one text (a string, a 1-D tensor or a list of ids), False for a batch of them."""
    if isinstance(x, str):
        return True
    if isinstance(x, Tensor):
        return x.dim() == 1
    return len(x) > 0 and not isinstance(x[0], (str, Sequence)) and not (isinstance(x[0], Tensor) and x[0].dim())


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The tokenizer saved in a checkpoint folder (tokenizer files only, never remote code), or None."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        return None
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(directory))
