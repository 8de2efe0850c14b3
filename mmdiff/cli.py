"""The `mmdiff` command line: list and inspect zoo entries, generate, train and evaluate.

    mmdiff list [PATTERN ...]               zoo entries: name, task, params, weights, key metric
    mmdiff info NAME                        a zoo card (all fields) and the core config
    mmdiff generate NAME --prompt TEXT      sample answers (LLaDA-style masked diffusion, Nie et al. 2025)
    mmdiff train CONFIG.yaml [--a.b=v ...]  train from a recipe (overrides are dotted keys)
    mmdiff eval NAME [--split val]          the model's task metrics on its own data source, as JSON

Errors in the input (unknown names, bad files, bad options) print one `mmdiff: error: ...` message and exit with
status 2; set MMDIFF_DEBUG=1 to see the traceback instead.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _load_model(name: str, device: str = "cpu", dtype: str | None = None) -> Any:
    from mmdiff.zoo import create_model

    return create_model(name, device=_resolve_device(device), dtype=dtype)


def _sampler_overrides(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """A card preset (`--preset`) then the explicit sampler flags, over the checkpoint's defaults."""
    overrides: dict[str, Any] = {}
    preset = getattr(args, "preset", None)
    if preset:
        card = getattr(model, "card", None)
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


def _encode_prompts(model: Any, prompts: list[str]) -> tuple[Any, Any]:
    """Tokenizes and left-pads prompts: (B, P) ids and (B, P) attention mask (True at real tokens)."""
    import torch

    from mmdiff.tasks.text import left_pad

    rows = [torch.tensor(ids, dtype=torch.long) for ids in model.encode(prompts)]
    for prompt, row in zip(prompts, rows, strict=True):
        if row.numel() == 0:
            raise CLIError(f"prompt {prompt!r} encodes to no tokens; give it some text")
    pad = model.vocab.pad_id if model.vocab.pad_id is not None else model.vocab.mask_id
    return left_pad(rows, pad)


def _generate(model: Any, ids: Any, mask: Any, args: argparse.Namespace, **fixed: Any) -> Any:
    """Runs the sampler with the checkpoint defaults, the preset, the flags, then `fixed`; returns (B, L + gen)."""
    overrides = {**_sampler_overrides(args, model), **fixed}
    device = model.device
    generator = _seeded_generator(args.seed, device)
    if generator is not None and _sampler_accepts(model, "generator", overrides):
        overrides["generator"] = generator
    attention = mask.to(device) if not bool(mask.all()) else None
    return model.generate(ids.to(device), attention, **overrides)


def cmd_generate(args: argparse.Namespace) -> int:
    model = _load_model(args.name, args.device, args.dtype)
    if model.config.task == "vlm":
        return _answer_images(model, args)
    if model.config.task == "t2i" or args.images:
        return _generate_images(model, args)
    if args.image:
        raise CLIError(f"--image needs a VLM; {args.name} is a {model.config.task!r} model")
    if args.problems:
        return _generate_problems(model, args)
    prompts = _read_prompts(args)
    if args.chat:
        try:
            prompts = [model.chat_prompt(p) for p in prompts]
        except ValueError as err:
            raise CLIError(str(err)) from err
    ids, mask = _encode_prompts(model, prompts)
    show = args.show or args.show_png
    out = _generate(model, ids, mask, args, **({"return_history": True} if show else {}))
    if show:
        _show_trajectories(model, out, mask, args)
        out = out.sequences
    answers = [model.decode(row[ids.shape[1] :]) for row in out.cpu()]
    if args.json:
        print(json.dumps([{"prompt": p, "answer": a} for p, a in zip(prompts, answers, strict=True)], indent=2))
        return 0
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        if i:
            print("-" * 40)
        print(prompt + answer)
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


def _pick(dataset: Any, n: int, seed: int | None) -> list[Any]:
    """`n` examples of a dataset: a seeded random choice from a map-style dataset, else the first `n`."""
    import torch

    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        generator = torch.Generator().manual_seed(seed or 0)
        order = torch.randperm(len(dataset), generator=generator)[:n].tolist()
        return [dataset[i] for i in order]
    return [example for example, _ in zip(dataset, range(n), strict=False)]


