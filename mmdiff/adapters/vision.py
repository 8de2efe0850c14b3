"""Continuous vision adapters: a vision tower (timm, open_clip or transformers SigLIP) -> patch features from a
chosen layer -> projector -> optional 2x2 pooling -> soft tokens of the core's width.

Implements the LLaVA recipe (Liu et al., 2023, "Visual Instruction Tuning"; LLaVA-1.5's `mlp2x_gelu` projector and
`mm_vision_select_layer`) as used by the multimodal masked-diffusion models LaViDa (Li et al., 2025, "LaViDa: A
Large Diffusion Language Model for Multimodal Understanding": SigLIP features from the penultimate layer, projected,
then 2x2-pooled) and LLaDA-V (You et al., 2025). Towers: any timm model (Wightman, "PyTorch Image Models"),
open_clip visual towers (Ilharco et al., OpenCLIP), SigLIP (Zhai et al., 2023, "Sigmoid Loss for Language Image
Pre-Training") through transformers.

Feature selection (`feature_layer`): the tower's feature levels are its blocks (ViTs) or stages (CNNs), indexed
like a Python list: -1 = the last level's output, -2 = the penultimate (LLaVA's and LaViDa's
`mm_vision_select_layer=-2`), k >= 0 = level k (0-based; LLaVA's non-negative select_layer v maps to v - 1,
since LLaVA counts the embeddings as hidden state 0). `None` = the tower's final features: the last level after the
tower's final norm (timm's `forward_features`, SigLIP's `last_hidden_state` after `post_layernorm`, open_clip's
tokens after `ln_post`); an int index gives the raw block output, without the final norm (as LLaVA does). Blocks
after the chosen level and the classifier / pooling heads are removed from the tower, so every parameter left is
used (no unused-parameter issues under DDP) and a checkpoint holds only what the adapter runs.

Token order: the optional prefix tokens first (class / register tokens, when `drop_cls=False`), then the patch
grid in row-major order. Pooling (`pool_2x2`) acts on the projected patch grid, after the projector, as LaViDa's
`get_2dPool` does: "average" = `avg_pool2d(2)` (floor of odd sizes), "bilinear" = interpolation to
ceil(h/2) x ceil(w/2) (LLaVA-OneVision's default `mm_spatial_pool_mode`; 27x27 -> 14x14 for SigLIP at 384 px).

>>> import torch
>>> from mmdiff.adapters import build_adapter
>>> adapter = build_adapter("vision/timm", model_name="vit_tiny_patch16_224", d_model=32, pool_2x2=True,
...     tower_kwargs={"img_size": 56, "patch_size": 7, "depth": 2, "embed_dim": 64, "num_heads": 2})
>>> adapter.num_tokens()  # 8x8 patches pooled to 4x4
16
>>> from PIL import Image
>>> adapter.encode([Image.new("RGB", (80, 60))] * 2).shape
torch.Size([2, 16, 32])
"""

from __future__ import annotations

import abc
import difflib
import importlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiff.adapters.base import AdapterConfig, ContinuousAdapter, register_adapter
from mmdiff.adapters.images import ImageSpec, preprocess_images
from mmdiff.adapters.projectors import build_projector, is_projector, token_wise_projectors

__all__ = [
    "VisionAdapterConfig",
    "VisionAdapter",
    "TimmVisionAdapter",
    "OpenClipVisionAdapter",
    "SiglipVisionAdapter",
    "pool_2x2",
    "POOL_MODES",
]

POOL_MODES = ("average", "bilinear")


