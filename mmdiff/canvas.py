"""The canvas: the one structure every task hands to the core, for training and for sampling alike.

A canvas is a batch of sequences of positions; some are given (the condition: prompt text, image features, robot
state), some are targets (`maskable`) that the objective masks and the sampler generates. Tasks build canvases; the
objective and every sampler only ever see canvases, so a new modality never touches them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from mmdiff.core.masks import build_attention_mask

__all__ = ["Canvas"]


@dataclass
class Canvas:
    """A batch of sequences for the core.

    Args:
        ids: (B, L) token ids; targets hold their clean ids for training, the mask id for sampling.
        maskable: (B, L) bool, True at target positions (what the loss covers and the sampler generates).
        attention_mask: (B, L) bool, True at real (non-padding) positions; None = no padding.
        attention: attention kind: "full", "prefix" or "block_causal" (see `mmdiff.core.masks`).
        prefix_len: (B,) prompt length per row, for "prefix" and "block_causal" attention.
        block_size: block length for "block_causal" attention.
        position_ids: (B, L) RoPE positions; None = 0..L-1 (left-padded batches pass positions from the mask).
        soft_embeds: (B, N, d_model) continuous tokens (image / audio features) placed at `soft_positions` (B, N).
        soft_positions: (B, N) long positions of the soft tokens.
        vocab_range: the head's id range [start, stop) for the targets; None = the whole vocabulary.
    """

    ids: Tensor
    maskable: Tensor
    attention_mask: Tensor | None = None
    attention: str = "full"
    prefix_len: Tensor | None = None
    block_size: int | None = None
    position_ids: Tensor | None = None
    soft_embeds: Tensor | None = None
    soft_positions: Tensor | None = None
    vocab_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.ids.dim() != 2:
            raise ValueError(f"canvas ids must be (batch, length), got shape {tuple(self.ids.shape)}")
        if self.maskable.shape != self.ids.shape:
            raise ValueError(f"maskable {tuple(self.maskable.shape)} must match ids {tuple(self.ids.shape)}")
        if self.attention_mask is not None and self.attention_mask.shape != self.ids.shape:
            raise ValueError(
                f"attention_mask {tuple(self.attention_mask.shape)} must match ids {tuple(self.ids.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> Canvas:
        """A new canvas with `fn` applied to every tensor field (other fields kept)."""
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = fn(value) if isinstance(value, Tensor) else value
        return Canvas(**values)

    def to(self, device: torch.device | str) -> Canvas:
        return self.map_tensors(lambda t: t.to(device))

    def with_ids(self, ids: Tensor) -> Canvas:
        return replace(self, ids=ids)

    def attention_bias(self) -> Tensor | None:
        """The boolean attention mask for the core (None when every position sees every position)."""
        if self.attention == "full":
            return self.attention_mask
        return build_attention_mask(
            self.attention,
            self.length,
            attention_mask=self.attention_mask,
            prefix_len=self.prefix_len,
            block_size=self.block_size,
            device=self.ids.device,
        )

    def core_inputs(self, ids: Tensor | None = None) -> dict[str, Any]:
        """Keyword arguments for `MaskedDiffusionTransformer.forward` (ids default to the canvas ids)."""
        return {
            "input_ids": self.ids if ids is None else ids,
            "soft_embeds": self.soft_embeds,
            "soft_positions": self.soft_positions,
            "attention_mask": self.attention_bias(),
            "position_ids": self.position_ids,
            "vocab_range": self.vocab_range,
        }
