"""Modality adapters: continuous encoders + projectors that turn images and audio (and later robot state) into soft
tokens for the canvas, found by "modality/name" in `mmdiff.registry.ADAPTERS`.

Registered here: "vision/timm", "vision/open_clip", "vision/siglip" (see `mmdiff.adapters.vision`);
"audio/logmel-conv", "audio/whisper" (see `mmdiff.adapters.audio`), "audio/diffa" (`mmdiff.adapters.diffa`); the
robot action tokenizers "action/bins", "action/fast" and the proprio-state adapters "state/mlp", "state/bins" (see
`mmdiff.adapters.actions`).

>>> from mmdiff.adapters import build_adapter
>>> from mmdiff.registry import ADAPTERS
>>> ADAPTERS.list("vision/*")
['vision/open_clip', 'vision/siglip', 'vision/siglip_anyres', 'vision/timm']
>>> ADAPTERS.list("audio/*")
['audio/diffa', 'audio/logmel-conv', 'audio/whisper']
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
from mmdiff.adapters.audio import (
    AudioAdapter,
    AudioAdapterConfig,
    LogMelConvAdapter,
    LogMelConvConfig,
    WhisperAdapter,
    WhisperAdapterConfig,
)
from mmdiff.adapters.base import (
    AdapterConfig,
    ContinuousAdapter,
    adapter_config_from_dict,
    build_adapter,
    register_adapter,
)
from mmdiff.adapters.diffa import DiffaAdapter, DiffaAdapterConfig
from mmdiff.adapters.images import ImageSpec, ImageTransform, load_image, preprocess_images, to_mode
from mmdiff.adapters.projectors import (
    PROJECTORS,
    DiffaConvProjector,
    build_projector,
    check_projector_width,
    projected_length,
    projector_widths,
    token_wise_projectors,
)
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
    "projected_length",
    "token_wise_projectors",
    "DiffaConvProjector",
    "VisionAdapter",
    "VisionAdapterConfig",
    "TimmVisionAdapter",
    "OpenClipVisionAdapter",
    "SiglipVisionAdapter",
    "pool_2x2",
    "AudioAdapter",
    "AudioAdapterConfig",
    "LogMelConvAdapter",
    "LogMelConvConfig",
    "WhisperAdapter",
    "WhisperAdapterConfig",
    "DiffaAdapter",
    "DiffaAdapterConfig",
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
