"""Closed-loop evaluation of robot policies: seeded episodes in a simulator, success rate per task, mean episode
length, decoding forward passes (NFE) per action chunk and wall time per action, and a GIF of a rollout, in the
shape of lerobot's `eval_policy` and of the Meta-World benchmark's success metric (Yu et al. 2019: an episode
succeeds once the environment reports `info["success"]`).

A policy is anything with lerobot's `reset()` and `select_action(observation)` (a `mmdiff.tasks.vla.VLAPolicy`, or
the baselines here: `RandomPolicy`, the lower bound, and `ScriptedPolicy` around Meta-World's scripted experts, the
upper bound); its optional `nfe` list (forward passes of each decoded chunk) is read for the NFE column, and its
optional `needs_images` (whether the next `select_action` reads the camera frames: a VLA policy serving queued actions
does not) lets an environment whose `step` takes `render=` skip the camera, most of a step's time on a software
renderer; a row whose episode ended is rendered once more, so a later batched decode sees its frame. An
environment is anything with `reset(seed) -> observation`, `step(action) -> (observation, reward, terminated,
truncated, info)` and `close()`, observations under lerobot's names. By default a task name picks its simulator:
LIBERO for LIBERO names (`mmdiff.sim.libero.LiberoEnv`: "libero_spatial/0" is task 0 of LIBERO-Spatial, a bare suite
name "libero_spatial" all its tasks), Meta-World otherwise (`mmdiff.sim.metaworld.MetaWorldEnv`).

Episodes of a task run `num_envs` environments in lockstep, one batch row each (a batched policy decodes them in
one call; a row whose episode ended is fed its last observation and its actions are dropped); a row decodes the same
alone or in a batch, so results do not depend on `num_envs`. Episode k of a task starts from `reset(seed + k)`, or
from `seeds[k]` when given (e.g. held-out seeds whose initial positions were never in the training demonstrations:
`MetaWorldDemosSource.candidate_seeds("val", task, n)`).

>>> result = TaskResult("reach", [Episode("reach", 0, True, 40), Episode("reach", 1, False, 500)], nfe=[8, 8])
>>> result.line()
'reach: success 0.500  mean episode length 270.0  NFE per chunk 8.0'
>>> # results = evaluate_policy(mmdiff.pipeline("vla", model=NAME), ["reach", "push"], episodes=50, gif="out.gif")
>>> # print(format_results(results))
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Episode", "TaskResult", "RandomPolicy", "ScriptedPolicy", "run_task", "evaluate_policy",
           "average_success", "format_results", "save_gif"]


@dataclass
class Episode:
    """One episode: its task, seed, whether it succeeded and its length in steps (to the first success)."""

    task: str
    seed: int
    success: bool
    length: int


@dataclass
class TaskResult:
    """The episodes of one task and what decoding them cost.

    Args:
        task: the task name.
        episodes: the episodes, in seed order.
        nfe: forward passes of every chunk the policy decoded (one entry per decoded batch of rows).
        seconds: wall time of the policy's `select_action` calls.
        actions: actions the policy gave (every row of every step).
    """

    task: str
    episodes: list[Episode]
    nfe: list[int] = field(default_factory=list)
    seconds: float = 0.0
    actions: int = 0

    @property
    def success_rate(self) -> float:
        return sum(e.success for e in self.episodes) / max(len(self.episodes), 1)

    @property
    def mean_length(self) -> float:
        return sum(e.length for e in self.episodes) / max(len(self.episodes), 1)

    @property
    def nfe_per_chunk(self) -> float | None:
        """Mean forward passes per decoded chunk (None for a policy that reports none)."""
        return sum(self.nfe) / len(self.nfe) if self.nfe else None

    @property
    def seconds_per_action(self) -> float | None:
        """Wall time of `select_action` per action of one row (a batch of B rows gives B actions per call)."""
        return self.seconds / self.actions if self.actions else None

    def line(self) -> str:
        """`<task>: success <rate>  mean episode length <L>  NFE per chunk <N>`."""
        nfe = "-" if self.nfe_per_chunk is None else f"{self.nfe_per_chunk:.1f}"
        return (f"{self.task}: success {self.success_rate:.3f}  mean episode length {self.mean_length:.1f}  "
                f"NFE per chunk {nfe}")

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "success_rate": self.success_rate, "mean_length": self.mean_length,
                "nfe_per_chunk": self.nfe_per_chunk, "seconds_per_action": self.seconds_per_action,
                "episodes": [vars(e) for e in self.episodes]}


def average_success(results: Sequence[TaskResult]) -> float:
    """The mean of the tasks' success rates (each task weighs the same, as Meta-World's MT benchmarks report)."""
    return sum(r.success_rate for r in results) / max(len(results), 1)


def format_results(results: Sequence[TaskResult]) -> str:
    """One line per task, then `average success <rate>`.

    >>> print(format_results([TaskResult("reach", [Episode("reach", 0, True, 12)])]))
    reach: success 1.000  mean episode length 12.0  NFE per chunk -
    average success 1.000
    """
    return "\n".join([*(r.line() for r in results), f"average success {average_success(results):.3f}"])


# ------------------------------------------------------------------------------------------------ baselines
class RandomPolicy:
    """Uniform random actions in [low, high]^D, seeded (the lower bound of a success table).

    >>> policy = RandomPolicy(4, seed=0)
    >>> policy.select_action({"observation.state": np.zeros(39)}).shape
    (4,)
    """

    def __init__(self, action_dim: int, *, low: float = -1.0, high: float = 1.0, seed: int = 0) -> None:
        self.action_dim, self.low, self.high = action_dim, low, high
        self.generator = np.random.default_rng(seed)
        self.nfe: list[int] = []
        self.needs_images = False  # the environments may skip rendering

    def reset(self) -> None:
        """Nothing to forget."""

    def select_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        rows = _rows(observation)
        shape = (self.action_dim,) if rows is None else (rows, self.action_dim)
        return self.generator.uniform(self.low, self.high, shape).astype(np.float32)


class ScriptedPolicy:
    """A per-observation expert as a policy (the upper bound of a success table): one callable, or one per
    instruction (the observation's "task" text picks it), e.g. Meta-World's scripted experts:

    >>> from mmdiff.sim.metaworld import ScriptedExpert, instruction
    >>> # experts = ScriptedPolicy({instruction(t): ScriptedExpert(t) for t in ["reach", "push"]})

    Args:
        expert: observation (one frame) -> action (D,), or instruction -> such a callable.
        needs_images: the experts read the camera images (otherwise environments may skip rendering them).
    """

    def __init__(self, expert: Callable[[Mapping[str, Any]], Any] | Mapping[str, Callable[..., Any]], *,
                 needs_images: bool = False) -> None:
        self.expert = expert
        self.nfe: list[int] = []
        self.needs_images = needs_images  # Meta-World's experts act on the state

    def reset(self) -> None:
        """Nothing to forget."""

    def _act(self, frame: Mapping[str, Any]) -> np.ndarray:
        expert = self.expert
        if isinstance(expert, Mapping):
            text = frame.get("task")
            if text not in expert:
                raise ValueError(f"no expert for the instruction {text!r}; experts know {sorted(expert)}")
            expert = expert[text]
        return np.asarray(expert(frame), dtype=np.float32)

    def select_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        rows = _rows(observation)
        if rows is None:
            return self._act(observation)
        return np.stack([self._act(_row(observation, i)) for i in range(rows)])


def _rows(observation: Mapping[str, Any]) -> int | None:
    """The batch size of a batched observation (its "task" is a list), None for one frame."""
    task = observation.get("task")
    return len(task) if isinstance(task, (list, tuple)) else None


def _row(observation: Mapping[str, Any], i: int) -> dict[str, Any]:
    return {k: v[i] for k, v in observation.items()}


# ------------------------------------------------------------------------------------------------ episodes
def _stack(observations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Frames -> one batched observation (arrays stacked, texts listed)."""
    out: dict[str, Any] = {}
    for key in [k for k in observations[0] if all(k in o for o in observations)]:  # frames skipped in some rows
        values = [o[key] for o in observations]
        out[key] = list(values) if isinstance(values[0], str) else np.stack([np.asarray(v) for v in values])
    return out


def _as_action(action: Any) -> np.ndarray:
    if hasattr(action, "detach"):
        action = action.detach().cpu().numpy()
    return np.asarray(action, dtype=np.float32)


def run_task(policy: Any, make_env: Callable[[], Any], task: str, seeds: Sequence[int], *, num_envs: int = 1,
             record: bool = False, image_key: str | None = None, progress: bool = True
             ) -> tuple[TaskResult, list[np.ndarray]]:
    """Runs one episode per seed of `task` with `policy`, `num_envs` environments at a time (see the module
    docstring).

    Args:
        policy: `reset()` and `select_action(observation)`; batched when `num_envs > 1`.
        make_env: builds one environment of the task.
        task: the task's name (for the result).
        seeds: one seed per episode.
        num_envs: environments stepped in lockstep, one batch row each.
        record: keep the frames (`image_key` of each observation) of the first episode.
        image_key: the observation key recorded; None = the environment's `image_key`.
        progress: a progress bar over the episodes.

    Returns:
        (the task's result, the frames of the first episode, uint8 (H, W, 3) each; [] without `record`).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    envs = [make_env() for _ in range(min(num_envs, len(seeds)))]
    key = image_key or getattr(envs[0], "image_key", None)
    lazy = _renders_on_demand(envs[0])
    bar = _bar(progress, len(seeds), task)
    episodes: list[Episode] = []
    frames: list[np.ndarray] = []
    start_nfe = len(getattr(policy, "nfe", []))
    seconds, actions = 0.0, 0
    try:
        for lo in range(0, len(seeds), len(envs)):
            group = list(seeds[lo : lo + len(envs)])
            batched = len(envs) > 1
            obs = [env.reset(seed=int(s)) for env, s in zip(envs, group, strict=False)]
            done, success, length = [False] * len(group), [False] * len(group), [0] * len(group)
            if record and lo == 0 and key is not None:
                frames.append(np.asarray(obs[0][key]))
            policy.reset()
            while not all(done):
                t = time.perf_counter()
                action = _as_action(policy.select_action(_stack(obs) if batched else obs[0]))
                seconds += time.perf_counter() - t
                images = getattr(policy, "needs_images", True)  # does the next call read the frames?
                actions += len(group)
                action = action if batched else action[None]
                for i, env in enumerate(envs[: len(group)]):
                    if done[i]:
                        continue
                    recording = record and lo == 0 and i == 0
                    frame = {"render": bool(images or recording)} if lazy else {}
                    obs[i], _, terminated, truncated, info = env.step(action[i], **frame)
                    length[i] += 1
                    success[i] = bool(info.get("success", terminated))
                    done[i] = bool(terminated or truncated or success[i])
                    if done[i] and lazy and key is not None and key not in obs[i]:  # rows that ended are fed this
                        obs[i] = {**obs[i], key: env.render()}
                    if record and lo == 0 and i == 0 and key is not None:
                        frames.append(np.asarray(obs[0][key]))
            episodes += [Episode(task, int(s), ok, n) for s, ok, n in zip(group, success, length, strict=True)]
            if bar is not None:
                bar.update(len(group))
                bar.set_postfix(success=f"{sum(e.success for e in episodes) / len(episodes):.2f}")
    finally:
        for env in envs:
            env.close()
        if bar is not None:
            bar.close()
    nfe = list(getattr(policy, "nfe", [])[start_nfe:])
    return TaskResult(task, episodes, nfe=nfe, seconds=seconds, actions=actions), frames


def _renders_on_demand(env: Any) -> bool:
    """Whether `env.step` takes `render=` (skip the camera when the policy will not read the frame) and the
    environment can `render()` the current frame on its own."""
    try:
        parameters = inspect.signature(env.step).parameters
    except (TypeError, ValueError):
        return False
    return "render" in parameters and callable(getattr(env, "render", None))


def _bar(show: bool, total: int, task: str) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=task, unit="episode")


def evaluate_policy(policy: Any, tasks: str | Sequence[str], *, episodes: int = 50, seed: int = 0,
                    seeds: Sequence[int] | Mapping[str, Sequence[int]] | None = None, num_envs: int = 1,
                    make_env: Callable[[str], Any] | None = None, max_steps: int | None = None,
                    gif: str | Path | None = None, fps: int = 20, progress: bool = True) -> list[TaskResult]:
    """Success rates of `policy` on seeded episodes of each task (in LIBERO or Meta-World by default).

    Args:
        policy: a `VLAPolicy` (or any object with `reset` / `select_action`); with the default environments its
            cameras, image size and action dimension pick and check the simulator's.
        tasks: task names: Meta-World's (`mmdiff.sim.metaworld.supported_tasks()`), or LIBERO's "<suite>/<index>"
            and suite names (`mmdiff.sim.libero.supported_tasks()`), not both in one call.
        episodes: episodes per task.
        seed: episode k of a task starts from `reset(seed + k)` (in LIBERO: the task's initial state
            `(seed + k) % 50`).
        seeds: explicit seeds instead (a list for every task, or one list per task).
        num_envs: environments stepped in lockstep (one batch row each).
        make_env: task name -> environment; None = `LiberoEnv(task, image_size=..., cameras=..., max_steps=...)` for
            LIBERO names, else `MetaWorldEnv(task, image_size=..., camera=..., max_steps=...)`.
        max_steps: the episode step limit of the default environments (None: Meta-World's 500, or the LIBERO
            suite's limit, e.g. 220 for libero_spatial).
        gif: write the first episode of the first task as an animated GIF here.
        fps: frames per second of the GIF.
        progress: a progress bar per task.

    Raises:
        ValueError: an unknown task name (naming the closest), an action dimension the simulator does not take, a
            policy needing several cameras from a one-camera simulator or a camera the simulator lacks, LIBERO and
            Meta-World tasks in one call, or a bad episode count.
        ImportError: the simulator is not installed (naming the extra to install).
    """
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise ValueError("no tasks given; name at least one, e.g. ['reach']")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if make_env is None:
        tasks, make_env = _default_envs(policy, tasks, max_steps)
    results, frames = [], []
    for t, task in enumerate(tasks):
        task_seeds = _seeds(seeds, task, episodes, seed)
        result, recorded = run_task(policy, lambda task=task: make_env(task), task, task_seeds, num_envs=num_envs,
                                    record=gif is not None and t == 0, progress=progress)
        results.append(result)
        frames = frames or recorded
    if gif is not None and frames:
        save_gif(frames, gif, fps=fps)
    return results


def _seeds(seeds: Any, task: str, episodes: int, seed: int) -> list[int]:
    if seeds is None:
        return list(range(seed, seed + episodes))
    chosen = seeds[task] if isinstance(seeds, Mapping) else seeds
    if len(chosen) < 1:
        raise ValueError(f"no seeds given for task {task!r}")
    return [int(s) for s in chosen]


def _default_envs(policy: Any, tasks: list[str], max_steps: int | None) -> tuple[list[str], Callable[[str], Any]]:
    """The simulator the task names pick: LIBERO for LIBERO names, Meta-World otherwise."""
    from mmdiff.sim.libero import is_libero_task

    libero = [t for t in tasks if is_libero_task(t)]
    if not libero:
        return _metaworld(policy, tasks, max_steps)
    if len(libero) < len(tasks):
        others = [t for t in tasks if not is_libero_task(t)]
        raise ValueError(f"the tasks mix LIBERO {libero} and Meta-World {others}; the two simulators take different "
                         "actions and states: evaluate them in separate calls")
    return _libero(policy, tasks, max_steps)


def _libero(policy: Any, tasks: list[str], max_steps: int | None) -> tuple[list[str], Callable[[str], Any]]:
    """Resolved LIBERO task names (suites expanded) and a factory of environments that render what the policy
    reads: its cameras (default the front one) at its image size (default LIBERO's 128x128)."""
    from mmdiff.sim.libero import ACTION_DIM, LiberoEnv, camera_names, expand_tasks

    tasks = expand_tasks(tasks)  # an unknown name fails before a simulator starts
    check = getattr(policy, "check_action_dim", None)
    if check is not None:
        check(ACTION_DIM, "the LIBERO simulator")
    cameras = camera_names(list(getattr(policy, "cameras", ["agentview"])))
    task_obj = getattr(policy, "task", None)
    size = getattr(task_obj, "image_size", None) or (128, 128)

    def make(task: str) -> Any:
        return LiberoEnv(task, image_size=tuple(size), cameras=cameras, max_steps=max_steps)

    return tasks, make


def _metaworld(policy: Any, tasks: list[str], max_steps: int | None) -> tuple[list[str], Callable[[str], Any]]:
    """Resolved Meta-World task names and a factory of environments that render what the policy reads."""
    from mmdiff.sim.metaworld import ACTION_DIM, MAX_STEPS, MetaWorldEnv, resolve_task

    tasks = [resolve_task(t) for t in tasks]  # an unknown name fails before a simulator starts
    check = getattr(policy, "check_action_dim", None)
    if check is not None:
        check(ACTION_DIM, "the Meta-World simulator")
    cameras = list(getattr(policy, "cameras", ["corner"]))
    if len(cameras) != 1:
        raise ValueError(f"the policy reads {len(cameras)} cameras {cameras} but the Meta-World environment renders "
                         "one; evaluate a one-camera policy, or pass make_env= an environment that renders them all")
    task_obj = getattr(policy, "task", None)
    size = getattr(task_obj, "image_size", None) or (64, 64)
    steps = MAX_STEPS if max_steps is None else max_steps

    def make(task: str) -> Any:
        return MetaWorldEnv(task, image_size=tuple(size), camera=cameras[0], max_steps=steps)

    return tasks, make


def save_gif(frames: Sequence[Any], path: str | Path, *, fps: int = 20, scale: int | None = None) -> Path:
    """Writes frames (uint8 (H, W, 3) arrays) as an animated GIF (PIL); small frames are enlarged to about 256
    pixels (nearest neighbour) unless `scale` says otherwise. Returns the path.

    >>> import tempfile, os
    >>> frames = [np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)]
    >>> path = save_gif(frames, os.path.join(tempfile.mkdtemp(), "a.gif"))
    >>> from PIL import Image; Image.open(path).size, Image.open(path).n_frames
    ((256, 256), 2)
    """
    from PIL import Image

    if not len(frames):
        raise ValueError("no frames to write")
    arrays = [np.asarray(f) for f in frames]
    if arrays[0].dtype != np.uint8 or arrays[0].ndim != 3:
        raise ValueError(f"GIF frames are uint8 (H, W, 3) images, got {arrays[0].dtype} {arrays[0].shape}")
    factor = scale or max(1, math.ceil(256 / max(arrays[0].shape[:2])))
    images = [Image.fromarray(a).resize((a.shape[1] * factor, a.shape[0] * factor), Image.NEAREST) for a in arrays]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return path
