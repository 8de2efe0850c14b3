"""A small VQ-VAE image tokenizer ("image/vq"): conv encoder, EMA vector quantiser, conv decoder.

Implements "Neural Discrete Representation Learning" (VQ-VAE, van den Oord et al., 2017): nearest-codebook
quantisation, the straight-through gradient estimator and the commitment loss `beta * ||z - sg(e)||^2`, with the
codebook learned by exponential moving averages of the assigned encodings (the EMA variant of that paper's appendix
and of VQ-VAE-2, Razavi et al., 2019) instead of a codebook loss. Two robustness tricks keep every code in use on
small data: the codebook is initialised from encoder outputs of the first training batch (data-dependent
initialisation), and codes whose EMA usage falls below `dead_threshold` are restarted at random encodings of the
current batch (the "codebook reset" of Jukebox, Dhariwal et al., 2020). The encoder/decoder are the
convolutional residual stacks of the VQ-VAE paper (stride-2 4x4 convolutions, one per factor of 2).

Pixels are in [-1, 1] (`preprocess`: to [0, 1], then normalise with mean 0.5 / std 0.5); codes are (B, H/d, W/d)
int64 in `[0, codebook_size)`. On MNIST (28 x 28, downsample 4) one digit is a 7 x 7 code grid.

>>> import torch
>>> from mmdiff.adapters import build_adapter
>>> tok = build_adapter("image/vq", channels=1, image_size=[28, 28], downsample=4, codebook_size=16, hidden=16)
>>> codes = tok.encode(torch.zeros(2, 1, 28, 28))
>>> codes.shape, tok.decode(codes).shape
(torch.Size([2, 7, 7]), torch.Size([2, 1, 28, 28]))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiff.adapters.base import AdapterConfig, DiscreteAdapter, register_adapter
from mmdiff.adapters.images import ImageSpec, pixels_to_images, preprocess_images
from mmdiff.io import load_json, load_safetensors, load_state_dict_strict, save_json, save_safetensors

__all__ = [
    "VQConfig",
    "VectorQuantizer",
    "VQTokenizer",
    "vq_loss",
    "train_vq",
    "save_vq_tokenizer",
    "load_vq_tokenizer",
    "codebook_perplexity",
    "uint8_to_pixels",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class VQConfig(AdapterConfig):
    """Config of the "image/vq" tokenizer (saved as `{"adapter": "image/vq", ...}`).

    Args:
        channels: 1 (grey) or 3 (RGB).
        image_size: default [height, width] that `preprocess` resizes to (a multiple of `downsample`).
        downsample: pixels per code side, a power of two >= 2 (one stride-2 conv per factor of 2).
        hidden: width of the conv stacks.
        num_res_blocks: residual blocks after the encoder's downsampling and before the decoder's upsampling.
        code_dim: width of a codebook vector.
        codebook_size: number of codes.
        beta: commitment-loss weight.
        ema_decay: decay of the EMA codebook statistics.
        dead_threshold: EMA usage (assignments per batch) below which a code is restarted during training.
        vocab_range: the vocabulary range the codes occupy.
        pretrained: a tokenizer folder (`save_vq_tokenizer`, `scripts/train_vq_tokenizer.py`) whose weights are
            loaded when the adapter is built (its config must match this one); a checkpoint that carries the
            tokenizer's weights itself builds it with `load_pretrained=False` and never reads the folder.
        tokenizer: the registry name ("vq").
    """

    modality: ClassVar[str] = "image"
    name_field: ClassVar[str] = "tokenizer"

    channels: int = 1
    image_size: list[int] = field(default_factory=lambda: [28, 28])
    downsample: int = 4
    hidden: int = 64
    num_res_blocks: int = 1
    code_dim: int = 16
    codebook_size: int = 128
    beta: float = 0.25
    ema_decay: float = 0.95
    dead_threshold: float = 0.03
    vocab_range: str = "image"
    pretrained: str | None = None
    tokenizer: str = "vq"

    def __post_init__(self) -> None:
        self.image_size = [int(s) for s in self.image_size]
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        d = self.downsample
        if d < 2 or d & (d - 1):
            raise ValueError(f"downsample must be a power of two >= 2 (2, 4, 8, ...), got {d}")
        if len(self.image_size) != 2 or any(s <= 0 or s % d for s in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be [height, width], both multiples of downsample={d}")
        if self.codebook_size < 2 or self.code_dim < 1 or self.hidden < 1 or self.num_res_blocks < 0:
            raise ValueError("codebook_size >= 2, code_dim >= 1, hidden >= 1 and num_res_blocks >= 0 are required")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser with an EMA-learned codebook and the straight-through estimator.

    Buffers: `embedding` (K, D) codebook, `ema_count` (K,), `ema_sum` (K, D), `initialized` (0-dim bool).

    >>> vq = VectorQuantizer(codebook_size=2, code_dim=1)
    >>> _ = vq.embedding.copy_(torch.tensor([[0.0], [1.0]])), vq.initialized.fill_(True)
    >>> vq(torch.tensor([[[[0.2, 0.9]]]])).codes.tolist()
    [[[0, 1]]]
    """

    class Output:
        """quantized (B, D, h, w) with straight-through gradients, codes (B, h, w), commitment loss, counts (K,)."""

        def __init__(self, quantized: Tensor, codes: Tensor, commitment: Tensor, counts: Tensor) -> None:
            self.quantized, self.codes, self.commitment, self.counts = quantized, codes, commitment, counts

    def __init__(self, codebook_size: int, code_dim: int, *, ema_decay: float = 0.95,
                 dead_threshold: float = 0.03, eps: float = 1e-5) -> None:
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.ema_decay, self.dead_threshold, self.eps = ema_decay, dead_threshold, eps
        self.register_buffer("embedding", torch.randn(codebook_size, code_dim))
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", self.embedding.clone())
        self.register_buffer("initialized", torch.tensor(False))

    def nearest(self, flat: Tensor) -> Tensor:
        """(N, D) vectors -> (N,) index of the nearest codebook entry (squared Euclidean; ties -> lowest index)."""
        dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embedding.t()
                + self.embedding.pow(2).sum(1)[None])  # (N, K)
        return dist.argmin(dim=1)

    def codes(self, z: Tensor) -> Tensor:
        """Encoder outputs z (B, D, h, w) -> nearest codes (B, h, w); no codebook update in any mode."""
        b, d, h, w = z.shape
        return self.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)  # (B*h*w, D) -> (B, h, w)

    def lookup(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) -> codebook vectors (B, D, h, w)."""
        return F.embedding(codes, self.embedding).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: Tensor) -> VectorQuantizer.Output:
        """Quantises encoder outputs z (B, D, h, w); in training mode also updates the EMA codebook."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        if self.training and not bool(self.initialized):
            self._init_from(flat.detach())
        codes = self.nearest(flat.detach())  # (B*h*w,)
        counts = torch.bincount(codes, minlength=self.codebook_size).float()
        if self.training:
            self._ema_update(flat.detach(), codes, counts)
        quantized = F.embedding(codes, self.embedding).view(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w)
        commitment = F.mse_loss(z, quantized.detach())
        quantized = z + (quantized - z).detach()  # straight-through: d quantized / d z = identity
        return VectorQuantizer.Output(quantized, codes.view(b, h, w), commitment, counts)

    @torch.no_grad()
    def _init_from(self, flat: Tensor) -> None:
        picks = torch.randint(0, flat.shape[0], (self.codebook_size,), device=flat.device)
        self.embedding.copy_(flat[picks])
        self.ema_sum.copy_(self.embedding)
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, codes: Tensor, counts: Tensor) -> None:
        decay = self.ema_decay
        sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, flat)  # (K, D)
        self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.codebook_size * self.eps) * n  # Laplace smoothing
        self.embedding.copy_(self.ema_sum / smoothed[:, None])
        dead = self.ema_count < self.dead_threshold
        if bool(dead.any()):
            picks = torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)
            self.embedding[dead] = flat[picks]
            self.ema_sum[dead] = flat[picks]
            self.ema_count[dead] = 1.0


