"""Samplers, found by name in `mmdiff.registry.SAMPLERS`."""

from mmdiff.sampling.llada import commit_mask, gumbel_argmax, llada_generate, tokens_per_step
from mmdiff.sampling.output import GIVEN, SamplerOutput

__all__ = ["llada_generate", "tokens_per_step", "gumbel_argmax", "commit_mask", "SamplerOutput", "GIVEN"]
