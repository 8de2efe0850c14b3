"""Tasks, found by name in `mmdiff.registry.TASKS`: each turns examples into canvases (`collator(model)`), and
tasks that answer inputs end to end give a pipeline (`mmdiff.pipeline(task, model=...)`)."""

from typing import Any

from mmdiff.registry import TASKS
from mmdiff.tasks.t2i import T2IPipeline, T2ITask
from mmdiff.tasks.text import TextTask, left_pad, right_pad
from mmdiff.tasks.vlm import VLMPipeline, VLMTask

__all__ = ["TextTask", "VLMTask", "VLMPipeline", "T2ITask", "T2IPipeline", "left_pad", "right_pad", "pipeline"]


def pipeline(task: str, model: Any, **options: Any) -> Any:
    """A callable that runs `task` end to end with `model` (a zoo name, hub id, folder or a `DiffusionModel`).

    The model is a `task` model, or a model of another task whose `config.task_options` holds this task's options
    (e.g. MMaDA, loaded for text by its zoo card, carries `task_options["t2i"]` and draws images too).

    Args:
        task: a task name in `TASKS` that has a pipeline ("vlm"; "text-to-image", also called "t2i").
        model: what `create_model` loads, or a model.
        options: the pipeline's options (e.g. sampler keywords, `batch_size`).

    Raises:
        ValueError: the task has no pipeline, or the model neither is a `task` model nor carries its options.

    >>> # answer = mmdiff.pipeline("vlm", model="mnist-grid-vlm")(image, "is there a seven?")
    >>> # images = mmdiff.pipeline("text-to-image", model="mmada-8b-base")("a red bus")
    """
    cls = TASKS.get(task)
    if not hasattr(cls, "pipeline"):
        with_pipeline = [name for name in TASKS.list() if hasattr(TASKS.get(name), "pipeline")]
        raise ValueError(f"task {task!r} has no pipeline; tasks with one: {with_pipeline}")
    if isinstance(model, str):
        from mmdiff.zoo import create_model

        model = create_model(model)
    key = getattr(cls, "name", task)  # the key of the task's options in ModelConfig.task_options
    if TASKS.get(model.config.task) is not cls and key not in (model.config.task_options or {}):
        raise ValueError(f"model {model.config.name!r} is a {model.config.task!r} model, not a {task!r} model, and "
                         f"its config.task_options hold no {key!r} options; load a {task!r} model (or one whose "
                         f"converter writes task_options[{key!r}])")
    return cls.pipeline(model, **options)
