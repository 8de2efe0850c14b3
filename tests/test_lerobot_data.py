"""The LeRobotDataset v3.0 reader on a tiny dataset written here the way lerobot writes one (2 episodes over two data
files, a camera as PNG bytes in parquet, tasks as a pandas-indexed parquet, episodes metadata with stats columns,
stats.json): exact values read back, action chunks padded at the episode's end, and the errors of bad folders. With
PyAV, a second camera as an MP4 both episodes share (lossless H.264 in RGB, episode 1 from its from_timestamp): every
frame read back exactly, frames off the tolerance named, and the decoder's picks equal a front-to-back decode."""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pd = pytest.importorskip("pandas")

from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from mmdiff.data.lerobot import LeRobotDataset, LeRobotMetadata, video_query  # noqa: E402

FPS = 10
LENGTHS = (4, 3)  # frames of episodes 0 and 1
TASKS = ("pick up the cube", "open the drawer")
H, W = 8, 6
CAMERA = "observation.images.top"


def state(e: int, f: int) -> list[float]:
    return [float(e), float(f), 10.0 * e + f]


def action(e: int, f: int) -> list[float]:
    return [0.5 * f, -1.0 * e - 0.25]


def pixels(e: int, f: int) -> np.ndarray:
    """(H, W, 3) uint8: red encodes the frame, green the row, blue the column."""
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[..., 0] = 40 * e + 10 * f
    img[..., 1] = (np.arange(H) * 20)[:, None]
    img[..., 2] = (np.arange(W) * 30)[None, :]
    return img


def png(img: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="PNG")
    return buffer.getvalue()


