"""Modality adapters: continuous encoders + projectors that turn images (and later audio, robot state) into soft
tokens for the canvas, found by "modality/name" in `mmdiff.registry.ADAPTERS`.

Registered here: "vision/timm", "vision/open_clip", "vision/siglip" (see `mmdiff.adapters.vision`); the robot
action tokenizers "action/bins", "action/fast" and the proprio-state adapters "state/mlp", "state/bins" (see
`mmdiff.adapters.actions`).

>>> from mmdiff.adapters import build_adapter
>>> from mmdiff.registry import ADAPTERS
>>> ADAPTERS.list("vision/*")
['vision/open_clip', 'vision/siglip', 'vision/siglip_anyres', 'vision/timm']
"""

from mmdiff.adapters.actions import (
    ActionBinsConfig,
    ActionBinTokenizer,
    ActionDecodeWarning,
    ActionRangeWarning,
    FastActionConfig,
    FastActionTokenizer,
    StateBinsConfig,
    StateBinTokenizer,
    StateMLPAdapter,
    StateMLPConfig,
    dct_matrix,
    quantile_bounds,
)
from mmdiff.adapters.base import (
    AdapterConfig,
    ContinuousAdapter,
    adapter_config_from_dict,
    build_adapter,
    register_adapter,
)
from mmdiff.adapters.images import ImageSpec, ImageTransform, load_image, preprocess_images, to_mode
from mmdiff.adapters.projectors import PROJECTORS, build_projector, check_projector_width, projector_widths
from mmdiff.adapters.vision import (
    OpenClipVisionAdapter,
    SiglipVisionAdapter,
    TimmVisionAdapter,
    VisionAdapter,
    VisionAdapterConfig,
    pool_2x2,
)

__all__ = [
    "AdapterConfig",
    "ContinuousAdapter",
    "adapter_config_from_dict",
    "build_adapter",
    "register_adapter",
    "ImageSpec",
    "ImageTransform",
    "load_image",
    "preprocess_images",
    "to_mode",
    "PROJECTORS",
    "build_projector",
    "check_projector_width",
    "projector_widths",
    "VisionAdapter",
    "VisionAdapterConfig",
    "TimmVisionAdapter",
    "OpenClipVisionAdapter",
    "SiglipVisionAdapter",
    "pool_2x2",
    "ActionBinsConfig",
    "ActionBinTokenizer",
    "ActionDecodeWarning",
    "ActionRangeWarning",
    "FastActionConfig",
    "FastActionTokenizer",
    "StateBinsConfig",
    "StateBinTokenizer",
    "StateMLPAdapter",
    "StateMLPConfig",
    "dct_matrix",
    "quantile_bounds",
]

# registering imports: the discrete tokenizers and the anyres SigLIP adapter
from mmdiff.adapters import anyres, diffusers_vq, magvit, vq  # noqa: E402, F401
