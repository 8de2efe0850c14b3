"""Commit schedules of a block: how many positions each step commits.

- "linear": LLaDA's even split (Nie et al. 2025, reference `get_num_transfer_tokens`): floor(M/S) per step, the
  first M mod S steps one more.
- "cosine": MaskGIT's cosine schedule (Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["tokens_per_step", "cosine_tokens_per_step", "SCHEDULES", "commit_counts"]

SCHEDULES = ("linear", "cosine")


def tokens_per_step(n_masked: Tensor, steps: int) -> Tensor:
    """(B,) masked counts -> (B, steps) commits per step: floor(M/S) each, the first M mod S steps one more.

    >>> tokens_per_step(torch.tensor([10]), 4).tolist()
    [[3, 3, 2, 2]]
    """
    base = torch.div(n_masked, steps, rounding_mode="floor")[:, None]  # (B, 1)
    extra = (torch.arange(steps, device=n_masked.device)[None] < (n_masked % steps)[:, None]).long()  # (B, S)
    return base + extra


def cosine_tokens_per_step(n_masked: Tensor, steps: int) -> Tensor:
    """MaskGIT's cosine schedule (Chang et al. 2022): after step s of S, floor(M cos(pi/2 (s+1)/S)) positions stay
    masked; (B,) masked counts -> (B, steps) commits per step (few first, many last; all done after S steps).

    >>> cosine_tokens_per_step(torch.tensor([16]), 4).tolist()
    [[2, 3, 5, 6]]
    """
    s = torch.arange(1, steps + 1, device=n_masked.device, dtype=torch.float64)
    left = torch.floor(n_masked[:, None].double() * torch.cos(math.pi / 2 * s / steps)).long()  # (B, S) still masked
    left[:, -1] = 0
    before = torch.cat([n_masked[:, None], left[:, :-1]], 1)
    return before - left


def commit_counts(schedule: str, n_masked: Tensor, steps: int) -> Tensor:
    """(B,) masked counts -> (B, steps) commits per step under `schedule` ("linear" or "cosine").

    >>> commit_counts("linear", torch.tensor([5]), 2).tolist()
    [[3, 2]]
    """
    return (cosine_tokens_per_step if schedule == "cosine" else tokens_per_step)(n_masked, steps)
