"""Tasks, found by name in `mmdiff.registry.TASKS`: each is a `Task` (training canvases, prompt canvases, decoding)
with a `Pipeline` found by its pipeline names (`pipeline_task`); `mmdiff.pipeline(name, model=...)` builds one."""

from mmdiff.tasks.asr import ASROptions, ASRPipeline, ASRTask
from mmdiff.tasks.base import CLIContext, Pipeline, Task, build_pipeline, pipeline_names, pipeline_task
from mmdiff.tasks.t2i import T2IOptions, T2IPipeline, T2ITask
from mmdiff.tasks.text import TextGenerationPipeline, TextTask, left_pad, right_pad
from mmdiff.tasks.vla import VLAOptions, VLAPolicy, VLATask
from mmdiff.tasks.vlm import VLMOptions, VLMPipeline, VLMTask

__all__ = [
    "Task", "Pipeline", "CLIContext", "build_pipeline", "pipeline_task", "pipeline_names",
    "TextTask", "TextGenerationPipeline", "VLMTask", "VLMOptions", "VLMPipeline",
    "T2ITask", "T2IOptions", "T2IPipeline", "ASRTask", "ASROptions", "ASRPipeline", "VLATask", "VLAOptions",
    "VLAPolicy",
    "left_pad", "right_pad",
]
