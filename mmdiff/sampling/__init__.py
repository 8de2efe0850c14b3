"""Samplers: objects with typed options (`mmdiff.sampling.base.Sampler`), found by name in
`mmdiff.registry.SAMPLERS` ("llada", "dream", "llada-reference", "discrete-diffusion-vla", "block-diffusion")."""

from mmdiff.sampling.base import Sampler, SamplerOptions
from mmdiff.sampling.block import BlockDiffusionOptions, BlockDiffusionSampler
from mmdiff.sampling.ddvla import DDVLAOptions, DiscreteDiffusionVLASampler
from mmdiff.sampling.dream import DreamOptions, DreamSampler, dream_generate
from mmdiff.sampling.llada import LLaDAOptions, LLaDASampler, llada_generate
from mmdiff.sampling.output import GIVEN, SamplerOutput
from mmdiff.sampling.reference import ReferenceOptions, ReferenceSampler, reference_generate
from mmdiff.sampling.schedule import tokens_per_step
from mmdiff.sampling.selection import commit_mask, gumbel_argmax

__all__ = [
    "Sampler",
    "SamplerOptions",
    "LLaDASampler",
    "LLaDAOptions",
    "DreamSampler",
    "DreamOptions",
    "ReferenceSampler",
    "ReferenceOptions",
    "DiscreteDiffusionVLASampler",
    "DDVLAOptions",
    "BlockDiffusionSampler",
    "BlockDiffusionOptions",
    "llada_generate",
    "reference_generate",
    "dream_generate",
    "tokens_per_step",
    "gumbel_argmax",
    "commit_mask",
    "SamplerOutput",
    "GIVEN",
]
