"""The continuous modality-adapter interface and the factory that builds adapters by name.

A continuous adapter is an encoder + projector that turns raw signals (images, audio, robot state) into soft tokens
of the core's width, placed into the canvas (the early-fusion design of LLaVA, Liu et al., 2023, and of the
multimodal masked-diffusion models LaViDa, LLaDA-V and MMaDA). Adapters are found in `mmdiff.registry.ADAPTERS`
under "modality/name" keys ("vision/timm", "audio/whisper", "state/mlp", ...); each one is described by a
small config dataclass that serialises to a plain dict carrying its registry key, so a checkpoint's `config.json`
rebuilds it:

>>> from mmdiff.adapters import build_adapter
>>> adapter = build_adapter("vision/timm", model_name="resnet10t", d_model=32, feature_layer=-2)
>>> config = adapter.config.to_dict()
>>> config["adapter"], config["d_model"]
('vision/timm', 32)
>>> rebuilt = build_adapter(config)
>>> rebuilt.num_tokens() == adapter.num_tokens()
True
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmdiff.dataclass_io import from_dict, to_dict
from mmdiff.registry import ADAPTERS

__all__ = [
    "AdapterConfig",
    "ContinuousAdapter",
    "DiscreteAdapter",
    "build_adapter",
    "adapter_config_from_dict",
    "register_adapter",
    "check_finite_inputs",
]


class AdapterConfig:
    """Mixin for adapter config dataclasses: the registry key and a strict dict form that carries it.

    A subclass is a `@dataclass` with a `d_model: int` field and sets two class variables: `modality` ("vision")
    and `name_field`, the field holding the second half of the registry key ("tower" for vision: "timm",
    "open_clip", ...). The dict form is `{"adapter": "<modality>/<name>", <every other field>...}`; unknown or
    missing fields are errors that name them (`mmdiff.dataclass_io`).
    """

    modality: ClassVar[str] = ""
    name_field: ClassVar[str] = ""

    @property
    def key(self) -> str:
        """The registry key, e.g. "vision/timm"."""
        return f"{self.modality}/{getattr(self, self.name_field)}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-container form for config.json: {"adapter": key, ...fields except the name field}."""
        fields = {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        fields.pop(self.name_field)
        return {"adapter": self.key, **fields}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        """Inverse of `to_dict`: strict (unknown or missing fields raise, naming them)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"an adapter config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        key = data.pop("adapter", None)
        if not isinstance(key, str) or "/" not in key:
            raise ValueError(
                f"adapter config needs an 'adapter' entry 'modality/name' (e.g. '{cls.modality}/...'), got {key!r}"
            )
        modality, name = key.split("/", 1)
        if modality != cls.modality:
            raise ValueError(f"{cls.__name__} describes {cls.modality!r} adapters, got adapter key {key!r}")
        if cls.name_field in data and data[cls.name_field] != name:
            raise ValueError(f"adapter key {key!r} disagrees with {cls.name_field}={data[cls.name_field]!r}")
        data[cls.name_field] = name
        return from_dict(cls, data, where=f"adapter config {key!r}")


class _Adapter(nn.Module, abc.ABC):
    """What every modality adapter shares: its config dataclass (type-checked) and the registry key it names."""

    config_class: ClassVar[type] = AdapterConfig
    trains_with_core: ClassVar[bool] = True  # False: the diffusion loss never reaches it (a discrete tokenizer)

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    @property
    def key(self) -> str:
        """The registry key this adapter was built from, e.g. "vision/timm"."""
        return self.config.key

    @property
    def unsaved_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes a checkpoint leaves out, because the adapter reads those weights again from its
        own pretrained source whenever it is built (a frozen tower such as Whisper's encoder); default none."""
        return ()

    def check_fits(self, core_config: Any) -> None:
        """Raises a ValueError naming the fix when this adapter cannot serve a core of `core_config`."""


class ContinuousAdapter(_Adapter):
    """Encoder + projector: raw signals -> (B, N, d_model) soft tokens for the canvas.

    Subclasses set `modality` and `config_class`, take `(config, *, load_pretrained=None)` in `__init__` (the
    factory passes it; adapters without pretrained encoders ignore it), and implement `preprocess`, `forward` and
    `num_tokens`. `encode` chains preprocessing and the forward pass.

    Attributes:
        config: the adapter's config dataclass (an `AdapterConfig`); `config.to_dict()` is what a checkpoint saves.
    """

    modality: ClassVar[str] = ""
    config_class: ClassVar[type] = AdapterConfig

    @property
    def d_model(self) -> int:
        """Width of the soft tokens (the core's d_model)."""
        return self.config.d_model  # type: ignore[attr-defined]

    @abc.abstractmethod
    def preprocess(self, raw: Any) -> Tensor:
        """Raw inputs (one or a list) -> the batched tensor `forward` takes, on the CPU."""

    @abc.abstractmethod
    def forward(self, inputs: Tensor) -> Tensor:
        """Preprocessed inputs (B, ...) -> soft tokens (B, N, d_model)."""

    @abc.abstractmethod
    def num_tokens(self, input_shape: Sequence[int] | None = None) -> int:
        """Soft tokens one input yields, for canvas layout.

        Args:
            input_shape: shape of one preprocessed input (what `preprocess` gives per item); None = the default
                input shape of this adapter.
        """

    # --- the canvas seam: a task asks how many tokens each input needs and hands the inputs over as a signal;
    # `DiffusionModel.embed_signals` turns the signal into soft tokens (the encoder runs here, never in a task)
    def prepare(self, raw: Sequence[Any]) -> tuple[Any, list[int]]:
        """Raw inputs of a batch -> (the canvas signal `embed` reads, the soft tokens each input needs).

        The default preprocesses the batch into one tensor of `num_tokens()` tokens per input; adapters whose token
        count depends on the input (anyres tiling) override it. NaN or infinite inputs are an error.
        """
        check_finite_inputs(raw, self.key)
        signal = self.preprocess(list(raw))
        check_finite_inputs([signal], self.key)
        return signal, [self.num_tokens()] * len(raw)

    def embed(self, signal: Any) -> Tensor:
        """A canvas signal (what `prepare` gave) -> (B, N, d_model) soft tokens, N the batch's largest count; a row
        of fewer tokens is left-padded with zeros (its spare slots come first on the canvas)."""
        param = next(self.parameters(), None)
        if isinstance(signal, Tensor) and param is not None:
            signal = signal.to(param.device)
        return self(signal)

    def encode(self, raw: Any) -> Tensor:
        """`forward(preprocess(raw))`, moving the inputs to the adapter's device."""
        inputs = self.preprocess(raw)
        param = next(self.parameters(), None)
        if param is not None:
            inputs = inputs.to(param.device)
        return self(inputs)

    def check_d_model(self, d_model: int) -> None:
        """Raises a ValueError naming both widths and the fix when the soft tokens do not fit a core of `d_model`."""
        from mmdiff.adapters.projectors import check_projector_width

        check_projector_width(self.d_model, d_model, what=f"{self.key} adapter")

    def check_fits(self, core_config: Any) -> None:
        self.check_d_model(core_config.d_model)

    def extra_repr(self) -> str:
        return f"key={self.key!r}, d_model={self.d_model}"


class DiscreteAdapter(_Adapter):
    """A tokenizer for a discrete modality: signals -> integer code grids -> signals, owning one vocabulary range.

    Image tokenizers (VQ-VAE, van den Oord et al., 2017; VQGAN, Esser et al., 2021; MAGVIT-v2 LFQ, Yu et al.,
    2023) map pixels (B, C, H, W) to codes (B, h, w) in `[0, codebook_size)` with h = H / downsample; the codes live
    in the shared vocabulary as `vocab.range(vocab_range)[0] + code` (`to_vocab_ids` / `from_vocab_ids`), never at
    hard-coded ids. Subclasses set `modality` and `config_class`, take `(config, *, load_pretrained=None)` in
    `__init__`, and implement `codebook_size`, `downsample`, `preprocess`, `_encode`, `_decode` and
    `postprocess`; `encode` / `decode` add the size and code-range checks.

    Attributes:
        config: the adapter's config dataclass (an `AdapterConfig`); `config.to_dict()` is what a checkpoint saves.
    """

    modality: ClassVar[str] = "image"
    config_class: ClassVar[type] = AdapterConfig
    trains_with_core: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def codebook_size(self) -> int:
        """Number of distinct codes; codes are in `[0, codebook_size)`."""

    @property
    @abc.abstractmethod
    def downsample(self) -> int:
        """Pixels per code along each side (the encoder's total stride)."""

    @property
    def vocab_range(self) -> str:
        """Name of the `VocabLayout` range the codes occupy (default: the modality, "image")."""
        return getattr(self.config, "vocab_range", self.modality)

    @abc.abstractmethod
    def preprocess(self, raw: Any) -> Tensor:
        """Raw inputs (one or a list of PIL images / arrays / tensors) -> (B, C, H, W) float pixels, on the CPU."""

    @abc.abstractmethod
    def postprocess(self, pixels: Tensor) -> list:
        """Decoded pixels (B, C, H, W), in the value range of `preprocess` -> a list of B PIL images."""

    @abc.abstractmethod
    def _encode(self, pixels: Tensor) -> Tensor:
        """Checked pixels (B, C, H, W) -> codes (B, H / downsample, W / downsample) int64."""

    @abc.abstractmethod
    def _decode(self, codes: Tensor) -> Tensor:
        """Checked codes (B, h, w) int64 -> pixels (B, C, h * downsample, w * downsample)."""

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The code grid (h, w) of an image of `height` x `width` pixels.

        Raises:
            ValueError: a side is not a positive multiple of `downsample`; names the nearest valid sizes.
        """
        d = self.downsample
        for side, value in (("height", height), ("width", width)):
            if value <= 0 or value % d:
                below, above = (value // d) * d, (value // d + 1) * d
                nearest = f"{below} or {above}" if below > 0 else f"{above}"
                raise ValueError(
                    f"image {side} {value} is not divisible by the {self.key} tokenizer's downsampling factor {d}; "
                    f"resize or crop the image to a multiple of {d} (nearest valid {side}: {nearest})"
                )
        return height // d, width // d

    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        """Pixels (B, C, H, W) (from `preprocess`) -> codes (B, h, w) int64 in `[0, codebook_size)`."""
        if not isinstance(pixels, Tensor) or pixels.dim() != 4:
            shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
            raise ValueError(f"encode takes a (B, C, H, W) pixel tensor, got {shape}; call `preprocess` first")
        self.grid_size(pixels.shape[-2], pixels.shape[-1])
        param = next(self.parameters(), None)
        if param is not None:
            pixels = pixels.to(device=param.device, dtype=param.dtype)
        return self._encode(pixels).long()

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) -> pixels (B, C, h * downsample, w * downsample) in the range `preprocess` gives.

        Raises:
            ValueError: codes outside `[0, codebook_size)` (e.g. vocabulary ids not mapped back with
                `from_vocab_ids`), or not a (B, h, w) integer tensor.
        """
        if not isinstance(codes, Tensor) or codes.dim() != 3 or codes.is_floating_point():
            shape = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
            raise ValueError(f"decode takes a (B, h, w) integer code tensor, got {shape}")
        self.check_codes(codes)
        param = next(self.parameters(), None)
        return self._decode(codes.long().to(param.device if param is not None else codes.device))

    def check_codes(self, codes: Tensor) -> None:
        """Raises a ValueError naming the bad values and the fix when a code lies outside `[0, codebook_size)`."""
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"image codes must lie in [0, {self.codebook_size}) for the {self.key} tokenizer, got values in "
                f"[{int(codes.min())}, {int(codes.max())}]; map vocabulary ids back with `from_vocab_ids(ids, vocab)`"
            )

    def check_fits(self, core_config: Any) -> None:
        """The core's vocabulary must hold this tokenizer's range with one id per code."""
        self._range(core_config.vocab)

    def to_vocab_ids(self, codes: Tensor, vocab: Any) -> Tensor:
        """Codes -> ids of the shared vocabulary: `vocab.range(self.vocab_range)[0] + code`.

        Raises:
            ValueError: the vocabulary's range is smaller than the codebook, or a code is out of range.
        """
        start, stop = self._range(vocab)
        self.check_codes(codes)
        return codes.long() + start

    def from_vocab_ids(self, ids: Tensor, vocab: Any) -> Tensor:
        """Ids of the shared vocabulary -> codes in `[0, codebook_size)` (the inverse of `to_vocab_ids`).

        Raises:
            ValueError: an id outside the vocabulary's image range (a text, special or mask id), naming the range.
        """
        start, stop = self._range(vocab)
        ids = torch.as_tensor(ids).long()
        outside = (ids < start) | (ids >= stop)
        if bool(outside.any()):
            bad = sorted({int(v) for v in ids[outside].flatten()[:8]})
            raise ValueError(
                f"ids {bad} lie outside the {self.vocab_range!r} range [{start}, {stop}) of the vocabulary; only "
                f"{self.vocab_range} ids can be decoded: replace mask / special / text ids (e.g. finish sampling) "
                "before decoding"
            )
        return ids - start

    def _range(self, vocab: Any) -> tuple[int, int]:
        start, stop = vocab.range(self.vocab_range)
        if stop - start != self.codebook_size:
            raise ValueError(
                f"the vocabulary's {self.vocab_range!r} range [{start}, {stop}) holds {stop - start} ids but the "
                f"{self.key} tokenizer has {self.codebook_size} codes; build the layout with "
                f"ranges={{{self.vocab_range!r}: {self.codebook_size}}}"
            )
        return start, stop

    def extra_repr(self) -> str:
        return f"key={self.key!r}, codebook_size={self.codebook_size}, downsample={self.downsample}"


