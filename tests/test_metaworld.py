"""Meta-World simulator wrapper (`mmdiff.sim.metaworld`) and the scripted-expert demonstrations
(`mmdiff.data.metaworld_demos`). Tests that run the simulator skip when metaworld (the `robot` extra) is absent."""

import importlib.util
import sys

import numpy as np
import pytest
import torch

from mmdiff.sim.metaworld import INSTRUCTIONS, instruction, resolve_task, supported_tasks

needs_metaworld = pytest.mark.skipif(importlib.util.find_spec("metaworld") is None,
                                     reason="Meta-World is not installed: pip install \"mmdiff[robot]\"")

EXPERT_TASKS = ("reach", "push", "pick-place", "drawer-open")


# ---------------------------------------------------------------------------------------------------- names
def test_task_names_and_instructions():
    assert len(supported_tasks()) == 50 and len(set(INSTRUCTIONS.values())) == 50
    assert resolve_task("drawer-open-v3") == "drawer-open" == resolve_task("Drawer_Open")
    assert instruction("pick-place") == "pick up the cube and place it at the goal"


def test_unknown_task_names_the_closest():
    with pytest.raises(ValueError, match=r"unknown Meta-World task 'drawer-opn'.*'drawer-open'"):
        resolve_task("drawer-opn")
    with pytest.raises(ValueError, match="supported_tasks"):
        instruction("fly")


def test_missing_simulator_names_the_fix(monkeypatch):
    from mmdiff.sim.metaworld import MetaWorldEnv

    monkeypatch.setitem(sys.modules, "metaworld", None)  # import metaworld raises ImportError
    with pytest.raises(ImportError, match=r"pip install \"mmdiff\[robot\]\""):
        MetaWorldEnv("reach")


@needs_metaworld
def test_metaworld_task_list_matches():
    import metaworld

    assert sorted(supported_tasks()) == sorted(k[: -len("-v3")] for k in metaworld.ALL_V3_ENVIRONMENTS)


# ---------------------------------------------------------------------------------------------------- env
@needs_metaworld
def test_seeded_reset_is_reproducible():
    from mmdiff.sim.metaworld import make_env

    with make_env("push", image_size=(24, 32)) as env:
        first = env.reset(seed=5)
        start = env.initial_state
        other = env.reset(seed=6)
        again = env.reset(seed=5)
        assert np.array_equal(first["observation.state"], again["observation.state"])
        assert np.array_equal(first["observation.images.corner"], again["observation.images.corner"])
        assert np.array_equal(start, env.initial_state)
        assert not np.allclose(first["observation.state"], other["observation.state"])
        assert first["task"] == "push the cube to the goal"
        assert first["observation.state"].shape == (39,) and first["observation.state"].dtype == np.float32


@needs_metaworld
def test_image_size_dtype_and_upright():
    from mmdiff.sim.metaworld import make_env

    with make_env("reach", image_size=(48, 40)) as env:
        image = env.reset(seed=0)["observation.images.corner"]
        assert image.shape == (48, 40, 3) and image.dtype == np.uint8
        # the corner camera's image-up axis points down in the world: the raw frame is upside down, and the
        # observation is that frame rotated by 180 degrees (the camera rolled upright, not mirrored)
        assert env.upside_down()
        assert np.array_equal(image, env.render_raw()[::-1, ::-1])
        rgb = image.astype(int)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        robot = (r > 90) & (g < 50) & (b < 50)  # the red Sawyer arm
        wood = (r > g + 10) & (g > b + 10) & (r < 220) & ~robot  # the table top
        rows, cols = np.arange(48)[:, None], np.arange(40)[None, :]
        # upright: the table top in the lower half, the arm rising above it, standing right of the table (as seen
        # from the camera's place in the world); a vertical flip alone would put the arm on the left
        assert (rows * wood).sum() / wood.sum() > 0.6 * 48
        assert (rows * robot).sum() / robot.sum() < (rows * wood).sum() / wood.sum()
        assert (cols * robot).sum() / robot.sum() > 0.6 * 40


@needs_metaworld
def test_plain_rendering_is_close_to_meta_worlds():
    from mmdiff.sim.metaworld import make_env

    frames = []
    for shadows in (True, False):
        with make_env("drawer-open", image_size=32, shadows=shadows) as env:
            frames.append(env.reset(seed=1)["observation.images.corner"].astype(np.float64))
    difference = np.abs(frames[0] - frames[1]).mean()
    assert 0 < difference < 8  # shadows and reflections only: a few grey levels on average


@needs_metaworld
def test_a_step_without_rendering_has_the_same_state_and_no_image():
    from mmdiff.sim.metaworld import make_env

    with make_env("push", image_size=16) as drawn, make_env("push", image_size=16) as blind:
        drawn.reset(seed=4), blind.reset(seed=4)
        for action in np.random.default_rng(0).uniform(-1, 1, (5, 4)).astype(np.float32):
            a, ra, _, _, _ = drawn.step(action)
            b, rb, _, _, _ = blind.step(action, render=False)
            assert "observation.images.corner" not in b and ra == rb
            np.testing.assert_array_equal(a["observation.state"], b["observation.state"])
        np.testing.assert_array_equal(blind.render(), a["observation.images.corner"])  # the current frame on demand


