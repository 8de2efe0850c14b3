"""What every simulator environment of `mmdiff.sim` shares: the checks before a step (an episode started, the
action's shape and values, the step limit) and freeing the simulator (`close`, or a `with` block).

>>> class Toy(SimEnv):
...     ACTION_DIM, ACTION_TEXT = 2, "hand xy"
>>> env = Toy()
>>> env._obs, env.steps, env.max_steps, env._env = {}, 0, 5, None
>>> env.checked_action([0.5, -1.0]).tolist()
[0.5, -1.0]
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

__all__ = ["SimEnv"]


class SimEnv:
    """Base of the seeded simulator environments (`MetaWorldEnv`, `LiberoEnv`): a subclass sets `ACTION_DIM`,
    `ACTION_TEXT` (what the action's values are, for errors) and, in its constructor, `_env` (the simulator, with a
    `close()`), `_obs` (None until `reset`), `steps` and `max_steps`."""

    ACTION_DIM: ClassVar[int]
    ACTION_TEXT: ClassVar[str]
    SIMULATOR: ClassVar[str] = "a simulator"
    _env: Any
    _obs: dict[str, Any] | None
    steps: int
    max_steps: int

    def checked_action(self, action: Any, dtype: Any = np.float32) -> np.ndarray:
        """`action` as an array of `dtype`, after checking that an episode runs and has steps left.

        Raises:
            RuntimeError: no `reset()` yet, or the episode reached `max_steps`.
            ValueError: an action of the wrong shape or with non-finite values.
        """
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=dtype)
        if action.shape != (self.ACTION_DIM,):
            raise ValueError(f"{self.SIMULATOR} action has shape ({self.ACTION_DIM},) ({self.ACTION_TEXT}), got "
                             f"{action.shape}; decode one step of the chunk per call")
        if not np.isfinite(action).all():
            raise ValueError(f"action has non-finite values: {action.tolist()}")
        if self.steps >= self.max_steps:
            raise RuntimeError(f"the episode ended after {self.max_steps} steps; call reset()")
        return action

    def close(self) -> None:
        """Frees the simulator and its renderer."""
        env = getattr(self, "_env", None)
        if env is not None:
            env.close()
            self._env = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