def _generate_problems(model: Any, args: argparse.Namespace) -> int:
    """Samples problems of the model's data source, masks their targets, fills them in (infilling, so targets may
    sit anywhere on the canvas) and compares the filled canvas with the reference."""
    from mmdiff.tasks.text import left_pad

    examples = _pick(_data_source(model).dataset(args.split, model.vocab), args.problems, args.seed)
    if any(bool(ex["maskable"].all()) for ex in examples):
        raise CLIError("these problems have no prompt (every position is a target); use --prompt instead")
    mask_id = model.vocab.mask_id
    canvases = [ex["ids"].masked_fill(ex["maskable"].bool(), mask_id) for ex in examples]
    pad = model.vocab.pad_id if model.vocab.pad_id is not None else mask_id
    ids, attention = left_pad(canvases, pad)
    out = _generate(model, ids, attention, args, gen_length=0, infill=True).cpu()
    results = []
    for ex, canvas, row, keep in zip(examples, canvases, out, attention, strict=True):
        answer, truth = model.decode(row[keep], stop_at_eos=False), model.decode(ex["ids"], stop_at_eos=False)
        results.append({"prompt": _render_masked(model, canvas), "answer": answer, "reference": truth,
                        "exact": answer == truth})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for i, r in enumerate(results):
        print(f"problem {i + 1}: {r['prompt']}\n  answer:    {r['answer']}\n  reference: {r['reference']}"
              f"\n  {'correct' if r['exact'] else 'wrong'}")
    print(f"exact match: {sum(r['exact'] for r in results)}/{len(results)}")
    return 0


def _answer_images(model: Any, args: argparse.Namespace) -> int:
    """VLM: answers --prompt questions about --image files, or (--problems N) questions about N held-out images of
    the model's data source, shown in the terminal with the true answers."""
    from mmdiff.tasks import pipeline

    pipe = pipeline("vlm", model, **_sampler_overrides(args, model))
    if args.problems:
        return _answer_problems(model, pipe, args)
    if not args.image:
        raise CLIError("a VLM needs --image FILE (repeatable) and --prompt QUESTION (one, or one per image), or "
                       "--problems N")
    questions = _read_prompts(args)
    if len(questions) == 1:
        questions = questions * len(args.image)
    if len(questions) != len(args.image):
        raise CLIError(f"got {len(args.image)} images and {len(questions)} questions; give one question, or one "
                       "per image")
    answers = pipe(list(args.image), questions)
    rows = [{"image": i, "question": q, "answer": a} for i, q, a in zip(args.image, questions, answers, strict=True)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['image']}: {r['question']} -> {r['answer']}")
    return 0


