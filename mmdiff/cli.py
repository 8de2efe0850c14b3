"""The `mmdiff` command line: list and inspect zoo entries, generate, train and evaluate.

    mmdiff list [PATTERN ...]               zoo entries: name, task, params, weights, key metric
    mmdiff info NAME                        a zoo card (all fields) and the core config
    mmdiff generate NAME --prompt TEXT      sample answers (LLaDA-style masked diffusion, Nie et al. 2025)
    mmdiff transcribe NAME FILE ...         speech to text with an ASR model (one line per file)
    mmdiff transcribe NAME --references DIR transcribe reference clips: reference vs output, WER and CER
    mmdiff train CONFIG.yaml [--a.b=v ...]  train from a recipe (overrides are dotted keys)
    mmdiff eval NAME [--split val]          the model's task metrics on its own data source, as JSON
    mmdiff eval vla NAME --task T           a policy's success rate over seeded episodes in its simulator

`generate` holds no per-task code: it finds the model's task in `mmdiff.registry.TASKS` (or the task a selector flag
such as `--images` picks) and runs its pipeline's `run_cli`; each pipeline adds the flags it reads
(`add_cli_arguments`).

Errors in the input (unknown names, bad files, bad options) print one `mmdiff: error: ...` message and exit with
status 2; set MMDIFF_DEBUG=1 to see the traceback instead.

Start-up stays light: this module imports no torch and no model code at module level; each command imports what it
needs when it runs, and `generate`'s per-task flags are added when that subcommand is parsed or its help shown. So
`mmdiff list` (the zoo cards alone) and `mmdiff --help` answer without importing torch.

>>> main(["list", "*no-such-model*"])
name  task  params  weights  key metric
0
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmdiff.dataclass_io import positive_int

__all__ = ["main", "build_parser", "DATA_MODULES"]

# Modules that register data sources in `mmdiff.registry.DATASETS` when imported (tried first; then every
# other `mmdiff.data` module).
DATA_MODULES = ("mmdiff.data.shakespeare", "mmdiff.data.running_sums")
# `generate` / `eval` flags (argparse dests = sampler argument names) that override sampler_config.json.
SAMPLER_FLAGS = ("sampler", "gen_length", "steps", "block_length", "temperature", "remasking", "threshold", "factor",
                 "cache", "cfg_scale", "top_k", "top_p", "eos_early_stop")


class CLIError(ValueError):
    """Bad command-line input; reported as `mmdiff: error: ...` with exit status 2."""


# ------------------------------------------------------------------------------------------------- helpers
def _resolve_device(device: str) -> str:
    """`auto` -> cuda when a GPU is there, else cpu; a CUDA device this machine lacks is a CLI error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise CLIError(f"--device {device!r} is not a device torch knows ({err}); use cpu, cuda, cuda:N or auto") \
            from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: no CUDA GPU is available on this machine (torch.cuda.is_available() "
                           "is False); use --device cpu, or --device auto to take a GPU when there is one")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise CLIError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                           f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1}); pick one of them")
    return device


def _load_model(name: str, device: str = "cpu", dtype: str | None = None) -> Any:
    from mmdiff.zoo import create_model

    return create_model(name, device=_resolve_device(device), dtype=dtype)