@dataclass
class VisionAdapterConfig(AdapterConfig):
    """A vision adapter: tower, feature layer, projector, pooling and the image preprocessing.

    Dict form (`to_dict`, what `config.json` stores): `{"adapter": "vision/<tower>", "model_name": ..., ...}`.

    Args:
        tower: "timm", "open_clip" or "siglip" (registry key "vision/<tower>").
        model_name: timm model name ("vit_base_patch16_224", "resnet18", "hf-hub:..."); open_clip model name
            ("ViT-B-32", "hf-hub:...", "local-dir:..."); SigLIP: a local folder or hub id (config, and weights when
            pretrained), or "" to build from `tower_kwargs` alone (a `SiglipVisionConfig`).
        d_model: width of the soft tokens: the core's d_model.
        tower_kwargs: keyword arguments for the tower's constructor (timm `create_model`, open_clip `create_model`
            (the pretrained tag goes here: {"pretrained": "laion2b_s34b_b79k"}), `SiglipVisionConfig` fields);
            must be JSON-serialisable.
        feature_layer: which level's features (see the module docstring); None = the final, normed features.
        drop_cls: drop the prefix (class / register) tokens, keeping only the patch grid.
        pool_2x2: pool the projected patch grid 2x2 (LaViDa); prefix tokens are kept unpooled.
        pool_mode: "average" (avg_pool2d) or "bilinear" (interpolate to ceil(h/2) x ceil(w/2)).
        projector: "linear", "mlp2x_gelu" (LLaVA naming; any "mlp{N}x_gelu") or a name in `PROJECTORS`.
        pretrained: load the tower's pretrained weights when the adapter is built (needs them downloaded).
        freeze_tower: no gradients into the tower, which also stays in eval mode.
        image: the preprocessing spec; None = read from the tower's data config at build time (the built
            adapter's `config.image` holds the resolved spec, which is what gets saved).
    """

    tower: str
    model_name: str
    d_model: int
    tower_kwargs: dict[str, Any] = field(default_factory=dict)
    feature_layer: int | None = None
    drop_cls: bool = True
    pool_2x2: bool = False
    pool_mode: Literal["average", "bilinear"] = "average"
    projector: str = "mlp2x_gelu"
    pretrained: bool = False
    freeze_tower: bool = False
    image: ImageSpec | None = None

    modality: ClassVar[str] = "vision"
    name_field: ClassVar[str] = "tower"

    def __post_init__(self) -> None:
        if isinstance(self.image, dict):
            self.image = ImageSpec(**self.image)
        if not isinstance(self.tower, str) or not self.tower:
            raise ValueError(f"tower must be a non-empty string such as 'timm', got {self.tower!r}")
        if isinstance(self.d_model, bool) or not isinstance(self.d_model, int) or self.d_model < 1:
            raise ValueError(f"d_model must be a positive integer (the core's width), got {self.d_model!r}")
        if self.feature_layer is not None and (isinstance(self.feature_layer, bool)
                                               or not isinstance(self.feature_layer, int)):
            raise ValueError(f"feature_layer must be an int or None, got {self.feature_layer!r}")
        if self.pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {self.pool_mode!r}")
        if not is_projector(self.projector, token_wise=True):  # the patch grid keeps one token per patch
            raise ValueError(f"unknown projector {self.projector!r}; known: {', '.join(token_wise_projectors())} or "
                             "any 'mlp{N}x_gelu'")
        try:
            json.dumps(self.tower_kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"tower_kwargs must be JSON-serialisable (they are saved in config.json): {err}") from err


