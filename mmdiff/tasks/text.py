"""The text task: a canvas of text ids; pre-training makes every position a target, SFT only the answer
(LLaDA, Nie et al. 2025, sections 2.2-2.3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mmdiff.canvas import Canvas
from mmdiff.registry import TASKS
from mmdiff.vocab import VocabLayout

__all__ = ["TextTask", "left_pad", "right_pad"]


def right_pad(rows: Sequence[Tensor], value: int | bool) -> Tensor:
    """Stacks 1-D tensors into (B, L_max), filling the right end with `value`."""
    length = max(r.shape[0] for r in rows)
    out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


def left_pad(rows: Sequence[Tensor], value: int) -> tuple[Tensor, Tensor]:
    """Stacks prompts into (B, L_max) filled on the left with `value`; returns ids and the attention mask."""
    length = max(r.shape[0] for r in rows)
    ids = torch.full((len(rows), length), value, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, length - r.shape[0] :] = r
        mask[i, length - r.shape[0] :] = True
    return ids, mask


@TASKS.register("text")
class TextTask:
    """Text generation: prompt (given) then answer (targets)."""

    name = "text"

    @staticmethod
    def collate(examples: Sequence[dict[str, Tensor]], vocab: VocabLayout) -> Canvas:
        """Right-pads examples {"ids", "maskable"} into one canvas; padding is neither attended nor a target."""
        pad = vocab.pad_id if vocab.pad_id is not None else vocab.mask_id
        ids = right_pad([e["ids"] for e in examples], pad)
        maskable = right_pad([e["maskable"] for e in examples], False)
        lengths = torch.tensor([e["ids"].shape[0] for e in examples])
        ragged = bool((lengths != ids.shape[1]).any())
        attention_mask = torch.arange(ids.shape[1])[None] < lengths[:, None] if ragged else None
        return Canvas(ids=ids, maskable=maskable, attention_mask=attention_mask)

    @classmethod
    def collator(cls, model: Any) -> Callable[[Sequence[dict[str, Tensor]]], Canvas]:
        """The trainer's collate function for `model`."""
        vocab = model.vocab
        return lambda examples: cls.collate(examples, vocab)
