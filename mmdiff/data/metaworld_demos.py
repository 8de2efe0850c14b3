"""Scripted-expert demonstrations on Meta-World (Yu et al., 2019) for vision-language-action training: per step the
camera image, the state, the instruction and the expert's action, under lerobot's names (as a LeRobotDataset frame:
`observation.images.<camera>`, `observation.state`, `task`, `action`, `episode_index`, `frame_index`).

Episodes are seeded: episode k of a task in a split starts from the initial object and goal positions that
`MetaWorldEnv.reset(seed)` draws for the split's k-th seed (`episode_seeds`). Train and held-out ("val") seeds come
from separate streams that never share a seed (train seeds are even, held-out seeds odd); a train episode whose
initial positions equal a recorded held-out episode's is skipped too, so held-out initial positions never occur in
training and evaluating a policy on the "val" seeds (`candidate_seeds("val", task, n)`, any n) measures
generalisation to new positions. An episode ends at the expert's first success (or after `max_steps`); with
`only_successful` a seed whose episode fails is skipped too (the next seed of the stream replaces it).

Episodes are recorded once and cached under the caller's folder as safetensors files (arrays plus string metadata,
no pickle), one per (task, camera, image size, step limit, seed):
`<root>/<task>-<camera>[-shadows]-<H>x<W>-max<steps>/seed<seed>.safetensors`.

For training a VLA policy (`mmdiff.tasks.vla`, the trainer's data-source contract in `mmdiff.data`) the source gives
the "vla" task, its specials, a word-level `tokenizer()` over the instructions of every Meta-World task
(`build_tokenizer`), `task_options["vla"]` (chunk length, camera, image size, state, instruction length), the
statistics of the model's action and state adapters fitted on the training demonstrations (`fit_adapters`: OpenVLA's
q01 / q99 for "action/bins" and "state/bins", mean / std for "state/mlp", FAST's BPE), and `evaluate`: closed-loop
success rates on held-out seeds (`mmdiff.evaluation.rollouts`). The vocabulary ranges of the action (and
"state/bins") codes come from the recipe's adapters (the trainer reads their codebook sizes).

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

from mmdiff.data import check_vocab_fits
from mmdiff.registry import DATASETS
from mmdiff.sim.metaworld import (
    ACTION_DIM,
    INSTRUCTIONS,
    MAX_STEPS,
    MetaWorldEnv,
    ScriptedExpert,
    instruction,
    parse_image_size,
    resolve_task,
)

__all__ = ["Episode", "MetaWorldDemosSource", "MetaWorldDemosDataset", "record_episode", "DEFAULT_TASKS",
           "SPECIALS", "instruction_vocabulary", "build_tokenizer"]

DEFAULT_TASKS = ("reach", "push", "pick-place", "drawer-open")
SPECIALS = ("mask", "eos", "pad", "bos", "image", "state")  # "image" / "state": ids under the soft-token positions
EVAL_EPISODES = 50  # held-out episodes per task that `evaluate` runs when no limit is given
FORMAT = "mmdiff-metaworld-demo-1"  # cache file version, checked on load
_TRAIN_STREAM, _VAL_STREAM = 0, 1  # seed-sequence words keeping the split's seeds apart (and the seeds' parity)
_MAX_SKIPS = 1000  # seeds tried per split and task beyond the episodes asked for
_STATISTICS = ("q01", "mean", "bpe")  # adapter config fields fitted from data (None until fitted)


# ------------------------------------------------------------------------------------------------ tokenizer
def instruction_vocabulary() -> list[str]:
    """Every word of the 50 Meta-World instructions (`mmdiff.sim.metaworld.INSTRUCTIONS`), sorted: the text ids of a
    policy trained on any subset of the tasks, so one vocabulary serves them all.

    >>> words = instruction_vocabulary()
    >>> len(words), words[:4]
    (69, ['and', 'at', 'away', 'back'])
    """
    return sorted({word for text in INSTRUCTIONS.values() for word in text.split()})


def build_tokenizer() -> Any:
    """A word-level `PreTrainedTokenizerFast` over `instruction_vocabulary()` (lowercased, whitespace split, no
    specials: the model's specials follow the text ids in its `VocabLayout`); unknown words raise.

    >>> tok = build_tokenizer()
    >>> ids = tok.encode("Reach the goal")
    >>> [instruction_vocabulary()[i] for i in ids], tok.decode(ids)
    (['reach', 'the', 'goal'], 'reach the goal')
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(instruction_vocabulary())}, unk_token=None))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Sequence([decoders.Replace(Regex("^"), " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)


def _longest_instruction() -> int:
    """Words of the longest Meta-World instruction (the default `instruction_length`)."""
    return max(len(text.split()) for text in INSTRUCTIONS.values())


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
        chunk_size: actions per example (lerobot's action chunk; 1 = the current action only), the policy's
            `chunk_length`.
        shadows: render shadows and reflections (see `MetaWorldEnv`; off is about 5x faster).
        use_state: a policy trained on this source reads the robot state too (`task_options["vla"]`).
        instruction_length: instruction positions on a policy's canvas; None = the longest Meta-World instruction
            (13 words), so one policy can take every task's instruction.
        n_action_steps: actions a policy serves from each decoded chunk before decoding the next; None = the
            whole chunk.

    >>> source = MetaWorldDemosSource("demos", tasks=["drawer-open"], train_episodes=5)  # doctest: +SKIP
    >>> len(source.episode_seeds("val", "drawer-open"))                                   # doctest: +SKIP
    10
    >>> MetaWorldDemosSource("demos", chunk_size=8).task_options["vla"]["chunk_length"]
    8
    """

    task = "vla"
    specials = SPECIALS

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
        use_state: bool = True,
        instruction_length: int | None = None,
        n_action_steps: int | None = None,
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
        self.use_state, self.n_action_steps = bool(use_state), n_action_steps
        longest = max(len(instruction(t).split()) for t in self.tasks)
        self.instruction_length = _longest_instruction() if instruction_length is None else int(instruction_length)
        if self.instruction_length < longest:
            raise ValueError(f"instruction_length={instruction_length} is shorter than the longest instruction of "
                             f"these tasks ({longest} words); raise it or leave it None")
        if n_action_steps is not None and not 1 <= n_action_steps <= chunk_size:
            raise ValueError(f"n_action_steps must be in 1..chunk_size={chunk_size} (or None: the whole chunk), got "
                             f"{n_action_steps}")
        self._episodes: dict[str, list[Episode]] = {}
        self._tokenizer = None

    # ------------------------------------------------------------------------------------------------ seeds
    def _stream_seed(self, stream: int, task: str, k: int) -> int:
        """Seed k of a stream: 31 bits hashed from (seed, stream, task, k), even for train and odd for val."""
        words = [self.seed, stream, zlib.crc32(task.encode()), k]
        return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x3FFFFFFF) * 2 + stream

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
        """The split's frames (see `MetaWorldDemosDataset`); `vocab` (when given) must put this source's instruction
        words first and hold its "mask" and "pad" specials (the VLA task tokenises the frames)."""
        self._stream(split)
        if vocab is not None:
            check_vocab_fits(vocab, len(self.tokenizer()), ("mask", "pad"), self.specials)
        return MetaWorldDemosDataset(self.episodes(split), self.camera, self.chunk_size)

    @cached_property
    def instructions(self) -> dict[str, str]:
        """task name -> instruction, for the tasks of this source."""
        return {t: instruction(t) for t in self.tasks}

    # ------------------------------------------------------------------------------------------------ training
    def tokenizer(self) -> Any:
        """The word-level instruction tokenizer (`build_tokenizer`: every Meta-World instruction's words)."""
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer()
        return self._tokenizer

    @property
    def task_options(self) -> dict[str, dict[str, Any]]:
        """The VLA task's settings of a policy trained on this source (`mmdiff.tasks.vla.VLAOptions`), saved in its
        `config.json`: the chunk length, the camera and its image size, the state, the instruction length; prefix
        attention (an exact prompt cache while a chunk decodes)."""
        return {"vla": {"chunk_length": self.chunk_size, "n_action_steps": self.n_action_steps,
                        "cameras": [self.camera], "image_size": list(self.image_shape),  # type: ignore[arg-type]
                        "use_state": self.use_state, "attention": "prefix",
                        "instruction_length": self.instruction_length}}

    def fit_adapters(self, model: Any) -> list[str]:
        """Fits the data statistics that the model's "action" and "state" adapters still lack on the training
        demonstrations (recorded on first use); returns the modalities fitted.

        "action/bins": q01 / q99 of the expert's actions, one row per step (OpenVLA's BOUNDS_Q99); "action/fast":
        q01 / q99 and the BPE of the training chunks (each step's next `horizon` actions, the last one repeated past
        the episode's end, as the frames hold them); "state/bins": q01 / q99 of the states; "state/mlp": their mean
        and std. An adapter that already holds statistics (a checkpoint being fine-tuned, or values the recipe
        pins) keeps them. The statistics live in the adapter's config, so `model.config.adapters` (what
        `config.json` saves) is updated too. The trainer calls this once the model is built: no parameter shape
        depends on the statistics.

        Raises:
            ValueError: an adapter whose dimension differs from Meta-World's (4-D actions, 39-D states), naming both.

        >>> # source.fit_adapters(model) -> ['action', 'state']; model.adapters["action"].config.q01 -> [...]
        """
        adapters = getattr(model, "adapters", {})
        fitted = []
        for modality in ("action", "state"):
            if modality not in adapters or not _needs_statistics(adapters[modality].config):
                continue
            adapter = adapters[modality]
            adapter.fit(self.training_values(modality, horizon=getattr(adapter.config, "horizon", None)))
            model.config.adapters[modality] = adapter.config.to_dict()
            fitted.append(modality)
        return fitted

    def training_values(self, modality: str, horizon: int | None = None) -> np.ndarray:
        """What the adapters' statistics are fitted on: the training episodes' actions (N, 4) ("action"), their
        action chunks (N, horizon, 4) (with `horizon`), or their states (N, 39) ("state"), float32, episode by
        episode."""
        episodes = self.episodes("train")
        if modality == "state":
            return np.concatenate([e.state for e in episodes])  # (N, 39)
        if modality != "action":
            raise ValueError(f"the demonstrations hold 'action' and 'state' values, not {modality!r}")
        if horizon is None:
            return np.concatenate([e.action for e in episodes])  # (N, 4)
        return np.concatenate([_chunks(e.action, horizon) for e in episodes])  # (N, H, 4)

    # ------------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, model: Any, split: str = "val", limit: int | None = None, *, num_envs: int = 1,
                 max_steps: int | None = None, n_action_steps: int | None = None, gif: str | Path | None = None,
                 progress: bool = False, **sampler_overrides: Any) -> dict[str, float]:
        """Closed-loop success of `model` (a VLA policy trained on this source) on each task of the source.

        Episode k of a task starts from the split's k-th candidate seed (`candidate_seeds`): on "val" the held-out
        initial positions, never in the training demonstrations (whether or not their episodes were recorded); on
        "train" those of the training demonstrations. Environments render what the source recorded (camera, image
        size, shadows).

        Args:
            model: a VLA `DiffusionModel` (its policy is `mmdiff.tasks.vla.VLAPolicy`).
            split: "val" (held out) or "train".
            limit: episodes per task (None: 50).
            num_envs: environments stepped in lockstep, decoded as one batch.
            max_steps: the episode step limit (None: the source's `max_steps`).
            n_action_steps: actions served from each chunk (None: the model's `task_options`).
            gif: write the first episode of the first task as a GIF here.
            progress: a progress bar per task.
            **sampler_overrides: sampler keywords for the policy (steps, remask, ...).

        Returns:
            {"success" (the mean of the tasks' success rates), "success_<task>" per task, "mean_length" (steps per
            episode), "nfe_per_chunk" (forward passes per decoded chunk), "seconds_per_action", "episodes" (per
            task)}.

        Raises:
            ValueError: a policy that reads another camera or image size than this source renders, or takes actions
                of another dimension than Meta-World's.

        >>> # MetaWorldDemosSource("demos").evaluate(create_model("metaworld-tiny"), limit=50)["success"]
        """
        from mmdiff.evaluation.rollouts import average_success, evaluate_policy
        from mmdiff.tasks.vla import VLAPolicy

        self._stream(split)
        episodes = EVAL_EPISODES if limit is None else int(limit)
        if episodes < 1:
            raise ValueError(f"limit must be >= 1 episode per task (or None: {EVAL_EPISODES}), got {limit}")
        policy = VLAPolicy(model, n_action_steps=n_action_steps, **sampler_overrides)
        self._check_policy(policy)
        steps = self.max_steps if max_steps is None else max_steps

        def make_env(task: str) -> MetaWorldEnv:
            return MetaWorldEnv(task, image_size=self.image_shape, camera=self.camera, max_steps=steps,
                                shadows=self.shadows)

        seeds = {task: self.candidate_seeds(split, task, episodes) for task in self.tasks}
        results = evaluate_policy(policy, self.tasks, episodes=episodes, seeds=seeds, num_envs=num_envs,
                                  make_env=make_env, gif=gif, progress=progress)
        nfe = [n for r in results for n in r.nfe]
        actions = sum(r.actions for r in results)
        return {"success": average_success(results), **{f"success_{r.task}": r.success_rate for r in results},
                "mean_length": sum(r.mean_length for r in results) / len(results),
                "nfe_per_chunk": sum(nfe) / len(nfe) if nfe else 0.0,
                "seconds_per_action": sum(r.seconds for r in results) / max(actions, 1),
                "episodes": float(episodes)}

    def _check_policy(self, policy: Any) -> None:
        if policy.cameras != [self.camera]:
            raise ValueError(f"the policy reads the cameras {policy.cameras} but this source renders {self.camera!r}; "
                             f"evaluate it with MetaWorldDemosSource(camera=...) set to its camera")
        size = policy.task.image_size
        if size is not None and tuple(size) != self.image_shape:
            raise ValueError(f"the policy takes {size[0]}x{size[1]} images but this source renders "
                             f"{self.image_shape[0]}x{self.image_shape[1]}; set image_size={list(size)}")
        policy.check_action_dim(ACTION_DIM, "the Meta-World simulator")


def _needs_statistics(config: Any) -> bool:
    """Whether an adapter config has a data-statistics field (q01 / q99, mean / std, a BPE) still unset."""
    return any(hasattr(config, name) and getattr(config, name) is None for name in _STATISTICS)


def _chunks(actions: np.ndarray, horizon: int) -> np.ndarray:
    """Each step's next `horizon` actions (T, horizon, D), the last action repeated past the end."""
    steps = np.minimum(np.arange(len(actions))[:, None] + np.arange(horizon)[None], len(actions) - 1)  # (T, H)
    return actions[steps]


def _matches(initial_state: np.ndarray, held_out: np.ndarray, atol: float = 1e-9) -> bool:
    """True when `initial_state` (D,) equals one of the held-out initial states (V, D) within atol."""
    return bool((np.abs(held_out - initial_state[None]).max(axis=1) <= atol).any())
