"""Continuous audio adapters: 16 kHz clips -> log-mel features -> an encoder -> projector -> soft tokens of the core's
width, one token count per clip.

Two encoders, registered as "audio/<encoder>":

- "audio/logmel-conv", trained here: log-mel features (`mmdiff.audio.LogMel`), per-clip mean / variance
  normalisation, SpecAugment while training (Park et al., 2019), two strided Conv1d layers (4x fewer frames, the
  subsampling of the Speech-Transformer, Dong et al., 2018, and of Whisper's stem), sinusoidal positions and a
  pre-norm transformer encoder (Vaswani et al., 2017) with key padding masks for frame padding.
- "audio/whisper": the encoder of a transformers Whisper checkpoint (Radford et al., 2022, "Robust Speech
  Recognition via Large-Scale Weak Supervision"), frozen or trainable, as DIFFA (Zhou et al., 2025, "DIFFA: Large
  Language Diffusion Models Can Listen and Understand") and other speech LLMs use it. Whisper's features
  (`mmdiff.audio.whisper_log_mel`) are padded to its fixed window (30 s: 3000 frames, 1500 encoder positions) as
  Whisper does, and only the positions that cover the clip are kept: ceil(samples / 320) of them (frame j covers
  sample 160 j, encoder position p frames 2p - 1 .. 2p + 1), as DIFFA's encoder keeps
  `_get_feat_extract_output_lengths(frames)`. An optional average pooling (`pool`, stride = width) follows.

The projector (`mmdiff.adapters.projectors`: "linear", "mlp2x_gelu", DIFFA's "diffa_conv", ...) runs on each clip's
own positions, so nothing of the padding of a batch reaches a clip's tokens: batch results equal one-by-one results.

The canvas seam (`ContinuousAdapter.prepare` / `embed`): `prepare(clips)` takes a list of 1-D float clips already at
`sampling_rate` (`mmdiff.audio.load_audio` reads files), refuses empty clips, NaN / inf samples and clips longer than
`window_seconds` (a task chunks long audio), and gives the signal (a dict of tensors whose first dimension is the
batch, so a batch can be cut into row chunks) and each clip's token count, computed from its length alone.
`embed(signal)` gives (B, N, d_model) with each row's tokens right-aligned after zeros, N the batch's largest count.

>>> import torch
>>> from mmdiff.adapters import build_adapter
>>> adapter = build_adapter("audio/logmel-conv", d_model=16, n_mels=20, hidden_size=16, layers=1, heads=2)
>>> signal, counts = adapter.prepare([torch.zeros(16000), torch.zeros(800)])  # 1 s and 50 ms
>>> counts  # 101 and 6 frames, 4x fewer after the convolutions
[26, 2]
>>> adapter.embed(signal).shape
torch.Size([2, 26, 16])
"""

from __future__ import annotations

import abc
import collections
import functools
import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiff.adapters.base import AdapterConfig, ContinuousAdapter, register_adapter
from mmdiff.adapters.projectors import PROJECTORS, build_projector, is_projector, projected_length
from mmdiff.audio import SAMPLING_RATE, LogMel, SpecAugment, whisper_log_mel
from mmdiff.hub import is_hub_id, resolve_checkpoint

__all__ = [
    "AudioAdapterConfig",
    "AudioAdapter",
    "LogMelConvConfig",
    "LogMelConvAdapter",
    "WhisperAdapterConfig",
    "WhisperAdapter",
    "WHISPER_ENCODER_FIELDS",
    "sinusoids",
]

# the WhisperConfig fields the encoder reads: what a built adapter saves, so a checkpoint rebuilds it without the hub
WHISPER_ENCODER_FIELDS = ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                          "max_source_positions", "activation_function", "scale_embedding", "dropout",
                          "attention_dropout", "activation_dropout", "encoder_layerdrop")
WHISPER_HOP = 160  # samples per Whisper feature frame
WHISPER_STRIDE = 2  # feature frames per Whisper encoder position


