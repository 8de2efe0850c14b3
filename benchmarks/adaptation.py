"""AR-to-diffusion adaptation benchmark: does a masked-diffusion model adapted from a causal (autoregressive)
checkpoint beat one trained from scratch for the same number of steps?

Arms, each trained by `mmdiff.train` on the same data, batches and optimizer for `--steps` steps
(configs/reasoning/running-sums-adapt-ar.yaml; only the start and the adaptation settings differ):
- scratch: fresh weights, full attention (the recipe without init_from, as running-sums-small's stage 1 starts);
- adapted: from the AR baseline of the sampler benchmark (benchmarks/baselines/ar-running-sums), Dream's shifted
  prediction (`logits_shift: previous`) and DiffuLLaMA's attention annealing (causal to full over the first third);
- adapted, no annealing: the same with full attention from the first step;
- adapted, no shift: annealing, but position i predicts token i (the next-token head must learn a new position);
- adapted from GPT-2: as "adapted", from a checkpoint in GPT-2's layout that transformers loads (GPT2LMHeadModel: the
  same width and depth with LayerNorm, GELU MLP, learned positions and biases), trained autoregressively here on
  stage 1's data for `--gpt2-steps` steps without a BOS (benchmarks/ar_baseline.py; learned positions must match
  the canvas's) and exported with `save_foreign(layout="gpt2")`;
  the control for it is "scratch, GPT-2 blocks" (the same blocks, fresh weights).

Held-out metric: exact match and token accuracy of the running sums on `--problems` validation problems (n = 8..32,
one sum per forward pass, as `mmdiff eval` decodes), and the final training loss (mean of the last 40 steps).

    python benchmarks/adaptation.py                      # 300 steps per arm, 256 held-out problems
    python benchmarks/adaptation.py --steps 20 --problems 16 --arms scratch adapted     # a smoke run

Writes benchmarks/results/adaptation.json and adaptation.md and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a training loop, like benchmarks/train.py

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, add_run_arguments, fmt_table, run_benchmark  # noqa: E402

from mmdiff.modeling import DiffusionModel  # noqa: E402
from mmdiff.train import build_source, load_train_config, train  # noqa: E402

RECIPE = REPO_ROOT / "configs" / "reasoning" / "running-sums-adapt-ar.yaml"
SCRATCH_CORE = "{d_model: 128, n_layers: 4, n_heads: 4, max_seq_len: 256}"  # the AR baseline's shape
ARMS: dict[str, list[str]] = {
    "scratch": ["--model.init_from=null", f"--model.core={SCRATCH_CORE}", "--objective.attention_anneal_steps=0"],
    "adapted": [],
    "adapted, no annealing": ["--objective.attention_anneal_steps=0"],
    "adapted, no shift": ["--model.core={logits_shift: none}"],
    "adapted from GPT-2": [],  # init_from: the GPT-2 folder (`gpt2_checkpoint`)
    "scratch, GPT-2 blocks": ["--model.init_from=null", "--objective.attention_anneal_steps=0"],
}
GPT2_CORE = {"norm": "layer", "mlp": "gelu_tanh", "positions": "learned", "linear_bias": True, "qkv_bias": True,
             "tie_embeddings": True}


def gpt2_checkpoint(args: argparse.Namespace) -> Path:
    """A GPT-2-layout folder of a causal model of running sums: trained by `ar_baseline.train_ar` on stage 1's data
    (the AR baseline's width and depth with GPT-2's blocks), exported with `save_foreign(layout="gpt2")` and checked
    to load in transformers with the same logits. Reused when it exists."""
    folder = args.runs / "gpt2-ar" / "gpt2-layout"
    if (folder / "config.json").is_file():
        return folder
    from ar_baseline import Stage, train_ar
    from transformers import GPT2LMHeadModel

    from mmdiff.convert import save_foreign

    stage1 = Stage.from_recipe(REPO_ROOT / "configs" / "reasoning" / "running-sums-small.yaml")
    stage = Stage(name="gpt2-stage1", data=stage1.data, steps=args.gpt2_steps, batch_size=stage1.batch_size,
                  optim=stage1.optim, core={**stage1.core, **GPT2_CORE}, seed=stage1.seed)
    # no BOS: with learned absolute positions the AR rows must sit where the masked-diffusion canvases put them
    # (a BOS would shift every token one position right of its diffusion position); distinct position embeddings
    # already tell equal leading tokens apart, which is what the BOS does for RoPE (see ar_baseline.build_ar_model)
    final = train_ar(args.runs / "gpt2-ar", stages=[stage], log_every=50, bos=False)
    model = DiffusionModel.from_pretrained(final)
    save_foreign(model, folder, layout="gpt2")
    ids = torch.randint(0, 10, (2, 12), generator=torch.Generator().manual_seed(0))
    causal = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():  # the export is what transformers reads: the same next-token logits
        torch.testing.assert_close(GPT2LMHeadModel.from_pretrained(folder).eval()(ids).logits,
                                   model.core(ids, attention_mask=causal).logits, atol=1e-4, rtol=1e-4)
    return folder


def run_arm(name: str, overrides: list[str], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Trains one arm into `args.runs/<name>` and grades it on the held-out problems."""
    out_dir = args.runs / name.replace(", ", "-").replace(" ", "-")
    if name == "adapted from GPT-2":
        overrides = [f"--model.init_from={gpt2_checkpoint(args)}"]
    elif name == "scratch, GPT-2 blocks":
        core = {"d_model": 128, "n_layers": 4, "n_heads": 4, "max_seq_len": 256, **GPT2_CORE}
        overrides = [*overrides, "--model.core=" + json.dumps(core)]
    # the arm's own overrides come after the budget's, so an arm's attention_anneal_steps=0 wins
    steps = [f"--train.steps={args.steps}", f"--objective.attention_anneal_steps={args.steps // 3}"]
    config = load_train_config(args.recipe, [*steps, *overrides, f"--train.out_dir={out_dir}",
                                             f"--train.mixed_precision={'no' if device.type == 'cpu' else 'auto'}"])
    start = time.perf_counter()
    final = train(config, resume=False)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in records if r.get("split") == "train" and "loss" in r]
    model = DiffusionModel.from_pretrained(final, device=str(device))
    with torch.inference_mode():
        metrics = build_source(config.data).evaluate(model, limit=args.problems)
    print(f"{name}: exact {metrics['exact_match']:.3f} token acc {metrics['token_accuracy']:.3f} "
          f"({seconds:.0f} s)", file=sys.stderr, flush=True)
    return {"arm": name, "steps": args.steps, "exact_match": metrics["exact_match"],
            "token_accuracy": metrics["token_accuracy"], "final_loss": sum(losses[-2:]) / len(losses[-2:]),
            "first_loss": losses[0], "train_s": seconds,  # repository paths recorded relative to it
            "overrides": [o.replace(f"{REPO_ROOT}/", "") for o in overrides]}


