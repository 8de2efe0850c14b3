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

    Args:
        task: a task name in `TASKS` that has a pipeline ("vlm"; "text-to-image", also called "t2i").
        model: what `create_model` loads, or a model.
        options: the pipeline's options (e.g. sampler keywords, `batch_size`).

    >>> # answer = mmdiff.pipeline("vlm", model="mnist-grid-vlm")(image, "is there a seven?")
    """
    cls = TASKS.get(task)
    if not hasattr(cls, "pipeline"):
        with_pipeline = [name for name in TASKS.list() if hasattr(TASKS.get(name), "pipeline")]
        raise ValueError(f"task {task!r} has no pipeline; tasks with one: {with_pipeline}")
    if isinstance(model, str):
        from mmdiff.zoo import create_model

        model = create_model(model)
    if TASKS.get(model.config.task) is not cls:
        raise ValueError(f"model {model.config.name!r} is a {model.config.task!r} model, not a {task!r} model")
    return cls.pipeline(model, **options)
