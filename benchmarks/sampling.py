"""Sampler benchmark on the checkable zoo entry `running-sums-small`: accuracy, forward passes (NFE), generated
tokens/s and peak memory of each decoding method, measured in one run on one machine.

Task: fill in the n running sums of held-out problems (canvas `d1 s1 ... dn sn`, digits given) for canvases of 64
(n = 32), 256 (n = 128) and 1024 (n = 512) tokens. Every sum depends on the previous one; the rows show what each
method costs and buys. `running-sums-small` takes canvases up to 256; the AR baseline and the block-diffusion entry,
trained further on n = 128..512 (the same stages for both), up to 1024.

Methods (all greedy, semi-autoregressive blocks of `--block` canvas positions, one sum committed per step unless
said otherwise):
- reference-equivalent: LLaDA's reference loop (`mmdiff.sampling.reference_generate`: full forward and logits at
  every position each step, a Python loop over rows, no cache);
- llada: mmdiff's `llada` sampler with the same settings (logits for the block only, vectorised selection); its
  outputs are compared token for token with the reference's ("= ref" column);
- prefix cache, dual cache: Fast-dLLM's key/value caches, refreshed per block;
- threshold t (0.9, 0.99 and 0.995): commit every sum more confident than t (at least one per step);
- dual cache + threshold t;
- delayed cache + threshold t: the dual cache without its per-block full refresh, each step re-running the block
  and the tokens committed at the step before (dKV-Cache's delayed caching); also with small blocks, which the
  dual cache makes expensive (one full forward per block) and the delayed cache does not;
- llada, k sums/step (k = 2, 4, 8): fixed parallel decoding; the model can add a few digits at once
  (s_{k+1} = s_{k-1} + d_k + d_{k+1}), but not many, so large k must guess and loses accuracy;
- AR baseline: the same core trained with causal attention and next-token loss on the same task and budget
  (benchmarks/ar_baseline.py), decoded greedily with a KV cache (only when its folder exists: `--ar`);
- block diffusion, threshold t (and + pipeline): the zoo entry `running-sums-block`, the same core built
  block-causal and trained with block diffusion on the same data (configs/reasoning/running-sums-block*.yaml),
  decoded by the `block-diffusion` sampler with its exact cache of finished blocks, threshold commits inside a block,
  and D2F pipelining (the next block starts once a quarter of the current one is decoded and while the row's window
  holds at most 2 blocks; until the current one is finished it commits only above the early threshold,
  1 - (1 - t) / 2)
  (`--block-model`).

A model runs only the canvas lengths its core takes (max_seq_len); the others are skipped with a message.
Columns: speed-up = tokens/s over the reference-equivalent loop's, vs AR = over the AR baseline's, both of the same
length and batch size; MFLOP / token = the floating-point operations of the matrix products and attention (counted by
torch's FlopCounterMode on the first batch, benchmarks/common.flops_of) per generated sum.

Run it on an otherwise idle machine, with OpenMP's default wait policy (what users get; `make bench` unsets the
Makefile's OMP_WAIT_POLICY=PASSIVE for this script): passive waiting puts the threads to sleep between operations,
which costs every forward pass a wake-up and the small windows of the cached methods the most. The policy in effect
is written into the table's header.

Generated tokens/s counts the sums filled in (the given digits are not generated), over the wall time of all batches
after one warm-up batch. The methods of one table block (canvas length and batch size) are timed interleaved: each
batch of problems is decoded by every method in turn, in an order that rotates from batch to batch, so a machine whose
speed drifts during the run (other tenants, memory reclaim) weighs on all of them alike. Peak memory: the extra memory
at the peak of one batch over what was live before it (CUDA: max_memory_allocated; CPU: resident-set peak, see
benchmarks/common.py).

    python benchmarks/sampling.py                          # 200 problems, lengths 64, 256 and 1024, batch 1 and 16
    python benchmarks/sampling.py --problems 16 --lengths 64 --batch-sizes 4     # a smoke run
    python benchmarks/sampling.py --lengths 256 --only "block diffusion" AR "delayed cache + threshold 0.995"
                                                   # block diffusion against AR (and the reference loop) only

Writes benchmarks/results/sampling.json and sampling.md and prints the markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_run_arguments, flops_of, fmt_table, peak_memory_of, run_benchmark, sync  # noqa: E402

from mmdiff import create_model  # noqa: E402
from mmdiff.data.running_sums import RunningSumsSource, grade_answer  # noqa: E402
from mmdiff.tasks.text import left_pad  # noqa: E402

REFERENCE = "reference-equivalent"
AR = "AR baseline (KV cache)"


def methods(block: int, parallel: list[int], thresholds: list[float], small_block: int) -> dict[str, dict[str, Any]]:
    """Method name -> sampler keywords (steps are set per problem size: one sum per step unless noted)."""
    base = {"block_length": block, "sampler": "llada"}
    rows = {
        REFERENCE: {**base, "sampler": "llada-reference"},
        "llada": base,
        "prefix cache": {**base, "cache": "prefix"},
        "dual cache": {**base, "cache": "dual"},
    }
    for t in thresholds:
        rows[f"threshold {t}"] = {**base, "threshold": t}
        rows[f"dual cache + threshold {t}"] = {**base, "cache": "dual", "threshold": t}
        rows[f"delayed cache + threshold {t}"] = {**base, "cache": "delayed", "threshold": t}
    t = max(thresholds)
    rows[f"delayed cache + threshold {t}, blocks of {small_block}"] = {
        **base, "cache": "delayed", "threshold": t, "block_length": small_block}
    rows.update({f"llada, {k} sums/step": {**base, "sums_per_step": k} for k in parallel})
    return rows


def early_threshold(threshold: float) -> float:
    """The threshold of a block started early (pipelining): half the error budget of `threshold` (0.999 -> 0.9995),
    since its predecessor is still partly masked when it commits.

    >>> early_threshold(0.999), early_threshold(0.995)
    (0.9995, 0.9975)
    """
    return round(1 - (1 - threshold) / 2, 12)


def block_methods(thresholds: list[float]) -> dict[str, dict[str, Any]]:
    """Rows of the block-diffusion model: method name -> sampler keywords (its blocks are the core's)."""
    rows = {}
    for t in thresholds:
        rows[f"block diffusion, threshold {t}"] = {"sampler": "block-diffusion", "threshold": t}
        early = early_threshold(t)
        rows[f"block diffusion + pipeline, threshold {t} (early {early:g})"] = {
            "sampler": "block-diffusion", "threshold": t, "pipeline": 0.25, "pipeline_threshold": early,
            "window_blocks": 2}
    return rows


def canvases(source: RunningSumsSource, problems: list[list[int]], vocab: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded canvases with the sums masked, and their attention mask."""
    rows = []
    for digits in problems:
        ex = source.example(digits, vocab)
        rows.append(ex["ids"].masked_fill(ex["maskable"], vocab.mask_id))
    return left_pad(rows, vocab.pad_id)


def make_decoder(model: Any, source: RunningSumsSource, options: dict[str, Any], device: torch.device,
                 ar_fill: Any = None) -> Any:
    """A function: a chunk of problems -> (decoded canvases, attention mask, forward passes) with one method."""
    options = dict(options)
    per_step = options.pop("sums_per_step", 1)

    def decode(chunk: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        ids, attention = canvases(source, chunk, model.vocab)
        ids, attention = ids.to(device), attention.to(device)
        if ar_fill is not None:
            out = ar_fill(model.core, ids, attention, mask_id=model.vocab.mask_id)
            return out.sequences, attention, out.nfe
        steps = {} if options.get("sampler") == "block-diffusion" else {"steps": len(chunk[0]) // per_step}
        out = model.generate(ids, attention, return_history=True, gen_length=0, infill=True, **steps, **options)
        return out.sequences, attention, out.nfe

    return decode


def run_methods(decoders: dict[str, Any], source: RunningSumsSource, problems: list[list[int]], batch: int,
                device: torch.device) -> dict[str, dict[str, Any]]:
    """Decodes all problems in batches with every method; returns per method its accuracy, NFE per batch,
    generated tokens/s, peak memory and outputs.

    The timing is interleaved: every batch is decoded by each method in turn (the order rotating from batch to
    batch), so that a machine that slows down or speeds up during the run (other tenants, memory reclaim) weighs
    on every method alike and the speed-ups, ratios measured in the same stretch of time, stay comparable."""
    chunks = [problems[i : i + batch] for i in range(0, len(problems), batch)]
    names = list(decoders)
    seconds = dict.fromkeys(names, 0.0)
    results: dict[str, list[Any]] = {name: [] for name in names}
    memory, flops = {}, {}
    with torch.inference_mode():
        for name, decode in decoders.items():
            decode(chunks[0])  # warm-up
            memory[name] = peak_memory_of(lambda decode=decode: decode(chunks[0]), device)
            flops[name] = flops_of(lambda decode=decode: decode(chunks[0]))
        for i, chunk in enumerate(chunks):
            for name in names[i % len(names):] + names[: i % len(names)]:
                sync(device)
                start = time.perf_counter()
                results[name].append(decoders[name](chunk))
                sync(device)
                seconds[name] += time.perf_counter() - start
    tokens = source.tokenizer().convert_ids_to_tokens(list(range(10)))
    n = len(problems[0])
    out = {}
    for name in names:
        outputs, exact, nfe = [], 0, 0
        for chunk, (seqs, attention, calls) in zip(chunks, results[name], strict=True):
            nfe += calls
            for digits, row, keep in zip(chunk, seqs.cpu(), attention.cpu(), strict=True):
                decoded = row[keep].tolist()
                outputs.append(decoded)
                exact += grade_answer(digits, [tokens[t] if 0 <= t < 10 else f"<{t}>" for t in decoded]).exact
        out[name] = {
            "exact_match": exact / len(problems),
            "nfe_per_batch": nfe / len(chunks),
            "tokens_per_s": n * len(problems) / seconds[name],
            "seconds": seconds[name],
            "peak_mib": memory[name]["peak_mib"],
            "mflop_per_token": flops[name] / (n * len(chunks[0])) / 1e6,
            "memory_method": memory[name]["method"],
            "outputs": outputs,
        }
    return out


def load_ar(path: Path | None, device: torch.device, dtype: str | None = None) -> tuple[Any, Any]:
    """The AR baseline model and its decoding function, or (None, None) when the folder is missing."""
    if path is None or not path.is_dir():
        return None, None
    from functools import partial

    from ar_baseline import ar_fill, model_bos_id

    model = create_model(path, device=str(device), dtype=dtype)
    return model, partial(ar_fill, bos_id=model_bos_id(model))


def fits(model: Any, length: int) -> bool:
    """Whether a model takes canvases of `length` (its core's max_seq_len; the AR baseline's BOS takes the place of
    the last token, which it never reads)."""
    return model is not None and length <= model.core.config.max_seq_len


def bench(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    model = create_model(args.model, device=str(device), dtype=args.dtype)
    ar_model, ar_fill = load_ar(args.ar, device, args.dtype)
    block_model = (None if args.block_model == "none"
                   else create_model(args.block_model, device=str(device), dtype=args.dtype))
    rows = []
    for length in args.lengths:
        n = length // 2
        source = RunningSumsSource(n_min=n, n_max=n, val_size=args.problems)  # held out: the val stream
        problems = source.val_problems
        for batch in args.batch_sizes:
            decoders = {}
            if fits(model, length):
                decoders.update({name: make_decoder(model, source, options, device)
                                 for name, options in methods(args.block, args.parallel, args.thresholds,
                                                              args.small_block).items()})
            if fits(ar_model, length):
                decoders[AR] = make_decoder(ar_model, source, {}, device, ar_fill)
            if fits(block_model, length):
                decoders.update({name: make_decoder(block_model, source, options, device)
                                 for name, options in block_methods(args.thresholds).items()})
            skipped = [name for name, m in (("diffusion", model), ("AR", ar_model), ("block", block_model))
                       if m is not None and not fits(m, length)]
            if skipped:
                print(f"length {length}: {', '.join(skipped)} model(s) skipped (canvas longer than max_seq_len)",
                      file=sys.stderr, flush=True)
            if args.only:  # the reference row stays: it defines the speed-up column
                decoders = {name: d for name, d in decoders.items()
                            if name == REFERENCE or any(part in name for part in args.only)}
            if not decoders:
                continue
            results = run_methods(decoders, source, problems, batch, device)
            reference_out = results[REFERENCE]["outputs"] if REFERENCE in results else None
            for name, result in results.items():
                outputs = result.pop("outputs")
                same = None if reference_out is None or name.startswith(("AR", "block diffusion")) else sum(
                    a == b for a, b in zip(outputs, reference_out, strict=True)) / len(problems)
                rows.append({"length": length, "batch": batch, "method": name, "same_as_reference": same, **result})
                print(f"length {length} batch {batch} {name}: exact {result['exact_match']:.3f} "
                      f"{result['tokens_per_s']:.0f} tok/s", file=sys.stderr, flush=True)
    for row in rows:  # speed-ups over the reference-equivalent loop and over AR, of the same length and batch
        for key, method in (("speedup", REFERENCE), ("vs_ar", AR)):
            base = next((r for r in rows if r["length"] == row["length"] and r["batch"] == row["batch"]
                         and r["method"] == method), None)
            row[key] = None if base is None else row["tokens_per_s"] / base["tokens_per_s"]
    return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    table = [{
        "length": r["length"], "batch": r["batch"], "method": r["method"],
        "exact match": f"{100 * r['exact_match']:.1f} %",
        "= ref": "" if r["same_as_reference"] is None else f"{100 * r['same_as_reference']:.0f} %",
        "NFE / batch": f"{r['nfe_per_batch']:.1f}", "tokens/s": f"{r['tokens_per_s']:.0f}",
        "speed-up": "" if r["speedup"] is None else f"{r['speedup']:.2f}x",
        "vs AR": "" if r["vs_ar"] is None else f"{r['vs_ar']:.2f}x",
        "MFLOP / token": f"{r['mflop_per_token']:.2f}", "peak MiB": f"{r['peak_mib']:.1f}",
    } for r in rows]
    columns = ["length", "batch", "method", "exact match", "= ref", "NFE / batch", "tokens/s", "speed-up", "vs AR",
               "MFLOP / token", "peak MiB"]
    block = "" if args.block_model == "none" else f", block-diffusion entry `{args.block_model}`"
    head = (f"Sampler benchmark: `{args.model}`{block}, {args.problems} held-out problems per canvas length, "
            f"blocks of {args.block}, weights in {args.dtype}; device {info['device']} "
            f"({info.get('gpu', info['cpu'])}), torch {info['torch']}, {info['torch_threads']} threads, "
            f"OMP_WAIT_POLICY {info['omp_wait_policy']}"
            + "".join(f", {k}={v}" for k, v in info["malloc_env"].items())
            + f". Command: `{args.command}`.")
    return head + "\n\n" + fmt_table(table, columns) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="running-sums-small", help="zoo name or folder of the checkable entry")
    parser.add_argument("--problems", type=int, default=200, help="held-out problems per canvas length")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024], help="canvas lengths (2 x digits)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--block", type=int, default=64, help="block length in canvas positions")
    parser.add_argument("--small-block", type=int, default=8,
                        help="block length of the delayed-cache row with small blocks (no refresh makes them cheap)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.99, 0.995],
                        help="confidence thresholds of the threshold rows")
    parser.add_argument("--parallel", type=int, nargs="*", default=[2, 4, 8],
                        help="rows with this many sums committed per step (fixed parallel decoding)")
    parser.add_argument("--ar", type=Path,
                        default=Path(__file__).resolve().parent / "baselines" / "ar-running-sums-1024",
                        help="folder of the AR baseline (skipped when missing)")
    parser.add_argument("--block-model", default="running-sums-block",
                        help="zoo name or folder of the block-diffusion model (configs/reasoning/running-sums-block*."
                             "yaml); 'none' skips its rows")
    parser.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                        help="run only the methods whose name contains one of these texts (and the reference row)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of every model's weights and activations (bfloat16: what a GPU runs)")
    add_run_arguments(parser)

    def check(args: argparse.Namespace) -> None:
        for length in args.lengths:
            if length % args.block or args.block % 2:
                parser.error(f"canvas length {length} must hold whole blocks of {args.block} (an even block length)")

    return run_benchmark("sampling", parser, argv, bench, markdown, check)


if __name__ == "__main__":
    sys.exit(main())