def _positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class AudioAdapterConfig(AdapterConfig):
    """What every audio adapter's config holds.

    Args:
        encoder: the encoder name, the second half of the registry key ("logmel-conv", "whisper").
        d_model: width of the soft tokens: the core's d_model.
        projector: "linear", "mlp2x_gelu" (any "mlp{N}x_gelu"), "diffa_conv" (4x shorter) or a name in `PROJECTORS`.
        sampling_rate: the rate clips must have (16000: every speech model here).
    """

    encoder: str
    d_model: int
    projector: str = "linear"
    sampling_rate: int = SAMPLING_RATE

    modality: ClassVar[str] = "audio"
    name_field: ClassVar[str] = "encoder"

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ValueError(f"encoder must be a non-empty string such as 'whisper', got {self.encoder!r}")
        _positive_int(self.d_model, "d_model (the core's width)")
        if not isinstance(self.projector, str) or not is_projector(self.projector):
            raise ValueError(f"unknown projector {self.projector!r}; known: {', '.join(PROJECTORS.list())} or any "
                             "'mlp{N}x_gelu'")
        if self.sampling_rate != SAMPLING_RATE:
            raise ValueError(f"audio adapters run at {SAMPLING_RATE} Hz, got sampling_rate={self.sampling_rate!r}; "
                             "resample the audio with mmdiff.audio.load_audio instead")


