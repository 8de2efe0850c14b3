"""The VLA benchmark (benchmarks/vla.py) on a tiny random-weight Meta-World policy: the four systems run the same
held-out episodes, autoregressive decoding spends one forward pass per action token against the entry's own steps,
the scripted expert solves "reach", and the summary holds the card's metrics."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_tokenizer
from test_vla_task import make_vla

from mmdiff.data.metaworld_demos import MetaWorldDemosSource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import vla as bench  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("metaworld") is None,
                                reason="Meta-World is not installed: pip install \"mmdiff[robot]\"")


def test_benchmark_runs_four_systems_on_the_same_held_out_episodes(tmp_path):
    # chunks of 4 steps x 4 action dimensions = 16 action tokens; the checkpoint decodes them in 8 forward passes
    model = make_vla(build_tiny_tokenizer(), action_dim=4, state_dim=39, instruction_length=20, steps=8)
    model.config.task_options["data"] = {"name": "metaworld-demos", "options": {"root": str(tmp_path / "demos"),
                                                                                "tasks": ["reach"]}}
    folder = model.save_pretrained(tmp_path / "vla")
    assert bench.main(["--model", str(folder), "--episodes", "2", "--num-envs", "2", "--max-steps", "150",
                       "--device", "cpu", "--out", str(tmp_path / "results")]) == 0
    payload = json.loads((tmp_path / "results" / "vla.json").read_text())
    rows = {(r["system"], r["task"]): r for r in payload["rows"]}
    assert set(rows) == {(s, t) for s in ("diffusion", "autoregressive", "expert", "random") for t in ("reach",
                                                                                                        "average")}
    held_out = MetaWorldDemosSource(tmp_path / "demos", tasks=["reach"]).candidate_seeds("val", "reach", 2)
    for system in ("diffusion", "autoregressive", "expert", "random"):
        assert [e["seed"] for e in rows[system, "reach"]["episodes"]] == held_out
    assert rows["diffusion", "reach"]["nfe_per_chunk"] == 8.0
    assert rows["autoregressive", "reach"]["nfe_per_chunk"] == 16.0  # one pass per action token
    assert rows["autoregressive", "average"]["nfe_ratio_vs_diffusion"] == 2.0
    assert rows["expert", "reach"]["success_rate"] == 1.0  # the scripted expert solves reach well within 150 steps
    assert rows["expert", "reach"]["nfe_per_chunk"] is None
    summary = payload["summary"]
    assert summary["expert_success_reach"] == 1.0 and summary["expert_average_success"] == 1.0
    assert summary["nfe_per_chunk"] == 8.0 and summary["ar_nfe_per_chunk"] == 16.0
    assert summary["episodes_per_task"] == 2
    assert summary["success_reach"] == rows["diffusion", "reach"]["success_rate"]
    assert summary["ms_per_action"] > 0 and summary["ar_ms_per_action"] > 0
    table = (tmp_path / "results" / "vla.md").read_text()
    assert "| reach | expert | 2 | 100 % |" in table and "python benchmarks/vla.py --model" in table
