"""VLA benchmark: the shipped Meta-World policy's success rate, forward passes (NFE) per action chunk and wall time
per action, with diffusion decoding against autoregressive decoding of the same model, next to the scripted expert
(the upper bound) and a uniform random policy (the lower bound), on the same held-out episodes, in one run.

Episodes are the entry's held-out starts (`MetaWorldDemosSource.candidate_seeds("val", task, n)`: odd seeds, whose
initial object and goal positions were never training demonstrations), `--episodes` per task, at most `--max-steps`
steps each (default 200, the demonstrations' own limit: the experts finish in 45-90 steps and a policy that has not
succeeded by then rarely does later; Meta-World's own limit is 500), `--num-envs` environments stepped in lockstep
(one batch row each; a row decodes the same alone or in a batch). The simulator renders a frame only when the policy
reads it (the VLA policy: once per decoded chunk; the baselines: never), which is most of a step's time on a
software renderer.

Systems:
  diffusion        the entry's own decoding: the Discrete Diffusion VLA sampler (`discrete-diffusion-vla`: cosine
                   keep schedule, most confident first, secondary re-masking), the checkpoint's steps per chunk.
  autoregressive   the same weights, one action token per forward pass, left to right (the `llada` sampler with
                   blocks of one token and one step per block), with the same prompt KV cache.
  expert           Meta-World's scripted expert of each task (`metaworld.policies`), from the state.
  random           uniform actions in [-1, 1]^4, seeded.

Wall time per action is the policy's `select_action` time (decoding included, the simulator excluded) averaged over
every action of every row: a chunk decodes once per `n_action_steps` actions, for all rows of the batch at once.

Writes benchmarks/results/vla.json and vla.md and prints the markdown table. Needs Meta-World (`pip install
"mmdiff[robot]"`, MUJOCO_GL=egl).

    python benchmarks/vla.py                      # 50 episodes per task, the card's numbers
    python benchmarks/vla.py --episodes 2 --max-steps 40 --tasks reach   # a quick look
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_run_arguments, fmt_table, run_benchmark  # noqa: E402

import mmdiff  # noqa: E402
from mmdiff.data.metaworld_demos import MetaWorldDemosSource  # noqa: E402
from mmdiff.evaluation.rollouts import RandomPolicy, ScriptedPolicy, average_success, evaluate_policy  # noqa: E402
from mmdiff.sim.metaworld import ACTION_DIM, ScriptedExpert, instruction  # noqa: E402
from mmdiff.tasks.vla import VLAPolicy  # noqa: E402


def policies(model: Any, tasks: list[str], seed: int) -> dict[str, Any]:
    """The four systems of the table (see the module docstring), by name."""
    A = VLAPolicy(model).task.action_length
    return {
        "diffusion": VLAPolicy(model),
        "autoregressive": VLAPolicy(model, sampler="llada", steps=A, block_length=1),
        "expert": ScriptedPolicy({instruction(t): ScriptedExpert(t) for t in tasks}),
        "random": RandomPolicy(ACTION_DIM, seed=seed),
    }


def bench(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    torch.manual_seed(args.seed)
    model = mmdiff.create_model(args.model, device=str(device))
    source = MetaWorldDemosSource(**dict(model.config.task_options["data"]["options"]))
    tasks = args.tasks or list(source.tasks)
    seeds = {t: source.candidate_seeds("val", t, args.episodes) for t in tasks}
    rows = []
    for name, policy in policies(model, tasks, args.seed).items():
        results = evaluate_policy(policy, tasks, seeds=seeds, num_envs=args.num_envs, max_steps=args.max_steps,
                                  progress=False)
        for result in results:
            rows.append({"system": name, **result.to_dict()})
            print(f"{name}: {result.line()}", file=sys.stderr, flush=True)
        rows.append({"system": name, "task": "average", "success_rate": average_success(results),
                     "episodes": sum(len(r.episodes) for r in results),
                     "mean_length": sum(r.mean_length * len(r.episodes) for r in results)
                     / sum(len(r.episodes) for r in results),
                     "nfe_per_chunk": _mean([r.nfe_per_chunk for r in results]),
                     "seconds_per_action": _mean([r.seconds_per_action for r in results])})
    diffusion = {r["task"]: r for r in rows if r["system"] == "diffusion"}
    for row in rows:
        if row["system"] == "autoregressive":
            mine = diffusion[row["task"]]
            row["nfe_ratio_vs_diffusion"] = row["nfe_per_chunk"] / mine["nfe_per_chunk"]
            row["time_ratio_vs_diffusion"] = row["seconds_per_action"] / mine["seconds_per_action"]
    return rows


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The card's metrics: per task and on average, the entry's success (diffusion decoding) and its baselines'
    (`<system>_success_<task>`), and both decodings' forward passes per chunk and milliseconds per action."""
    prefix = {"diffusion": "", "autoregressive": "ar_", "expert": "expert_", "random": "random_"}
    out: dict[str, float] = {}
    for r in rows:
        tag = prefix[r["system"]]
        if r["task"] == "average":
            out[f"{tag}average_success"] = r["success_rate"]
            if r["system"] in ("diffusion", "autoregressive"):
                out[f"{tag}nfe_per_chunk"] = r["nfe_per_chunk"]
                out[f"{tag}ms_per_action"] = 1000 * r["seconds_per_action"]
        else:
            out[f"{tag}success_{r['task']}"] = r["success_rate"]
            out["episodes_per_task"] = len(r["episodes"])
    return out


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    def cell(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    table = [{
        "task": r["task"], "system": r["system"],
        "episodes": r["episodes"] if isinstance(r["episodes"], int) else len(r["episodes"]),
        "success": f"{100 * r['success_rate']:.0f} %", "mean length": cell(r["mean_length"], ".1f"),
        "NFE / chunk": cell(r["nfe_per_chunk"], ".1f"),
        "ms / action": cell(None if r["seconds_per_action"] is None else 1000 * r["seconds_per_action"], ".2f"),
    } for r in sorted(rows, key=lambda r: (r["task"] == "average", r["task"]))]
    head = (f"VLA benchmark: `{args.model}` on held-out Meta-World episodes ({args.episodes} per task, "
            f"{args.num_envs} environments in lockstep, step limit {args.max_steps}); device {info['device']} "
            f"({info.get('gpu', info['cpu'])}), torch {info['torch']}, {info['torch_threads']} threads. "
            f"Command: `{args.command}`.")
    return head + "\n\n" + fmt_table(table, list(table[0])) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="metaworld-tiny", help="zoo name or folder of a VLA entry")
    parser.add_argument("--tasks", nargs="+", help="Meta-World tasks (default: the entry's)")
    parser.add_argument("--episodes", type=int, default=50, help="held-out episodes per task")
    parser.add_argument("--num-envs", type=int, default=10, help="environments stepped in lockstep")
    parser.add_argument("--max-steps", type=int, default=200, help="step limit (default 200; Meta-World's: 500)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed and the random policy's seed")
    add_run_arguments(parser)
    return run_benchmark("vla", parser, argv, bench, markdown, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