def check_finite_inputs(raw: Sequence[Any], what: str = "adapter") -> None:
    """Raises a ValueError naming the fix when a float array or tensor among `raw` holds NaN or infinite values
    (image loaders would otherwise read NaN as black and answer anyway)."""
    for i, item in enumerate(raw):
        values = item
        if not isinstance(values, Tensor):
            if not (hasattr(values, "dtype") and hasattr(values, "shape")):
                continue  # paths, PIL images, bytes: finite by construction
            try:
                values = torch.as_tensor(values)
            except (TypeError, ValueError, RuntimeError):
                continue
        if values.is_floating_point() and not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise ValueError(f"input {i} of the {what} holds {bad} NaN or infinite values; give finite values (e.g. "
                             "uint8 pixels, or floats in [0, 1])")


def register_adapter(key: str, *, override: bool = False, **meta: Any):
    """Class decorator: registers a `ContinuousAdapter` or `DiscreteAdapter` subclass under "modality/name".

    >>> from mmdiff.adapters.base import register_adapter
    >>> callable(register_adapter("vision/my_tower"))
    True
    """
    if not isinstance(key, str) or key.count("/") != 1 or not all(key.split("/")):
        raise ValueError(f"adapter keys are 'modality/name' (e.g. 'vision/timm'), got {key!r}")

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, (ContinuousAdapter, DiscreteAdapter))):
            raise TypeError(f"register_adapter takes a ContinuousAdapter or DiscreteAdapter subclass, got {cls!r}")
        kind = "discrete" if issubclass(cls, DiscreteAdapter) else "continuous"
        ADAPTERS.add(key, cls, override=override, kind=kind, **meta)
        return cls

    return decorator


