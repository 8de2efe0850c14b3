"""Small test doubles shared by several test files (import with `from helpers import ...`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from mmdiff import CoreConfig, MaskedDiffusionTransformer, VocabLayout


def random_core(vocab: VocabLayout, seed: int = 0, **config) -> MaskedDiffusionTransformer:
    """A tiny core (d_model 32, 2 layers, 4 heads unless `config` says otherwise) with every weight random and O(1)
    (norm gains 1 + 0.3 N(0, 1), the rest N(0, 1 / fan_in)), so each part of the computation matters."""
    options = {"d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 64, **config}
    core = MaskedDiffusionTransformer(CoreConfig(vocab=vocab, **options))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in core.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return core.eval()


class RecordingCore(nn.Module):
    """Wraps a core and records the canvas of every forward pass (`inputs`)."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core
        self.inputs: list[torch.Tensor] = []

    def check_ids(self, ids: torch.Tensor) -> None:
        self.core.check_ids(ids)

    def forward(self, x, **kwargs):
        self.inputs.append(x.clone())
        return self.core(x, **kwargs)
