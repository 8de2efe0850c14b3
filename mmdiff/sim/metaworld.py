"""Meta-World (Yu et al., 2019, "Meta-World: A Benchmark and Evaluation for Multi-Task and Meta Reinforcement
Learning"; the Farama Foundation's v3 release on MuJoCo) as a seeded simulator for vision-language-action policies,
with the benchmark's scripted expert policies (`metaworld.policies.Sawyer*V3Policy`) to record demonstrations.

One environment is one task (e.g. "drawer-open") with its goal position observable, as in the benchmark's MT1 setting.
Observations use lerobot's names:

    observation["observation.images.corner"]  uint8 (H, W, 3), upright (see below)
    observation["observation.state"]          float32 (39,): hand xyz, gripper opening, two objects' pose (14),
                                              the same 18 values one step earlier, goal xyz
    observation["task"]                       the task's English instruction, e.g. "open the drawer"

and an action is float32 (4,): hand displacement xyz and gripper effort, each in [-1, 1] (the simulator clips).

Seeding. `reset(seed)` draws the episode's initial object and goal positions (`initial_state`, Meta-World's
`rand_vec`) from a generator seeded with `seed` alone, so one seed always gives one initial state, on any machine
state and in any order. `step` is deterministic.

Images. MuJoCo renders a camera with its image "up" along the camera's y axis. Meta-World's fixed `corner` camera has
that axis pointing down in the world (`xyaxes="-1 1 0 -0.2 -0.2 -1"`), so its raw frames are upside down. A frame is
rotated by 180 degrees (both axes reversed) whenever the camera's y axis points below the horizon: that is the image
of the same camera rolled upright about its optical axis, not a mirror image (the robot stands on the right of the
table in the `corner` view, as it does in the world). Frames render headless with `MUJOCO_GL=egl`, set by default.

>>> env = make_env("drawer-open", seed=0, image_size=64)      # doctest: +SKIP
>>> obs = env.reset(seed=3)                                    # doctest: +SKIP
>>> expert = scripted_expert("drawer-open")                    # doctest: +SKIP
>>> obs, reward, terminated, truncated, info = env.step(expert(obs))  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmdiff.sim.base import SimEnv
from mmdiff.sim.rendering import prepare_headless_rendering

__all__ = [
    "ACTION_DIM",
    "INSTRUCTIONS",
    "MAX_STEPS",
    "STATE_DIM",
    "MetaWorldEnv",
    "ScriptedExpert",
    "instruction",
    "make_env",
    "parse_image_size",
    "resolve_task",
    "scripted_expert",
    "supported_tasks",
]

STATE_DIM, ACTION_DIM = 39, 4
MAX_STEPS = 500  # Meta-World's max_path_length: an episode is truncated after this many steps
INSTALL_HINT = "install it with `pip install \"mmdiff[robot]\"` (or `pip install metaworld packaging`)"

# task name (Meta-World's, without the "-v3" suffix) -> a short English instruction
INSTRUCTIONS: dict[str, str] = {
    "assembly": "put the ring on the peg",
    "basketball": "put the ball into the hoop",
    "bin-picking": "move the cube to the other bin",
    "box-close": "put the lid on the box",
    "button-press-topdown": "press the button from the top",
    "button-press-topdown-wall": "press the button behind the wall from the top",
    "button-press": "press the button",
    "button-press-wall": "press the button behind the wall",
    "coffee-button": "press the coffee machine button",
    "coffee-pull": "pull the mug away from the coffee machine",
    "coffee-push": "push the mug under the coffee machine",
    "dial-turn": "turn the dial",
    "disassemble": "take the ring off the peg",
    "door-close": "close the door",
    "door-lock": "lock the door",
    "door-open": "open the door",
    "door-unlock": "unlock the door",
    "hand-insert": "put the cube into the hole",
    "drawer-close": "close the drawer",
    "drawer-open": "open the drawer",
    "faucet-open": "turn the faucet on",
    "faucet-close": "turn the faucet off",
    "hammer": "hammer the nail into the wall",
    "handle-press-side": "press the handle down from the side",
    "handle-press": "press the handle down",
    "handle-pull-side": "pull the handle up from the side",
    "handle-pull": "pull the handle up",
    "lever-pull": "pull the lever up",
    "pick-place-wall": "pick up the cube and place it at the goal behind the wall",
    "pick-out-of-hole": "pick the peg out of the hole",
    "pick-place": "pick up the cube and place it at the goal",
    "plate-slide": "slide the plate into the goal",
    "plate-slide-side": "slide the plate into the goal from the side",
    "plate-slide-back": "slide the plate back out of the goal",
    "plate-slide-back-side": "slide the plate back out of the goal from the side",
    "peg-insert-side": "insert the peg into the hole from the side",
    "peg-unplug-side": "unplug the peg from the side",
    "soccer": "kick the ball into the goal",
    "stick-push": "push the bottle with the stick",
    "stick-pull": "pull the bottle with the stick",
    "push": "push the cube to the goal",
    "push-wall": "push the cube to the goal behind the wall",
    "push-back": "push the cube back to the goal",
    "reach": "reach the goal",
    "reach-wall": "reach the goal behind the wall",
    "shelf-place": "put the cube on the shelf",
    "sweep-into": "sweep the cube into the hole",
    "sweep": "sweep the cube off the table",
    "window-open": "open the window",
    "window-close": "close the window",
}


def supported_tasks() -> list[str]:
    """The 50 Meta-World task names, each with an instruction and a scripted expert.

    >>> len(supported_tasks()), supported_tasks()[:2]
    (50, ['assembly', 'basketball'])
    """
    return list(INSTRUCTIONS)


def resolve_task(task: str) -> str:
    """The canonical name of `task` ("drawer-open"; Meta-World's "drawer-open-v3" is accepted too).

    Raises:
        ValueError: for an unknown name, naming the closest supported ones.

    >>> resolve_task("drawer-open-v3")
    'drawer-open'
    """
    if not isinstance(task, str):
        raise TypeError(f"a task name must be a string such as 'drawer-open', got {type(task).__name__}")
    name = task.strip().lower().replace("_", "-")
    name = name[: -len("-v3")] if name.endswith("-v3") else name
    if name in INSTRUCTIONS:
        return name
    close = difflib.get_close_matches(name, list(INSTRUCTIONS), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(f"unknown Meta-World task {task!r}: {hint}supported tasks are listed by "
                     f"mmdiff.sim.metaworld.supported_tasks()")


def instruction(task: str) -> str:
    """The English instruction of `task`, the observation's "task" text.

    >>> instruction("drawer-open")
    'open the drawer'
    """
    return INSTRUCTIONS[resolve_task(task)]


def _import_metaworld() -> Any:
    """The metaworld module, imported for headless rendering (`mmdiff.sim.rendering`)."""
    prepare_headless_rendering()
    try:
        import metaworld
        import metaworld.policies
    except ImportError as err:
        raise ImportError(f"the Meta-World simulator is not installed ({err}); {INSTALL_HINT}") from err
    return metaworld


def parse_image_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """(height, width) of the camera frames, or None for no camera.

    >>> parse_image_size(64), parse_image_size((48, 64))
    ((64, 64), (48, 64))
    """
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 8 for s in size):
        raise ValueError(f"image_size must be an int or (height, width) of ints >= 8, or None, got {image_size!r}")
    return size  # type: ignore[return-value]


class MetaWorldEnv(SimEnv):
    """One Meta-World task with seeded resets, a camera image, the state and the instruction.

    Args:
        task: a name from `supported_tasks()` (or with Meta-World's "-v3" suffix).
        seed: seed of the first `reset()` that is not given one.
        image_size: frame size, an int (square) or (height, width); None renders no camera (faster).
        camera: a MuJoCo camera of the Sawyer scene ("corner", "corner2", "corner3", "corner4", "topview",
            "behindGripper", "gripperPOV").
        max_steps: steps after which an episode is truncated (at most Meta-World's 500).
        shadows: render shadows and reflections as Meta-World does; off (the default) renders about 5x faster on
            a software renderer with near-identical frames (mean pixel difference about 3 of 255 at 64x64).

    >>> env = MetaWorldEnv("reach", seed=0, image_size=32)  # doctest: +SKIP
    >>> env.reset()["observation.images.corner"].shape      # doctest: +SKIP
    (32, 32, 3)
    """

    ACTION_DIM, ACTION_TEXT, SIMULATOR = ACTION_DIM, "hand xyz, gripper", "a Meta-World"

    def __init__(self, task: str, seed: int = 0, image_size: int | tuple[int, int] | None = 64,
                 camera: str = "corner", max_steps: int = MAX_STEPS, shadows: bool = False) -> None:
        self.task = resolve_task(task)
        self.instruction = INSTRUCTIONS[self.task]
        self.image_shape = parse_image_size(image_size)
        if not 1 <= max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps must be in 1..{MAX_STEPS} (Meta-World's episode limit), got {max_steps}")
        self.camera, self.max_steps, self.seed, self.shadows = camera, max_steps, seed, shadows
        metaworld = _import_metaworld()
        options: dict[str, Any] = {}
        if self.image_shape is not None:
            options = {"render_mode": "rgb_array", "camera_name": camera, "height": self.image_shape[0],
                       "width": self.image_shape[1]}
        self._env = metaworld.ALL_V3_ENVIRONMENTS[f"{self.task}-v3"](**options)
        self._check_camera(camera)
        self._configure()
        if self.image_shape is not None and not shadows:
            self._plain_rendering()
        self.steps, self._obs = 0, None

    # ------------------------------------------------------------------------------------------------ setup
    def _check_camera(self, camera: str) -> None:
        model = self._env.model
        names = [model.camera(i).name for i in range(model.ncam)]
        if camera not in names:
            self.close()
            raise ValueError(f"unknown camera {camera!r} for Meta-World; choose one of {names}")

    def _configure(self) -> None:
        """Goal observable (MT1 setting) and initial states drawn from the env's own seeded generator."""
        env = self._env
        env._partially_observable = False
        env.__dict__.pop("sawyer_observation_space", None)  # cached with the goal hidden; recomputed on access
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True

    def _plain_rendering(self) -> None:
        """Turns off shadows and reflections in the offscreen scene (the costly passes of a software renderer)."""
        import mujoco

        scene = self._env.mujoco_renderer._get_viewer("rgb_array").scn  # gymnasium builds it once, then reuses it
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
            scene.flags[flag] = 0

    # ------------------------------------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None) -> dict[str, Any]:
        """Starts an episode; its initial object and goal positions depend on `seed` only (default: `self.seed`)."""
        seed = self.seed if seed is None else seed
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self._env.seed(int(seed))
        state, _ = self._env.reset()
        self.steps = 0
        return self._observation(state)

    def step(self, action: Any, *, render: bool = True) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Applies `action` (4,) and returns (observation, reward, terminated, truncated, info).

        terminated is True once the task succeeds (`info["success"]`); truncated after `max_steps` steps. With
        `render=False` the observation holds no camera image (rendering is most of a step's time on a software
        renderer: skip it for steps whose frame no policy reads, e.g. while a policy serves queued actions).
        """
        action = self.checked_action(action)
        state, reward, _, _, info = self._env.step(action)
        self.steps += 1
        success = bool(info["success"])
        info = {**info, "success": success}
        return self._observation(state, render), float(reward), success, self.steps >= self.max_steps, info

    @property
    def initial_state(self) -> np.ndarray:
        """The randomised initial positions (objects, goal) of the current episode, float64."""
        return np.array(self._env._last_rand_vec, dtype=np.float64)

    @property
    def image_key(self) -> str:
        """The observation key of the camera image."""
        return f"observation.images.{self.camera}"

    def _observation(self, state: np.ndarray, render: bool = True) -> dict[str, Any]:
        obs: dict[str, Any] = {"observation.state": np.asarray(state, dtype=np.float32), "task": self.instruction}
        if self.image_shape is not None and render:
            obs[self.image_key] = self.render()
        self._obs = obs
        return obs

    # ------------------------------------------------------------------------------------------------ images
    def render_raw(self) -> np.ndarray:
        """The camera frame as MuJoCo renders it (uint8 (H, W, 3), image up along the camera's y axis)."""
        if self.image_shape is None:
            raise RuntimeError("this environment renders no camera: make it with an image_size")
        return np.asarray(self._env.render(), dtype=np.uint8)

    def upside_down(self) -> bool:
        """True when the camera's y axis (the raw image's up) points below the horizon."""
        cam = self._env.model.camera(self.camera).id
        return bool(self._env.data.cam_xmat[cam].reshape(3, 3)[2, 1] < 0)  # world z of the camera's y axis

    def render(self) -> np.ndarray:
        """The upright camera frame, uint8 (H, W, 3)."""
        frame = self.render_raw()  # (H, W, 3)
        if self.upside_down():
            frame = frame[::-1, ::-1]
        return np.ascontiguousarray(frame)


def make_env(task: str, seed: int = 0, image_size: int | tuple[int, int] | None = 64, camera: str = "corner",
             max_steps: int = MAX_STEPS, shadows: bool = False) -> MetaWorldEnv:
    """A `MetaWorldEnv` for `task` (see its arguments).

    >>> env = make_env("push", seed=1, image_size=(48, 64))  # doctest: +SKIP
    """
    return MetaWorldEnv(task, seed=seed, image_size=image_size, camera=camera, max_steps=max_steps, shadows=shadows)


class ScriptedExpert:
    """Meta-World's hand-written policy for one task: observation (lerobot names) -> action float32 (4,).

    Args:
        task: a name from `supported_tasks()`.

    >>> expert = ScriptedExpert("reach")  # doctest: +SKIP
    >>> expert(env.reset(seed=0)).shape   # doctest: +SKIP
    (4,)
    """

    def __init__(self, task: str) -> None:
        self.task = resolve_task(task)
        metaworld = _import_metaworld()
        self._policy = metaworld.policies.ENV_POLICY_MAP[f"{self.task}-v3"]()

    def __call__(self, observation: Mapping[str, Any] | np.ndarray) -> np.ndarray:
        state = observation["observation.state"] if isinstance(observation, Mapping) else observation
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (STATE_DIM,):
            raise ValueError(f"the scripted expert reads the {STATE_DIM}-D Meta-World state, got shape {state.shape}")
        with warnings.catch_warnings():  # the policies warn that their gains exceed the [-1, 1] the env clips to
            warnings.simplefilter("ignore", UserWarning)
            action = self._policy.get_action(state)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)


def scripted_expert(task: str) -> ScriptedExpert:
    """The scripted expert policy of `task` (see `ScriptedExpert`).

    >>> scripted_expert("drawer-open-v3").task  # doctest: +SKIP
    'drawer-open'
    """
    return ScriptedExpert(task)
