"""Training-step benchmark: the masked-diffusion loss computed from masked positions only (mmdiff's
`diffusion_loss`) versus the common recipe that computes full-vocabulary logits at every position and then picks
the masked ones (LLaDA's pre-training guideline, Nie et al. 2025; MDLM, Sahoo et al. 2024).

For each model size and each loss path it measures training tokens/s of one full optimizer step (forward, backward,
AdamW) as the median of several timed steps after warm-up, and the peak memory of one step, measured in a fresh
process per configuration (see benchmarks/README.md). Both paths see the same weights, times and masks, and their
losses are checked to agree before anything is timed.

With `--levers` it measures the memory levers of training instead, in one run on one model and one batch of examples
of uneven lengths: the plain step, activation checkpointing per block, the cross-entropy in chunks of masked
positions, sequence packing, gradient accumulation (two micro-batches of half the examples), and all four together.
Their losses are checked to agree first (every target masked, so the masks agree too).

    python benchmarks/train.py      # default: d_model 128 and 256, 4 layers, vocab 2048 (and 32768 for d128), 16 x 256
    python benchmarks/train.py --sizes 64x2 --batch 4 --seq 64 --iters 2   # a smoke run
    python benchmarks/train.py --levers   # the memory levers: d256 x 4 layers, vocab 16384, 16 examples of 64-256

Writes benchmarks/results/train.json and train.md (with `--levers`: train-levers.json and train-levers.md) and prints
the markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# OpenMP threads that spin while waiting collapse when other processes share the cores (measured here: 5x slower
# steps on a busy 2-core machine); waiting passively costs little on an idle one. Set before torch loads OpenMP;
# an OMP_WAIT_POLICY already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CPU_MEMORY_ENV,
    RESULTS_DIR,
    command_line,
    fmt_table,
    machine_info,
    median,
    peak_memory_of,
    run_json_subprocess,
    time_interleaved,
    write_results,
)

from mmdiff import (  # noqa: E402
    Canvas,
    CoreConfig,
    DiffusionModel,
    MaskedDiffusionTransformer,
    ModelConfig,
    VocabLayout,
    diffusion_loss,
)
from mmdiff.diffusion import LinearSchedule, forward_process  # noqa: E402
from mmdiff.lora import LoraSettings, apply_lora, set_trainable, store_frozen  # noqa: E402
from mmdiff.tasks.text import TextTask  # noqa: E402

METHODS = {
    "masked": "masked positions only (mmdiff)",
    "full": "full logits everywhere, then mask",
}


# ------------------------------------------------------------------------------------------------ the two losses
def naive_loss(core: MaskedDiffusionTransformer, canvas: Canvas, t: torch.Tensor, mask_id: int,
               generator: torch.Generator) -> torch.Tensor:
    """The reference recipe: logits for every position and the whole vocabulary, then CE at the masked ones.

    Same schedule, masks, weights and normalisation as `diffusion_loss` (linear schedule, elbo normalisation).
    """
    schedule = LinearSchedule()
    noisy, masked = forward_process(canvas.ids, canvas.maskable, schedule.mask_prob(t), mask_id, generator=generator)
    logits = core(**canvas.core_inputs(noisy), check_inputs=False).logits  # (B, L, V): everything
    ce = F.cross_entropy(logits[masked].float(), canvas.ids[masked], reduction="none")  # (N,)
    row = torch.nonzero(masked, as_tuple=True)[0]
    return (ce * schedule.weight(t)[row]).sum() / canvas.maskable.sum().clamp(min=1)


def masked_loss(core: MaskedDiffusionTransformer, canvas: Canvas, t: torch.Tensor, mask_id: int,
                generator: torch.Generator) -> torch.Tensor:
    return diffusion_loss(core, canvas, LinearSchedule(), mask_id=mask_id, t=t, generator=generator).loss


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"masked": masked_loss, "full": naive_loss}


# ------------------------------------------------------------------------------------------------------ set-up
def parse_size(text: str, default_vocab: int) -> tuple[int, int, int]:
    """"256x4" -> (d_model 256, 4 layers, default_vocab); "128x4x32768" also sets the vocabulary size."""
    try:
        values = [int(v) for v in text.lower().split("x")]
        if len(values) not in (2, 3) or min(values) < 1:
            raise ValueError(text)
    except ValueError as err:
        raise SystemExit(f"size {text!r} must look like 256x4 (d_model x layers) or 128x4x32768 (x vocab)") from err
    return values[0], values[1], values[2] if len(values) == 3 else default_vocab


def build(args: argparse.Namespace, size: tuple[int, int], device: torch.device):
    """Core, optimizer, a fully-maskable canvas (pre-training), fixed times, and the step function per method."""
    d_model, n_layers, vocab = size
    torch.manual_seed(0)
    layout = VocabLayout.build(text_size=vocab - 4)  # + mask, eos, pad, bos = vocab ids
    n_heads = max(1, d_model // 64)
    config = CoreConfig(vocab=layout, d_model=d_model, n_layers=n_layers, n_heads=n_heads, max_seq_len=args.seq)
    core = MaskedDiffusionTransformer(config).to(device).train()
    opt = torch.optim.AdamW(core.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, layout.size - 4, (args.batch, args.seq), generator=g).to(device)
    canvas = Canvas(ids=ids, maskable=torch.ones_like(ids, dtype=torch.bool))
    t = LinearSchedule().sample_t(args.batch, generator=g).to(device)
    amp = device.type == "cuda" and not args.fp32

    def make_step(method: str) -> Callable[[], float]:
        loss_fn = LOSSES[method]

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            gen = torch.Generator(device=device).manual_seed(2)  # the same masks every step and for both paths
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(core, canvas, t, layout.mask_id, gen)
            loss.backward()
            opt.step()
            return loss.detach()

        return step

    return core, layout, canvas, t, make_step, amp


def check_parity(core, layout, canvas, t, device, amp: bool) -> dict[str, float]:
    """Both paths give the same loss on the same weights and masks (the benchmark compares like with like)."""
    values = {}
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for method, fn in LOSSES.items():
            values[method] = float(fn(core, canvas, t, layout.mask_id, torch.Generator(device=device).manual_seed(2)))
    tol = 2e-2 if amp else 1e-4
    if abs(values["masked"] - values["full"]) > tol * abs(values["full"]):
        raise RuntimeError(f"the two loss paths disagree: {values}")
    return values


def n_masked(canvas: Canvas, t: torch.Tensor, mask_id: int, device: torch.device) -> int:
    gen = torch.Generator(device=device).manual_seed(2)
    _, masked = forward_process(canvas.ids, canvas.maskable, LinearSchedule().mask_prob(t), mask_id, generator=gen)
    return int(masked.sum())


# --------------------------------------------------------------------------------------------------- measuring
def memory_worker(args: argparse.Namespace) -> None:
    """In a fresh process: one warm-up step (allocates optimizer state), then the peak memory of one step."""
    device = torch.device(args.device)
    if args.lever:
        step = LeverBench(args, device).make_step(args.lever)
    else:
        _, _, _, _, make_step, _ = build(args, parse_size(args.size, args.vocab), device)
        step = make_step(args.method)
    step()
    print(json.dumps(peak_memory_of(step, device)))


def measure_memory(args: argparse.Namespace, size: str, method: str, device: torch.device,
                   lever: str | None = None) -> dict[str, Any]:
    worker = [
        str(Path(__file__).resolve()), "--memory-worker", "--size", size, "--device", str(device),
        "--vocab", str(args.vocab), "--batch", str(args.batch), "--seq", str(args.seq),
    ]
    worker += ["--lever", lever, "--chunk", str(args.chunk)] if lever else ["--method", method]
    if args.threads:
        worker += ["--threads", str(args.threads)]
    if args.fp32:
        worker.append("--fp32")
    return run_json_subprocess(worker, env=CPU_MEMORY_ENV if device.type == "cpu" else None)


def bench_size(args: argparse.Namespace, size_text: str, device: torch.device) -> list[dict[str, Any]]:
    size = parse_size(size_text, args.vocab)
    core, layout, canvas, t, make_step, amp = build(args, size, device)
    params = sum(p.numel() for p in core.parameters())
    parity = check_parity(core, layout, canvas, t, device, amp)
    masked_count = n_masked(canvas, t, layout.mask_id, device)
    tokens = args.batch * args.seq
    rows = []
    all_times = time_interleaved({m: make_step(m) for m in METHODS}, device, warmup=args.warmup, iters=args.iters)
    for method, times in all_times.items():
        logits_rows = tokens if method == "full" else masked_count
        row = {
            "size": size_text,
            "d_model": size[0],
            "n_layers": size[1],
            "vocab": size[2],
            "params_m": round(params / 1e6, 2),
            "method": method,
            "loss_path": METHODS[method],
            "step_s_median": median(times),
            "step_s_all": times,
            "tokens_per_s": tokens / median(times),
            "logits_rows": logits_rows,
            "logits_mib_fp32": logits_rows * size[2] * 4 / 2**20,
            "loss_at_start": parity[method],
        }
        if not args.no_memory:
            row["memory"] = measure_memory(args, size_text, method, device)
        rows.append(row)
        print(f"  {size_text} {method:6s}: {row['tokens_per_s']:,.0f} tokens/s"
              + (f", peak +{row['memory']['peak_mib']:.0f} MiB" if "memory" in row else ""), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ memory levers
LEVERS = {  # name -> (what it is, the parts it turns on)
    "baseline": ("one micro-batch, right-padded; logits of all masked positions at once", ()),
    "checkpointing": ("activation checkpointing per block (`model.gradient_checkpointing`)", ("checkpointing",)),
    "chunked-loss": ("cross-entropy in chunks of masked positions (`objective.loss_chunk_size`)", ("chunk",)),
    "packing": ("examples packed into rows of `--seq` (`train.pack_length`)", ("pack",)),
    "grad-accum": ("two micro-batches of half the examples (`train.grad_accum: 2`)", ("accum",)),
    "all": ("all four together", ("checkpointing", "chunk", "pack", "accum")),
    "lora": ("LoRA r=8 on q/k/v/o (`model.lora`), the base frozen in float32", ("lora",)),
    "lora-bf16-base": ("LoRA with the frozen base's Linear weights in bf16 (`model.frozen_dtype`), bf16 autocast",
                       ("lora", "bf16-base")),
}


class LeverBench:
    """One core and optimizer, one batch of `--batch` text examples of uneven lengths (--seq/4 to --seq tokens, every
    position a target), fixed times; `make_step(lever)` is one optimizer step with that lever on."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        d_model, n_layers, vocab = parse_size(args.size, args.vocab)
        torch.manual_seed(0)
        self.layout = VocabLayout.build(text_size=vocab - 4)  # + mask, eos, pad, bos = vocab ids
        config = CoreConfig(vocab=self.layout, d_model=d_model, n_layers=n_layers, n_heads=max(1, d_model // 64),
                            max_seq_len=args.seq)
        self.model = DiffusionModel(ModelConfig(config, name="bench")).to(device).train()
        self.core = self.model.core
        self.params = sum(p.numel() for p in self.core.parameters())
        self.opt = torch.optim.AdamW(self.core.parameters(), lr=1e-4)
        self.lora: dict[bool, tuple[DiffusionModel, torch.optim.Optimizer]] = {}  # bf16 base? -> LoRA copy
        g = torch.Generator().manual_seed(1)
        lengths = torch.randint(max(1, args.seq // 4), args.seq + 1, (args.batch,), generator=g).tolist()
        self.examples = [{"ids": torch.randint(0, vocab - 4, (n,), generator=g),
                          "maskable": torch.ones(n, dtype=torch.bool)} for n in lengths]
        self.tokens = sum(lengths)
        self.t = LinearSchedule().sample_t(args.batch, generator=g)
        self.args, self.device = args, device
        self.amp = device.type == "cuda" and not args.fp32

    def micro_batches(self, parts: tuple[str, ...],
                      t: torch.Tensor | None = None) -> list[tuple[Canvas, torch.Tensor]]:
        """(canvas, times) per micro-batch: the examples padded or packed, in one or two halves."""
        t = self.t if t is None else t
        half = len(self.examples) // 2
        groups = [(self.examples[:half], t[:half]), (self.examples[half:], t[half:])] if "accum" in parts else \
            [(self.examples, t)]
        out = []
        for examples, times in groups:
            canvas = (TextTask.pack(examples, self.layout, self.args.seq) if "pack" in parts
                      else TextTask.collate(examples, self.layout))
            out.append((canvas.to(self.device), times.to(self.device)))
        return out

    def trained(self, parts: tuple[str, ...]) -> tuple[DiffusionModel, torch.optim.Optimizer]:
        """The model and optimizer a lever trains: the full model, or a LoRA copy of it (made once)."""
        if "lora" not in parts:
            return self.model, self.opt
        bf16 = "bf16-base" in parts
        if bf16 not in self.lora:
            model = copy.deepcopy(self.model)
            set_trainable(apply_lora(model, LoraSettings(), base="bench"))
            if bf16:
                store_frozen(model, torch.bfloat16)
            trainable = [p for p in model.parameters() if p.requires_grad]
            self.lora[bf16] = model, torch.optim.AdamW(trainable, lr=1e-4)
        return self.lora[bf16]

    def state_mib(self, parts: tuple[str, ...]) -> float:
        """Weights, gradients and optimizer state a lever holds between steps (after one), in MiB."""
        model, opt = self.trained(parts)
        tensors = list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
        tensors += [t for state in opt.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20

    def loss(self, parts: tuple[str, ...], batches: list[tuple[Canvas, torch.Tensor]], backward: bool) -> float:
        """The summed loss of the micro-batches, each divided by their number (as the trainer accumulates)."""
        core = self.trained(parts)[0].core
        core.set_gradient_checkpointing("checkpointing" in parts)
        gen = torch.Generator(device=self.device).manual_seed(2)  # the same masks every step
        amp = self.amp or "bf16-base" in parts
        total = 0.0
        for canvas, times in batches:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                out = diffusion_loss(core, canvas, LinearSchedule(), mask_id=self.layout.mask_id,
                                     normalize="sft", t=times, generator=gen,
                                     chunk_size=self.args.chunk if "chunk" in parts else None)
            loss = out.loss / len(batches)
            if backward:
                loss.backward()
            total += float(loss.detach())
        return total

    def make_step(self, lever: str) -> Callable[[], float]:
        parts = LEVERS[lever][1]
        batches = self.micro_batches(parts)

        opt = self.trained(parts)[1]

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            loss = self.loss(parts, batches, backward=True)
            opt.step()
            return loss

        return step

    def parity(self) -> dict[str, float]:
        """Every lever's loss with every target masked (t = 1): the same number (the levers change no loss)."""
        ones = torch.ones(len(self.examples))
        with torch.no_grad():
            values = {lever: self.loss(parts, self.micro_batches(parts, ones), backward=False)
                      for lever, (_, parts) in LEVERS.items()}
        def tol(lever: str) -> float:  # bf16 arithmetic: the loss moves in its third digit
            return 2e-2 if self.amp or "bf16-base" in LEVERS[lever][1] else 1e-4

        if any(abs(v - values["baseline"]) > tol(k) * abs(values["baseline"]) for k, v in values.items()):
            raise RuntimeError(f"the levers change the loss: {values}")
        return values


def bench_levers(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    bench = LeverBench(args, device)
    parity = bench.parity()
    d_model, n_layers, vocab = parse_size(args.size, args.vocab)
    all_times = time_interleaved({lever: bench.make_step(lever) for lever in LEVERS}, device, warmup=args.warmup,
                                 iters=args.iters)
    rows = []
    for lever, times in all_times.items():
        what, parts = LEVERS[lever]
        batches = bench.micro_batches(parts)
        row = {
            "size": args.size, "d_model": d_model, "n_layers": n_layers, "vocab": vocab,
            "params_m": round(bench.params / 1e6, 2), "lever": lever, "what": what,
            "canvases": [list(c.ids.shape) for c, _ in batches],
            "positions": sum(c.ids.numel() for c, _ in batches),
            "tokens": bench.tokens,
            "step_s_median": median(times), "step_s_all": times,
            "tokens_per_s": bench.tokens / median(times),
            "loss_all_masked": parity[lever],
            "state_mib": bench.state_mib(parts),
        }
        if not args.no_memory:
            row["memory"] = measure_memory(args, args.size, "masked", device, lever=lever)
        rows.append(row)
        print(f"  {lever:13s}: {row['tokens_per_s']:,.0f} tokens/s"
              + (f", peak +{row['memory']['peak_mib']:.0f} MiB" if "memory" in row else ""), flush=True)
    return rows


def lever_markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    base = rows[0]
    table = []
    for r in rows:
        entry = {
            "lever": r["lever"],
            "what": r["what"],
            "canvases (rows x length)": " + ".join(f"{b} x {n}" for b, n in r["canvases"]),
            "positions run": r["positions"],
            "tokens/s": f"{r['tokens_per_s']:,.0f}",
            "step (ms, median)": f"{1000 * r['step_s_median']:.0f}",
            "fastest step (ms)": f"{1000 * min(r['step_s_all']):.0f}",
            "speed vs baseline": f"{base['step_s_median'] / r['step_s_median']:.2f}x",
            "weights + grads + optimizer (MiB)": f"{r['state_mib']:.0f}",
        }
        if "memory" in r:
            entry["peak memory of a step (MiB)"] = f"{r['memory']['peak_mib']:.0f}"
            entry["memory vs baseline"] = f"{r['memory']['peak_mib'] / max(base['memory']['peak_mib'], 1e-9):.2f}x"
        table.append(entry)
    head = (
        f"# Training step: memory levers\n\n"
        f"`{args.command}`\n\n"
        f"d{base['d_model']} x {base['n_layers']} layers, vocabulary {base['vocab']} ({base['params_m']} M "
        f"parameters); {args.batch} examples of {args.seq // 4}-{args.seq} tokens ({base['tokens']} tokens, every "
        f"position a target), linear schedule, SFT normalisation (per example), AdamW; chunks of {args.chunk} "
        f"masked positions; {args.warmup} warm-up + {args.iters} timed steps (median), the levers interleaved. "
        f"Tokens/s counts real tokens (not padding). Device: {info['device']}"
        f"{' (' + info['gpu'] + ', bf16 autocast)' if 'gpu' in info and not args.fp32 else ''}; "
        f"CPU: {info['cpu']}, torch {info['torch']}, {info['torch_threads']} threads "
        f"(OMP_WAIT_POLICY={info['omp_wait_policy']}). "
        f"Peak memory: {base['memory']['method'] if 'memory' in base else 'not measured'}, "
        f"in a fresh process per row; weights + grads + optimizer: the tensors a lever holds between steps. Every "
        f"lever's loss with every target masked equals the baseline's ({base['loss_all_masked']:.4f}; within 2 % "
        f"in bf16 arithmetic).\n\n"
    )
    return head + fmt_table(table, list(table[0])) + "\n"


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace, masked_frac: float) -> str:
    by_size: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_size.setdefault(r["size"], {})[r["method"]] = r
    table = []
    for pair in by_size.values():
        for r in pair.values():
            base = pair["full"]
            entry = {
                "model": f"d{r['d_model']} x {r['n_layers']} layers ({r['params_m']} M)",
                "vocab": r["vocab"],
                "loss path": r["loss_path"],
                "tokens/s": f"{r['tokens_per_s']:,.0f}",
                "step (ms, median)": f"{1000 * r['step_s_median']:.0f}",
                "speed-up": f"{base['step_s_median'] / r['step_s_median']:.2f}x",
                "logits (MiB fp32)": f"{r['logits_mib_fp32']:.0f}",
            }
            if "memory" in r:
                entry["peak memory of a step (MiB)"] = f"{r['memory']['peak_mib']:.0f}"
                entry["memory vs full"] = f"{r['memory']['peak_mib'] / max(base['memory']['peak_mib'], 1e-9):.2f}x"
            table.append(entry)
    columns = list(table[0])
    head = (
        f"# Training step: masked-positions-only loss vs full logits\n\n"
        f"Batch {args.batch} x {args.seq} tokens, linear schedule "
        f"({100 * masked_frac:.0f} % of positions masked in the measured batch), AdamW; "
        f"{args.warmup} warm-up + {args.iters} timed steps (median). Device: {info['device']}"
        f"{' (' + info['gpu'] + ', bf16 autocast)' if 'gpu' in info and not args.fp32 else ''}; "
        f"CPU: {info['cpu']}, torch {info['torch']}, {info['torch_threads']} threads "
        f"(OMP_WAIT_POLICY={info['omp_wait_policy']}). "
        f"Peak memory: {rows[0]['memory']['method'] if 'memory' in rows[0] else 'not measured'}, "
        f"in a fresh process per row.\n\n"
    )
    return head + fmt_table(table, columns) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="128x4,256x4,128x4x32768",
                        help="comma-separated d_model x layers [x vocab] (%(default)s)")
    parser.add_argument("--vocab", type=int, default=2048, help="vocabulary where a size names none (%(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--iters", type=int, default=5, help="timed steps; the median is reported (default 5)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--levers", action="store_true",
                        help="measure the memory levers instead (one model: --size; writes train-levers.*)")
    parser.add_argument("--size", default="256x4x16384",
                        help="with --levers: d_model x layers [x vocab] (%(default)s)")
    parser.add_argument("--chunk", type=int, default=256,
                        help="with --levers: masked positions per loss chunk (%(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default benchmarks/results)")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--lever", choices=list(LEVERS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.memory_worker:
        memory_worker(args)
        return 0
    if args.levers:
        return main_levers(args, argv)
    for size in args.sizes.split(","):
        parse_size(size, args.vocab)
    device = torch.device(args.device)
    info = machine_info(device)
    print(f"benchmark: training step on {info['device']} ({info['cpu']}), torch {info['torch']}, "
          f"{info['torch_threads']} threads", flush=True)
    start = time.time()
    rows = []
    for size in args.sizes.split(","):
        rows += bench_size(args, size, device)
    masked_frac = rows[0]["logits_rows"] / (args.batch * args.seq)
    md = markdown(rows, info, args, masked_frac)
    payload = {
        "benchmark": "train_step",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                   if k not in ("memory_worker", "size", "method", "out", "levers", "chunk", "lever")},
        "machine": info,
        "masked_fraction": masked_frac,
        "wall_s": time.time() - start,
        "rows": rows,
    }
    json_path, md_path = write_results("train", payload, md, args.out)
    print()
    print(md)
    print(f"wrote {json_path} and {md_path} ({time.time() - start:.0f} s)")
    return 0


def main_levers(args: argparse.Namespace, argv: list[str] | None) -> int:
    """`--levers`: every lever on one model, written to train-levers.json and train-levers.md."""
    parse_size(args.size, args.vocab)
    if args.chunk < 1 or args.batch < 2:
        raise SystemExit("--levers needs --chunk >= 1 and --batch >= 2 (gradient accumulation halves the batch)")
    args.command = command_line("train.py", sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    info = machine_info(device)
    print(f"benchmark: memory levers of a training step on {info['device']} ({info['cpu']}), torch {info['torch']}, "
          f"{info['torch_threads']} threads", flush=True)
    start = time.time()
    rows = bench_levers(args, device)
    md = lever_markdown(rows, info, args)
    payload = {
        "benchmark": "train_levers",
        "command": args.command,
        "config": {k: v for k, v in vars(args).items() if k in (
            "size", "vocab", "batch", "seq", "chunk", "warmup", "iters", "device", "threads", "fp32", "no_memory")},
        "machine": info,
        "wall_s": time.time() - start,
        "rows": rows,
    }
    json_path, md_path = write_results("train-levers", payload, md, args.out)
    print()
    print(md)
    print(f"wrote {json_path} and {md_path} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
