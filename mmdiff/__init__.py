"""mmdiff: a multimodal masked-diffusion model zoo for PyTorch.

One shared masked-diffusion transformer core; modalities plug in through adapter registries; every task (text,
VLM, ASR, text-to-image, VLA) runs through the same canvas -> core -> head -> sampler path.

>>> import mmdiff
>>> mmdiff.list_models("shakespeare*")
['shakespeare-tiny']
"""

import mmdiff.convert  # noqa: F401  (registers the foreign layouts that save_pretrained(layout=...) looks up)
from mmdiff.canvas import Canvas
from mmdiff.core import CoreConfig, CoreOutput, MaskedDiffusionTransformer, build_attention_mask
from mmdiff.diffusion import LossOutput, Schedule, diffusion_loss, forward_process, get_schedule
from mmdiff.modeling import DiffusionModel, ModelConfig, SamplerConfig
from mmdiff.pipelines import pipeline
from mmdiff.registry import ADAPTERS, ARCHITECTURES, HEADS, SAMPLERS, SCHEDULES, TASKS, Registry
from mmdiff.sampling import DreamSampler, LLaDASampler, Sampler, llada_generate
from mmdiff.vocab import VocabLayout
from mmdiff.zoo import create_model, list_models, model_info, register_model

__version__ = "0.1.0"

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
    "pipeline",
    "VocabLayout",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