def bench(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    return [run_arm(name, ARMS[name], args, device) for name in args.arms]


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    table = [{
        "arm": r["arm"], "steps": r["steps"], "held-out exact match": f"{100 * r['exact_match']:.1f} %",
        "token accuracy": f"{100 * r['token_accuracy']:.1f} %", "first loss": f"{r['first_loss']:.3f}",
        "final loss": f"{r['final_loss']:.3f}", "train s": f"{r['train_s']:.0f}",
    } for r in rows]
    columns = ["arm", "steps", "held-out exact match", "token accuracy", "first loss", "final loss", "train s"]
    head = (f"AR-to-diffusion adaptation on running sums (n = 8..32), {args.problems} held-out problems, "
            f"{args.steps} steps per arm; device {info['device']} ({info.get('gpu', info['cpu'])}), torch "
            f"{info['torch']}, {info['torch_threads']} threads. Losses: the logged training loss (a mean over "
            f"log_every steps), first and last record. Command: `{args.command}`.")
    return head + "\n\n" + fmt_table(table, columns) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="the adaptation recipe (its data and budget)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of every arm")
    parser.add_argument("--problems", type=int, default=256, help="held-out problems graded per arm")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), help=f"which arms to run: {list(ARMS)}")
    parser.add_argument("--runs", type=Path, default=REPO_ROOT / "runs" / "adaptation", help="run folders")
    parser.add_argument("--gpt2-steps", type=int, default=600,
                        help="autoregressive training steps of the GPT-2-layout checkpoint (made once, then reused)")
    add_run_arguments(parser)
    return run_benchmark("adaptation", parser, argv, bench, markdown)


if __name__ == "__main__":
    sys.exit(main())
