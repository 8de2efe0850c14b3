"""MAGVIT-v2 image tokenizer with lookup-free quantisation (LFQ), native PyTorch, as MMaDA uses it.

Implements the image tokenizer of "Language Model Beats Diffusion -- Tokenizer is Key to Visual Generation"
(MAGVIT-v2, Yu et al., 2023): a convolutional VQGAN-style encoder/decoder whose 13 latent channels are quantised
without a codebook lookup, each channel to its sign, so a latent vector is one of 2**13 = 8192 codes. The layout
and numerics follow the Show-o re-implementation whose weights are on the hub as `showlab/magvitv2`, the tokenizer
loaded by MMaDA ("MMaDA: Multimodal Large Diffusion Language Models", Yang et al., 2025) and Show-o (Xie et al.,
2024). The code here is written from scratch; no public code is imported.

Followed (public code read with the search tool, not copied):
    * showlab/Show-o `models/modeling_magvitv2.py`: classes `VQGANEncoder`, `VQGANDecoder`, `LFQuantizer` and
      `MAGVITv2` (an older revision names it `MAGViTv2`). `MAGVITv2.__init__` takes no arguments and builds
      `self.encoder = VQGANEncoder()`, `self.decoder = VQGANDecoder()`, `self.quantize = LFQuantizer()` with their
      constructor defaults, so the architecture is fixed by those defaults, not by config.json.
    * showlab/Show-o `models/common_modules.py`: `ResnetBlock`, `AttnBlock`, `Downsample`, `Upsample`,
      `Normalize`, `nonlinearity` (the taming-transformers building blocks).
    * showlab/Show-o `models/modeling_utils.py`: the muse-style `ModelMixin`/`ConfigMixin` that saves and loads
      the checkpoint: weights file `pytorch_model.bin` (`torch.save` of the full `state_dict()`; its
      `from_pretrained` looks for that file name only), `config.json` holding only the metadata `_class_name` and
      `_version` (the decorated `__init__` has no arguments), and, with the default `low_cpu_mem_usage=True`, an
      error if any `state_dict()` key is missing, so the file must also hold the two LFQ buffers.
    * Gen-Verse/MMaDA `inference_mmu.py`: `from models import MAGVITv2`, `MAGVITv2.from_pretrained(
      config.model.vq_model.vq_model_name)` ("showlab/magvitv2"), `vq_model.get_code(image) + len(text_tokenizer)`
      and images decoded with `clamp((x + 1) / 2, 0, 1)`; its `training/utils.py` `image_transform`: resize
      (bicubic) + centre crop to `resolution`, `ToTensor`, `Normalize(0.5, 0.5)`, i.e. pixels in [-1, 1].
      MMaDA configs: `codebook_size: 8192`, `num_vq_tokens: 1024` (512 x 512 images -> 32 x 32 codes).
    * TencentARC/Open-MAGVIT2 (reference only): its LFQ uses the same most-significant-bit-first index
      (`2 ** arange(D - 1, -1, -1)`); its encoder/decoder differ (no attention, adaptive norms) and are NOT
      load-compatible with `showlab/magvitv2`.

Verified against those files (and re-checked by tests/test_magvit.py, which rebuilds the public key list and the
public forward pass independently):
    * Config names: the constructor arguments `ch, ch_mult, num_res_blocks, attn_resolutions, dropout, in_ch,
      out_ch, resolution, z_channels, double_z` (encoder and decoder) and `num_codebook_entry, codebook_dim, beta,
      entropy_multiplier, commit_loss_multiplier` (quantizer) are the field names of `VQGANConfig` and
      `LFQConfig`, nested under the public submodule names `encoder`, `decoder`, `quantize`. Defaults are the
      public ones: encoder `ch_mult [1, 2, 2, 4, 4]`, `num_res_blocks [4, 3, 4, 3, 4]`; decoder
      `ch_mult [1, 1, 2, 2, 4]`, `num_res_blocks [4, 4, 3, 4, 3]`; `ch 128`, `z_channels 13`,
      `attn_resolutions [5]` with `resolution 256` (so no level has attention: 256/128/64/32/16 never equal 5;
      only the middle `attn_1` attends), `codebook_dim 13`, `beta 0.25`, multipliers `0.1`.
    * Submodule names -> state-dict keys, kept 1:1 (the key map is the identity; `PUBLIC_KEY_MAP` documents it):
      `encoder.conv_in`, `encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}`,
      `encoder.down.{i}.attn.{j}.{norm,q,k,v,proj_out}`, `encoder.down.{i}.downsample.conv` (all levels but the
      last), `encoder.mid.{block_1,attn_1,block_2}`, `encoder.norm_out`, `encoder.conv_out`, `encoder.quant_conv`;
      `decoder.post_quant_conv`, `decoder.conv_in`, `decoder.mid.*`, `decoder.up.{i}.block.{j}.*`,
      `decoder.up.{i}.upsample.conv` (all levels but 0; `up[i]` is level i, built top-down and prepended),
      `decoder.norm_out`, `decoder.conv_out`; buffers `quantize.embedding` (8192, 13) float and
      `quantize.power_vals` (13,) int64. `temb_proj` does not exist (`temb_channels = 0`); `nin_shortcut` (1x1)
      exists only where a block changes width; no `conv_shortcut`.
    * Norm: `GroupNorm(32 groups, eps 1e-6, affine)`; nonlinearity swish `x * sigmoid(x)`; `Downsample` pads
      (0, 1, 0, 1) with zeros then a 3x3 stride-2 conv; `Upsample` is nearest x2 then a 3x3 conv; attention is
      single-head over the H*W positions with scale C**-0.5 and a residual; the encoder ends norm -> swish ->
      `conv_out` -> 1x1 `quant_conv`; the decoder starts with 1x1 `post_quant_conv` -> `conv_in` -> mid.
    * LFQ: bit_c = 1 iff z_c > 0 (z_c == 0 gives bit 0 and the value -1); quantised value = 2 * bit - 1;
      index = sum_c bit_c * 2 ** (D - 1 - c), channel 0 the most significant bit (`power_vals`); the inverse is
      `embedding[index]` with `embedding[i, c] = 2 * ((i >> (D - 1 - c)) & 1) - 1`. Codes are flattened row-major
      (`get_code` returns (B, h*w)); `decode_code(indices, shape=(h, w))` reshapes row-major (square if no
      shape). Losses: commitment `mean((zq.detach() - z)**2) + beta * mean((zq - z.detach())**2)` times
      `commit_loss_multiplier`; entropy (per-bit, logits -(z - 1)**2 and -(z + 1)**2): mean per-sample entropy
      minus entropy of the mean, times `entropy_multiplier`.
    * Preprocessing: RGB in [-1, 1] (`(x - 0.5) / 0.5`); MMaDA uses 512 x 512 (1024 codes), Show-o 256 x 256
      (256 codes); decoded pixels are mapped back with `clamp((x + 1) / 2, 0, 1)`. Downsampling is
      2 ** (len(ch_mult) - 1) = 16.
    * Size of the public architecture as built here: 382 state-dict entries (380 learned tensors + the 2 LFQ
      buffers), 95,387,004 parameters (encoder 55,439,171, decoder 39,947,833), about 382 MB in float32.

The hub repo (read from a stored copy of huggingface.co/showlab/magvitv2/tree/main, license MIT): `config.json`
(66 bytes: metadata only) and `pytorch_model.safetensors` (382 MB, i.e. float32 at the 95.4M parameters counted
below); its history deletes the earlier `pytorch_model.bin`. `pytorch_model.safetensors` is the muse-style
`SAFETENSORS_WEIGHTS_NAME` of Show-o's `models/modeling_utils.py`, one of the `WEIGHT_FILES` read here, so the
public repo loads strictly as it is. A folder that holds only pickle weights (an older snapshot, a local
`torch.save`) is still refused, never unpickled.

The registered discrete adapter "image/magvitv2" (`MagvitV2Tokenizer`, config `MagvitV2TokenizerConfig`) wraps the
tokenizer for models whose image codes live in the shared vocabulary (MMaDA's `mmdiff.convert.mmada`): weights
named by hub id or folder load on first use (encode / decode / `state_dict`), so a model whose image side is never
used needs neither the download nor the memory, and an offline machine without them gets an error naming the repo.

Not verified (no hub access here): the exact bytes of the hub config.json (a 66-byte file fits
`{"_class_name": "MAGVITv2", "_diffusers_version": "..."}`, both keys accepted and dropped here), numerical parity
with the real weights (reconstruction quality) and the MMaDA repo's own copy of `models/modeling_magvitv2.py` (not
in the searchable index; MMaDA imports `MAGVITv2` from its `models` package, which follows Show-o).

>>> import torch
>>> from mmdiff.adapters.magvit import MagvitV2, MagvitV2Config
>>> tiny = MagvitV2Config.from_dict({
...     "encoder": {"ch": 32, "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": [1, 1, 1, 1, 1], "resolution": 32},
...     "decoder": {"ch": 32, "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": [1, 1, 1, 1, 1], "resolution": 32}})
>>> model = MagvitV2(tiny).eval()
>>> codes = model.encode(torch.zeros(1, 3, 32, 32))
>>> codes.shape, codes.dtype, model.codebook_size, model.downsample
(torch.Size([1, 2, 2]), torch.int64, 8192, 16)
>>> model.decode(codes).shape
torch.Size([1, 3, 32, 32])
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiff.adapters.base import AdapterConfig, DiscreteAdapter, register_adapter
from mmdiff.adapters.images import ImageSpec, pixels_to_images, preprocess_images
from mmdiff.dataclass_io import from_dict, to_dict
from mmdiff.hub import HubCheckpointNotFound, is_hub_id, resolve_checkpoint
from mmdiff.io import PICKLE_SUFFIXES, load_json, load_safetensors, load_state_dict_strict, save_json, save_safetensors

__all__ = [
    "VQGANConfig",
    "LFQConfig",
    "MagvitV2Config",
    "LFQOutput",
    "LFQuantizer",
    "VQGANEncoder",
    "VQGANDecoder",
    "MagvitV2",
    "MagvitV2TokenizerConfig",
    "MagvitV2Tokenizer",
    "MAGVITV2_REPO",
    "bits_to_indices",
    "indices_to_bits",
    "PUBLIC_KEY_MAP",
    "PUBLIC_CLASS_NAMES",
    "CONFIG_METADATA_KEYS",
    "WEIGHT_FILES",
    "VALUE_RANGE",
    "MMADA_RESOLUTION",
]

PUBLIC_CLASS_NAMES = ("MAGVITv2", "MAGViTv2")  # `_class_name` of the public config.json (both spellings exist)
CONFIG_METADATA_KEYS = ("_class_name", "_version", "_name_or_path", "_diffusers_version")
PUBLIC_KEY_MAP: dict[str, str] = {}  # public checkpoint key prefix -> module key prefix: identical names (1:1)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.safetensors", "diffusion_pytorch_model.safetensors")
DERIVED_BUFFERS = ("quantize.embedding", "quantize.power_vals")  # fixed functions of codebook_dim, not learned
VALUE_RANGE = (-1.0, 1.0)  # pixel range the encoder expects and the decoder produces (Normalize(0.5, 0.5))
MAGVITV2_REPO = "showlab/magvitv2"  # the hub repo MMaDA's configs name (model.vq_model.vq_model_name)
MMADA_RESOLUTION = 512  # MMaDA: 512 x 512 images -> 32 x 32 = 1024 codes (Show-o: 256 -> 16 x 16)
GROUPS = 32  # GroupNorm groups of the public `Normalize`


# ---------------------------------------------------------------------------------------------------- configs


@dataclass
class VQGANConfig:
    """Encoder or decoder hyper-parameters, named as the public `VQGANEncoder`/`VQGANDecoder` arguments.

    Defaults are the public encoder's; `MagvitV2Config` sets the decoder's own defaults.
    """

    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4, 4])
    num_res_blocks: list[int] = field(default_factory=lambda: [4, 3, 4, 3, 4])
    attn_resolutions: list[int] = field(default_factory=lambda: [5])
    dropout: float = 0.0
    in_ch: int = 3
    out_ch: int = 3
    resolution: int = 256
    z_channels: int = 13
    double_z: bool = False

    def validate(self, where: str) -> None:
        """Raises ValueError naming the field when the config cannot build the public architecture."""
        if len(self.ch_mult) < 1 or len(self.num_res_blocks) != len(self.ch_mult):
            raise ValueError(
                f"{where}: num_res_blocks needs one entry per ch_mult level, got {self.num_res_blocks} for "
                f"ch_mult {self.ch_mult}"
            )
        bad = [self.ch * m for m in [1, *self.ch_mult] if (self.ch * m) % GROUPS]
        if bad:
            raise ValueError(
                f"{where}: widths {bad} are not divisible by the {GROUPS} GroupNorm groups; pick ch "
                f"and ch_mult so that every ch * mult is a multiple of {GROUPS}"
            )
        if self.double_z:
            raise ValueError(f"{where}.double_z must be false: LFQ quantises z_channels channels directly")

    @property
    def downsample(self) -> int:
        """Spatial factor between pixels and codes: one stride-2 step per level but the last."""
        return 2 ** (len(self.ch_mult) - 1)


def _decoder_defaults() -> VQGANConfig:
    return VQGANConfig(ch_mult=[1, 1, 2, 2, 4], num_res_blocks=[4, 4, 3, 4, 3])


@dataclass
class LFQConfig:
    """Quantizer hyper-parameters, named as the public `LFQuantizer` arguments (codebook size 2**codebook_dim)."""

    num_codebook_entry: int = -1  # unused by the public code (the size is 2**codebook_dim); kept for the name
    codebook_dim: int = 13
    beta: float = 0.25
    entropy_multiplier: float = 0.1
    commit_loss_multiplier: float = 0.1


@dataclass
class MagvitV2Config:
    """The whole tokenizer: `encoder`, `decoder` and `quantize` sections named as the public submodules.

    The public config.json holds only metadata (`_class_name`, `_version`): `from_dict` accepts and drops those
    keys, so that file yields the public default architecture. Every other key is strict.

    >>> MagvitV2Config.from_dict({"_class_name": "MAGVITv2", "_version": "0.0.1"}).decoder.ch_mult
    [1, 1, 2, 2, 4]
    """

    encoder: VQGANConfig = field(default_factory=VQGANConfig)
    decoder: VQGANConfig = field(default_factory=_decoder_defaults)
    quantize: LFQConfig = field(default_factory=LFQConfig)

    def __post_init__(self) -> None:
        self.encoder.validate("encoder")
        self.decoder.validate("decoder")
        dim = self.quantize.codebook_dim
        if not 1 <= dim <= 62:
            raise ValueError(f"quantize.codebook_dim must be in [1, 62] (int64 indices), got {dim}")
        if self.encoder.z_channels != dim or self.decoder.z_channels != dim:
            raise ValueError(
                f"encoder.z_channels ({self.encoder.z_channels}), decoder.z_channels ({self.decoder.z_channels}) "
                f"and quantize.codebook_dim ({dim}) must be equal: LFQ quantises each latent channel to one bit"
            )
        if self.encoder.downsample != self.decoder.downsample:
            raise ValueError(
                f"encoder downsamples by {self.encoder.downsample} but decoder upsamples by "
                f"{self.decoder.downsample}: give both ch_mult lists the same length"
            )

    @property
    def codebook_size(self) -> int:
        return 2**self.quantize.codebook_dim

    @property
    def downsample(self) -> int:
        return self.encoder.downsample

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MagvitV2Config:
        """Strict: unknown keys raise naming them; the public metadata keys are checked and dropped."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a MAGVIT-v2 config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        name = data.get("_class_name")
        if name is not None and name not in PUBLIC_CLASS_NAMES:
            raise ValueError(f"config.json describes a {name!r}, not a MAGVIT-v2 tokenizer ({PUBLIC_CLASS_NAMES})")
        for key in CONFIG_METADATA_KEYS:
            data.pop(key, None)
        return from_dict(cls, data, where="MagvitV2Config")

    def to_dict(self) -> dict[str, Any]:
        """config.json form: the public `_class_name` plus every architecture field."""
        fields = {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"_class_name": PUBLIC_CLASS_NAMES[0], **fields}


