"""Image loading (any PIL mode -> RGB or L) and the explicit preprocessing spec of a vision tower.

`ImageSpec` is the small, saved description of a tower's evaluation transform (size, resize mode, crop fraction,
interpolation, mean/std, channels). It is read from the tower's own data config (timm `resolve_data_config`,
open_clip's `preprocess_cfg`, the SigLIP image processor's values) when an adapter is first built, and saved in
the adapter config, so a checkpoint reloads with identical preprocessing. `ImageTransform(spec)` reproduces timm's
`transforms_imagenet_eval` and open_clip's `image_transform` bit for bit on PIL images (torchvision resize on PIL,
`to_tensor`, `normalize`).

>>> import numpy as np
>>> from mmdiff.adapters.images import ImageSpec, ImageTransform, load_image
>>> image = load_image(np.zeros((40, 60, 4), dtype=np.uint8))  # a fully transparent RGBA array
>>> image.mode, image.getpixel((0, 0))
('RGB', (255, 255, 255))
>>> spec = ImageSpec(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
>>> ImageTransform(spec)(image).shape
torch.Size([3, 32, 32])
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = ["ImageSpec", "ImageTransform", "load_image", "to_mode", "preprocess_images", "pixels_to_images",
           "INTERPOLATIONS"]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
RESIZE_MODES = ("shortest", "squash", "longest")
WHITE = 255
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass
class ImageSpec:
    """How images become a tower's input tensor (saved with the adapter config).

    The transform: resize to `floor(size / crop_pct)` by `resize_mode`, center-crop (or pad) to `size`, scale to
    [0, 1], normalize with `mean` / `std`.

    Args:
        size: (height, width) of the tensor the tower takes.
        mean: per-channel mean, `channels` values.
        std: per-channel standard deviation, `channels` values.
        channels: 3 (RGB) or 1 (grayscale towers, e.g. timm `in_chans=1`).
        interpolation: resampling filter, one of `INTERPOLATIONS`.
        resize_mode: "shortest" (keep aspect, shortest side to the scaled size, then center crop: timm's "center"
            and open_clip's "shortest"), "squash" (both sides to the scaled size, aspect not kept: timm's and
            open_clip's "squash", the SigLIP processor), "longest" (keep aspect, longest side to the scaled size,
            pad with `fill`: timm's "border", open_clip's "longest").
        crop_pct: fraction of the resized image kept by the crop (timm's crop_pct; 1.0 = no margin).
        fill: padding value per channel (one value = all channels), "longest" mode only.
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    interpolation: str = "bicubic"
    resize_mode: Literal["shortest", "squash", "longest"] = "shortest"
    crop_pct: float = 1.0
    fill: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        self.size = tuple(int(s) for s in self.size)  # type: ignore[assignment]
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        self.fill = tuple(int(f) for f in self.fill)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"image size must be (height, width) of positive ints, got {self.size}")
        if self.channels not in (1, 3):
            raise ValueError(f"image channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean {self.mean} and std {self.std} need one value per channel ({self.channels} channels)"
            )
        if min(self.std) <= 0:
            raise ValueError(f"std values must be > 0, got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if len(self.fill) not in (1, self.channels):
            raise ValueError(f"fill needs 1 or {self.channels} values, got {self.fill}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one preprocessed image."""
        return (self.channels, *self.size)

    @property
    def scale_size(self) -> tuple[int, int]:
        """Size the resize aims at before the crop: floor(size / crop_pct), as timm computes it."""
        return tuple(math.floor(s / self.crop_pct) for s in self.size)  # type: ignore[return-value]

    @classmethod
    def from_timm(cls, data_config: dict[str, Any], channels: int | None = None) -> ImageSpec:
        """From timm's `resolve_data_config(...)` dict (input_size, interpolation, mean, std, crop_pct, crop_mode).

        A 1-channel tower whose data config lists RGB statistics gets their averages.
        """
        chans = int(data_config["input_size"][0]) if channels is None else channels
        mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
        if chans == 1 and len(mean) == 3:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        crop_mode = data_config.get("crop_mode") or "center"
        modes = {"center": "shortest", "squash": "squash", "border": "longest"}
        if crop_mode not in modes:
            raise ValueError(f"timm crop_mode {crop_mode!r} is not supported; use one of {list(modes)}")
        fill = tuple(round(255 * m) for m in mean) if crop_mode == "border" else (0,)
        return cls(
            size=tuple(data_config["input_size"][1:]),  # type: ignore[arg-type]
            mean=mean,
            std=std,
            channels=chans,
            interpolation=data_config.get("interpolation") or "bicubic",
            resize_mode=modes[crop_mode],  # type: ignore[arg-type]
            crop_pct=float(data_config.get("crop_pct") or 0.875),
            fill=fill,
        )

    @classmethod
    def from_open_clip(cls, preprocess_cfg: dict[str, Any]) -> ImageSpec:
        """From an open_clip visual tower's `preprocess_cfg` (size, mean, std, interpolation, resize_mode, ...)."""
        size = preprocess_cfg["size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        interpolation = preprocess_cfg.get("interpolation") or "bicubic"
        return cls(
            size=size,  # type: ignore[arg-type]
            mean=tuple(preprocess_cfg["mean"]),
            std=tuple(preprocess_cfg["std"]),
            interpolation="bilinear" if interpolation == "bilinear" else "bicubic",  # open_clip's own mapping
            resize_mode=preprocess_cfg.get("resize_mode") or "shortest",
            crop_pct=1.0,
            fill=(int(preprocess_cfg.get("fill_color", 0)),),
        )

    @classmethod
    def from_hf_processor(cls, processor: dict[str, Any], default_size: int) -> ImageSpec:
        """From a Hugging Face image-processor dict (SigLIP's `preprocessor_config.json`): squash-resize to
        size {height, width}, rescale 1/255, normalize with image_mean / image_std."""
        size = processor.get("size") or {"height": default_size, "width": default_size}
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if "height" not in size or "width" not in size:
            raise ValueError(f"image processor size {size} is not {{'height', 'width'}}; only fixed-size "
                             "(squash) processors such as SigLIP's are supported")
        rescale = float(processor.get("rescale_factor", 1 / 255))
        if processor.get("do_rescale", True) and not math.isclose(rescale, 1 / 255):
            raise ValueError(f"image processor rescale_factor {rescale} is not 1/255; not supported")
        return cls(
            size=(int(size["height"]), int(size["width"])),
            mean=tuple(processor.get("image_mean", (0.5, 0.5, 0.5))),
            std=tuple(processor.get("image_std", (0.5, 0.5, 0.5))),
            interpolation=PIL_RESAMPLE_NAMES[int(processor.get("resample", 3))],
            resize_mode="squash",
            crop_pct=1.0,
        )


# --- loading -----------------------------------------------------------------------------------------------------


def load_image(source: Any, *, channels: int = 3, name: str | None = None) -> Image.Image:
    """Reads an image from a path, bytes, a PIL image or a numpy array, converted to RGB (or L for 1 channel).

    Any PIL mode is converted: L / 1 / I;16 / I (16-bit, scaled to 8 bits by v / 257 rounded) / F (clipped to
    0..255) / P (with or without transparency) / LA / PA / RGBA / RGBa (alpha-composited on white) / CMYK / YCbCr.
    Arrays: (H, W) or (H, W, 1|3|4) of uint8, uint16 (16-bit), bool, or floats in [0, 1].

    Args:
        source: str / os.PathLike path, bytes, PIL.Image.Image or numpy array.
        channels: 3 for RGB output, 1 for L.
        name: what to call the image in error messages (default: the path, or "image bytes").

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file or bytes are not a readable image (names the file).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {str(path)!r}")
        image = _open(path, name or str(path))
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _open(io.BytesIO(bytes(source)), name or "image bytes")
    elif isinstance(source, Tensor):
        raise TypeError("load_image takes paths, bytes, PIL images or numpy arrays; pass tensors to "
                        "`preprocess` directly, or convert with `.numpy()` (H, W, C)")
    else:
        raise TypeError(f"cannot read an image from {type(source).__name__}; pass a path, bytes, a PIL image "
                        "or a numpy array")
    return to_mode(image, channels)


def _open(fp: Any, name: str) -> Image.Image:
    try:
        image = Image.open(fp)
        image.load()  # decode now, so truncated / corrupt data fails here rather than later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise ValueError(
            f"{name!r} is not a readable image ({type(err).__name__}: {err}); check that it is an image file "
            "(PNG, JPEG, BMP, GIF, TIFF, WebP, ...) and that it is complete"
        ) from err
    return image


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"image arrays must be (H, W) or (H, W, 1|3|4), got shape {array.shape}")
    if array.dtype == np.bool_:
        return Image.fromarray((array * WHITE).astype(np.uint8))
    if array.dtype == np.uint16:
        if array.ndim != 2:
            raise ValueError("16-bit image arrays must be grayscale (H, W); convert colour arrays to uint8")
        return _gray16(array)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 1):
            raise ValueError("float image arrays must hold values in [0, 1]; scale them or pass uint8")
        array = np.rint(np.nan_to_num(array) * WHITE).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, uint16, bool or float in [0, 1], got {array.dtype}")
    return Image.fromarray(array)


def _gray16(values: np.ndarray) -> Image.Image:
    """16-bit grayscale values -> 8-bit L, v / 257 rounded (65535 -> 255, exact for multiples of 257)."""
    values = np.clip(values.astype(np.int64), 0, 65535)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8), mode="L")


def to_mode(image: Image.Image, channels: int = 3) -> Image.Image:
    """Converts a PIL image of any mode to RGB (channels=3) or L (channels=1); transparency becomes white.

    >>> from PIL import Image
    >>> to_mode(Image.new("LA", (2, 2), (0, 0)), 3).getpixel((0, 0))
    (255, 255, 255)
    """
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        image = _gray16(np.asarray(image))
    elif mode == "F":
        image = image.convert("L")
    elif mode == "P":
        has_alpha = "transparency" in image.info or image.palette is not None and image.palette.mode == "RGBA"
        image = _on_white(image.convert("RGBA")) if has_alpha else image.convert("RGB")
    elif mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        image = _on_white(image.convert("RGBA"))
    elif mode == "1":
        image = image.convert("L")
    elif mode not in ("L", "RGB"):
        try:
            image = image.convert("RGB")
        except (ValueError, OSError) as err:
            raise ValueError(f"cannot convert an image of mode {mode!r} to RGB ({err}); save it as RGB") from err
    if channels == 1:
        return image if image.mode == "L" else image.convert("L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (WHITE, WHITE, WHITE, WHITE))
    return Image.alpha_composite(background, rgba).convert("RGB")


# --- transform -----------------------------------------------------------------------------------------------------


class ImageTransform:
    """`ImageSpec` -> a callable PIL image (or (C, H, W) tensor) -> normalized float tensor (C, H, W).

    PIL images follow the exact operations of timm's and open_clip's evaluation transforms (torchvision resize on
    the PIL image, center crop, `to_tensor`, `normalize`). uint8 tensors go through PIL too (bit-identical);
    float tensors in [0, 1] are resized with antialiased torch interpolation.
    """

    def __init__(self, spec: ImageSpec) -> None:
        self.spec = spec

    def __call__(self, image: Image.Image | Tensor) -> Tensor:
        import torchvision.transforms.functional as TF

        spec = self.spec
        if isinstance(image, Tensor):
            image = self._tensor_input(image)
        elif isinstance(image, Image.Image):
            image = to_mode(image, spec.channels)
        else:
            raise TypeError(f"ImageTransform takes PIL images or tensors, got {type(image).__name__}")
        if isinstance(image, Tensor) and tuple(image.shape[-2:]) == spec.size:
            pixels = image  # already at the tower's size: no resampling
        else:
            pixels = self._crop(self._resize(image))
        if isinstance(pixels, Image.Image):
            pixels = TF.to_tensor(pixels)  # (C, H, W) in [0, 1]
        return TF.normalize(pixels.float(), list(spec.mean), list(spec.std))

    def _tensor_input(self, image: Tensor) -> Image.Image | Tensor:
        import torchvision.transforms.functional as TF

        if image.dim() == 2:
            image = image[None]  # (H, W): one grey channel
        if image.dim() != 3:
            raise ValueError(f"image tensors must be (H, W), (C, H, W) or batched (B, C, H, W), got "
                             f"{tuple(image.shape)}")
        image = _match_channels(image, self.spec.channels)
        if image.dtype == torch.uint8:
            return TF.to_pil_image(image.cpu())
        if not image.is_floating_point():
            raise TypeError(f"image tensors must be uint8 or float in [0, 1], got {image.dtype}")
        return image.float().cpu()

    def _resize(self, image: Image.Image | Tensor) -> Image.Image | Tensor:
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        spec, interp = self.spec, InterpolationMode(self.spec.interpolation)
        scale_h, scale_w = spec.scale_size
        height, width = _image_hw(image)
        if spec.resize_mode == "squash":
            size = [scale_h, scale_w]
        elif spec.resize_mode == "shortest" and scale_h == scale_w:
            size = [scale_h]  # torchvision's shortest-edge rule (long side truncated), as timm / open_clip call it
        else:  # keep the aspect ratio; shortest or longest side fits (timm / open_clip ResizeKeepRatio)
            ratios = (height / scale_h, width / scale_w)
            ratio = max(ratios) if spec.resize_mode == "longest" else min(ratios)
            size = [round(height / ratio), round(width / ratio)]
        return TF.resize(image, size, interpolation=interp, antialias=True)

    def _crop(self, image: Image.Image | Tensor) -> Image.Image | Tensor:
        import torchvision.transforms.functional as TF

        crop_h, crop_w = self.spec.size
        height, width = _image_hw(image)
        if self.spec.resize_mode == "longest" and (crop_h > height or crop_w > width):
            fill = self.spec.fill * (self.spec.channels if len(self.spec.fill) == 1 else 1)
            if isinstance(image, Tensor):
                fill = [f / 255 for f in fill]  # float tensors are in [0, 1]
            pad_w, pad_h = max(crop_w - width, 0), max(crop_h - height, 0)
            padding = [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2]  # left, top, right, bottom
            image = TF.pad(image, padding, fill=fill if len(fill) > 1 else fill[0])
        return TF.center_crop(image, [crop_h, crop_w])


def _image_hw(image: Image.Image | Tensor) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.height, image.width
    return int(image.shape[-2]), int(image.shape[-1])


def _match_channels(image: Tensor, channels: int) -> Tensor:
    """(C, H, W) with C in {1, 3} -> `channels` channels (gray repeated, or RGB -> L with PIL's luma weights)."""
    have = image.shape[0]
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return image.expand(3, -1, -1)
    if have == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(3, 1, 1)  # ITU-R 601-2, as PIL
        gray = (image.double() * weights).sum(0, keepdim=True)
        return gray.round().to(torch.uint8) if image.dtype == torch.uint8 else gray.to(image.dtype)
    raise ValueError(f"image tensors need 1 or 3 channels (this tower takes {channels}), got {have}; drop the "
                     "alpha channel or convert the image first")


def pixels_to_images(pixels: Tensor, value_range: Sequence[float] = (0.0, 1.0), *,
                     truncate: bool = False) -> list[Image.Image]:
    """(B, C, H, W) pixels in `value_range` -> PIL images (mode L for 1 channel, RGB for 3): clipped to the range,
    scaled to 0..255, then rounded (or truncated, as numpy's `astype(np.uint8)` does).

    >>> [im.getpixel((0, 0)) for im in pixels_to_images(torch.tensor([-1.0, 0.0, 2.0]).view(3, 1, 1, 1), (-1, 1))]
    [0, 128, 255]
    """
    low, high = value_range
    scaled = ((pixels.detach().float().cpu() - low) / (high - low)).clamp(0, 1) * 255  # (B, C, H, W)
    arrays = (scaled if truncate else scaled.round()).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]


def preprocess_images(images: Any, spec: ImageSpec) -> Tensor:
    """One image or a list of images (paths, bytes, PIL images, arrays, (C, H, W) tensors) or a (B, C, H, W)
    tensor -> a normalized float tensor (B, channels, H, W) at the spec's size.

    >>> from PIL import Image
    >>> spec = ImageSpec(size=(8, 8), mean=(0.0,), std=(1.0,), channels=1)
    >>> preprocess_images([Image.new("RGB", (10, 10), (255, 255, 255))] * 2, spec).shape
    torch.Size([2, 1, 8, 8])
    """
    transform = ImageTransform(spec)
    if isinstance(images, Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise ValueError(f"image tensors must be (C, H, W) or (B, C, H, W), got {tuple(images.shape)}")
        items: Sequence[Any] = list(images)
    elif isinstance(images, (list, tuple)):
        items = images
    else:
        items = [images]
    if len(items) == 0:
        raise ValueError("no images given: pass an image, a list of images or a (B, C, H, W) tensor")
    pixels = [transform(item if isinstance(item, Tensor) else load_image(item, channels=spec.channels))
              for item in items]
    return torch.stack(pixels)  # (B, C, H, W)
