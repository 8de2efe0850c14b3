"""Log-likelihood of an answer given a prompt under a masked-diffusion model: the Monte-Carlo ELBO estimator of
LLaDA (Nie et al. 2025, Appendix B.5; its `get_log_likelihood.py`), used for multiple-choice evaluation.

For each Monte-Carlo batch of b samples a random start k is drawn and the samples mask k, k + l/b, k + 2l/b, ...
answer tokens (stratified counts, wrapped into 1..l for an answer of l tokens) at uniformly random positions; the
estimate is -E[sum over masked answer tokens of CE / (masked count / l)], a lower bound on log p(answer | prompt).
The prompt is never masked. With `cfg_scale` > 0 the logits are guided as in LLaDA's evaluation
(u + (w + 1)(c - u), the unconditional pass with the prompt masked).
A block-causal core (block diffusion) is scored as it decodes: the prompt is block 0, each answer block is predicted
from the clean blocks before it (`mmdiff.diffusion.objective.block_diffusion_logits`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiff.canvas import Canvas
from mmdiff.diffusion.objective import block_diffusion_logits

__all__ = ["stratified_masks", "elbo_log_likelihood"]


def stratified_masks(batch: int, length: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """(batch, length) bool masks with stratified masked counts, and each row's count (batch,).

    Counts: round(linspace(k, k + (batch - 1) length / batch, batch)) wrapped into 1..length, k uniform in
    1..length; positions uniformly at random per row.

    >>> masks, counts = stratified_masks(4, 8, torch.Generator().manual_seed(0))
    >>> counts.tolist() == masks.sum(1).tolist(), sorted(((counts - counts[0]) % 8).tolist())
    (True, [0, 2, 4, 6])
    """
    k = int(torch.randint(1, length + 1, (), generator=generator))
    counts = torch.round(torch.linspace(float(k), k + (batch - 1) * (length / batch), batch)).long()
    counts = ((counts - 1) % length) + 1  # (batch,) in 1..length
    order = torch.rand(batch, length, generator=generator).argsort(dim=1)  # a random permutation per row
    masks = order < counts[:, None]
    return masks.to(device), counts.to(device)


@torch.no_grad()
def elbo_log_likelihood(
    core: nn.Module,
    prompt: Sequence[int] | Tensor,
    answer: Sequence[int] | Tensor,
    *,
    mask_id: int,
    mc_samples: int = 128,
    batch_size: int = 16,
    cfg_scale: float = 0.0,
    generator: torch.Generator | None = None,
) -> float:
    """Monte-Carlo ELBO estimate of log p(answer | prompt) in nats.

    Args:
        core: a `MaskedDiffusionTransformer` (logit at i predicts token i, or shifted cores: they shift internally).
        prompt: prompt token ids.
        answer: answer token ids (at least one).
        mask_id: the mask token id.
        mc_samples: Monte-Carlo samples; a multiple of `batch_size`.
        batch_size: samples per forward pass.
        cfg_scale: classifier-free guidance scale (0 = off).
        generator: RNG for the masks.

    >>> # model.log_likelihood([1, 2, 3], [4, 5], mc_samples=64)
    """
    prompt_t, answer_t = torch.as_tensor(prompt, dtype=torch.long), torch.as_tensor(answer, dtype=torch.long)
    if answer_t.numel() < 1:
        raise ValueError("the answer is empty; give at least one answer token")
    if mc_samples < 1 or batch_size < 1 or mc_samples % batch_size:
        raise ValueError(f"mc_samples ({mc_samples}) must be a positive multiple of batch_size ({batch_size})")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
    device = next(core.parameters()).device
    P, A = prompt_t.numel(), answer_t.numel()
    seq = torch.cat([prompt_t, answer_t]).to(device)[None].expand(batch_size, -1)  # (b, P + A)
    block = getattr(getattr(core, "config", None), "attention", "full") == "block_causal"

    def logits_of(clean: Tensor, noisy: Tensor, masked: Tensor) -> Tensor:
        if not block:
            return core(noisy, logits_at=masked, check_inputs=False).logits.float()
        canvas = Canvas(ids=clean, maskable=masked, prefix_len=torch.full((batch_size,), P, device=device))
        return block_diffusion_logits(core, canvas, noisy, masked).float()

    total = 0.0
    for _ in range(mc_samples // batch_size):
        masks, counts = stratified_masks(batch_size, A, generator, device)
        masked = torch.cat([torch.zeros(batch_size, P, dtype=torch.bool, device=device), masks], 1)
        noisy = seq.masked_fill(masked, mask_id)
        logits = logits_of(seq, noisy, masked)  # (N, V)
        if cfg_scale > 0:
            uncond = noisy.clone()
            uncond[:, :P] = mask_id
            clean_u = seq.clone()
            clean_u[:, :P] = mask_id
            u = logits_of(clean_u, uncond, masked)
            logits = u + (cfg_scale + 1) * (logits - u)
        row = masked.nonzero()[:, 0]
        ce = F.cross_entropy(logits, seq[masked], reduction="none") / (counts[row].float() / A)
        total += float(ce.sum()) / batch_size
    return -total / (mc_samples // batch_size)
