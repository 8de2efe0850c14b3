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
from torch import Tensor, nn

from mmdiff.core.masks import build_attention_mask
from mmdiff.core.model import place_soft_tokens

__all__ = ["Canvas", "CanvasCore", "canvas_attention_mask"]


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
        signals: modality inputs by modality, as the model's adapter prepared them (`adapter.prepare`: e.g.
            {"vision": (B, C, H, W) pixels}); the adapters turn them into `soft_embeds` (in this order) for the
            `soft_positions` (`DiffusionModel.embed_signals` calls `adapter.embed`).
        head: the name of the head (`mmdiff.registry.HEADS`, `mmdiff.heads`) that scores the targets; the task
            resolves it to `vocab_range` when it builds the canvas. None = the LM head (the whole vocabulary).
        sequence_ids: (B, L) long, for packed rows (several examples concatenated into one row, e.g.
            `TextTask.pack`): which sequence of its row each position belongs to (0, 1, ...; -1 at padding). A
            position then attends only to its own sequence (`mmdiff.core.masks.sequence_mask`), `position_ids`
            restart at 0 for each sequence, and the loss treats each sequence as one example (its own diffusion
            time; see `mmdiff.diffusion.diffusion_loss`). None = one sequence per row. Attention kind "full" only.
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
    signals: dict[str, Any] | None = None
    head: str | None = None
    sequence_ids: Tensor | None = None

    def __post_init__(self) -> None:
        if self.ids.dim() != 2:
            raise ValueError(f"canvas ids must be (batch, length), got shape {tuple(self.ids.shape)}")
        if self.maskable.shape != self.ids.shape:
            raise ValueError(f"maskable {tuple(self.maskable.shape)} must match ids {tuple(self.ids.shape)}")
        if self.attention_mask is not None and self.attention_mask.shape != self.ids.shape:
            raise ValueError(
                f"attention_mask {tuple(self.attention_mask.shape)} must match ids {tuple(self.ids.shape)}"
            )
        if self.sequence_ids is not None:
            if self.sequence_ids.shape != self.ids.shape:
                raise ValueError(
                    f"sequence_ids {tuple(self.sequence_ids.shape)} must match ids {tuple(self.ids.shape)}"
                )
            if self.attention != "full":
                raise ValueError(f"a packed canvas (sequence_ids) takes attention 'full', got {self.attention!r}; "
                                 "pack only canvases without a prompt or block layout per row")

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
            if isinstance(value, dict):
                value = {k: fn(v) if isinstance(v, Tensor) else v for k, v in value.items()}
            values[f.name] = fn(value) if isinstance(value, Tensor) else value
        return Canvas(**values)

    def to(self, device: torch.device | str) -> Canvas:
        return self.map_tensors(lambda t: t.to(device))

    def with_ids(self, ids: Tensor) -> Canvas:
        return replace(self, ids=ids)

    def attention_bias(self) -> Tensor | None:
        """The boolean attention mask for the core (None when every position sees every position)."""
        return canvas_attention_mask(self.attention, self.length, padding=self.attention_mask,
                                     prefix_len=self.prefix_len, block_size=self.block_size,
                                     sequence_ids=self.sequence_ids, device=self.ids.device)

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


class CanvasCore(nn.Module):
    """A core bound to a prompt canvas's soft tokens and attention kind, with the plain core's call signature, so
    every sampler runs multimodal prompts unchanged.

    The sampler calls it with token ids of the whole canvas (prompt + answer) or of a cache window [lo, hi); each
    call places the soft tokens whose positions fall inside the input and builds the canvas's attention mask
    (e.g. "prefix": the prompt never attends to the answer, so a prompt key/value cache is exact) for the full
    canvas length, padding included. The answer starts where the prompt canvas ends (its `prefix_len` is the
    prompt length unless the canvas says otherwise).

    >>> # out = llada_generate(CanvasCore(model.core, model.embed_signals(prompt_canvas)), prompt_canvas.ids, ...)
    """

    def __init__(self, core: nn.Module, canvas: Canvas) -> None:
        super().__init__()
        if canvas.signals:
            raise ValueError("the canvas still carries raw signals; pass it through DiffusionModel.embed_signals")
        self.core, self.canvas = core, canvas
        self.prompt_length = canvas.length
        self._mask: Tensor | None = None
        self._mask_for: Tensor | None = None
        self._mask_length = -1

    @property
    def config(self) -> Any:
        return self.core.config

    def select_rows(self, index: Tensor) -> CanvasCore:
        """The same core bound to rows `index` of the canvas (soft tokens, positions, prefix lengths): what a sampler
        runs when only some rows still decode."""
        batch = self.canvas.batch_size
        rows = self.canvas.map_tensors(lambda t: t[index.to(t.device)] if t.dim() and t.shape[0] == batch else t)
        view = CanvasCore(self.core, rows)
        view.prompt_length = self.prompt_length
        return view

    def check_ids(self, ids: Tensor) -> None:
        self.core.check_ids(ids)

    def forward(self, input_ids: Tensor, *, attention_mask: Tensor | None = None, cache: Any = None,
                cache_window: tuple[int, int] | None = None, check_inputs: bool = True, **kwargs: Any) -> Any:
        if check_inputs:
            self.core.check_ids(input_ids)
        length = cache.length if cache is not None else input_ids.shape[1]
        lo = cache_window[0] if cache_window is not None else 0
        embeds = self.core.embed(input_ids, None, None)  # (B', L_in, d_model)
        if self.canvas.soft_embeds is not None:
            embeds = place_soft_tokens(embeds, self.canvas.soft_embeds, self.canvas.soft_positions,
                                       window=(lo, lo + embeds.shape[1]))
        return self.core(None, soft_embeds=embeds, attention_mask=self._attention(attention_mask, length),
                         cache=cache, cache_window=cache_window, check_inputs=False, **kwargs)

    def _attention(self, padding: Tensor | None, length: int) -> Tensor | None:
        """The (B', 1, L, L) mask of the canvas's attention kind over the full canvas (padding as given)."""
        if self.canvas.attention == "full":
            return padding
        if self._mask_for is not padding or self._mask_length != length:  # one mask per generate call
            batch = padding.shape[0] if padding is not None else self.canvas.batch_size
            prefix = self.canvas.prefix_len
            prefix = torch.full((batch,), self.prompt_length) if prefix is None else prefix.repeat(
                batch // prefix.shape[0])
            device = self.canvas.ids.device
            self._mask = canvas_attention_mask(self.canvas.attention, length, padding=padding,
                                               prefix_len=prefix.to(device), block_size=self.canvas.block_size,
                                               device=device)
            self._mask_for, self._mask_length = padding, length
        return self._mask


def canvas_attention_mask(kind: str, length: int, *, padding: Tensor | None, prefix_len: Tensor | None = None,
                          block_size: int | None = None, sequence_ids: Tensor | None = None,
                          device: torch.device | None = None) -> Tensor | None:
    """The one attention-mask builder of canvases (training, sampling, cached windows): "full" attention is the
    (B, L) padding mask itself (the core broadcasts it, and slices no query rows of it in a cached window); other
    kinds, and packed rows (`sequence_ids`: block-diagonal), are `mmdiff.core.masks.build_attention_mask` over the
    `length` positions of the canvas.

    >>> canvas_attention_mask("prefix", 3, padding=None, prefix_len=torch.tensor([2]))[0, 0].int().tolist()
    [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    """
    if kind == "full" and sequence_ids is None:
        return padding
    return build_attention_mask(kind, length, attention_mask=padding, prefix_len=prefix_len, block_size=block_size,
                                sequence_ids=sequence_ids, device=device)
