"""Tasks, found by name in `mmdiff.registry.TASKS`: each turns examples into canvases."""

from mmdiff.tasks.text import TextTask, left_pad, right_pad

__all__ = ["TextTask", "left_pad", "right_pad"]
