"""Projectors: tower features (width C) -> soft tokens of the core's width (d_model).

LLaVA (Liu et al., 2023, "Visual Instruction Tuning") introduced the `linear` projector and LLaVA-1.5 (Liu et al.,
2023, "Improved Baselines with Visual Instruction Tuning") the `mlp2x_gelu` one; LaViDa (Li et al., 2025) and
LLaDA-V (You et al., 2025) reuse them. The modules are built exactly as LLaVA's `build_vision_projector` builds them
(`nn.Linear` for `linear`, `nn.Sequential(Linear, GELU, Linear, ...)` for `mlp{N}x_gelu`), so a checkpoint's
`mm_projector.*` keys map 1:1 onto `projector.*` (`mm_projector.0.weight` -> `projector.0.weight`,
`mm_projector.2.weight` -> `projector.2.weight`; `linear`: `mm_projector.weight` -> `projector.weight`).

Those two act on each token alone. `diffa_conv` is DIFFA's semantic connector (Zhou et al., 2025, "DIFFA: Large
Language Diffusion Models Can Listen and Understand", `WhisperProjector(downsample_rate=4)` in its `src/subsample.py`),
which also shortens the sequence 4x: it is registered with `resamples=True` and tells its output length through
`projected_length`. Its keys are DIFFA's `semantic_connector.*` ones (`conv.0`, `conv.2`, `linear_connector.0`,
`linear_connector.2`, `layernorm`).

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

from torch import Tensor, nn

from mmdiff.registry import Registry

__all__ = [
    "PROJECTORS",
    "build_projector",
    "is_projector",
    "projector_widths",
    "check_projector_width",
    "projected_length",
    "token_wise_projectors",
    "DiffaConvProjector",
]

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


class DiffaConvProjector(nn.Module):
    """DIFFA's conv subsampler: (B, T, in_dim) -> (B, T // stride, out_dim).

    The trailing T % stride positions are dropped, then Conv1d(in, in, k3, pad 1) -> GELU -> Conv1d(in,
    in * stride, k3, stride, pad 1) over time, then Linear(in * stride, in) -> ReLU -> Linear(in, out) -> ReLU ->
    LayerNorm(out), as DIFFA's `WhisperProjector` computes it (stride 4 there). With T' = stride * m the strided
    convolution gives floor((T' + 2 - 3) / stride) + 1 = m outputs, so the length is T // stride; a sequence shorter
    than `stride` has no output and is an error.

    >>> import torch
    >>> proj = DiffaConvProjector(8, 16)
    >>> proj(torch.zeros(2, 10, 8)).shape, proj.output_length(10)
    (torch.Size([2, 2, 16]), 2)
    """

    def __init__(self, in_dim: int, out_dim: int, stride: int = 4) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.stride = in_dim, out_dim, stride
        self.conv = nn.Sequential(
            nn.Conv1d(in_dim, in_dim, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv1d(in_dim, in_dim * stride, kernel_size=3, stride=stride, padding=1),
        )
        self.linear_connector = nn.Sequential(
            nn.Linear(in_dim * stride, in_dim), nn.ReLU(), nn.Linear(in_dim, out_dim), nn.ReLU()
        )
        self.layernorm = nn.LayerNorm(out_dim)

    def output_length(self, length: int) -> int:
        """Positions out for `length` positions in: length // stride."""
        return length // self.stride

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, in_dim) -> (B, T // stride, out_dim)."""
        if x.shape[1] < self.stride:
            raise ValueError(f"the diffa_conv projector needs at least {self.stride} positions, got {x.shape[1]}; "
                             "give longer audio (or a token-wise projector such as 'linear')")
        x = x[:, : x.shape[1] - x.shape[1] % self.stride]  # (B, T', C), T' a multiple of the stride
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, C, T') -> (B, T' / stride, C * stride)
        return self.layernorm(self.linear_connector(x))  # (B, T' / stride, out_dim)


@PROJECTORS.register("diffa_conv", resamples=True)
def diffa_conv_projector(in_dim: int, out_dim: int) -> DiffaConvProjector:
    """DIFFA's semantic connector: Conv1d k3 -> GELU -> Conv1d k3 stride 4 -> Linear-ReLU-Linear-ReLU -> LayerNorm."""
    return DiffaConvProjector(in_dim, out_dim, stride=4)


def projected_length(projector: nn.Module, length: int) -> int:
    """Positions a projector gives for `length` positions in: its `output_length(length)` when it resamples the
    sequence (`diffa_conv`), else `length` (token-wise projectors).

    >>> projected_length(build_projector("linear", 4, 4), 7), projected_length(build_projector("diffa_conv", 4, 4), 7)
    (7, 1)
    """
    output_length = getattr(projector, "output_length", None)
    return int(output_length(length)) if callable(output_length) else int(length)


def is_projector(name: str, *, token_wise: bool = False) -> bool:
    """True when `name` is a registered projector or any LLaVA-style `mlp{N}x_gelu` name; with `token_wise=True`,
    only one that keeps the sequence length (not `diffa_conv`; what a fixed token grid such as vision's needs)."""
    if name in PROJECTORS:
        return not (token_wise and PROJECTORS.meta(name).get("resamples", False))
    return _MLP_GELU.fullmatch(name) is not None


def token_wise_projectors() -> list[str]:
    """The registered projectors that keep the sequence length (one output per input position).

    >>> token_wise_projectors()
    ['linear', 'mlp2x_gelu']
    """
    return [name for name in PROJECTORS.list() if is_projector(name, token_wise=True)]


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
    """(input width, output width) of a projector: its first and last `nn.Linear` (or its `in_dim` / `out_dim`)."""
    if isinstance(getattr(projector, "in_dim", None), int) and isinstance(getattr(projector, "out_dim", None), int):
        return projector.in_dim, projector.out_dim
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
