"""Decoding at scale on one GPU: generated tokens per second of a LLaDA-8B-shaped block-diffusion core (d 4096, 32
layers, 32 heads, SwiGLU 12288, vocab 126464) against Hugging Face transformers' `generate` of a Llama of the same
shape with its static key/value cache, both with random weights (the speed depends on the shapes, not the values).

Rows, each at the batch sizes `--batch-sizes` (1 8 32), a prompt of `--prompt` (128) random token ids and `--gen`
(256) generated tokens, greedy; each row runs in a fresh process (its batch sizes one after the other, the peak
memory reset between them), so one model's memory never weighs on the next:
- `mmdiff block diffusion, whole block per pass`: the block-causal `MaskedDiffusionTransformer` (blocks of `--block`,
  32) with the `block-diffusion` sampler and its exact block cache at threshold 0: every masked position of a block
  is committed in the block's first pass, so gen / block passes (the prompt runs in the first block's pass, each
  finished block's clean pass in the next block's): the upper bound of the sampler's speed.
- `mmdiff block diffusion, one token per pass`: threshold 1, one token per block and pass, so gen passes: the lower
  bound. A trained model at a useful threshold (e.g. 0.9) commits between one and all of a block's positions per
  pass, so its speed lies between these two rows.
- `transformers generate, static cache`: `LlamaForCausalLM` (num_key_value_heads = heads, SDPA attention),
  `generate(max_new_tokens=gen, min_new_tokens=gen, do_sample=False, cache_implementation="static")`: a prefill pass
  and gen - 1 one-token passes (gen passes, counted by a forward hook), eager (`disable_compile=True`, as transformers
  would otherwise compile the forward of a static-cache `generate` on a GPU).
- with `--compile`, `transformers generate, static cache, compiled`: the same with transformers' own torch.compile of
  the forward (its default on a GPU; CUDA only; its passes are not hooked, taken as gen). The warm-up run of each
  batch size includes its compilation.

Weights are bf16 on CUDA, float32 on the CPU. tokens/s = batch x gen over the median of `--repeats` timed runs after
one warm-up; ms per pass = that time over the forward passes; vs AR = tokens/s over the eager transformers row's at
the same batch size. Each worker checks the passes its sampler made against the count above (and the shape of the
output) and fails if they differ.

    python benchmarks/decode_scale.py --device cuda            # the three rows (an 80 GB GPU)
    python benchmarks/decode_scale.py --device cpu --tiny      # shapes / 16 (depth / 4), prompt 16, gen 32, block 8

Writes benchmarks/results/decode_scale.json and decode_scale.md (`--out` elsewhere) and prints the markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_run_arguments,
    fmt_table,
    median,
    proc_status_kib,
    reset_peak_rss,
    run_benchmark,
    run_json_subprocess,
    sync,
)
from scale import shape  # noqa: E402

from mmdiff import CoreConfig, MaskedDiffusionTransformer, VocabLayout  # noqa: E402
from mmdiff.sampling.block import BlockDiffusionSampler  # noqa: E402

SHAPE = "llada-8b"
ROWS = {  # key: (label, threshold of the mmdiff rows / compiled for the transformers rows)
    "block": ("mmdiff block diffusion, whole block per pass", 0.0),
    "token": ("mmdiff block diffusion, one token per pass", 1.0),
    "ar": ("transformers generate, static cache", False),
    "ar-compiled": ("transformers generate, static cache, compiled", True),
}
TINY = {"prompt": 16, "gen": 32, "block": 8, "batch_sizes": [1, 2], "repeats": 1}
FULL = {"prompt": 128, "gen": 256, "block": 32, "batch_sizes": [1, 8, 32], "repeats": 2}
Dims = tuple[int, int, int, int, int]  # d_model, n_layers, n_heads, mlp_hidden_size, vocab
Decode = Callable[[torch.Tensor], tuple[torch.Tensor, int]]  # prompt (B, P) -> (B, P + gen) ids, forward passes


def resolve(args: argparse.Namespace) -> None:
    """Fills the options left unset with the `--tiny` or full defaults."""
    for name, value in (TINY if args.tiny else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.gen % args.block:
        raise SystemExit(f"--gen {args.gen} must be a multiple of --block {args.block}")


def expected_passes(row: str, gen: int, block: int) -> int:
    """The forward passes of one decode: a block per pass (the prompt in the first one), one token per block and pass,
    or autoregressive (the prefill makes the first token).

    >>> [expected_passes(row, 256, 32) for row in ("block", "token", "ar")]
    [8, 256, 256]
    """
    return gen // block if row == "block" else gen


@contextlib.contextmanager
def building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Parameters made directly on `device` in `dtype` (no float32 copy of an 8B model first)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(default)


def mmdiff_decoder(args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                   dims: Dims) -> tuple[Decode, int]:
    d, layers, heads, mlp, vocab = dims
    layout = VocabLayout.build(text_size=vocab - 4)  # + mask, eos, pad, bos
    config = CoreConfig(vocab=layout, d_model=d, n_layers=layers, n_heads=heads, mlp_hidden_size=mlp,
                        max_seq_len=args.prompt + args.gen, attention="block_causal", block_size=args.block)
    with building(device, dtype):
        core = MaskedDiffusionTransformer(config).eval()
    sampler = BlockDiffusionSampler(gen_length=args.gen, threshold=ROWS[args.row][1])

    def decode(prompt: torch.Tensor) -> tuple[torch.Tensor, int]:
        out = sampler(core, prompt, mask_id=layout.mask_id, return_history=True)
        return out.sequences, out.nfe

    return decode, sum(p.numel() for p in core.parameters())


def transformers_decoder(args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                         dims: Dims) -> tuple[Decode, int]:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    d, layers, heads, mlp, vocab = dims
    config = LlamaConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         intermediate_size=mlp, vocab_size=vocab, max_position_embeddings=args.prompt + args.gen,
                         attn_implementation="sdpa")
    with building(device, dtype):
        model = LlamaForCausalLM(config).eval()
    compiled = ROWS[args.row][1]
    extra = {"disable_compile": not compiled} if hasattr(GenerationConfig(), "disable_compile") else {}
    calls = [0]
    if not compiled:  # a hook is not seen inside a compiled forward
        model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    def decode(prompt: torch.Tensor) -> tuple[torch.Tensor, int]:
        calls[0] = 0
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.gen,
                             min_new_tokens=args.gen, do_sample=False, cache_implementation=args.cache, pad_token_id=0,
                             **extra)  # generate runs under torch.no_grad
        return out, calls[0] if not compiled else args.gen

    return decode, sum(p.numel() for p in model.parameters())


def measure(decode: Decode, prompt: torch.Tensor, expected: int, args: argparse.Namespace,
            device: torch.device) -> dict[str, Any]:
    """Times `decode(prompt)` (one warm-up, then the median of `args.repeats` runs), checking its output's shape and
    forward passes on every run; the peak memory of the timed runs."""
    batch = prompt.shape[0]

    def run() -> int:
        sequences, passes = decode(prompt)
        if tuple(sequences.shape) != (batch, args.prompt + args.gen) or passes != expected:
            raise RuntimeError(f"{args.row} at batch {batch}: output {tuple(sequences.shape)} in {passes} passes, "
                               f"expected ({batch}, {args.prompt + args.gen}) in {expected}")
        return sequences.shape[1]

    columns = run()  # warm-up
    reset = True
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset = reset_peak_rss()
    times = []
    for _ in range(args.repeats):
        sync(device)
        started = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - started)
    if device.type == "cuda":
        peak_gib, method = torch.cuda.max_memory_allocated(device) / 2**30, "torch.cuda.max_memory_allocated"
    else:  # the whole process's peak resident set (weights and libraries included)
        peak_gib = proc_status_kib("VmHWM") / 2**20
        method = "VmHWM (whole process" + (", reset after the warm-up)" if reset else ")")
    seconds = median(times)
    return {"output_columns": columns, "seconds": seconds, "tokens_per_s": batch * args.gen / seconds,
            "ms_per_pass": seconds / expected * 1e3, "peak_gib": peak_gib, "memory_method": method, "times": times}


def worker(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """One row at every batch size, in this process: tokens/s, forward passes and peak memory."""
    row = args.row
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dims = shape(SHAPE, args.tiny)
    torch.manual_seed(0)
    make = mmdiff_decoder if row in ("block", "token") else transformers_decoder
    args.cache = "static"
    if row.startswith("ar") and device.type != "cuda" and not static_cache_ok(device):
        if not args.tiny:
            raise RuntimeError("transformers' static cache does not run on this device; use --tiny for a smoke run")
        args.cache = "dynamic"  # the --tiny smoke run only
    decode, params = make(args, device, dtype, dims)
    passes = expected_passes(row, args.gen, args.block)
    results = []
    for batch in args.batch_sizes:
        prompt = torch.randint(0, dims[4] - 4, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
        results.append({"row": ROWS[row][0], "key": row, "batch": batch, "prompt": args.prompt, "gen": args.gen,
                        "block": args.block, "params_m": params / 1e6, "dtype": str(dtype).removeprefix("torch."),
                        "passes": passes, "cache": args.cache if row.startswith("ar") else "block cache",
                        **measure(decode, prompt.to(device), passes, args, device)})
    return results


def static_cache_ok(device: torch.device) -> bool:
    """Whether transformers' static cache runs a tiny `generate` on `device` (the CPU fallback of --tiny)."""
    try:
        args = argparse.Namespace(prompt=2, gen=2, cache="static", row="ar")
        decode, _ = transformers_decoder(args, device, torch.float32, (8, 1, 1, 16, 16))
        return tuple(decode(torch.ones(1, 2, dtype=torch.long, device=device))[0].shape) == (1, 4)
    except Exception:  # any failure means: no static cache here
        return False