def adapter_config_from_dict(data: Mapping[str, Any]) -> AdapterConfig:
    """Rebuilds an adapter config from its dict form (the "adapter" entry picks the config class).

    >>> cfg = adapter_config_from_dict({"adapter": "vision/timm", "model_name": "resnet10t", "d_model": 8})
    >>> cfg.tower, cfg.projector
    ('timm', 'mlp2x_gelu')
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"an adapter config must be a mapping, got {type(data).__name__}")
    key = data.get("adapter")
    if not isinstance(key, str):
        raise ValueError(f"adapter config needs an 'adapter' entry naming its registry key; known: {_known()}")
    return ADAPTERS.get(key).config_class.from_dict(data)


def build_adapter(
    spec: str | Mapping[str, Any] | AdapterConfig,
    *,
    load_pretrained: bool | None = None,
    **fields: Any,
) -> ContinuousAdapter | DiscreteAdapter:
    """Builds a modality adapter from a registry key + fields, a config dict, or a config dataclass.

    Args:
        spec: "modality/name" (then `fields` are the config fields), the dict form saved in a checkpoint
            (`config.to_dict()`), or a config dataclass.
        load_pretrained: None follows the config's `pretrained` flag; False builds the encoder with random
            weights (use it when the weights come from a checkpoint's state dict, so nothing is downloaded);
            True loads pretrained weights. The config itself is kept unchanged.
        **fields: config fields, only with a key string.

    >>> adapter = build_adapter("vision/timm", model_name="resnet10t", d_model=16, projector="linear")
    >>> adapter.key, adapter.d_model
    ('vision/timm', 16)
    """
    if isinstance(spec, str):
        if spec not in ADAPTERS:
            raise KeyError(ADAPTERS.unknown_message(spec))
        config = ADAPTERS.get(spec).config_class.from_dict({"adapter": spec, **fields})
    else:
        if fields:
            raise TypeError(f"config fields {sorted(fields)} can only be given with a registry key string")
        config = adapter_config_from_dict(spec) if isinstance(spec, Mapping) else spec
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"build_adapter takes a key, a config dict or an adapter config, got {type(spec).__name__}")
    cls = ADAPTERS.get(config.key)
    return cls(config, load_pretrained=load_pretrained)


def _known() -> str:
    return ", ".join(ADAPTERS.list()) or "(none registered)"
