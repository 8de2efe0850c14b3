"""LLaDA-style sampling (Nie et al. 2025, "Large Language Diffusion Models", Algorithm: semi-autoregressive
remasking): the answer is split into blocks decoded left to right; within a block each step predicts every masked
position and commits the most confident ones (or random ones), the rest stay masked.

Differences from the reference `generate.py`: logits are computed for the current block only (the same numbers,
fewer FLOPs in the head), the mask id is never predicted, and a left-padded batch gets RoPE positions counted from
each row's first real token (so a padded row decodes like the same prompt alone).

Temperature > 0 samples through the Gumbel-max trick in float64, as the reference does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmdiff.registry import SAMPLERS

__all__ = ["llada_generate", "tokens_per_step", "gumbel_argmax", "commit_mask"]


def tokens_per_step(n_masked: Tensor, steps: int) -> Tensor:
    """(B,) masked counts -> (B, steps) commits per step: floor(M/S) each, the first M mod S steps one more.

    >>> tokens_per_step(torch.tensor([10]), 4).tolist()
    [[3, 3, 2, 2]]
    """
    base = torch.div(n_masked, steps, rounding_mode="floor")[:, None]  # (B, 1)
    extra = (torch.arange(steps, device=n_masked.device)[None] < (n_masked % steps)[:, None]).long()  # (B, S)
    return base + extra


def gumbel_argmax(logits: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """argmax of logits (temperature 0) or a sample at `temperature` by the Gumbel-max trick in float64."""
    if temperature == 0:
        return logits.argmax(-1)
    logits64 = logits.double()
    u = torch.rand(logits64.shape, generator=generator, device=logits.device, dtype=torch.float64)
    # exp(l) / (-log u)^T ranks like (l - T log(-log u)): a sample from softmax(l / T)
    return (logits64.exp() / (-torch.log(u)) ** temperature).argmax(-1)


def commit_mask(confidence: Tensor, k: Tensor) -> Tensor:
    """(B, N) confidences, (B,) counts -> bool (B, N) marking each row's k most confident positions.

    >>> commit_mask(torch.tensor([[0.1, 0.9, 0.5]]), torch.tensor([2])).tolist()
    [[False, True, True]]
    """
    order = confidence.argsort(dim=1, descending=True, stable=True)  # (B, N) positions, most confident first
    arange = torch.arange(order.shape[1], device=order.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, arange)  # (B, N) rank of each position
    return ranks < k[:, None]


@SAMPLERS.register("llada")
@torch.no_grad()
def llada_generate(
    core: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    mask_id: int,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int = 32,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    infill: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Generates `gen_length` tokens after each prompt row; with `infill=True` also fills the mask ids of the prompt.

    The decoded region runs from the first column holding a mask id to fill (the end of the prompt when there is
    none) to the end of the canvas; it is cut into blocks of `block_length` from its start (the last one may be
    shorter when the prompt holds masks), decoded left to right.

    Args:
        core: a `MaskedDiffusionTransformer` (or anything with its call signature).
        input_ids: (B, P) prompts, left-padded when lengths differ; mask ids anywhere are filled in.
        attention_mask: (B, P) True at real prompt tokens.
        mask_id: the mask token id.
        gen_length: answer length (0 with `infill` = only fill the masks of the prompt); with a mask-free prompt it
            must be a multiple of block_length.
        steps: total denoising steps, split evenly over blocks.
        block_length: semi-autoregressive block size.
        temperature: 0 = greedy; > 0 samples with Gumbel noise.
        remasking: "low_confidence" (commit the most probable predictions) or "random".
        infill: fill mask ids found in the prompt (at real, non-padding positions); without it they are an error.
        generator: torch.Generator for reproducible sampling.

    Returns:
        (B, P + gen_length) prompt then answer.

    >>> # out = llada_generate(model.core, prompt, mask_id=model.vocab.mask_id, gen_length=64, steps=64)
    """
    if gen_length < 0 or block_length < 1 or steps < 1:
        raise ValueError(f"need gen_length >= 0, block_length >= 1 and steps >= 1, got {gen_length}, {block_length}, "
                         f"{steps}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, prompt_length), got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    B, P = input_ids.shape
    to_fill = input_ids == mask_id  # (B, P) prompt positions to infill; padding never is one
    if attention_mask is not None:
        to_fill &= attention_mask.bool()
    if not infill and bool(to_fill.any()):
        row, col = (int(i) for i in to_fill.nonzero()[0])
        raise ValueError(f"the prompt holds the mask id {mask_id} (row {row}, position {col}); pass infill=True to "
                         "fill masks in place, or remove them from the prompt")
    prompt_masks = to_fill.any(0).nonzero()
    start = int(prompt_masks[0]) if len(prompt_masks) else P  # first decoded column
    if start == P and gen_length == 0:
        raise ValueError("nothing to generate: gen_length=0 and the prompt holds no mask id to fill; pass "
                         "gen_length >= 1")
    if start == P and gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} must be a multiple of block_length={block_length}")
    n_blocks = -(-(P + gen_length - start) // block_length)
    if steps % n_blocks:
        raise ValueError(f"steps={steps} must be a multiple of the number of blocks ({n_blocks})")
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking must be 'low_confidence' or 'random', got {remasking!r}")
    core.check_ids(input_ids)
    steps_per_block = steps // n_blocks
    device = input_ids.device
    x = torch.cat([input_ids, torch.full((B, gen_length), mask_id, dtype=input_ids.dtype, device=device)], dim=1)
    open_ = torch.cat([to_fill, torch.ones(B, gen_length, dtype=torch.bool, device=device)], 1)  # still to decode
    position_ids = None
    if attention_mask is not None:
        answer_mask = torch.ones(B, gen_length, dtype=torch.bool, device=device)
        attention_mask = torch.cat([attention_mask.bool(), answer_mask], 1)  # (B, P + gen_length)
        # left padding: the first real token of every row sits at RoPE position 0
        position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)  # (B, P + gen_length)
    for lo in range(start, P + gen_length, block_length):
        hi = min(lo + block_length, P + gen_length)
        block_idx = torch.arange(lo, hi, device=device).expand(B, -1)  # (B, K)
        schedule = tokens_per_step(open_[:, lo:hi].sum(1), steps_per_block)  # (B, S)
        for s in range(steps_per_block):
            logits = core(
                x, attention_mask=attention_mask, position_ids=position_ids, logits_at=block_idx, check_inputs=False
            ).logits  # (B, K, V)
            logits[..., mask_id] = -torch.inf  # committing the mask id would leave the position masked
            block = x[:, lo:hi]
            still_masked = open_[:, lo:hi]
            x0 = gumbel_argmax(logits, temperature, generator)  # (B, K)
            if remasking == "low_confidence":
                conf = torch.softmax(logits.float(), -1).gather(-1, x0[..., None]).squeeze(-1)
            else:
                conf = torch.rand(x0.shape, generator=generator, device=device)
            conf = torch.where(still_masked, conf, torch.full_like(conf, -torch.inf))
            commit = commit_mask(conf, schedule[:, s]) & still_masked
            x[:, lo:hi] = torch.where(commit, x0, block)
            open_[:, lo:hi] &= ~commit
    return x