class AudioAdapter(ContinuousAdapter):
    """Base of the audio adapters: clip checks, token counts, per-clip projection and the right-aligned layout.

    Subclasses set `config_class`, build `self.projector` (input width: `encoder_width`), and implement
    `window_seconds`, `encoder_width`, `_features(clips) -> (features (B, M, F), frames (B,))`,
    `_positions(samples)` (encoder positions of a clip, before pooling and projection) and
    `_encode(features, frames) -> list of (n_i, C)`.

    Attributes:
        projector: the projector module (keys `projector.*`).
    """

    modality: ClassVar[str] = "audio"
    config_class: ClassVar[type] = AudioAdapterConfig
    config: AudioAdapterConfig
    projector: nn.Module

    # --- subclass hooks ---------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def window_seconds(self) -> float:
        """The longest clip one forward pass takes, in seconds (a task chunks longer audio with it)."""

    @property
    @abc.abstractmethod
    def encoder_width(self) -> int:
        """Width C of the encoder outputs the projector reads."""

    @abc.abstractmethod
    def _features(self, clips: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Checked clips -> (features (B, M, F) on the CPU, real frames per clip (B,) long)."""

    @abc.abstractmethod
    def _positions(self, samples: int) -> int:
        """Encoder positions (before pooling and projection) a clip of `samples` samples keeps."""

    @abc.abstractmethod
    def _encode(self, features: Tensor, frames: Tensor) -> list[Tensor]:
        """Features (B, M, F) and real frames (B,) on the adapter's device -> per clip its positions (n_i, C)."""

    def _pool(self, states: Tensor) -> Tensor:
        """One clip's encoder positions (n, C) -> the positions the projector reads (default: unchanged)."""
        return states

    def _pooled_length(self, positions: int) -> int:
        return positions

    # --- public API -------------------------------------------------------------------------------------------
    @property
    def sampling_rate(self) -> int:
        """The rate clips must have (Hz)."""
        return self.config.sampling_rate

    @property
    def max_samples(self) -> int:
        """The most samples one clip may have: `window_seconds` at `sampling_rate`."""
        return round(self.window_seconds * self.sampling_rate)

    def num_tokens(self, input_shape: Sequence[int] | None = None) -> int:
        """Soft tokens of a clip of `input_shape` = (samples,) (or its sample count); None = a full window."""
        if input_shape is None:
            samples = self.max_samples
        elif isinstance(input_shape, int):
            samples = input_shape
        else:
            shape = tuple(int(s) for s in input_shape)
            if len(shape) != 1:
                raise ValueError(f"audio input_shape is (samples,), got {shape}")
            samples = shape[0]
        if samples < 1:
            raise ValueError(f"a clip needs at least one sample, got {samples}")
        return projected_length(self.projector, self._pooled_length(self._positions(samples)))

    def prepare(self, raw: Sequence[Any]) -> tuple[dict[str, Tensor], list[int]]:
        """Clips of a batch (1-D float tensors or arrays at `sampling_rate`) -> (signal, soft tokens per clip).

        The signal holds `features` (B, M, F), `frames` (B,) real feature frames, `tokens` (B,) and `width` (B,) (the
        batch's largest count, repeated: `embed` pads to it even after the batch was cut into row chunks).

        Raises:
            ValueError: not a list of mono clips, an empty clip, NaN / inf samples, a clip longer than
                `window_seconds`, or a clip too short to give one token; each names the fix.
        """
        clips = self._check_clips(raw)
        counts = [self.num_tokens(len(c)) for c in clips]
        for i, (clip, count) in enumerate(zip(clips, counts, strict=True)):
            if count < 1:
                shortest, ms = self._shortest(), 1000 / self.sampling_rate
                raise ValueError(
                    f"audio clip {i} ({len(clip)} samples, {len(clip) * ms:.1f} ms) is too short for the {self.key} "
                    f"adapter with the {self.config.projector!r} projector: it gives no soft token; pad it with "
                    f"silence to at least {shortest} samples ({shortest * ms:.1f} ms), or use a token-wise projector "
                    "such as 'linear'")
        features, frames = self._features(clips)
        tokens = torch.tensor(counts, dtype=torch.long)
        width = torch.full_like(tokens, max(counts))
        return {"features": features, "frames": frames, "tokens": tokens, "width": width}, counts

    def preprocess(self, raw: Any) -> dict[str, Tensor]:
        """One clip or a list of clips -> the signal `forward` takes (see `prepare`)."""
        clips = [raw] if isinstance(raw, (Tensor, np.ndarray)) and raw.ndim == 1 else raw
        return self.prepare(clips)[0]

    def features(self, signal: dict[str, Tensor]) -> list[Tensor]:
        """Encoder outputs before pooling and projection: per clip its kept positions (n_i, C)."""
        features, frames = self._signal_tensors(signal)
        return self._encode(features, frames)

    def forward(self, signal: dict[str, Tensor]) -> Tensor:
        """A signal (`prepare`) -> (B, N, d_model) soft tokens, each row's tokens right-aligned after zeros."""
        rows = self._project([self._pool(states) for states in self.features(signal)])  # per clip (m_i, d_model)
        counts = [int(n) for n in signal["tokens"]]
        if [r.shape[0] for r in rows] != counts:
            raise RuntimeError(f"the {self.key} adapter gave {[r.shape[0] for r in rows]} tokens but prepared "
                               f"{counts}; the signal does not come from this adapter's prepare")
        width = int(signal["width"].max()) if len(signal["width"]) else 0
        embeds = rows[0].new_zeros(len(rows), width, self.d_model)  # (B, N, d_model)
        for i, row in enumerate(rows):
            embeds[i, width - row.shape[0] :] = row
        return embeds

    def embed(self, signal: dict[str, Tensor]) -> Tensor:
        """A canvas signal (`prepare`) -> (B, N, d_model) soft tokens (see `forward`)."""
        return self(signal)

    def encode(self, raw: Any) -> Tensor:
        """Clips -> (B, N, d_model) soft tokens: `embed(prepare(clips)[0])`."""
        return self(self.preprocess(raw))

    # --- internals --------------------------------------------------------------------------------------------
    def _project(self, rows: list[Tensor]) -> list[Tensor]:
        """Per clip (n_i, C) -> per clip (m_i, d_model): token-wise projectors run on all positions at once, those
        that resample the sequence on each clip alone (so no clip sees another's padding)."""
        dtype = _first_dtype(self.projector, rows[0].dtype)
        if getattr(self.projector, "output_length", None) is None:
            out = self.projector(torch.cat(rows).to(dtype))  # (sum n_i, d_model)
            return list(out.split([r.shape[0] for r in rows]))
        return [self.projector(r[None].to(dtype))[0] for r in rows]

    def _signal_tensors(self, signal: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if not isinstance(signal, dict) or not {"features", "frames", "tokens", "width"} <= set(signal):
            raise ValueError(f"the {self.key} adapter takes the signal its `prepare(clips)` gives (a dict with "
                             f"features, frames, tokens, width), got {type(signal).__name__}")
        param = next(self.parameters())
        return signal["features"].to(param.device), signal["frames"].to(param.device)

    def _check_clips(self, raw: Sequence[Any]) -> list[Tensor]:
        if isinstance(raw, (str, bytes, dict)) or not isinstance(raw, (Sequence, Tensor, np.ndarray)):
            raise ValueError(f"the {self.key} adapter takes a list of 1-D float clips at {self.sampling_rate} Hz, got "
                             f"{type(raw).__name__}; read files with mmdiff.audio.load_audio")
        if not len(raw):
            raise ValueError(f"no audio clips given to the {self.key} adapter")
        return [self._check_clip(i, clip) for i, clip in enumerate(raw)]

    def _check_clip(self, i: int, clip: Any) -> Tensor:
        if not isinstance(clip, (Tensor, np.ndarray)):
            raise ValueError(f"audio clip {i} is a {type(clip).__name__}; give 1-D float tensors or arrays at "
                             f"{self.sampling_rate} Hz (mmdiff.audio.load_audio reads paths, bytes and dicts)")
        clip = torch.as_tensor(clip)
        if clip.ndim != 1:
            raise ValueError(f"audio clip {i} has shape {tuple(clip.shape)}; give a 1-D mono clip (load_audio mixes "
                             "channels down)")
        if not clip.is_floating_point():
            raise ValueError(f"audio clip {i} holds {clip.dtype} samples; give float samples in [-1, 1] "
                             "(load_audio scales PCM)")
        if clip.numel() == 0:
            raise ValueError(f"audio clip {i} is empty; give at least one sample (drop empty clips before encoding)")
        if not bool(torch.isfinite(clip).all()):
            bad = int((~torch.isfinite(clip)).sum())
            raise ValueError(f"audio clip {i} holds {bad} NaN or infinite samples; give finite samples in [-1, 1]")
        if clip.numel() > self.max_samples:
            raise ValueError(
                f"audio clip {i} lasts {clip.numel() / self.sampling_rate:.2f} s, longer than the {self.key} "
                f"adapter's window of {self.window_seconds:g} s; split it into windows of at most "
                f"{self.window_seconds:g} s (the ASR task chunks long audio with overlap; "
                "mmdiff.audio.iter_audio_chunks reads long files)")
        return clip.float()

    def _shortest(self) -> int:
        """The fewest samples that give one token (binary search: counts grow with the length)."""
        lo, hi = 1, self.max_samples
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.num_tokens(mid) >= 1 else (mid + 1, hi)
        return lo

    def extra_repr(self) -> str:
        return f"key={self.key!r}, d_model={self.d_model}, window_seconds={self.window_seconds:g}"


def sinusoids(length: int, channels: int, *, device: torch.device | None = None) -> Tensor:
    """Sinusoidal position embeddings (length, channels): sin then cos halves, timescales 1 .. 10000 (Whisper's
    `sinusoids`, Vaswani et al., 2017).

    >>> sinusoids(3, 4)[0].tolist()
    [0.0, 0.0, 1.0, 1.0]
    """
    if channels % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {channels}")
    increment = math.log(10000) / max(channels // 2 - 1, 1)
    inv = torch.exp(-increment * torch.arange(channels // 2, device=device, dtype=torch.float32))  # (C/2,)
    scaled = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv[None, :]  # (T, C/2)
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)  # (T, C)


def _first_dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    param = next(module.parameters(), None)
    return default if param is None else param.dtype


# ------------------------------------------------------------------------------------------------ logmel-conv
@dataclass
class LogMelConvConfig(AudioAdapterConfig):
    """The from-scratch audio encoder: log-mel -> 2 strided convolutions (4x) -> pre-norm transformer -> projector.

    Args:
        n_mels: mel bands of the features.
        n_fft: FFT size of the features (25 ms at 16 kHz).
        hop_length: samples between feature frames (10 ms).
        window_seconds: the longest clip one forward pass takes.
        hidden_size: width of the convolutions and the transformer.
        layers: transformer layers.
        heads: attention heads (must divide hidden_size).
        ffn_size: width of the transformer's feed-forward layer; None = 4 * hidden_size.
        dropout: dropout in the transformer (training only).
        cmvn: normalise each clip's features to zero mean and unit variance per mel band (over its own frames).
        spec_augment: `mmdiff.audio.SpecAugment` fields, applied in training mode only; None = off.
    """

    n_mels: int = 80
    n_fft: int = 400
    hop_length: int = 160
    window_seconds: float = 30.0
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    ffn_size: int | None = None
    dropout: float = 0.1
    cmvn: bool = True
    spec_augment: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_mels", "n_fft", "hop_length", "hidden_size", "layers", "heads"):
            _positive_int(getattr(self, name), name)
        if self.ffn_size is not None:
            _positive_int(self.ffn_size, "ffn_size")
        if self.hidden_size % self.heads or self.hidden_size % 2:
            raise ValueError(f"hidden_size {self.hidden_size} must be even and divisible by heads {self.heads}")
        if not (isinstance(self.window_seconds, (int, float)) and self.window_seconds > 0):
            raise ValueError(f"window_seconds must be a positive number, got {self.window_seconds!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        if self.spec_augment is not None:
            try:
                SpecAugment(**self.spec_augment)
            except TypeError as err:
                raise ValueError(f"spec_augment takes SpecAugment fields {sorted(SpecAugment.__dataclass_fields__)}: "
                                 f"{err}") from err


@functools.lru_cache(maxsize=8)
def _log_mel(n_mels: int, sampling_rate: int, n_fft: int, hop_length: int) -> LogMel:
    """The feature transform, shared and kept out of the adapter's state dict (it has no weights to learn)."""
    return LogMel(n_mels=n_mels, sampling_rate=sampling_rate, n_fft=n_fft, hop_length=hop_length)


@register_adapter("audio/logmel-conv")
class LogMelConvAdapter(AudioAdapter):
    """Log-mel + conv subsampling + transformer encoder, trained with the core (random init).

    Token count of a clip of T samples: F = T // hop + 1 frames (centred STFT), ceil(F / 2) after the first
    convolution (kernel 3, stride 2, padding 1), ceil(F / 4) after the second, then the projector's length.

    Attributes:
        subsample: `nn.Sequential(Conv1d, GELU, Conv1d, GELU)` over time (keys `subsample.0`, `subsample.2`).
        encoder: `nn.TransformerEncoder` (pre-norm, final LayerNorm).
        projector: encoder width -> d_model.
    """

    config_class: ClassVar[type] = LogMelConvConfig
    config: LogMelConvConfig

    def __init__(self, config: LogMelConvConfig, *, load_pretrained: bool | None = None) -> None:
        super().__init__(config)
        width = config.hidden_size
        self.subsample = nn.Sequential(
            nn.Conv1d(config.n_mels, width, kernel_size=3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1), nn.GELU(),
        )
        layer = nn.TransformerEncoderLayer(width, config.heads, config.ffn_size or 4 * width, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, norm=nn.LayerNorm(width),
                                             enable_nested_tensor=False)
        self.projector = build_projector(config.projector, width, config.d_model)
        self._spec_augment = SpecAugment(**config.spec_augment) if config.spec_augment is not None else None

    @property
    def window_seconds(self) -> float:
        return float(self.config.window_seconds)

    @property
    def encoder_width(self) -> int:
        return self.config.hidden_size

    def frames(self, samples: int) -> int:
        """Feature frames of a clip of `samples` samples: samples // hop + 1."""
        return samples // self.config.hop_length + 1

    def _positions(self, samples: int) -> int:
        return _conv_length(_conv_length(self.frames(samples)))

    def _features(self, clips: list[Tensor]) -> tuple[Tensor, Tensor]:
        cfg = self.config
        # the centred STFT reflects n_fft // 2 samples at each end: shorter clips get zeros appended first (their
        # frame count stays samples // hop + 1; the frames past it are masked out like any padding)
        shortest = cfg.n_fft // 2 + 1
        padded = [F.pad(c, (0, shortest - len(c))) if len(c) < shortest else c for c in clips]
        features, _ = _log_mel(cfg.n_mels, cfg.sampling_rate, cfg.n_fft, cfg.hop_length)(padded)  # (B, M, F)
        return features, torch.tensor([self.frames(len(c)) for c in clips], dtype=torch.long)

    def _encode(self, features: Tensor, frames: Tensor) -> list[Tensor]:
        dtype = _first_dtype(self.subsample, features.dtype)
        x = self._normalise(features.float(), frames).to(dtype)  # (B, M, F), zero at padded frames
        lengths = frames
        for conv, act in (self.subsample[0:2], self.subsample[2:4]):
            x = act(conv(x))  # (B, C, ceil(F / 2)): kernel 3, stride 2, padding 1
            lengths = (lengths - 1) // 2 + 1
            x = x * _length_mask(lengths, x.shape[-1])[:, None, :].to(dtype)  # zero past each clip, as if alone
        x = x.transpose(1, 2)  # (B, T, C), T = ceil(F / 4); padded positions zero
        x = x + sinusoids(x.shape[1], x.shape[2], device=x.device).to(dtype)[None]
        padding = ~_length_mask(lengths, x.shape[1])  # (B, T), True at padding
        x = self.encoder(x, src_key_padding_mask=padding)  # (B, T, C)
        return [x[i, : int(n)] for i, n in enumerate(lengths)]

    def _normalise(self, features: Tensor, frames: Tensor) -> Tensor:
        """Per-clip CMVN over the clip's own frames, SpecAugment in training mode, zeros at padded frames."""
        mask = _length_mask(frames, features.shape[-1])[:, None, :]  # (B, 1, F)
        if self.config.cmvn:
            count = frames.clamp(min=1)[:, None, None].to(features.dtype)
            mean = (features * mask).sum(-1, keepdim=True) / count  # (B, M, 1)
            var = (((features - mean) * mask) ** 2).sum(-1, keepdim=True) / count
            features = (features - mean) / torch.sqrt(var + 1e-5)
        if self.training and self._spec_augment is not None:
            features = self._spec_augment(features, mask[:, 0])
        return features * mask


def _conv_length(length: int) -> int:
    """Outputs of a kernel-3, stride-2, padding-1 convolution over `length` inputs: ceil(length / 2)."""
    return (length - 1) // 2 + 1


def _length_mask(lengths: Tensor, width: int) -> Tensor:
    """(B,) lengths -> (B, width) bool, True at the first `lengths[i]` positions of row i."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


# ------------------------------------------------------------------------------------------------ whisper
@dataclass
class WhisperAdapterConfig(AudioAdapterConfig):
    """The encoder of a transformers Whisper checkpoint as the audio tower.

    Args:
        model_name: a local folder or hub id of a Whisper checkpoint (any `WhisperModel` /
            `WhisperForConditionalGeneration` layout), or "" to build from `whisper_config` alone.
        pretrained: load the checkpoint's encoder weights when the adapter is built (False: random weights, the
            normal choice when the weights come from an mmdiff checkpoint).
        freeze: no gradients into the encoder, which also stays in eval mode (DIFFA keeps Whisper frozen).
        pool: average `pool` consecutive encoder positions into one (stride = width; a partial last group is the
            mean of its own positions); 1 = off. Whisper gives 50 positions per second.
        whisper_config: the encoder's `WhisperConfig` fields (`WHISPER_ENCODER_FIELDS`); None = read from
            `model_name` when built (the built adapter's config holds them, which is what a checkpoint saves).
        trim: encode only the clip's own frames (Whisper's positions 0 .. n-1, no padding to the 30 s window), each
            clip alone, as whisper.cpp's `audio_ctx` does: about 30 s / clip length less encoder work; the outputs
            differ from the padded ones, so train and run the projector with the same setting. False = Whisper's own
            fixed window.
        save_encoder: False leaves the frozen encoder's weights out of checkpoints; the adapter reads them again
            from `model_name` whenever it is built (needs `pretrained` and `freeze`), so a checkpoint holds only
            what was trained and `model_name` must resolve offline (a folder, the hub cache, or mmdiff's local copy
            `mmdiff.hub.mirror_folder`).
        cache_size: keep the frozen encoder's outputs of up to this many distinct clips in memory (least recently
            used first out), keyed by a hash of the clip's features: training on a fixed set of clips (augmentation
            drawn per example, as the speech source does) runs the encoder once per clip. 0 = off.
    """

    model_name: str = ""
    pretrained: bool = True
    freeze: bool = True
    pool: int = 1
    whisper_config: dict[str, Any] | None = None
    trim: bool = False
    save_encoder: bool = True
    cache_size: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int(self.pool, "pool")
        if isinstance(self.cache_size, bool) or not isinstance(self.cache_size, int) or self.cache_size < 0:
            raise ValueError(f"cache_size must be an integer >= 0 (0 = no encoder cache), got {self.cache_size!r}")
        if self.cache_size and not self.freeze:
            raise ValueError("cache_size needs freeze=True: a trainable encoder's outputs change every step")
        if not self.save_encoder and not (self.pretrained and self.freeze and self.model_name):
            raise ValueError("save_encoder=False needs pretrained=True, freeze=True and a model_name to read the "
                             "encoder from; a trained or random encoder left out of checkpoints would be lost")
        if not isinstance(self.model_name, str):
            raise ValueError(f"model_name must be a folder or hub id string, got {self.model_name!r}")
        if self.whisper_config is not None:
            unknown = sorted(set(self.whisper_config) - set(WHISPER_ENCODER_FIELDS))
            if unknown:
                raise ValueError(f"whisper_config takes the encoder fields {list(WHISPER_ENCODER_FIELDS)}; unknown: "
                                 f"{unknown}")
        elif not self.model_name:
            raise ValueError("the whisper adapter needs model_name (a Whisper folder or hub id) or whisper_config "
                             "(the encoder's WhisperConfig fields)")


def _whisper_folder(name: str) -> str:
    """A Whisper `model_name` -> what `from_pretrained` reads: a folder as given; a hub id through
    `mmdiff.hub.resolve_checkpoint` (the hub cache, a download, or mmdiff's local copy `mirror_folder`)."""
    if os.path.isdir(name) or not is_hub_id(name):
        return name
    return str(resolve_checkpoint(name))


def _transformers_whisper() -> Any:
    try:
        from transformers.models.whisper import modeling_whisper
    except ImportError as err:
        raise ImportError("the whisper audio adapter needs transformers: pip install transformers") from err
    return modeling_whisper


@register_adapter("audio/whisper")
class WhisperAdapter(AudioAdapter):
    """A transformers `WhisperEncoder` (state keys `encoder.<transformers' own keys>`) + pooling + projector.

    Token count of a clip of T samples: ceil(T / 320) encoder positions (T < the window), ceil(that / pool) after
    pooling, then the projector's length (`diffa_conv`: // 4).

    >>> from mmdiff.adapters import build_adapter
    >>> adapter = build_adapter("audio/whisper", d_model=8, pretrained=False, whisper_config={"num_mel_bins": 80,
    ...     "d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
    ...     "max_source_positions": 50})
    >>> adapter.window_seconds, adapter.num_tokens((16000,)), adapter.num_tokens((321,))
    (1.0, 50, 2)
    """

    config_class: ClassVar[type] = WhisperAdapterConfig
    config: WhisperAdapterConfig

    def __init__(self, config: WhisperAdapterConfig, *, load_pretrained: bool | None = None) -> None:
        super().__init__(config)
        # an encoder left out of checkpoints is read from its source every time (a checkpoint will not bring it)
        load = config.pretrained if load_pretrained is None or not config.save_encoder else bool(load_pretrained)
        self.encoder = self._build_encoder(load)
        self._cache: collections.OrderedDict[bytes, Tensor] = collections.OrderedDict()
        self.config = replace(config, whisper_config=self._encoder_fields(self.encoder.config))
        self.projector = build_projector(config.projector, self.encoder_width, config.d_model)
        if config.freeze:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def _build_encoder(self, load_pretrained: bool) -> nn.Module:
        whisper = _transformers_whisper()
        cfg, name = self.config, self.config.model_name
        if load_pretrained and not name:
            raise ValueError("a pretrained whisper adapter needs model_name: a Whisper folder or hub id (or set "
                             "pretrained=False to build from whisper_config)")
        try:
            if load_pretrained:
                encoder = whisper.WhisperModel.from_pretrained(_whisper_folder(name)).get_encoder()
                if cfg.whisper_config is not None and self._encoder_fields(encoder.config) != self._encoder_fields(
                        whisper.WhisperConfig(**cfg.whisper_config)):
                    raise ValueError(f"the Whisper checkpoint {name!r} has encoder config "
                                     f"{self._encoder_fields(encoder.config)}, not the adapter's whisper_config "
                                     f"{cfg.whisper_config}; drop whisper_config or name the matching checkpoint")
                return encoder
            fields = cfg.whisper_config if cfg.whisper_config is not None else \
                self._encoder_fields(whisper.WhisperConfig.from_pretrained(_whisper_folder(name)))
            return whisper.WhisperEncoder(whisper.WhisperConfig(**fields))
        except OSError as err:  # HubCheckpointNotFound included
            raise RuntimeError(
                f"could not read the Whisper checkpoint {name!r} ({type(err).__name__}: {err}); give a local folder "
                "(e.g. one written by scripts/convert_whisper_ct2.py) or download the hub id once while online "
                f"(`huggingface-cli download {name}`); with pretrained=False, whisper_config alone builds the encoder"
            ) from err

    @staticmethod
    def _encoder_fields(whisper_config: Any) -> dict[str, Any]:
        return {k: getattr(whisper_config, k) for k in WHISPER_ENCODER_FIELDS}

    @property
    def unsaved_prefixes(self) -> tuple[str, ...]:
        return () if self.config.save_encoder else ("encoder.",)

    @property
    def window_seconds(self) -> float:
        """Whisper's fixed window: 2 * max_source_positions frames of 10 ms (30 s)."""
        frames = WHISPER_STRIDE * int(self.config.whisper_config["max_source_positions"])  # type: ignore[index]
        return frames * WHISPER_HOP / self.sampling_rate

    @property
    def encoder_width(self) -> int:
        return int(self.config.whisper_config["d_model"])  # type: ignore[index]

    def train(self, mode: bool = True) -> WhisperAdapter:
        super().train(mode)
        if self.config.freeze:
            self.encoder.eval()  # a frozen encoder keeps dropout and layer drop off
        return self

    def _positions(self, samples: int) -> int:
        frames = -(-samples // WHISPER_HOP)  # frame j holds sample 160 j: ceil(samples / 160) frames
        return -(-frames // WHISPER_STRIDE)  # ceil(frames / 2) = ceil(samples / 320) encoder positions

    def _pooled_length(self, positions: int) -> int:
        return -(-positions // self.config.pool)

    def _features(self, clips: list[Tensor]) -> tuple[Tensor, Tensor]:
        n_mels = int(self.config.whisper_config["num_mel_bins"])  # type: ignore[index]
        if not self.config.trim:
            features, mask = whisper_log_mel(clips, n_mels=n_mels, pad_to=self.window_seconds)  # (B, M, 2 * P)
            return features, mask.sum(dim=1)
        # each clip alone, zero-padded to whole encoder positions (320 samples): ceil(T / 320) of them, as untrimmed
        step = WHISPER_HOP * WHISPER_STRIDE
        rows = [whisper_log_mel(F.pad(c, (0, -len(c) % step)), n_mels=n_mels, pad_to=None).features[0]
                for c in clips]  # (M, F_i), F_i = 2 * ceil(T_i / 320)
        frames = torch.tensor([r.shape[1] for r in rows], dtype=torch.long)
        return torch.stack([F.pad(r, (0, int(frames.max()) - r.shape[1])) for r in rows]), frames

    def _encode(self, features: Tensor, frames: Tensor) -> list[Tensor]:
        trainable = any(p.requires_grad for p in self.encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            if not self.config.cache_size:
                return self._run_encoder(features, frames)
            keys = [hashlib.blake2b(features[i, :, : int(n)].cpu().numpy().tobytes(), digest_size=16).digest()
                    for i, n in enumerate(frames)]
            todo = sorted({i for i, k in enumerate(keys) if k not in self._cache})
            if todo:
                fresh = self._run_encoder(features[todo], frames[todo])
                for i, states in zip(todo, fresh, strict=True):
                    self._cache[keys[i]] = states.detach()
                    if len(self._cache) > self.config.cache_size:
                        self._cache.popitem(last=False)
            out = []
            for key in keys:
                self._cache.move_to_end(key)
                out.append(self._cache[key])
            return out

    def _run_encoder(self, features: Tensor, frames: Tensor) -> list[Tensor]:
        """Features (B, M, F) and real frames (B,) -> per clip its encoder positions (ceil(frames / 2), C)."""
        param = next(self.encoder.parameters())
        keep = (frames + WHISPER_STRIDE - 1) // WHISPER_STRIDE  # (B,) positions covering each clip
        if not self.config.trim:
            states = self.encoder(input_features=features.to(param.dtype)).last_hidden_state  # (B, P, C)
            return [states[i, : int(n)] for i, n in enumerate(keep)]
        return [self._trimmed(features[i : i + 1, :, : int(f)].to(param.dtype))[0, : int(n)]
                for i, (f, n) in enumerate(zip(frames, keep, strict=True))]

    def _trimmed(self, features: Tensor) -> Tensor:
        """`WhisperEncoder.forward` without its fixed-window check: (1, M, F) -> (1, F / 2, C), positions from 0."""
        enc = self.encoder
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(features)))).transpose(1, 2)  # (1, P, C)
        if x.shape[1] > enc.embed_positions.num_embeddings:
            raise ValueError(f"{x.shape[1]} encoder positions exceed Whisper's {enc.embed_positions.num_embeddings}")
        x = F.dropout(x + enc.embed_positions.weight[: x.shape[1]], p=enc.dropout, training=enc.training)
        for layer in enc.layers:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        return enc.layer_norm(x)

    def _pool(self, states: Tensor) -> Tensor:
        """(n, C) -> (ceil(n / pool), C): the mean of each group of `pool` positions (the last group may be short)."""
        k = self.config.pool
        if k == 1:
            return states
        n, width = states.shape
        groups = -(-n // k)
        padded = F.pad(states, (0, 0, 0, groups * k - n)).view(groups, k, width)  # (G, k, C)
        sizes = torch.full((groups,), k, device=states.device, dtype=states.dtype)
        sizes[-1] = n - (groups - 1) * k
        return padded.sum(dim=1) / sizes[:, None]  # (G, C)

