"""The masked-diffusion training objective.

Forward process: each target position of a canvas is replaced by the mask id with probability m(t), t ~ U[eps, 1].
Loss: cross-entropy of the clean token at masked positions only, weighted by the schedule's ELBO weight w(t)
(MDLM, Sahoo et al. 2024; LLaDA, Nie et al. 2025). Logits are computed only at masked positions, so the full
vocabulary is never materialised elsewhere.

Normalisations:
    elbo: sum of weighted CE / number of target positions in the batch (LLaDA pre-training).
    sft:  per row, sum of weighted CE / that row's answer length; mean over rows (LLaDA SFT; prompts are never
          targets).
Complementary masking (LaViDa, Li et al. 2025): each row is seen twice, once with mask M and once with its
complement on the targets, so every target token gets a gradient in every step. The complement copy masks each
target with marginal probability 1 - m(t); writing the ELBO as an integral over the mask ratio, int E[CE | m] / m dm,
its weight is w(t) m(t) / (1 - m(t)) for any schedule (1 / (1 - m(t)) for the linear one).
Block diffusion (BD3-LM, Arriola et al. 2025, "Block Diffusion", section 3.2's vectorised training): for a core built
`attention="block_causal"` the core runs once on [noised canvas x_t ; clean canvas x_0] (2L positions, both with the
canvas's RoPE positions) under `mmdiff.core.masks.block_diffusion_mask`: the noised block b sees itself and the clean
blocks before it, the clean copy is block-causal. Each noised block is then predicted exactly as the block-diffusion
sampler predicts it (from clean, committed blocks), and the loss equals the sum over blocks of separate forward
passes on [x_0 blocks < b ; x_t block b]. One t per row masks all its blocks (an unbiased estimate of each block's
ELBO; BD3-LM also draws one t per block).
Packed canvases (`Canvas.sequence_ids`: several examples in one row, each attending only to itself): every packed
sequence is one example, with its own t, its own ELBO weight and, for "sft", its own answer-length normalisation, so
a packed batch's loss is the loss of the same examples unpacked (equal when the masks are, e.g. at t = 1).
Chunked cross-entropy (`chunk_size`): the output projection and the cross-entropy run over at most `chunk_size`
masked positions at a time, each chunk under activation checkpointing, so neither the forward nor the backward pass
ever holds the float32 logits of more than one chunk (the memory lever of Liger-Kernel's fused linear cross-entropy
and of Wijmans et al. 2025, "Cut Your Losses in Large-Vocabulary Language Models", in plain PyTorch: the logits of
a chunk are computed twice). The loss and gradients equal the unchunked ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmdiff.canvas import Canvas
from mmdiff.core.masks import block_diffusion_mask
from mmdiff.diffusion.schedules import Schedule, get_schedule

__all__ = ["forward_process", "diffusion_loss", "block_diffusion_logits", "chunked_cross_entropy", "example_index",
           "LossOutput"]


def forward_process(
    ids: Tensor, maskable: Tensor, mask_prob: Tensor, mask_id: int, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Masks each target position independently with its row's probability.

    Args:
        ids: (B, L) clean ids.
        maskable: (B, L) bool target positions.
        mask_prob: (B,) masking probability per row, or (B, L) per position (packed rows: each sequence its own).
    Returns:
        noisy ids (B, L) and the bool mask of masked positions (B, L).
    """
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    masked = (u < (mask_prob if mask_prob.dim() == 2 else mask_prob[:, None])) & maskable
    return torch.where(masked, torch.full_like(ids, mask_id), ids), masked


@dataclass
class LossOutput:
    """loss: the scalar to minimise. elbo_per_row: (B,) weighted CE summed over each row's masked positions (a
    one-sample Monte-Carlo estimate of the row's negative ELBO in nats); one entry per packed sequence for a packed
    canvas (`example_index` order). n_masked: masked positions in the batch."""

    loss: Tensor
    elbo_per_row: Tensor
    n_masked: Tensor
    n_targets: Tensor


