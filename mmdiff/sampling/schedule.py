"""Commit schedules of a block: how many positions each step commits.

- "linear": LLaDA's even split (Nie et al. 2025, reference `get_num_transfer_tokens`): floor(M/S) per step, the
  first M mod S steps one more.
- "cosine": MaskGIT's cosine schedule (Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer").

`masked_after` gives the same schedules as the number of positions still masked after each step, the form a sampler
whose masked pool can grow again (secondary remasking, Discrete Diffusion VLA) follows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["tokens_per_step", "cosine_tokens_per_step", "SCHEDULES", "commit_counts", "masked_after"]

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
    left = _cosine_left(n_masked, steps)  # (B, S) still masked
    before = torch.cat([n_masked[:, None], left[:, :-1]], 1)
    return before - left


def _cosine_left(n_masked: Tensor, steps: int) -> Tensor:
    """(B,) -> (B, S): floor(M cos(pi/2 (s+1)/S)) positions still masked after step s (0 after the last)."""
    s = torch.arange(1, steps + 1, device=n_masked.device, dtype=torch.float64)
    left = torch.floor(n_masked[:, None].double() * torch.cos(math.pi / 2 * s / steps)).long()  # (B, S)
    left[:, -1] = 0
    return left


def commit_counts(schedule: str, n_masked: Tensor, steps: int) -> Tensor:
    """(B,) masked counts -> (B, steps) commits per step under `schedule` ("linear" or "cosine").

    >>> commit_counts("linear", torch.tensor([5]), 2).tolist()
    [[3, 2]]
    """
    return (cosine_tokens_per_step if schedule == "cosine" else tokens_per_step)(n_masked, steps)


def masked_after(schedule: str, n_masked: Tensor, steps: int) -> Tensor:
    """(B,) masked counts -> (B, steps) positions still masked after each step under `schedule`: M minus the commits
    of `commit_counts` so far ("cosine": floor(M cos(pi/2 (s+1)/S)), MaskGIT's mask ratio; 0 after the last step).

    >>> masked_after("cosine", torch.tensor([7]), 3).tolist()  # floor(7 cos(pi/6)) = 6, floor(7 cos(pi/3)) = 3
    [[6, 3, 0]]
    >>> masked_after("linear", torch.tensor([5]), 2).tolist()
    [[2, 0]]
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "cosine":
        return _cosine_left(n_masked, steps)
    return n_masked[:, None] - tokens_per_step(n_masked, steps).cumsum(1)
