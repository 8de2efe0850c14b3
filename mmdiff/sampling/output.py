"""What a sampler returns when asked for more than the sequences: the committed canvas, the step at which each
position was committed (for trajectory views and tests), and the number of forward passes run (NFE)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["SamplerOutput", "GIVEN"]

GIVEN = -1  # commit_step of positions the sampler did not decode (prompt, padding, pinned tokens)


@dataclass
class SamplerOutput:
    """sequences: (B, L) prompt then answer. commit_step: (B, L) long, the 0-based denoising step (forward pass) at
    which each position received its final token, `GIVEN` (-1) where it was never decoded. nfe: forward passes run.

    >>> import torch
    >>> out = SamplerOutput(torch.tensor([[5, 7]]), torch.tensor([[GIVEN, 0]]), nfe=1)
    >>> out.commit_step.tolist()
    [[-1, 0]]
    """

    sequences: Tensor
    commit_step: Tensor
    nfe: int
