"""VLM answer benchmark on the shipped entry `mnist-grid-vlm`: exact-match accuracy and answer latency of three
decoding settings, batch sizes 1 and 16, measured in one run on one machine.

Each held-out question (2x2 grids of held-out MNIST digits) is answered through `mmdiff.pipeline("vlm")`; the answer
block has `answer_length` positions (2 for this entry: "12", "7 <eos>", "yes <eos>").

Settings:
- no cache: every denoising step runs the whole canvas (image tokens, question, answer), one token per step;
- prompt cache: the first step runs the whole canvas and keeps its keys and values; later steps run the answer
  block only (exact under the entry's prefix attention: the prompt never attends to the answer);
- prompt cache + threshold: as above, and every answer token more confident than the threshold is committed at
  once (at least one per step), so confident answers take a single forward pass.

Latency is wall time per question (= per batch / batch size) over all batches after one warm-up batch, image
preprocessing and the vision tower included; NFE is forward passes of the core per batch.

    python benchmarks/vlm.py                       # 400 held-out questions, batch 1 and 16
    python benchmarks/vlm.py --questions 32        # a smoke run

Writes benchmarks/results/vlm.json and vlm.md and prints the markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/train.py

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CountingCore, add_run_arguments, fmt_table, run_benchmark, sync  # noqa: E402

import mmdiff  # noqa: E402
from mmdiff.data.mnist_grid import MnistGridSource, accuracy_by_kind  # noqa: E402


def settings(threshold: float) -> dict[str, dict[str, Any]]:
    return {
        "no cache": {"cache": None},
        "prompt cache": {"cache": "prefix"},
        f"prompt cache + threshold {threshold}": {"cache": "prefix", "threshold": threshold},
    }


def run_setting(model: Any, examples: list[dict[str, Any]], batch: int, options: dict[str, Any],
                device: torch.device) -> dict[str, Any]:
    pipe = mmdiff.pipeline("vlm", model, batch_size=batch, **options)
    images, questions = [e["image"] for e in examples], [e["question"] for e in examples]
    chunks = [(images[i : i + batch], questions[i : i + batch]) for i in range(0, len(examples), batch)]
    counter = CountingCore(model.core)
    real_core, model.core = model.core, counter
    try:
        with torch.inference_mode():
            pipe(*chunks[0])  # warm-up
            counter.calls = 0
            sync(device)
            start = time.perf_counter()
            answers = [a for chunk in chunks for a in pipe(*chunk)]
            sync(device)
            seconds = time.perf_counter() - start
    finally:
        model.core = real_core
    accuracy = accuracy_by_kind(answers, examples)
    return {"accuracy": accuracy, "ms_per_question": 1000 * seconds / len(examples),
            "questions_per_s": len(examples) / seconds, "nfe_per_batch": counter.calls / len(chunks),
            "answers": answers}


def bench(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    model = mmdiff.create_model(args.model, device=str(device))
    examples = MnistGridSource().examples("val", args.questions)
    rows = []
    for batch in args.batch_sizes:
        baseline = None
        for name, options in settings(args.threshold).items():
            result = run_setting(model, examples, batch, options, device)
            answers = result.pop("answers")
            baseline = answers if baseline is None else baseline
            same = sum(a == b for a, b in zip(answers, baseline, strict=True)) / len(answers)
            rows.append({"batch": batch, "setting": name, "same_as_no_cache": same, **result})
            print(f"batch {batch} {name}: exact {result['accuracy']['all']:.3f} "
                  f"{result['ms_per_question']:.1f} ms/question", file=sys.stderr, flush=True)
    for row in rows:
        ref = next(r for r in rows if r["batch"] == row["batch"] and r["setting"] == "no cache")
        row["speedup"] = ref["ms_per_question"] / row["ms_per_question"]
    return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    kinds = [k for k in rows[0]["accuracy"] if k != "all"]
    table = [{
        "batch": r["batch"], "setting": r["setting"], "exact match": f"{100 * r['accuracy']['all']:.1f} %",
        **{k: f"{100 * r['accuracy'][k]:.1f} %" for k in kinds},
        "= no cache": f"{100 * r['same_as_no_cache']:.0f} %", "NFE / batch": f"{r['nfe_per_batch']:.2f}",
        "ms / question": f"{r['ms_per_question']:.2f}", "speed-up": f"{r['speedup']:.2f}x",
    } for r in rows]
    columns = ["batch", "setting", "exact match", *kinds, "= no cache", "NFE / batch", "ms / question", "speed-up"]
    head = (f"VLM benchmark: `{args.model}`, {args.questions} held-out questions; device {info['device']} "
            f"({info.get('gpu', info['cpu'])}), torch {info['torch']}, {info['torch_threads']} threads. Command: "
            f"`{args.command}`.")
    return head + "\n\n" + fmt_table(table, columns) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mnist-grid-vlm", help="zoo name or folder of a VLM entry")
    parser.add_argument("--questions", type=int, default=400, help="held-out questions (kinds stay balanced)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threshold", type=float, default=0.9)
    add_run_arguments(parser)
    return run_benchmark("vlm", parser, argv, bench, markdown)


if __name__ == "__main__":
    sys.exit(main())
