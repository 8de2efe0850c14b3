"""Training at scale on one GPU: model FLOPs utilisation (MFU) of a 125 M and a 1 B core, and the peak memory of LoRA
fine-tuning on a LLaDA-8B-shaped core, with random weights (the numbers depend on the shapes, not on the values).

Rows (each in a fresh process, so one row's memory never weighs on the next):
- `mfu-125m` (d 768, 12 layers, 12 heads, SwiGLU 2048, vocab 32000) and `mfu-1b` (d 2048, 16 layers, 16 heads,
  SwiGLU 5632, vocab 32000): full training steps (AdamW, bf16 autocast with float32 master weights, SDPA attention,
  the masked-diffusion loss at masked positions only) on `--batch` x `--seq` tokens; tokens/s is the median step's,
  MFU = the step's matrix-product and attention FLOPs (counted by torch's FlopCounterMode on one step:
  forward and backward, nothing assumed) per second over the card's dense bf16 peak (a table by GPU name; none
  on a CPU). The peak memory of these rows is the full fine-tuning memory of one process; FSDP over N GPUs
  (`mmdiff train RECIPE --accelerate-config fsdp`) divides its weight, gradient and AdamW parts by N.
- `lora-8b` (LLaDA-8B's shape: d 4096, 32 layers, 32 heads, SwiGLU 12288, vocab 126464): LoRA (r 8 on q, k, v, o)
  supervised fine-tuning with the frozen base in bf16 (mmdiff.lora.store_frozen, the recipe's model.frozen_dtype),
  activation checkpointing per block and the loss in chunks of `--chunk` masked positions, batch 1 x `--lora-seq`
  tokens: the peak memory of a step, weights included (what the GPU must hold), against the 33-76 GB users report
  for the reference code.

    python benchmarks/scale.py --device cuda            # the three rows (an 80 GB GPU; about 3 minutes)
    python benchmarks/scale.py --device cpu --tiny      # the same code on shapes divided by 16 (a smoke run)

Writes benchmarks/results/scale.json and scale.md (`--out` elsewhere) and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_run_arguments,
    flops_of,
    fmt_table,
    median,
    proc_status_kib,
    run_benchmark,
    run_json_subprocess,
    sync,
)

from mmdiff import Canvas, CoreConfig, DiffusionModel, ModelConfig, VocabLayout  # noqa: E402
from mmdiff.diffusion import diffusion_loss  # noqa: E402
from mmdiff.diffusion.schedules import LinearSchedule  # noqa: E402
from mmdiff.lora import LoraSettings, apply_lora, store_frozen  # noqa: E402

SHAPES = {  # d_model, n_layers, n_heads, mlp_hidden_size, vocab
    "125m": (768, 12, 12, 2048, 32000),
    "1b": (2048, 16, 16, 5632, 32000),
    "llada-8b": (4096, 32, 32, 12288, 126464),
}
ROWS = {"mfu-125m": ("125m", "full"), "mfu-1b": ("1b", "full"), "lora-8b": ("llada-8b", "lora")}
# dense bf16 tensor-core peaks (FLOP/s) of the cards' data sheets, matched in the device name
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362.1e12, "A10G": 70e12, "L4": 121e12}


def shape(name: str, tiny: bool) -> tuple[int, int, int, int, int]:
    """A named shape, or with `tiny` its width, heads, MLP and vocabulary divided by 16 and its depth by 4.

    >>> shape("llada-8b", tiny=True)
    (256, 8, 2, 768, 7904)
    """
    d, layers, heads, mlp, vocab = SHAPES[name]
    if not tiny:
        return d, layers, heads, mlp, vocab
    return d // 16, max(2, layers // 4), max(1, heads // 16), mlp // 16, vocab // 16


def peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak of this GPU from `PEAK_BF16`; None on a CPU or an unlisted card."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def build(row: str, args: argparse.Namespace, device: torch.device) -> tuple[DiffusionModel, Any, Canvas, int]:
    """The row's model (LoRA: the adapters on a bf16 frozen base), its optimizer, one batch and its parameter count."""
    size, kind = ROWS[row]
    d, layers, heads, mlp, vocab = shape(size, args.tiny)
    seq = (args.lora_seq if kind == "lora" else args.seq) // (16 if args.tiny else 1)
    batch = 1 if kind == "lora" else args.batch
    torch.manual_seed(0)
    layout = VocabLayout.build(text_size=vocab - 4)  # + mask, eos, pad, bos
    config = CoreConfig(vocab=layout, d_model=d, n_layers=layers, n_heads=heads, mlp_hidden_size=mlp,
                        max_seq_len=seq)
    with torch.device(device):
        model = DiffusionModel(ModelConfig(config, name=f"scale-{size}"))
    model.train()
    params = sum(p.numel() for p in model.core.parameters())
    if kind == "lora":
        apply_lora(model, LoraSettings(r=8), base=f"scale-{size}")
        store_frozen(model, torch.bfloat16)
        model.core.set_gradient_checkpointing(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")
    ids = torch.randint(0, vocab - 4, (batch, seq), generator=torch.Generator().manual_seed(1))
    return model, optimizer, Canvas(ids=ids.to(device), maskable=torch.ones_like(ids, dtype=torch.bool,
                                                                                device=device)), params


def worker(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One row, in this process: counted FLOPs, step times, peak memory."""
    row = args.row
    model, optimizer, canvas, params = build(row, args, device)
    lora = ROWS[row][1] == "lora"
    chunk = args.chunk if lora else None
    t = torch.full((canvas.ids.shape[0],), 0.5, device=device)  # half the positions masked
    mask_id = model.vocab.mask_id

    masked = {}

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = diffusion_loss(model.core, canvas, LinearSchedule(), mask_id=mask_id, normalize="sft", t=t,
                                 generator=torch.Generator(device).manual_seed(2), chunk_size=chunk)
        out.loss.backward()
        optimizer.step()
        masked.update(n_masked=int(out.n_masked), n_targets=int(out.n_targets))  # the same masks every step
        return float(out.loss.detach())

    losses = [step() for _ in range(args.warmup)]
    flops = flops_of(step)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        start_rss = proc_status_kib("VmHWM")
    times = []
    for _ in range(args.iters):
        sync(device)
        started = time.perf_counter()
        losses.append(step())
        sync(device)
        times.append(time.perf_counter() - started)
    if device.type == "cuda":
        peak_gib, method = torch.cuda.max_memory_allocated(device) / 2**30, "torch.cuda.max_memory_allocated"
    else:
        peak_gib, method = max(start_rss, proc_status_kib("VmHWM")) / 2**20, "VmHWM (whole process)"
    step_s = median(times)
    tokens = canvas.ids.numel()
    peak = peak_flops(device)
    return {"row": row, "params_m": params / 1e6, "tokens_per_step": tokens, "step_ms": step_s * 1e3,
            "tokens_per_s": tokens / step_s, "tflop_per_step": flops / 1e12, "tflop_per_s": flops / step_s / 1e12,
            "mfu": None if peak is None else flops / step_s / peak, "peak_gib": peak_gib, "memory_method": method,
            "losses": losses, **masked, "finite": all(map(lambda x: x == x and abs(x) != float("inf"), losses))}


def bench(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for row in args.rows:
        flags = ["--row", row, "--device", str(device), "--seq", str(args.seq), "--lora-seq", str(args.lora_seq),
                 "--batch", str(args.batch), "--chunk", str(args.chunk), "--warmup", str(args.warmup),
                 "--iters", str(args.iters), *(["--tiny"] if args.tiny else []),
                 *(["--threads", str(args.threads)] if args.threads else [])]
        result = run_json_subprocess([str(Path(__file__).resolve()), "--worker", *flags], timeout=args.timeout)
        rows.append(result)
        print(f"{row}: {result['tokens_per_s']:,.0f} tokens/s, peak {result['peak_gib']:.2f} GiB", file=sys.stderr,
              flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    table = [{"row": r["row"], "parameters (M)": f"{r['params_m']:,.1f}", "tokens / step": r["tokens_per_step"],
              "step (ms)": f"{r['step_ms']:,.1f}", "tokens/s": f"{r['tokens_per_s']:,.0f}",
              "TFLOP/s": f"{r['tflop_per_s']:.2f}", "MFU": "" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %",
              "peak memory (GiB)": f"{r['peak_gib']:.2f}"} for r in rows]
    where = info.get("gpu") or info.get("cpu")
    return (f"# Training at scale{' (tiny shapes)' if args.tiny else ''}\n\n"
            f"Device {info['device']} ({where}), torch {info['torch']}; bf16 autocast, median of {args.iters} steps "
            f"after {args.warmup}; FLOPs counted by FlopCounterMode on one step; peak memory: "
            f"{rows[0]['memory_method'] if rows else ''}. Command: `{args.command}`.\n\n"
            + fmt_table(table, list(table[0]) if table else []) + "\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--batch", type=int, default=8, help="sequences per MFU step (default 8)")
    p.add_argument("--seq", type=int, default=2048, help="tokens per sequence of the MFU rows (default 2048)")
    p.add_argument("--lora-seq", type=int, default=2048, help="tokens of the LoRA row's one sequence (default 2048)")
    p.add_argument("--chunk", type=int, default=1024, help="masked positions per loss chunk of the LoRA row")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="shapes divided by 16 (depth by 4): a CPU smoke run")
    p.add_argument("--timeout", type=float, default=900, help="seconds per row")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--row", choices=list(ROWS), help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(worker(args, torch.device(args.device))))
        return 0
    return run_benchmark("scale", parser(), argv, bench, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