FEATURES = {
    CAMERA: {"dtype": "image", "shape": [H, W, 3], "names": ["height", "width", "channel"]},
    "observation.state": {"dtype": "float32", "shape": [3], "names": ["x", "y", "z"]},
    "action": {"dtype": "float32", "shape": [2], "names": ["a", "b"]},
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the `datasets.Image` storage


def write_dataset(root: Path, *, version: str = "v3.0") -> Path:
    """A LeRobotDataset v3.0 folder: episode 0 in data/chunk-000/file-000.parquet, episode 1 in file-001."""
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    info = {"codebase_version": version, "robot_type": "toy", "total_episodes": 2, "total_frames": sum(LENGTHS),
            "total_tasks": 2, "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
            "fps": FPS, "splits": {"train": "0:2"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": None, "features": {k: {**v, "fps": FPS} for k, v in FEATURES.items()}}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    tasks = pd.DataFrame({"task_index": [0, 1]}, index=pd.Index(list(TASKS), name="task"))
    tasks.to_parquet(root / "meta" / "tasks.parquet")  # as lerobot's write_tasks
    episodes, start = [], 0
    for e, n in enumerate(LENGTHS):
        frames = range(n)
        columns = {
            CAMERA: pa.array([{"bytes": png(pixels(e, f)), "path": f"frame-{f:06d}.png"} for f in frames],
                             type=IMAGE_TYPE),
            "observation.state": pa.array([state(e, f) for f in frames], type=pa.list_(pa.float32(), 3)),
            "action": pa.array([action(e, f) for f in frames], type=pa.list_(pa.float32(), 2)),
            "timestamp": pa.array([f / FPS for f in frames], type=pa.float32()),
            "frame_index": pa.array(list(frames), type=pa.int64()),
            "episode_index": pa.array([e] * n, type=pa.int64()),
            "index": pa.array([start + f for f in frames], type=pa.int64()),
            "task_index": pa.array([e] * n, type=pa.int64()),
        }
        path = root / "data" / "chunk-000" / f"file-{e:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)
        episodes.append({"episode_index": e, "tasks": [TASKS[e]], "length": n, "data/chunk_index": 0,
                         "data/file_index": e, "dataset_from_index": start, "dataset_to_index": start + n,
                         "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                         "stats/action/mean": [0.5 * (n - 1) / 2, -1.0 * e - 0.25]})
        start += n
    pq.write_table(pa.Table.from_pylist(episodes), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    stats = {"action": {"min": [0.0, -1.25], "max": [1.5, -0.25], "mean": [0.642857, -0.678571],
                        "std": [0.5, 0.5], "count": [7]},
             CAMERA: {"mean": [[[0.5]], [[0.4]], [[0.3]]], "std": [[[0.1]], [[0.1]], [[0.1]]], "count": [7]}}
    (root / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "toy")


def test_frames_read_back_exactly(root):
    data = LeRobotDataset(root)
    assert len(data) == 7 and data.num_episodes == 2 and data.fps == FPS and data.camera_keys == [CAMERA]
    for i, (e, f) in enumerate([(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]):
        item = data[i]
        assert item["task"] == TASKS[e]
        assert torch.equal(item["observation.state"], torch.tensor(state(e, f)))
        assert item["observation.state"].dtype == torch.float32
        assert torch.equal(item["action"], torch.tensor(action(e, f)))
        assert item["timestamp"].item() == pytest.approx(f / FPS) and item["timestamp"].dim() == 0
        assert (item["frame_index"].item(), item["episode_index"].item(), item["index"].item()) == (f, e, i)
        assert item["frame_index"].dtype == torch.int64
        image = item[CAMERA]  # lerobot: (C, H, W) float32 in [0, 1]
        assert image.shape == (3, H, W) and image.dtype == torch.float32
        assert torch.equal(image, torch.from_numpy(pixels(e, f)).permute(2, 0, 1).float() / 255)
    assert data[-1]["index"].item() == 6
    raw = LeRobotDataset(root, images="uint8")[5][CAMERA]
    assert raw.dtype == torch.uint8 and torch.equal(raw, torch.from_numpy(pixels(1, 1)))
    flipped = LeRobotDataset(root, image_transforms=lambda x: x.flip(-1))[0][CAMERA]
    assert torch.equal(flipped, data[0][CAMERA].flip(-1))


def test_metadata_and_stats(root):
    meta = LeRobotMetadata(root)
    assert meta.version == "v3.0" and meta.tasks == list(TASKS) and meta.total_frames == 7
    assert [e["dataset_from_index"] for e in meta.episodes] == [0, 4]
    assert not any(k.startswith("stats/") for k in meta.episodes[0])  # per-episode stats columns left out
    stats = LeRobotDataset(root).stats
    assert torch.equal(stats["action"]["min"], torch.tensor([0.0, -1.25]))
    assert stats["action"]["count"].dtype == torch.int64 and stats["action"]["count"].tolist() == [7]
    assert stats[CAMERA]["mean"].shape == (3, 1, 1) and stats[CAMERA]["mean"][1, 0, 0].item() == pytest.approx(0.4)
    (root / "meta" / "stats.json").unlink()
    assert LeRobotDataset(root).stats is None  # as lerobot: a folder without stats.json has none


def test_action_chunks_pad_at_the_episode_end(root):
    data = LeRobotDataset(root, action_horizon=3)
    item = data[2]  # episode 0, frame 2 of 4: frames 2, 3, then 3 again (padded), never episode 1's
    assert torch.equal(item["action"], torch.tensor([action(0, 2), action(0, 3), action(0, 3)]))
    assert item["action_is_pad"].tolist() == [False, False, True]
    item = data[6]  # the last frame of episode 1
    assert torch.equal(item["action"], torch.tensor([action(1, 2)] * 3))
    assert item["action_is_pad"].tolist() == [False, True, True]
    assert torch.equal(data[4]["action"], torch.tensor([action(1, 0), action(1, 1), action(1, 2)]))
    # delta_timestamps as lerobot's: past frames clamp to the episode's first, cameras stack (T, C, H, W)
    data = LeRobotDataset(root, delta_timestamps={CAMERA: [-0.1, 0.0], "observation.state": [-0.2, -0.1, 0.0]})
    item = data[5]  # episode 1, frame 1
    assert item[CAMERA].shape == (2, 3, H, W) and item[f"{CAMERA}_is_pad"].tolist() == [False, False]
    assert torch.equal(item[CAMERA][0], torch.from_numpy(pixels(1, 0)).permute(2, 0, 1).float() / 255)
    assert torch.equal(item["observation.state"], torch.tensor([state(1, 0), state(1, 0), state(1, 1)]))
    assert item["observation.state_is_pad"].tolist() == [True, False, False]
    batch = next(iter(DataLoader(LeRobotDataset(root, action_horizon=2), batch_size=3)))
    assert batch["action"].shape == (3, 2, 2) and batch["task"] == [TASKS[0]] * 3
    assert batch["action_is_pad"].tolist() == [[False, False]] * 3


def test_episode_selection(root):
    data = LeRobotDataset(root, episodes=[1], action_horizon=2)
    assert len(data) == 3 and data[0]["episode_index"].item() == 1 and data[0]["index"].item() == 4
    assert data[2]["action_is_pad"].tolist() == [False, True]
    both = LeRobotDataset(root, episodes=[1, 0])
    assert [both[i]["index"].item() for i in range(7)] == [4, 5, 6, 0, 1, 2, 3]


def test_bad_options(root):
    with pytest.raises(ValueError, match=r"not multiples of 1/fps = 0.1 s .* give whole frames, e.g. k / 10"):
        LeRobotDataset(root, delta_timestamps={"action": [0.0, 0.05]})
    with pytest.raises(ValueError, match=r"names 'actions', which is not a feature of this dataset"):
        LeRobotDataset(root, delta_timestamps={"actions": [0.0]})
    with pytest.raises(ValueError, match=r"action_horizon or delta_timestamps\['action'\], not both"):
        LeRobotDataset(root, action_horizon=2, delta_timestamps={"action": [0.0]})
    with pytest.raises(ValueError, match=r"action_horizon must be an integer >= 1, got 0"):
        LeRobotDataset(root, action_horizon=0)
    with pytest.raises(ValueError, match=r"episodes \[2\] are not in this dataset \(episode indices 0..1\)"):
        LeRobotDataset(root, episodes=[0, 2])
    with pytest.raises(ValueError, match=r"images must be one of \('float', 'uint8'\)"):
        LeRobotDataset(root, images="png")
    with pytest.raises(IndexError, match=r"frame 7 out of range for 7 frames"):
        LeRobotDataset(root)[7]


def test_v2_folder_is_named_with_the_converter(tmp_path):
    root = write_dataset(tmp_path / "old", version="v2.1")
    (root / "meta" / "episodes.jsonl").write_text('{"episode_index": 0}\n')
    with pytest.raises(ValueError, match=r"LeRobotDataset v2.1 folder \(meta/info.json codebase_version 'v2.1'\); "
                                         r"this reader reads v3.0: convert it .*convert_dataset_v21_to_v30"):
        LeRobotDataset(root)
    (root / "meta" / "info.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"info.json is missing: .* holds meta/episodes.jsonl: an older "
                                                r"lerobot layout; convert it"):
        LeRobotDataset(root)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no LeRobotDataset folder at .*nowhere"):
        LeRobotDataset(tmp_path / "nowhere")
    root = write_dataset(tmp_path / "a")
    (root / "data" / "chunk-000" / "file-001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"file-001.parquet \(the frames of episode 1\) is missing"):
        LeRobotDataset(root)
    assert len(LeRobotDataset(root, episodes=[0])) == 4  # the episodes that are there still read
    root = write_dataset(tmp_path / "b")
    (root / "meta" / "tasks.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"tasks.parquet is missing: the LeRobotDataset folder .* is "
                                                r"incomplete"):
        LeRobotDataset(root)
    root = write_dataset(tmp_path / "c")
    (root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"holds no chunk-XXX/file-XXX.parquet"):
        LeRobotDataset(root)


WRIST = "observation.images.wrist"
STARTS = (0.0, 0.5)  # from_timestamp of episodes 0 and 1 in the shared MP4: a spare frame at 0.4 s between them
GOP = 3  # a keyframe every 3 frames: episode 1's frames sit after a keyframe, past its start


def wrist(e: int, f: int) -> np.ndarray:
    """(H, W, 3) uint8 noise, seeded by the frame: a lossless codec gives back every value."""
    return np.random.default_rng(1000 + 100 * e + f).integers(0, 256, (H, W, 3), dtype=np.uint8)


SPARE = np.random.default_rng(7).integers(0, 256, (H, W, 3), dtype=np.uint8)  # the file's frame of no episode


def write_mp4(path: Path, images: list[np.ndarray], *, codec: str = "libx264rgb", pix_fmt: str = "rgb24",
              options: dict[str, str] | None = None) -> Path:
    """An MP4 at FPS frames a second, as lerobot's `encode_video_frames` writes one (PyAV, one video stream, frame i
    at i / FPS s). The default, libx264rgb at qp 0 in rgb24, is lossless: H.264 High 4:4:4 Predictive in RGB, which
    the decoder returns as planar gbrp and PyAV converts to rgb24 by reordering bytes only."""
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    if options is None:
        options = {"qp": "0", "g": str(GOP), "sc_threshold": "0"}  # lossless, keyframes every GOP frames exactly
    with av.open(str(path), "w") as output:
        stream = output.add_stream(codec, rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = images[0].shape[1], images[0].shape[0], pix_fmt
        for image in images:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        output.mux(stream.encode())
    return path


def add_video_camera(root: Path, starts: tuple[float, ...] = STARTS, *, write: bool = True) -> Path:
    """Camera WRIST as a "video" feature: both episodes in videos/WRIST/chunk-000/file-000.mp4 (as v3 stores them),
    episode e from `starts[e]` s on; with `write`, the MP4 itself (frames of episode 0, SPARE, frames of episode 1)."""
    info = json.loads((root / "meta" / "info.json").read_text())
    info["video_path"] = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    info["features"][WRIST] = {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"],
                               "info": {"video.fps": FPS, "video.height": H, "video.width": W, "video.channels": 3,
                                        "video.codec": "h264", "video.pix_fmt": "rgb24", "has_audio": False}}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    rows = pq.read_table(path).to_pylist()
    for e, row in enumerate(rows):
        row.update({f"videos/{WRIST}/chunk_index": 0, f"videos/{WRIST}/file_index": 0,
                    f"videos/{WRIST}/from_timestamp": starts[e],
                    f"videos/{WRIST}/to_timestamp": starts[e] + LENGTHS[e] / FPS})
    pq.write_table(pa.Table.from_pylist(rows), path)
    if write:
        frames = [wrist(0, f) for f in range(LENGTHS[0])] + [SPARE] + [wrist(1, f) for f in range(LENGTHS[1])]
        assert len(frames) / FPS == pytest.approx(STARTS[1] + LENGTHS[1] / FPS)
        write_mp4(root / "videos" / WRIST / "chunk-000" / "file-000.mp4", frames)
    return root


def chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


def test_video_cameras_need_pyav_or_are_skipped(tmp_path):
    root = add_video_camera(write_dataset(tmp_path / "v"), write=False)
    meta = LeRobotMetadata(root)
    mp4, shifted = video_query(meta, 1, WRIST, [0.0, 0.2])
    assert mp4 == root / "videos" / WRIST / "chunk-000" / "file-000.mp4"
    assert shifted == pytest.approx([0.5, 0.7])
    try:
        import av  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"cameras \['observation.images.wrist'\] as MP4 videos; decoding "
                                              r"them needs PyAV: pip install av \(or pass skip_videos=True"):
            LeRobotDataset(root)
    else:
        with pytest.raises(FileNotFoundError, match=r"file-000.mp4 \(camera 'observation.images.wrist' of episode "
                                                    r"0\) is missing: the LeRobotDataset folder .* is incomplete"):
            LeRobotDataset(root)[0]
    data = LeRobotDataset(root, skip_videos=True)
    assert data.camera_keys == [CAMERA] and WRIST not in data[0]
    assert torch.equal(data[5]["action"], torch.tensor(action(1, 1)))


@pytest.fixture
def video_root(tmp_path: Path) -> Path:
    pytest.importorskip("av", reason="MP4 cameras need PyAV (pip install av)")
    return add_video_camera(write_dataset(tmp_path / "video"))


def test_video_frames_read_back_exactly(video_root):
    data = LeRobotDataset(video_root)
    assert data.camera_keys == [CAMERA, WRIST]
    pairs = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    for i in [6, 0, 4, 3, 1, 5, 2]:  # out of order: every read seeks
        e, f = pairs[i]
        item = data[i]
        assert item[WRIST].shape == (3, H, W) and item[WRIST].dtype == torch.float32
        assert torch.equal(item[WRIST], chw(wrist(e, f)))  # lossless: exactly the frame written
        assert torch.equal(item[CAMERA], chw(pixels(e, f))) and torch.equal(item["action"], torch.tensor(action(e, f)))
    raw = LeRobotDataset(video_root, images="uint8")
    for i, (e, f) in enumerate(pairs):  # episode 1 from its from_timestamp 0.5 s: never the spare frame at 0.4 s
        assert raw[i][WRIST].dtype == torch.uint8 and torch.equal(raw[i][WRIST], torch.from_numpy(wrist(e, f)))
    only = LeRobotDataset(video_root, episodes=[1], images="uint8")
    assert torch.equal(only[0][WRIST], torch.from_numpy(wrist(1, 0)))
    assert len(data._videos) == 1  # one open container for the file both episodes share


def test_video_delta_timestamps_stack_and_clamp_to_the_episode(video_root):
    data = LeRobotDataset(video_root, delta_timestamps={WRIST: [-0.2, -0.1, 0.0, 0.1]})
    item = data[5]  # episode 1, frame 1: frames 0 (clamped), 0, 1, 2
    assert item[WRIST].shape == (4, 3, H, W)
    assert torch.equal(item[WRIST], torch.stack([chw(wrist(1, f)) for f in (0, 0, 1, 2)]))
    assert item[f"{WRIST}_is_pad"].tolist() == [True, False, False, False]
    item = data[3]  # episode 0's last frame: the frame after it in the file (the spare one) is not the episode's
    assert torch.equal(item[WRIST], torch.stack([chw(wrist(0, f)) for f in (1, 2, 3, 3)]))
    assert item[f"{WRIST}_is_pad"].tolist() == [False, False, False, True]


def test_video_timestamp_outside_tolerance_is_named(tmp_path):
    pytest.importorskip("av", reason="MP4 cameras need PyAV (pip install av)")
    from mmdiff.data.lerobot import FrameTimestampError, decode_video_frames

    root = add_video_camera(write_dataset(tmp_path / "off"), starts=(0.0, 0.53))  # the MP4 as before, frames at k/10 s
    with pytest.raises(FrameTimestampError, match=r"camera 'observation.images.wrist' of episode 1 at \[0.0000\] s "
                       r"of the episode \(\+ its videos/observation.images.wrist/from_timestamp 0.53 s\): .*"
                       r"file-000.mp4 has no frame within tolerance_s=0.0001 s of \[0.5300\] s \(nearest decoded "
                       r"frames at \[0.5000\] s\): the video and the episodes metadata disagree"):
        LeRobotDataset(root)[4]  # episode 1's metadata is 0.03 s off the frames
    loose = LeRobotDataset(root, tolerance_s=0.05, images="uint8")  # nearest frame 0.03 s away: within 0.05 s
    assert torch.equal(loose[4][WRIST], torch.from_numpy(wrist(1, 0)))
    assert torch.equal(loose[0][WRIST], torch.from_numpy(wrist(0, 0)))
    mp4 = root / "videos" / WRIST / "chunk-000" / "file-000.mp4"
    with pytest.raises(FrameTimestampError, match=r"of \[0.4500, 2.0000\] s \(nearest decoded frames at \[0.4000, "
                                                  r"0.7000\] s\)"):
        decode_video_frames(mp4, [0.1, 0.45, 2.0])
    frames = decode_video_frames(mp4, [0.4, 0.0, 0.4])  # repeated and unsorted timestamps
    assert torch.equal(frames, torch.from_numpy(np.stack([SPARE, wrist(0, 0), SPARE])))


def test_video_decoding_matches_a_sequential_decode_with_b_frames(tmp_path):
    """A lossy H.264 (yuv420p, B-frames, so presentation and decoding orders differ and dts starts below 0): each
    frame picked equals the same frame of one front-to-back decode of the whole file, for any set of timestamps."""
    av = pytest.importorskip("av", reason="MP4 cameras need PyAV (pip install av)")
    from mmdiff.data.lerobot import decode_video_frames

    yy, xx = np.mgrid[0:16, 0:16]
    images = [np.stack([(12 * xx + 9 * k) % 256, (12 * yy + 5 * k) % 256, (6 * (xx + yy) + 3 * k) % 256],
                       -1).astype(np.uint8) for k in range(12)]  # a moving pattern the encoder predicts
    mp4 = write_mp4(tmp_path / "b.mp4", images, codec="libx264", pix_fmt="yuv420p",
                    options={"g": "6", "bf": "2", "crf": "18", "sc_threshold": "0"})
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        sequential = {round(float(fr.pts * stream.time_base) * FPS): (fr.pict_type, fr.to_ndarray(format="rgb24"))
                      for fr in container.decode(stream)}
    assert sorted(sequential) == list(range(12))
    assert any(int(kind) == int(av.video.frame.PictureType.B) for kind, _ in sequential.values())
    with av.open(str(mp4)) as container:  # one container for every query, as the dataset keeps it
        for frames in ([7], [0], [11], [5, 6, 7], [10, 2, 8], [9, 9, 1], list(range(12))):
            got = decode_video_frames(container, [k / FPS for k in frames])
            assert torch.equal(got, torch.from_numpy(np.stack([sequential[k][1] for k in frames])))


def test_video_dataset_pickles_and_loads_in_workers(video_root):
    data = LeRobotDataset(video_root, images="uint8")
    assert torch.equal(data[2][WRIST], torch.from_numpy(wrist(0, 2)))  # a container is open now
    copy = pickle.loads(pickle.dumps(data))  # a spawned worker's copy: without the open container
    assert not copy._videos and torch.equal(copy[6][WRIST], torch.from_numpy(wrist(1, 2)))
    batches = list(DataLoader(data, batch_size=4, num_workers=1))  # a forked worker opens its own
    assert torch.equal(torch.cat([b[WRIST] for b in batches]),
                       torch.from_numpy(np.stack([wrist(0, f) for f in range(4)] + [wrist(1, f) for f in range(3)])))


def test_float_timestamps_are_float32_like_lerobot(root):
    item = LeRobotDataset(root)[3]
    assert item["timestamp"].dtype == torch.float32 and math.isclose(item["timestamp"].item(), 0.3, rel_tol=1e-6)