def bench(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    if args.compile and device.type != "cuda":
        raise SystemExit("--compile needs a CUDA device: transformers compiles generate's forward only on a GPU")
    rows: list[dict[str, Any]] = []
    for row in [*args.rows, *(["ar-compiled"] if args.compile else [])]:
        flags = ["--row", row, "--device", str(device), "--prompt", str(args.prompt), "--gen", str(args.gen),
                 "--block", str(args.block), "--repeats", str(args.repeats),
                 "--batch-sizes", *map(str, args.batch_sizes), *(["--tiny"] if args.tiny else []),
                 *(["--threads", str(args.threads)] if args.threads else [])]
        results = run_json_subprocess([str(Path(__file__).resolve()), "--worker", *flags], timeout=args.timeout)
        for r in results:
            print(f"{r['row']}, batch {r['batch']}: {r['tokens_per_s']:,.1f} tokens/s, {r['passes']} passes, "
                  f"peak {r['peak_gib']:.2f} GiB", file=sys.stderr, flush=True)
        rows += results
    ar = {r["batch"]: r["tokens_per_s"] for r in rows if r["key"] == "ar"}
    for r in rows:
        r["vs_ar"] = r["tokens_per_s"] / ar[r["batch"]] if r["batch"] in ar else None
    return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    table = [{"row": r["row"], "batch": r["batch"], "generated tokens/s": f"{r['tokens_per_s']:,.1f}",
              "forward passes": r["passes"], "ms per pass": f"{r['ms_per_pass']:,.2f}",
              "peak memory (GiB)": f"{r['peak_gib']:.2f}", "vs AR": "" if r["vs_ar"] is None else f"{r['vs_ar']:.2f}x"}
             for r in rows]
    d, layers, heads, mlp, vocab = shape(SHAPE, args.tiny)
    where = info.get("gpu") or info.get("cpu")
    caches = sorted({r["cache"] for r in rows if r["key"].startswith("ar")})
    return (f"# Decoding at scale{' (tiny shapes)' if args.tiny else ''}\n\n"
            f"Device {info['device']} ({where}), torch {info['torch']}, transformers {version('transformers')}; "
            f"{rows[0]['dtype'] if rows else ''} weights (random); shape d {d}, {layers} layers, {heads} heads, "
            f"SwiGLU {mlp}, vocab {vocab}; prompt {args.prompt} random ids, {args.gen} generated tokens, blocks of "
            f"{args.block}; greedy; median of {args.repeats} runs after one warm-up; transformers cache: "
            f"{', '.join(caches)}; peak memory: {rows[0]['memory_method'] if rows else ''}. "
            f"Command: `{args.command}`.\n\n" + fmt_table(table, list(table[0]) if table else []) + "\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p)
    p.add_argument("--rows", nargs="+", default=["block", "token", "ar"], choices=["block", "token", "ar"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default 1 8 32 (--tiny: 1 2)")
    p.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 128, --tiny 16)")
    p.add_argument("--gen", type=int, default=None, help="generated tokens (default 256, --tiny 32)")
    p.add_argument("--block", type=int, default=None, help="block size of the mmdiff core (default 32, --tiny 8)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs after the warm-up (default 2, --tiny 1)")
    p.add_argument("--compile", action="store_true", help="add transformers generate with its compiled forward")
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
    return run_benchmark("decode_scale", parser(), argv, bench, markdown, check=resolve)


if __name__ == "__main__":
    raise SystemExit(main())
