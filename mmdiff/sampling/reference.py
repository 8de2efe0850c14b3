"""LLaDA's reference sampling loop (ML-GSAI/LLaDA `generate.py`), written out plainly: the yardstick of the `llada`
sampler's parity tests and the "reference-equivalent" row of the sampler benchmark.

Every step runs the full canvas and computes logits at every position, confidences are the softmax probability
of the argmax (in the logits' dtype), positions right of the current block and already decoded ones get -inf, and a
Python loop over rows commits each row's top-k (`torch.topk`). Greedy only (temperature 0), low-confidence
remasking, no guidance, no cache. Like the reference, a committed mask id leaves its position masked. Extended only
as far as the benchmark needs: a canvas may hold masks in place (`infill`), decoded block by block from the first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mmdiff.registry import SAMPLERS
from mmdiff.sampling.base import Sampler, SamplerOptions
from mmdiff.sampling.output import GIVEN, SamplerOutput

__all__ = ["ReferenceSampler", "ReferenceOptions", "reference_generate"]


@dataclass(frozen=True)
class ReferenceOptions(SamplerOptions):
    """The settings of `ReferenceSampler`."""

    gen_length: int = field(default=128, metadata={"help": "tokens to generate after the prompt (0 with infill)"})
    steps: int = field(default=128, metadata={"help": "total steps, split evenly over blocks"})
    block_length: int = field(default=32, metadata={"help": "block size, from the first mask"})
    infill: bool = field(default=False, metadata={"help": "also decode the mask ids inside the prompt"})

    def _check(self) -> None:
        if self.gen_length < 0 or self.block_length < 1 or self.steps < 1:
            raise ValueError(f"need gen_length >= 0, block_length >= 1 and steps >= 1, got {self.gen_length}, "
                             f"{self.block_length}, {self.steps}")


@SAMPLERS.register("llada-reference")
class ReferenceSampler(Sampler):
    """LLaDA's reference loop as a sampler object (see `reference_generate`).

    >>> ReferenceSampler(steps=8, gen_length=8, block_length=8).options.block_length
    8
    """

    name = "llada-reference"
    Options = ReferenceOptions
    options: ReferenceOptions

    def _sample(self, core: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, *, mask_id: int,
                eos_id: int | None, eot_id: int | None, generator: torch.Generator | None, return_history: bool,
                **inputs: Any) -> Tensor | SamplerOutput:
        o = self.options
        return reference_generate(core, input_ids, attention_mask, mask_id=mask_id, gen_length=o.gen_length,
                                  steps=o.steps, block_length=o.block_length, infill=o.infill,
                                  return_history=return_history)


@torch.no_grad()
def reference_generate(
    core: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    mask_id: int,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int = 32,
    infill: bool = False,
    return_history: bool = False,
) -> Tensor | SamplerOutput:
    """Greedy LLaDA sampling exactly as the reference loop computes it (slow on purpose).

    Args:
        core: a `MaskedDiffusionTransformer`.
        input_ids: (B, P) prompts (left-padded with `attention_mask`; absolute positions, as the reference).
        attention_mask: (B, P) True at real tokens.
        mask_id: the mask token id.
        gen_length: tokens to generate after the prompt (0 with `infill`).
        steps: total steps, split evenly over blocks.
        block_length: block size; the region from the first mask is cut into blocks of this size.
        infill: also decode the mask ids inside the prompt.
        return_history: return a `SamplerOutput` (sequences, the step that committed each position, forward passes).

    Returns:
        (B, P + gen_length), or a `SamplerOutput` with `return_history`.

    >>> # reference_generate(model.core, prompt, mask_id=model.vocab.mask_id, gen_length=64, steps=64)
    """
    B, P = input_ids.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=input_ids.device)
    x[:, :P] = input_ids
    attention = None
    if attention_mask is not None:
        attention = torch.cat([attention_mask.bool(), torch.ones(B, gen_length, dtype=torch.bool, device=x.device)], 1)
    decodable = x == mask_id if attention is None else (x == mask_id) & attention
    if not infill:
        decodable[:, :P] = False
    commit_step = torch.where(decodable, 0, GIVEN)
    nfe = 0
    start = int(decodable.any(0).nonzero()[0])
    n_blocks = math.ceil((P + gen_length - start) / block_length)
    steps_per_block = steps // n_blocks
    for b in range(n_blocks):
        lo, hi = start + b * block_length, min(start + (b + 1) * block_length, P + gen_length)
        block_masks = (decodable & (x == mask_id))[:, lo:hi].sum(1)
        counts = torch.zeros(B, steps_per_block, dtype=torch.long)
        for j in range(B):  # floor(M / S) per step, the first M mod S steps one more
            counts[j] = int(block_masks[j]) // steps_per_block
            counts[j, : int(block_masks[j]) % steps_per_block] += 1
        for i in range(steps_per_block):
            masked = decodable & (x == mask_id)
            logits = core(x, attention_mask=attention).logits  # (B, L, V): every position, every step
            nfe += 1
            x0 = logits.argmax(-1)
            p = torch.softmax(logits, dim=-1)
            x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)  # (B, L)
            x0_p[:, hi:] = -math.inf
            confidence = torch.where(masked, x0_p, torch.tensor(-math.inf, dtype=x0_p.dtype))
            for j in range(B):
                _, select = torch.topk(confidence[j], k=int(counts[j, i]))
                x[j, select] = x0[j, select]
                commit_step[j, select] = nfe - 1
    return SamplerOutput(sequences=x, commit_step=commit_step, nfe=nfe) if return_history else x