def _generate_images(model: Any, args: argparse.Namespace) -> int:
    """Text-to-image: `--num-images` images for each --prompt caption (default: one caption per class of the
    model's data source), saved as one PNG grid (`--out`; a row per prompt) and shown in the terminal."""
    from mmdiff.tasks import pipeline
    from mmdiff.viz import ascii_image, image_grid

    overrides = _sampler_overrides(args, model)
    steps, scale = overrides.pop("steps", None), overrides.pop("cfg_scale", None)
    if args.prompt or args.prompt_file:
        prompts = _read_prompts(args)
    else:
        source = _data_source(model)
        if not hasattr(source, "captions_for_labels"):
            raise CLIError("give --prompt TEXT (repeatable): this model's data source has no default captions")
        prompts = source.captions_for_labels(range(10))
    pipe = pipeline("text-to-image", model, **overrides)
    per_prompt = args.num_images
    size = {k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None}
    images = pipe([p for p in prompts for _ in range(per_prompt)], num_inference_steps=steps, guidance_scale=scale,
                  generator=_seeded_generator(args.seed, model.device), **size)
    out = Path(args.out or "t2i.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, columns=per_prompt, scale=2).save(out)
    if args.json:
        print(json.dumps({"prompts": prompts, "images_per_prompt": per_prompt, "grid": str(out)}, indent=2))
        return 0
    for i, prompt in enumerate(prompts):
        print(f"{prompt}:\n{ascii_image(images[i * per_prompt], width=images[0].width)}")
    print(f"saved {len(images)} images ({len(prompts)} prompts x {per_prompt}) to {out}")
    return 0


def _answer_problems(model: Any, pipe: Any, args: argparse.Namespace) -> int:
    import random

    from mmdiff.viz import ascii_image

    source = _data_source(model)
    examples = source.examples(args.split, None if args.split == "val" else args.problems)
    picked = random.Random(args.seed or 0).sample(examples, min(args.problems, len(examples)))
    results = []
    for ex in picked:
        asked = source.questions_about(ex, seed=args.seed or 0) if hasattr(source, "questions_about") else [ex]
        answers = pipe([ex["image"]] * len(asked), [q["question"] for q in asked])
        results.append({"image": ex["image"], "qa": [{"question": q["question"], "answer": a, "reference": q["answer"],
                                                      "exact": _same_answer(a, q["answer"])}
                                                     for q, a in zip(asked, answers, strict=True)]})
    qa = [item for r in results for item in r["qa"]]
    if args.json:
        print(json.dumps([r["qa"] for r in results], indent=2))
        return 0
    for i, r in enumerate(results):
        print(f"image {i + 1}:\n{ascii_image(r['image'])}")
        for item in r["qa"]:
            mark = "correct" if item["exact"] else f"wrong (reference: {item['reference']})"
            print(f"  {item['question']} -> {item['answer']}   {mark}")
    print(f"exact match: {sum(item['exact'] for item in qa)}/{len(qa)}")
    return 0


def _same_answer(answer: str, reference: str) -> bool:
    """Exact match after normalising case and whitespace."""
    return "".join(answer.lower().split()) == "".join(reference.lower().split())


def _show_trajectories(model: Any, history: Any, prompt_mask: Any, args: argparse.Namespace) -> None:
    """Prints each row's denoising trajectory (to stderr when --json keeps stdout for JSON) and writes the PNGs."""
    import torch

    from mmdiff.sampling import SamplerOutput
    from mmdiff.viz import trajectory_png, trajectory_text

    B, P = prompt_mask.shape
    hidden = {i for i in (model.vocab.pad_id, model.vocab.mask_id) if i is not None}

    def token_text(i: int) -> str:
        return "" if i in hidden else model.tokenizer.decode([i])

    answer = torch.ones(history.sequences.shape[1] - P, dtype=torch.bool)
    for row in range(B):
        keep = torch.cat([prompt_mask[row].cpu().bool(), answer])  # drop the left padding
        single = SamplerOutput(history.sequences[row : row + 1, keep].cpu(),
                               history.commit_step[row : row + 1, keep].cpu(), history.nfe)
        print(trajectory_text(single, 0, token_text), file=sys.stderr if args.json else sys.stdout)
        if args.show_png:
            base = Path(args.show_png)
            base = base if base.suffix else base.with_suffix(".png")
            path = base if B == 1 else base.with_name(f"{base.stem}-{row + 1}{base.suffix}")
            trajectory_png(single, 0, path, token_text, title=f"{args.name}: prompt {row + 1}")
            print(f"trajectory written to {path}", file=sys.stderr)


def _render_masked(model: Any, canvas: Any) -> str:
    """The text of a canvas with one "_" per masked position (given runs decoded as text)."""
    mask_id, parts, run = model.vocab.mask_id, [], []
    for token in canvas.tolist() + [None]:
        if (token == mask_id or token is None) and run:
            parts.append(model.decode(run, stop_at_eos=False))
            run = []
        if token == mask_id:
            parts.append("_")
        elif token is not None:
            run.append(token)
    return "".join(parts)


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


def cmd_eval(args: argparse.Namespace) -> int:
    model = _load_model(args.name, args.device, args.dtype)
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
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="zoo name, checkpoint folder or hub repo id (org/name)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="parameter dtype, e.g. bfloat16 (default: float32)")


def _add_sampler_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampler (defaults: the checkpoint's sampler_config.json)")
    g.add_argument("--gen-length", type=_positive_int, help="answer length in tokens")
    g.add_argument("--steps", type=_positive_int, help="denoising steps")
    g.add_argument("--block-length", type=_positive_int, help="semi-autoregressive block length")
    g.add_argument("--temperature", type=float, help="0 = greedy")
    g.add_argument("--sampler", help="sampler name (see mmdiff.registry.SAMPLERS), e.g. llada or dream")
    g.add_argument("--remasking", help="commit order: low_confidence, margin, entropy or random")
    g.add_argument("--threshold", type=float, help="commit every token more confident than this (parallel decoding)")
    g.add_argument("--factor", type=float, help="Fast-dLLM factor rule for parallel decoding")
    g.add_argument("--cache", choices=["prefix", "dual", "delayed"],
                   help="key/value cache: Fast-dLLM prefix or dual (refreshed per block), or delayed (dual cache "
                        "without the refresh, decoded tokens cached one step later)")
    g.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (0 = off)")
    g.add_argument("--top-k", type=_positive_int, help="sample only among the k most probable tokens")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass")
    g.add_argument("--eos-early-stop", action="store_true", default=None, help="finish a row at its first EOS")
    g.add_argument("--preset", help="a sampler preset of the zoo card (see `mmdiff info NAME`)")
    g.add_argument("--seed", type=int, help="random seed, for reproducible sampling")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of `mmdiff`."""
    parser = argparse.ArgumentParser(prog="mmdiff", description="mmdiff: a multimodal masked-diffusion model zoo")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list zoo entries")
    p.add_argument("pattern", nargs="*", help="fnmatch pattern(s), e.g. '*sums*' (default: all)")
    p.add_argument("--pretrained", action="store_true", help="only entries whose weights load offline now")

    p = sub.add_parser("info", help="show a zoo card and its model config")
    p.add_argument("name", help="zoo name or checkpoint folder")

    p = sub.add_parser("generate", help="generate answers to prompts")
    _add_model_flags(p)
    p.add_argument("--prompt", action="append", help="prompt text (repeat for a batch); a VLM's question")
    p.add_argument("--image", action="append", help="VLM: an image file to ask about (repeat for a batch)")
    p.add_argument("--images", action="store_true",
                   help="draw images with a model of another task that also holds text-to-image options (MMaDA)")
    p.add_argument("--num-images", type=_positive_int, default=1, help="text-to-image: images per prompt")
    p.add_argument("--height", type=_positive_int, help="text-to-image: image height in pixels (default: the model's)")
    p.add_argument("--width", type=_positive_int, help="text-to-image: image width in pixels (default: the model's)")
    p.add_argument("--out", help="text-to-image: PNG file for the grid of images (default: t2i.png)")
    p.add_argument("--prompt-file", help="a file with one prompt per line")
    p.add_argument("--problems", type=_positive_int, help="solve N held-out problems of the model's data source")
    p.add_argument("--split", default="val", help="data split for --problems (default: val)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--chat", action="store_true",
                   help="wrap each prompt as a user turn with the model's chat template (instruct models)")
    p.add_argument("--show", action="store_true",
                   help="print the denoising trajectory: each token coloured by the step that committed it")
    p.add_argument("--show-png", metavar="PATH",
                   help="also write the trajectory as a PNG heat map (PATH-1.png, PATH-2.png, ... for a batch)")
    _add_sampler_flags(p)

    p = sub.add_parser("train", help="train from a recipe: mmdiff train CONFIG.yaml [--section.key=value ...]")
    p.add_argument("config", help="recipe YAML (see configs/)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming from out_dir")
    p.add_argument("--max-steps", type=_positive_int, help="stop after this many steps (the schedule is unchanged)")

    sub.add_parser("harness", add_help=False,
                   help="lm-eval on local tasks: mmdiff harness --model_args model=NAME --include_path DIR --tasks T "
                        "(lm-eval's arguments; needs pip install 'mmdiff[eval]')")
    p = sub.add_parser("eval", help="task metrics of a model on its own data source, as JSON")
    _add_model_flags(p)
    p.add_argument("--split", default="val", help="data split (default: val)")
    p.add_argument("--limit", type=_positive_int, help="evaluate at most N examples (default: the data source's)")
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
        return {"list": cmd_list, "info": cmd_info, "generate": cmd_generate, "eval": cmd_eval}[args.command](args)
    except SystemExit as exit_:  # argparse errors and --help
        return exit_.code if isinstance(exit_.code, int) else 2
    except BrokenPipeError:  # `mmdiff list | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        if os.environ.get("MMDIFF_DEBUG"):
            raise
        print(f"mmdiff: error: {_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