# ------------------------------------------------------------------------------------------------ LFQ helpers


def _power_vals(dim: int, device: torch.device | None = None) -> Tensor:
    """(dim,) int64 weights 2**(dim-1), ..., 2, 1: channel 0 is the most significant bit."""
    return 2 ** torch.arange(dim - 1, -1, -1, dtype=torch.long, device=device)


def bits_to_indices(bits: Tensor) -> Tensor:
    """(..., D) bits (bool or 0/1) -> (...) int64 indices, channel 0 the most significant bit.

    >>> bits_to_indices(torch.tensor([1, 0, 1, 1]))
    tensor(11)
    """
    bits = bits.long()
    return (bits * _power_vals(bits.shape[-1], bits.device)).sum(-1)


def indices_to_bits(indices: Tensor, dim: int) -> Tensor:
    """(...) integer indices -> (..., dim) int64 bits in {0, 1}, channel 0 the most significant bit.

    >>> indices_to_bits(torch.tensor(11), 4)
    tensor([1, 0, 1, 1])
    """
    shifts = torch.arange(dim - 1, -1, -1, dtype=torch.long, device=indices.device)
    return (indices.long().unsqueeze(-1) >> shifts) & 1


class LFQOutput(NamedTuple):
    """What `LFQuantizer.forward` returns: quantised latents, indices and the (weighted) training losses."""

    z: Tensor  # (B, D, h, w) values in {-1, +1}, straight-through gradients
    indices: Tensor  # (B, h, w) int64 codes in [0, 2**D)
    quantizer_loss: Tensor  # commitment loss * commit_loss_multiplier
    entropy_loss: Tensor  # (per-sample entropy - entropy of the mean) * entropy_multiplier


