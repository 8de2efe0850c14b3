"""Publishes a trained run as a shipped zoo entry: measures its metrics with `mmdiff eval`, reads the training
wall time from the run's metrics.jsonl, and writes `zoo/<name>/` (checkpoint, card.yaml, generated README.md).

The static card fields (description, license, data, recipe, reproduce, tags, sampler presets, metrics_command) are
read from the existing `zoo/<name>/card.yaml`; params, metrics and train_wall_time are always measured anew.

    python scripts/publish_zoo_entry.py runs/shakespeare-tiny zoo/shakespeare-tiny -- --limit 128

With `--metrics-from RESULTS.json` the metrics are a benchmark's instead (its "summary", measured in one run, e.g.
the policy, its baselines and both decodings of benchmarks/vla.py), and the card's metrics_command is the benchmark's
command as its results file records it:

    python scripts/publish_zoo_entry.py runs/metaworld-tiny zoo/metaworld-tiny \
        --metrics-from benchmarks/results/vla.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from mmdiff.cli import main as mmdiff_main
from mmdiff.dataclass_io import load_yaml
from mmdiff.modeling import DiffusionModel
from mmdiff.train import load_train_config
from mmdiff.zoo import ZooCard, count_parameters, save_zoo_entry


WALL_TIME = re.compile(r"(?P<minutes>[\d.]+) min \((?:(?P<stages>\d+) stages, )?(?P<steps>\d+) steps\)"
                       r"(?: on (?P<device>.+)|: (?P<parts>.+))$")


def card_wall_time(text: str) -> tuple[dict[str, float], int, int]:
    """Minutes per machine, stages and steps of a card's train_wall_time (as `train_wall_time` writes it), for a run
    that continues a published entry whose earlier stages' run folders are gone.

    >>> card_wall_time("15.0 min (2 stages, 7500 steps): 10.0 min on 2 CPU threads, 5.0 min on one NVIDIA H200")
    ({'2 CPU threads': 10.0, 'one NVIDIA H200': 5.0}, 2, 7500)
    >>> card_wall_time("73.9 min (2 stages, 3000 steps) on 2 CPU threads (x86_64)")
    ({'2 CPU threads (x86_64)': 73.9}, 2, 3000)
    """
    match = WALL_TIME.match(text.strip())
    if match is None:
        raise ValueError(f"cannot read the card's train_wall_time {text!r}; expected e.g. "
                         "'73.9 min (2 stages, 3000 steps) on 2 CPU threads (x86_64)'")
    if match["device"] is not None:
        minutes = {match["device"]: float(match["minutes"])}
    else:
        minutes = {}
        for part in match["parts"].split(", "):
            value, device = part.split(" min on ", 1)
            minutes[device] = float(value)
    return minutes, int(match["stages"] or 1), int(match["steps"])


def train_wall_time(run_dirs: list[Path], devices: list[str] | None = None, earlier: str | None = None) -> str:
    """Total training minutes and steps over the runs (earlier stages first), from their metrics.jsonl files, and
    where they ran: `devices` names each run's machine (default: all on this one). `earlier` is the train_wall_time
    of a card whose stages come before the runs (`card_wall_time`).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name, seconds, step in (("a", 600, 1500), ("b", 300, 6000)):
    ...     (folder / name).mkdir()
    ...     _ = (folder / name / "metrics.jsonl").write_text(json.dumps(
    ...         {"split": "train", "step": step, "elapsed_s": seconds}))
    >>> train_wall_time([folder / "a", folder / "b"], ["2 CPU threads", "one NVIDIA H200"])
    '15.0 min (2 stages, 7500 steps): 10.0 min on 2 CPU threads, 5.0 min on one NVIDIA H200'
    >>> train_wall_time([folder / "b"], ["1 CPU thread"], earlier="10.0 min (2 stages, 3000 steps) on 2 CPU threads")
    '15.0 min (3 stages, 9000 steps): 10.0 min on 2 CPU threads, 5.0 min on 1 CPU thread'
    """
    here = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{torch.get_num_threads()} CPU threads"
    devices = devices or [f"{here} ({platform.machine()})"] * len(run_dirs)
    if len(devices) != len(run_dirs):
        raise ValueError(f"give one device per training run: {len(run_dirs)} runs, {len(devices)} devices")
    minutes, stages, total_steps = card_wall_time(earlier) if earlier else ({}, 0, 0)
    for run_dir, device in zip(run_dirs, devices, strict=True):
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        train = [r for r in records if r.get("split") == "train" and "elapsed_s" in r]
        if not train:
            raise ValueError(f"{run_dir}/metrics.jsonl has no training records")
        minutes[device] = minutes.get(device, 0.0) + train[-1]["elapsed_s"] / 60
        total_steps += train[-1]["step"]
        stages += 1
    head = f"{sum(minutes.values()):.1f} min ({f'{stages} stages, ' if stages > 1 else ''}{total_steps} steps)"
    if len(minutes) == 1:
        return f"{head} on {next(iter(minutes))}"
    return head + ": " + ", ".join(f"{m:.1f} min on {d}" for d, m in minutes.items())


def measure(final: Path, eval_args: list[str]) -> dict[str, float] | None:
    """`mmdiff eval FINAL --output ...` with the extra arguments; None when it failed (its error is printed)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        if mmdiff_main(["eval", str(final), "--output", str(out), *eval_args]):
            return None
        return json.loads(out.read_text())


