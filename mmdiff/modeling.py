"""`DiffusionModel`: the object users load, train and sample: the shared core plus its vocabulary layout, task,
tokenizer and sampler defaults, saved as one checkpoint folder.

A checkpoint folder holds `config.json` (core + vocabulary layout + task), `model.safetensors`,
`sampler_config.json`, tokenizer files and a `README.md` model card.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmdiff.canvas import Canvas, CanvasCore
from mmdiff.card import ZooCard
from mmdiff.core.config import CoreConfig
from mmdiff.dataclass_io import from_dict
from mmdiff.diffusion.objective import LossOutput, diffusion_loss
from mmdiff.diffusion.schedules import Schedule
from mmdiff.io import (
    PICKLE_SUFFIXES,
    interrupted_folder,
    load_json,
    load_safetensors,
    load_state_dict_strict,
    save_json,
    save_safetensors,
    write_folder,
)
from mmdiff.registry import ARCHITECTURES, CONVERTERS, SAMPLERS
from mmdiff.sampling.base import Sampler, unknown_option_error
from mmdiff.sampling.output import SamplerOutput
from mmdiff.vocab import VocabLayout

__all__ = ["DiffusionModel", "ModelConfig", "SamplerConfig", "CONFIG_NAME", "WEIGHTS_NAME", "SAMPLER_CONFIG_NAME",
           "ADAPTER_PREFIX"]

ADAPTER_PREFIX = "adapters."  # adapter weights in model.safetensors: adapters.<modality>.<key>
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SAMPLER_CONFIG_NAME = "sampler_config.json"
README_NAME = "README.md"
CHECKPOINT_MARKERS = (CONFIG_NAME, WEIGHTS_NAME, "card.yaml")  # any of these: a folder is a checkpoint
CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".yaml", ".md", ".txt", ".model")  # files a checkpoint may hold
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

    def build(self, **overrides: Any) -> Sampler:
        """The sampler these defaults describe (fields its options do not have are dropped), with `overrides`.

        >>> SamplerConfig(sampler="dream", steps=8, gen_length=8).build().options.steps
        8
        """
        cls = SAMPLERS.get(self.sampler)
        defaults = {k: v for k, v in self.defaults().items() if k in cls.option_names()}
        return cls(**{**defaults, **overrides})

    @classmethod
    def from_sampler(cls, sampler: Sampler) -> SamplerConfig:
        """The `sampler_config.json` content of a sampler object: its options, the shared ones as named fields.

        >>> from mmdiff.sampling import LLaDASampler
        >>> SamplerConfig.from_sampler(LLaDASampler(steps=8, threshold=0.9)).options
        {'threshold': 0.9}
        """
        options = sampler.options.to_dict()
        named = {f.name: options.pop(f.name) for f in fields(cls) if f.name in options}
        base = sampler.Options()
        extra = {k: v for k, v in options.items() if v != getattr(base, k)}
        return cls(sampler=sampler.name, **named, options=extra)


class DiffusionModel(nn.Module):
    """A masked-diffusion model: core + vocabulary layout + tokenizer + sampler defaults.

    >>> from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout
    >>> model = DiffusionModel(ModelConfig(CoreConfig(VocabLayout.build(16), d_model=32, n_layers=1, n_heads=2)))
    >>> model.generate(torch.tensor([[1, 2, 3]]), gen_length=4, steps=4, block_length=4).shape
    torch.Size([1, 7])
    """

    card: ZooCard | None = None  # the zoo card `mmdiff.create_model` built it from (presets, chat template)
    checkpoint_folder: Path | None = None  # the folder `mmdiff.create_model` loaded it from

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
        chunk_size: int | None = None,
        attention_anneal: float | None = None,
    ) -> LossOutput:
        """The masked-diffusion loss on a canvas (see `mmdiff.diffusion.diffusion_loss`, `chunk_size` and
        `attention_anneal` included); the canvas's raw modality signals run through the adapters first."""
        self.core.check_ids(canvas.ids)
        canvas = self.embed_signals(canvas)
        return diffusion_loss(self.core, canvas, schedule, mask_id=self.vocab.mask_id, normalize=normalize,
                              complementary=complementary, t=t, generator=generator, chunk_size=chunk_size,
                              attention_anneal=attention_anneal)

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
        """The canvas with its raw modality signals (`canvas.signals`) turned into soft tokens by the adapters.

        A signal's key is its adapter's modality, optionally with a ":name" suffix for one more input of that modality
        (the VLA task's cameras: "vision:corner", "vision:wrist"); the soft tokens follow the signals' order."""
        if not canvas.signals:
            return canvas
        modality = {key: key.partition(":")[0] for key in canvas.signals}
        unknown = [m for m in canvas.signals if modality[m] not in self.adapters]
        if unknown:
            raise ValueError(f"the canvas carries {unknown} inputs but this model has adapters for "
                             f"{list(self.adapters) or 'no modality'}; use a model built with such an adapter")
        soft = [self.adapters[modality[m]].embed(signal) for m, signal in canvas.signals.items()]  # (B, N_m, d_model)
        embeds = torch.cat(soft, dim=1) if len(soft) > 1 else soft[0]
        if len(soft) == 1 and canvas.soft_positions is not None and canvas.soft_positions.shape[1] > embeds.shape[1]:
            # rows of a chunk of the batch: the adapter padded to the chunk's widest row, the canvas to the batch's;
            # spare slots come first (rows are right-aligned), so the missing columns are zeros on the left
            embeds = torch.nn.functional.pad(embeds, (0, 0, canvas.soft_positions.shape[1] - embeds.shape[1], 0))
        if canvas.soft_positions is None or canvas.soft_positions.shape != embeds.shape[:2]:
            got = None if canvas.soft_positions is None else tuple(canvas.soft_positions.shape)
            raise ValueError(f"the adapters give {tuple(embeds.shape[:2])} soft tokens (batch, count) but the canvas "
                             f"has soft_positions {got}; build the canvas with the task's collate / processor")
        return replace(canvas, soft_embeds=embeds, signals=None)

    # ------------------------------------------------------------------------------------------------ weights
    def weights(self) -> dict[str, Tensor]:
        """What `model.safetensors` holds: the core's state dict, then each adapter's under `adapters.<modality>.`
        (less the keys an adapter reads from its own pretrained source: `unsaved_prefixes`)."""
        state = dict(self.core.state_dict())
        skip = self._unsaved_adapter_prefixes()
        state.update({f"{ADAPTER_PREFIX}{k}": v for k, v in self.adapters.state_dict().items()
                      if not k.startswith(skip)})
        return state

    def _unsaved_adapter_prefixes(self) -> tuple[str, ...]:
        return tuple(f"{m}.{p}" for m, a in self.adapters.items() for p in a.unsaved_prefixes)

    def load_weights(self, state: dict[str, Tensor], *, source: str = "checkpoint") -> None:
        """Strictly loads what `weights()` gives (every key and shape must match)."""
        core = {k: v for k, v in state.items() if not k.startswith(ADAPTER_PREFIX)}
        adapters = {k.removeprefix(ADAPTER_PREFIX): v for k, v in state.items() if k.startswith(ADAPTER_PREFIX)}
        load_state_dict_strict(self.core, core, source=source)
        load_state_dict_strict(self.adapters, adapters, source=f"{source} (adapter weights)",
                               skip_prefixes=self._unsaved_adapter_prefixes())

    # ------------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, input_ids: Tensor | Canvas | Sequence[int] | Sequence[Sequence[int]],
                 attention_mask: Tensor | None = None, *, sampler: Sampler | str | None = None,
                 batch_size: int = 64, progress: bool = True, **overrides: Any) -> Tensor | SamplerOutput:
        """Samples answers after `input_ids` (B, P) with a sampler: a `Sampler` object, a name in
        `mmdiff.registry.SAMPLERS` (its options: the checkpoint's `sampler_config` defaults, overridden by keywords),
        or None (the checkpoint's sampler). A keyword that is neither an option nor a per-call input of the sampler
        is an error naming the ones it takes.

        A `Canvas` (a prompt built by a task: soft tokens, raw signals for the adapters, an attention kind) can stand
        for `input_ids`: its ids and padding mask are the prompt and the sampler runs a `CanvasCore` that places its
        soft tokens and applies its attention kind at every forward pass. A list of equal-length id lists (or one
        list: one row) is turned into a tensor.

        When `gen_length` is given and the checkpoint's `block_length` / `steps` (not given) do not fit it, they are
        derived: the largest block <= the default block that divides gen_length, steps scaled with gen_length to a
        multiple of the block count. Batches of more than `batch_size` rows run in chunks of `batch_size` (a progress
        bar unless `progress=False`); with `return_history=True` the chunks' outputs are concatenated and `nfe` is
        the forward passes of all chunks together.

        Returns:
            (B, P + gen_length): prompt then answer, on the model's device (inputs are moved there), or a
            `SamplerOutput` with `return_history=True`.

        >>> # model.generate(ids, mask, sampler="llada", steps=64, threshold=0.9)
        >>> # model.generate(ids, mask, sampler=LLaDASampler(steps=64, gen_length=64, block_length=32))
        """
        sampler, inputs = self._resolve_sampler(sampler, overrides)
        # inputs follow the model: a CPU prompt works with a model on the GPU (the output is on the model's device)
        device = self.device
        if not isinstance(input_ids, Canvas):
            input_ids = _as_id_tensor(input_ids).to(device)
        attention_mask = attention_mask.to(device) if attention_mask is not None else None
        inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.training
        self.eval()
        try:
            rows = input_ids.ids.shape[0] if isinstance(input_ids, Canvas) else input_ids.shape[0]
            if rows <= batch_size:
                return self._sample(sampler, input_ids, attention_mask, inputs)
            from tqdm import tqdm

            outs = [self._sample(sampler, *_rows((input_ids, attention_mask, inputs), rows, lo, lo + batch_size))
                    for lo in tqdm(range(0, rows, batch_size), desc="mmdiff generate", disable=not progress)]
            return _concat_outputs(outs)
        finally:
            self.train(was_training)

    def _sample(self, sampler: Sampler, input_ids: Tensor | Canvas, attention_mask: Tensor | None,
                inputs: dict[str, Any]) -> Tensor | SamplerOutput:
        """One batch through `sampler` (a Canvas becomes a `CanvasCore` and its ids)."""
        core: nn.Module = self.core
        if isinstance(input_ids, Canvas):
            if attention_mask is not None:
                raise TypeError("a Canvas carries its own attention mask; do not pass attention_mask with it")
            canvas = self.embed_signals(input_ids)
            core, input_ids, attention_mask = CanvasCore(self.core, canvas), canvas.ids, canvas.attention_mask
        return sampler(core, input_ids, attention_mask, mask_id=self.vocab.mask_id, eos_id=self.vocab.eos_id,
                       eot_id=self.vocab.get_id("eot"), **inputs)

    def _resolve_sampler(self, sampler: Sampler | str | None,
                         overrides: dict[str, Any]) -> tuple[Sampler, dict[str, Any]]:
        """(the sampler object, its per-call inputs) from `generate`'s `sampler` and keywords."""
        clash = [k for k in overrides if k in ("core", "input_ids", "mask_id", "eos_id", "eot_id")]
        if clash:
            raise TypeError(f"generate() sets {clash} itself; pass input_ids and attention_mask positionally")
        if isinstance(sampler, Sampler):
            cls, defaults = type(sampler), {}
        else:
            name = sampler if sampler is not None else self.sampler_config.sampler
            cls = SAMPLERS.get(name)
            if not (isinstance(cls, type) and issubclass(cls, Sampler)):
                raise TypeError(f"sampler {name!r} is registered as a {type(cls).__name__}; register a subclass of "
                                "mmdiff.sampling.Sampler (a name, an options dataclass and a call)")
            # checkpoint defaults the sampler does not take are dropped (a text default never reaches another sampler)
            defaults = {k: v for k, v in self.sampler_config.defaults().items() if k in cls.option_names()}
        unknown = [k for k in overrides if not cls.accepts(k)]
        if unknown:
            raise unknown_option_error(cls.name, unknown, cls.option_names() + cls.inputs)
        options = {k: v for k, v in overrides.items() if k in cls.option_names()}
        inputs = {k: v for k, v in overrides.items() if k not in options}
        if isinstance(sampler, Sampler):
            return (sampler.replace(**options) if options else sampler), inputs
        return cls(**_fit_to_length({**defaults, **options}, defaults, options)), inputs

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
        card = self.card
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
                        layout: str | None = None, overwrite: bool | None = None) -> Path:
        """Writes the checkpoint folder: mmdiff's layout, or with `layout` ("llada", "dream", "mmada") the original
        layout of that family (config.json + safetensors with its key names), so a converted checkpoint round-trips
        bit for bit.

        mmdiff's layout is written whole into a hidden folder beside `directory` and then swapped in, so an
        interrupted save leaves the previous checkpoint complete (never new config with old weights), and files of
        a previous checkpoint that this one does not write (another entry's `card.yaml`, tokenizer, README) are
        gone. Replacing an existing folder is logged.

        Args:
            directory: the checkpoint folder.
            card: the `README.md` model card; default: one generated from the config (`model_card`).
            layout: a foreign layout to write instead of mmdiff's.
            overwrite: None (default) replaces an existing folder only if it looks like a checkpoint (it holds
                `config.json`, `model.safetensors` or `card.yaml`, no subfolders, and only checkpoint-like files:
                .json, .safetensors, .yaml, .md, .txt, .model), and refuses anything else (a home or source folder);
                True replaces whatever is there; False refuses any existing non-empty folder.

        >>> import tempfile
        >>> from mmdiff import CoreConfig, VocabLayout
        >>> model = DiffusionModel(ModelConfig(CoreConfig(VocabLayout.build(16), d_model=32, n_layers=1, n_heads=2)))
        >>> folder = model.save_pretrained(Path(tempfile.mkdtemp()) / "ckpt")
        >>> sorted(p.name for p in folder.iterdir())
        ['README.md', 'config.json', 'model.safetensors', 'sampler_config.json']
        """
        if layout is not None:
            return _foreign_saver(layout)(self, directory)
        text = self.model_card() if card is None else card
        replace = _looks_like_checkpoint if overwrite is None else overwrite
        return write_folder(directory, lambda tmp: self._write_checkpoint(tmp, text), replace=replace,
                            what="checkpoint folder")

    def _write_checkpoint(self, folder: Path, card: str) -> None:
        """The files of a checkpoint folder, written into `folder` (empty)."""
        for modality, adapter in self.adapters.items():  # statistics fitted after building (action bins, ...) too
            self.config.adapters[modality] = adapter.config.to_dict()
        save_json(folder / CONFIG_NAME, self.config.to_dict())
        save_json(folder / SAMPLER_CONFIG_NAME, self.sampler_config.to_dict())
        save_safetensors(folder / WEIGHTS_NAME, self.weights(), metadata={"format": "pt", "mmdiff": "core"})
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))
        (folder / README_NAME).write_text(card)

    def model_card(self) -> str:
        """A `README.md` model card generated from the config: task, core shape, parameter count, vocabulary,
        sampler defaults and how to load the folder.

        >>> from mmdiff import CoreConfig, VocabLayout
        >>> model = DiffusionModel(ModelConfig(CoreConfig(VocabLayout.build(16), d_model=32, n_layers=1, n_heads=2)))
        >>> model.model_card().splitlines()[0]
        '# mmdiff model'
        """
        cfg, core = self.config, self.config.core
        n_params = sum(p.numel() for p in self.parameters())
        ranges = ", ".join(f"{k} [{a}, {b})" for k, (a, b) in core.vocab.ranges.items())
        special = ", ".join(f"{k}={v}" for k, v in core.vocab.special.items())
        sampler = ", ".join(f"{k}={v!r}" for k, v in self.sampler_config.to_dict().items())
        rows = [("task", cfg.task), ("architecture", cfg.architecture), ("parameters", f"{n_params:,}"),
                ("core", f"d_model={core.d_model}, n_layers={core.n_layers}, n_heads={core.n_heads}, "
                         f"n_kv_heads={core.n_kv_heads}, max_seq_len={core.max_seq_len}"),
                ("vocabulary", f"{core.vocab_size} ids: {ranges}; special {special}"),
                ("adapters", ", ".join(cfg.adapters) or "none"), ("sampler defaults", sampler),
                ("tokenizer", "tokenizer.json" if self.tokenizer is not None else "none")]
        lines = [f"# {cfg.name or 'mmdiff model'}", "", "A masked-diffusion checkpoint written by mmdiff.", "",
                 "| field | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "", "## Use", "",
                 "```python", "import mmdiff", "", 'model = mmdiff.DiffusionModel.from_pretrained("<this folder>")',
                 "```", ""]
        return "\n".join(lines)

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
            aside = interrupted_folder(directory)
            hint = (f" (an interrupted save set the previous checkpoint aside as {aside}: rename it back to "
                    f"{directory.name}, or save again)" if aside else "")
            raise FileNotFoundError(f"checkpoint folder {directory} not found{hint}")
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


