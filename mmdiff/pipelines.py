"""`mmdiff.pipeline(name, model=...)`: the user-facing factory of task pipelines (the shape of transformers'
`pipeline`). It sits above the tasks and the zoo: a model may be given by zoo name, hub id or folder, and the
pipeline is found through the task registry (`mmdiff.tasks.pipeline_task`), never by task-specific code.
"""

from __future__ import annotations

from typing import Any

from mmdiff.tasks import Pipeline, build_pipeline, pipeline_task

__all__ = ["pipeline"]


def pipeline(task: str, model: Any, **options: Any) -> Pipeline:
    """A callable that runs `task` end to end with `model` (a zoo name, hub id, folder or a `DiffusionModel`).

    The model is a model of the pipeline's task, or a model of another task whose `config.task_options` holds this
    task's options (e.g. MMaDA, loaded for text by its zoo card, carries `task_options["t2i"]` and draws images too).

    Args:
        task: a pipeline name: "text-generation" (also "text"), "vlm" (also "image-text-to-text"),
            "text-to-image" (also "t2i"), "automatic-speech-recognition" (also "asr"), "vla" (also "robotics": a
            robot policy, `mmdiff.tasks.vla.VLAPolicy`).
        model: what `create_model` loads, or a model.
        options: the pipeline's options (`sampler`, sampler keywords, `batch_size`, `progress`).

    Raises:
        ValueError: no task has a pipeline of that name, or the model neither is a model of that task nor carries
            its options.

    >>> # text = mmdiff.pipeline("text-generation", model="shakespeare-tiny")("ROMEO.")
    >>> # answer = mmdiff.pipeline("vlm", model="mnist-grid-vlm")(image, "is there a seven?")
    >>> # images = mmdiff.pipeline("text-to-image", model="mmada-8b-base")("a red bus")
    >>> # transcripts = mmdiff.pipeline("asr", model=folder)(["a.wav", {"raw": samples, "sampling_rate": 8000}])
    >>> # action = mmdiff.pipeline("vla", model=folder).select_action(observation)
    """
    if isinstance(model, str):
        from mmdiff.zoo import create_model

        pipeline_task(task)  # an unknown pipeline name fails before a model is loaded
        model = create_model(model)
    return build_pipeline(task, model, **options)
