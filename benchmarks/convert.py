"""Converter loading benchmark: load time and peak resident memory of a random 1-billion-parameter checkpoint in
LLaDA's Hugging Face layout (Nie et al., 2025, "Large Language Diffusion Models"), loaded natively by
`mmdiff.convert.LLADA` (meta-device core, weights read shard by shard straight into their own memory).

The script first writes the checkpoint itself (`write_random_llada`): LLaDA-8B's shape rules scaled down to the
parameter target (head_dim 128, SwiGLU width ~8/3 d_model, n_kv_heads = n_heads, untied LM head, its 126464-id
vocabulary), config.json with LLaDA's field names and sharded safetensors with LLaDA's tensor names plus
`model.safetensors.index.json`, generated and written shard by shard (never the whole model in memory). Then each
measurement runs in a fresh Python process: resident set size (VmRSS) before loading, `LLADA.load(folder)` wall
time, the process's peak resident set size (VmHWM) after it, and two forward passes over 16 tokens to show the
loaded model works. The target of issue 4: peak RSS at most 1.3x the checkpoint's size on disk, dtype kept (bf16).

    python benchmarks/convert.py                      # 1e9 parameters, bf16, 2 shards, in a temporary folder
    python benchmarks/convert.py --params 2e6 --vocab 1000 --out "$(mktemp -d)"     # a smoke run
    python benchmarks/convert.py --dir /big/disk/llada-1b --keep --fp32               # keep it; also load as fp32

Writes benchmarks/results/convert.json and convert.md and prints the markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Passive OpenMP waiting: spinning threads collapse on a shared machine (see benchmarks/README.md). Before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CPU_MEMORY_ENV,
    RESULTS_DIR,
    fmt_table,
    machine_info,
    proc_status_kib,
    run_json_subprocess,
    write_results,
)

from mmdiff.convert import LLADA  # noqa: E402

LLADA_VOCAB = 126464  # LLaDA-8B's vocab_size = embedding_size
LLADA_SPECIALS = {"mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081}  # LLaDA-8B config.json
HEAD_DIM = 128  # LLaDA-8B: d_model 4096 / 32 heads
DEPTH_RATIO = 128  # LLaDA-8B: d_model 4096 / 32 layers; the chooser keeps d_model / n_layers near it
INIT_STD = 0.02
TARGET_RATIO = 1.3  # issue 4: peak RSS at most 1.3x the checkpoint size
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
INDEX_NAME = "model.safetensors.index.json"


# ------------------------------------------------------------------------------------------------ dimensions
@dataclass(frozen=True)
class LLaDADims:
    """The shape of a LLaDA checkpoint (block_type "llama", no biases, untied LM head, n_kv_heads = n_heads)."""

    d_model: int
    n_layers: int
    n_heads: int
    mlp_hidden_size: int
    vocab_size: int

    @property
    def embedding_size(self) -> int:
        return self.vocab_size

    @property
    def params(self) -> int:
        """Parameters: embedding + LM head (both embedding_size x d), per block 2 norms, q/k/v/out, 3 MLP matrices,
        and the final norm."""
        d, h = self.d_model, self.mlp_hidden_size
        per_block = 2 * d + 4 * d * d + 3 * d * h
        return 2 * self.embedding_size * d + self.n_layers * per_block + d

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """LLaDA tensor name -> shape, in the checkpoint's order (`modeling_llada.py`, block_type "llama")."""
        d, h, p = self.d_model, self.mlp_hidden_size, "model.transformer."
        shapes: dict[str, tuple[int, ...]] = {f"{p}wte.weight": (self.embedding_size, d)}
        for i in range(self.n_layers):
            b = f"{p}blocks.{i}."
            shapes.update({
                f"{b}attn_norm.weight": (d,),
                f"{b}q_proj.weight": (d, d),
                f"{b}k_proj.weight": (d, d),
                f"{b}v_proj.weight": (d, d),
                f"{b}attn_out.weight": (d, d),
                f"{b}ff_norm.weight": (d,),
                f"{b}ff_proj.weight": (h, d),  # SwiGLU gate
                f"{b}up_proj.weight": (h, d),  # SwiGLU linear branch
                f"{b}ff_out.weight": (d, h),  # MLP down projection
            })
        shapes[f"{p}ln_f.weight"] = (d,)
        shapes[f"{p}ff_out.weight"] = (self.embedding_size, d)  # LM head
        return shapes

    def config(self, dtype: str = "bfloat16") -> dict[str, Any]:
        """config.json as LLaDAConfig writes it (LLaDA-8B's values, this size)."""
        specials = (LLADA_SPECIALS if self.vocab_size == LLADA_VOCAB else
                    {"mask_token_id": self.vocab_size - 1, "eos_token_id": self.vocab_size - 2,
                     "pad_token_id": self.vocab_size - 2})
        return {
            "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
            "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
            "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": self.d_model,
            "embedding_dropout": 0.0, "embedding_size": self.embedding_size, "flash_attention": False,
            "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
            "init_fn": "mitchell", "init_std": INIT_STD, "input_emb_norm": False, "layer_norm_type": "rms",
            "layer_norm_with_affine": True, "max_sequence_length": 4096, "mlp_hidden_size": self.mlp_hidden_size,
            "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": self.n_heads,
            "n_kv_heads": self.n_heads, "n_layers": self.n_layers, "precision": "amp_bf16", "residual_dropout": 0.0,
            "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
            "scale_logits": False, "torch_dtype": dtype, "use_cache": False, "vocab_size": self.vocab_size,
            "weight_tying": False, **specials,
        }