def diffusion_loss(
    core: nn.Module,
    canvas: Canvas,
    schedule: str | Schedule = "linear",
    *,
    mask_id: int,
    normalize: Literal["elbo", "sft"] = "elbo",
    complementary: bool = False,
    t: Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    attention_anneal: float | None = None,
) -> LossOutput:
    """Masks the canvas targets, runs the core and returns the weighted cross-entropy.

    Args:
        core: a `MaskedDiffusionTransformer` (anything taking its keyword arguments, `logits_at` included; with
            `chunk_size` also `apply_head` and `head_weight`).
        canvas: clean ids and the target positions (`maskable`); packed rows (`sequence_ids`) count each packed
            sequence as one example (see the module docstring).
        schedule: a registered schedule name or a `Schedule`.
        mask_id: the mask token id.
        normalize: "elbo" (divide by the batch's target count) or "sft" (per example by its answer length, then the
            mean over examples; an example is a row, or a packed sequence).
        complementary: also run each row with the complementary mask (LaViDa); `elbo_per_row` then has 2B rows.
            A core built `attention="block_causal"` is trained with block diffusion's clean and noised copies in one
            pass (`block_diffusion_logits`); the canvas's `prefix_len` (its prompt) is block 0.
        t: (E,) diffusion times, one per example (E = B, or the number of packed sequences in `example_index`
            order); sampled from the schedule when None.
        generator: RNG for t and the masks.
        chunk_size: None computes the logits of all masked positions at once; a positive integer computes the output
            projection and cross-entropy over at most this many masked positions at a time
            (`chunked_cross_entropy`): the same loss and gradients, with the float32 logits of one chunk alive at a
            time instead of all (N, V).
        attention_anneal: None = the canvas's attention; a ratio r in [0, 1] = DiffuLLaMA's annealed attention
            while adapting a causal model: causal, plus each later key with probability r (`annealed_attention`, one
            random pattern per call drawn from `generator`), within the canvas's own mask.

    >>> from mmdiff import Canvas, CoreConfig, MaskedDiffusionTransformer, VocabLayout
    >>> layout = VocabLayout.build(text_size=16)
    >>> core = MaskedDiffusionTransformer(CoreConfig(vocab=layout, d_model=32, n_layers=1, n_heads=2))
    >>> canvas = Canvas(ids=torch.randint(0, 16, (2, 8)), maskable=torch.ones(2, 8, dtype=torch.bool))
    >>> out = diffusion_loss(core, canvas, "linear", mask_id=layout.mask_id, t=torch.ones(2))
    >>> int(out.n_masked), int(out.n_targets)
    (16, 16)
    >>> chunked = diffusion_loss(core, canvas, "linear", mask_id=layout.mask_id, t=torch.ones(2), chunk_size=5)
    >>> torch.allclose(chunked.loss, out.loss)
    True
    """
    if normalize not in ("elbo", "sft"):
        raise ValueError(f"normalize must be 'elbo' or 'sft', got {normalize!r}")
    if attention_anneal is not None and getattr(getattr(core, "config", None), "attention", "full") != "full":
        raise ValueError("attention_anneal adapts a core with full attention (trained causal); this core is built "
                         f"{core.config.attention!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive number of masked positions per chunk (e.g. 1024), or None "
                         f"for the logits of all masked positions at once; got {chunk_size!r}")
    config = getattr(core, "config", None)
    block = getattr(config, "attention", "full") == "block_causal"
    if canvas.sequence_ids is not None and (block or getattr(config, "logits_shift", "none") != "none"):
        raise ValueError("packed canvases (sequence_ids) need a core with full attention and logits_shift='none': "
                         "a block-causal core or shifted logits would read across the packed sequences; train this "
                         "core on unpacked canvases (train.pack_length: 0)")
    schedule = get_schedule(schedule)
    maskable = canvas.maskable.bool()
    example, n_examples = example_index(canvas)  # (B, L), E
    if t is None:
        t = schedule.sample_t(n_examples, generator=generator, device=canvas.ids.device)
    elif t.shape != (n_examples,):
        what = "packed sequences" if canvas.sequence_ids is not None else "batch"
        raise ValueError(f"t must have shape ({what},) = ({n_examples},), got {tuple(t.shape)}: one time per example")
    mask_prob = schedule.mask_prob(t)  # (E,)
    weight = schedule.weight(t)  # (E,)
    position_prob = mask_prob if canvas.sequence_ids is None else mask_prob[example]  # (B,) or (B, L)
    noisy, masked = forward_process(canvas.ids, maskable, position_prob, mask_id, generator=generator)
    clean = canvas.ids
    if complementary:
        # second copy: the targets the first copy left visible; its masking probability is 1 - m(t)
        B = canvas.batch_size
        masked = torch.cat([masked, maskable & ~masked])
        noisy = torch.cat([noisy, torch.where(masked[B:], torch.full_like(clean, mask_id), clean)])
        weight = torch.cat([weight, weight * mask_prob / (1 - mask_prob).clamp(min=1e-6)])
        example = torch.cat([example, example + n_examples])
        n_examples *= 2
        clean = torch.cat([clean, clean])
        maskable = torch.cat([maskable, maskable])
        canvas = canvas.map_tensors(lambda x: torch.cat([x, x]))  # both copies share the layout
    project = chunk_size is None
    if block:
        out = block_diffusion_logits(core, canvas, noisy, masked, apply_head=project)  # (N, V_head) or (N, d)
    else:
        inputs = canvas.core_inputs(noisy)
        if attention_anneal is not None:
            inputs["attention_mask"] = _within(inputs["attention_mask"], annealed_attention(
                canvas.ids.shape[1], attention_anneal, generator=generator, device=canvas.ids.device))
        result = core(**inputs, logits_at=masked, check_inputs=False, **({} if project else {"apply_head": False}))
        out = result.logits if project else result.head_hidden  # (N, V_head) or (N, d_model)
    targets = clean[masked]
    if canvas.vocab_range is not None:
        targets = targets - canvas.vocab_range[0]
    if project:
        ce = F.cross_entropy(out.float(), targets, reduction="none")  # (N,)
    else:
        ce = chunked_cross_entropy(out, core.head_weight(canvas.vocab_range), targets, chunk_size)  # (N,)
    owner = example[masked]  # the example of each masked position
    weighted = ce * weight[owner]
    elbo_per_row = torch.zeros(n_examples, device=ce.device).index_add_(0, owner, weighted)
    n_targets = torch.zeros(n_examples, dtype=torch.long, device=ce.device).index_add_(
        0, example[maskable], torch.ones_like(example[maskable]))  # (E,)
    if normalize == "elbo":
        loss = elbo_per_row.sum() / n_targets.sum().clamp(min=1)
    else:  # sft
        loss = (elbo_per_row / n_targets.clamp(min=1)).mean()
    return LossOutput(loss=loss, elbo_per_row=elbo_per_row, n_masked=masked.sum(), n_targets=n_targets.sum())