class VisionAdapter(ContinuousAdapter):
    """Base of the vision adapters: preprocessing, projection, pooling and token counts; subclasses wrap a tower.

    Subclasses set `tower_name` and implement `build_tower(load_pretrained) -> nn.Module`, `default_image_spec()`
    and `tower_features(pixels) -> (grid (B, C, h, w), prefix (B, P, C) or None)`; they may give
    `analytic_geometry` to avoid a probe forward pass.

    Attributes:
        tower: the (pruned) tower module; its state-dict keys are the tower library's own (`tower.<native key>`).
        projector: `nn.Linear` or `nn.Sequential` in LLaVA's key layout (`projector.0.weight`, ...).
        feature_dim: width C of the tower features.
    """

    modality: ClassVar[str] = "vision"
    config_class: ClassVar[type] = VisionAdapterConfig
    tower_name: ClassVar[str] = ""
    config: VisionAdapterConfig

    def __init__(self, config: VisionAdapterConfig, *, load_pretrained: bool | None = None) -> None:
        super().__init__(config)
        if config.tower != self.tower_name:
            raise ValueError(f"{type(self).__name__} builds tower {self.tower_name!r}, got tower={config.tower!r}")
        self._geometry_cache: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self.tower = self.build_tower(config.pretrained if load_pretrained is None else bool(load_pretrained))
        if config.image is None:
            self.config = replace(config, image=self.default_image_spec())
        channels, height, width, _ = self._geometry(*self.config.image.size)
        if config.pool_2x2 and config.pool_mode == "average" and min(height, width) < 2:
            raise ValueError(f"pool_2x2 needs a patch grid of at least 2x2, but {config.model_name!r} gives "
                             f"{height}x{width} at {self.config.image.size}; turn pool_2x2 off or use larger images")
        self.feature_dim = channels
        self.projector = build_projector(config.projector, channels, config.d_model)
        if config.freeze_tower:
            self.tower.requires_grad_(False)
            self.tower.eval()

    # --- subclass hooks ---------------------------------------------------------------------------------------

    @abc.abstractmethod
    def build_tower(self, load_pretrained: bool) -> nn.Module:
        """Creates the tower, keeps only what the chosen feature layer needs, and returns it."""

    @abc.abstractmethod
    def default_image_spec(self) -> ImageSpec:
        """The preprocessing the tower was built for, read from its own data config."""

    @abc.abstractmethod
    def tower_features(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, C, H, W) pixels -> the patch grid (B, C', h, w) and the prefix tokens (B, P, C') or None."""

    def analytic_geometry(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """(feature width C, grid h, grid w, prefix tokens P) for an input size, without running the tower;
        None = unknown (the adapter then runs the tower once on zeros)."""
        return None

    # --- public API -------------------------------------------------------------------------------------------

    @property
    def image_spec(self) -> ImageSpec:
        """The preprocessing spec (saved in the config)."""
        return self.config.image  # type: ignore[return-value]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one preprocessed image."""
        return self.image_spec.input_shape

    def preprocess(self, raw: Any) -> Tensor:
        """Images (a path, bytes, PIL image, array or (C, H, W) tensor, or a list of them, or a (B, C, H, W)
        tensor: uint8, or float in [0, 1]) -> normalized float pixels (B, C, H, W) at the tower's size."""
        return preprocess_images(raw, self.image_spec)

    def features(self, pixel_values: Tensor) -> Tensor:
        """Tower features before projection: (B, P + h*w, C), prefix tokens first, then the row-major grid."""
        grid, prefix = self._tower_forward(pixel_values)
        tokens = grid.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)
        return tokens if prefix is None else torch.cat([prefix, tokens], dim=1)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Preprocessed pixels (B, C, H, W) -> soft tokens (B, num_tokens, d_model)."""
        grid, prefix = self._tower_forward(pixel_values)
        _, _, height, width = grid.shape
        dtype = _first_dtype(self.projector, grid.dtype)
        tokens = self.projector(grid.flatten(2).transpose(1, 2).to(dtype))  # (B, h*w, C) -> (B, h*w, d_model)
        if self.config.pool_2x2:
            tokens = pool_2x2(tokens, height, width, self.config.pool_mode)  # (B, h'*w', d_model)
        if prefix is not None:
            tokens = torch.cat([self.projector(prefix.to(dtype)), tokens], dim=1)  # (B, P + N, d_model)
        return tokens

    def grid_size(self, input_shape: Sequence[int] | None = None) -> tuple[int, int]:
        """(h, w) of the tower's patch grid (before pooling) for one input of `input_shape` ((C,) H, W)."""
        _, height, width, _ = self._geometry(*self._hw(input_shape))
        return height, width

    def num_tokens(self, input_shape: Sequence[int] | None = None) -> int:
        """Soft tokens per image: prefix tokens + the (pooled) grid, for an input of `input_shape` ((C,) H, W);
        None = the spec's size."""
        _, height, width, prefix = self._geometry(*self._hw(input_shape))
        if self.config.pool_2x2:
            height, width = pooled_size(height, width, self.config.pool_mode)
        return prefix + height * width

    def train(self, mode: bool = True) -> VisionAdapter:
        super().train(mode)
        if self.config.freeze_tower:
            self.tower.eval()  # a frozen tower keeps dropout off and batch-norm statistics fixed
        return self

    # --- internals --------------------------------------------------------------------------------------------

    def _tower_forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor | None]:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.image_spec.channels:
            raise ValueError(
                f"vision adapters take preprocessed pixels (B, {self.image_spec.channels}, H, W), got "
                f"{tuple(pixel_values.shape)}; run `adapter.preprocess(images)` first (or `adapter.encode`)"
            )
        param = next(self.tower.parameters(), None)
        if param is not None:
            pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
        trainable = any(p.requires_grad for p in self.tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            return self.tower_features(pixel_values)

    def _hw(self, input_shape: Sequence[int] | None) -> tuple[int, int]:
        if input_shape is None:
            return self.image_spec.size
        shape = tuple(int(s) for s in input_shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"input_shape must be (H, W) or (C, H, W), got {shape}")
        return shape[-2], shape[-1]

    def _geometry(self, height: int, width: int) -> tuple[int, int, int, int]:
        key = (height, width)
        if key not in self._geometry_cache:
            self._geometry_cache[key] = self.analytic_geometry(height, width) or self._probe(height, width)
        return self._geometry_cache[key]

    @torch.no_grad()
    def _probe(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Runs the tower once on zeros to read the feature width, grid size and prefix count."""
        param = next(self.tower.parameters())
        pixels = torch.zeros(1, self.image_spec.channels, height, width, device=param.device, dtype=param.dtype)
        training = self.tower.training
        self.tower.eval()  # batch norm cannot run in training mode on one image
        try:
            grid, prefix = self.tower_features(pixels)
        finally:
            self.tower.train(training)
        return grid.shape[1], grid.shape[2], grid.shape[3], 0 if prefix is None else prefix.shape[1]


def pooled_size(height: int, width: int, mode: str) -> tuple[int, int]:
    """Grid size after `pool_2x2`: floor halves for "average", ceil halves for "bilinear"."""
    if mode == "average":
        return height // 2, width // 2
    return math.ceil(height / 2), math.ceil(width / 2)


def pool_2x2(tokens: Tensor, height: int, width: int, mode: str = "average") -> Tensor:
    """2x2 pooling of a row-major token grid (LaViDa's `get_2dPool`, stride 2).

    Args:
        tokens: (B, height * width, D).
        height, width: the grid.
        mode: "average" (avg_pool2d, odd sizes floored) or "bilinear" (interpolate to ceil(h/2) x ceil(w/2)).

    >>> pool_2x2(torch.arange(16.0).view(1, 16, 1), 4, 4).flatten().tolist()
    [2.5, 4.5, 10.5, 12.5]
    """
    batch, num, dim = tokens.shape
    if num != height * width:
        raise ValueError(f"pool_2x2 got {num} tokens for a {height}x{width} grid")
    if mode == "average" and min(height, width) < 2:
        raise ValueError(f"average 2x2 pooling needs a grid of at least 2x2, got {height}x{width}")
    grid = tokens.transpose(1, 2).reshape(batch, dim, height, width)  # (B, D, h, w)
    if mode == "average":
        grid = F.avg_pool2d(grid, 2)  # (B, D, h//2, w//2)
    elif mode == "bilinear":
        grid = F.interpolate(grid, size=pooled_size(height, width, mode), mode="bilinear")  # (B, D, ceil, ceil)
    else:
        raise ValueError(f"pool mode must be one of {POOL_MODES}, got {mode!r}")
    return grid.flatten(2).transpose(1, 2)  # (B, h'*w', D)


def resolve_feature_level(feature_layer: int | None, levels: int, what: str) -> int:
    """`feature_layer` (None / negative / 0-based) -> a 0-based level index, with an error naming the range."""
    index = -1 if feature_layer is None else feature_layer
    resolved = index + levels if index < 0 else index
    if not 0 <= resolved < levels:
        raise ValueError(
            f"feature_layer={feature_layer} is out of range for {what}, which has {levels} feature levels (blocks "
            f"or stages): use -{levels}..-1 (counted from the last) or 0..{levels - 1}"
        )
    return resolved


def _first_dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    param = next(module.parameters(), None)
    return default if param is None else param.dtype


def _require(module: str, package: str | None = None) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"this vision tower needs `{module}`: pip install {package or module}") from err


def _unknown_name(kind: str, name: str, known: list[str], hint: str) -> ValueError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    suggestion = f" Did you mean: {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {kind} model {name!r}.{suggestion} {hint}")


def _offline_error(what: str, err: Exception, download: str) -> RuntimeError:
    return RuntimeError(
        f"could not load the pretrained weights of {what} ({type(err).__name__}: {err}). Pretrained weights are "
        f"unavailable offline: download them once while online ({download}), which fills the Hugging Face cache "
        "that offline runs read; or set pretrained=False for a randomly initialised tower (the normal choice when "
        "the weights come from an mmdiff checkpoint)"
    )


# --- timm ------------------------------------------------------------------------------------------------------


@register_adapter("vision/timm")
class TimmVisionAdapter(VisionAdapter):
    """Any timm model as the tower; features through `forward_intermediates` (timm's features-only API).

    ViTs give their patch tokens (prefix tokens split off); CNNs give the chosen stage's feature map flattened to
    tokens. `pretrained=True` asks timm for the weights (the Hugging Face cache offline).
    """

    tower_name: ClassVar[str] = "timm"

    def build_tower(self, load_pretrained: bool) -> nn.Module:
        timm = _require("timm")
        cfg, name = self.config, self.config.model_name
        if not name.startswith(("hf-hub:", "local-dir:")) and not timm.is_model(name):
            raise _unknown_name("timm", name, timm.list_models(),
                                "List the names with `timm.list_models('pattern*')`.")
        try:
            model = timm.create_model(name, pretrained=load_pretrained, **cfg.tower_kwargs)
        except (OSError, RuntimeError) as err:
            if not load_pretrained:
                raise
            repo = _timm_hub_id(timm, name)
            raise _offline_error(f"timm model {name!r}", err, f"`huggingface-cli download {repo}`, or pass "
                                 "tower_kwargs={'pretrained_cfg_overlay': {'file': 'path/to/weights.safetensors'}}"
                                 ) from err
        self._in_chans = _timm_in_chans(model, cfg.tower_kwargs)
        self._level = resolve_feature_level(cfg.feature_layer, len(model.feature_info), f"timm model {name!r}")
        model.prune_intermediate_layers([self._level], prune_norm=cfg.feature_layer is not None, prune_head=True)
        self._prefix = 0 if cfg.drop_cls else int(getattr(model, "num_prefix_tokens", 0) or 0)
        return model

    def default_image_spec(self) -> ImageSpec:
        from timm.data import resolve_data_config

        tower = self.tower
        size = getattr(getattr(tower, "patch_embed", None), "img_size", None)  # the size a ViT was built for
        if size is None:
            size = tower.pretrained_cfg.get("input_size", (3, 224, 224))[1:]
        data_config = resolve_data_config({"input_size": (self._in_chans, *size)}, model=tower)
        return ImageSpec.from_timm(data_config, channels=self._in_chans)

    def tower_features(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        extra = {"return_prefix_tokens": True} if self._prefix else {}
        out = self.tower.forward_intermediates(
            pixels, indices=[self._level], norm=self.config.feature_layer is None, stop_early=True,
            output_fmt="NCHW", intermediates_only=True, **extra,
        )[0]
        if self._prefix:
            grid, prefix = out  # (B, C, h, w), (B, P, C)
            return grid, prefix
        return out, None

    def analytic_geometry(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(self.tower, VisionTransformer):
            return None
        grid_h, grid_w = self.tower.patch_embed.dynamic_feat_size((height, width))
        return self.tower.feature_info[self._level]["num_chs"], grid_h, grid_w, self._prefix


def _timm_hub_id(timm: Any, name: str) -> str:
    """The hub repo holding a timm model's default weights (for the download hint)."""
    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError):
        pretrained_cfg = None
    return getattr(pretrained_cfg, "hf_hub_id", None) or f"timm/{name}"


def _timm_in_chans(model: nn.Module, tower_kwargs: dict[str, Any]) -> int:
    """Input channels of a timm model: its first conv's `in_channels` (the pretrained cfg names it)."""
    first = model.pretrained_cfg.get("first_conv")
    for name in [first] if isinstance(first, str) else list(first or []):
        try:
            return int(model.get_submodule(name).in_channels)
        except AttributeError:
            continue
    return int(tower_kwargs.get("in_chans", 3))


# --- open_clip -------------------------------------------------------------------------------------------------


@register_adapter("vision/open_clip")
class OpenClipVisionAdapter(VisionAdapter):
    """An open_clip model's visual tower; patch tokens through `forward_intermediates` (the text tower is dropped).

    `pretrained=True` needs a pretrained tag in `tower_kwargs` ({"pretrained": "laion2b_s34b_b79k"}) unless the
    model name has an "hf-hub:" or "local-dir:" schema.
    """

    tower_name: ClassVar[str] = "open_clip"

    def build_tower(self, load_pretrained: bool) -> nn.Module:
        open_clip = _require("open_clip", "open_clip_torch")
        cfg, name = self.config, self.config.model_name
        kwargs = dict(cfg.tower_kwargs)
        tag = kwargs.pop("pretrained", None)
        schema = name.startswith(("hf-hub:", "local-dir:"))
        if not schema and name not in open_clip.list_models():
            raise _unknown_name("open_clip", name, open_clip.list_models(),
                                "List them with `open_clip.list_models()`.")
        if load_pretrained and not schema and tag is None:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ValueError(f"pretrained open_clip {name!r} needs a weights tag: tower_kwargs={{'pretrained': TAG}} "
                             f"with TAG one of {tags}, or a file path")
        try:
            clip = open_clip.create_model(name, pretrained=tag if load_pretrained else None,
                                          load_weights=load_pretrained, **kwargs)
        except (OSError, RuntimeError) as err:
            if not load_pretrained and name.startswith("hf-hub:"):
                raise ValueError(f"open_clip {name!r} reads its config from the hub even with pretrained=False "
                                 f"({err}); offline, use a 'local-dir:' folder or a built-in model name") from err
            if not load_pretrained:
                raise
            raise _offline_error(f"open_clip model {name!r} ({tag or 'hub'})", err,
                                 f"`open_clip.create_model({name!r}, pretrained={tag!r})`") from err
        visual = clip.visual
        self._preprocess_cfg = dict(visual.preprocess_cfg)
        transformer = getattr(visual, "transformer", None)
        self._is_vit = transformer is not None and hasattr(visual, "grid_size")
        if self._is_vit:
            self._index = resolve_feature_level(cfg.feature_layer, len(transformer.resblocks),
                                                f"open_clip model {name!r}")
            visual.prune_intermediate_layers([self._index], prune_norm=cfg.feature_layer is not None)
            for pool in ("attn_pool", "attn_pool_contrastive"):  # attention poolers feed only the pooled output
                if getattr(visual, pool, None) is not None:
                    setattr(visual, pool, None)
        else:  # ModifiedResNet / timm trunks: their forward_intermediates checks the index
            self._index = -1 if cfg.feature_layer is None else cfg.feature_layer
        self._prefix = 0 if (cfg.drop_cls or not self._is_vit) else 1  # the class token
        return visual

    def default_image_spec(self) -> ImageSpec:
        return ImageSpec.from_open_clip(self._preprocess_cfg)

    def tower_features(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.tower.forward_intermediates(
            pixels, indices=[self._index], stop_early=True, normalize_intermediates=self.config.feature_layer is None,
            intermediates_only=True, output_fmt="NCHW", output_extra_tokens=bool(self._prefix),
        )
        grid = out["image_intermediates"][0]  # (B, C, h, w)
        prefix = out["image_intermediates_prefix"][0] if self._prefix else None  # (B, 1, C)
        return grid, prefix

    def analytic_geometry(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        if not self._is_vit:
            return None
        patch_h, patch_w = self.tower.patch_size
        return self.tower.transformer.width, height // patch_h, width // patch_w, self._prefix


# --- SigLIP (transformers) --------------------------------------------------------------------------------------


@register_adapter("vision/siglip")
class SiglipVisionAdapter(VisionAdapter):
    """A transformers SigLIP vision model (SigLIP / SigLIP 2 fixed-resolution checkpoints) as the tower.

    The tower module is the one holding `embeddings`, `encoder` and `post_layernorm` (`SiglipVisionModel` in
    transformers 5, its `vision_model` in 4.x), so the state-dict keys are `tower.embeddings.*`,
    `tower.encoder.layers.<i>.*`, `tower.post_layernorm.*` whatever the transformers version. Layers after the
    chosen one, the attention-pooling head and (for an int `feature_layer`) `post_layernorm` are removed.
    """

    tower_name: ClassVar[str] = "siglip"

    def build_tower(self, load_pretrained: bool) -> nn.Module:
        _require("transformers")
        from transformers import SiglipVisionConfig, SiglipVisionModel

        cfg, name = self.config, self.config.model_name
        kwargs = dict(cfg.tower_kwargs)
        if load_pretrained and not name:
            raise ValueError("pretrained SigLIP needs model_name: a local folder or hub id of a SigLIP checkpoint")
        try:
            if load_pretrained:
                model = SiglipVisionModel.from_pretrained(name, **kwargs)
            else:
                vision_config = SiglipVisionConfig.from_pretrained(name, **kwargs) if name else \
                    SiglipVisionConfig(**kwargs)
                model = SiglipVisionModel(vision_config)
        except OSError as err:
            if load_pretrained:
                raise _offline_error(f"SigLIP {name!r}", err, f"`huggingface-cli download {name}`") from err
            raise ValueError(f"cannot read a SigLIP config from {name!r} ({err}); pass a local folder with "
                             "config.json, or model_name='' with the config fields in tower_kwargs") from err
        self._vision_config = model.config
        tower = getattr(model, "vision_model", model)  # transformers 4.x nests the modules one level deeper
        level = resolve_feature_level(cfg.feature_layer, len(tower.encoder.layers), f"SigLIP {name or 'tower'!r}")
        del tower.encoder.layers[level + 1:]
        if cfg.feature_layer is not None:
            tower.post_layernorm = nn.Identity()
        if getattr(tower, "head", None) is not None:
            del tower.head  # the attention-pooling head feeds only the pooled output
        tower.use_head = False
        self._processor = _read_processor_config(name)
        return tower

    def default_image_spec(self) -> ImageSpec:
        return ImageSpec.from_hf_processor(self._processor, default_size=int(self._vision_config.image_size))

    def tower_features(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        batch, _, height, width = pixels.shape
        native = int(self._vision_config.image_size)
        hidden = self.tower.embeddings(pixels, interpolate_pos_encoding=(height, width) != (native, native))
        hidden = self.tower.encoder(inputs_embeds=hidden).last_hidden_state  # (B, h*w, C)
        hidden = self.tower.post_layernorm(hidden)
        patch = int(self._vision_config.patch_size)
        grid = hidden.transpose(1, 2).reshape(batch, hidden.shape[-1], height // patch, width // patch)
        return grid, None  # SigLIP has no class token

    def analytic_geometry(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        patch = int(self._vision_config.patch_size)
        return int(self._vision_config.hidden_size), height // patch, width // patch, 0


def _read_processor_config(name: str) -> dict[str, Any]:
    """The image-processor values of a local SigLIP folder (`preprocessor_config.json`), else {} (defaults)."""
    path = Path(name) / "preprocessor_config.json" if name else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    return {}
