"""Headless MuJoCo rendering for the simulators (Meta-World, LIBERO): `prepare_headless_rendering()` runs before a
simulator package is imported.

MuJoCo renders through EGL unless `MUJOCO_GL` says otherwise. triton (when installed) is imported first: Mesa's EGL
loads the system's LLVM, and triton's own LLVM loaded after it crashes the process (a segfault in `import triton`,
which torch runs lazily, e.g. at the first `torch._dynamo` use after a frame was rendered).
"""

from __future__ import annotations

import importlib.util
import os

__all__ = ["prepare_headless_rendering"]


def prepare_headless_rendering() -> None:
    """Sets `MUJOCO_GL=egl` unless it is set, and imports triton (when installed) before any EGL context exists."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401
