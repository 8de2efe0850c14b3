"""The decoding-at-scale benchmark (benchmarks/decode_scale.py) on its tiny shapes, on the CPU: the forward passes of
the block-diffusion sampler as the core counts them (the prompt rides in the first block's pass), the rows, batch
sizes, passes, output lengths and parameter counts (by hand) of a whole --tiny run, and its results files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from mmdiff import CoreConfig, MaskedDiffusionTransformer, VocabLayout
from mmdiff.sampling.block import BlockDiffusionSampler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import decode_scale as bench  # noqa: E402
from common import CountingCore  # noqa: E402


@pytest.mark.parametrize("prompt", [5, 16])
def test_block_sampler_passes_are_core_calls_and_the_prompt_shares_the_first_pass(prompt):
    layout = VocabLayout.build(text_size=60)
    config = CoreConfig(vocab=layout, d_model=32, n_layers=1, n_heads=2, max_seq_len=64, attention="block_causal",
                        block_size=4)
    torch.manual_seed(0)
    core = MaskedDiffusionTransformer(config).eval()
    ids = torch.randint(0, 60, (2, prompt))
    for row, threshold in (("block", 0.0), ("token", 1.0)):
        counted = CountingCore(core)
        out = BlockDiffusionSampler(gen_length=16, threshold=threshold)(counted, ids, mask_id=layout.mask_id,
                                                                         return_history=True)
        assert out.nfe == counted.calls == bench.expected_passes(row, 16, 4) == {"block": 4, "token": 16}[row]
        assert out.sequences.shape == (2, prompt + 16) and not (out.sequences == layout.mask_id).any()


def test_tiny_run_rows_passes_and_results(tmp_path):
    argv = ["--device", "cpu", "--tiny", "--threads", "1", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "decode_scale.json").read_text())
    rows = result["rows"]
    labels = [bench.ROWS[key][0] for key in ("block", "token", "ar")]
    assert [(r["row"], r["batch"]) for r in rows] == [(label, b) for label in labels for b in (1, 2)]
    prompt, gen, block = 16, 32, 8
    d, layers, heads, mlp, vocab = bench.shape(bench.SHAPE, tiny=True)
    assert (d, layers, heads, mlp, vocab) == (256, 8, 2, 768, 7904)
    # embeddings and output projection, per layer q, k, v, o, the SwiGLU's three matrices and two norms, final norm
    params = 2 * vocab * d + layers * (4 * d * d + 3 * d * mlp + 2 * d) + d
    for r in rows:
        assert r["params_m"] * 1e6 == pytest.approx(params, rel=1e-12)  # the same shape in mmdiff and transformers
        assert r["passes"] == {"block": gen // block, "token": gen, "ar": gen}[r["key"]]
        assert r["output_columns"] == prompt + gen and r["gen"] == gen and r["dtype"] == "float32"
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * gen / r["seconds"]) and r["tokens_per_s"] > 0
        assert r["ms_per_pass"] == pytest.approx(r["seconds"] / r["passes"] * 1e3)
        assert r["peak_gib"] > 0 and len(r["times"]) == 1
        ar = next(a for a in rows if a["key"] == "ar" and a["batch"] == r["batch"])
        assert r["vs_ar"] == pytest.approx(r["tokens_per_s"] / ar["tokens_per_s"])
    # transformers 5 runs its static cache on the CPU too (older versions would fall back to the dynamic one)
    assert {r["cache"] for r in rows if r["key"] == "ar"} == {"static"}
    md = (tmp_path / "decode_scale.md").read_text()
    assert md.startswith("# Decoding at scale (tiny shapes)") and "transformers cache: static" in md
    assert all(label in md for label in labels) and result["args"]["gen"] == str(gen)
