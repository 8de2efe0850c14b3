"""Diffusers `VQModel` folders as discrete image tokenizers ("image/diffusers_vq").

The VQGAN tokenizers (Esser et al., 2021, "Taming Transformers for High-Resolution Image Synthesis") shipped as the
`vqvae/` subfolder of aMUSEd (Patil et al., 2024), Meissonic (Bai et al., 2024) and Lumina-DiMOO checkpoints: a
`config.json` + `diffusion_pytorch_model.safetensors` pair read by `diffusers.VQModel.from_pretrained`. The model is
loaded through diffusers (imported lazily; install with `pip install 'mmdiff[t2i]'`) and wrapped:

* encode: `model.encode(x).latents` (B, D, h, w) -> `model.quantize(latents)` whose third output's last entry is the
  argmin index per latent position, flat (B*h*w,) in row-major (b, y, x) order unless the quantiser was built with
  `sane_index_shape` (then already (B, h, w)); reshaped here to (B, h, w).
* decode: `model.quantize.get_codebook_entry(codes.flatten(), shape=(B, h, w, D))` (it views the looked-up
  vectors as (B, h, w, D) and permutes to (B, D, h, w)), then `post_quant_conv` and `decoder` exactly as
  `VQModel.decode(..., force_not_quantize=True)` does (the spatial-norm decoder of MoVQ also receives the
  quantised latents). Works whether or not the folder sets `lookup_from_codebook`.

Pixels are in [0, 1] by default: the diffusers pipelines of aMUSEd and Meissonic (and Lumina-DiMOO's code) feed the
VQModel un-normalised pixels (`VaeImageProcessor(do_normalize=False)`) and clip its output to [0, 1];
`pixel_range=[-1, 1]` serves VQModels trained on normalised pixels. Downsampling is
2 ** (len(block_out_channels) - 1).

>>> from mmdiff.adapters.diffusers_vq import DiffusersVQConfig
>>> DiffusersVQConfig(path="vqvae").to_dict()["adapter"]
'image/diffusers_vq'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from mmdiff.adapters.base import AdapterConfig, DiscreteAdapter, register_adapter
from mmdiff.adapters.images import ImageSpec, pixels_to_images, preprocess_images

__all__ = ["DiffusersVQConfig", "DiffusersVQTokenizer", "import_diffusers"]

INSTALL_HINT = "pip install 'mmdiff[t2i]'"


def import_diffusers() -> Any:
    """Imports diffusers, or raises an ImportError naming the extra to install."""
    try:
        import diffusers
    except ImportError as err:
        raise ImportError(f"the image/diffusers_vq tokenizer needs diffusers: {INSTALL_HINT} "
                          "(or pip install diffusers)") from err
    return diffusers


@dataclass
class DiffusersVQConfig(AdapterConfig):
    """Config of the "image/diffusers_vq" tokenizer.

    Args:
        path: a diffusers VQModel folder (config.json + diffusion_pytorch_model.safetensors), e.g. the `vqvae/`
            subfolder of an aMUSEd / Meissonic / Lumina-DiMOO checkpoint, or a local checkpoint root with
            `subfolder`.
        subfolder: subfolder of `path` holding the VQModel ("" = `path` itself).
        image_size: default [height, width] `preprocess` resizes to (a multiple of the downsampling factor).
        pixel_range: [low, high] pixel values the VQModel takes and gives: [0, 1] (aMUSEd, Meissonic,
            Lumina-DiMOO) or [-1, 1].
        vocab_range: the vocabulary range the codes occupy.
        tokenizer: the registry name ("diffusers_vq").
    """

    modality: ClassVar[str] = "image"
    name_field: ClassVar[str] = "tokenizer"

    path: str = ""
    subfolder: str = ""
    image_size: list[int] = field(default_factory=lambda: [256, 256])
    pixel_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    vocab_range: str = "image"
    tokenizer: str = "diffusers_vq"

    def __post_init__(self) -> None:
        self.pixel_range = [float(v) for v in self.pixel_range]
        if self.pixel_range not in ([0.0, 1.0], [-1.0, 1.0]):
            raise ValueError(f"pixel_range must be [0, 1] or [-1, 1], got {self.pixel_range}")
        self.image_size = [int(s) for s in self.image_size]
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ValueError(f"image_size must be [height, width] of positive ints, got {self.image_size}")


@register_adapter("image/diffusers_vq")
class DiffusersVQTokenizer(DiscreteAdapter):
    """A diffusers `VQModel` behind the `DiscreteAdapter` interface (pixels in [-1, 1] <-> (B, h, w) codes).

    Args:
        config: where the folder is.
        load_pretrained: ignored (the weights are always the folder's; there is nothing random to build).
        model: an already built `diffusers.VQModel` (then `config.path` is only recorded), e.g. in tests.
    """

    modality: ClassVar[str] = "image"
    config_class: ClassVar[type] = DiffusersVQConfig

    def __init__(self, config: DiffusersVQConfig, *, load_pretrained: bool | None = None,
                 model: Any | None = None) -> None:
        super().__init__(config)
        if model is None:
            model = self._load(config)
        self.model = model.eval()
        cfg = self.model.config
        self._codebook_size = int(cfg.num_vq_embeddings)
        self._downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self._channels = int(cfg.in_channels)
        if min(config.image_size) % self._downsample:
            raise ValueError(f"image_size {config.image_size} must be multiples of the VQModel's downsampling "
                             f"factor {self._downsample}")

    @staticmethod
    def _load(config: DiffusersVQConfig) -> Any:
        diffusers = import_diffusers()
        folder = Path(config.path) / config.subfolder if config.subfolder else Path(config.path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} holds no config.json; point `path` (and `subfolder`) at a diffusers "
                                    "VQModel folder, e.g. the vqvae/ subfolder of an aMUSEd checkpoint")
        return diffusers.VQModel.from_pretrained(str(folder), use_safetensors=True)

    @property
    def codebook_size(self) -> int:
        return self._codebook_size

    @property
    def downsample(self) -> int:
        return self._downsample

    @property
    def code_dim(self) -> int:
        """Width of a codebook vector (`vq_embed_dim`)."""
        return int(self.model.quantize.vq_embed_dim)

    @property
    def image_spec(self) -> ImageSpec:
        """Resize (shortest side) + centre crop to `image_size`, to [0, 1] (then to [-1, 1] for that range)."""
        c = self._channels
        centre, scale = (0.5, 0.5) if self.config.pixel_range[0] < 0 else (0.0, 1.0)
        return ImageSpec(size=tuple(self.config.image_size), mean=(centre,) * c, std=(scale,) * c, channels=c,
                         interpolation="bicubic")

    def preprocess(self, raw: Any) -> Tensor:
        """PIL images / paths / arrays / uint8 or [0, 1] tensors -> (B, C, H, W) in `pixel_range`."""
        return preprocess_images(raw, self.image_spec)

    def postprocess(self, pixels: Tensor) -> list:
        """(B, C, H, W) in `pixel_range` -> list of PIL images (clipped to the range, then to 0..255)."""
        return pixels_to_images(pixels, self.config.pixel_range)

    def _encode(self, pixels: Tensor) -> Tensor:
        if pixels.shape[1] != self._channels:
            raise ValueError(f"the VQModel takes {self._channels}-channel pixels, got {pixels.shape[1]}")
        latents = self.model.encode(pixels).latents  # (B, D, h, w)
        b, _, h, w = latents.shape
        _, _, (_, _, indices) = self.model.quantize(latents)
        if self.model.quantize.remap is not None:
            raise ValueError("VQModel quantisers with a `remap` file are not supported (no public VQModel uses it)")
        return indices.reshape(b, h, w)  # flat (B*h*w,) in (b, y, x) order -> (B, h, w)

    def _decode(self, codes: Tensor) -> Tensor:
        b, h, w = codes.shape
        quant = self.model.quantize.get_codebook_entry(codes.reshape(-1), (b, h, w, self.code_dim))  # (B, D, h, w)
        quant2 = self.model.post_quant_conv(quant)
        spatial = quant if self.model.config.norm_type == "spatial" else None
        return self.model.decoder(quant2, spatial)
