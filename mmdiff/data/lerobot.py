"""A reader of LeRobotDataset v3.0 folders (Hugging Face lerobot's dataset format, `codebase_version` "v3.0"),
offline: the frames as a torch `Dataset` under lerobot's names, optional action chunks (lerobot's
`delta_timestamps`), and the normalisation statistics. Needs pyarrow (`pip install pyarrow`); MP4 cameras need PyAV
(`pip install av`).

The layout (lerobot `src/lerobot/datasets/utils.py`, `dataset_metadata.py`):

    meta/info.json                       codebase_version, fps, features {name: {dtype, shape, names}}, chunks_size,
                                         data_path "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                                         video_path
                                         "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    meta/tasks.parquet                   one row per task: its string (the pandas index, column "task") and task_index
    meta/episodes/chunk-XXX/file-XXX.parquet
                                         one row per episode: episode_index, tasks, length, data/chunk_index,
                                         data/file_index, dataset_from_index, dataset_to_index (its global frame
                                         indices [from, to)), videos/<key>/{chunk_index, file_index, from_timestamp,
                                         to_timestamp} per camera, and the episode's stats/<feature>/<stat> columns
    meta/stats.json                      {feature: {min, max, mean, std, count, (q01, q99, ...)}}: the whole dataset's
    data/chunk-XXX/file-XXX.parquet      the frames of consecutive episodes: one column per non-video feature
                                         (timestamp, frame_index, episode_index, index, task_index, observation.state,
                                         action, ...); an "image" feature is a struct {bytes: PNG file, path}
    videos/<key>/chunk-XXX/file-XXX.mp4  a "video" feature: consecutive episodes in one MP4; an episode's frame at
                                         timestamp t sits at from_timestamp + t

A frame is what lerobot's `LeRobotDataset.__getitem__` gives: every feature as a tensor (scalars 0-d, float features
float32, integer ones int64), cameras (C, H, W) float32 in [0, 1] (or, with `images="uint8"`, (H, W, C) uint8 as
stored and as `mmdiff.data.metaworld_demos` yields them), and "task" the task string. With `delta_timestamps`
({feature: [seconds relative to the frame]}, each a multiple of 1/fps) a feature becomes a stack (T, ...) of the
frames at those offsets, clamped to the frame's episode, and "<feature>_is_pad" (T,) marks the clamped ones (lerobot's
padding); `action_horizon=H` is {"action": [0, 1/fps, ..., (H-1)/fps]}: the action chunk of the next H steps.

A video camera's frames are decoded as lerobot's `decode_video_frames` (`src/lerobot/datasets/video_utils.py`, its
PyAV path) decodes them: the episode's timestamps shifted by its `from_timestamp`, seek to the keyframe at or before
the first, decode up to the first frame at or after the last, take for each timestamp the frame whose presentation
time is nearest, and refuse one that is not closer than `tolerance_s` (lerobot's 1e-4 s) with a `FrameTimestampError`
naming the timestamps. `decode_video_frames` here does it on a file or an open PyAV container; a `LeRobotDataset`
keeps its MP4 files open (the `OPEN_VIDEOS` most recently read, per process).

>>> data = LeRobotDataset("my_lerobot_dataset", action_horizon=8)  # doctest: +SKIP
>>> frame = data[0]                                                # doctest: +SKIP
>>> frame["action"].shape, frame["action_is_pad"].shape, frame["task"]  # doctest: +SKIP
(torch.Size([8, 7]), torch.Size([8]), 'pick up the cube')
"""

from __future__ import annotations

import bisect
import io
import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["LeRobotDataset", "LeRobotMetadata", "CODEBASE_VERSION", "IMAGE_FORMATS", "TOLERANCE_S", "video_query",
           "decode_video_frames", "FrameTimestampError"]

CODEBASE_VERSION = "v3.0"
IMAGE_FORMATS = ("float", "uint8")
INFO_PATH = "meta/info.json"
TASKS_PATH = "meta/tasks.parquet"
STATS_PATH = "meta/stats.json"
EPISODES_DIR = "meta/episodes"
CONVERT_V21 = "python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=<the dataset's id>"
TOLERANCE_S = 1e-4  # lerobot's LeRobotDataset(tolerance_s=1e-4)
OPEN_VIDEOS = 8  # MP4 containers a dataset keeps open (per process), the most recently read


