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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiff.canvas import Canvas
from mmdiff.diffusion.schedules import Schedule, get_schedule

__all__ = ["forward_process", "diffusion_loss", "LossOutput"]


def forward_process(
    ids: Tensor, maskable: Tensor, mask_prob: Tensor, mask_id: int, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Masks each target position independently with its row's probability.

    Args:
        ids: (B, L) clean ids.
        maskable: (B, L) bool target positions.
        mask_prob: (B,) masking probability per row.
    Returns:
        noisy ids (B, L) and the bool mask of masked positions (B, L).
    """
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    masked = (u < mask_prob[:, None]) & maskable
    return torch.where(masked, torch.full_like(ids, mask_id), ids), masked


@dataclass
class LossOutput:
    """loss: the scalar to minimise. elbo_per_row: (B,) weighted CE summed over each row's masked positions (a
    one-sample Monte-Carlo estimate of the row's negative ELBO in nats). n_masked: masked positions in the batch."""

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
) -> LossOutput:
    """Masks the canvas targets, runs the core and returns the weighted cross-entropy.

    Args:
        core: a `MaskedDiffusionTransformer` (anything taking its keyword arguments, `logits_at` included).
        canvas: clean ids and the target positions (`maskable`).
        schedule: a registered schedule name or a `Schedule`.
        mask_id: the mask token id.
        normalize: "elbo" (divide by the batch's target count) or "sft" (per row by its answer length, then mean).
        complementary: also run each row with the complementary mask (LaViDa); `elbo_per_row` then has 2B rows.
        t: (B,) diffusion times; sampled from the schedule when None.
        generator: RNG for t and the masks.

    >>> from mmdiff import Canvas, CoreConfig, MaskedDiffusionTransformer, VocabLayout
    >>> layout = VocabLayout.build(text_size=16)
    >>> core = MaskedDiffusionTransformer(CoreConfig(vocab=layout, d_model=32, n_layers=1, n_heads=2))
    >>> canvas = Canvas(ids=torch.randint(0, 16, (2, 8)), maskable=torch.ones(2, 8, dtype=torch.bool))
    >>> out = diffusion_loss(core, canvas, "linear", mask_id=layout.mask_id, t=torch.ones(2))
    >>> int(out.n_masked), int(out.n_targets)
    (16, 16)
    """
    if normalize not in ("elbo", "sft"):
        raise ValueError(f"normalize must be 'elbo' or 'sft', got {normalize!r}")
    schedule = get_schedule(schedule)
    B = canvas.batch_size
    maskable = canvas.maskable.bool()
    if t is None:
        t = schedule.sample_t(B, generator=generator, device=canvas.ids.device)
    elif t.shape != (B,):
        raise ValueError(f"t must have shape (batch,) = ({B},), got {tuple(t.shape)}")
    mask_prob = schedule.mask_prob(t)  # (B,)
    weight = schedule.weight(t)  # (B,)
    noisy, masked = forward_process(canvas.ids, maskable, mask_prob, mask_id, generator=generator)
    clean = canvas.ids
    if complementary:
        # second copy: the targets the first copy left visible; its masking probability is 1 - m(t)
        masked = torch.cat([masked, maskable & ~masked])
        noisy = torch.cat([noisy, torch.where(masked[B:], torch.full_like(clean, mask_id), clean)])
        weight = torch.cat([weight, weight * mask_prob / (1 - mask_prob).clamp(min=1e-6)])
        clean = torch.cat([clean, clean])
        maskable = torch.cat([maskable, maskable])
        canvas = canvas.map_tensors(lambda x: torch.cat([x, x]))  # both copies share the layout
    inputs = canvas.core_inputs(noisy)
    logits = core(**inputs, logits_at=masked, check_inputs=False).logits  # (N, V_head)
    targets = clean[masked]
    if canvas.vocab_range is not None:
        targets = targets - canvas.vocab_range[0]
    ce = F.cross_entropy(logits.float(), targets, reduction="none")  # (N,)
    row = torch.nonzero(masked, as_tuple=True)[0]  # row index of each masked position
    weighted = ce * weight[row]
    elbo_per_row = torch.zeros(masked.shape[0], device=ce.device).index_add_(0, row, weighted)
    n_targets = maskable.sum(1)  # (B',)
    if normalize == "elbo":
        loss = elbo_per_row.sum() / n_targets.sum().clamp(min=1)
    else:  # sft
        loss = (elbo_per_row / n_targets.clamp(min=1)).mean()
    return LossOutput(loss=loss, elbo_per_row=elbo_per_row, n_masked=masked.sum(), n_targets=n_targets.sum())
