"""The adaptation benchmark (benchmarks/adaptation.py) at smoke size: every arm trains through `mmdiff.train` from the
start it names (the shipped causal baseline, a GPT-2-layout export transformers loads, or fresh weights) and is graded
on held-out problems; the results files are written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import adaptation as bench  # noqa: E402


def test_smoke_run_of_every_start(tmp_path):
    arms = ["scratch", "adapted", "adapted from GPT-2"]
    argv = ["--steps", "2", "--gpt2-steps", "2", "--problems", "4", "--arms", *arms, "--runs", str(tmp_path / "runs"),
            "--device", "cpu", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    rows = {r["arm"]: r for r in json.loads((tmp_path / "adaptation.json").read_text())["rows"]}
    assert list(rows) == arms
    for row in rows.values():
        assert row["steps"] == 2 and 0 <= row["exact_match"] <= row["token_accuracy"] <= 1
    # a causal start already knows the task's next-token rule: its masked-diffusion loss starts elsewhere than chance
    assert rows["adapted"]["first_loss"] != rows["scratch"]["first_loss"]
    gpt2 = tmp_path / "runs" / "gpt2-ar" / "gpt2-layout"
    assert json.loads((gpt2 / "config.json").read_text())["model_type"] == "gpt2"
    assert "| adapted from GPT-2 | 2 |" in (tmp_path / "adaptation.md").read_text()
