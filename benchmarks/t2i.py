"""Text-to-image benchmark on the shipped entry `mnist-t2i`: images per second, digit-classifier accuracy and FID
against the number of denoising steps (4, 8, 16, 32), batch sizes 1 and 16, measured in one run on one machine.

Every setting generates one image per held-out caption (class-balanced) through `mmdiff.pipeline("text-to-image")`
with the entry's sampler defaults (MaskGIT cosine schedule, its guidance, temperature and choice temperature) and
one seeded generator; only the step count and the batch size change. Accuracy is the fraction of images that the
shipped digit classifier (`mmdiff.evaluation.digit_classifier`, 98.4 % on real held-out digits) reads as the requested
digit; FID is the Frechet distance of the classifier's 64-d features of the generated images against the 1000 real
held-out digits, next to the FID of as many real train-pool digits (`fid_real`, the floor at this sample size).

Images/s counts generated images over the wall time of all batches after one warm-up batch (tokenizer decoding
included); NFE per batch counts forward passes of the core (guidance runs its conditional and unconditional rows
in one batched pass).

    python benchmarks/t2i.py                               # 500 captions, steps 4 8 16 32, batch 1 and 16
    python benchmarks/t2i.py --captions 40 --steps 4 8     # a smoke run

Writes benchmarks/results/t2i.json and t2i.md and prints the markdown table.
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
from mmdiff.data.mnist_digits import MnistDigitsSource  # noqa: E402
from mmdiff.data.mnist_grid import load_mnist_digits  # noqa: E402
from mmdiff.evaluation.digit_classifier import score_digits  # noqa: E402


def run_setting(model: Any, captions: list[str], batch: int, steps: int, device: torch.device,
                seed: int) -> dict[str, Any]:
    pipe = mmdiff.pipeline("text-to-image", model, batch_size=batch)
    chunks = [captions[i : i + batch] for i in range(0, len(captions), batch)]
    counter = CountingCore(model.core)
    real_core, model.core = model.core, counter
    try:
        with torch.inference_mode():
            pipe(chunks[0], num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))  # warm-up
            counter.calls = 0
            generator = torch.Generator().manual_seed(seed)
            sync(device)
            start = time.perf_counter()
            images = [im for chunk in chunks for im in pipe(chunk, num_inference_steps=steps, generator=generator)]
            sync(device)
            seconds = time.perf_counter() - start
    finally:
        model.core = real_core
    return {"images": images, "images_per_s": len(captions) / seconds, "seconds": seconds,
            "nfe_per_batch": counter.calls / len(chunks)}


def bench(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    model = mmdiff.create_model(args.model, device=str(device))
    source = MnistDigitsSource()
    examples = source.examples("val", args.captions)
    captions, labels = [e["caption"] for e in examples], [e["label"] for e in examples]
    reference = source.reference_images()
    real = score_digits(load_mnist_digits()[0][source.order("train")[0][: len(labels)]], labels, reference)
    rows = []
    for batch in args.batch_sizes:
        for steps in args.steps:
            result = run_setting(model, captions, batch, steps, device, args.seed)
            scores = score_digits(result.pop("images"), labels, reference)
            rows.append({"batch": batch, "steps": steps, **result, "fid": scores["fid"], "fid_real": real["fid"],
                         "classifier_accuracy": scores["classifier_accuracy"]})
            print(f"batch {batch} steps {steps}: accuracy {scores['classifier_accuracy']:.3f} fid {scores['fid']:.1f} "
                  f"{result['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    table = [{
        "batch": r["batch"], "steps": r["steps"], "classifier accuracy": f"{100 * r['classifier_accuracy']:.1f} %",
        "FID": f"{r['fid']:.1f}", "FID of real digits": f"{r['fid_real']:.1f}",
        "NFE / batch": f"{r['nfe_per_batch']:.0f}", "images / s": f"{r['images_per_s']:.1f}",
    } for r in rows]
    columns = ["batch", "steps", "classifier accuracy", "FID", "FID of real digits", "NFE / batch", "images / s"]
    head = (f"Text-to-image benchmark: `{args.model}`, {args.captions} held-out captions (class-balanced), seed "
            f"{args.seed}; device {info['device']} ({info.get('gpu', info['cpu'])}), torch {info['torch']}, "
            f"{info['torch_threads']} threads. Command: `{args.command}`.")
    return head + "\n\n" + fmt_table(table, columns) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mnist-t2i", help="zoo name or folder of a T2I entry")
    parser.add_argument("--captions", type=int, default=500, help="held-out captions (one image each)")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser)
    return run_benchmark("t2i", parser, argv, bench, markdown)


if __name__ == "__main__":
    sys.exit(main())
