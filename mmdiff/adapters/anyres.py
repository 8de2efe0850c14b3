"""LLaVA-NeXT "anyres" images for the public LaViDa and LLaDA-V checkpoints: one image becomes a base view plus a grid
of tiles at a resolution picked from grid pinpoints, each view runs through the vision adapter, and the tile features
are stitched back into one grid, cropped to the image's aspect ratio ("unpad"), optionally shrunk ("anyres_max_N"),
with a learned newline embedding closing every row.

Implements the multi-resolution input of LLaVA-NeXT (Liu et al., 2024, "LLaVA-NeXT: Improved reasoning, OCR, and
world knowledge") and LLaVA-OneVision (Li et al., 2024, `anyres_max_N`), as LaViDa (Li et al., 2025) and LLaDA-V
(You et al., 2025) use it. Only what those two checkpoints use is here:

- preprocessing (`process_anyres_image` of LLaVA-NeXT `llava/mm_utils.py`): `select_best_resolution` (most effective
  pixels, then least waste), `resize_and_pad_image` (aspect kept, PIL's default filter, black padding centred),
  `divide_to_patches` (row-major tiles of the tower's size), the base view = the whole image squashed to the tower's
  size (LLaVA keeps this resize, its "FIXME" notwithstanding), then the SigLIP processor on every view;
- merging (`prepare_inputs_labels_for_multimodal` of LLaVA-NeXT `llava/model/llava_arch.py`, `spatial_unpad`
  branch): base view first, then the tiles as one (rows * side, cols * side) grid, `unpad_image`, for
  `anyres_max_N` a bilinear shrink to about N tiles' worth when more than 1.1x over, then `image_newline` appended to
  every row, flattened row-major.

Not here (neither checkpoint uses them at inference): `anyres` without `unpad`, `maxpool2x2`, `nobase`, the
"highres" / "crop_split" / "pad" aspect modes, and the video paths (per-frame pooling, `mm_newline_position`).

Which checkpoint does what (verified against jacklishufan/LaViDa `scripts/train/exps/cluster/llada-hd-llada-s2.sh`
and LaViDa's `llava_arch.py` as kept in its forks, and the LLaDA-V training flags `--image_aspect_ratio anyres_max_4
--image_grid_pinpoints "(1x1),...,(6x6)" --mm_patch_merge_type spatial_unpad`):

| | LaViDa | LLaDA-V |
|---|---|---|
| grid pinpoints | (384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152) | 1..6 x 1..6 tiles of 384 |
| per-view pooling | 2x2 after the projector (`get_2dPool`, 27 -> 14) | none |
| aspect mode | `anyres` (no shrink) | `anyres_max_4` |

Worked example (LaViDa, a 1000 x 500 image): the best resolution is 768 x 384 (all of the image's 768 x 384 downscale
fits, nothing wasted), so 1 x 2 tiles plus the base view; after pooling each view is 14 x 14, the tiles form a
14 x 28 grid that unpadding keeps whole (same aspect ratio), and the image gives 196 + 14 * (28 + 1) = 602 tokens.

>>> select_best_resolution((1000, 500), [(384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152)])
(768, 384)
>>> anyres_num_tokens((1000, 500), [[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152]], tile=384, side=14)
602
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from mmdiff.adapters.base import check_finite_inputs, register_adapter
from mmdiff.adapters.images import ImageSpec, ImageTransform, load_image
from mmdiff.adapters.vision import SiglipVisionAdapter, VisionAdapterConfig

__all__ = [
    "AnyResVisionAdapterConfig",
    "AnyResSiglipAdapter",
    "parse_grid_pinpoints",
    "select_best_resolution",
    "resize_and_pad_image",
    "divide_to_patches",
    "anyres_grid_shape",
    "anyres_views",
    "unpad_image",
    "unpadded_size",
    "merge_anyres_features",
    "anyres_num_tokens",
    "SHRINK_TOLERANCE",
]

SHRINK_TOLERANCE = 1.1  # anyres_max_N shrinks the tile grid only when it is more than 1.1x too large (LLaVA-OneVision)
_RANGE = re.compile(r"\((\d+)x(\d+)\)")


# --- pinpoints and resolutions --------------------------------------------------------------------------------


def parse_grid_pinpoints(pinpoints: Any, tile: int) -> list[tuple[int, int]]:
    """Grid pinpoints as (width, height) pixel pairs, from any form a LLaVA config.json stores.

    Accepts a list of [width, height] pairs (what LLaVA-NeXT's train.py writes into config.json), its string form
    "[(384, 768), ...]", or the range form "(1x1),...,(6x6)" (every i x j from the first pair to the last, times the
    tile size, as LLaVA-NeXT's `get_anyres_image_grid_shape` expands it).

    >>> parse_grid_pinpoints("(1x1),...,(2x2)", 384)
    [(384, 384), (384, 768), (768, 384), (768, 768)]
    """
    if isinstance(pinpoints, str) and "x" in pinpoints:
        matches = _RANGE.findall(pinpoints)
        if not matches:
            raise ValueError(f"grid pinpoints {pinpoints!r} are not of the form '(1x1),...,(6x6)'")
        (i0, j0), (i1, j1) = (tuple(map(int, m)) for m in (matches[0], matches[-1]))
        pairs = [(i * tile, j * tile) for i in range(i0, i1 + 1) for j in range(j0, j1 + 1)]
    else:
        if isinstance(pinpoints, str):
            try:
                pinpoints = ast.literal_eval(pinpoints)
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"grid pinpoints {pinpoints!r} are not a list of (width, height) pairs") from err
        if not isinstance(pinpoints, (list, tuple)):
            raise ValueError(f"grid pinpoints must be a list of (width, height) pairs, got {pinpoints!r}")
        pairs = []
        for pair in pinpoints:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"grid pinpoint {pair!r} is not a (width, height) pair")
            pairs.append((int(pair[0]), int(pair[1])))
    if not pairs:
        raise ValueError("grid pinpoints are empty; give at least one (width, height) resolution")
    bad = [p for p in pairs if min(p) < tile or p[0] % tile or p[1] % tile]
    if bad:
        raise ValueError(f"grid pinpoints {bad} are not whole multiples of the tower's {tile}-pixel tile")
    return pairs


def select_best_resolution(original_size: Sequence[int], resolutions: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The (width, height) from `resolutions` that keeps most of the image's pixels when it is scaled to fit
    (aspect kept, never upscaled past the original pixel count), ties broken by the least padding; first wins.

    >>> select_best_resolution((800, 600), [(384, 768), (768, 384), (768, 768)])
    (768, 768)
    """
    width, height = original_size
    best, most_effective, least_wasted = None, 0, float("inf")
    for w, h in resolutions:
        scale = min(w / width, h / height)
        down_w, down_h = int(width * scale), int(height * scale)
        effective = min(down_w * down_h, width * height)
        wasted = w * h - effective
        if effective > most_effective or (effective == most_effective and wasted < least_wasted):
            best, most_effective, least_wasted = (int(w), int(h)), effective, wasted
    if best is None:
        raise ValueError(f"no grid resolution fits an image of size {tuple(original_size)}")
    return best


def resize_and_pad_image(image: Image.Image, target: Sequence[int]) -> Image.Image:
    """The image resized (aspect kept, PIL's default filter) to fit `target` (width, height), centred on black."""
    width, height = image.size
    target_w, target_h = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(height * scale_w), target_h)
    else:
        new_w, new_h = min(math.ceil(width * scale_h), target_w), target_h
    resized = image.resize((new_w, new_h))
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(resized, ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def divide_to_patches(image: Image.Image, tile: int) -> list[Image.Image]:
    """Row-major `tile` x `tile` crops of an image whose sides are multiples of `tile`."""
    width, height = image.size
    return [image.crop((x, y, x + tile, y + tile)) for y in range(0, height, tile) for x in range(0, width, tile)]


def anyres_grid_shape(image_size: Sequence[int], pinpoints: Any, tile: int) -> tuple[int, int]:
    """(columns, rows) of tiles an image of `image_size` (width, height) is cut into."""
    width, height = select_best_resolution(image_size, parse_grid_pinpoints(pinpoints, tile))
    return width // tile, height // tile


def anyres_views(image: Any, spec: ImageSpec, pinpoints: Any) -> tuple[Tensor, tuple[int, int]]:
    """One image -> its views as the tower's input: the base view then the tiles, (1 + rows * cols, C, S, S), and
    the original (width, height) the merge needs.

    Args:
        image: anything `load_image` reads (path, bytes, PIL image, array) or a (C, H, W) uint8 tensor.
        spec: the tower's preprocessing (square size S = the tile; SigLIP: squash, bicubic, mean = std = 0.5).
        pinpoints: the grid pinpoints, in any form `parse_grid_pinpoints` reads.
    """
    height, width = spec.size
    if height != width:
        raise ValueError(f"anyres needs a square tower input, got size {spec.size}")
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8:
            raise TypeError("anyres images given as tensors must be uint8 (C, H, W); pass PIL images or paths")
        import torchvision.transforms.functional as TF

        image = TF.to_pil_image(image.cpu())
    image = load_image(image, channels=spec.channels)
    best = select_best_resolution(image.size, parse_grid_pinpoints(pinpoints, width))
    tiles = divide_to_patches(resize_and_pad_image(image, best), width)
    base = image.resize((width, width))  # the whole image squashed to one view, with PIL's default filter
    transform = ImageTransform(spec)
    return torch.stack([transform(view) for view in [base, *tiles]]), image.size


# --- merging ----------------------------------------------------------------------------------------------------


def unpadded_size(height: int, width: int, image_size: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) crop of a (height, width) feature grid that removes the letterbox padding of an
    image of `image_size` (width, height), as LLaVA-NeXT's `unpad_image` computes it (int() of the scaled side,
    floor-halved padding cut from both ends)."""
    original_w, original_h = image_size
    if original_w / original_h > width / height:  # padding was added above and below
        new_h = int(original_h * (width / original_w))
        pad = (height - new_h) // 2
        return pad, height - pad, 0, width
    new_w = int(original_w * (height / original_h))  # padding was added left and right
    pad = (width - new_w) // 2
    return 0, height, pad, width - pad


def unpad_image(features: Tensor, image_size: Sequence[int]) -> Tensor:
    """(C, H, W) feature grid of a padded, resized image -> the grid of the image alone (LLaVA-NeXT's `unpad_image`;
    `image_size` is (width, height))."""
    top, bottom, left, right = unpadded_size(features.shape[1], features.shape[2], image_size)
    return features[:, top:bottom, left:right]


def _shrunk(height: int, width: int, side: int, max_tiles: int | None) -> tuple[int, int] | None:
    """anyres_max_N: the grid size to interpolate to, or None when the unpadded grid is small enough."""
    if max_tiles is None:
        return None
    times = math.sqrt(height * width / (max_tiles * side**2))
    if times <= SHRINK_TOLERANCE:
        return None
    return int(height // times), int(width // times)


def merge_anyres_features(features: Tensor, image_size: Sequence[int], pinpoints: Any, tile: int, *,
                          newline: Tensor | None, max_tiles: int | None = None) -> Tensor:
    """Per-view features (1 + rows * cols, side * side, D), base view first -> the image's tokens (N, D): the base
    view's side * side tokens, then the unpadded tile grid row by row, each row closed by `newline` (D,).

    Args:
        features: the projected (and, for LaViDa, pooled) features of `anyres_views`' views.
        image_size: the original (width, height).
        pinpoints: the grid pinpoints the views were cut with.
        tile: the tower's input size (the tile side in pixels).
        newline: the learned `image_newline` embedding; None leaves rows unterminated.
        max_tiles: N of `anyres_max_N` (shrink the grid to about N tiles); None for plain `anyres`.
    """
    views, count, dim = features.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"each view must give a square token grid, got {count} tokens")
    cols, rows = anyres_grid_shape(image_size, pinpoints, tile)
    if views != 1 + rows * cols:
        raise ValueError(f"an image of size {tuple(image_size)} is cut into {rows}x{cols} tiles plus the base view, "
                         f"but {views} views were given; build the views with anyres_views")
    base, tiles = features[0], features[1:]
    grid = tiles.view(rows, cols, side, side, dim)  # (rows, cols, side, side, D)
    grid = grid.permute(4, 0, 2, 1, 3).reshape(dim, rows * side, cols * side)  # (D, rows*side, cols*side)
    grid = unpad_image(grid, image_size)  # (D, h, w)
    target = _shrunk(grid.shape[1], grid.shape[2], side, max_tiles)
    if target is not None:
        grid = F.interpolate(grid[None], list(target), mode="bilinear")[0]  # (D, h', w')
    if newline is not None:
        column = newline.to(grid)[:, None, None].expand(dim, grid.shape[1], 1)  # (D, h, 1)
        grid = torch.cat([grid, column], dim=-1)  # (D, h, w + 1)
    return torch.cat([base, grid.flatten(1, 2).transpose(0, 1)], dim=0)  # (side^2 + h * (w + 1), D)


def anyres_num_tokens(image_size: Sequence[int], pinpoints: Any, *, tile: int, side: int,
                      max_tiles: int | None = None, newline: bool = True) -> int:
    """Tokens `merge_anyres_features` gives for an image of `image_size` (width, height), without running anything:
    side^2 for the base view plus h * (w + 1) for the unpadded (and possibly shrunk) tile grid."""
    cols, rows = anyres_grid_shape(image_size, pinpoints, tile)
    top, bottom, left, right = unpadded_size(rows * side, cols * side, image_size)
    height, width = bottom - top, right - left
    height, width = _shrunk(height, width, side, max_tiles) or (height, width)
    return side * side + height * (width + int(newline))


# --- the adapter ------------------------------------------------------------------------------------------------


@dataclass
class AnyResVisionAdapterConfig(VisionAdapterConfig):
    """A SigLIP vision adapter with LLaVA-NeXT anyres tiling (the public LaViDa and LLaDA-V checkpoints).

    Adds to `VisionAdapterConfig`:

    Args:
        grid_pinpoints: the candidate (width, height) resolutions in pixels, multiples of the tower's input size.
        max_tiles: N of `anyres_max_N` (LLaDA-V: 4); None for plain `anyres` (LaViDa).
        newline: the adapter holds a learned `image_newline` (d_model,) that closes every row of the tile grid.
    """

    grid_pinpoints: list[list[int]] = field(default_factory=list)
    max_tiles: int | None = None
    newline: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.grid_pinpoints = [[int(w), int(h)] for w, h in self.grid_pinpoints]
        if not self.grid_pinpoints:
            raise ValueError("grid_pinpoints is empty: give the (width, height) resolutions anyres tiles to")
        if self.max_tiles is not None and (isinstance(self.max_tiles, bool) or self.max_tiles < 1):
            raise ValueError(f"max_tiles must be a positive integer or None, got {self.max_tiles!r}")


@register_adapter("vision/siglip_anyres")
class AnyResSiglipAdapter(SiglipVisionAdapter):
    """`SiglipVisionAdapter` plus anyres tiling and the `image_newline` embedding (state key `image_newline`).

    `preprocess` / `forward` / `num_tokens` are the per-view path of the parent (one view: the image squashed to the
    tower's size, then tower -> projector -> optional 2x2 pooling), which is what the VLM task's fixed-size canvas
    runs today. The checkpoints' own image encoding, a variable number of tokens per image, is `encode_anyres`
    (tokens) with `anyres_num_tokens` (their count, for canvas layout).

    >>> from mmdiff.adapters import build_adapter
    >>> adapter = build_adapter("vision/siglip_anyres", model_name="", d_model=8, feature_layer=-2,
    ...     tower_kwargs={"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
    ...                   "image_size": 28, "patch_size": 7},
    ...     image={"size": (28, 28), "mean": (0.5,) * 3, "std": (0.5,) * 3, "resize_mode": "squash"},
    ...     grid_pinpoints=[[28, 56], [56, 28], [56, 56]])
    >>> adapter.anyres_num_tokens((100, 50))  # 4x4 base view + a 4x8 tile grid with a newline per row
    52
    """

    tower_name: ClassVar[str] = "siglip_anyres"
    config_class: ClassVar[type] = AnyResVisionAdapterConfig
    config: AnyResVisionAdapterConfig

    def __init__(self, config: AnyResVisionAdapterConfig, *, load_pretrained: bool | None = None) -> None:
        super().__init__(config, load_pretrained=load_pretrained)
        parse_grid_pinpoints(config.grid_pinpoints, self.tile)  # multiples of the tile, non-empty
        self.image_newline = nn.Parameter(torch.zeros(config.d_model)) if config.newline else None

    @property
    def tile(self) -> int:
        """Side in pixels of one view (the tower's square input size)."""
        height, width = self.image_spec.size
        if height != width:
            raise ValueError(f"anyres needs a square tower input, got size {self.image_spec.size}")
        return height

    @property
    def view_side(self) -> int:
        """Side of one view's token grid after the projector (and pooling)."""
        return math.isqrt(self.num_tokens())

    def anyres_views(self, image: Any) -> tuple[Tensor, tuple[int, int]]:
        """One image -> (views (1 + tiles, C, S, S), original (width, height)); see `anyres_views`."""
        return anyres_views(image, self.image_spec, self.config.grid_pinpoints)

    def anyres_num_tokens(self, image_size: Sequence[int]) -> int:
        """Tokens `encode_anyres` gives for an image of `image_size` (width, height)."""
        return anyres_num_tokens(image_size, self.config.grid_pinpoints, tile=self.tile, side=self.view_side,
                                 max_tiles=self.config.max_tiles, newline=self.config.newline)

    def prepare(self, raw: Sequence[Any]) -> tuple[list[tuple[Tensor, tuple[int, int]]], list[int]]:
        """Images of a batch -> (per image its views and original (width, height), per image its token count):
        each image gets as many tokens as its size calls for (LLaVA-NeXT tiling)."""
        check_finite_inputs(raw, self.key)
        views = [self.anyres_views(image) for image in raw]
        check_finite_inputs([v for v, _ in views], self.key)
        return views, [self.anyres_num_tokens(size) for _, size in views]

    def embed(self, signal: Sequence[tuple[Tensor, tuple[int, int]]]) -> Tensor:
        """Views of a batch (`prepare`) -> (B, N, d_model) soft tokens, N the most any image needs; an image of
        fewer tokens is left-padded with zeros (its spare slots come first on the canvas)."""
        tokens = [self._merged(views, size) for views, size in signal]  # per image (n_i, d_model)
        N = max(t.shape[0] for t in tokens)
        embeds = tokens[0].new_zeros(len(tokens), N, tokens[0].shape[-1])  # (B, N, d_model)
        for row, t in enumerate(tokens):
            embeds[row, N - t.shape[0] :] = t
        return embeds

    def _merged(self, views: Tensor, size: tuple[int, int]) -> Tensor:
        """One image's views (1 + tiles, C, S, S) -> its tokens (n, d_model)."""
        features = self(views.to(next(self.parameters()).device))  # (views, side^2, d_model)
        return merge_anyres_features(features, size, self.config.grid_pinpoints, self.tile,
                                     newline=self.image_newline, max_tiles=self.config.max_tiles)

    def encode_anyres(self, images: Any) -> list[Tensor]:
        """One image or a list of them -> per image its tokens (N_i, d_model), N_i = `anyres_num_tokens(size)`:
        every view through tower, projector and pooling, then `merge_anyres_features`."""
        items = images if isinstance(images, (list, tuple)) else [images]
        return [self._merged(*self.anyres_views(image)) for image in items]
