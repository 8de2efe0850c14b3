"""Samplers, found by name in `mmdiff.registry.SAMPLERS`."""

from mmdiff.sampling.dream import dream_generate
from mmdiff.sampling.llada import commit_mask, gumbel_argmax, llada_generate, tokens_per_step
from mmdiff.sampling.output import GIVEN, SamplerOutput
from mmdiff.sampling.reference import reference_generate

__all__ = [
    "llada_generate",
    "reference_generate",
    "dream_generate",
    "tokens_per_step",
    "gumbel_argmax",
    "commit_mask",
    "SamplerOutput",
    "GIVEN",
]