def _sampler_overrides(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """A card preset (`--preset`) then the explicit sampler flags, over the checkpoint's defaults."""
    overrides: dict[str, Any] = {}
    preset = getattr(args, "preset", None)
    if preset:
        card = model.card
        presets = card.sampler if card is not None else {}
        if preset not in presets:
            known = ", ".join(presets) or "none (this model has no zoo card with presets)"
            raise CLIError(f"unknown sampler preset {preset!r}; known presets: {known}")
        overrides.update(presets[preset])
    overrides.update({k: getattr(args, k) for k in SAMPLER_FLAGS if getattr(args, k, None) is not None})
    return overrides


def _seeded_generator(seed: int | None, device: Any) -> Any:
    """Seeds torch and returns a generator for the sampler (None without a seed)."""
    if seed is None:
        return None
    import torch

    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def _sampler_accepts(model: Any, name: str, overrides: dict[str, Any]) -> bool:
    from mmdiff.registry import SAMPLERS

    return SAMPLERS.get(overrides.get("sampler", model.sampler_config.sampler)).accepts(name)


def _jsonable(value: Any) -> Any:
    """Tensors, numpy values and paths -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _format_metric(card: Any) -> str:
    metric = card.key_metric
    if metric is None:
        return "-"
    name, value = metric
    return f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"


# ------------------------------------------------------------------------------------------------- commands
def cmd_list(args: argparse.Namespace) -> int:
    from mmdiff.zoo import format_params, list_models, model_info

    names = list_models(args.pattern or "*", pretrained=args.pretrained)
    rows = []
    for name in names:
        card = model_info(name)
        weights = "shipped" if card.shipped else f"hub:{card.weights}"
        rows.append([name, card.task, format_params(card.params), weights, _format_metric(card)])
    print(_table(rows, ["name", "task", "params", "weights", "key metric"]))
    return 0


def _print_fields(title: str, data: dict[str, Any], indent: str = "") -> None:
    print(f"{indent}{title}:")
    width = max((len(k) for k in data), default=0)
    for key, value in data.items():
        if isinstance(value, dict) and value:
            _print_fields(key, value, indent + "  ")
        else:
            shown = "-" if value is None or value == {} or value == [] else value
            if isinstance(value, list) and value:
                shown = ", ".join(map(str, value))
            print(f"{indent}  {key.ljust(width)}  {shown}")


def cmd_info(args: argparse.Namespace) -> int:
    from mmdiff.hub import cached_checkpoint, hub_cache_dir, is_hub_id
    from mmdiff.io import load_json
    from mmdiff.modeling import CONFIG_NAME, SAMPLER_CONFIG_NAME
    from mmdiff.zoo import CARD_NAME, core_summary, list_models, load_card, model_info

    folder: Path | None
    if args.name in list_models():
        card = model_info(args.name)
        folder = card.folder if card.shipped else cached_checkpoint(card.weights, card.revision)
    elif Path(args.name).is_dir():
        folder = Path(args.name)
        card = load_card(folder) if (folder / CARD_NAME).is_file() else None
    elif is_hub_id(args.name):
        folder, card = cached_checkpoint(args.name), None
        if folder is None:
            raise FileNotFoundError(f"hub checkpoint {args.name!r} is not in the local hub cache {hub_cache_dir()}; "
                                    f"fetch it with `hf download {args.name}` (info never downloads)")
    else:
        model_info(args.name)  # raises KeyError with the closest names
        return 2
    if card is not None:
        _print_fields("card", card.to_dict())
    if folder is not None and (folder / CONFIG_NAME).is_file():
        _print_fields("config", core_summary(load_json(folder / CONFIG_NAME)))
        if (folder / SAMPLER_CONFIG_NAME).is_file():
            _print_fields("sampler defaults", load_json(folder / SAMPLER_CONFIG_NAME))
        print(f"checkpoint: {folder}")
    elif card is not None and not card.shipped:
        print(f"config: not in the local hub cache; `hf download {card.weights}` fetches it (or run generate online)")
    return 0


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file {path} not found")
        prompts += [line for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise CLIError("no prompt given: pass --prompt TEXT (repeatable), --prompt-file FILE or --problems N")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise CLIError(f"prompt {i + 1} is empty; give it some text")
    return prompts


def _generate(model: Any, ids: Any, mask: Any, args: argparse.Namespace, **fixed: Any) -> Any:
    """Runs the sampler with the checkpoint defaults, the preset, the flags, then `fixed`; returns (B, L + gen)."""
    overrides = {**_sampler_overrides(args, model), **fixed}
    device = model.device
    generator = _seeded_generator(args.seed, device)
    if generator is not None and _sampler_accepts(model, "generator", overrides):
        overrides["generator"] = generator
    attention = mask.to(device) if not bool(mask.all()) else None
    return model.generate(ids.to(device), attention, **overrides)


class _GenerateContext:
    """The command line's helpers as a task pipeline's `run_cli` sees them (`mmdiff.tasks.CLIContext`)."""

    def __init__(self, model: Any, args: argparse.Namespace) -> None:
        self.model, self.args = model, args

    def sampler_overrides(self) -> dict[str, Any]:
        return _sampler_overrides(self.args, self.model)

    def generate(self, ids: Any, mask: Any, **fixed: Any) -> Any:
        return _generate(self.model, ids, mask, self.args, **fixed)

    def read_prompts(self) -> list[str]:
        return _read_prompts(self.args)

    def data_source(self) -> Any:
        return _data_source(self.model)

    def seeded_generator(self) -> Any:
        return _seeded_generator(self.args.seed, self.model.device)

    def error(self, message: str) -> Exception:
        return CLIError(message)


def _pipeline_tasks() -> list[Any]:
    """The task classes that have a pipeline (each once), in registry order."""
    import mmdiff.tasks  # noqa: F401  (registers the built-in tasks)
    from mmdiff.tasks import pipeline_names

    return list(dict.fromkeys(pipeline_names().values()))


def _generate_task(model: Any, args: argparse.Namespace) -> Any:
    """The task whose pipeline runs `mmdiff generate`: the one a selector flag picks (e.g. --images), else the
    model's own; a flag only another task's pipeline reads is an error naming that task."""
    from mmdiff.registry import TASKS

    tasks = _pipeline_tasks()
    picked = [t for t in tasks if t.pipeline_class.cli_selector and getattr(args, t.pipeline_class.cli_selector)]
    if picked:
        task = picked[0]
    elif model.config.task in TASKS and TASKS.get(model.config.task) in tasks:
        task = TASKS.get(model.config.task)
    else:
        raise CLIError(f"{args.name} is a {model.config.task!r} model and its task has no pipeline; tasks with one: "
                       f"{', '.join(t.name for t in tasks)}")
    for other in tasks:
        foreign = [f for f in other.pipeline_class.cli_flags
                   if f not in task.pipeline_class.cli_flags and getattr(args, f, None) not in (None, False)]
        if foreign:
            flag = "--" + foreign[0].replace("_", "-")
            raise CLIError(f"{flag} needs a {other.name!r} model; {args.name} is a {model.config.task!r} model")
    return task


def cmd_generate(args: argparse.Namespace) -> int:
    model = _load_model(args.name, args.device, args.dtype)
    task = _generate_task(model, args)
    if not task.carried_by(model):
        raise CLIError(f"{args.name} is a {model.config.task!r} model and holds no {task.name!r} options "
                       f"(config.task_options[{task.name!r}]); use a {task.name!r} model")
    return task.pipeline_class.run_cli(model, _GenerateContext(model, args))


def cmd_transcribe(args: argparse.Namespace) -> int:
    """Transcribes audio files with the model's "automatic-speech-recognition" pipeline (found in the task registry):
    one line per file, `FILE<TAB>text`, or only the text when one file is given; --json prints [{"file", "text"}]."""
    from mmdiff.tasks import build_pipeline

    references = None
    if args.references is not None:
        from mmdiff.data.speech import read_clips

        references = read_clips(args.references)
        args.files = [*args.files, *(str(r["path"]) for r in references)]
    if not args.files:
        raise CLIError("give audio files to transcribe, or --references FOLDER (clips with their transcripts)")
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"no audio file at {', '.join(missing)}")
    model = _load_model(args.name, args.device, args.dtype)
    overrides = _sampler_overrides(args, model)
    pipe = build_pipeline("automatic-speech-recognition", model, batch_size=args.batch_size, progress=False,
                          **overrides)
    generator = _seeded_generator(args.seed, model.device)
    takes = generator is not None and _sampler_accepts(model, "generator", overrides)
    texts = pipe(list(args.files), **({"generator": generator} if takes else {}))
    if references is not None:
        return _print_against_references(args, texts, references)
    if args.json:
        print(json.dumps([{"file": f, "text": t} for f, t in zip(args.files, texts, strict=True)], indent=2))
    elif len(args.files) == 1:
        print(texts[0])
    else:
        for file, text in zip(args.files, texts, strict=True):
            print(f"{file}\t{text}")
    return 0


def _print_against_references(args: argparse.Namespace, texts: list[str], references: list[dict[str, Any]]) -> int:
    """`transcribe --references`: the given files one line each, then each reference clip's reference vs output and
    the WER / CER over the reference clips (numbers normalised on both sides, `mmdiff.data.speech`)."""
    from mmdiff.data.speech import transcript_errors

    given = len(args.files) - len(references)
    outputs = texts[given:]
    rates = transcript_errors([r["text"] for r in references], outputs)
    if args.json:
        print(json.dumps({"files": [{"file": f, "text": t} for f, t in zip(args.files[:given], texts, strict=False)],
                          "clips": [{"file": str(r["path"]), "kind": r.get("kind"), "reference": r["text"],
                                     "output": o} for r, o in zip(references, outputs, strict=True)], **rates},
                         indent=2))
        return 0
    for file, text in zip(args.files[:given], texts, strict=False):
        print(f"{file}\t{text}")
    for row, output in zip(references, outputs, strict=True):
        kind = f" ({row['kind']})" if row.get("kind") else ""
        print(f"{Path(row['path']).name}{kind}\n  reference: {row['text']}\n  output:    {output}")
    print("  ".join(f"{k.upper()} {v:.3f}" for k, v in rates.items()) + f" over {len(references)} clips")
    return 0


def _register_data_sources(name: str) -> dict[str, str]:
    """Imports the `mmdiff.data` modules (which register their sources) until `name` is registered.

    Returns the modules that failed to import, for the error message when `name` stays unknown.
    """
    import pkgutil

    import mmdiff.data as package
    from mmdiff.registry import DATASETS

    failures: dict[str, str] = {}
    for module in [*DATA_MODULES, *(f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__))]:
        if name in DATASETS:
            break
        try:
            importlib.import_module(module)
        except Exception as err:  # one broken module must not hide the others; reported if `name` stays unknown
            failures[module] = f"{type(err).__name__}: {err}"
    return failures


def _data_source(model: Any) -> Any:
    """Rebuilds the model's own data source from `config.task_options["data"]` = {"name", "options"}."""
    from mmdiff.registry import DATASETS

    spec = model.config.task_options.get("data")
    if not isinstance(spec, dict) or "name" not in spec:
        raise CLIError(
            f"model {model.config.name or ''} records no data source (config.json task_options['data'] = "
            "{'name': ..., 'options': ...}); only models trained from a recipe can rebuild theirs"
        )
    failures = _register_data_sources(spec["name"])
    if spec["name"] not in DATASETS:
        broken = f" (modules that failed to import: {failures})" if failures else ""
        raise KeyError(f"{DATASETS.unknown_message(spec['name'])}{broken}")
    return DATASETS.get(spec["name"])(**dict(spec.get("options") or {}))


def _overrides(extra: list[str]) -> list[str]:
    """`--section.key=value` / `--section.key value` arguments -> ["section.key=value", ...] for the recipe."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or len(arg) == 2 or arg[2] in "=.":
            raise CLIError(f"unrecognized argument {arg!r}; recipe overrides look like --section.key=value")
        if "=" in arg:
            out.append(arg[2:])
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            out.append(f"{arg[2:]}={extra[i + 1]}")
            i += 2
        else:
            raise CLIError(f"override {arg!r} has no value; write {arg}=VALUE")
    return out


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    import mmdiff.train as training

    path = training.resolve_recipe(args.config)  # a file, or a recipe shipped with mmdiff (configs/)
    config = training.load_train_config(path, _overrides(extra))
    multi = {"--num-processes": args.num_processes, "--num-machines": args.num_machines,
             "--machine-rank": args.machine_rank, "--main-process-ip": args.main_process_ip,
             "--main-process-port": args.main_process_port}
    stray = [flag for flag, value in multi.items() if value is not None]
    if stray and args.accelerate_config is None:
        raise CLIError(f"{', '.join(stray)} need(s) --accelerate-config NAME (ddp, fsdp, ...): mmdiff train then "
                       "relaunches itself through accelerate launch")
    if args.accelerate_config is not None:  # every process of `accelerate launch` runs this command without it
        from mmdiff.train.launch import relaunch

        flags = [*(["--no-resume"] if args.no_resume else []),
                 *([f"--max-steps={args.max_steps}"] if args.max_steps else [])]
        return relaunch(path.resolve(), extra, args.accelerate_config, num_processes=args.num_processes,
                        num_machines=args.num_machines, machine_rank=args.machine_rank,
                        main_process_ip=args.main_process_ip, main_process_port=args.main_process_port,
                        train_flags=flags)
    out = training.train(config, resume=not args.no_resume, max_steps=args.max_steps)
    if int(os.environ.get("RANK", "0")) == 0:  # one line, also under `accelerate launch`
        print(f"final model: {out}")
    return 0


def _evaluate_kwargs(source: Any, args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """Sampler flags, `--arg KEY=VALUE` items and `--seed`, checked against the source's `evaluate` signature."""
    import inspect

    from mmdiff.dataclass_io import parse_override_value

    kwargs = _sampler_overrides(args, model)
    for item in args.arg or []:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise CLIError(f"--arg {item!r} must look like KEY=VALUE, e.g. --arg tokens_per_step=2")
        kwargs[key] = parse_override_value(text)
    clash = [k for k in kwargs if k in ("model", "split", "limit")]
    if clash:
        raise CLIError(f"--arg cannot set {clash}; use --split and --limit")
    params = inspect.signature(source.evaluate).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if args.seed is not None and "seed" in params:
        kwargs.setdefault("seed", args.seed)
    named = [k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD][3:]
    unknown = [k for k in kwargs if k not in params]
    if unknown and not takes_any:
        raise CLIError(f"{type(source).__name__}.evaluate does not take {unknown}; it takes: "
                       f"{', '.join(named) or '(no options)'}")
    return kwargs


def _eval_target(args: argparse.Namespace) -> str | None:
    """`mmdiff eval [TASK] NAME`: the task word when two names are given (it must be a registered task), else None."""
    if args.model is None:
        return None
    import mmdiff.tasks  # noqa: F401  (registers the built-in tasks)
    from mmdiff.registry import TASKS

    task, args.name = args.name, args.model
    if task not in TASKS:
        raise CLIError(f"mmdiff eval [TASK] NAME: {task!r} is not a task ({TASKS.unknown_message(task)})")
    return task


def _policy_class(model: Any) -> Any:
    """The model's pipeline class when it is a policy (a pipeline with `select_action`), else None."""
    import mmdiff.tasks  # noqa: F401  (registers the built-in tasks)
    from mmdiff.registry import TASKS

    cls = TASKS.get(model.config.task).pipeline_class if model.config.task in TASKS else None
    return cls if cls is not None and callable(getattr(cls, "select_action", None)) else None


def cmd_eval_policy(model: Any, args: argparse.Namespace) -> int:
    """Closed-loop evaluation of a policy model: seeded episodes of each --task (default: the tasks of the model's
    data source) in the simulator, a progress bar per task, one line per task and the average success; a GIF of the
    first episode. Episodes start from the data source's held-out seeds when it has them (`candidate_seeds`;
    --seed S skips the first S), else from seeds S, S + 1, ..."""
    from mmdiff.evaluation.rollouts import average_success, evaluate_policy, format_results

    tasks = args.task
    if not tasks:
        source = _data_source(model)
        tasks = list(getattr(source, "tasks", None) or [])
        if not tasks:
            raise CLIError(f"{args.name}'s data source names no tasks; pass --task T (repeatable)")
    policy = _policy_class(model)(model, **_sampler_overrides(args, model))
    _seeded_generator(args.seed, model.device)
    episodes, first = args.episodes or 50, args.seed or 0
    seeds = None
    source = _data_source(model) if isinstance(model.config.task_options.get("data"), dict) else None
    if callable(getattr(source, "candidate_seeds", None)):  # the source's held-out starts, never in its training
        seeds = {t: source.candidate_seeds("val", t, first + episodes)[first:] for t in tasks}
    results = evaluate_policy(policy, tasks, episodes=episodes, seed=first, seeds=seeds,
                              num_envs=args.num_envs, max_steps=args.max_steps, gif=args.gif or None)
    print(format_results(results))
    if args.gif:
        print(f"rollout: {args.gif}")
    if args.output:
        from mmdiff.io import atomic_write

        text = json.dumps(_jsonable({"tasks": [r.to_dict() for r in results],
                                     "average_success": average_success(results)}), indent=2)
        atomic_write(args.output, lambda tmp: Path(tmp).write_text(text + "\n"))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    task = _eval_target(args)
    model = _load_model(args.name, args.device, args.dtype)
    if task is not None and task != model.config.task:
        raise CLIError(f"{args.name} is a {model.config.task!r} model, not a {task!r} model")
    if _policy_class(model) is not None:
        return cmd_eval_policy(model, args)
    policy_flags = [f for f in ("task", "episodes", "num_envs", "max_steps") if getattr(args, f) not in (None, 1)]
    if policy_flags:
        flag = "--" + policy_flags[0].replace("_", "-")
        raise CLIError(f"{flag} evaluates a robot policy in a simulator; {args.name} is a {model.config.task!r} model")
    source = _data_source(model)
    if not hasattr(source, "evaluate"):
        raise CLIError(f"data source {type(source).__name__} has no evaluate(model, split, limit) method")
    kwargs = _evaluate_kwargs(source, args, model)
    _seeded_generator(args.seed, model.device)
    result = _jsonable(source.evaluate(model, args.split, args.limit, **kwargs))
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        from mmdiff.io import atomic_write

        atomic_write(args.output, lambda tmp: Path(tmp).write_text(text + "\n"))
    return 0


# ------------------------------------------------------------------------------------------------- parser
class _Subcommand(argparse.ArgumentParser):
    """A subcommand's parser that adds its costly flags (`add_flags(parser)`, which may import torch and the tasks)
    only when it is used: when its arguments are parsed or its help or usage is printed."""

    def __init__(self, *args: Any, add_flags: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._add_flags = add_flags

    def _complete(self) -> None:
        if self._add_flags is not None:
            add, self._add_flags = self._add_flags, None
            add(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def _add_generate_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `mmdiff generate` that each task's pipeline reads, then the sampler flags."""
    for task in _pipeline_tasks():  # each task's pipeline adds the flags it reads
        task.pipeline_class.add_cli_arguments(p)
    _add_sampler_flags(p)


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="zoo name, checkpoint folder or hub repo id (org/name)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="parameter dtype, e.g. bfloat16 (default: float32)")


def _add_sampler_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampler (defaults: the checkpoint's sampler_config.json)")
    g.add_argument("--gen-length", type=positive_int, help="answer length in tokens")
    g.add_argument("--steps", type=positive_int, help="denoising steps")
    g.add_argument("--block-length", type=positive_int, help="semi-autoregressive block length")
    g.add_argument("--temperature", type=float, help="0 = greedy")
    g.add_argument("--sampler", help="sampler name (see mmdiff.registry.SAMPLERS), e.g. llada or dream")
    g.add_argument("--remasking", help="commit order: low_confidence, margin, entropy or random")
    g.add_argument("--threshold", type=float, help="commit every token more confident than this (parallel decoding)")
    g.add_argument("--factor", type=float, help="Fast-dLLM factor rule for parallel decoding")
    g.add_argument("--cache", choices=["prefix", "dual", "delayed"],
                   help="key/value cache: Fast-dLLM prefix or dual (refreshed per block), or delayed (dual cache "
                        "without the refresh, decoded tokens cached one step later)")
    g.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (0 = off)")
    g.add_argument("--top-k", type=positive_int, help="sample only among the k most probable tokens")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass")
    g.add_argument("--eos-early-stop", action="store_true", default=None, help="finish a row at its first EOS")
    g.add_argument("--preset", help="a sampler preset of the zoo card (see `mmdiff info NAME`)")
    g.add_argument("--seed", type=int, help="random seed, for reproducible sampling")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of `mmdiff`."""
    parser = argparse.ArgumentParser(prog="mmdiff", description="mmdiff: a multimodal masked-diffusion model zoo")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Subcommand)

    p = sub.add_parser("list", help="list zoo entries")
    p.add_argument("pattern", nargs="*", help="fnmatch pattern(s), e.g. '*sums*' (default: all)")
    p.add_argument("--pretrained", action="store_true", help="only entries whose weights load offline now")

    p = sub.add_parser("info", help="show a zoo card and its model config")
    p.add_argument("name", help="zoo name or checkpoint folder")

    p = sub.add_parser("generate", help="generate answers to prompts", add_flags=_add_generate_flags)
    _add_model_flags(p)
    p.add_argument("--prompt", action="append", help="prompt text (repeat for a batch); a VLM's question")
    p.add_argument("--prompt-file", help="a file with one prompt per line")
    p.add_argument("--problems", type=positive_int, help="solve N held-out problems of the model's data source")
    p.add_argument("--split", default="val", help="data split for --problems (default: val)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("transcribe", help="transcribe audio files with an ASR model",
                       description="Transcribes each FILE (WAV, FLAC, OGG, MP3; any rate, mixed to mono) with the "
                                   "model's automatic-speech-recognition pipeline. Output: one line per file, "
                                   "FILE<TAB>transcript; with a single FILE only the transcript. Audio longer than "
                                   "the model's window is transcribed in overlapping windows and joined.")
    _add_model_flags(p)
    p.add_argument("files", nargs="*", metavar="FILE", help="audio files")
    p.add_argument("--references", type=Path, metavar="FOLDER",
                   help="also transcribe the clips of FOLDER (its transcripts.tsv, as mmdiff.data.speech.export_clips "
                        "writes it) and print each reference vs output, then the WER and CER")
    p.add_argument("--batch-size", type=positive_int, default=16, help="windows decoded at once (default: 16)")
    p.add_argument("--json", action="store_true", help='print JSON [{"file", "text"}] instead of text')
    _add_sampler_flags(p)

    p = sub.add_parser("train", help="train from a recipe: mmdiff train CONFIG.yaml [--section.key=value ...]")
    p.add_argument("config", help="recipe YAML (see configs/)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming from out_dir")
    p.add_argument("--max-steps", type=positive_int, help="stop after this many steps (the schedule is unchanged)")
    g = p.add_argument_group("several processes (accelerate launch with a config of configs/accelerate/)")
    g.add_argument("--accelerate-config", metavar="NAME",
                   help="ddp, fsdp, deepspeed-zero2, deepspeed-zero3 or an accelerate config file: relaunch through "
                        "`accelerate launch --config_file ...` (the command is printed)")
    g.add_argument("--num-processes", type=positive_int,
                   help="processes over all machines (default: every visible GPU; required without CUDA)")
    g.add_argument("--num-machines", type=positive_int, help="machines (multi-node; default 1)")
    g.add_argument("--machine-rank", type=int, help="this machine's rank (multi-node)")
    g.add_argument("--main-process-ip", help="address of machine 0 (multi-node)")
    g.add_argument("--main-process-port", type=int, help="port of the main process (default: accelerate's, 29500)")

    sub.add_parser("harness", add_help=False,
                   help="lm-eval on local tasks: mmdiff harness --model_args model=NAME --include_path DIR --tasks T "
                        "(lm-eval's arguments; needs pip install 'mmdiff[eval]')")
    p = sub.add_parser("eval", help="task metrics of a model on its own data source, as JSON; a policy: success "
                                    "rates of seeded episodes in its simulator")
    _add_model_flags(p)
    p.add_argument("model", nargs="?", help="with two names (mmdiff eval TASK NAME): the model, TASK its task")
    g = p.add_argument_group("policies (closed-loop episodes in a simulator, e.g. mmdiff eval vla NAME --task reach)")
    g.add_argument("--task", action="append", help="a simulator task (repeatable; default: the data source's tasks)")
    g.add_argument("--episodes", type=positive_int, help="seeded episodes per task (default: 50)")
    g.add_argument("--num-envs", type=positive_int, default=1, help="environments stepped in lockstep (default: 1)")
    g.add_argument("--max-steps", type=positive_int, help="episode step limit (default: the simulator's)")
    g.add_argument("--gif", default="rollout.gif",
                   help="the first episode as an animated GIF (default: rollout.gif; '' for none)")
    p.add_argument("--split", default="val", help="data split (default: val)")
    p.add_argument("--limit", type=positive_int, help="evaluate at most N examples (default: the data source's)")
    p.add_argument("--output", help="also write the JSON to this file")
    p.add_argument("--arg", action="append", metavar="KEY=VALUE",
                   help="extra keyword argument of the data source's evaluate, e.g. tokens_per_step=2 (repeatable)")
    _add_sampler_flags(p)
    return parser


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)


def cmd_harness(extra: list[str]) -> int:
    """lm-eval's command line with the mmdiff model class registered (`--model mmdiff` by default)."""
    try:
        from mmdiff.harness import main as harness_main
    except ImportError as err:
        raise CLIError(str(err)) from err
    return harness_main(extra, prog="mmdiff harness") or 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `mmdiff` command line; returns the exit status (0 ok, 2 bad input).

    >>> main(["generate", "no-such-model", "--prompt", "hi"])  # doctest: +SKIP
    mmdiff: error: unknown zoo model 'no-such-model'. ...
    2
    """
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command not in ("train", "harness"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "train":
            return cmd_train(args, extra)
        if args.command == "harness":
            return cmd_harness(extra)
        commands = {"list": cmd_list, "info": cmd_info, "generate": cmd_generate, "transcribe": cmd_transcribe,
                    "eval": cmd_eval}
        return commands[args.command](args)
    except SystemExit as exit_:  # argparse errors and --help
        return exit_.code if isinstance(exit_.code, int) else 2
    except BrokenPipeError:  # `mmdiff list | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, KeyError, TypeError, FileNotFoundError, ImportError) as err:  # ImportError: a missing extra
        if os.environ.get("MMDIFF_DEBUG"):
            raise
        print(f"mmdiff: error: {_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
