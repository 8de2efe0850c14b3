"""Trains the "image/vq" VQ-VAE tokenizer (van den Oord et al., 2017; EMA codebook) on MNIST digits.

The recipe is this script's argparse defaults (no yaml): 28 x 28 grey digits -> 7 x 7 codes of a 128-entry
codebook, trained on the MNIST train pool of `mmdiff.data.mnist_grid.digit_split` (the held-out digits are never
seen) and evaluated on the held-out pool: reconstruction MSE (pixels in [-1, 1] and in [0, 1]), PSNR (peak 1 on
[0, 1] pixels), codebook perplexity and codes used. Writes `<out>/config.json` + `<out>/model.safetensors` (the
tokenizer folder, `mmdiff.adapters.vq.load_vq_tokenizer`) and `<out>/metrics.jsonl`.

    python scripts/train_vq_tokenizer.py --out runs/vq-mnist
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from mmdiff.adapters.vq import (
    VQConfig,
    VQTokenizer,
    codebook_perplexity,
    load_vq_tokenizer,
    save_vq_tokenizer,
    train_vq,
    uint8_to_pixels,
)
from mmdiff.data.mnist_grid import digit_split, load_mnist_digits
from mmdiff.io import atomic_write


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/vq-mnist", help="tokenizer folder to write")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--codebook-size", type=int, default=128)
    p.add_argument("--code-dim", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--num-res-blocks", type=int, default=1)
    p.add_argument("--downsample", type=int, default=4)
    p.add_argument("--beta", type=float, default=0.25)
    p.add_argument("--ema-decay", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is robust on a shared CPU)")
    return p.parse_args(argv)


@torch.no_grad()
def evaluate(model: VQTokenizer, pixels: torch.Tensor, train_pixels: torch.Tensor) -> dict[str, Any]:
    """Held-out reconstruction error, PSNR and codebook usage of `model` on `pixels` (N, C, H, W) in [-1, 1]."""
    model.eval()
    codes = torch.cat([model.encode(chunk) for chunk in pixels.split(500)])  # (N, h, w)
    recon = torch.cat([model.decode(chunk) for chunk in codes.split(500)]).clamp(-1, 1)
    mse = float(((recon - pixels) ** 2).mean())
    mse01 = mse / 4  # pixels in [0, 1]: (x01 - y01) = (x - y) / 2
    counts = torch.bincount(codes.flatten(), minlength=model.codebook_size)
    return {
        "mse": round(mse, 6), "mse_01": round(mse01, 6), "psnr_db": round(10 * math.log10(1 / mse01), 3),
        "mean_image_mse": round(float(((pixels - train_pixels.mean(0)) ** 2).mean()), 6),
        "perplexity": round(codebook_perplexity(counts), 2), "codes_used": int((counts > 0).sum()),
        "codebook_size": model.codebook_size, "grid": list(codes.shape[1:]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = load_mnist_digits()
    split = digit_split(labels, seed=args.seed)
    train, val = uint8_to_pixels(images[split["train"]]), uint8_to_pixels(images[split["val"]])
    config = VQConfig(channels=1, image_size=[28, 28], downsample=args.downsample, hidden=args.hidden,
                      num_res_blocks=args.num_res_blocks, code_dim=args.code_dim, codebook_size=args.codebook_size,
                      beta=args.beta, ema_decay=args.ema_decay)
    model = VQTokenizer(config)
    records: list[dict[str, Any]] = []

    def log(record: dict[str, Any]) -> None:
        records.append(record)
        print(json.dumps(record), flush=True)
        text = "".join(json.dumps(r) + "\n" for r in records)
        atomic_write(out / "metrics.jsonl", lambda tmp: Path(tmp).write_text(text))

    start = time.perf_counter()
    train_vq(model, train, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
             log_every=args.log_every, log=log)
    train_s = time.perf_counter() - start
    save_vq_tokenizer(model, out)
    reloaded = load_vq_tokenizer(out)
    result = {"step": args.steps, "split": "val", "elapsed_s": round(train_s, 2), **evaluate(reloaded, val, train),
              "n_train": len(train), "n_val": len(val)}
    log(result)
    return result


if __name__ == "__main__":
    main()