def benchmark_metrics(path: Path) -> tuple[dict[str, float], str]:
    """The "summary" of a benchmark's results file and the command that measured it.

    Raises:
        ValueError: the file has no summary (the benchmark does not write one).
    """
    payload = json.loads(Path(path).read_text())
    if not isinstance(payload.get("summary"), dict):
        raise ValueError(f"{path} has no 'summary' of card metrics; use the results of a benchmark that writes one "
                         "(e.g. benchmarks/vla.py)")
    return payload["summary"], payload["args"]["command"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="training output folder (holds final/ and metrics.jsonl)")
    parser.add_argument("entry", type=Path, help="zoo entry folder whose card.yaml holds the static fields")
    parser.add_argument("--earlier-run", type=Path, action="append", default=[],
                        help="run folder of an earlier training stage (counted in the wall time); repeatable")
    parser.add_argument("--earlier-card", type=Path,
                        help="the card of the published entry this run continues, when its stages' run folders are gone: "
                             "its train_wall_time counts as the earlier stages")
    parser.add_argument("--card", type=Path, help="card with the static fields (default: ENTRY/card.yaml)")
    parser.add_argument("--metrics-from", type=Path,
                        help="a benchmark's results JSON whose 'summary' holds the metrics (instead of mmdiff eval)")
    parser.add_argument("--device", action="append", default=[],
                        help="where each run trained, earlier runs first (e.g. '2 CPU threads (x86_64)'); repeatable; "
                             "default: all on this machine")
    argv = sys.argv[1:] if argv is None else argv
    eval_args = argv[argv.index("--") + 1 :] if "--" in argv else []  # extra `mmdiff eval` arguments, after --
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.eval_args = eval_args
    final = args.run_dir / "final"
    fields = load_yaml((args.card or args.entry / "card.yaml").read_text())
    earlier = load_yaml(args.earlier_card.read_text())["train_wall_time"] if args.earlier_card else None
    if args.metrics_from is not None:
        measured, command = benchmark_metrics(args.metrics_from)
    else:
        measured = measure(final, args.eval_args)
        if measured is None:
            return 2
        command = " ".join(["mmdiff eval", fields["name"], *(shlex.quote(a) for a in args.eval_args)])
    model = DiffusionModel.from_pretrained(final)
    model.sampler_config = load_train_config(fields["recipe"]).sampler  # the recipe holds the sampling defaults
    fields.update(
        params=count_parameters(model),
        train_wall_time=train_wall_time([*args.earlier_run, args.run_dir], args.device or None, earlier),
        metrics={k: round(float(v), 4) for k, v in measured.items() if isinstance(v, (int, float))},
        metrics_command=command,
    )
    card = ZooCard.from_dict(fields)
    model.config.name = card.name
    save_zoo_entry(model, card, args.entry)
    print(card.to_yaml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
