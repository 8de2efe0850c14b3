"""The sampler contract (after diffusers' schedulers and Dream's `GenerationConfig`): a sampler is an object built
from a typed, validated options dataclass and called on a core and a batch of prompts.

- `SamplerOptions`: the JSON-able settings of one sampler (steps, temperature, ...), one dataclass field each,
  validated once when built: ranges, choices, and NaN / inf rejected for every float option by name.
- `Sampler`: `name` (its key in `mmdiff.registry.SAMPLERS`), `Options` (its options class) and `inputs` (per-call
  keyword inputs that are not settings: tensors, callables, id ranges); `.options`, `.replace(**overrides)`,
  `to_dict()` / `from_dict()` for `sampler_config.json`, and one call:
  `sampler(core, input_ids, attention_mask=None, *, mask_id, eos_id=None, eot_id=None, generator=None,
  return_history=False, **inputs)`.

>>> from mmdiff.sampling import LLaDASampler
>>> s = LLaDASampler(steps=64, gen_length=64, threshold=0.9)
>>> s.replace(steps=32).options.steps, s.options.threshold
(32, 0.9)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmdiff.sampling.output import SamplerOutput

__all__ = ["Sampler", "SamplerOptions", "option", "check_choice", "check_range", "unknown_option_error",
           "attention_mismatch"]


def option(default: Any, text: str) -> Any:
    """A `SamplerOptions` field with its default and the help text the CLI and docs show."""
    return dataclasses.field(default=default, metadata={"help": text})


def check_range(name: str, value: float | None, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raises a ValueError naming `name` unless `value` is None or a finite number inside [low, high] (open ends
    where asked).

    >>> check_range("top_p", 0.5, 0, 1, low_open=True)
    >>> check_range("temperature", float("nan"), 0)
    Traceback (most recent call last):
    ...
    ValueError: temperature must be a finite number >= 0, got nan
    """
    if value is None:
        return
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    need = f"a finite number {' and '.join(parts)}".rstrip()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {need}, got {value!r}")
    bad = not math.isfinite(value)
    bad = bad or (low is not None and (value <= low if low_open else value < low))
    bad = bad or (high is not None and (value >= high if high_open else value > high))
    if bad:
        raise ValueError(f"{name} must be {need}, got {value!r}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raises a ValueError naming `name` and its choices unless `value` is one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def attention_mismatch(sampler: str, attention: str, block_size: int | None) -> str:
    """The error of a sampler asked to decode a core built with an attention it does not take."""
    if attention == "block_causal":
        return (f"sampler {sampler!r} decodes cores with full attention, but this core is block-causal (block "
                f"diffusion, block_size={block_size}): decode it with sampler='block-diffusion' (an exact block "
                "key/value cache)")
    return (f"sampler {sampler!r} needs a block-causal core (CoreConfig(attention='block_causal', block_size=...), "
            f"trained with objective.block_diffusion: true), but this core has {attention!r} attention: decode it "
            "with sampler='llada' (cache='dual' or 'delayed' for speed)")


def unknown_option_error(name: str, unknown: Sequence[str], accepted: Sequence[str]) -> TypeError:
    """The error for keywords a sampler does not take (the same words `generate` has always used)."""
    return TypeError(f"sampler {name!r} does not take {list(unknown)}; it accepts: {', '.join(accepted)}")


@dataclass(frozen=True)
class SamplerOptions:
    """Base of every sampler's options: frozen, validated on construction (`_check`), every float option finite."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        self._check()

    def _check(self) -> None:
        """Ranges and choices of the subclass's fields (raise ValueError naming the field)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class Sampler:
    """A sampler: options (`Options`, validated once) and one call that decodes a batch.

    Subclasses set `name`, `Options`, `inputs` and implement `_sample`. Build one from keywords
    (`LLaDASampler(steps=64)`), from an options object (`LLaDASampler(LLaDAOptions(steps=64))`) or from a
    `sampler_config.json` dict (`Sampler.from_dict`).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[SamplerOptions]] = SamplerOptions
    inputs: ClassVar[tuple[str, ...]] = ()  # per-call keyword inputs that are not settings
    takes_eos: ClassVar[bool] = False  # whether the call uses eos_id / eot_id
    core_attention: ClassVar[tuple[str, ...]] = ("full",)  # the core attention (`CoreConfig.attention`) it decodes

    def __init__(self, options: SamplerOptions | None = None, /, **overrides: Any) -> None:
        if options is not None and not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} takes a {self.Options.__name__}, got {type(options).__name__}")
        unknown = [k for k in overrides if k not in self.option_names()]
        if unknown:
            raise unknown_option_error(self.name, unknown, self.option_names() + self.inputs)
        if options is None:
            options = self.Options(**overrides)
        elif overrides:
            options = dataclasses.replace(options, **overrides)
        self.options = options

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The names of this sampler's options (its `Options` fields)."""
        return tuple(f.name for f in dataclasses.fields(cls.Options))

    @classmethod
    def accepts(cls, key: str) -> bool:
        """Whether `key` is an option or a per-call input of this sampler (or one of the call's own keywords)."""
        return key in cls.option_names() or key in cls.inputs or key in ("generator", "return_history")

    def replace(self, **overrides: Any) -> Sampler:
        """A new sampler of the same kind with some options changed (validated again)."""
        return type(self)(self.options, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """{"sampler": name, **options}: JSON-able."""
        return {"sampler": self.name, **self.options.to_dict()}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Sampler:
        """The sampler a dict describes: {"sampler": name, **options} (or the `SamplerConfig` layout of
        `sampler_config.json`, whose `options` hold the further settings).

        >>> Sampler.from_dict({"sampler": "dream", "steps": 8, "gen_length": 8}).options.steps
        8
        """
        from mmdiff.registry import SAMPLERS

        data = dict(data)
        name = data.pop("sampler", "llada")
        data.update(data.pop("options", None) or {})
        return SAMPLERS.get(name)(**data)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.options == self.options  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.options))

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.options.to_dict().items() if v != getattr(self.Options(), k)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    @torch.no_grad()
    def __call__(self, core: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, *, mask_id: int,
                 eos_id: int | None = None, eot_id: int | None = None, generator: torch.Generator | None = None,
                 return_history: bool = False, **inputs: Any) -> Tensor | SamplerOutput:
        """Decodes `input_ids` (B, P) (left-padded, `attention_mask` True at real tokens) with `core`.

        Returns:
            (B, P + gen_length) prompt then answer, or a `SamplerOutput` with `return_history=True`.
        """
        unknown = [k for k in inputs if k not in self.inputs]
        if unknown:
            raise unknown_option_error(self.name, unknown, self.option_names() + self.inputs)
        config = getattr(core, "config", None)
        attention = getattr(config, "attention", "full")
        if attention not in self.core_attention:
            raise ValueError(attention_mismatch(self.name, attention, getattr(config, "block_size", None)))
        return self._sample(core, input_ids, attention_mask, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id,
                            generator=generator, return_history=return_history, **inputs)

    def _sample(self, core: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, *, mask_id: int,
                eos_id: int | None, eot_id: int | None, generator: torch.Generator | None, return_history: bool,
                **inputs: Any) -> Tensor | SamplerOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement _sample")
