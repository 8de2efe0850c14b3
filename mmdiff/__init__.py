"""mmdiff: a multimodal masked-diffusion model zoo for PyTorch.

One shared masked-diffusion transformer core; modalities plug in through adapter registries; every task (text,
VLM, ASR, text-to-image, VLA) runs through the same canvas -> core -> head -> sampler path.

`import mmdiff` is light: it imports neither torch nor any optional package (transformers, timm, open_clip,
torchaudio, metaworld, ...). The public names below load their module on first use (PEP 562 module `__getattr__`),
and the registries import the modules of their built-in entries on their first lookup (`Registry.provided_by`), so
`mmdiff list` and `mmdiff --help` answer without torch.

>>> import mmdiff
>>> mmdiff.list_models("shakespeare*")
['shakespeare-tiny']
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from mmdiff.registry import ADAPTERS, ARCHITECTURES, CONVERTERS, HEADS, SAMPLERS, SCHEDULES, TASKS, Registry

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from mmdiff.canvas import Canvas
    from mmdiff.core import CoreConfig, CoreOutput, MaskedDiffusionTransformer, build_attention_mask
    from mmdiff.diffusion import LossOutput, Schedule, diffusion_loss, forward_process, get_schedule
    from mmdiff.modeling import DiffusionModel, ModelConfig, SamplerConfig
    from mmdiff.pipelines import pipeline
    from mmdiff.sampling import (
        BlockDiffusionSampler,
        DiscreteDiffusionVLASampler,
        DreamSampler,
        LLaDASampler,
        Sampler,
        llada_generate,
    )
    from mmdiff.vocab import VocabLayout
    from mmdiff.zoo import create_model, list_models, model_info, register_model

__version__ = "0.1.0"

# the modules that register each registry's built-in entries, imported by the registry's first lookup
ARCHITECTURES.provided_by("mmdiff.core")
ADAPTERS.provided_by("mmdiff.adapters")
HEADS.provided_by("mmdiff.heads")
SAMPLERS.provided_by("mmdiff.sampling")
TASKS.provided_by("mmdiff.tasks")
SCHEDULES.provided_by("mmdiff.diffusion")
CONVERTERS.provided_by("mmdiff.convert")  # the foreign layouts that save_pretrained(layout=...) looks up

# public name -> the module that defines it (imported when the name is first used)
_LAZY = {
    "Canvas": "mmdiff.canvas",
    **dict.fromkeys(["CoreConfig", "CoreOutput", "MaskedDiffusionTransformer", "build_attention_mask"], "mmdiff.core"),
    **dict.fromkeys(["LossOutput", "Schedule", "diffusion_loss", "forward_process", "get_schedule"],
                    "mmdiff.diffusion"),
    **dict.fromkeys(["DiffusionModel", "ModelConfig", "SamplerConfig"], "mmdiff.modeling"),
    "pipeline": "mmdiff.pipelines",
    **dict.fromkeys(["llada_generate", "Sampler", "LLaDASampler", "DreamSampler", "BlockDiffusionSampler",
                     "DiscreteDiffusionVLASampler"], "mmdiff.sampling"),
    "VocabLayout": "mmdiff.vocab",
    **dict.fromkeys(["create_model", "list_models", "model_info", "register_model"], "mmdiff.zoo"),
}


def __getattr__(name: str) -> Any:
    """A public name from its module, or a submodule (`mmdiff.zoo`), imported on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later uses skip this function
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Canvas",
    "CoreConfig",
    "CoreOutput",
    "MaskedDiffusionTransformer",
    "build_attention_mask",
    "LossOutput",
    "Schedule",
    "diffusion_loss",
    "forward_process",
    "get_schedule",
    "DiffusionModel",
    "ModelConfig",
    "SamplerConfig",
    "Registry",
    "ARCHITECTURES",
    "ADAPTERS",
    "HEADS",
    "SAMPLERS",
    "SCHEDULES",
    "TASKS",
    "llada_generate",
    "Sampler",
    "LLaDASampler",
    "DreamSampler",
    "BlockDiffusionSampler",
    "DiscreteDiffusionVLASampler",
    "pipeline",
    "VocabLayout",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
