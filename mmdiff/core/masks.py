"""Boolean attention-mask builders for `scaled_dot_product_attention` (True = the query may attend the key).

Kinds:
    full:          every position sees every non-padding position (LLaDA, Dream, MDLM).
    prefix:        prompt positions see only the prompt; targets see everything (LaViDa), so a prompt KV cache is
                   exact.
    block_causal:  positions in block b see the prompt and blocks <= b (block diffusion, BD3-LM).
All masks have shape (B, 1, L, L) or broadcast to it; padding is a key mask (B, 1, 1, L).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ATTENTION_KINDS", "key_padding_mask", "prefix_mask", "block_causal_mask", "build_attention_mask"]

ATTENTION_KINDS = ("full", "prefix", "block_causal")


def key_padding_mask(attention_mask: Tensor) -> Tensor:
    """(B, L) with True/1 at real tokens -> (B, 1, 1, L) boolean key mask."""
    return attention_mask.bool()[:, None, None, :]


def prefix_mask(prefix_len: Tensor, seq_len: int) -> Tensor:
    """(B,) prompt lengths -> (B, 1, L, L): queries inside the prompt see only prompt keys."""
    pos = torch.arange(seq_len, device=prefix_len.device)
    in_prompt = pos[None, :] < prefix_len[:, None]  # (B, L)
    # query q in the prompt may attend key k only if k is in the prompt too
    allowed = ~in_prompt[:, :, None] | in_prompt[:, None, :]  # (B, Lq, Lk)
    return allowed[:, None]


def block_causal_mask(
    seq_len: int, block_size: int, prefix_len: Tensor | int = 0, device: torch.device | None = None
) -> Tensor:
    """Block-causal mask: the prompt is block 0, then blocks of `block_size`; a query sees keys of blocks <= its own.

    >>> block_causal_mask(4, 2, prefix_len=0)[0, 0].int().tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if isinstance(prefix_len, int):
        prefix_len = torch.tensor([prefix_len], device=device)
    pos = torch.arange(seq_len, device=prefix_len.device)
    offset = (pos[None, :] - prefix_len[:, None]).clamp(min=-1)  # (B, L); -1 inside the prompt
    block = torch.where(offset < 0, 0, 1 + torch.div(offset, block_size, rounding_mode="floor"))
    return (block[:, None, :] <= block[:, :, None])[:, None]  # (B, 1, Lq, Lk)


def build_attention_mask(
    kind: str,
    seq_len: int,
    *,
    attention_mask: Tensor | None = None,
    prefix_len: Tensor | None = None,
    block_size: int | None = None,
    device: torch.device | None = None,
) -> Tensor | None:
    """Combines an attention kind with a padding mask; returns None when nothing is masked (fastest SDPA path)."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; choose one of {ATTENTION_KINDS}")
    mask = None
    if kind == "prefix":
        if prefix_len is None:
            raise ValueError("attention kind 'prefix' needs prefix_len (the prompt length of each row)")
        mask = prefix_mask(prefix_len, seq_len)
    elif kind == "block_causal":
        if block_size is None:
            raise ValueError("attention kind 'block_causal' needs block_size")
        mask = block_causal_mask(seq_len, block_size, prefix_len if prefix_len is not None else 0, device=device)
    if attention_mask is not None:
        pad = key_padding_mask(attention_mask)
        mask = pad if mask is None else mask & pad
    return mask
