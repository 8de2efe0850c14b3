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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiff.canvas import Canvas
from mmdiff.core.masks import block_diffusion_mask
from mmdiff.diffusion.schedules import Schedule, get_schedule

__all__ = ["forward_process", "diffusion_loss", "block_diffusion_logits", "LossOutput"]


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
            A core built `attention="block_causal"` is trained with block diffusion's clean and noised copies in one
            pass (`block_diffusion_logits`); the canvas's `prefix_len` (its prompt) is block 0.
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
    if getattr(getattr(core, "config", None), "attention", "full") == "block_causal":
        logits = block_diffusion_logits(core, canvas, noisy, masked)  # (N, V_head)
    else:
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


def block_diffusion_logits(core: nn.Module, canvas: Canvas, noisy: Tensor, masked: Tensor) -> Tensor:
    """Logits (N, V_head) at the `masked` (B, L) positions of the noised canvas `noisy` (B, L), from one pass of a
    block-causal core over [noisy ; clean] (BD3-LM's vectorised training, see the module docstring): block b of the
    noised copy sees itself and the clean blocks before it. The canvas's `prefix_len` is block 0 (its prompt; 0 when
    None), its padding masks keys in both copies, its soft tokens are placed in both copies.

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
               check_inputs=False)
    return out.logits