def annealed_attention(length: int, ratio: float, *, generator: torch.Generator | None = None,
                       device: torch.device | None = None) -> Tensor:
    """DiffuLLaMA's annealed attention mask (L, L) bool (True = may attend): every query sees itself and the keys
    before it, and each later key with probability `ratio` (0: causal, 1: full).

    >>> annealed_attention(3, 0.0).int().tolist()
    [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    >>> bool(annealed_attention(3, 1.0).all())
    True
    """
    if not 0 <= ratio <= 1:
        raise ValueError(f"the annealing ratio must be in [0, 1], got {ratio}")
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    if ratio == 0:
        return causal
    later = torch.rand(length, length, generator=generator, device=device) < ratio
    return causal | later


def _within(mask: Tensor | None, pattern: Tensor) -> Tensor:
    """`pattern` (L, L) inside a canvas's mask (None, a (B, L) key padding mask or a (B, 1|H, L, L) mask):
    (B|1, 1|H, L, L); every query keeps itself (a padding query never attends to nothing)."""
    if mask is None:
        return pattern[None, None]
    if mask.dim() == 2:
        eye = torch.eye(pattern.shape[0], dtype=torch.bool, device=pattern.device)
        return (pattern[None, None] & mask.bool()[:, None, None, :]) | eye
    return mask.bool() & pattern


def example_index(canvas: Canvas) -> tuple[Tensor, int]:
    """The example each position belongs to, (B, L) long, and the number of examples E: row b for an unpacked
    canvas; for a packed one (`sequence_ids`), its sequences numbered row by row (row 0's sequences 0, 1, ..., then
    row 1's, ...). Padding positions get an example of their row; they are never targets.

    >>> c = Canvas(ids=torch.zeros(2, 4, dtype=torch.long), maskable=torch.ones(2, 4, dtype=torch.bool),
    ...            sequence_ids=torch.tensor([[0, 0, 1, 2], [0, 1, 1, -1]]))
    >>> index, n = example_index(c)
    >>> index.tolist(), n
    ([[0, 0, 1, 2], [3, 4, 4, 3]], 5)
    """
    B, L = canvas.ids.shape
    if canvas.sequence_ids is None:
        return torch.arange(B, device=canvas.ids.device)[:, None].expand(B, L), B
    sequence = canvas.sequence_ids.long()
    per_row = sequence.max(dim=1).values.clamp(min=-1) + 1  # (B,) sequences in each row
    offset = per_row.cumsum(0) - per_row  # (B,) the first example of each row
    return offset[:, None] + sequence.clamp(min=0), int(per_row.sum())


def _cross_entropy_rows(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="none")


