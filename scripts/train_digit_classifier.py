"""Trains the digit classifier that judges generated MNIST digits (LeNet-style CNN, LeCun et al., 1998) and ships
it inside the package.

The recipe is this script's argparse defaults: the train pool of `mmdiff.data.mnist_grid.digit_split` (400 digits per
class; the held-out pool, 100 per class, is never seen in training), AdamW with a one-cycle learning rate, small
random affine jitter. Reports the held-out accuracy and the wall time, and writes `<out>/config.json`,
`<out>/model.safetensors` (`mmdiff.evaluation.digit_classifier.load_digit_classifier`) and `<out>/metrics.json`.

    python scripts/train_digit_classifier.py            # -> mmdiff/data/assets/digit-classifier/
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mmdiff.data.mnist_grid import digit_split, load_mnist_digits
from mmdiff.evaluation.digit_classifier import (
    SHIPPED_FOLDER,
    DigitClassifierConfig,
    accuracy,
    features,
    frechet_distance,
    load_digit_classifier,
    save_digit_classifier,
    train_digit_classifier,
)
from mmdiff.io import save_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="classifier folder to write (default: the shipped asset folder)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--feature-dim", type=int, default=64)
    p.add_argument("--no-augment", action="store_true", help="train without the random affine jitter")
    p.add_argument("--seed", type=int, default=0, help="seed of the training run (the digit split uses seed 0)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = SHIPPED_FOLDER if args.out is None else Path(args.out)
    images, labels = load_mnist_digits()
    split = digit_split(labels, seed=0)  # the pools the VQ tokenizer and the T2I data use
    train, val = split["train"], split["val"]
    start = time.perf_counter()
    model = train_digit_classifier(
        images[train], labels[train], epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
        augment=not args.no_augment, config=DigitClassifierConfig(feature_dim=args.feature_dim),
        log=lambda epoch, loss: print(json.dumps({"epoch": epoch, "loss": round(loss, 4),
                                                  "elapsed_s": round(time.perf_counter() - start, 1)}), flush=True),
    )
    wall_s = time.perf_counter() - start
    save_digit_classifier(model, out)
    reloaded = load_digit_classifier(out)
    metrics = {
        "heldout_accuracy": round(accuracy(reloaded, images[val], labels[val]), 4),
        "train_accuracy": round(accuracy(reloaded, images[train], labels[train]), 4),
        "fid_heldout_half_vs_half": round(frechet_distance(features(images[val[0::2]], reloaded),
                                                           features(images[val[1::2]], reloaded)), 4),
        "n_train": len(train), "n_heldout": len(val),
        "train_wall_s": round(wall_s, 1),
        "command": " ".join(["python scripts/train_digit_classifier.py", *(sys.argv[1:] if argv is None else argv)]),
        "args": vars(args), "torch": torch.__version__, "machine": f"{platform.machine()}, {args.threads} threads",
    }
    save_json(out / "metrics.json", metrics)
    print(json.dumps(metrics), flush=True)
    return metrics


if __name__ == "__main__":
    main()
