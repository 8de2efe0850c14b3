"""The training-at-scale benchmark (benchmarks/scale.py) on its tiny shapes, on the CPU: the parameters it builds
(counted by hand), the FLOPs torch's counter sees in one step (against a hand count of the forward pass), the
starting loss of random weights (ln of the vocabulary), and the LoRA row's frozen bf16 base."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import scale as bench  # noqa: E402

ARGS = dict(batch=2, seq=2048, lora_seq=2048, chunk=64, warmup=1, iters=1, tiny=True, threads=None)


def _first_ce(result: dict) -> float:
    """The mean cross-entropy at the masked positions of the first step: LLaDA's SFT loss at t = 0.5 is
    2 * (sum of the masked positions' cross-entropies) / targets on rows of equal length."""
    return result["losses"][0] * result["n_targets"] / (2 * result["n_masked"])


def test_tiny_full_row_counts_parameters_flops_and_starts_at_ln_vocab():
    args = argparse.Namespace(row="mfu-125m", **ARGS)
    d, layers, heads, mlp, vocab = bench.shape("125m", tiny=True)
    assert (d, layers, heads, mlp, vocab) == (48, 3, 1, 128, 2000)
    result = bench.worker(args, torch.device("cpu"))
    per_layer = 4 * d * d + 3 * d * mlp  # q, k, v, o and the SwiGLU's three matrices
    assert result["params_m"] * 1e6 == pytest.approx(2 * vocab * d + layers * (per_layer + 2 * d) + d)
    tokens, seq = 2 * 128, 128
    assert result["tokens_per_step"] == tokens
    linear, attention = 2 * tokens * per_layer, 4 * 2 * seq * seq * d  # per layer, forward
    head = 2 * result["n_masked"] * d * vocab  # the output projection at masked positions (every id: no vocab_range)
    # backward: two products per forward one (input and weight gradients), attention 2.5 times its forward
    assert result["tflop_per_step"] * 1e12 == pytest.approx(3 * (layers * linear + head) + 3.5 * layers * attention,
                                                             rel=1e-12)
    assert result["finite"] and _first_ce(result) == pytest.approx(math.log(vocab - 4), abs=0.05)
    assert result["mfu"] is None and result["tokens_per_s"] > 0  # no bf16 peak on a CPU


def test_tiny_lora_row_trains_adapters_on_a_bf16_frozen_base():
    args = argparse.Namespace(row="lora-8b", **ARGS)
    model, optimizer, canvas, params = bench.build("lora-8b", args, torch.device("cpu"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    frozen_linear = [m.weight for m in model.modules()
                     if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]
    assert frozen_linear and all(w.dtype == torch.bfloat16 for w in frozen_linear)
    assert canvas.ids.shape == (1, 128) and model.core.gradient_checkpointing
    result = bench.worker(args, torch.device("cpu"))
    assert result["finite"] and _first_ce(result) == pytest.approx(math.log(bench.shape("llada-8b", True)[4] - 4),
                                                                    abs=0.1)
