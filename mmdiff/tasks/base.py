"""The task and pipeline contracts every task follows (text, VLM, text-to-image; ASR and VLA plug in the same way).

A `Task` is bound to a model and does three jobs on the one canvas every task shares (LLaDA, Nie et al. 2025; the
canvas of `mmdiff.canvas`): it builds training canvases (`training_canvas`; `collator(model)` is the trainer's
collate function), prompt canvases (`prompt_canvas`, what a sampler starts from) and decodes the sampled canvas
(`decode`). Its settings are a
dataclass (`options_class`) read from `ModelConfig.task_options[task.name]`.

A `Pipeline` owns a model, its task and the sampler (a name or object plus keyword options, resolved once) and runs
the loop once for every task (the shape of transformers' pipelines): inputs are cut into chunks of `batch_size`
(a progress bar when there is more than one, off with `progress=False`); each chunk is preprocessed into a prompt
canvas, sampled by `model.generate` and decoded.

New tasks register their `Task` subclass in `mmdiff.registry.TASKS` and name their pipeline class and pipeline names
(`pipeline_names`); `mmdiff.pipeline(name, model=...)` and the `mmdiff generate` command find them there, so neither
holds per-task code.

>>> from mmdiff.tasks import pipeline_task
>>> pipeline_task("text-generation").name, pipeline_task("image-text-to-text").name
('text', 'vlm')
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from mmdiff.canvas import Canvas
from mmdiff.dataclass_io import from_dict, positive_int  # positive_int: re-exported, the pipelines' flag type
from mmdiff.registry import TASKS

__all__ = ["Task", "Pipeline", "CLIContext", "build_pipeline", "pipeline_task", "pipeline_names", "positive_int"]


class Task:
    """A task bound to a model: training canvases, prompt canvases and decoding.

    Subclasses set `name` (the registry key and the key of their options in `ModelConfig.task_options`),
    `options_class` (a dataclass, or None for a task without options), `pipeline_class` and `pipeline_names`, and
    implement `training_canvas`, `prompt_canvas` and `decode`.

    >>> # task = VLMTask(model); canvas = task.prompt_canvas(images, question_ids)
    """

    name: ClassVar[str] = ""
    options_class: ClassVar[type | None] = None
    pipeline_class: ClassVar[type[Pipeline] | None] = None
    pipeline_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: Any) -> None:
        self.model = model
        self.options = self.read_options(model)

    @classmethod
    def read_options(cls, model: Any) -> Any:
        """The task's options dataclass from `model.config.task_options[cls.name]` (defaults where absent)."""
        if cls.options_class is None:
            return None
        data = dict((model.config.task_options or {}).get(cls.name, {}))
        return from_dict(cls.options_class, data, where=f"task_options.{cls.name}")

    @classmethod
    def carried_by(cls, model: Any) -> bool:
        """True when `model` is a model of this task or carries this task's options (e.g. MMaDA, a text model with
        `task_options["t2i"]`, also draws images)."""
        own = model.config.task in TASKS and TASKS.get(model.config.task) is cls
        return own or cls.name in (model.config.task_options or {})

    @classmethod
    def collator(cls, model: Any) -> Callable[[Sequence[Any]], Canvas]:
        """The trainer's collate function for `model`: examples -> one training canvas."""
        return cls(model).training_canvas

    def training_canvas(self, examples: Sequence[Any]) -> Canvas:
        """Training examples -> one canvas whose `maskable` positions are the targets."""
        raise NotImplementedError(f"task {self.name!r} does not build training canvases")

    def prompt_canvas(self, *inputs: Any, **options: Any) -> Canvas:
        """Preprocessed inputs of a batch -> the canvas a sampler starts from."""
        raise NotImplementedError(f"task {self.name!r} does not build prompt canvases")

    def decode(self, prompt: Canvas, out: Tensor, **context: Any) -> list[Any]:
        """The sampled canvas (B, L) of `prompt` -> one output per row."""
        raise NotImplementedError(f"task {self.name!r} does not decode outputs")


def pipeline_names() -> dict[str, type[Task]]:
    """Every pipeline name (and every task name with a pipeline) -> its task class."""
    names: dict[str, type[Task]] = {}
    for key in TASKS.list():
        cls = TASKS.get(key)
        if getattr(cls, "pipeline_class", None) is not None:
            for name in (cls.name, *cls.pipeline_names):
                names.setdefault(name, cls)
    return names


def pipeline_task(name: str) -> type[Task]:
    """The task class whose pipeline is called `name` ("text-generation", "vlm", "text-to-image", ...).

    Raises:
        ValueError: no task has a pipeline of that name (names the known ones).
    """
    names = pipeline_names()
    if name not in names:
        known = ", ".join(sorted(names)) or "(none)"
        what = f"task {name!r} has no pipeline" if name in TASKS else f"unknown pipeline {name!r}"
        raise ValueError(f"{what}; tasks with one: {known}")
    return names[name]


