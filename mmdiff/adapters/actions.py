"""Robot action and proprio-state adapters: bin and FAST tokenizers for action chunks, and the state adapters.

Implements the action tokenisations of vision-language-action models:

- "action/bins": per-dimension uniform binning of OpenVLA (Kim et al., 2024, "OpenVLA: An Open-Source
  Vision-Language-Action Model", `prismatic/vla/action_tokenizer.py`): actions are normalised to [-1, 1] with the
  1st / 99th percentiles of the training data (OpenVLA's `BOUNDS_Q99`), dimensions left out by the `normalize` mask
  (a gripper already in [-1, 1]) pass through, then each value falls into one of `num_bins` equal bins and decodes
  to its bin centre. Chunks of H future steps (Discrete Diffusion VLA, Liang et al., 2025; OpenVLA-OFT, Kim et al.,
  2025) flatten time-major: (B, H, D) -> (B, H * D) codes, step 0's D values first.
- "action/fast": FAST (Pertsch et al., 2025, "FAST: Efficient Action Tokenization for Vision-Language-Action
  Models"): an orthonormal DCT-II of each normalised dimension over the chunk's time axis, scaled and rounded to
  integers, flattened low frequencies first with the dimensions interleaved, then compressed by a BPE trained with
  `tokenizers` on those integer strings.
- "state/mlp": the proprio state (B, S), normalised by stored mean / std (lerobot's `MEAN_STD` normalisation), through
  an MLP to K soft tokens of the core's width (the state projection of pi0, Black et al., 2024).
- "state/bins": the state binned like actions, as discrete tokens in their own vocabulary range.

Where the bin convention differs from OpenVLA's code (documented choice): OpenVLA builds `num_bins` edges with
`np.linspace(-1, 1, 256)`, so it has 255 bins and its last code repeats the one before. Here `num_bins` equal bins
cover [-1, 1] (edges `linspace(-1, 1, num_bins + 1)`), every code is its own bin, a value decodes to its bin centre
and the round-trip error is at most half a bin, 1 / num_bins in the normalised space.

Everything a tokenizer learns from data (the percentiles, the state mean / std, FAST's BPE) lives in its config, so
`config.to_dict()` (what a checkpoint's `config.json` holds) rebuilds it exactly, as OpenVLA keeps its `norm_stats`
in `config.json`. Fit before building a model: a `DiffusionModel` keeps the adapter configs it was built with.

>>> import torch
>>> from mmdiff.adapters.actions import ActionBinTokenizer
>>> actions = torch.linspace(-2, 2, 101)[:, None].repeat(1, 2)  # (N, D=2) steps
>>> tok = ActionBinTokenizer.from_data(actions, num_bins=8)
>>> codes = tok.encode(actions[None, 50:53])  # (B=1, H=3, D=2) -> (1, 6)
>>> codes.tolist(), tok.decode(codes).shape
([[4, 4, 4, 4, 4, 4]], torch.Size([1, 3, 2]))
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from mmdiff.adapters.base import AdapterConfig, ContinuousAdapter, DiscreteAdapter, register_adapter

__all__ = [
    "ActionRangeWarning",
    "ActionDecodeWarning",
    "quantile_bounds",
    "dct_matrix",
    "ActionBinsConfig",
    "StateBinsConfig",
    "BinTokenizer",
    "ActionBinTokenizer",
    "StateBinTokenizer",
    "FastActionConfig",
    "FastActionTokenizer",
    "StateMLPConfig",
    "StateMLPAdapter",
]

_SYMBOL_OFFSET = 0x100  # FAST integer k -> the character chr(0x100 + k): printable, no whitespace or control chars


class ActionRangeWarning(UserWarning):
    """Values outside the statistics' range [q01, q99] (or outside [-1, 1] for unnormalised dimensions) were
    clipped before tokenising; given once per tokenizer."""


class ActionDecodeWarning(UserWarning):
    """FAST codes that do not spell a whole chunk (too few / too many coefficients, unknown ids) were repaired while
    decoding; given once per tokenizer."""


# ----------------------------------------------------------------------------------------------- statistics
def _as_rows(values: Any, dim: int | None, what: str) -> np.ndarray:
    """Values (..., D) (array, tensor, or a list of per-episode arrays) -> float64 rows (N, D)."""
    if isinstance(values, (list, tuple)) and values and getattr(values[0], "ndim", 0) >= 2:  # per-episode arrays
        parts = [_as_rows(v, dim, what) for v in values]
        return np.concatenate(parts, axis=0)
    array = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, np.float64)
    if array.ndim < 2 or array.shape[-1] == 0 or array.size == 0:
        raise ValueError(f"{what} statistics need values shaped (N, D) or (N, H, D), got shape {array.shape}")
    if dim is not None and array.shape[-1] != dim:
        raise ValueError(f"the data has {array.shape[-1]} dimensions but the tokenizer is set up for {dim}; "
                         f"give values of {dim} dimensions or set the dimension to {array.shape[-1]}")
    if not np.isfinite(array).all():
        raise ValueError(f"the {what} data holds NaN or infinite values; drop or repair those steps before fitting")
    return array.reshape(-1, array.shape[-1])


def quantile_bounds(values: Any, *, low: float = 0.01, high: float = 0.99) -> tuple[list[float], list[float]]:
    """Per-dimension `low` / `high` quantiles (numpy's linear interpolation) of values (..., D): OpenVLA's q01 / q99.

    Args:
        values: an array or tensor (N, D) or (N, H, D), or a list of per-episode arrays (T_i, D).
        low: the lower quantile.
        high: the upper quantile.

    >>> quantile_bounds([[0.0], [1.0], [2.0], [3.0], [4.0]], low=0.25, high=0.75)
    ([1.0], [3.0])
    """
    rows = _as_rows(values, None, "quantile")
    return np.quantile(rows, low, axis=0).tolist(), np.quantile(rows, high, axis=0).tolist()


def _check_bounds(q01: list[float] | None, q99: list[float] | None, normalize: list[bool] | None, dim: int,
                  key: str) -> None:
    if (q01 is None) != (q99 is None):
        raise ValueError(f"the {key} tokenizer needs both q01 and q99 (or neither, before fitting)")
    for name, values in (("q01", q01), ("q99", q99), ("normalize", normalize)):
        if values is not None and len(values) != dim:
            raise ValueError(f"the {key} tokenizer's {name} has {len(values)} entries but its dimension is {dim}; "
                             "give one entry per dimension")
    if q01 is not None and q99 is not None:
        if not all(math.isfinite(a) and math.isfinite(b) for a, b in zip(q01, q99, strict=True)):
            raise ValueError(f"the {key} tokenizer's q01 / q99 must be finite, got {q01} / {q99}")
        bad = [i for i, (a, b) in enumerate(zip(q01, q99, strict=True)) if a > b]
        if bad:
            raise ValueError(f"the {key} tokenizer's q01 exceeds q99 in dimensions {bad}; swap them or refit")


class _Bounds:
    """OpenVLA's BOUNDS_Q99 normalisation of a tokenizer config: masked dimensions map [q01, q99] -> [-1, 1]."""

    def __init__(self, config: Any, dim: int, key: str) -> None:
        self.dim, self.key = dim, key
        mask = config.normalize if config.normalize is not None else [True] * dim
        self.mask = torch.tensor(mask, dtype=torch.bool)  # (D,)
        self.fitted = config.q01 is not None
        self.low = torch.tensor(config.q01 if self.fitted else [-1.0] * dim, dtype=torch.float64)  # (D,)
        self.high = torch.tensor(config.q99 if self.fitted else [1.0] * dim, dtype=torch.float64)  # (D,)

    def check(self, values: Tensor, *, fitted: bool = True) -> None:
        """Raises a ValueError naming both sizes when `values` (..., D) has another D, or (with `fitted`) when the
        statistics a normalised dimension needs are missing."""
        if values.shape[-1] != self.dim:
            raise ValueError(f"the values have {values.shape[-1]} dimensions but the {self.key} tokenizer's "
                             f"statistics describe {self.dim}; give {self.dim}-dimensional values, or fit a "
                             f"tokenizer on {values.shape[-1]}-dimensional data")
        if fitted and bool(self.mask.any()) and not self.fitted:
            raise ValueError(f"the {self.key} tokenizer has no q01 / q99 statistics yet; build it with "
                             "`from_data(values)` (or call `fit(values)`) before tokenising, or set normalize=[False, "
                             "...] for dimensions already in [-1, 1]")

    def normalize(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """Values (..., D) -> (normalised float64 values clipped to [-1, 1], bool mask of the clipped entries)."""
        self.check(values)
        x = values.double()
        low, high, mask = (t.to(x.device) for t in (self.low, self.high, self.mask))
        span = high - low
        scaled = torch.where(span > 0, 2 * (x - low) / torch.where(span > 0, span, 1.0) - 1, torch.zeros_like(x))
        scaled = torch.where(mask, scaled, x)  # unnormalised dimensions pass through
        clipped = scaled.abs() > 1 + 1e-6  # a float32 value at q01 / q99 rounds a hair outside: not clipped
        clipped = clipped | (mask & (span == 0) & (x != low))  # a constant dimension: any other value is clipped
        return scaled.clamp(-1.0, 1.0), clipped

    def unnormalize(self, scaled: Tensor) -> Tensor:
        """Normalised values (..., D) in [-1, 1] -> values in data units (float64)."""
        low, high, mask = (t.to(scaled.device) for t in (self.low, self.high, self.mask))
        return torch.where(mask, (scaled + 1) / 2 * (high - low) + low, scaled)


def _warn_clipped(adapter: Any, clipped: Tensor, stacklevel: int) -> None:
    """One `ActionRangeWarning` per tokenizer, naming the dimensions and how many values were clipped."""
    if adapter._warned_clipping or not bool(clipped.any()):
        return
    adapter._warned_clipping = True
    dims = sorted({int(d) for d in clipped.reshape(-1, clipped.shape[-1]).any(0).nonzero().flatten()})
    share = float(clipped.double().mean())
    warnings.warn(
        f"the {adapter.key} tokenizer clipped {int(clipped.sum())} values ({share:.1%}) in dimensions {dims} to its "
        "statistics' range [q01, q99] ([-1, 1] for unnormalised dimensions); a few are expected on the data the "
        "percentiles came from, many mean the statistics do not match these values: refit with `from_data` "
        "(warned once per tokenizer)", ActionRangeWarning, stacklevel=stacklevel)


def _values_tensor(raw: Any, ndim: int, shape_text: str, key: str) -> Tensor:
    """Raw values (tensor, array, nested lists, or a list of per-item arrays) -> a float tensor of `ndim` dims."""
    if isinstance(raw, Tensor):
        values = raw
    elif isinstance(raw, (list, tuple)) and raw and isinstance(raw[0], (Tensor, np.ndarray)):
        values = torch.stack([torch.as_tensor(np.asarray(r) if not isinstance(r, Tensor) else r) for r in raw])
    else:
        values = torch.as_tensor(np.asarray(raw, dtype=np.float64))
    if values.dim() != ndim or not (values.is_floating_point() or values.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"the {key} tokenizer takes {shape_text} float values, got {tuple(values.shape)} "
                         f"{values.dtype}" + ("; a single step is (B, 1, D): add the axis with values[:, None]"
                                               if ndim == 3 and values.dim() == 2 else ""))
    if not bool(torch.isfinite(values.double()).all()):
        raise ValueError(f"the values given to the {key} tokenizer hold NaN or infinite entries; give finite values")
    return values


# ----------------------------------------------------------------------------------------------- bins
@dataclass
class ActionBinsConfig(AdapterConfig):
    """Config of the "action/bins" tokenizer (saved as `{"adapter": "action/bins", ...}`).

    Args:
        action_dim: D, values per action step.
        num_bins: equal bins over [-1, 1] per dimension (the vocabulary range holds this many ids).
        q01: per-dimension 1st percentile of the training actions (None before fitting; `from_data` fills it).
        q99: per-dimension 99th percentile.
        normalize: per-dimension mask, True where [q01, q99] maps to [-1, 1]; False passes the value through (a
            gripper command already in [-1, 1]). None: every dimension.
        vocab_range: the vocabulary range the codes occupy.
        tokenizer: the registry name ("bins").
    """

    modality: ClassVar[str] = "action"
    name_field: ClassVar[str] = "tokenizer"

    action_dim: int = 7
    num_bins: int = 256
    q01: list[float] | None = None
    q99: list[float] | None = None
    normalize: list[bool] | None = None
    vocab_range: str = "action"
    tokenizer: str = "bins"

    @property
    def dim(self) -> int:
        return self.action_dim

    def __post_init__(self) -> None:
        _check_bin_config(self)


@dataclass
class StateBinsConfig(AdapterConfig):
    """Config of the "state/bins" tokenizer: the proprio state binned like actions, in its own vocabulary range.

    Args:
        state_dim: S, values per state vector.
        num_bins: equal bins over [-1, 1] per dimension.
        q01: per-dimension 1st percentile of the training states (None before fitting).
        q99: per-dimension 99th percentile.
        normalize: per-dimension mask (see `ActionBinsConfig`).
        vocab_range: the vocabulary range the codes occupy.
        tokenizer: the registry name ("bins").
    """

    modality: ClassVar[str] = "state"
    name_field: ClassVar[str] = "tokenizer"

    state_dim: int = 8
    num_bins: int = 256
    q01: list[float] | None = None
    q99: list[float] | None = None
    normalize: list[bool] | None = None
    vocab_range: str = "state"
    tokenizer: str = "bins"

    @property
    def dim(self) -> int:
        return self.state_dim

    def __post_init__(self) -> None:
        _check_bin_config(self)


def _check_bin_config(config: Any) -> None:
    if config.dim < 1 or config.num_bins < 2:
        raise ValueError(f"{config.key} needs a dimension >= 1 and num_bins >= 2, got {config.dim} and "
                         f"{config.num_bins}")
    config.q01 = None if config.q01 is None else [float(v) for v in config.q01]
    config.q99 = None if config.q99 is None else [float(v) for v in config.q99]
    config.normalize = None if config.normalize is None else [bool(v) for v in config.normalize]
    _check_bounds(config.q01, config.q99, config.normalize, config.dim, config.key)


class BinTokenizer(DiscreteAdapter):
    """Uniform per-dimension binning of normalised values: the shared part of "action/bins" and "state/bins".

    Values (..., D) -> normalised to [-1, 1] (q01 / q99, `normalize` mask) -> code `floor((x + 1) / 2 * num_bins)`
    (1.0 falls into the last bin) -> decoded to the bin centre `-1 + (code + 0.5) * 2 / num_bins` -> data units.
    """

    modality: ClassVar[str] = "action"
    config_class: ClassVar[type] = ActionBinsConfig
    dim_field: ClassVar[str] = "action_dim"  # the config field holding D

    def __init__(self, config: Any, *, load_pretrained: bool | None = None) -> None:
        super().__init__(config)
        self._warned_clipping = False
        self._bounds = _Bounds(config, config.dim, config.key)

    @classmethod
    def from_data(cls, values: Any, **fields: Any) -> BinTokenizer:
        """A tokenizer whose q01 / q99 are the percentiles of `values` (..., D) (the dimension is read from them).

        Args:
            values: an array or tensor (N, D) or (N, H, D), or a list of per-episode arrays (T_i, D).
            **fields: further config fields (num_bins, normalize, vocab_range).
        """
        rows = _as_rows(values, None, cls.config_class.modality)
        fields.setdefault(cls.dim_field, rows.shape[1])
        return cls(cls.config_class(**fields)).fit(rows)

    def fit(self, values: Any) -> BinTokenizer:
        """Sets q01 / q99 (in the config) to the percentiles of `values` (..., D); returns this tokenizer.

        Fit before building a model with it: a `DiffusionModel` keeps the adapter config it was built with.
        """
        q01, q99 = quantile_bounds(_as_rows(values, self.config.dim, self.key))
        self.config.q01, self.config.q99 = q01, q99
        self._bounds = _Bounds(self.config, self.config.dim, self.key)
        return self

    @property
    def codebook_size(self) -> int:
        return self.config.num_bins

    @property
    def downsample(self) -> int:
        """Values per code: one (binning has no spatial grid)."""
        return 1

    @property
    def bin_width(self) -> Tensor:
        """Width of one bin per dimension, in data units (D,) float64; decoding is exact to half of it."""
        b = self._bounds
        return torch.where(b.mask, (b.high - b.low) / self.config.num_bins, torch.full_like(b.low, 2.0 / self.config
                                                                                             .num_bins))

    def postprocess(self, values: Tensor) -> np.ndarray:
        """Decoded values (tensor) -> a float32 numpy array of the same shape (what a robot controller takes)."""
        return values.detach().cpu().float().numpy()

    def _encode(self, values: Tensor) -> Tensor:
        """Values (..., D) -> codes (..., D) int64 in [0, num_bins)."""
        scaled, clipped = self._bounds.normalize(values)
        _warn_clipped(self, clipped, stacklevel=5)  # the caller of encode (through torch.no_grad's wrapper)
        n = self.config.num_bins
        return torch.floor((scaled + 1) / 2 * n).long().clamp(0, n - 1)  # (..., D)

    def _decode(self, codes: Tensor) -> Tensor:
        """Codes (..., D) -> values (..., D) float32 at the bin centres."""
        n = self.config.num_bins
        centres = -1 + (codes.double() + 0.5) * (2.0 / n)
        return self._bounds.unnormalize(centres).float()

    def check_codes(self, codes: Tensor) -> None:
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"{self.modality} codes must lie in [0, {self.codebook_size}) for the {self.key} tokenizer, got "
                f"values in [{int(codes.min())}, {int(codes.max())}]; map vocabulary ids back with "
                "`from_vocab_ids(ids, vocab)`")

    def extra_repr(self) -> str:
        return f"key={self.key!r}, dim={self.config.dim}, num_bins={self.codebook_size}"


@register_adapter("action/bins")
class ActionBinTokenizer(BinTokenizer):
    """The "action/bins" tokenizer: action chunks (B, H, D) <-> codes (B, H * D), time-major.

    >>> tok = ActionBinTokenizer(ActionBinsConfig(action_dim=2, num_bins=4, q01=[0.0, 0.0], q99=[4.0, 4.0]))
    >>> tok.encode(torch.tensor([[[0.5, 3.9], [2.0, 1.0]]])).tolist()
    [[0, 3, 2, 1]]
    >>> tok.decode(torch.tensor([[0, 3, 2, 1]])).tolist()
    [[[0.5, 3.5], [2.5, 1.5]]]
    """

    modality: ClassVar[str] = "action"
    config_class: ClassVar[type] = ActionBinsConfig

    def preprocess(self, raw: Any) -> Tensor:
        """Chunks: a (B, H, D) array / tensor, or a list of (H, D) chunks -> (B, H, D) float tensor."""
        return _values_tensor(raw, 3, "(B, H, D)", self.key)

    @torch.no_grad()
    def encode(self, actions: Any) -> Tensor:
        """Action chunks (B, H, D) -> codes (B, H * D) int64 in [0, num_bins), step 0's D values first.

        Raises:
            ValueError: not (B, H, D), D differs from the statistics', non-finite values, or no statistics yet.
        """
        actions = self.preprocess(actions)
        b, h, d = actions.shape
        return self._encode(actions).reshape(b, h * d)  # (B, H, D) -> (B, H * D)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, H * D) -> action chunks (B, H, D) float32 at the bin centres.

        Raises:
            ValueError: codes outside [0, num_bins), or a length that is not a multiple of D.
        """
        codes = _codes_tensor(codes, self.key)
        d = self.config.dim
        if codes.shape[1] % d:
            raise ValueError(f"{codes.shape[1]} codes per row do not split into steps of action_dim={d}; decode "
                             f"H * {d} codes per chunk")
        self.check_codes(codes)
        codes = codes.reshape(codes.shape[0], -1, d)  # (B, H * D) -> (B, H, D)
        self._bounds.check(codes)
        return self._decode(codes)


@register_adapter("state/bins")
class StateBinTokenizer(BinTokenizer):
    """The "state/bins" tokenizer: proprio states (B, S) <-> codes (B, S) in the "state" vocabulary range.

    >>> tok = StateBinTokenizer(StateBinsConfig(state_dim=1, num_bins=4, q01=[-2.0], q99=[2.0]))
    >>> tok.encode(torch.tensor([[-1.5], [0.1]])).tolist(), tok.decode(torch.tensor([[3]])).tolist()
    ([[0], [2]], [[1.5]])
    """

    modality: ClassVar[str] = "state"
    config_class: ClassVar[type] = StateBinsConfig
    dim_field: ClassVar[str] = "state_dim"

    def preprocess(self, raw: Any) -> Tensor:
        """States: a (B, S) array / tensor, or a list of (S,) vectors -> (B, S) float tensor."""
        return _values_tensor(raw, 2, "(B, S)", self.key)

    @torch.no_grad()
    def encode(self, states: Any) -> Tensor:
        """States (B, S) -> codes (B, S) int64 in [0, num_bins)."""
        return self._encode(self.preprocess(states))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, S) -> states (B, S) float32 at the bin centres."""
        codes = _codes_tensor(codes, self.key)
        self._bounds.check(codes)
        self.check_codes(codes)
        return self._decode(codes)


def _codes_tensor(codes: Any, key: str) -> Tensor:
    codes = torch.as_tensor(codes)
    if codes.dim() != 2 or codes.is_floating_point():
        raise ValueError(f"the {key} tokenizer decodes (B, N) integer codes, got {tuple(codes.shape)} {codes.dtype}")
    return codes.long()


# ----------------------------------------------------------------------------------------------- FAST
def dct_matrix(n: int) -> Tensor:
    """The orthonormal DCT-II matrix C (n, n) float64: `C @ x` transforms x along its first axis, `C.T @ y` inverts.

    C[k, t] = sqrt((1 if k == 0 else 2) / n) * cos(pi * (t + 0.5) * k / n) (scipy's `dct(x, norm="ortho")`).

    >>> c = dct_matrix(4)
    >>> bool(torch.allclose(c @ c.T, torch.eye(4, dtype=torch.float64)))
    True
    """
    t = torch.arange(n, dtype=torch.float64)
    k = t[:, None]
    c = torch.cos(math.pi * (t[None] + 0.5) * k / n) * math.sqrt(2.0 / n)  # (n, n)
    c[0] /= math.sqrt(2.0)
    return c


@dataclass
class FastActionConfig(AdapterConfig):
    """Config of the "action/fast" tokenizer (saved as `{"adapter": "action/fast", ...}`).

    A chunk's code count varies with its content. On a fixed canvas the task allots `max_length` code positions for
    the chunk; `encode` fills the positions after a chunk's codes with the pad code (`vocab_size`, the last id of the
    range), and `decode` reads a row up to its first pad code.

    Args:
        action_dim: D, values per action step.
        horizon: H, steps per chunk.
        scale: multiplies the DCT coefficients before rounding (FAST's default 10): larger keeps more detail and
            makes more distinct integers.
        vocab_size: BPE tokens; the vocabulary range holds `vocab_size + 1` ids (the last is the pad code).
        max_length: code positions per chunk on the canvas (None: the longest row of each `encode` batch).
        q01: per-dimension 1st percentile of the training actions (None before fitting).
        q99: per-dimension 99th percentile.
        normalize: per-dimension mask (see `ActionBinsConfig`).
        bpe: the trained BPE (the `tokenizers` JSON, as a dict); None before fitting.
        vocab_range: the vocabulary range the codes occupy.
        tokenizer: the registry name ("fast").
    """

    modality: ClassVar[str] = "action"
    name_field: ClassVar[str] = "tokenizer"

    action_dim: int = 7
    horizon: int = 10
    scale: float = 10.0
    vocab_size: int = 1024
    max_length: int | None = None
    q01: list[float] | None = None
    q99: list[float] | None = None
    normalize: list[bool] | None = None
    bpe: dict[str, Any] | None = None
    vocab_range: str = "action"
    tokenizer: str = "fast"

    @property
    def dim(self) -> int:
        return self.action_dim

    @property
    def max_coefficient(self) -> int:
        """The largest |rounded coefficient| a clipped chunk can give: |c_k| <= ||x||_2 <= sqrt(H) for x in
        [-1, 1], so every integer lies in [-bound, bound] and the BPE alphabet covers them all."""
        return int(math.floor(math.sqrt(self.horizon) * self.scale + 0.5))

    def __post_init__(self) -> None:
        if self.action_dim < 1 or self.horizon < 1 or not self.scale > 0:
            raise ValueError(f"action/fast needs action_dim >= 1, horizon >= 1 and scale > 0, got {self.action_dim}, "
                             f"{self.horizon} and {self.scale}")
        alphabet = 2 * self.max_coefficient + 1
        if self.vocab_size < alphabet:
            raise ValueError(f"action/fast vocab_size={self.vocab_size} cannot hold the {alphabet} integers a chunk "
                             f"of horizon {self.horizon} at scale {self.scale} can give; raise vocab_size to at least "
                             f"{alphabet} or lower scale")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"action/fast max_length must be >= 1 or None, got {self.max_length}")
        self.q01 = None if self.q01 is None else [float(v) for v in self.q01]
        self.q99 = None if self.q99 is None else [float(v) for v in self.q99]
        self.normalize = None if self.normalize is None else [bool(v) for v in self.normalize]
        _check_bounds(self.q01, self.q99, self.normalize, self.action_dim, self.key)


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as err:  # pragma: no cover - a core dependency
        raise ImportError("the action/fast tokenizer needs the `tokenizers` package: pip install tokenizers") from err
    return tokenizers