def _looks_like_checkpoint(folder: Path) -> bool:
    """True if `folder` holds a checkpoint marker and nothing a checkpoint would not (no subfolder, no source file):
    what `save_pretrained` replaces without `overwrite=True`."""
    entries = list(folder.iterdir())
    names = {p.name for p in entries}
    only_files = all(p.is_file() and p.suffix in CHECKPOINT_SUFFIXES for p in entries)
    if any(m in names for m in CHECKPOINT_MARKERS) and only_files:
        return True
    others = sorted(p.name for p in entries if not (p.is_file() and p.suffix in CHECKPOINT_SUFFIXES))
    found = f"it holds {others[:5]}" if others else f"it holds none of {list(CHECKPOINT_MARKERS)}"
    raise FileExistsError(f"{folder} does not look like a checkpoint folder ({found}); refusing to replace it. "
                          "Save into a new or empty folder, or pass overwrite=True to replace it whole")


def _fit_to_length(options: dict[str, Any], defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Options whose `block_length` / `steps` came from the checkpoint's defaults, derived again when `gen_length`
    is given and they do not fit it: the largest block <= the default that divides gen_length, and steps scaled by
    gen_length / default gen_length to a multiple of the block count (explicitly given ones are left alone).

    >>> _fit_to_length({"gen_length": 96, "steps": 128, "block_length": 128},
    ...                {"gen_length": 128, "steps": 128, "block_length": 128}, {"gen_length": 96})
    {'gen_length': 96, 'steps': 96, 'block_length': 96}
    """
    G = options.get("gen_length")
    if "gen_length" not in given or not isinstance(G, int) or G < 1 or options.get("infill"):
        return options
    block, steps = options.get("block_length"), options.get("steps")
    adapted = dict(options)
    if "block_length" not in given and isinstance(block, int) and block >= 1 and G % block:
        block = min(block, G)
        while G % block:
            block -= 1
        adapted["block_length"] = block
    n_blocks = G // adapted["block_length"] if isinstance(adapted.get("block_length"), int) else 1
    if "steps" not in given and isinstance(steps, int) and (adapted != options or steps % n_blocks):
        scaled = steps * G / defaults["gen_length"] if defaults.get("gen_length") else steps
        adapted["steps"] = max(n_blocks, round(scaled / n_blocks) * n_blocks)
    return adapted


def _as_id_tensor(input_ids: Any) -> Tensor:
    """`generate`'s ids as a (B, P) long tensor: a tensor of integers as it is, a list of equal-length id lists or one
    list of ids (one row) converted; float tensors and ragged lists are errors naming the fix."""
    if isinstance(input_ids, Tensor):
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must hold integer token ids, got a {input_ids.dtype} tensor; pass "
                            "ids.long() if they are ids")
        return input_ids
    if not isinstance(input_ids, Sequence) or isinstance(input_ids, (str, bytes)):
        raise TypeError(f"input_ids must be a (batch, prompt_length) tensor of token ids, a list of id lists or a "
                        f"Canvas, got {type(input_ids).__name__}; encode text with model.encode first")
    rows = [input_ids] if len(input_ids) == 0 or not isinstance(input_ids[0], (Sequence, Tensor)) else input_ids
    rows = [r.tolist() if isinstance(r, Tensor) else list(r) for r in rows]
    if any(isinstance(i, (bool, float)) or not isinstance(i, int) for r in rows for i in r):
        raise TypeError("input_ids lists must hold integer token ids")
    lengths = sorted({len(r) for r in rows})
    if len(lengths) > 1:
        raise ValueError(f"input_ids rows have different lengths {lengths}; left-pad them to one length with "
                         "mmdiff.tasks.left_pad (which also gives the attention_mask)")
    return torch.tensor(rows, dtype=torch.long)


def _rows(batch: tuple[Tensor | Canvas, Tensor | None, dict[str, Any]], n: int, lo: int,
          hi: int) -> tuple[Tensor | Canvas, Tensor | None, dict[str, Any]]:
    """Rows [lo, hi) of `generate`'s (ids or Canvas, attention mask, per-call inputs): every tensor whose first
    dimension is the batch is sliced (a Canvas's fields, its signals included)."""

    def cut(value: Any, per_row_lists: bool = False) -> Any:
        if isinstance(value, Tensor) and value.dim() and value.shape[0] == n:
            return value[lo:hi]
        if per_row_lists and isinstance(value, (list, tuple)) and len(value) == n:  # a signal given item by item
            return value[lo:hi]
        if isinstance(value, dict):
            return {k: cut(v, per_row_lists) for k, v in value.items()}
        if isinstance(value, Canvas):
            return replace(value, **{f.name: cut(getattr(value, f.name), f.name == "signals") for f in fields(value)})
        return value

    ids, mask, inputs = batch
    return cut(ids), cut(mask), cut(inputs)


def _concat_outputs(outs: list[Tensor | SamplerOutput]) -> Tensor | SamplerOutput:
    """The chunks' outputs as one: sequences (and commit steps) concatenated by rows, NFE summed."""
    if isinstance(outs[0], SamplerOutput):
        return SamplerOutput(sequences=torch.cat([o.sequences for o in outs]),
                             commit_step=torch.cat([o.commit_step for o in outs]), nfe=sum(o.nfe for o in outs))
    return torch.cat(outs)


def _is_one_text(x: Any) -> bool:
    """True for one text (a string, a 1-D tensor or a list of ids), False for a batch of them."""
    if isinstance(x, str):
        return True
    if isinstance(x, Tensor):
        return x.dim() == 1
    return len(x) > 0 and not isinstance(x[0], (str, Sequence)) and not (isinstance(x[0], Tensor) and x[0].dim())


def _foreign_saver(layout: str) -> Any:
    """The `save(model, folder)` of the converter registered as `layout` in `CONVERTERS` (a lookup by name: the
    converters sit above the model and register themselves when `mmdiff` is imported).

    Raises:
        KeyError: no converter of that name (the message lists the registered ones).
        TypeError: the converter only loads.
    """
    if layout not in CONVERTERS:
        raise KeyError(f"{CONVERTERS.unknown_message(layout)}; the foreign layouts register when mmdiff.convert is "
                       "imported (`import mmdiff` does it)")
    save = getattr(CONVERTERS.get(layout), "save", None)
    if not callable(save):
        raise TypeError(f"converter {layout!r} is a plain loader and cannot export")
    return save


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The tokenizer saved in a checkpoint folder (tokenizer files only, never remote code), or None."""
    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    load_json(path)  # a corrupt file gets an error that names it, not the tokenizers library's bare one
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (directory / name).is_file():
            load_json(directory / name)
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast.from_pretrained(str(directory))
    except Exception as err:  # valid JSON the tokenizers library cannot read (a wrong or truncated model)
        raise ValueError(f"{path} could not be loaded as a tokenizer ({type(err).__name__}: {err}); replace it with "
                         "the tokenizer.json of this checkpoint (save_pretrained writes it)") from err
