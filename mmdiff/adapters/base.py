"""The continuous modality-adapter interface and the factory that builds adapters by name.

A continuous adapter is an encoder + projector that turns raw signals (images, audio, robot state) into soft tokens
of the core's width, placed into the canvas (the early-fusion design of LLaVA, Liu et al., 2023, and of the
multimodal masked-diffusion models LaViDa, LLaDA-V and MMaDA). Adapters are found in `mmdiff.registry.ADAPTERS`
under "modality/name" keys ("vision/timm", "audio/whisper", "action/proprio", ...); each one is described by a
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

from torch import Tensor, nn

from mmdiff.dataclass_io import from_dict, to_dict
from mmdiff.registry import ADAPTERS

__all__ = [
    "AdapterConfig",
    "ContinuousAdapter",
    "build_adapter",
    "adapter_config_from_dict",
    "register_adapter",
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


class ContinuousAdapter(nn.Module, abc.ABC):
    """Encoder + projector: raw signals -> (B, N, d_model) soft tokens for the canvas.

    Subclasses set `modality` and `config_class`, take `(config, *, load_pretrained=None)` in `__init__` (the
    factory passes it; adapters without pretrained encoders ignore it), and implement `preprocess`, `forward` and
    `num_tokens`. `encode` chains preprocessing and the forward pass.

    Attributes:
        config: the adapter's config dataclass (an `AdapterConfig`); `config.to_dict()` is what a checkpoint saves.
    """

    modality: ClassVar[str] = ""
    config_class: ClassVar[type] = AdapterConfig

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    @property
    def d_model(self) -> int:
        """Width of the soft tokens (the core's d_model)."""
        return self.config.d_model  # type: ignore[attr-defined]

    @property
    def key(self) -> str:
        """The registry key this adapter was built from, e.g. "vision/timm"."""
        return self.config.key

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

    def extra_repr(self) -> str:
        return f"key={self.key!r}, d_model={self.d_model}"


def register_adapter(key: str, *, override: bool = False, **meta: Any):
    """Class decorator: registers a `ContinuousAdapter` subclass in `ADAPTERS` under "modality/name".

    >>> from mmdiff.adapters.base import register_adapter
    >>> callable(register_adapter("vision/my_tower"))
    True
    """
    if not isinstance(key, str) or key.count("/") != 1 or not all(key.split("/")):
        raise ValueError(f"adapter keys are 'modality/name' (e.g. 'vision/timm'), got {key!r}")

    def decorator(cls: type) -> type:
        ADAPTERS.add(key, cls, override=override, kind="continuous", **meta)
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
) -> ContinuousAdapter:
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
