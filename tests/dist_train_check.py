"""Launched by tests/test_train.py under `accelerate launch --num_processes 2 --cpu`: trains a recipe with the
same `train()` call a single process makes, then checks on the main process that every rank saved the same weights.

Usage: dist_train_check.py RECIPE OUT_DIR [--section.key=value ...] [--max-steps=N] [--resume]
Prints DIST_CHECK_OK on success.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from mmdiff.train import list_checkpoints, load_train_config, train


def main(argv: list[str]) -> int:
    recipe, out_dir, *rest = argv
    max_steps = next((int(a.split("=", 1)[1]) for a in rest if a.startswith("--max-steps=")), None)
    resume = "--resume" in rest
    overrides = [a for a in rest if not a.startswith("--max-steps=") and a != "--resume"]
    config = load_train_config(recipe, [*overrides, f"--train.out_dir={out_dir}"])
    result = train(config, resume=resume, max_steps=max_steps)

    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    if state.is_main_process:
        out = Path(out_dir)
        for folder in list_checkpoints(out / "checkpoints"):
            digests = {json.loads((folder / f"rng-rank{r}.json").read_text())["params_sha256"]
                       for r in range(state.num_processes)}
            assert len(digests) == 1, f"{folder}: processes hold different weights"
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        assert rows and all(math.isfinite(r["loss"]) for r in rows if "loss" in r), rows
        print(f"DIST_CHECK_OK {result}", flush=True)
    state.wait_for_everyone()
    state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
