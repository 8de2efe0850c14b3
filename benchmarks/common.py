"""Shared helpers for mmdiff benchmarks: machine description, timing with warm-up and median, peak memory of one
piece of work (CUDA allocator statistics, or the peak resident set size of a fresh process on CPU), and writing
results as JSON plus a markdown table under `benchmarks/results/`.

>>> fmt_table([{"a": 1, "b": 2.5}], ["a", "b"])
'| a | b |\\n|---|---|\\n| 1 | 2.5 |'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# glibc keeps freed heap memory for reuse, which hides a second step's peak from the resident set size; a fixed
# mmap threshold sends every large tensor to its own mapping, returned to the system on free.
CPU_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


class CountingCore(torch.nn.Module):
    """Counts forward passes of the core (NFE)."""

    def __init__(self, core: torch.nn.Module) -> None:
        super().__init__()
        self.core, self.calls = core, 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.core(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.core, name)


def machine_info(device: torch.device) -> dict[str, Any]:
    """Device, library versions and thread counts, for the results file."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "malloc_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},  # glibc tuning
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"model name\s*:\s*(.+)", text)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], Any], device: torch.device, *, warmup: int, iters: int) -> list[float]:
    """Seconds of each of `iters` timed calls after `warmup` untimed ones (device synchronised around each)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def time_interleaved(
    fns: dict[str, Callable[[], Any]], device: torch.device, *, warmup: int, iters: int
) -> dict[str, list[float]]:
    """Like `time_it` for several functions, alternating them step by step, so that load from other processes on a
    shared machine hits all of them alike instead of whichever happened to run at that moment."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(iters):
        names = list(fns) if i % 2 == 0 else list(reversed(fns))  # alternate who goes first
        for name in names:
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ---------------------------------------------------------------------------------------------------- memory
def proc_status_kib(field: str) -> int:
    """A `/proc/self/status` field in KiB (VmRSS: resident now, VmHWM: peak resident since start or reset)."""
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}; CPU peak memory needs Linux")
    return int(match.group(1))


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0: `echo 5 > /proc/self/clear_refs`); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_of(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Extra memory at the peak of one call of `fn`, over what was live just before it, in MiB.

    CUDA: `torch.cuda.max_memory_allocated` after resetting the peak statistics (tensor bytes, exact).
    CPU: peak resident set size (VmHWM, reset just before the call) minus the resident size before it; run it in
    a fresh process started with `CPU_MEMORY_ENV` so earlier work and malloc's free lists do not blur the number.
    """
    import gc

    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mib": (peak - before) / 2**20, "method": "torch.cuda.max_memory_allocated", "exact": True}
    before = proc_status_kib("VmRSS")
    reset = reset_peak_rss()
    hwm_before = proc_status_kib("VmHWM")
    fn()
    peak = proc_status_kib("VmHWM")
    base = before if reset else max(before, hwm_before)
    method = "VmHWM - VmRSS (/proc/self/status, peak reset via clear_refs)" if reset else "VmHWM delta (no reset)"
    return {"peak_mib": max(peak - base, 0) / 1024, "method": method, "exact": reset}


def flops_of(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of `fn`, counted by `torch.utils.flop_counter.FlopCounterMode` (matrix
    products and attention; elementwise work is not counted). The CPU's fused attention kernel
    (`_scaled_dot_product_flash_attention_for_cpu`, and its backward) is counted like the CUDA ones: 4 * B * H * Lq *
    Lk * D forward, 2.5 times that backward."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    def attention(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(q, k, v)

    def attention_backward(grad: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_backward_flop_count(grad, q, k, v)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention,
               torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: attention_backward}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def run_json_subprocess(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> Any:
    """Runs `python args...` in a fresh interpreter and parses the JSON its last stdout line holds."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full_env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------- results
def fmt_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table of `rows` restricted to `columns`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


REPO_ROOT = Path(__file__).resolve().parent.parent


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every `run_benchmark` script takes: --device, --threads, --out."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default benchmarks/results)")


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command that reproduces a run, as the results record it: without `--out` (where the files go changes
    nothing in them, and a machine's folder has no place in the repository).

    >>> command_line("t2i.py", ["--captions", "20", "--out", "/some/folder", "--steps", "4"])
    'python benchmarks/t2i.py --captions 20 --steps 4'
    """
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return " ".join(["python", f"benchmarks/{script}", *(shlex.quote(a) for a in kept)])


def _recorded(value: Any) -> str:
    """An argument for the results file: paths inside the repository relative to it."""
    if isinstance(value, Path) and value.resolve().is_relative_to(REPO_ROOT):
        return str(value.resolve().relative_to(REPO_ROOT))
    return str(value)


def run_benchmark(name: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                  bench: Callable[[argparse.Namespace, torch.device], list[dict[str, Any]]],
                  markdown: Callable[[list[dict[str, Any]], dict[str, Any], argparse.Namespace], str],
                  check: Callable[[argparse.Namespace], None] | None = None,
                  summary: Callable[[list[dict[str, Any]]], dict[str, float]] | None = None) -> int:
    """The `main` of a benchmark script: parses `argv` (set by `add_run_arguments` and the script's own options),
    picks torch's threads and the device, runs `bench(args, device)` for the rows, and writes `<name>.json` (the
    machine, the arguments, the rows, and `summary(rows)` when given: flat numbers a zoo card can take, see
    scripts/publish_zoo_entry.py --metrics-from) and `<name>.md` (`markdown(rows, machine, args)`, which may cite
    `args.command`) into `--out`, printing the table."""
    args = parser.parse_args(argv)
    args.command = command_line(f"{name}.py", sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if check is not None:
        check(args)
    info = machine_info(device)
    rows = bench(args, device)
    md = markdown(rows, info, args)
    recorded = {k: _recorded(v) for k, v in vars(args).items() if k != "out"}
    payload = {"machine": info, "args": recorded, "rows": rows}
    if summary is not None:
        payload["summary"] = summary(rows)
    json_path, md_path = write_results(name, payload, md, args.out)
    print(md)
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


def write_results(name: str, payload: dict[str, Any], markdown: str, out_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Writes `<name>.json` and `<name>.md` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path