class LFQuantizer(nn.Module):
    """Lookup-free quantizer: each latent channel -> its sign; the D signs -> one index in [0, 2**D).

    Buffers (saved, as in the public checkpoint): `embedding` (2**D, D) float, the +-1 vector of every code, and
    `power_vals` (D,) int64, the bit weights.

    >>> q = LFQuantizer(LFQConfig(codebook_dim=3))
    >>> out = q(torch.tensor([0.5, -2.0, 0.1]).reshape(1, 3, 1, 1))
    >>> out.indices.tolist(), out.z.flatten().tolist()
    ([[[5]]], [1.0, -1.0, 1.0])
    """

    def __init__(self, config: LFQConfig) -> None:
        super().__init__()
        self.config = config
        self.e_dim = config.codebook_dim
        self.codebook_size = 2**config.codebook_dim
        bits = indices_to_bits(torch.arange(self.codebook_size), self.e_dim)  # (2**D, D)
        self.register_buffer("embedding", bits.float() * 2 - 1)
        self.register_buffer("power_vals", _power_vals(self.e_dim))

    def get_indices(self, z_q: Tensor) -> Tensor:
        """(B, D, h, w) latents -> (B, h, w) int64 codes (bit = value > 0)."""
        return ((z_q > 0).long() * self.power_vals.view(1, -1, 1, 1)).sum(1)

    def get_codebook_entry(self, indices: Tensor) -> Tensor:
        """(B, h, w) codes -> (B, D, h, w) +-1 latents."""
        return self.embedding[indices].permute(0, 3, 1, 2).contiguous()  # (B, h, w, D) -> (B, D, h, w)

    def forward(self, z: Tensor) -> LFQOutput:
        """Quantises (B, D, h, w) latents; gradients pass straight through the sign."""
        if z.dim() != 4 or z.shape[1] != self.e_dim:
            raise ValueError(f"LFQuantizer expects (B, {self.e_dim}, h, w) latents, got {tuple(z.shape)}")
        hard = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
        z_q = z + (hard - z).detach()
        commit = F.mse_loss(z_q.detach(), z) + self.config.beta * F.mse_loss(z_q, z.detach())
        return LFQOutput(
            z=z_q,
            indices=self.get_indices(z_q),
            quantizer_loss=commit * self.config.commit_loss_multiplier,
            entropy_loss=self._entropy_gap(z) * self.config.entropy_multiplier,
        )

    @staticmethod
    def _entropy_gap(z: Tensor) -> Tensor:
        """Per-bit entropy of p(bit) = softmax(-(z - 1)**2, -(z + 1)**2): mean entropy - entropy of the mean."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, D)
        logits = torch.stack([-((flat - 1) ** 2), -((flat + 1) ** 2)], dim=-1)  # (N, D, 2)
        log_p = logits.log_softmax(-1)
        entropy = -(log_p.exp() * log_p).sum(-1).mean()
        mean_p = log_p.exp().mean(0)  # (D, 2)
        mean_entropy = -(mean_p * mean_p.clamp_min(1e-30).log()).sum(-1).mean()
        return entropy - mean_entropy

    def extra_repr(self) -> str:
        return f"codebook_dim={self.e_dim}, codebook_size={self.codebook_size}"


# ---------------------------------------------------------------------------------------------- building blocks


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm -> swish -> 3x3 conv, twice (dropout before the second conv), plus a 1x1 shortcut if widths differ."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all h*w positions (1x1 conv q, k, v, proj_out) with a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (conv(normed).reshape(b, 1, c, h * w).transpose(-1, -2) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, h*w, C), scale C**-0.5
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a 3x3 stride-2 conv (halves even sizes)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks), `attn` (empty or one AttnBlock per block), optional resampler."""

    def __init__(self, widths: Sequence[tuple[int, int]], use_attn: bool, dropout: float) -> None:
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(i, o, dropout) for i, o in widths])
        self.attn = nn.ModuleList([AttnBlock(o) for _, o in widths] if use_attn else [])

    def run_blocks(self, h: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def _level_widths(block_in: int, block_out: int, count: int) -> list[tuple[int, int]]:
    return [(block_in if j == 0 else block_out, block_out) for j in range(count)]


class VQGANEncoder(nn.Module):
    """(B, in_ch, H, W) pixels -> (B, z_channels, H/f, W/f) latents, f = 2**(levels - 1)."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        ch, mults = config.ch, config.ch_mult
        self.conv_in = nn.Conv2d(config.in_ch, ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, block_in = config.resolution, ch
        for level, mult in enumerate(mults):
            block_out = ch * mult
            widths = _level_widths(block_in, block_out, config.num_res_blocks[level])
            down = _Level(widths, res in config.attn_resolutions, config.dropout)
            block_in = block_out
            if level != len(mults) - 1:
                down.downsample = Downsample(block_in)
                res //= 2
            self.down.append(down)
        self.mid = _Mid(block_in, config.dropout)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for down in self.down:
            h = down.run_blocks(h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = self.mid(h)
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class VQGANDecoder(nn.Module):
    """(B, z_channels, h, w) latents -> (B, out_ch, h*f, w*f) pixels; `up[i]` is level i (0 = full resolution)."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        ch, mults = config.ch, config.ch_mult
        block_in = ch * mults[-1]
        res = config.resolution // 2 ** (len(mults) - 1)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)
        self.conv_in = nn.Conv2d(config.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, config.dropout)
        levels: list[_Level] = []
        for level in reversed(range(len(mults))):  # built top-down as in the public code, stored by level index
            block_out = ch * mults[level]
            widths = _level_widths(block_in, block_out, config.num_res_blocks[level])
            up = _Level(widths, res in config.attn_resolutions, config.dropout)
            block_in = block_out
            if level != 0:
                up.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, up)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for up in reversed(self.up):
            h = up.run_blocks(h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------------- tokenizer


class MagvitV2(nn.Module):
    """MAGVIT-v2 tokenizer: pixels in [-1, 1] <-> (B, H/16, W/16) codes in [0, 8192), `showlab/magvitv2` layout.

    Submodules carry the public names (`encoder`, `decoder`, `quantize`), so the public state dict loads 1:1;
    `model.quantize(z)` is the LFQ step (an `LFQOutput` with codes and losses).

    >>> with torch.device("meta"):  # the public architecture, without allocating its weights
    ...     model = MagvitV2(MagvitV2Config())
    >>> model.codebook_size, model.downsample, len(model.state_dict())
    (8192, 16, 382)
    """

    def __init__(self, config: MagvitV2Config | None = None) -> None:
        super().__init__()
        self.config = config or MagvitV2Config()
        self.encoder = VQGANEncoder(self.config.encoder)
        self.decoder = VQGANDecoder(self.config.decoder)
        self.quantize = LFQuantizer(self.config.quantize)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def downsample(self) -> int:
        return self.config.downsample

    # -------------------------------------------------------------------------------------------- checks

    def check_image_size(self, height: int, width: int) -> None:
        """Raises ValueError naming valid sizes unless both sides are positive multiples of `downsample`."""
        f = self.downsample
        bad = [(name, s) for name, s in (("height", height), ("width", width)) if s <= 0 or s % f]
        if bad:
            hints = ", ".join(f"{name} {s} -> use {_nearest_multiples(s, f)}" for name, s in bad)
            raise ValueError(
                f"MAGVIT-v2 needs image sides divisible by its downsampling factor {f} (e.g. 256 or 512; "
                f"MMaDA uses {MMADA_RESOLUTION}); got {height}x{width}: {hints}. Resize or crop the image first"
            )

    def check_codes(self, codes: Tensor) -> None:
        """Raises if codes are not integers in [0, codebook_size)."""
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got range [{int(codes.min())}, {int(codes.max())}]; "
                "subtract the vocabulary offset of the image range before decoding"
            )

    # ----------------------------------------------------------------------------------------- encode/decode

    def encode_latents(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) pixels in [-1, 1] -> (B, D, H/16, W/16) continuous pre-quantisation latents."""
        if pixels.dim() != 4 or pixels.shape[1] != self.config.encoder.in_ch:
            raise ValueError(
                f"expected pixels of shape (B, {self.config.encoder.in_ch}, H, W), got {tuple(pixels.shape)}"
            )
        self.check_image_size(pixels.shape[-2], pixels.shape[-1])
        if pixels.numel() and (pixels.min() < -1.01 or pixels.max() > 1.01):
            raise ValueError(
                f"pixels must lie in [-1, 1] (got [{float(pixels.min()):.3g}, {float(pixels.max()):.3g}]); "
                "map [0, 1] images with MagvitV2.preprocess (x * 2 - 1), 0..255 images with x / 127.5 - 1"
            )
        return self.encoder(pixels)

    def encode(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) pixels in [-1, 1] -> (B, H/16, W/16) int64 codes in [0, 8192)."""
        return self.quantize(self.encode_latents(pixels)).indices

    def decode(self, codes: Tensor) -> Tensor:
        """(B, h, w) codes -> (B, 3, 16h, 16w) pixels, nominally in [-1, 1] (not clamped; see `postprocess`)."""
        if codes.dim() != 3:
            raise ValueError(f"decode expects a (B, h, w) code grid, got shape {tuple(codes.shape)}")
        self.check_codes(codes)
        return self.decoder(self.quantize.get_codebook_entry(codes.to(self.quantize.embedding.device)))

    def forward(self, pixels: Tensor) -> tuple[Tensor, LFQOutput]:
        """Reconstruction for training: (B, 3, H, W) -> (reconstruction, LFQOutput with codes and losses)."""
        quantized = self.quantize(self.encode_latents(pixels))
        return self.decoder(quantized.z), quantized

    def get_code(self, pixels: Tensor) -> Tensor:
        """Public-API form: (B, 3, H, W) -> (B, h*w) codes, row-major (what MMaDA offsets into its vocabulary)."""
        return self.encode(pixels).flatten(1)

    def decode_code(self, codebook_indices: Tensor, shape: tuple[int, int] | None = None) -> Tensor:
        """Public-API form: (B, h*w) row-major codes -> pixels; `shape=(h, w)`, square when omitted."""
        b, n = codebook_indices.shape
        if shape is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"{n} codes per image are not a square grid; pass shape=(h, w)")
            shape = (side, side)
        if shape[0] * shape[1] != n:
            raise ValueError(f"shape {tuple(shape)} holds {shape[0] * shape[1]} codes, got {n} per image")
        return self.decode(codebook_indices.reshape(b, shape[0], shape[1]))

    @staticmethod
    def preprocess(images: Tensor) -> Tensor:
        """(B, 3, H, W) images in [0, 1] -> [-1, 1] (the public `Normalize(mean=0.5, std=0.5)`)."""
        return images * 2.0 - 1.0

    @staticmethod
    def postprocess(pixels: Tensor) -> Tensor:
        """Decoder output -> images in [0, 1] (the public `clamp((x + 1) / 2, 0, 1)`)."""
        return ((pixels + 1.0) / 2.0).clamp(0.0, 1.0)

    # ------------------------------------------------------------------------------------------------ I/O

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Writes config.json (public `_class_name` + all fields) and model.safetensors (public key names)."""
        folder = Path(folder)
        save_json(folder / "config.json", self.config.to_dict())
        save_safetensors(folder / WEIGHT_FILES[0], self.state_dict())

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> MagvitV2:
        """Loads a folder with config.json and safetensors weights in the public key layout, strictly.

        The public `showlab/magvitv2` config.json (metadata only) gives the public architecture. Pickle weights
        (`pytorch_model.bin`, what the public loader writes) are refused, never unpickled: convert them once, in a
        trusted environment, with `safetensors.torch.save_file(torch.load("pytorch_model.bin"),
        "model.safetensors")`. The LFQ buffers `quantize.embedding` / `quantize.power_vals` may be absent (they
        are recomputed); when present they must equal the public bit order.

        Args:
            folder: local folder (no hub access).
            device: where to put the weights.
            dtype: optional floating dtype for parameters (buffers keep theirs).

        Returns:
            the model in eval mode.
        """
        folder = Path(folder)
        config = MagvitV2Config.from_dict(load_json(folder / "config.json"))
        state = load_safetensors(_weights_file(folder), device="cpu")
        model = cls(config)
        load_state_dict_strict(model, model.map_public_state(state), source=f"{folder}")
        model.to(device=device)
        if dtype is not None:
            model.to(dtype=dtype)  # the +-1 embedding is exact in any float dtype; power_vals stays int64
        return model.eval()

    def map_public_state(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Public checkpoint keys -> this module's keys (identity names); fills/validates the derived LFQ buffers."""
        mapped = {_apply_key_map(k): v for k, v in state.items()}
        own = self.state_dict()
        for key in DERIVED_BUFFERS:
            if key not in mapped:
                mapped[key] = own[key].clone()
            elif mapped[key].shape == own[key].shape and not torch.equal(mapped[key].to(own[key].dtype), own[key]):
                raise ValueError(
                    f"checkpoint buffer {key} differs from the public LFQ bit order (channel 0 = most significant "
                    "bit, value = 2 * bit - 1); this checkpoint was not made by the showlab MAGVIT-v2 code"
                )
        return mapped