class _ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def _encoder(cfg: VQConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    width_in = cfg.channels
    for _ in range(int(math.log2(cfg.downsample))):
        layers += [nn.Conv2d(width_in, cfg.hidden, 4, stride=2, padding=1), nn.ReLU()]  # halves H and W
        width_in = cfg.hidden
    layers += [nn.Conv2d(cfg.hidden, cfg.hidden, 3, padding=1)]
    layers += [_ResBlock(cfg.hidden) for _ in range(cfg.num_res_blocks)]
    layers += [nn.ReLU(), nn.Conv2d(cfg.hidden, cfg.code_dim, 1)]
    return nn.Sequential(*layers)


def _decoder(cfg: VQConfig) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, cfg.hidden, 3, padding=1)]
    layers += [_ResBlock(cfg.hidden) for _ in range(cfg.num_res_blocks)]
    layers += [nn.ReLU()]
    stages = int(math.log2(cfg.downsample))
    for i in range(stages):
        width_out = cfg.channels if i == stages - 1 else cfg.hidden
        layers += [nn.ConvTranspose2d(cfg.hidden, width_out, 4, stride=2, padding=1)]  # doubles H and W
        if i < stages - 1:
            layers += [nn.ReLU()]
    return nn.Sequential(*layers)


@register_adapter("image/vq")
class VQTokenizer(DiscreteAdapter):
    """The "image/vq" tokenizer: pixels (B, C, H, W) in [-1, 1] <-> codes (B, H/d, W/d).

    >>> tok = VQTokenizer(VQConfig(codebook_size=8, hidden=8))
    >>> tok.grid_size(28, 28), tok.codebook_size, tok.downsample
    ((7, 7), 8, 4)
    """

    modality: ClassVar[str] = "image"
    config_class: ClassVar[type] = VQConfig

    def __init__(self, config: VQConfig, *, load_pretrained: bool | None = None) -> None:
        super().__init__(config)
        self.encoder = _encoder(config)
        self.quantizer = VectorQuantizer(config.codebook_size, config.code_dim, ema_decay=config.ema_decay,
                                         dead_threshold=config.dead_threshold)
        self.decoder = _decoder(config)
        if config.pretrained is not None and load_pretrained is not False:
            self._load_folder(Path(config.pretrained))

    def _load_folder(self, folder: Path) -> None:
        """Loads the weights of a tokenizer folder whose config equals this one (up to `pretrained`)."""
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"the image/vq tokenizer's pretrained folder {folder} holds no {CONFIG_NAME}; "
                                    "train one with scripts/train_vq_tokenizer.py or fix the path")
        theirs = VQConfig.from_dict(load_json(folder / CONFIG_NAME))
        mine = {k: v for k, v in self.config.to_dict().items() if k != "pretrained"}
        other = {k: v for k, v in theirs.to_dict().items() if k != "pretrained"}
        if mine != other:
            diff = {k: (mine.get(k), other.get(k)) for k in mine.keys() | other.keys() if mine.get(k) != other.get(k)}
            raise ValueError(f"the tokenizer in {folder} was built with other settings (this config, folder): {diff}; "
                             "copy its config.json fields into the adapter config")
        load_state_dict_strict(self, load_safetensors(folder / WEIGHTS_NAME), source=str(folder / WEIGHTS_NAME))

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def image_spec(self) -> ImageSpec:
        """Resize (squash) to `image_size`, to [0, 1], then (x - 0.5) / 0.5 -> [-1, 1]."""
        c = self.config.channels
        return ImageSpec(size=tuple(self.config.image_size), mean=(0.5,) * c, std=(0.5,) * c, channels=c,
                         resize_mode="squash", interpolation="bilinear")

    def preprocess(self, raw: Any) -> Tensor:
        """PIL images / paths / uint8 arrays / (C, H, W) uint8 or [0, 1] float tensors -> (B, C, H, W) in [-1, 1]."""
        return preprocess_images(raw, self.image_spec)

    def postprocess(self, pixels: Tensor) -> list:
        """(B, C, H, W) in [-1, 1] -> list of PIL images (mode L for 1 channel, RGB for 3)."""
        return pixels_to_images(pixels, (-1.0, 1.0))

    def _encode(self, pixels: Tensor) -> Tensor:
        self._check_channels(pixels)
        return self.quantizer.codes(self.encoder(pixels))

    def _quantize(self, pixels: Tensor) -> VectorQuantizer.Output:
        self._check_channels(pixels)
        return self.quantizer(self.encoder(pixels))

    def _decode(self, codes: Tensor) -> Tensor:
        return self.decoder(self.quantizer.lookup(codes))

    def forward(self, pixels: Tensor) -> tuple[Tensor, VectorQuantizer.Output]:
        """Training pass: pixels -> (reconstruction (B, C, H, W), quantiser output)."""
        out = self._quantize(pixels)
        return self.decoder(out.quantized), out

    def _check_channels(self, pixels: Tensor) -> None:
        if pixels.shape[1] != self.config.channels:
            raise ValueError(f"the {self.key} tokenizer takes {self.config.channels}-channel pixels, got "
                             f"{pixels.shape[1]} channels; preprocess images with this tokenizer's `preprocess`")

    def save_pretrained(self, folder: str | Path) -> None:
        """Writes config.json + model.safetensors (atomic)."""
        save_vq_tokenizer(self, folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> VQTokenizer:
        return load_vq_tokenizer(folder)


def vq_loss(model: VQTokenizer, pixels: Tensor) -> dict[str, Tensor]:
    """VQ-VAE objective: MSE reconstruction + beta * commitment (the codebook itself is learned by EMA).

    Returns:
        {"loss", "recon", "commitment"} scalars and "counts" (K,) code assignments of the batch.
    """
    recon, out = model(pixels)
    rec = F.mse_loss(recon, pixels)
    return {"loss": rec + model.config.beta * out.commitment, "recon": rec, "commitment": out.commitment,
            "counts": out.counts}


def codebook_perplexity(counts: Tensor) -> float:
    """exp(entropy) of the code-usage distribution: the effective number of codes in use."""
    p = counts.float() / counts.sum().clamp_min(1)
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def uint8_to_pixels(images: np.ndarray | Tensor) -> Tensor:
    """uint8 (N, H, W) grey or (N, H, W, 3) RGB -> float (N, C, H, W) in [-1, 1] (as `preprocess` gives)."""
    x = torch.as_tensor(np.asarray(images)).float()
    x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    return x / 127.5 - 1.0


def train_vq(
    model: VQTokenizer,
    pixels: Tensor,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    log_every: int = 0,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, float]:
    """Trains `model` on `pixels` (N, C, H, W) in [-1, 1] with Adam (cosine-decayed lr) for `steps` steps.

    Args:
        log: called every `log_every` steps (and at the end) with {"step", "split": "train", "elapsed_s", "loss",
            "recon_mse", "commitment", "perplexity"}.

    Returns:
        the last logged record.

    >>> tok = VQTokenizer(VQConfig(codebook_size=8, hidden=8))
    >>> train_vq(tok, torch.zeros(4, 1, 28, 28), steps=2, batch_size=2)["step"]
    2
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    model.train()
    start, counts, record = time.perf_counter(), torch.zeros(model.codebook_size), {}
    for step in range(1, steps + 1):
        batch = pixels[torch.randint(0, pixels.shape[0], (batch_size,), generator=gen)]
        out = vq_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        sched.step()
        counts += out["counts"]
        if step == steps or (log_every and step % log_every == 0):
            record = {"step": step, "split": "train", "elapsed_s": round(time.perf_counter() - start, 2),
                      "loss": out["loss"].item(), "recon_mse": out["recon"].item(),
                      "commitment": out["commitment"].item(), "perplexity": codebook_perplexity(counts)}
            counts = torch.zeros(model.codebook_size)
            if log is not None:
                log(record)
    model.eval()
    return record


def save_vq_tokenizer(model: VQTokenizer, folder: str | Path) -> None:
    """Writes `folder/config.json` (the adapter dict form) and `folder/model.safetensors`, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_safetensors(folder / WEIGHTS_NAME, state)
    save_json(folder / CONFIG_NAME, model.config.to_dict())


def load_vq_tokenizer(folder: str | Path) -> VQTokenizer:
    """Rebuilds a tokenizer written by `save_vq_tokenizer` (strict: keys and shapes must match exactly).

    Raises:
        FileNotFoundError: config.json or model.safetensors is missing (names the folder).
    """
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_NAME}; is it a tokenizer folder written by "
                                "save_vq_tokenizer / scripts/train_vq_tokenizer.py?")
    model = VQTokenizer(VQConfig.from_dict(load_json(folder / CONFIG_NAME)))
    load_state_dict_strict(model, load_safetensors(folder / WEIGHTS_NAME), source=str(folder / WEIGHTS_NAME))
    return model.eval()
