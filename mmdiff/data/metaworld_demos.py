"""Scripted-expert demonstrations on Meta-World (Yu et al., 2019) for vision-language-action training: per step the
camera image, the state, the instruction and the expert's action, under lerobot's names (as a LeRobotDataset frame:
`observation.images.<camera>`, `observation.state`, `task`, `action`, `episode_index`, `frame_index`).

Episodes are seeded: episode k of a task in a split starts from the initial object and goal positions that
`MetaWorldEnv.reset(seed)` draws for the split's k-th seed (`episode_seeds`). Train and held-out ("val") seeds come
from separate streams; a train seed equal to a held-out seed, or whose initial positions equal a held-out episode's,
is skipped, so held-out initial positions never occur in training and evaluating a policy on the "val" seeds measures
generalisation to new positions. An episode ends at the expert's first success (or after `max_steps`); with
`only_successful` a seed whose episode fails is skipped too (the next seed of the stream replaces it).

Episodes are recorded once and cached under the caller's folder as safetensors files (arrays plus string metadata,
no pickle), one per (task, camera, image size, step limit, seed):
`<root>/<task>-<camera>[-shadows]-<H>x<W>-max<steps>/seed<seed>.safetensors`.

>>> source = MetaWorldDemosSource("demos", tasks=["reach"], train_episodes=2, val_episodes=1)  # doctest: +SKIP
>>> frame = source.dataset("train")[0]                                                          # doctest: +SKIP
>>> frame["observation.images.corner"].shape, frame["action"].shape, frame["task"]             # doctest: +SKIP
(torch.Size([64, 64, 3]), torch.Size([4]), 'reach the goal')
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmdiff.registry import DATASETS
from mmdiff.sim.metaworld import MAX_STEPS, MetaWorldEnv, ScriptedExpert, instruction, parse_image_size, resolve_task

__all__ = ["Episode", "MetaWorldDemosSource", "MetaWorldDemosDataset", "record_episode", "DEFAULT_TASKS"]

DEFAULT_TASKS = ("reach", "push", "pick-place", "drawer-open")
FORMAT = "mmdiff-metaworld-demo-1"  # cache file version, checked on load
_TRAIN_STREAM, _VAL_STREAM = 0, 1  # seed-sequence words keeping the split's seeds apart
_MAX_SKIPS = 1000  # seeds tried per split and task beyond the episodes asked for


@dataclass
class Episode:
    """One recorded episode of T steps: images uint8 (T, H, W, 3), state float32 (T, 39), action float32 (T, 4)
    (the expert's action at each observation), initial_state float64 (the reset's object / goal positions)."""

    task: str
    seed: int
    images: np.ndarray
    state: np.ndarray
    action: np.ndarray
    initial_state: np.ndarray
    success: bool

    @property
    def instruction(self) -> str:
        """The task's English instruction."""
        return instruction(self.task)

    def __len__(self) -> int:
        return len(self.action)


def record_episode(env: MetaWorldEnv, seed: int, expert: ScriptedExpert | None = None) -> Episode:
    """Runs the scripted expert from `env.reset(seed)` until its first success or `env.max_steps` steps.

    >>> episode = record_episode(make_env("reach", image_size=32), seed=0)  # doctest: +SKIP
    >>> episode.success, episode.images.shape[1:]                          # doctest: +SKIP
    (True, (32, 32, 3))
    """
    if env.image_shape is None:
        raise ValueError("demonstrations record a camera image: make the environment with an image_size")
    expert = expert or ScriptedExpert(env.task)
    obs = env.reset(seed=seed)
    initial = env.initial_state
    images, states, actions, success = [], [], [], False
    while not success and env.steps < env.max_steps:
        action = expert(obs)  # (4,)
        images.append(obs[env.image_key])
        states.append(obs["observation.state"])
        actions.append(action)
        obs, _, success, _, _ = env.step(action)
    return Episode(task=env.task, seed=int(seed), images=np.stack(images), state=np.stack(states),
                   action=np.stack(actions), initial_state=initial, success=success)


def _save_episode(path: Path, episode: Episode, meta: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"images": episode.images, "state": episode.state, "action": episode.action,
              "initial_state": episode.initial_state}
    tmp = path.with_suffix(".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp),
              metadata={**meta, "seed": str(episode.seed), "success": str(int(episode.success))})
    tmp.replace(path)  # a crash mid-write leaves no half file under the cache name


