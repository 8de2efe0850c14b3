"""Masking schedules of absorbing-state (masked) discrete diffusion.

A schedule maps time t in (0, 1] to the probability m(t) that a target position is masked, and gives the ELBO weight
w(t) of the cross-entropy on masked positions (MDLM, Sahoo et al. 2024; LLaDA, Nie et al. 2025):
    linear:      m(t) = (1 - eps) t + eps,  w(t) = 1 / m(t)            (LLaDA's `p_mask`)
    log-linear:  m(t) = (1 - eps) t,        w(t) = 1 / t              (MDLM's LogLinearNoise)
    cosine:      m(t) = 1 - cos(pi t / 2),  w(t) = m'(t) / m(t)        (MaskGIT's schedule as a continuous-time ELBO)

Every schedule takes `t_range=(low, high)`: the loss then samples t uniformly in [low, high] only (BD3-LM's clipped
schedules, Arriola et al. 2025: mask rates kept in [beta, omega] lower the variance of the estimate and, with a high
low end, train the model on the heavily masked blocks it decodes first); the weight w(t) stays the schedule's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmdiff.registry import SCHEDULES

__all__ = ["Schedule", "LinearSchedule", "LogLinearSchedule", "CosineSchedule", "get_schedule"]


class Schedule:
    """Base class: subclasses define `mask_prob` and `weight`."""

    name = "base"

    def __init__(self, eps: float = 1e-3, t_range: tuple[float, float] | None = None) -> None:
        if not 0 <= eps < 1:
            raise ValueError(f"eps must be in [0, 1), got {eps}")
        if t_range is not None:
            low, high = (float(v) for v in t_range)
            if not eps <= low < high <= 1:
                raise ValueError(f"t_range must be (low, high) with eps={eps} <= low < high <= 1, got {tuple(t_range)}"
                                 f"; e.g. (0.5, 1.0) trains on half to fully masked canvases only")
            t_range = (low, high)
        self.eps = eps
        self.t_range = t_range

    def mask_prob(self, t: Tensor) -> Tensor:
        """m(t): the probability that a target position is masked at time t."""
        raise NotImplementedError

    def weight(self, t: Tensor) -> Tensor:
        """w(t): the ELBO weight of the cross-entropy at masked positions."""
        raise NotImplementedError

    def sample_t(self, batch_size: int, *, generator: torch.Generator | None = None, device=None,
                 antithetic: bool = False) -> Tensor:
        """Times in [eps, 1] (in `t_range` when given); `antithetic` spreads a batch evenly over the interval
        (lower-variance estimates).

        >>> g = torch.Generator().manual_seed(0)
        >>> t = LinearSchedule(t_range=(0.5, 1.0)).sample_t(4, antithetic=True, generator=g)
        >>> bool(((t >= 0.5) & (t <= 1.0)).all()), round(float(t.max() - t.min()), 3)
        (True, 0.375)
        """
        u = torch.rand(batch_size if not antithetic else 1, generator=generator, device=device)
        if antithetic:
            u = (u + torch.arange(batch_size, device=device) / batch_size) % 1
        low, high = self.t_range or (self.eps, 1.0)
        return low + (high - low) * u

    def __repr__(self) -> str:
        clip = "" if self.t_range is None else f", t_range={self.t_range}"
        return f"{type(self).__name__}(eps={self.eps}{clip})"


@SCHEDULES.register("linear")
class LinearSchedule(Schedule):
    name = "linear"

    def mask_prob(self, t: Tensor) -> Tensor:
        return (1 - self.eps) * t + self.eps

    def weight(self, t: Tensor) -> Tensor:
        return 1 / self.mask_prob(t)


@SCHEDULES.register("log-linear")
class LogLinearSchedule(Schedule):
    name = "log-linear"

    def mask_prob(self, t: Tensor) -> Tensor:
        return (1 - self.eps) * t

    def weight(self, t: Tensor) -> Tensor:
        return 1 / t


@SCHEDULES.register("cosine")
class CosineSchedule(Schedule):
    name = "cosine"

    def mask_prob(self, t: Tensor) -> Tensor:
        return (1 - torch.cos(math.pi / 2 * t)).clamp(min=self.eps)

    def weight(self, t: Tensor) -> Tensor:
        return (math.pi / 2) * torch.sin(math.pi / 2 * t) / self.mask_prob(t)


def get_schedule(name: str | Schedule, **kwargs) -> Schedule:
    """A schedule by registry name (`linear`, `log-linear`, `cosine`), a Schedule subclass, or passed through.

    >>> get_schedule("linear", eps=0.0).weight(torch.tensor([0.25]))
    tensor([4.])
    """
    if isinstance(name, Schedule):
        return name
    if isinstance(name, type) and issubclass(name, Schedule):
        return name(**kwargs)
    if not isinstance(name, str):
        raise TypeError(f"schedule must be a name in SCHEDULES or a Schedule, got {name!r}")
    return SCHEDULES.get(name)(**kwargs)