@register_adapter("action/fast")
class FastActionTokenizer(DiscreteAdapter):
    """The "action/fast" tokenizer: chunks (B, H, D) <-> variable-length BPE codes, padded to (B, L).

    Documented choice: the BPE runs on characters, one per integer (FAST's initial alphabet), with no pre-tokenizer,
    instead of FAST's byte-level one: byte-level splitting turns integers >= 128 into two bytes (whose merges can
    decode to invalid UTF-8) and its regex cuts the string at integers that happen to be spaces or digits. Every code
    sequence here decodes to whole integers.

    >>> t = torch.linspace(0, 1, 8, dtype=torch.float64)
    >>> chunks = torch.stack([torch.stack([t * a, 1 - t * a], -1) for a in torch.linspace(0.2, 1, 32)])  # (32, 8, 2)
    >>> tok = FastActionTokenizer.from_data(chunks, vocab_size=128)
    >>> codes = tok.encode(chunks[:2])
    >>> codes.shape[1] < 16, tok.decode(codes).shape
    (True, torch.Size([2, 8, 2]))
    """

    modality: ClassVar[str] = "action"
    config_class: ClassVar[type] = FastActionConfig

    def __init__(self, config: FastActionConfig, *, load_pretrained: bool | None = None) -> None:
        super().__init__(config)
        self._warned_clipping = self._warned_decoding = False
        self._bounds = _Bounds(config, config.action_dim, config.key)
        self._dct = dct_matrix(config.horizon)  # (H, H) float64
        self._bpe = None if config.bpe is None else self._load_bpe(config.bpe)

    # --- fitting
    @classmethod
    def from_data(cls, chunks: Any, **fields: Any) -> FastActionTokenizer:
        """A tokenizer fitted on action chunks (N, H, D): q01 / q99 over every step, then the BPE.

        Args:
            chunks: (N, H, D) array or tensor (H and D are read from it).
            **fields: further config fields (vocab_size, scale, normalize, max_length, ...).
        """
        chunks = _values_tensor(chunks, 3, "(N, H, D)", "action/fast")
        fields.setdefault("horizon", chunks.shape[1])
        fields.setdefault("action_dim", chunks.shape[2])
        return cls(FastActionConfig(**fields)).fit(chunks)

    def fit(self, chunks: Any) -> FastActionTokenizer:
        """Fits q01 / q99 and trains the BPE on chunks (N, H, D) (both into the config); returns this tokenizer.

        Fit before building a model with it: a `DiffusionModel` keeps the adapter config it was built with.
        """
        chunks = self._check_chunks(_values_tensor(chunks, 3, "(N, H, D)", self.key), fitted=False)
        q01, q99 = quantile_bounds(chunks.reshape(-1, chunks.shape[-1]))
        self.config.q01, self.config.q99 = q01, q99
        self._bounds = _Bounds(self.config, self.config.action_dim, self.key)
        scaled, _ = self._bounds.normalize(chunks)
        strings = [self._to_string(row) for row in self._integers(scaled)]
        tk = _tokenizers()
        bpe = tk.Tokenizer(tk.models.BPE())
        bound = self.config.max_coefficient
        trainer = tk.trainers.BpeTrainer(
            vocab_size=self.config.vocab_size, min_frequency=2, show_progress=False, special_tokens=[],
            initial_alphabet=[chr(_SYMBOL_OFFSET + i) for i in range(2 * bound + 1)], max_token_length=10_000)
        bpe.train_from_iterator(strings, trainer=trainer)
        self.config.bpe = _json_dict(bpe.to_str())
        self._bpe = bpe
        return self

    # --- the codec
    @property
    def codebook_size(self) -> int:
        """BPE tokens plus the pad code."""
        return self.config.vocab_size + 1

    @property
    def pad_code(self) -> int:
        """The code filling a row after its chunk's codes (the last of the range)."""
        return self.config.vocab_size

    @property
    def downsample(self) -> int:
        """Values per code: variable (BPE); reported as 1, there is no spatial grid."""
        return 1

    def preprocess(self, raw: Any) -> Tensor:
        """Chunks: a (B, H, D) array / tensor, or a list of (H, D) chunks -> (B, H, D) float tensor."""
        return _values_tensor(raw, 3, "(B, H, D)", self.key)

    def postprocess(self, values: Tensor) -> np.ndarray:
        """Decoded chunks (B, H, D) -> a float32 numpy array."""
        return values.detach().cpu().float().numpy()

    @torch.no_grad()
    def encode(self, actions: Any) -> Tensor:
        """Action chunks (B, H, D) -> codes (B, L) int64, each row its BPE codes then pad codes.

        L is `max_length`, or the longest row when it is None.

        Raises:
            ValueError: wrong shape or dimension, no fitted BPE, or a chunk needing more than `max_length` codes.
        """
        actions = self._check_chunks(self.preprocess(actions))
        self._need_bpe()
        scaled, clipped = self._bounds.normalize(actions)
        _warn_clipped(self, clipped, stacklevel=4)
        rows = [enc.ids for enc in self._bpe.encode_batch([self._to_string(r) for r in self._integers(scaled)])]
        longest = max(len(r) for r in rows)
        length = self.config.max_length or longest
        if longest > length:
            raise ValueError(f"a chunk needs {longest} action/fast codes but max_length={length}; raise max_length "
                             "(and the canvas positions the task allots) or lower scale")
        out = torch.full((len(rows), length), self.pad_code, dtype=torch.long)  # (B, L)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return out.to(actions.device)

    def _encode(self, values: Tensor) -> Tensor:
        return self.encode(values)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, L) -> action chunks (B, H, D) float32; a row is read up to its first pad code.

        A row that spells too few coefficients gets zeros for the missing (highest) frequencies, one with too many
        drops the extra, and unknown ids are skipped, with one `ActionDecodeWarning` (sampled codes can be
        malformed; a valid encoding never is).
        """
        codes = _codes_tensor(codes, self.key)
        self.check_codes(codes)
        return self._decode(codes)

    def _decode(self, codes: Tensor) -> Tensor:
        self._need_bpe()
        h, d = self.config.horizon, self.config.action_dim
        rows = []
        for row in codes.cpu().tolist():  # a loop, not a comprehension: the warning's stack level stays the same
            rows.append(self._row_coefficients(row))
        coeffs = torch.stack(rows)  # (B, H * D)
        coeffs = coeffs.reshape(-1, h, d) / self.config.scale  # (B, H, D), frequency along axis 1
        scaled = torch.einsum("kt,bkd->btd", self._dct, coeffs)  # inverse DCT: C.T @ coeffs
        return self._bounds.unnormalize(scaled.clamp(-1, 1)).float().to(codes.device)

    def check_codes(self, codes: Tensor) -> None:
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"action codes must lie in [0, {self.codebook_size}) for the {self.key} tokenizer, got "
                             f"values in [{int(codes.min())}, {int(codes.max())}]; map vocabulary ids back with "
                             "`from_vocab_ids(ids, vocab)`")

    # --- helpers
    def _check_chunks(self, chunks: Tensor, *, fitted: bool = True) -> Tensor:
        if chunks.shape[1] != self.config.horizon:
            raise ValueError(f"the chunks have {chunks.shape[1]} steps but the {self.key} tokenizer's horizon is "
                             f"{self.config.horizon}; give chunks of {self.config.horizon} steps or refit")
        self._bounds.check(chunks, fitted=fitted)
        return chunks

    def _integers(self, scaled: Tensor) -> Tensor:
        """Normalised chunks (B, H, D) -> rounded DCT coefficients (B, H * D) int64, frequency-major."""
        coeffs = torch.einsum("kt,btd->bkd", self._dct.to(scaled.device), scaled)  # (B, H, D): DCT over time
        return torch.round(coeffs * self.config.scale).long().reshape(scaled.shape[0], -1).cpu()  # (B, H * D)

    def _to_string(self, integers: Tensor) -> str:
        bound = self.config.max_coefficient
        return "".join(chr(_SYMBOL_OFFSET + bound + int(v)) for v in integers.clamp(-bound, bound))

    def _row_coefficients(self, row: list[int]) -> Tensor:
        """One row of codes -> its H * D integer coefficients (repaired when malformed) as float64."""
        n, bound = self.config.horizon * self.config.action_dim, self.config.max_coefficient
        if self.pad_code in row:
            row = row[:row.index(self.pad_code)]
        pieces = [self._bpe.id_to_token(c) for c in row]
        text = "".join(p for p in pieces if p is not None)
        values = [ord(ch) - _SYMBOL_OFFSET - bound for ch in text]
        if len(values) != n or None in pieces:
            self._warn_decoding(len(values), n, pieces.count(None))
            values = (values + [0] * n)[:n]
        return torch.tensor(values, dtype=torch.float64)

    def _warn_decoding(self, got: int, want: int, unknown: int) -> None:
        if self._warned_decoding:
            return
        self._warned_decoding = True
        warnings.warn(f"{self.key} codes spelled {got} coefficients ({unknown} unknown ids skipped) where a chunk has "
                      f"{want}; missing high frequencies were set to 0 and extra ones dropped (warned once per "
                      "tokenizer)", ActionDecodeWarning, stacklevel=6)

    def _need_bpe(self) -> None:
        if self._bpe is None:
            raise ValueError(f"the {self.key} tokenizer has no trained BPE yet; build it with "
                             "`FastActionTokenizer.from_data(chunks, vocab_size=...)` (or call `fit(chunks)`)")

    @staticmethod
    def _load_bpe(data: dict[str, Any]) -> Any:
        import json

        return _tokenizers().Tokenizer.from_str(json.dumps(data))

    def extra_repr(self) -> str:
        return (f"key={self.key!r}, horizon={self.config.horizon}, action_dim={self.config.action_dim}, "
                f"codebook_size={self.codebook_size}")


def _json_dict(text: str) -> dict[str, Any]:
    import json

    return json.loads(text)


# ----------------------------------------------------------------------------------------------- state MLP
@dataclass
class StateMLPConfig(AdapterConfig):
    """Config of the "state/mlp" adapter (saved as `{"adapter": "state/mlp", ...}`).

    Args:
        state_dim: S, values per state vector.
        d_model: width of the soft tokens (the core's d_model).
        num_tokens: K, soft tokens per state.
        hidden: width of the MLP's hidden layer (None: d_model).
        mean: per-dimension mean of the training states (None before fitting; `from_data` fills it).
        std: per-dimension standard deviation.
        encoder: the registry name ("mlp").
    """

    modality: ClassVar[str] = "state"
    name_field: ClassVar[str] = "encoder"

    state_dim: int = 8
    d_model: int = 256
    num_tokens: int = 1
    hidden: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    encoder: str = "mlp"

    def __post_init__(self) -> None:
        if min(self.state_dim, self.d_model, self.num_tokens, self.hidden or 1) < 1:
            raise ValueError(f"state/mlp needs state_dim, d_model, num_tokens and hidden >= 1, got {self.state_dim}, "
                             f"{self.d_model}, {self.num_tokens} and {self.hidden}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("state/mlp needs both mean and std (or neither, before fitting)")
        if self.mean is not None and self.std is not None:
            self.mean, self.std = [float(v) for v in self.mean], [float(v) for v in self.std]
            if len(self.mean) != self.state_dim or len(self.std) != self.state_dim:
                raise ValueError(f"state/mlp mean / std have {len(self.mean)} / {len(self.std)} entries but "
                                 f"state_dim is {self.state_dim}; give one per dimension")
            if any(s < 0 or not math.isfinite(s) for s in self.std) or not all(map(math.isfinite, self.mean)):
                raise ValueError(f"state/mlp std must be finite and >= 0 and mean finite, got {self.mean} / "
                                 f"{self.std}")


@register_adapter("state/mlp")
class StateMLPAdapter(ContinuousAdapter):
    """The "state/mlp" adapter: states (B, S) -> (x - mean) / (std + 1e-8) -> Linear, GELU, Linear -> (B, K, d_model).

    >>> adapter = StateMLPAdapter(StateMLPConfig(state_dim=3, d_model=8, num_tokens=2, mean=[0.0] * 3, std=[1.0] * 3))
    >>> signal, counts = adapter.prepare([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    >>> adapter.embed(signal).shape, counts
    (torch.Size([2, 2, 8]), [2, 2])
    """

    modality: ClassVar[str] = "state"
    config_class: ClassVar[type] = StateMLPConfig
    eps: ClassVar[float] = 1e-8  # lerobot's MEAN_STD epsilon

    def __init__(self, config: StateMLPConfig, *, load_pretrained: bool | None = None) -> None:
        super().__init__(config)
        hidden = config.hidden or config.d_model
        self.mlp = nn.Sequential(nn.Linear(config.state_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, config.num_tokens * config.d_model))

    @classmethod
    def from_data(cls, states: Any, **fields: Any) -> StateMLPAdapter:
        """An adapter whose mean / std are those of `states` (N, S) (or (..., S)); S is read from them.

        Args:
            states: training states, an array or tensor (N, S), or a list of per-episode arrays (T_i, S).
            **fields: further config fields (d_model, num_tokens, hidden).
        """
        rows = _as_rows(states, None, "state")
        fields.setdefault("state_dim", rows.shape[1])
        return cls(StateMLPConfig(**fields)).fit(rows)

    def fit(self, states: Any) -> StateMLPAdapter:
        """Sets mean / std (population std, in the config) to those of `states` (..., S); returns this adapter.

        Fit before building a model with it: a `DiffusionModel` keeps the adapter config it was built with.
        """
        rows = _as_rows(states, self.config.state_dim, "state")
        self.config.mean, self.config.std = rows.mean(0).tolist(), rows.std(0).tolist()
        return self

    def normalize(self, states: Tensor) -> Tensor:
        """States (B, S) -> (states - mean) / (std + 1e-8), in the states' dtype."""
        if self.config.mean is None:
            raise ValueError("the state/mlp adapter has no mean / std yet; build it with "
                             "`StateMLPAdapter.from_data(states, d_model=...)` (or call `fit(states)`)")
        mean = torch.tensor(self.config.mean, dtype=states.dtype, device=states.device)  # (S,)
        std = torch.tensor(self.config.std, dtype=states.dtype, device=states.device)  # (S,)
        return (states - mean) / (std + self.eps)

    def preprocess(self, raw: Any) -> Tensor:
        """States: a (B, S) array / tensor, or a list of (S,) vectors -> (B, S) float32 tensor (not normalised:
        `forward` normalises)."""
        states = _values_tensor(raw, 2, "(B, S)", self.key).float()
        if states.shape[1] != self.config.state_dim:
            raise ValueError(f"the states have {states.shape[1]} values but the {self.key} adapter takes "
                             f"state_dim={self.config.state_dim}; give {self.config.state_dim}-value states or build "
                             f"the adapter with state_dim={states.shape[1]}")
        return states

    def forward(self, states: Tensor) -> Tensor:
        """States (B, S) -> soft tokens (B, K, d_model)."""
        param = self.mlp[0].weight
        x = self.normalize(states.to(device=param.device, dtype=param.dtype))  # (B, S)
        tokens = self.mlp(x)  # (B, K * d_model)
        return tokens.view(states.shape[0], self.config.num_tokens, self.config.d_model)  # (B, K, d_model)

    def num_tokens(self, input_shape: Sequence[int] | None = None) -> int:
        return self.config.num_tokens
