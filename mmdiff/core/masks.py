"""Boolean attention-mask builders for `scaled_dot_product_attention` (True = the query may attend the key).

Kinds:
    full:          every position sees every non-padding position (LLaDA, Dream, MDLM).
    prefix:        prompt positions see only the prompt; targets see everything (LaViDa), so a prompt KV cache is
                   exact.
    block_causal:  positions in block b see the prompt and blocks <= b (block diffusion, BD3-LM).
All masks have shape (B, 1, L, L) or broadcast to it; padding is a key mask (B, 1, 1, L).

Sequence packing (several short examples concatenated into one canvas row, as packed pre-training and SFT do, e.g.
Krell et al. 2021, "Efficient Sequence Packing without Cross-contamination") needs `sequence_mask`: a block-diagonal
mask over per-position sequence ids, so a packed example never sees its neighbours.

Block diffusion (BD3-LM, Arriola et al. 2025, "Block Diffusion: Interpolating Between Autoregressive and Diffusion
Language Models") also needs `block_causal_rows` (the rows of a cached window, for a core built block-causal) and
`block_diffusion_mask` (training on the noised and the clean canvas in one pass).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ATTENTION_KINDS", "key_padding_mask", "prefix_mask", "block_causal_mask", "build_attention_mask",
           "block_index", "block_causal_rows", "block_diffusion_mask", "sequence_mask"]

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


def sequence_mask(sequence_ids: Tensor, padding: Tensor | None = None) -> Tensor:
    """(B, L) sequence id of each position of packed rows -> (B, 1, L, L) block-diagonal mask: a query sees the keys
    of its own sequence only. `padding` (B, L) (True = real) also hides padding keys; every query may see itself, so
    a padding query never attends to nothing (which would give NaN that flows on through the values).

    >>> sequence_mask(torch.tensor([[0, 0, 1, -1]]), torch.tensor([[1, 1, 1, 0]]))[0, 0].int().tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    """
    allowed = sequence_ids[:, :, None] == sequence_ids[:, None, :]  # (B, Lq, Lk)
    if padding is not None:
        allowed = allowed & padding.bool()[:, None, :]
    eye = torch.eye(sequence_ids.shape[1], dtype=torch.bool, device=sequence_ids.device)
    return (allowed | eye)[:, None]  # (B, 1, Lq, Lk)


def block_index(seq_len: int, block_size: int, prefix_len: Tensor | int = 0,
                device: torch.device | None = None) -> Tensor:
    """(B, L) block of each position: 0 for the prompt (the first `prefix_len` positions of each row), then 1, 2, ...
    for consecutive blocks of `block_size` positions.

    >>> block_index(7, 2, prefix_len=3).tolist()
    [[0, 0, 0, 1, 1, 2, 2]]
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if isinstance(prefix_len, int):
        prefix_len = torch.tensor([prefix_len], device=device)
    pos = torch.arange(seq_len, device=prefix_len.device)
    offset = (pos[None, :] - prefix_len[:, None]).clamp(min=-1)  # (B, L); -1 inside the prompt
    return torch.where(offset < 0, 0, 1 + torch.div(offset, block_size, rounding_mode="floor"))


def block_causal_mask(
    seq_len: int, block_size: int, prefix_len: Tensor | int = 0, device: torch.device | None = None
) -> Tensor:
    """Block-causal mask: the prompt is block 0, then blocks of `block_size`; a query sees keys of blocks <= its own.

    >>> block_causal_mask(4, 2, prefix_len=0)[0, 0].int().tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    """
    block = block_index(seq_len, block_size, prefix_len, device)
    return (block[:, None, :] <= block[:, :, None])[:, None]  # (B, 1, Lq, Lk)


def block_causal_rows(lo: int, n_queries: int, seq_len: int, block_size: int, *, padding: Tensor | None = None,
                      device: torch.device | None = None) -> Tensor:
    """Rows lo .. lo + n_queries - 1 of the block-causal mask of a canvas of `seq_len` positions cut into blocks of
    `block_size` from its first column (no prompt block), with the (B, seq_len) `padding` key mask (True = real) and
    every query allowed to see itself (so that a padding query whose block holds only padding still attends to
    something; real queries never see padding keys). The mask a core built `attention="block_causal"` applies.

    >>> block_causal_rows(2, 2, 5, 2)[0, 0].int().tolist()
    [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    """
    q = torch.arange(lo, lo + n_queries, device=device)
    k = torch.arange(seq_len, device=device)
    allowed = (torch.div(k, block_size, rounding_mode="floor")[None, :]
               <= torch.div(q, block_size, rounding_mode="floor")[:, None])  # (Lq, Lk)
    mask = allowed[None, None]  # (1, 1, Lq, Lk)
    if padding is not None:
        mask = mask & padding.bool()[:, None, None, :]  # (B, 1, Lq, Lk)
    return mask | (k[None, :] == q[:, None])[None, None]


def block_diffusion_mask(seq_len: int, block_size: int, prefix_len: Tensor | int = 0, *,
                         padding: Tensor | None = None, device: torch.device | None = None) -> Tensor:
    """The (B, 1, 2L, 2L) mask of BD3-LM's vectorised training pass over [noised canvas x_t ; clean canvas x_0].

    With blocks as in `block_index` (the prompt is block 0): a noised position of block b sees the noised positions
    of block b (bidirectional) and the clean positions of blocks < b; a clean position of block b sees the clean
    positions of blocks <= b (block-causal); no clean position sees a noised one. So the noised block b is predicted
    exactly as at sampling time, from the clean blocks before it. `padding` (B, L) (True = real) masks keys in both
    halves; every query may see itself (padding queries never attend to nothing).

    >>> m = block_diffusion_mask(4, 2)[0, 0].int()  # rows and columns: noised 0..3, then clean 0..3
    >>> m[2].tolist(), m[6].tolist()  # noised position 2 (block 2 of 2), clean position 2
    ([0, 0, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1])
    """
    block = block_index(seq_len, block_size, prefix_len, device)  # (B, L)
    q, k = block[:, :, None], block[:, None, :]  # (B, L, 1), (B, 1, L)
    noised_rows = torch.cat([q == k, k < q], dim=2)  # (B, L, 2L): noised queries
    clean_rows = torch.cat([torch.zeros_like(k < q), k <= q], dim=2)  # (B, L, 2L): clean queries
    mask = torch.cat([noised_rows, clean_rows], dim=1)  # (B, 2L, 2L)
    if padding is not None:
        mask = mask & torch.cat([padding, padding], dim=1).bool()[:, None, :]
    mask = mask | torch.eye(2 * seq_len, dtype=torch.bool, device=mask.device)[None]
    return mask[:, None]  # (B, 1, 2L, 2L)


def build_attention_mask(
    kind: str,
    seq_len: int,
    *,
    attention_mask: Tensor | None = None,
    prefix_len: Tensor | None = None,
    block_size: int | None = None,
    sequence_ids: Tensor | None = None,
    device: torch.device | None = None,
) -> Tensor | None:
    """Combines an attention kind with a padding mask; returns None when nothing is masked (fastest SDPA path).
    `sequence_ids` (B, L) marks packed rows (`sequence_mask`; attention kind "full" only)."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; choose one of {ATTENTION_KINDS}")
    if sequence_ids is not None:
        if kind != "full":
            raise ValueError(f"packed rows (sequence_ids) take attention kind 'full' only, got {kind!r}: a prompt "
                             "length or block layout per row does not describe several packed sequences; pack "
                             "canvases of attention 'full', or do not pack")
        return sequence_mask(sequence_ids, attention_mask)
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