def _apply_key_map(key: str) -> str:
    for old, new in PUBLIC_KEY_MAP.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}); mmdiff never unpickles. Convert once in a "
            "trusted environment: safetensors.torch.save_file(torch.load('pytorch_model.bin'), "
            "'model.safetensors') and put model.safetensors next to config.json"
        )
    raise FileNotFoundError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}")


def _nearest_multiples(size: int, factor: int) -> str:
    below = (size // factor) * factor
    above = below + factor
    return f"{below} or {above}" if below > 0 else f"{above}"


# ------------------------------------------------------------------------------------------- the adapter


@dataclass
class MagvitV2TokenizerConfig(AdapterConfig):
    """Config of the "image/magvitv2" discrete tokenizer.

    Args:
        weights: where the trained weights come from: a hub repo id (MMaDA's `showlab/magvitv2`), a local folder
            (config.json + safetensors in the public layout), or None for random weights (training from scratch,
            tests). Named weights load on first use (encode, decode, `state_dict`), not when the model is built.
        revision: hub revision (branch, tag or commit) of `weights`.
        architecture: `MagvitV2Config` fields (`encoder`, `decoder`, `quantize`); {} is the public architecture.
        image_size: [height, width] `preprocess` resizes and centre-crops to (MMaDA: 512 x 512).
        vocab_range: the vocabulary range the codes occupy.
        tokenizer: the registry name ("magvitv2").

    >>> MagvitV2TokenizerConfig(weights="showlab/magvitv2").to_dict()["adapter"]
    'image/magvitv2'
    """

    modality: ClassVar[str] = "image"
    name_field: ClassVar[str] = "tokenizer"

    weights: str | None = None
    revision: str | None = None
    architecture: dict[str, Any] = field(default_factory=dict)
    image_size: list[int] = field(default_factory=lambda: [MMADA_RESOLUTION, MMADA_RESOLUTION])
    vocab_range: str = "image"
    tokenizer: str = "magvitv2"

    def __post_init__(self) -> None:
        self.image_size = [int(s) for s in self.image_size]
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ValueError(f"image_size must be [height, width] of positive ints, got {self.image_size}")
        f = self.model_config.downsample
        if any(s % f for s in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be multiples of the MAGVIT-v2 downsampling factor "
                             f"{f}, e.g. [{MMADA_RESOLUTION}, {MMADA_RESOLUTION}] or [256, 256]")

    @property
    def model_config(self) -> MagvitV2Config:
        """The tokenizer architecture (strictly parsed from `architecture`)."""
        return MagvitV2Config.from_dict(self.architecture)


@register_adapter("image/magvitv2")
class MagvitV2Tokenizer(DiscreteAdapter):
    """MAGVIT-v2 behind the `DiscreteAdapter` interface: pixels in [-1, 1] <-> (B, H/16, W/16) codes in [0, 8192).

    Args:
        config: the adapter config.
        load_pretrained: None (the default) loads named `weights` on first use; True loads them now; False never
            reads them (a checkpoint's state dict brings the weights: the architecture is built at once).
        model: an already built `MagvitV2` of the config's architecture (then `weights` is only recorded).

    Attributes:
        magvit: the `MagvitV2` module (its state dict keys are the public ones under `magvit.`), present once the
            weights are loaded.

    >>> tiny = {"encoder": {"ch": 32, "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": [1] * 5, "resolution": 32},
    ...         "decoder": {"ch": 32, "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": [1] * 5, "resolution": 32}}
    >>> tok = MagvitV2Tokenizer(MagvitV2TokenizerConfig(architecture=tiny, image_size=[32, 32]))
    >>> codes = tok.encode(torch.zeros(1, 3, 32, 48))
    >>> codes.shape, tok.codebook_size, tok.downsample, tok.decode(codes).shape
    (torch.Size([1, 2, 3]), 8192, 16, torch.Size([1, 3, 32, 48]))
    """

    modality: ClassVar[str] = "image"
    config_class: ClassVar[type] = MagvitV2TokenizerConfig

    def __init__(self, config: MagvitV2TokenizerConfig, *, load_pretrained: bool | None = None,
                 model: MagvitV2 | None = None) -> None:
        super().__init__(config)
        self.architecture = config.model_config
        # an empty buffer that follows .to(device / dtype): where lazily loaded weights are put
        self.register_buffer("_place", torch.zeros(0), persistent=False)
        self._pending = False
        if model is not None:
            self._check_architecture(model.config, "the given model")
            self.magvit = model.eval()
        elif config.weights is None or load_pretrained is False:
            self.magvit = MagvitV2(self.architecture).eval()
        elif load_pretrained:
            self.magvit = self._read_weights()
        else:
            self._pending = True

    # ------------------------------------------------------------------------------------------ properties
    @property
    def codebook_size(self) -> int:
        return self.architecture.codebook_size

    @property
    def downsample(self) -> int:
        return self.architecture.downsample

    @property
    def loaded(self) -> bool:
        """False while named weights wait for their first use."""
        return not self._pending

    @property
    def image_spec(self) -> ImageSpec:
        """MMaDA's `image_transform`: bicubic resize of the shortest side, centre crop, then (x - 0.5) / 0.5."""
        channels = self.architecture.encoder.in_ch
        return ImageSpec(size=tuple(self.config.image_size), mean=(0.5,) * channels, std=(0.5,) * channels,
                         channels=channels, interpolation="bicubic", resize_mode="shortest")

    # ------------------------------------------------------------------------------------------ weights
    def load_weights(self) -> MagvitV2:
        """The tokenizer module, reading the named weights first if they are still pending.

        Raises:
            HubCheckpointNotFound: `weights` is a hub repo that is neither cached nor downloadable (offline); the
                message names the repo and how to fill the cache.
            ValueError: a pickle-only folder, or weights of another architecture.
        """
        if self._pending:
            self.magvit = self._read_weights()
            self._pending = False
        return self.magvit

    def _read_weights(self) -> MagvitV2:
        folder = self._weights_folder()
        dtype = self._place.dtype if self._place.dtype.is_floating_point else None
        model = MagvitV2.from_pretrained(folder, device=self._place.device, dtype=dtype)
        self._check_architecture(model.config, f"the weights in {folder}")
        return model.requires_grad_(False)

    def _weights_folder(self) -> Path:
        ref = str(self.config.weights)
        path = Path(ref).expanduser()
        if path.is_dir():
            return path
        if is_hub_id(ref):
            try:
                return resolve_checkpoint(ref, self.config.revision)
            except HubCheckpointNotFound as err:
                raise HubCheckpointNotFound(f"the image/magvitv2 tokenizer reads its weights from the hub repo "
                                            f"{ref!r} when it is first used, and they are not available here: "
                                            f"{err}") from err
        raise FileNotFoundError(f"the image/magvitv2 tokenizer's weights {ref!r} are neither a local folder nor a hub "
                                f"repo id 'org/name' (MMaDA's is {MAGVITV2_REPO!r}); fix `weights` in its config")

    def _check_architecture(self, found: MagvitV2Config, what: str) -> None:
        if found != self.architecture:
            mine, theirs = _flat(self.architecture.to_dict()), _flat(found.to_dict())
            diff = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise ValueError(f"{what} have another MAGVIT-v2 architecture than this adapter's config: "
                             + "; ".join(f"{k}: config {mine[k]}, weights {theirs.get(k)}" for k in diff)
                             + "; set `architecture` to the weights' config.json fields ({} for showlab/magvitv2)")

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The weights under their public names (`magvit.<public key>`); pending weights are read first, so a
        saved checkpoint never holds a placeholder."""
        self.load_weights()
        return super().state_dict(*args, **kwargs)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        if self._pending and any(k.startswith(f"{prefix}magvit.") for k in state_dict):
            self.magvit = MagvitV2(self.architecture).to(self._place.device).requires_grad_(False)  # overwritten next
            self._pending = False
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------------------------------ codes
    def preprocess(self, raw: Any) -> Tensor:
        """PIL images / paths / arrays / uint8 or [0, 1] tensors -> (B, 3, H, W) in [-1, 1] at `image_size`."""
        return preprocess_images(raw, self.image_spec)

    def postprocess(self, pixels: Tensor) -> list:
        """(B, 3, H, W) decoder output -> PIL images as MMaDA makes them: clamp((x + 1) / 2, 0, 1) * 255, truncated
        to uint8 (numpy's `astype(np.uint8)`)."""
        return pixels_to_images(pixels, (-1.0, 1.0), truncate=True)

    def _encode(self, pixels: Tensor) -> Tensor:
        model = self.load_weights()
        weight = model.encoder.conv_in.weight
        return model.encode(pixels.to(device=weight.device, dtype=weight.dtype))

    def _decode(self, codes: Tensor) -> Tensor:
        return self.load_weights().decode(codes)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weights={self.config.weights!r}, loaded={self.loaded}"


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"encoder": {"ch": 128}} -> {"encoder.ch": 128}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