def mlp_width(d_model: int) -> int:
    """SwiGLU width: 8/3 d_model rounded up to a multiple of 128."""
    return 128 * math.ceil(8 * d_model / 3 / 128)


def choose_dims(params_target: float = 1e9, vocab_size: int = LLADA_VOCAB) -> LLaDADims:
    """LLaDA dimensions with about `params_target` parameters.

    d_model runs over multiples of 128 (one head per 128), the layer count is the one that gets closest to the
    target, and among those the shape whose d_model / n_layers is closest to LLaDA-8B's 128 wins.

    >>> dims = choose_dims(1e9)
    >>> (dims.d_model, dims.n_layers, dims.n_heads, dims.mlp_hidden_size, dims.params)
    (1792, 14, 14, 4864, 999213824)

    Raises:
        ValueError: the target cannot hold the embeddings plus one block at d_model 128.
    """
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3 (mask, eos/pad and a text id), got {vocab_size}")
    best: tuple[float, float, LLaDADims] | None = None
    for d in range(HEAD_DIM, 128 * HEAD_DIM + 1, HEAD_DIM):
        zero = LLaDADims(d, 0, d // HEAD_DIM, mlp_width(d), vocab_size)
        per_block = LLaDADims(d, 1, d // HEAD_DIM, mlp_width(d), vocab_size).params - zero.params
        n_layers = round((params_target - zero.params) / per_block)
        if n_layers < 1:
            break  # wider models only need more parameters
        dims = LLaDADims(d, n_layers, d // HEAD_DIM, mlp_width(d), vocab_size)
        key = (abs(math.log(d / n_layers / DEPTH_RATIO)), abs(dims.params - params_target))
        if best is None or key < best[:2]:
            best = (*key, dims)
    if best is None:
        smallest = LLaDADims(HEAD_DIM, 1, 1, mlp_width(HEAD_DIM), vocab_size).params
        raise ValueError(f"params_target={params_target:.3g} is too small for a LLaDA checkpoint with a "
                         f"{vocab_size}-id vocabulary (one block at d_model {HEAD_DIM} needs ~{smallest:,}); raise "
                         "the target or lower vocab_size")
    return best[2]


# --------------------------------------------------------------------------------------------------- writing
def _shard_plan(shapes: dict[str, tuple[int, ...]], shards: int, itemsize: int) -> list[list[str]]:
    """Tensor names per shard, in order, split at equal byte fractions (a shard a big tensor skips is dropped)."""
    sizes = {name: math.prod(shape) * itemsize for name, shape in shapes.items()}
    total, start = sum(sizes.values()), 0
    plan: list[list[str]] = [[] for _ in range(shards)]
    for name, nbytes in sizes.items():
        plan[min(shards - 1, start * shards // total)].append(name)
        start += nbytes
    return [names for names in plan if names]


def write_random_llada(folder: str | os.PathLike, *, params_target: float = 1e9, dtype: str = "bfloat16",
                       shards: int = 2, seed: int = 0, vocab_size: int = LLADA_VOCAB) -> dict[str, Any]:
    """Writes a random LLaDA checkpoint (config.json, safetensors shards, index) of about `params_target` params.

    Tensors are drawn one by one from one seeded generator in checkpoint order (so the values do not depend on
    `shards`): linear and embedding weights N(0, 0.02^2), RMSNorm weights 1, all in `dtype`. Only one shard's
    tensors exist at a time; each shard is written by `safetensors.torch.save_file`.

    Args:
        folder: a new or empty folder.
        params_target: about this many parameters (see `choose_dims`).
        dtype: "bfloat16", "float16" or "float32".
        shards: number of weight files (one file is named model.safetensors, with no index).
        seed: the generator's seed.
        vocab_size: vocabulary (and embedding rows); LLaDA's 126464 by default, smaller for tests.

    Returns:
        {"folder", "dims" (LLaDADims fields), "params", "tensor_bytes", "checkpoint_bytes" (weight files on
        disk), "files", "write_s"}.

    >>> # info = write_random_llada("llada-tiny", params_target=2e6, vocab_size=1000)
    >>> # info["params"], info["dims"]["d_model"], info["dims"]["n_layers"]  -> (2217216, 256, 2)
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; write the benchmark checkpoint into a new or empty folder")
    start = time.perf_counter()
    dims = choose_dims(params_target, vocab_size)
    torch_dtype = DTYPES[dtype]
    shapes = dims.tensor_shapes()
    plan = _shard_plan(shapes, shards, torch.empty((), dtype=torch_dtype).element_size())
    names = (["model.safetensors"] if len(plan) == 1 else
             [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))])
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    weight_map, tensor_bytes = {}, 0
    for file, group in zip(names, plan, strict=True):
        tensors = {}
        for name in group:
            tensors[name] = _random_tensor(name, shapes[name], torch_dtype, generator)
            tensor_bytes += tensors[name].numel() * tensors[name].element_size()
            weight_map[name] = file
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        del tensors
    if len(plan) > 1:
        index = {"metadata": {"total_size": tensor_bytes}, "weight_map": weight_map}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(dims.config(dtype), indent=2, sort_keys=True) + "\n")
    return {"folder": str(folder), "dims": asdict(dims), "params": dims.params, "dtype": dtype,
            "tensor_bytes": tensor_bytes, "checkpoint_bytes": checkpoint_bytes(folder), "files": names,
            "write_s": time.perf_counter() - start}


def _random_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
        return torch.ones(shape, dtype=dtype)
    return torch.randn(shape, generator=generator, dtype=dtype).mul_(INIT_STD)


def checkpoint_bytes(folder: str | os.PathLike) -> int:
    """Bytes of the safetensors files in `folder` (headers included)."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


# ------------------------------------------------------------------------------------------------- measuring
def evict_page_cache(folder: str | os.PathLike) -> bool:
    """Asks the kernel to drop the weight files' cached pages (fsync, then POSIX_FADV_DONTNEED), so the next load
    reads from disk; advisory, no root needed. False where the platform lacks posix_fadvise."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in Path(folder).glob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def measure_load(folder: str | os.PathLike, *, load_dtype: str | None = None, evict: bool = False,
                 tokens: int = 16, seed: int = 0) -> dict[str, Any]:
    """Loads the checkpoint in this process and measures it; run it in a fresh process (`--worker`) started with
    `CPU_MEMORY_ENV`, so that the peak belongs to this load alone.

    Returns:
        RSS before the load, the process's peak RSS (VmHWM) after it and after the forward passes, RSS after it
        (MiB); load and forward times (s); parameter count, loaded dtypes, weight bytes, checkpoint bytes.
    """
    gc.collect()
    evicted = evict_page_cache(folder) if evict else False
    rss_before = proc_status_kib("VmRSS")
    start = time.perf_counter()
    model = LLADA.load(folder, dtype=DTYPES[load_dtype] if load_dtype else None)
    load_s = time.perf_counter() - start
    peak_load = proc_status_kib("VmHWM")
    rss_loaded = proc_status_kib("VmRSS")
    params = list(model.core.parameters())
    ids = torch.randint(0, model.config.core.vocab.size, (1, tokens), generator=torch.Generator().manual_seed(seed))
    forward_s = []
    with torch.inference_mode():
        for _ in range(2):  # the first call pays one-time costs (kernel selection, thread pool)
            start = time.perf_counter()
            logits = model.core(ids).logits  # (1, tokens, embedding_size)
            forward_s.append(time.perf_counter() - start)
    return {
        "load_dtype": load_dtype or "kept",
        "page_cache": "evicted" if evicted else "warm",
        "params": sum(p.numel() for p in params),
        "param_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in params}),
        "weight_bytes": sum(p.numel() * p.element_size() for p in params),
        "checkpoint_bytes": checkpoint_bytes(folder),
        "rss_before_mib": rss_before / 1024,
        "peak_rss_mib": peak_load / 1024,
        "rss_after_load_mib": rss_loaded / 1024,
        "peak_rss_after_forward_mib": proc_status_kib("VmHWM") / 1024,
        "load_s": load_s,
        "forward_tokens": tokens,
        "forward_s": forward_s,
        "logits_shape": list(logits.shape),
        "logits_finite": bool(torch.isfinite(logits).all()),
        "torch_threads": torch.get_num_threads(),
    }


def run_measurement(folder: str | os.PathLike, *, load_dtype: str | None = None, evict: bool = False,
                    tokens: int = 16, threads: int = 0, timeout: float = 1800) -> dict[str, Any]:
    """`measure_load` in a fresh interpreter (`CPU_MEMORY_ENV`), plus the ratios to the checkpoint size.

    >>> # row = run_measurement("llada-1b"); row["peak_over_checkpoint"] <= 1.3
    """
    args = [str(Path(__file__).resolve()), "--worker", "--dir", str(folder), "--tokens", str(tokens)]
    if load_dtype:
        args += ["--load-dtype", load_dtype]
    if evict:
        args.append("--evict")
    if threads:
        args += ["--threads", str(threads)]
    row = run_json_subprocess(args, env=CPU_MEMORY_ENV, timeout=timeout)
    ckpt_mib = row["checkpoint_bytes"] / 2**20
    row["peak_over_checkpoint"] = row["peak_rss_mib"] / ckpt_mib
    row["added_over_checkpoint"] = (row["peak_rss_mib"] - row["rss_before_mib"]) / ckpt_mib
    row["peak_over_weights"] = row["peak_rss_mib"] / (row["weight_bytes"] / 2**20)
    return row


# ------------------------------------------------------------------------------------------------------ report
def markdown(info: dict[str, Any], rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    dims = info["dims"]
    table = [{
        "load dtype": r["load_dtype"] if r["load_dtype"] != "kept" else f"kept ({', '.join(r['param_dtypes'])})",
        "page cache": r["page_cache"],
        "load (s)": f"{r['load_s']:.2f}",
        "RSS before (MiB)": f"{r['rss_before_mib']:.0f}",
        "peak RSS (MiB)": f"{r['peak_rss_mib']:.0f}",
        "checkpoint (MiB)": f"{r['checkpoint_bytes'] / 2**20:.0f}",
        "peak / checkpoint": f"{r['peak_over_checkpoint']:.3f}",
        "(peak - before) / checkpoint": f"{r['added_over_checkpoint']:.3f}",
        f"target <= {TARGET_RATIO}x": ("met" if r["peak_over_checkpoint"] <= TARGET_RATIO else "MISSED")
        if r["load_dtype"] == "kept" else "n/a (cast)",
        f"forward {r['forward_tokens']} tokens (s, 1st / 2nd)": f"{r['forward_s'][0]:.2f} / {r['forward_s'][1]:.2f}",
    } for r in rows]
    head = (
        "# Loading a LLaDA checkpoint: time and peak resident memory\n\n"
        f"Random checkpoint in LLaDA's layout: {info['params']:,} parameters (d_model {dims['d_model']}, "
        f"{dims['n_layers']} layers, {dims['n_heads']} heads, mlp_hidden_size {dims['mlp_hidden_size']}, vocab "
        f"{dims['vocab_size']}, untied LM head), {info['dtype']}, {len(info['files'])} safetensors file(s), "
        f"{info['checkpoint_bytes']:,} bytes on disk, written in {info['write_s']:.1f} s. Each row: a fresh "
        f"process (MALLOC_MMAP_THRESHOLD_=65536) runs `LLADA.load(folder)`; RSS before = VmRSS after importing "
        "torch and mmdiff; peak RSS = the process's VmHWM after the load (imports included). Page cache "
        "\"evicted\": fsync + POSIX_FADV_DONTNEED on the weight files first (reads come from disk); \"warm\": the "
        f"files are cached. Then two forward passes over {rows[0]['forward_tokens']} random tokens (logits finite: "
        f"{all(r['logits_finite'] for r in rows)}). CPU: {machine['cpu']}, {machine['cpu_count']} cores, torch "
        f"{machine['torch']}, {rows[0]['torch_threads']} threads.\n\n"
    )
    return head + fmt_table(table, list(table[0])) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=1e9, help="parameter target (default 1e9)")
    parser.add_argument("--vocab", type=int, default=LLADA_VOCAB, help="vocabulary size (default LLaDA's 126464)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16", help="checkpoint dtype (bfloat16)")
    parser.add_argument("--shards", type=int, default=2, help="safetensors files (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--dir", type=Path, help="write the checkpoint here (new or empty folder; kept); default: a "
                                                 "temporary folder, deleted after unless --keep")
    parser.add_argument("--keep", action="store_true", help="keep the temporary checkpoint folder")
    parser.add_argument("--fp32", action="store_true", help="also load with dtype=float32 (cast while loading)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens of the forward pass (default 16)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default benchmarks/results)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load-dtype", choices=list(DTYPES), help=argparse.SUPPRESS)
    parser.add_argument("--evict", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(measure_load(args.dir, load_dtype=args.load_dtype, evict=args.evict, tokens=args.tokens)))
        return 0
    folder = args.dir or Path(tempfile.mkdtemp(prefix="mmdiff-bench-convert-"))
    try:
        return _run(args, folder)
    finally:
        if args.dir is None and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"checkpoint kept in {folder}")


def _run(args: argparse.Namespace, folder: Path) -> int:
    start = time.time()
    machine = machine_info(torch.device("cpu"))
    dims = choose_dims(args.params, args.vocab)
    itemsize = torch.empty((), dtype=DTYPES[args.dtype]).element_size()
    print(f"benchmark: writing a {dims.params:,}-parameter LLaDA checkpoint ({dims.params * itemsize / 2**30:.2f} "
          f"GiB, {args.dtype}) into {folder}", flush=True)
    info = write_random_llada(folder, params_target=args.params, dtype=args.dtype, shards=args.shards,
                              seed=args.seed, vocab_size=args.vocab)
    print(f"  written in {info['write_s']:.1f} s", flush=True)
    runs = [("kept", True), ("kept", False)] + ([("float32", False)] if args.fp32 else [])
    rows = []
    for load_dtype, evict in runs:
        row = run_measurement(folder, load_dtype=None if load_dtype == "kept" else load_dtype, evict=evict,
                              tokens=args.tokens, threads=args.threads)
        if row["params"] != info["params"]:
            raise RuntimeError(f"the loaded core has {row['params']:,} parameters, the checkpoint {info['params']:,}")
        rows.append(row)
        print(f"  load ({row['load_dtype']}, {row['page_cache']}): {row['load_s']:.2f} s, peak RSS "
              f"{row['peak_rss_mib']:.0f} MiB = {row['peak_over_checkpoint']:.3f}x the checkpoint", flush=True)
    md = markdown(info, rows, machine)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("worker", "load_dtype", "evict", "out")}
    payload = {"benchmark": "convert_load", "config": config, "machine": machine,
               "checkpoint": {k: v for k, v in info.items() if k != "folder"}, "target_ratio": TARGET_RATIO,
               "wall_s": time.time() - start, "rows": rows}
    json_path, md_path = write_results("convert", payload, md, args.out)
    print()
    print(md)
    print(f"wrote {json_path} and {md_path} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