def _pyarrow() -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), or an ImportError naming the install."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("reading a LeRobotDataset needs pyarrow (its files are parquet): pip install pyarrow") from e
    return pa, pq


class LeRobotMetadata:
    """The `meta/` folder of a LeRobotDataset v3.0: `info` (meta/info.json), `tasks` (task strings by task_index),
    `episodes` (one dict per episode, by episode_index, without the per-episode stats columns) and `stats`
    ({feature: {stat: tensor}} from meta/stats.json, None when the folder has none, as in lerobot).

    Raises:
        FileNotFoundError: the folder or a metadata file is missing.
        ValueError: a folder of another codebase version (v2.x: convert it with lerobot), or inconsistent metadata.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no LeRobotDataset folder at {self.root}: give the dataset's local folder (the "
                                    "one holding meta/, data/ and videos/)")
        self.info = self._read_info()
        _, pq = _pyarrow()
        self.tasks = self._read_tasks(pq)
        self.episodes = self._read_episodes(pq)
        self.stats = self._read_stats()

    # ------------------------------------------------------------------------------------------------ reading
    def _need(self, relative: str) -> Path:
        path = self.root / relative
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the LeRobotDataset folder {self.root} is incomplete; "
                                    "download it again (huggingface-cli download --repo-type dataset <id> --local-dir "
                                    "<folder>)")
        return path

    def _read_info(self) -> dict[str, Any]:
        path = self.root / INFO_PATH
        if not path.exists():
            legacy = [p for p in ("meta/episodes.jsonl", "meta/info.yaml") if (self.root / p).exists()]
            hint = f" (it holds {legacy[0]}: an older lerobot layout; convert it with {CONVERT_V21})" if legacy else ""
            raise FileNotFoundError(f"{path} is missing: {self.root} is not a LeRobotDataset folder{hint}")
        info = json.loads(path.read_text())
        version = str(info.get("codebase_version", "unknown"))
        major = version.lstrip("v").split(".")[0]
        if major != "3":
            fix = (f"convert it to v3.0 with lerobot: {CONVERT_V21}" if major in ("1", "2")
                   else "read it with a newer reader (this one reads v3.0)")
            raise ValueError(f"{self.root} is a LeRobotDataset {version} folder (meta/info.json codebase_version "
                             f"{version!r}); this reader reads {CODEBASE_VERSION}: {fix}")
        for key in ("fps", "features", "data_path"):
            if key not in info:
                raise ValueError(f"{path} has no {key!r}: not a LeRobotDataset {CODEBASE_VERSION} info.json")
        return info

    def _read_tasks(self, pq: Any) -> list[str]:
        table = pq.read_table(self._need(TASKS_PATH))
        columns = table.column_names
        if "task_index" not in columns:
            raise ValueError(f"{self.root / TASKS_PATH} has no task_index column (columns: {columns})")
        text = next((c for c in ("task", "__index_level_0__") if c in columns), None)
        if text is None:
            others = [c for c in columns if c != "task_index"]
            text = others[0] if len(others) == 1 else None
        if text is None:
            raise ValueError(f"{self.root / TASKS_PATH} has no task column (columns: {columns})")
        pairs = sorted(zip(table["task_index"].to_pylist(), table[text].to_pylist(), strict=True))
        if [i for i, _ in pairs] != list(range(len(pairs))):
            raise ValueError(f"{self.root / TASKS_PATH}: task_index must run 0..{len(pairs) - 1}, got "
                             f"{[i for i, _ in pairs]}")
        return [str(t) for _, t in pairs]

    def _read_episodes(self, pq: Any) -> list[dict[str, Any]]:
        files = sorted(self._need(EPISODES_DIR).glob("*/*.parquet"))
        if not files:
            raise FileNotFoundError(f"{self.root / EPISODES_DIR} holds no chunk-XXX/file-XXX.parquet: the "
                                    f"LeRobotDataset folder {self.root} is incomplete")
        rows: list[dict[str, Any]] = []
        for path in files:
            table = pq.read_table(path)
            table = table.select([c for c in table.column_names if not c.startswith("stats/")])
            rows += table.to_pylist()
        rows.sort(key=lambda r: r["episode_index"])
        if [r["episode_index"] for r in rows] != list(range(len(rows))):
            raise ValueError(f"{self.root / EPISODES_DIR}: episode_index must run 0..{len(rows) - 1}, got "
                             f"{[r['episode_index'] for r in rows]}")
        for key in ("dataset_from_index", "dataset_to_index", "data/chunk_index", "data/file_index"):
            if key not in rows[0]:
                raise ValueError(f"{self.root / EPISODES_DIR} has no {key!r} column: not LeRobotDataset "
                                 f"{CODEBASE_VERSION} episodes metadata")
        return rows

    def _read_stats(self) -> dict[str, dict[str, Tensor]] | None:
        path = self.root / STATS_PATH
        if not path.exists():
            return None
        stats = json.loads(path.read_text())
        return {feature: {name: _stat_tensor(value) for name, value in by_stat.items()}
                for feature, by_stat in stats.items()}

    # ------------------------------------------------------------------------------------------------ views
    @property
    def version(self) -> str:
        return str(self.info["codebase_version"])

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.info["features"]

    @property
    def image_keys(self) -> list[str]:
        """Cameras stored as images in the data parquet files."""
        return [k for k, f in self.features.items() if f["dtype"] == "image"]

    @property
    def video_keys(self) -> list[str]:
        """Cameras stored as MP4 videos."""
        return [k for k, f in self.features.items() if f["dtype"] == "video"]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] in ("image", "video")]

    @property
    def total_episodes(self) -> int:
        return len(self.episodes)

    @property
    def total_frames(self) -> int:
        return sum(int(e["length"]) if "length" in e else e["dataset_to_index"] - e["dataset_from_index"]
                   for e in self.episodes)

    def data_file(self, episode: dict[str, Any]) -> Path:
        """The data parquet file of an episode."""
        return self.root / self.info["data_path"].format(chunk_index=episode["data/chunk_index"],
                                                          file_index=episode["data/file_index"])


def _stat_tensor(value: Any) -> Tensor:
    array = np.asarray(value)
    return torch.from_numpy(array.astype(np.float32 if array.dtype.kind == "f" else np.int64))


def video_query(meta: LeRobotMetadata, episode_index: int, key: str, timestamps: Sequence[float]) -> tuple[Path,
                                                                                                            list[float]]:
    """(the MP4 file, the timestamps in it) of camera `key`'s frames at `timestamps` of an episode: its episodes
    share the file, the episode starting at its `videos/<key>/from_timestamp`.

    >>> # video_query(meta, 3, "observation.images.top", [0.0, 0.1])  ->  (.../file-000.mp4, [12.4, 12.5])
    """
    episode = meta.episodes[episode_index]
    path = meta.root / meta.info["video_path"].format(video_key=key, chunk_index=episode[f"videos/{key}/chunk_index"],
                                                      file_index=episode[f"videos/{key}/file_index"])
    start = float(episode[f"videos/{key}/from_timestamp"])
    return path, [start + float(t) for t in timestamps]


class LeRobotDataset(Dataset):
    """The frames of a LeRobotDataset v3.0 folder, read offline (see the module docstring for what a frame holds).

    Args:
        root: the dataset folder (meta/, data/, videos/).
        episodes: episode indices to read (default all); frames are numbered across them in this order.
        delta_timestamps: {feature: [seconds]}: stack each feature at these offsets from the frame, clamped to the
            episode, with "<feature>_is_pad" (lerobot's `delta_timestamps`); each a multiple of 1/fps.
        action_horizon: H >= 1: the action chunk of the next H steps ({"action": [0, 1/fps, ..., (H-1)/fps]}).
        images: "float": cameras (C, H, W) float32 in [0, 1] (lerobot); "uint8": (H, W, C) uint8 as stored.
        image_transforms: applied to every camera tensor (after `images`), as lerobot's.
        skip_videos: leave MP4 cameras out (read the other features without a video decoder).
        tolerance_s: a decoded video frame must lie closer than this to the timestamp asked, and a
            `delta_timestamps` offset within it of a whole frame (lerobot's 1e-4 s).

    Attributes:
        meta: the `LeRobotMetadata`; `stats`, `fps`, `features`, `camera_keys` are its.

    >>> data = LeRobotDataset("my_dataset", delta_timestamps={"action": [0.0, 0.1, 0.2]})  # doctest: +SKIP
    """

    def __init__(self, root: str | Path, *, episodes: Sequence[int] | None = None,
                 delta_timestamps: dict[str, Sequence[float]] | None = None, action_horizon: int | None = None,
                 images: str = "float", image_transforms: Callable[[Tensor], Tensor] | None = None,
                 skip_videos: bool = False, tolerance_s: float = TOLERANCE_S) -> None:
        if images not in IMAGE_FORMATS:
            raise ValueError(f"images must be one of {IMAGE_FORMATS}, got {images!r}")
        if not (isinstance(tolerance_s, (int, float)) and math.isfinite(tolerance_s) and tolerance_s >= 0):
            raise ValueError(f"tolerance_s must be a finite number >= 0, got {tolerance_s!r}")
        self.meta = LeRobotMetadata(root)
        self.images, self.image_transforms, self.tolerance_s = images, image_transforms, float(tolerance_s)
        self.episode_indices = self._select(episodes)
        self.video_keys = [] if skip_videos else self.meta.video_keys
        if self.video_keys:
            _video_decoder(self.video_keys)  # fail now, naming the package, rather than at the first frame
        self.delta_indices = self._delta_indices(delta_timestamps, action_horizon, skip_videos)
        starts = [0]
        for e in self.episode_indices:
            ep = self.meta.episodes[e]
            starts.append(starts[-1] + ep["dataset_to_index"] - ep["dataset_from_index"])
        self._starts = starts  # frame numbers where each selected episode begins, then the total
        for e in self.episode_indices:
            path = self.meta.data_file(self.meta.episodes[e])
            if not path.exists():
                raise FileNotFoundError(f"{path} (the frames of episode {e}) is missing: the LeRobotDataset folder "
                                        f"{self.meta.root} is incomplete; download it again")
        self._tables: dict[Path, tuple[Any, dict[int, int] | int]] = {}  # file -> (table, global index -> row)
        self._videos: OrderedDict[Path, Any] = OrderedDict()  # MP4 file -> open PyAV container, least recent first
        self._videos_pid = os.getpid()
        self._videos_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a DataLoader worker started by spawn) without the open video containers and their lock."""
        state = self.__dict__.copy()
        state.update(_videos=OrderedDict(), _videos_lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._videos_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ setup
    def _select(self, episodes: Sequence[int] | None) -> list[int]:
        n = self.meta.total_episodes
        if episodes is None:
            return list(range(n))
        chosen = [int(e) for e in episodes]
        bad = [e for e in chosen if not 0 <= e < n]
        if bad:
            raise ValueError(f"episodes {bad} are not in this dataset (episode indices 0..{n - 1})")
        if not chosen:
            raise ValueError("episodes is empty: give at least one episode index, or None for all")
        return chosen

    def _delta_indices(self, delta_timestamps: dict[str, Sequence[float]] | None, action_horizon: int | None,
                       skip_videos: bool) -> dict[str, list[int]]:
        """{feature: frame offsets} from `delta_timestamps` and `action_horizon` (lerobot's `get_delta_indices`,
        after its check that every offset is a whole number of frames within `tolerance_s`)."""
        deltas = {k: list(v) for k, v in (delta_timestamps or {}).items()}
        fps = self.meta.fps
        if action_horizon is not None:
            if isinstance(action_horizon, bool) or not isinstance(action_horizon, int) or action_horizon < 1:
                raise ValueError(f"action_horizon must be an integer >= 1, got {action_horizon!r}")
            if "action" in deltas:
                raise ValueError("give the action chunk once: action_horizon or delta_timestamps['action'], not both")
            deltas["action"] = [i / fps for i in range(action_horizon)]
        out: dict[str, list[int]] = {}
        for key, seconds in deltas.items():
            if key not in self.meta.features:
                raise ValueError(f"delta_timestamps names {key!r}, which is not a feature of this dataset "
                                 f"({', '.join(self.meta.features)})")
            if skip_videos and key in self.meta.video_keys:
                raise ValueError(f"delta_timestamps names the video camera {key!r} but skip_videos=True leaves it out")
            if not seconds:
                raise ValueError(f"delta_timestamps[{key!r}] is empty: give at least one offset in seconds")
            off = [s for s in seconds if abs(s * fps - round(s * fps)) / fps > self.tolerance_s]
            if off:
                raise ValueError(f"delta_timestamps[{key!r}] holds {off}, not multiples of 1/fps = {1 / fps:g} s "
                                 f"(within tolerance_s={self.tolerance_s:g}): give whole frames, e.g. k / {fps}")
            out[key] = [round(s * fps) for s in seconds]
        return out

    # ------------------------------------------------------------------------------------------------ access
    @property
    def stats(self) -> dict[str, dict[str, Tensor]] | None:
        return self.meta.stats

    @property
    def fps(self) -> int:
        return self.meta.fps

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.meta.features

    @property
    def camera_keys(self) -> list[str]:
        return [k for k in self.meta.camera_keys if k in self.meta.image_keys or k in self.video_keys]

    @property
    def num_episodes(self) -> int:
        return len(self.episode_indices)

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames")
        index %= len(self)
        slot = bisect.bisect_right(self._starts, index) - 1
        e = self.episode_indices[slot]
        episode = self.meta.episodes[e]
        lo, hi = episode["dataset_from_index"], episode["dataset_to_index"]  # the episode's global frame indices
        g = lo + index - self._starts[slot]
        item = self._frames(episode, [g])
        item = {k: v[0] for k, v in item.items()}
        for key, offsets in self.delta_indices.items():
            wanted = [g + d for d in offsets]
            rows = [min(max(w, lo), hi - 1) for w in wanted]  # clamped to the episode, as lerobot pads
            if key in self.video_keys:
                timestamps = self._frames(episode, rows, ["timestamp"])["timestamp"]
                item[key] = self._video(e, key, [float(t) for t in timestamps])
            else:
                item[key] = torch.stack(self._frames(episode, rows, [key])[key])
            item[f"{key}_is_pad"] = torch.tensor([w < lo or w >= hi for w in wanted])
        for key in self.video_keys:
            if key not in self.delta_indices:
                item[key] = self._video(e, key, [float(item["timestamp"])])[0]
        if self.image_transforms is not None:
            for key in self.camera_keys:
                item[key] = self.image_transforms(item[key])
        task_index = int(item["task_index"]) if "task_index" in item else None
        item["task"] = self.meta.tasks[task_index] if task_index is not None else episode["tasks"][0]
        return item

    def _table(self, episode: dict[str, Any]) -> tuple[Any, dict[int, int] | int]:
        """The episode's data file as a pyarrow table (read once) and how a global frame index finds its row: an
        offset when the file's `index` column runs without gaps, else a lookup."""
        path = self.meta.data_file(episode)
        if path not in self._tables:
            _, pq = _pyarrow()
            table = pq.read_table(path, memory_map=True)
            if "index" not in table.column_names:
                raise ValueError(f"{path} has no 'index' column (the global frame index): not a LeRobotDataset "
                                 f"{CODEBASE_VERSION} data file")
            index = table["index"].to_numpy()
            contiguous = len(index) > 0 and bool((np.diff(index) == 1).all())
            self._tables[path] = (table, int(index[0]) if contiguous else {int(g): r for r, g in enumerate(index)})
        return self._tables[path]

    def _frames(self, episode: dict[str, Any], frames: list[int], keys: Sequence[str] | None = None
                ) -> dict[str, list[Any]]:
        """{feature: [value per frame]} of the global frame indices `frames` (every parquet feature by default)."""
        pa, _ = _pyarrow()
        table, where = self._table(episode)
        rows = [g - where for g in frames] if isinstance(where, int) else [where[g] for g in frames]
        if any(not 0 <= r < table.num_rows for r in rows):
            raise ValueError(f"frames {frames} of episode {episode['episode_index']} are not all in "
                             f"{self.meta.data_file(episode)}: its episodes metadata and data files disagree")
        if keys is None:
            keys = [k for k in self.meta.features if k in table.column_names]
        values = table.select(list(keys)).take(pa.array(rows, type=pa.int64())).to_pydict()
        return {k: [self._convert(k, v) for v in values[k]] for k in keys}

    def _convert(self, key: str, value: Any) -> Any:
        """One stored value of feature `key` -> what a frame holds (see the module docstring)."""
        feature = self.meta.features.get(key, {})
        dtype = feature.get("dtype")
        if dtype == "image":
            return self._image(key, value)
        if dtype == "string" or isinstance(value, str):
            return value
        array = np.asarray(value)
        if array.dtype.kind == "f":
            return torch.from_numpy(array.astype(np.float32))
        if array.dtype.kind == "b":
            return torch.from_numpy(array)
        return torch.from_numpy(array.astype(np.int64))

    def _image(self, key: str, value: Any) -> Tensor:
        from PIL import Image

        if not isinstance(value, dict) or (value.get("bytes") is None and not value.get("path")):
            raise ValueError(f"image feature {key!r} holds {type(value).__name__}, not lerobot's {{bytes, path}} "
                             "struct of an image file")
        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else self.meta.root / value["path"]
        with Image.open(source) as image:
            pixels = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels  # (H, W, C)
        return self._camera(torch.from_numpy(pixels.copy()))

    def _camera(self, pixels: Tensor) -> Tensor:
        """(..., H, W, C) uint8 -> the `images` format: (..., C, H, W) float32 in [0, 1], or as it is."""
        if self.images == "uint8":
            return pixels
        return pixels.movedim(-1, -3).float().div(255)

    def _video(self, episode_index: int, key: str, timestamps: list[float]) -> Tensor:
        """Camera `key`'s frames of an episode at `timestamps` (seconds in the episode), in the `images` format."""
        path, shifted = video_query(self.meta, episode_index, key, timestamps)
        with self._videos_lock:
            try:
                container = self._container(path, f"camera {key!r} of episode {episode_index}")
                pixels = decode_video_frames(container, shifted, self.tolerance_s, name=path)
            except FrameTimestampError as e:
                start = float(self.meta.episodes[episode_index][f"videos/{key}/from_timestamp"])
                raise FrameTimestampError(
                    f"camera {key!r} of episode {episode_index} at {_seconds(timestamps)} s of the episode (+ its "
                    f"videos/{key}/from_timestamp {start:g} s): {e}") from None
        return self._camera(pixels)

    def _container(self, path: Path, what: str) -> Any:
        """The open PyAV container of an MP4 file: kept open for the next frame, the `OPEN_VIDEOS` most recently
        read per process (a forked DataLoader worker opens its own: the parent's share its file offsets)."""
        if self._videos_pid != os.getpid():
            self._videos, self._videos_pid = OrderedDict(), os.getpid()
        container = self._videos.pop(path, None)
        if container is None:
            if not path.exists():
                raise FileNotFoundError(f"{path} ({what}) is missing: the LeRobotDataset folder {self.meta.root} is "
                                        "incomplete; download it again")
            container = _video_decoder([str(path)]).open(str(path))
        self._videos[path] = container
        while len(self._videos) > OPEN_VIDEOS:
            self._videos.popitem(last=False)[1].close()
        return container


class FrameTimestampError(ValueError):
    """A video has no frame close enough to a timestamp asked (the video and the episodes metadata disagree)."""


def _video_decoder(keys: Sequence[str]) -> Any:
    """PyAV (the `av` module), or an ImportError naming the cameras and the install."""
    try:
        import av
    except ImportError as e:
        raise ImportError(f"this LeRobotDataset stores the cameras {list(keys)} as MP4 videos; decoding them needs "
                          "PyAV: pip install av (or pass skip_videos=True to read the other features)") from e
    return av


def _seconds(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def decode_video_frames(video: str | Path | Any, timestamps: Sequence[float], tolerance_s: float = TOLERANCE_S, *,
                        name: str | Path | None = None) -> Tensor:
    """(N, H, W, 3) uint8: the frames of a video file (a path, or an open PyAV input container, which is left open)
    nearest to `timestamps` (seconds of the file's presentation times), as lerobot's `decode_video_frames`: seek to the
    keyframe at or before the first timestamp, decode up to the first frame at or after the last, and pick for each
    timestamp the frame whose time is nearest, which must be closer than `tolerance_s`.

    Raises:
        FrameTimestampError: a timestamp has no frame within `tolerance_s` (the message names them and the nearest
            frames' times).
        ValueError: no timestamp, or the file holds no video stream.

    >>> decode_video_frames("videos/observation.images.top/chunk-000/file-000.mp4", [0.0, 0.1])  # doctest: +SKIP
    """
    wanted = [float(t) for t in timestamps]
    if not wanted:
        raise ValueError("decode_video_frames needs at least one timestamp")
    if isinstance(video, (str, Path)):
        with _video_decoder([str(video)]).open(str(video)) as container:
            return decode_video_frames(container, wanted, tolerance_s, name=name or video)
    name = name or getattr(video, "name", "the video")
    if not video.streams.video:
        raise ValueError(f"{name} holds no video stream: not a LeRobotDataset camera video")
    stream = video.streams.video[0]
    start = stream.start_time if stream.start_time is not None else 0
    first = max(int(math.floor((min(wanted) - tolerance_s) / stream.time_base)), start)
    times, frames, gaps, earliest = _nearest(video, stream, first, wanted)
    head = wanted.index(min(wanted))
    if first > start and not gaps[head] < tolerance_s and earliest > wanted[head]:  # the seek overshot: from the start
        times, frames, gaps, earliest = _nearest(video, stream, start, wanted)
    bad = [i for i, gap in enumerate(gaps) if not gap < tolerance_s]
    if bad:
        nearest = [times[i] for i in bad if times[i] is not None]
        raise FrameTimestampError(
            f"{name} has no frame within tolerance_s={tolerance_s:g} s of {_seconds([wanted[i] for i in bad])} s "
            f"(nearest decoded frames at {_seconds(nearest)} s): the video and the episodes metadata disagree; "
            "download the dataset again, or raise tolerance_s")
    pixels: dict[int, np.ndarray] = {}
    for frame in frames:
        if id(frame) not in pixels:
            # one swscale thread: a slice-thread pool made here would be inherited, dead, by a forked DataLoader
            # worker, whose conversion then waits on it forever
            pixels[id(frame)] = frame.reformat(format="rgb24", threads=1).to_ndarray()  # (H, W, 3)
    return torch.from_numpy(np.stack([pixels[id(frame)] for frame in frames]))


def _nearest(container: Any, stream: Any, seek_pts: int, wanted: list[float]
             ) -> tuple[list[float | None], list[Any], list[float], float]:
    """Seek to the keyframe at or before `seek_pts` and decode to the first frame at or after max(wanted): for each
    timestamp the nearest frame's time, the frame, and its distance (inf when nothing decoded); and the earliest
    decoded frame's time."""
    container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
    times: list[float | None] = [None] * len(wanted)
    frames: list[Any] = [None] * len(wanted)
    gaps = [math.inf] * len(wanted)
    last, earliest = max(wanted), math.inf
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        t = float(frame.pts * stream.time_base)
        earliest = min(earliest, t)
        for i, q in enumerate(wanted):
            if abs(t - q) < gaps[i]:
                times[i], frames[i], gaps[i] = t, frame, abs(t - q)
        if t >= last:  # every later frame is farther from every timestamp wanted
            break
    return times, frames, gaps, earliest