def build_pipeline(name: str, model: Any, **options: Any) -> Pipeline:
    """The pipeline called `name` around a loaded `model`, which must be a model of the pipeline's task or carry that
    task's options in `config.task_options` (`mmdiff.pipeline` also accepts zoo names, hub ids and folders).

    Raises:
        ValueError: no task has a pipeline of that name, or the model neither is a model of that task nor carries
            its options.
    """
    cls = pipeline_task(name)
    if not cls.carried_by(model):
        raise ValueError(f"model {model.config.name!r} is a {model.config.task!r} model, not a {name!r} model, and "
                         f"its config.task_options hold no {cls.name!r} options; load a {name!r} model (or one whose "
                         f"converter writes task_options[{cls.name!r}])")
    return cls.pipeline_class(model, **options)


class CLIContext(Protocol):
    """What the `mmdiff generate` command hands a pipeline's `run_cli` (the command line's own helpers, so that no
    task imports the CLI): the parsed arguments and the shared steps."""

    args: argparse.Namespace

    def sampler_overrides(self) -> dict[str, Any]: ...  # the checkpoint defaults' overrides: preset, then flags

    def generate(self, ids: Tensor, mask: Tensor, **fixed: Any) -> Any: ...  # the command line's sampler call

    def read_prompts(self) -> list[str]: ...  # --prompt / --prompt-file, checked

    def data_source(self) -> Any: ...  # the model's own data source (config.task_options["data"])

    def seeded_generator(self) -> torch.Generator | None: ...  # --seed

    def error(self, message: str) -> Exception: ...  # a command-line error to raise


class Pipeline:
    """Model + task + sampler, and the batching loop every task shares: preprocess -> prompt canvas ->
    `model.generate` -> decode.

    Args:
        model: a `DiffusionModel` of the task (or one carrying its options).
        sampler: a sampler name in `mmdiff.registry.SAMPLERS` or a sampler object; None = the checkpoint's.
        batch_size: rows sampled at once; longer inputs run in chunks.
        progress: a progress bar over the chunks when there is more than one.
        **sampler_options: sampler keywords over the checkpoint's `sampler_config.json` (a call's own keywords win).

    Subclasses set `task_class` and implement `__call__` (turning the user's inputs into a list of items), `prepare`
    (one chunk -> prompt canvas + sampler keywords + decode context) and, when decoding needs more than the task's,
    `finish`.
    """

    task_class: ClassVar[type[Task]] = Task
    cli_flags: ClassVar[tuple[str, ...]] = ()  # `mmdiff generate` flags (argparse dests) only this pipeline reads
    cli_selector: ClassVar[str | None] = None  # a flag that picks this pipeline for a model of another task

    def __init__(self, model: Any, *, sampler: Any = None, batch_size: int = 64, progress: bool = True,
                 **sampler_options: Any) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model, self.batch_size, self.progress = model, batch_size, progress
        self.task = self.task_class(model)
        self.sampler = sampler
        self.generate_options = dict(sampler_options)

    @property
    def options(self) -> Any:
        """The task's options (`task.options`)."""
        return self.task.options

    def sampler_keywords(self, **call: Any) -> dict[str, Any]:
        """The keywords of one `model.generate` call: the pipeline's sampler and options, then the call's."""
        options = {**self.generate_options, **call}
        if self.sampler is not None and "sampler" not in options:
            options["sampler"] = self.sampler
        return options

    def run(self, items: Sequence[Any], **call: Any) -> list[Any]:
        """Runs `items` in chunks of `batch_size`: `prepare` -> `model.generate` -> `finish`, one output per item."""
        chunks = [list(items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        bar = None
        if self.progress and len(chunks) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc=type(self).__name__, unit="row")
        outputs: list[Any] = []
        try:
            for chunk in chunks:
                prompt, options, context = self.prepare(chunk, **call)
                out = self.generate(prompt, options)
                outputs += self.finish(prompt, out, **context)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return outputs

    def prepare(self, chunk: list[Any], **call: Any) -> tuple[Canvas, dict[str, Any], dict[str, Any]]:
        """One chunk of items -> (prompt canvas, `generate` keywords, decode context)."""
        raise NotImplementedError

    def generate(self, prompt: Canvas, options: dict[str, Any]) -> Tensor:
        """Samples the prompt canvas: (B, P) -> (B, L)."""
        return self.model.generate(prompt, **options)

    def finish(self, prompt: Canvas, out: Tensor, **context: Any) -> list[Any]:
        """Decodes a sampled chunk (the task's `decode`)."""
        return self.task.decode(prompt, out, **context)

    # ------------------------------------------------------------------------------------------ command line
    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Adds the `mmdiff generate` flags this pipeline reads (those in `cli_flags`)."""

    @classmethod
    def run_cli(cls, model: Any, cli: CLIContext) -> int:
        """Runs `mmdiff generate` for `model`; returns the exit status."""
        raise cli.error(f"the {cls.task_class.name!r} task has no command-line generation")

