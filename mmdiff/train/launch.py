"""Several training processes through Hugging Face accelerate's launcher, with the accelerate configs shipped in
`configs/accelerate/`: `ddp`, `fsdp` (FSDP2, one shard unit per transformer block), `deepspeed-zero2`,
`deepspeed-zero3`. mmdiff writes no distributed engine: the configs are plain `accelerate launch` config files, and

    mmdiff train RECIPE --accelerate-config NAME [--num-processes N] [--section.key=value ...]

runs (and prints) the equivalent

    python -m accelerate.commands.launch --config_file configs/accelerate/NAME.yaml --num_processes N \\
        -m mmdiff.cli train RECIPE [--section.key=value ...]

Every process then runs the same `mmdiff.train.train` a single process runs. Several machines: the same command on
each, with `--num-machines`, `--machine-rank`, `--main-process-ip` and `--main-process-port` (see the README).

>>> sorted(accelerate_configs())
['ddp', 'deepspeed-zero2', 'deepspeed-zero3', 'fsdp']
>>> cmd = launch_command("configs/toy/copy-tiny.yaml", ["--train.steps=20"], "ddp", num_processes=2, python="python")
>>> " ".join(cmd[:3]), cmd[cmd.index("--num_processes") + 1]
('python -m accelerate.commands.launch', '2')
>>> cmd[-5:]
['-m', 'mmdiff.cli', 'train', 'configs/toy/copy-tiny.yaml', '--train.steps=20']
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from mmdiff.train.config import LAUNCH_CONFIGS, ConfigError, shipped_recipes

__all__ = ["ACCELERATE_DIR", "accelerate_configs", "resolve_accelerate_config", "launch_command", "launch_env",
           "relaunch"]

ACCELERATE_DIR = LAUNCH_CONFIGS  # configs/accelerate/: launch configs, not training recipes


def accelerate_configs() -> dict[str, Path]:
    """The shipped accelerate configs by name (`configs/accelerate/NAME.yaml`)."""
    root = shipped_recipes()
    folder = root / ACCELERATE_DIR if root is not None else None
    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_accelerate_config(name: str | os.PathLike) -> Path:
    """An accelerate config file: `name` itself when it is a file, else a shipped one (`ddp`, `fsdp.yaml`,
    `configs/accelerate/fsdp.yaml`).

    >>> resolve_accelerate_config("fsdp").name
    'fsdp.yaml'
    """
    given = Path(name)
    if given.is_file():
        return given
    shipped = accelerate_configs()
    stem = given.name.removesuffix(".yaml").removesuffix(".yml")
    if stem in shipped:
        return shipped[stem]
    raise ConfigError(f"accelerate config {str(name)!r} is neither a file nor a shipped config; the shipped ones "
                      f"are {', '.join(shipped) or 'none (configs/accelerate/ not found)'} (configs/accelerate/), "
                      "or give the path of your own `accelerate config` file")


def launch_command(
    recipe: str | os.PathLike,
    overrides: Sequence[str],
    accelerate_config: str | os.PathLike,
    *,
    num_processes: int | None = None,
    num_machines: int | None = None,
    machine_rank: int | None = None,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
    train_flags: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The `accelerate launch` command line that runs `mmdiff train RECIPE` in every process.

    Args:
        recipe: the training recipe (as `mmdiff train` takes it).
        overrides: `--section.key=value` recipe overrides, passed on unchanged.
        accelerate_config: a shipped config name (`ddp`, `fsdp`, ...) or a config file.
        num_processes: processes over all machines; None: every visible CUDA device (times `num_machines`).
        num_machines, machine_rank, main_process_ip, main_process_port: multi-node settings (accelerate's flags).
        train_flags: other `mmdiff train` flags for every process (`--no-resume`, `--max-steps=N`).
        python: the interpreter of every process.

    Raises:
        ConfigError: an unknown config name, or no `num_processes` on a machine without CUDA.
    """
    config = resolve_accelerate_config(accelerate_config)
    if num_processes is None:
        num_processes = _visible_gpus() * (num_machines or 1)
        if num_processes == 0:
            raise ConfigError("this machine has no CUDA device, so the number of processes cannot default to one per "
                              "GPU; give it, e.g. --num-processes 2 (CPU processes over gloo)")
    if num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {num_processes}")
    cmd = [python, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes",
           str(num_processes)]
    for flag, value in (("--num_machines", num_machines), ("--machine_rank", machine_rank),
                        ("--main_process_ip", main_process_ip), ("--main_process_port", main_process_port)):
        if value is not None:
            cmd += [flag, str(value)]
    return [*cmd, "-m", "mmdiff.cli", "train", *train_flags, str(recipe), *overrides]


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch_env(environ: Mapping[str, str] | None = None, accelerate_config: str | os.PathLike | None = None
               ) -> dict[str, str]:
    """The launcher's environment: on a machine without CUDA, ACCELERATE_USE_CPU=1, so that the processes form a
    gloo group on CPU (without it, accelerate 1.x starts each process as a lone single-process run); except for a
    DeepSpeed config, which runs on DeepSpeed's CPU accelerator instead (ACCELERATE_USE_CPU would make it plain DDP).

    >>> launch_env({}, "deepspeed-zero2").get("ACCELERATE_USE_CPU")
    """
    env = dict(os.environ if environ is None else environ)
    if _visible_gpus() == 0 and not (accelerate_config is not None and _is_deepspeed(accelerate_config)):
        env.setdefault("ACCELERATE_USE_CPU", "1")
    return env


def _is_deepspeed(accelerate_config: str | os.PathLike) -> bool:
    import yaml

    config = yaml.safe_load(resolve_accelerate_config(accelerate_config).read_text()) or {}
    return str(config.get("distributed_type", "")).upper() == "DEEPSPEED"


def relaunch(
    recipe: str | os.PathLike,
    overrides: Sequence[str],
    accelerate_config: str | os.PathLike,
    **kwargs: object,
) -> int:
    """Runs `launch_command(...)` (printing it first) and returns its exit status."""
    cmd = launch_command(recipe, overrides, accelerate_config, **kwargs)  # type: ignore[arg-type]
    env = launch_env(accelerate_config=accelerate_config)
    cpu = " (ACCELERATE_USE_CPU=1: no CUDA device)" if env.get("ACCELERATE_USE_CPU") == "1" else ""
    print(f"launching{cpu}: {shlex.join(cmd)}", flush=True)
    return subprocess.run(cmd, env=env).returncode
