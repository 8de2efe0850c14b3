"""Projectors: tower features (width C) -> soft tokens of the core's width (d_model).

LLaVA (Liu et al., 2023, "Visual Instruction Tuning") introduced the `linear` projector and LLaVA-1.5 (Liu et al.,
2023, "Improved Baselines with Visual Instruction Tuning") the `mlp2x_gelu` one; LaViDa (Li et al., 2025) and
LLaDA-V (You et al., 2025) reuse them. The modules are built exactly as LLaVA's `build_vision_projector` builds them
(`nn.Linear` for `linear`, `nn.Sequential(Linear, GELU, Linear, ...)` for `mlp{N}x_gelu`), so a checkpoint's
`mm_projector.*` keys map 1:1 onto `projector.*` (`mm_projector.0.weight` -> `projector.0.weight`,
`mm_projector.2.weight` -> `projector.2.weight`; `linear`: `mm_projector.weight` -> `projector.weight`).

>>> import torch
>>> from mmdiff.adapters.projectors import build_projector
>>> proj = build_projector("mlp2x_gelu", 8, 16)
>>> sorted(proj.state_dict())
['0.bias', '0.weight', '2.bias', '2.weight']
>>> proj(torch.zeros(2, 5, 8)).shape
torch.Size([2, 5, 16])
"""

from __future__ import annotations

import re

from torch import nn

from mmdiff.registry import Registry

__all__ = ["PROJECTORS", "build_projector", "is_projector", "projector_widths", "check_projector_width"]

PROJECTORS = Registry("projector")  # name -> callable(in_dim, out_dim) -> nn.Module

_MLP_GELU = re.compile(r"mlp(\d+)x_gelu")


@PROJECTORS.register("linear")
def linear_projector(in_dim: int, out_dim: int) -> nn.Module:
    """One `nn.Linear(in_dim, out_dim)` (LLaVA's `linear`; state-dict keys `weight`, `bias`)."""
    return nn.Linear(in_dim, out_dim)


def mlp_gelu_projector(in_dim: int, out_dim: int, depth: int = 2) -> nn.Sequential:
    """LLaVA's `mlp{depth}x_gelu`: Linear(in, out), then (GELU, Linear(out, out)) x (depth - 1).

    The linear layers sit at indices 0, 2, 4, ... (keys `0.weight`, `2.weight`, ...), as in LLaVA.
    """
    if depth < 1:
        raise ValueError(f"an mlp projector needs depth >= 1, got {depth}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


@PROJECTORS.register("mlp2x_gelu")
def mlp2x_gelu_projector(in_dim: int, out_dim: int) -> nn.Sequential:
    """Linear(in, out) -> GELU -> Linear(out, out) (LLaVA-1.5's `mlp2x_gelu`; keys `0.*`, `2.*`)."""
    return mlp_gelu_projector(in_dim, out_dim, depth=2)


def is_projector(name: str) -> bool:
    """True when `name` is a registered projector or any LLaVA-style `mlp{N}x_gelu` name."""
    return name in PROJECTORS or _MLP_GELU.fullmatch(name) is not None


def build_projector(name: str, in_dim: int, out_dim: int) -> nn.Module:
    """Builds projector `name` mapping width `in_dim` to `out_dim`.

    Args:
        name: a name in `PROJECTORS` ("linear", "mlp2x_gelu", or one a third party registered) or any
            `mlp{N}x_gelu` (LLaVA's naming, N >= 1).
        in_dim: tower feature width.
        out_dim: the core's d_model.

    >>> build_projector("linear", 4, 6)
    Linear(in_features=4, out_features=6, bias=True)
    """
    for what, value in (("in_dim", in_dim), ("out_dim", out_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"projector {what} must be a positive integer, got {value!r}")
    if name in PROJECTORS:
        return PROJECTORS.get(name)(in_dim, out_dim)
    match = _MLP_GELU.fullmatch(name)
    if match:
        return mlp_gelu_projector(in_dim, out_dim, depth=int(match.group(1)))
    raise KeyError(PROJECTORS.unknown_message(name) + " (or any LLaVA-style 'mlp{N}x_gelu')")


def projector_widths(projector: nn.Module) -> tuple[int, int]:
    """(input width, output width) of a projector: its first and last `nn.Linear`."""
    linears = [m for m in projector.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"cannot read the widths of projector {type(projector).__name__}: it has no nn.Linear")
    return linears[0].in_features, linears[-1].out_features


def check_projector_width(out_width: int, d_model: int, *, what: str = "adapter") -> None:
    """Raises a ValueError naming both widths and the fix when a projector's output width is not the core's.

    >>> check_projector_width(64, 64)
    """
    if out_width != d_model:
        raise ValueError(
            f"the {what} projects to width {out_width} but the core's d_model is {d_model}: build the {what} with "
            f"d_model={d_model} (its config's `d_model` field), or load a projector trained for this core"
        )
