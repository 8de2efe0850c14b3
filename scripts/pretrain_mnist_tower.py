"""Stage 1 of the `mnist-grid-vlm` recipe: pre-trains its vision tower, the way a VLM starts from a pretrained
image encoder (no pretrained tower can be downloaded here).

The tower of configs/vlm/mnist-grid-vlm.yaml (a timm ViT on the 56x56 grey grid) learns to name the four digits of
2x2 MNIST grids built from the *train* digit pool only: its patch tokens are averaged per quadrant and a linear
head classifies each quadrant (cross-entropy over the 4 digits). The head is thrown away; the tower's weights are
written as safetensors, which the VLM recipe loads through timm (`pretrained: true` with
`tower_kwargs.pretrained_cfg_overlay.file`). Held-out digits are never seen; their accuracy is printed.

    python scripts/pretrain_mnist_tower.py                     # -> runs/mnist-grid-tower/tower.safetensors
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from mmdiff.data.mnist_grid import MnistGridSource, pretrain_grid_tower, quadrant_accuracy
from mmdiff.dataclass_io import load_yaml
from mmdiff.io import save_safetensors


def build_tower(recipe: Path):
    """The recipe's timm tower, randomly initialised, and its preprocessing spec."""
    import timm

    from mmdiff.adapters import build_adapter

    adapter_config = copy.deepcopy(load_yaml(recipe.read_text())["model"]["adapters"]["vision"])
    adapter_config["pretrained"] = False
    kwargs = dict(adapter_config["tower_kwargs"])
    kwargs.pop("pretrained_cfg_overlay", None)
    spec = build_adapter({**adapter_config, "d_model": 8}).image_spec  # the exact preprocessing of the VLM
    return timm.create_model(adapter_config["model_name"], pretrained=False, **kwargs), spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=Path("configs/vlm/mnist-grid-vlm.yaml"))
    parser.add_argument("--out", type=Path, default=Path("runs/mnist-grid-tower"))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    tower, spec = build_tower(args.recipe)
    source = MnistGridSource()
    start = time.perf_counter()
    head = pretrain_grid_tower(tower, spec, source, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               log=lambda step, loss: print(f"step {step} loss {loss:.4f}", file=sys.stderr,
                                                            flush=True))
    minutes = (time.perf_counter() - start) / 60
    accuracy = quadrant_accuracy(tower, head, spec, source)
    args.out.mkdir(parents=True, exist_ok=True)
    save_safetensors(args.out / "tower.safetensors", {k: v.contiguous() for k, v in tower.state_dict().items()})
    report = {"heldout_digit_accuracy": accuracy, "steps": args.steps, "minutes": minutes,
              "command": "python scripts/pretrain_mnist_tower.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    # the trainer's record format, so publish_zoo_entry.py --earlier-run counts this stage in the wall time
    record = {"step": args.steps, "split": "train", "elapsed_s": 60 * minutes, "heldout_digit_accuracy": accuracy}
    (args.out / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