def chunked_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
    """Per-position cross-entropy (N,) of the logits `hidden @ weight.T` (float32) against `targets` (N,), computed
    `chunk_size` rows at a time. With gradients enabled each chunk runs under `torch.utils.checkpoint`
    (non-reentrant), which keeps only the chunk's inputs and recomputes its logits in the backward pass: at most
    one chunk's (chunk_size, V) logits (and their gradient) exist at any time, forward or backward.

    Args:
        hidden: (N, d) what the output projection scores (`CoreOutput.head_hidden`).
        weight: (V, d) the output projection (`MaskedDiffusionTransformer.head_weight`).
        targets: (N,) long target columns of `weight`.
        chunk_size: rows per chunk.

    >>> h, w, y = torch.randn(7, 4), torch.randn(10, 4), torch.randint(0, 10, (7,))
    >>> torch.allclose(chunked_cross_entropy(h, w, y, 3), F.cross_entropy(h @ w.T, y, reduction="none"))
    True
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be (N, d) and targets (N,), got {tuple(hidden.shape)} and "
                         f"{tuple(targets.shape)}")
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    pieces = []
    for lo in range(0, hidden.shape[0], chunk_size):
        rows, wanted = hidden[lo : lo + chunk_size], targets[lo : lo + chunk_size]  # (n, d), (n,)
        if grad:
            pieces.append(checkpoint(_cross_entropy_rows, rows, weight, wanted, use_reentrant=False))
        else:
            pieces.append(_cross_entropy_rows(rows, weight, wanted))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def block_diffusion_logits(core: nn.Module, canvas: Canvas, noisy: Tensor, masked: Tensor, *,
                           apply_head: bool = True) -> Tensor:
    """Logits (N, V_head) at the `masked` (B, L) positions of the noised canvas `noisy` (B, L), from one pass of a
    block-causal core over [noisy ; clean] (BD3-LM's vectorised training, see the module docstring): block b of the
    noised copy sees itself and the clean blocks before it. The canvas's `prefix_len` is block 0 (its prompt; 0 when
    None), its padding masks keys in both copies, its soft tokens are placed in both copies. With `apply_head=False`
    the output projection's inputs (N, d_model) instead (`CoreOutput.head_hidden`, for a chunked loss).

    >>> from mmdiff import CoreConfig, MaskedDiffusionTransformer, VocabLayout
    >>> cfg = CoreConfig(VocabLayout.build(16), d_model=32, n_layers=1, n_heads=2, attention="block_causal",
    ...                  block_size=2)
    >>> canvas = Canvas(ids=torch.randint(0, 16, (1, 4)), maskable=torch.ones(1, 4, dtype=torch.bool))
    >>> masked = torch.tensor([[True, False, False, True]])
    >>> block_diffusion_logits(MaskedDiffusionTransformer(cfg), canvas, canvas.ids.masked_fill(masked, 16),
    ...                        masked).shape
    torch.Size([2, 20])
    """
    config = core.config
    if config.attention != "block_causal":
        raise ValueError("block_diffusion_logits needs a core built with attention='block_causal' and a block_size")
    if canvas.attention not in ("full", "block_causal"):
        raise ValueError(f"a block-causal core is trained on canvases of attention 'full' or 'block_causal' (its own "
                         f"blocks decide), got {canvas.attention!r}; build the canvas without that attention kind")
    B, L = noisy.shape
    prefix = canvas.prefix_len if canvas.prefix_len is not None else 0
    mask = block_diffusion_mask(L, config.block_size, prefix, padding=canvas.attention_mask,
                                device=noisy.device)  # (B | 1, 1, 2L, 2L)
    positions = canvas.position_ids
    if positions is None:
        positions = torch.arange(L, device=noisy.device)[None].expand(B, L)
    soft_embeds, soft_positions = canvas.soft_embeds, canvas.soft_positions
    if soft_embeds is not None:  # the same soft tokens in both copies
        soft_embeds = torch.cat([soft_embeds, soft_embeds], dim=1)  # (B, 2N, d_model)
        soft_positions = torch.cat([soft_positions, soft_positions + L], dim=1)  # (B, 2N)
    out = core(torch.cat([noisy, canvas.ids], dim=1), soft_embeds=soft_embeds, soft_positions=soft_positions,
               attention_mask=mask, position_ids=torch.cat([positions, positions], dim=1),
               logits_at=torch.cat([masked, torch.zeros_like(masked)], dim=1), vocab_range=canvas.vocab_range,
               check_inputs=False, **({} if apply_head else {"apply_head": False}))
    return out.logits if apply_head else out.head_hidden