def _load_episode(path: Path, task: str, meta: dict[str, str]) -> Episode | None:
    """The cached episode, or None when the file is missing or was written with other settings."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    with safe_open(str(path), framework="numpy") as f:
        stored = f.metadata() or {}
        if any(stored.get(k) != v for k, v in meta.items()):
            return None
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    return Episode(task=task, seed=int(stored["seed"]), images=arrays["images"], state=arrays["state"],
                   action=arrays["action"], initial_state=arrays["initial_state"], success=stored["success"] == "1")


class MetaWorldDemosDataset(Dataset):
    """The frames of a split's episodes, one example per step, in lerobot's names.

    Example: {"observation.images.<camera>": uint8 (H, W, 3), "observation.state": float32 (39,), "task": str,
    "action": float32 (4,) or, with chunk_size H > 1, float32 (H, 4) (the next H actions, the last one repeated past
    the episode's end) with "action_is_pad" bool (H,), "episode_index", "frame_index", "index" (ints)}.
    """

    def __init__(self, episodes: Sequence[Episode], camera: str, chunk_size: int = 1) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.episodes, self.camera, self.chunk_size = list(episodes), camera, chunk_size
        lengths = [len(e) for e in self.episodes]
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (E + 1,)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames")
        e = int(np.searchsorted(self._starts, index, side="right")) - 1
        episode, t = self.episodes[e], index - int(self._starts[e])
        example: dict[str, Any] = {
            f"observation.images.{self.camera}": torch.from_numpy(episode.images[t].copy()),  # (H, W, 3) uint8
            "observation.state": torch.from_numpy(episode.state[t].copy()),  # (39,)
            "task": episode.instruction,
            "episode_index": e,
            "frame_index": t,
            "index": index,
        }
        example.update(self._actions(episode, t))
        return example

    def _actions(self, episode: Episode, t: int) -> dict[str, Tensor]:
        if self.chunk_size == 1:
            return {"action": torch.from_numpy(episode.action[t].copy())}  # (4,)
        steps = np.arange(t, t + self.chunk_size)  # (H,)
        pad = steps >= len(episode)
        chunk = episode.action[np.minimum(steps, len(episode) - 1)]  # (H, 4)
        return {"action": torch.from_numpy(chunk.copy()), "action_is_pad": torch.from_numpy(pad)}


@DATASETS.register("metaworld-demos")
class MetaWorldDemosSource:
    """Scripted-expert demonstrations of Meta-World tasks, recorded on first use and cached under `root`.

    Args:
        root: folder of the episode cache (created when missing).
        tasks: task names (`mmdiff.sim.metaworld.supported_tasks()`).
        train_episodes: training episodes per task.
        val_episodes: held-out episodes per task (their initial positions never occur in training).
        image_size: camera frame size, an int or (height, width).
        camera: the Meta-World camera recorded.
        seed: seed of both splits' episode seeds.
        max_steps: step limit of an episode.
        only_successful: skip seeds whose expert episode fails (the next seed replaces it).
        chunk_size: actions per example (lerobot's action chunk; 1 = the current action only).
        shadows: render shadows and reflections (see `MetaWorldEnv`; off is about 5x faster).

    >>> source = MetaWorldDemosSource("demos", tasks=["drawer-open"], train_episodes=5)  # doctest: +SKIP
    >>> len(source.episode_seeds("val", "drawer-open"))                                   # doctest: +SKIP
    10
    """

    task = "vla"

    def __init__(
        self,
        root: str | Path,
        tasks: Sequence[str] = DEFAULT_TASKS,
        train_episodes: int = 50,
        val_episodes: int = 10,
        image_size: int | tuple[int, int] = 64,
        camera: str = "corner",
        seed: int = 0,
        max_steps: int = MAX_STEPS,
        only_successful: bool = True,
        chunk_size: int = 1,
        shadows: bool = False,
    ) -> None:
        if isinstance(tasks, str):
            tasks = [tasks]
        if not tasks:
            raise ValueError("tasks is empty: name at least one Meta-World task, e.g. tasks=['reach']")
        if train_episodes < 1 or val_episodes < 1:
            raise ValueError(f"train_episodes and val_episodes must be >= 1, got {train_episodes}, {val_episodes}")
        if not 1 <= max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps must be in 1..{MAX_STEPS}, got {max_steps}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.root, self.tasks = Path(root), [resolve_task(t) for t in tasks]
        self.train_episodes, self.val_episodes = train_episodes, val_episodes
        self.image_shape = parse_image_size(image_size)
        if self.image_shape is None:
            raise ValueError("image_size must be given: demonstrations record a camera image")
        self.camera, self.seed, self.max_steps = camera, seed, max_steps
        self.only_successful, self.chunk_size, self.shadows = only_successful, chunk_size, shadows
        self._episodes: dict[str, list[Episode]] = {}

    # ------------------------------------------------------------------------------------------------ seeds
    def _stream_seed(self, stream: int, task: str, k: int) -> int:
        words = [self.seed, stream, zlib.crc32(task.encode()), k]
        return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)

    def candidate_seeds(self, split: str, task: str, count: int) -> list[int]:
        """The first `count` seeds of the split's stream for `task`, before any is skipped."""
        return [self._stream_seed(self._stream(split), resolve_task(task), k) for k in range(count)]

    @staticmethod
    def _stream(split: str) -> int:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return _TRAIN_STREAM if split == "train" else _VAL_STREAM

    def episode_seeds(self, split: str, task: str) -> list[int]:
        """The seeds of the split's recorded episodes of `task` ("val": the held-out initial positions)."""
        return [e.seed for e in self.episodes(split) if e.task == resolve_task(task)]

    # ------------------------------------------------------------------------------------------------ episodes
    def episodes(self, split: str) -> list[Episode]:
        """The split's episodes, task by task, recorded (and cached) on first use."""
        self._stream(split)
        if split not in self._episodes:
            self._episodes[split] = [e for task in self.tasks for e in self._task_episodes(split, task)]
        return self._episodes[split]

    def _task_episodes(self, split: str, task: str) -> list[Episode]:
        wanted = self.train_episodes if split == "train" else self.val_episodes
        held_out = None if split == "val" else self._held_out(task)
        env, expert = None, ScriptedExpert(task)
        found: list[Episode] = []
        try:
            for k in range(wanted + _MAX_SKIPS):
                if len(found) == wanted:
                    return found
                seed = self._stream_seed(self._stream(split), task, k)
                if held_out is not None and seed in held_out[0]:
                    continue
                episode = _load_episode(self._path(task, seed), task, self._meta(task))
                if episode is None:
                    env = env or MetaWorldEnv(task, image_size=self.image_shape, camera=self.camera,
                                              max_steps=self.max_steps, shadows=self.shadows)
                    episode = record_episode(env, seed, expert)
                    _save_episode(self._path(task, seed), episode, self._meta(task))
                if held_out is not None and _matches(episode.initial_state, held_out[1]):
                    continue
                if episode.success or not self.only_successful:
                    found.append(episode)
        finally:
            if env is not None:
                env.close()
        raise RuntimeError(f"the scripted expert of {task!r} succeeded in only {len(found)} of {wanted + _MAX_SKIPS} "
                           f"{split} episodes within {self.max_steps} steps; raise max_steps or pass "
                           "only_successful=False")

    def _held_out(self, task: str) -> tuple[set[int], np.ndarray]:
        """The held-out seeds of `task` and their initial states (V, D)."""
        val = [e for e in self.episodes("val") if e.task == task]
        return {e.seed for e in val}, np.stack([e.initial_state for e in val])

    def _path(self, task: str, seed: int) -> Path:
        h, w = self.image_shape  # type: ignore[misc]
        look = "-shadows" if self.shadows else ""
        return self.root / f"{task}-{self.camera}{look}-{h}x{w}-max{self.max_steps}" / f"seed{seed}.safetensors"

    def _meta(self, task: str) -> dict[str, str]:
        h, w = self.image_shape  # type: ignore[misc]
        return {"format": FORMAT, "task": task, "camera": self.camera, "height": str(h), "width": str(w),
                "max_steps": str(self.max_steps), "shadows": str(int(self.shadows))}

    # ------------------------------------------------------------------------------------------------ data
    def dataset(self, split: str, vocab: Any = None) -> MetaWorldDemosDataset:
        """The split's frames (see `MetaWorldDemosDataset`); `vocab` is unused (the VLA task tokenises)."""
        return MetaWorldDemosDataset(self.episodes(split), self.camera, self.chunk_size)

    @cached_property
    def instructions(self) -> dict[str, str]:
        """task name -> instruction, for the tasks of this source."""
        return {t: instruction(t) for t in self.tasks}


def _matches(initial_state: np.ndarray, held_out: np.ndarray, atol: float = 1e-9) -> bool:
    """True when `initial_state` (D,) equals one of the held-out initial states (V, D) within atol."""
    return bool((np.abs(held_out - initial_state[None]).max(axis=1) <= atol).any())
