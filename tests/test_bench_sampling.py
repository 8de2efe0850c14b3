"""The sampler benchmark (benchmarks/sampling.py) on the shipped checkable entry, at smoke size: the reference row is
exact and defines the speed-up, the `llada` row equals it token for token, forward passes are counted as the method
implies, the timing interleaves the methods batch by batch, and the results files are written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from mmdiff import create_model
from mmdiff.data.running_sums import RunningSumsSource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import sampling as bench  # noqa: E402


def test_methods_are_timed_batch_by_batch_in_rotating_order():
    source = RunningSumsSource(n_min=2, n_max=2, val_size=6)
    calls = []

    def decoder(name, nfe):
        def decode(chunk):
            calls.append((name, len(chunk)))
            ids = torch.zeros(len(chunk), 4, dtype=torch.long)
            for row, digits in zip(ids, chunk, strict=True):  # d1 s1 d2 s2 with the right sums
                row[0], row[1], row[2], row[3] = digits[0], digits[0], digits[1], (digits[0] + digits[1]) % 10
            return ids, torch.ones_like(ids, dtype=torch.bool), nfe
        return decode

    out = bench.run_methods({"a": decoder("a", 2), "b": decoder("b", 1), "c": decoder("c", 5)}, source,
                            source.val_problems, 4, torch.device("cpu"))
    # per method: a warm-up, a memory and a FLOP-count call on the first batch, then batch 0 in the order a b c,
    # batch 1 in b c a
    assert calls[:9] == [("a", 4)] * 3 + [("b", 4)] * 3 + [("c", 4)] * 3
    assert calls[9:] == [("a", 4), ("b", 4), ("c", 4), ("b", 2), ("c", 2), ("a", 2)]
    assert [out[m]["nfe_per_batch"] for m in "abc"] == [2.0, 1.0, 5.0]
    assert all(out[m]["exact_match"] == 1.0 for m in "abc")
    for m in "abc":
        assert out[m]["tokens_per_s"] == pytest.approx(2 * 6 / out[m]["seconds"])
        assert len(out[m]["outputs"]) == 6


def test_smoke_run_of_the_shipped_entry(tmp_path):
    argv = ["--problems", "6", "--lengths", "64", "--batch-sizes", "3", "--thresholds", "0.995", "--parallel", "2",
            "--small-block", "8", "--device", "cpu", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "sampling.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    ref = rows[bench.REFERENCE]
    assert ref["speedup"] == 1.0 and ref["exact_match"] == 1.0
    assert ref["nfe_per_batch"] == 32.0  # one sum per step, 32 sums
    assert rows["llada"]["same_as_reference"] == 1.0 and rows["llada"]["nfe_per_batch"] == 32.0
    assert rows["llada, 2 sums/step"]["nfe_per_batch"] == 16.0
    assert rows["dual cache + threshold 0.995"]["exact_match"] == 1.0
    assert rows["dual cache + threshold 0.995"]["nfe_per_batch"] < 16
    assert "AR baseline (KV cache)" in rows and rows["AR baseline (KV cache)"]["same_as_reference"] is None
    # one sum per forward pass, whatever the cache: 32 sums in 32 passes, token for token the reference's answers
    for method in ["prefix cache", "dual cache"]:
        assert rows[method]["nfe_per_batch"] == 32.0 and rows[method]["same_as_reference"] == 1.0, method
    assert rows["AR baseline (KV cache)"]["nfe_per_batch"] == 32.0  # one pass per generated token (the sums)
    # a cache changes how a pass is computed, not what it commits: every threshold row takes the same passes
    threshold = {rows[m]["nfe_per_batch"] for m in ["threshold 0.995", "dual cache + threshold 0.995",
                                                    "delayed cache + threshold 0.995"]}
    assert len(threshold) == 1 and threshold.pop() < 16  # fewer passes than two sums per step
    # blocks of 8 positions (4 sums each): at least one pass per block, at most one per sum
    assert 8 <= rows["delayed cache + threshold 0.995, blocks of 8"]["nfe_per_batch"] <= 32
    for method, r in rows.items():
        assert r["exact_match"] == 1.0, method  # the shipped model is exact on every method at this size
        assert r["same_as_reference"] in (1.0, None), method
    # MFLOP per generated sum, counted: the reference loop runs the whole canvas (L = 64) once per sum
    cfg = bench.create_model("running-sums-small").core.config
    d, h, L = cfg.d_model, cfg.mlp_hidden_size, 64
    per_layer = 2 * L * d * 4 * d + 3 * 2 * L * d * h + 4 * L * L * d  # q k v o, SwiGLU, attention
    assert ref["mflop_per_token"] == pytest.approx((cfg.n_layers * per_layer + 2 * L * d * cfg.vocab_size) / 1e6)
    assert rows["AR baseline (KV cache)"]["mflop_per_token"] < rows["dual cache + threshold 0.995"]["mflop_per_token"]
    assert rows["AR baseline (KV cache)"]["vs_ar"] == 1.0 and ref["vs_ar"] == pytest.approx(
        ref["tokens_per_s"] / rows["AR baseline (KV cache)"]["tokens_per_s"])
    # the block-diffusion entry: exact, with fewer passes than sums, and compared with AR like every row
    for method in ["block diffusion, threshold 0.995", "block diffusion + pipeline, threshold 0.995 (early 0.9975)"]:
        assert rows[method]["same_as_reference"] is None and rows[method]["nfe_per_batch"] < 16, method
        assert rows[method]["vs_ar"] == pytest.approx(
            rows[method]["tokens_per_s"] / rows["AR baseline (KV cache)"]["tokens_per_s"])
    table = (tmp_path / "sampling.md").read_text()
    assert "| 64 | 3 | dual cache + threshold 0.995 | 100.0 % | 100 % |" in table


def test_bfloat16_run_loads_every_model_in_bfloat16_and_stays_exact(tmp_path, monkeypatch):
    loaded = []

    def spy(*args, **kwargs):
        model = create_model(*args, **kwargs)
        loaded.append(next(model.parameters()).dtype)
        return model

    monkeypatch.setattr(bench, "create_model", spy)
    argv = ["--problems", "6", "--lengths", "64", "--batch-sizes", "3", "--thresholds", "0.995", "--dtype", "bfloat16",
            "--only", "AR", "block diffusion", "--device", "cpu", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    assert loaded == [torch.bfloat16] * 3  # the checkable entry, the AR baseline, the block-diffusion entry
    rows = {r["method"]: r for r in json.loads((tmp_path / "sampling.json").read_text())["rows"]}
    assert set(rows) == {bench.REFERENCE, "AR baseline (KV cache)", "block diffusion, threshold 0.995",
                         "block diffusion + pipeline, threshold 0.995 (early 0.9975)"}
    for method, r in rows.items():
        assert r["exact_match"] == 1.0, method  # bf16 weights and activations still solve these problems exactly
    assert rows["block diffusion, threshold 0.995"]["nfe_per_batch"] < 16
    assert "weights in bfloat16" in (tmp_path / "sampling.md").read_text()