@needs_metaworld
def test_bad_actions_and_cameras():
    from mmdiff.sim.metaworld import make_env

    with make_env("reach", image_size=None) as env:
        env.reset(seed=0)
        with pytest.raises(ValueError, match=r"shape \(4,\)"):
            env.step(np.zeros(7))
        with pytest.raises(ValueError, match="non-finite"):
            env.step(np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="unknown camera 'side'.*'corner'"):
        make_env("reach", camera="side")


@needs_metaworld
@pytest.mark.parametrize("task", EXPERT_TASKS)
def test_scripted_expert_succeeds(task):
    from mmdiff.sim.metaworld import make_env, scripted_expert

    expert = scripted_expert(task)
    with make_env(task, image_size=None, max_steps=200) as env:  # state only: no frames to render
        for seed in (0, 1, 2):
            obs, success, truncated = env.reset(seed=seed), False, False
            while not (success or truncated):
                obs, _, success, truncated, info = env.step(expert(obs))
            assert success and info["success"], f"{task} seed {seed}: no success in {env.steps} steps"


# ---------------------------------------------------------------------------------------------------- demos
def _source(root, **options):
    from mmdiff.data.metaworld_demos import MetaWorldDemosSource

    settings = {"tasks": ["reach"], "train_episodes": 2, "val_episodes": 2, "image_size": 16, "max_steps": 4,
                "only_successful": False}
    return MetaWorldDemosSource(root, **{**settings, **options})


@needs_metaworld
def test_demonstrations_are_deterministic_and_cached(tmp_path):
    from mmdiff.data.metaworld_demos import record_episode
    from mmdiff.sim.metaworld import make_env

    with make_env("reach", image_size=16, max_steps=4) as env:
        a, b, c = record_episode(env, seed=3), record_episode(env, seed=3), record_episode(env, seed=4)
    for key in ("images", "state", "action", "initial_state"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert not np.allclose(a.initial_state, c.initial_state)
    assert a.images.shape == (4, 16, 16, 3) and a.images.dtype == np.uint8 and a.action.shape == (4, 4)

    source = _source(tmp_path)
    recorded = source.episodes("train")
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 4 and not list(tmp_path.rglob("*.pkl"))
    cached = _source(tmp_path).episodes("train")  # read back from the files
    for x, y in zip(recorded, cached, strict=True):
        assert x.seed == y.seed and np.array_equal(x.images, y.images) and np.array_equal(x.action, y.action)
    moved = _source(tmp_path, image_size=12)  # other settings: recorded afresh, not read from the 16x16 files
    assert moved.episodes("val")[0].images.shape[1:] == (12, 12, 3)


@needs_metaworld
def test_held_out_seeds_never_in_train(tmp_path, monkeypatch):
    from mmdiff.data.metaworld_demos import MetaWorldDemosSource

    source = _source(tmp_path)
    train, val = source.episode_seeds("train", "reach"), source.episode_seeds("val", "reach")
    assert len(train) == 2 and len(val) == 2 and not set(train) & set(val)
    assert train == source.candidate_seeds("train", "reach", 2)
    # a train stream that draws a held-out seed skips it
    real = MetaWorldDemosSource._stream_seed

    def colliding(self, stream, task, k):
        return real(self, 1 - stream, task, k) if (stream, k) == (0, 0) else real(self, stream, task, k)

    monkeypatch.setattr(MetaWorldDemosSource, "_stream_seed", colliding)
    clash = _source(tmp_path)
    train, val = clash.episode_seeds("train", "reach"), clash.episode_seeds("val", "reach")
    assert train == clash.candidate_seeds("train", "reach", 3)[1:] and not set(train) & set(val)
    starts = {tuple(e.initial_state) for e in clash.episodes("val")}
    assert not any(tuple(e.initial_state) in starts for e in clash.episodes("train"))


@needs_metaworld
def test_dataset_frames_and_action_chunks(tmp_path):
    source = _source(tmp_path, chunk_size=3)
    episodes, frames = source.episodes("train"), source.dataset("train")
    assert len(frames) == 8
    last = frames[7]  # episode 1, step 3: the chunk runs past the end and repeats the last action
    assert (last["episode_index"], last["frame_index"], last["task"]) == (1, 3, "reach the goal")
    expected = episodes[1].action[[3, 3, 3]]
    assert torch.equal(last["action"], torch.from_numpy(expected))
    assert last["action_is_pad"].tolist() == [False, True, True]
    first = frames[4]
    assert torch.equal(first["action"], torch.from_numpy(episodes[1].action[0:3]))
    assert torch.equal(first["observation.images.corner"], torch.from_numpy(episodes[1].images[0]))
    assert torch.equal(first["observation.state"], torch.from_numpy(episodes[1].state[0]))
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        source.dataset("test")
