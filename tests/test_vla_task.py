"""The VLA task and its lerobot-shaped policy: canvas layout values, the action head, the action queue of
`select_action`, batches equal to one-by-one decoding, bad input, and a tiny policy trained inside the test that
imitates a scripted expert on a toy reaching environment far above a random policy."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import build_tiny_tokenizer, randomize_weights

import mmdiff
from mmdiff import CoreConfig, DiffusionModel, ModelConfig, SamplerConfig, VocabLayout
from mmdiff.adapters.actions import ActionBinsConfig, StateBinsConfig, StateMLPConfig
from mmdiff.tasks.vla import VLAOptions, VLAPolicy, VLATask

TOWER = {"img_size": 16, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2,
         "pretrained_cfg_overlay": {"crop_pct": 1.0}}
SPECIALS = ("mask", "eos", "pad", "bos", "image")
ACTION_BINS, STATE_BINS = 16, 8


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def make_vla(tokenizer, *, seed: int = 0, state: str | None = "mlp", cameras=("corner",), action_dim: int = 2,
             state_dim: int = 2, chunk_length: int = 4, d_model: int = 32, n_layers: int = 2, steps: int = 8,
             state_bins: int = STATE_BINS, random_weights: bool = True, **options) -> DiffusionModel:
    """A tiny VLA: a 16x16 ViT (4 tokens per camera), bins over [-1, 1] for actions, the state as one MLP token or
    as bins, random O(1) weights."""
    torch.manual_seed(seed)
    ranges = {"action": ACTION_BINS, **({"state": state_bins} if state == "bins" else {})}
    vocab = VocabLayout.build(text_size=len(tokenizer), specials=SPECIALS, ranges=ranges)
    adapters = {
        "vision": {"adapter": "vision/timm", "model_name": "vit_tiny_patch16_224", "d_model": d_model,
                   "tower_kwargs": TOWER, "feature_layer": None, "projector": "linear"},
        "action": ActionBinsConfig(action_dim=action_dim, num_bins=ACTION_BINS, q01=[-1.0] * action_dim,
                                   q99=[1.0] * action_dim).to_dict(),
    }
    if state == "mlp":
        adapters["state"] = StateMLPConfig(state_dim=state_dim, d_model=d_model, num_tokens=1, mean=[0.0] * state_dim,
                                           std=[1.0] * state_dim).to_dict()
    elif state == "bins":
        adapters["state"] = StateBinsConfig(state_dim=state_dim, num_bins=state_bins, q01=[-1.0] * state_dim,
                                            q99=[1.0] * state_dim).to_dict()
    vla = {"chunk_length": chunk_length, "cameras": list(cameras), "use_state": state is not None,
           "instruction_length": 8, **options}
    config = ModelConfig(CoreConfig(vocab=vocab, d_model=d_model, n_layers=n_layers, n_heads=2, max_seq_len=64),
                         task="vla", task_options={"vla": vla}, adapters=adapters)
    model = DiffusionModel(config, tokenizer=tokenizer, sampler_config=SamplerConfig(steps=steps, gen_length=8,
                                                                                     block_length=8))
    return (randomize_weights(model) if random_weights else model).eval()


def frame(seed: int, cameras=("corner",), state_dim: int = 2, text: str = "to be", chunk: bool = False) -> dict:
    g = np.random.default_rng(seed)
    out = {f"observation.images.{c}": g.integers(0, 256, (16, 16, 3), dtype=np.uint8) for c in cameras}
    out["observation.state"] = g.uniform(-1, 1, state_dim).astype(np.float32)
    out["task"] = text
    if chunk:
        out["action"] = g.uniform(-1, 1, (4, 2)).astype(np.float32)
    return out


def batch(frames: list[dict]) -> dict:
    """Frames stacked into one lerobot batch (images (B, H, W, C), state (B, S), task a list)."""
    return {k: (list(v) if isinstance(v[0], str) else np.stack(v)) for k, v in
            ((k, [f[k] for f in frames]) for k in frames[0])}


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_vla(tokenizer)


# ------------------------------------------------------------------------------------------------ canvas layout
def test_training_canvas_layout_exact(tokenizer):
    """[pad] [camera 1 x 4] [camera 2 x 4] [instruction] [state token] | [8 action ids], the state as an MLP token,
    the actions binned by hand."""
    model = make_vla(tokenizer, cameras=("corner", "wrist"))
    vocab = model.vocab
    texts = ["to be", "the quick"]
    examples = [frame(i, cameras=("corner", "wrist"), text=t, chunk=True) for i, t in enumerate(texts)]
    canvas = VLATask.collator(model)(examples)
    text_ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    I, N, K, A = 8, 8, 1, 8
    P = I + N + K
    assert canvas.ids.shape == (2, P + A)
    image_id, pad_id = vocab.id("image"), vocab.pad_id
    start, _ = vocab.range("action")
    for row, (ids, example) in enumerate(zip(text_ids, examples, strict=True)):
        lead = I - len(ids)
        codes = np.floor((np.clip(example["action"], -1, 1) + 1) / 2 * ACTION_BINS).clip(0, ACTION_BINS - 1)
        expected = [pad_id] * lead + [image_id] * N + ids + [pad_id] + (start + codes.reshape(-1)).tolist()
        assert canvas.ids[row].tolist() == expected
        assert canvas.attention_mask[row].tolist() == [False] * lead + [True] * (P - lead + A)
        assert canvas.position_ids[row, lead:].tolist() == list(range(P - lead + A))
        assert canvas.soft_positions[row].tolist() == [*range(lead, lead + N), P - 1]  # cameras, then the state
    assert canvas.maskable.tolist() == [[False] * P + [True] * A] * 2
    assert list(canvas.signals) == ["vision:corner", "vision:wrist", "state"]
    wrist = torch.stack([torch.from_numpy(e["observation.images.wrist"]).permute(2, 0, 1) / 255 for e in examples])
    expected_pixels = model.adapters["vision"].preprocess(wrist)
    torch.testing.assert_close(canvas.signals["vision:wrist"], expected_pixels, rtol=0, atol=0)
    assert canvas.signals["state"].tolist() == [e["observation.state"].tolist() for e in examples]
    assert canvas.head == "action" and canvas.vocab_range == vocab.range("action")
    assert canvas.attention == "prefix" and canvas.prefix_len.tolist() == [P, P]
    # the cameras' soft tokens are the adapter's, each at its own columns
    embedded = model.embed_signals(canvas)
    corner = model.adapters["vision"](canvas.signals["vision:corner"])  # (2, 4, d)
    torch.testing.assert_close(embedded.soft_embeds[:, :4], corner)
    assert float(model.loss(canvas).loss.detach()) > 0


def test_state_bins_are_ids_in_the_state_range(tokenizer):
    model = make_vla(tokenizer, state="bins", state_dim=3)
    example = frame(0, state_dim=3, chunk=True)
    canvas = VLATask.collator(model)([example])
    start, _ = model.vocab.range("state")
    codes = np.floor((example["observation.state"] + 1) / 2 * STATE_BINS).clip(0, STATE_BINS - 1)
    P = 8 + 4 + 3
    assert canvas.ids[0, P - 3 : P].tolist() == (start + codes).astype(int).tolist()
    assert list(canvas.signals) == ["vision:corner"] and canvas.soft_positions.shape == (1, 4)


def test_uint8_hwc_and_float_chw_images_give_the_same_canvas(model):
    obs = frame(3)
    as_float = {**obs, "observation.images.corner": torch.from_numpy(obs["observation.images.corner"]
                                                                      ).permute(2, 0, 1).float() / 255}
    a, b = VLATask(model).prompt_canvas(obs), VLATask(model).prompt_canvas(as_float)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.signals["vision:corner"], b.signals["vision:corner"])


# ------------------------------------------------------------------------------------------------ the action head
def test_action_head_never_yields_a_non_action_token(tokenizer):
    """With the output rows of text ids blown up, unrestricted decoding picks text ids; the policy still decodes
    action ids only (every chunk decodes to actions inside the statistics' range)."""
    model = make_vla(tokenizer, seed=1)
    with torch.no_grad():
        model.core.lm_head.weight[: len(tokenizer)] *= 50  # text ids dominate every position's logits
    task = VLATask(model)
    prompt = task.prompt_canvas([frame(i) for i in range(4)])
    free = model.generate(prompt, gen_length=8, steps=8, block_length=8, positions="compact")[:, prompt.length :]
    start, stop = model.vocab.range("action")
    assert not bool(((free >= start) & (free < stop)).all())  # the test bites: the LM head leaves the range
    policy = mmdiff.pipeline("vla", model=model)
    out = policy.model.generate(prompt, **policy.prepare(task.frames([frame(i) for i in range(4)])[0])[1])
    ids = out.sequences[:, prompt.length :]
    assert bool(((ids >= start) & (ids < stop)).all())
    chunks = policy([frame(i) for i in range(4)])
    assert chunks.shape == (4, 4, 2) and float(chunks.abs().max()) <= 1.0


# ------------------------------------------------------------------------------------------------ policy API
def test_select_action_serves_the_chunk_in_order_and_reset_clears_it(model):
    policy = VLAPolicy(model)
    obs = frame(5)
    chunk = policy.predict_action_chunk(obs)  # (H, D)
    assert chunk.shape == (4, 2) and policy.nfe == [4 * 2]
    served = [policy.select_action(obs) for _ in range(4)]
    assert [a.shape for a in served] == [(2,)] * 4
    assert torch.equal(torch.stack(served), chunk) and len(policy.nfe) == 2  # one decode for four actions
    assert policy.queued == 0
    policy.select_action(frame(6))  # a new chunk: decoded from this observation
    assert len(policy.nfe) == 3 and policy.queued == 3
    policy.reset()
    assert policy.queued == 0
    first = policy.select_action(obs)
    assert len(policy.nfe) == 4 and torch.equal(first, chunk[0])  # reset: the next call decodes again
    short = VLAPolicy(model, n_action_steps=2)
    actions = [short.select_action(obs) for _ in range(3)]
    assert len(short.nfe) == 2 and torch.equal(actions[1], chunk[1]) and torch.equal(actions[2], chunk[0])


def test_queued_actions_need_no_images(model):
    """While actions are queued the policy reads no frame (needs_images is False), so an environment may skip
    rendering; the batch size is still checked."""
    policy = VLAPolicy(model)
    assert policy.needs_images
    first = policy.select_action(frame(5))
    assert not policy.needs_images and policy.queued == 3
    blind = {k: v for k, v in frame(5).items() if not k.startswith("observation.images.")}
    served = [policy.select_action(blind) for _ in range(3)]
    assert torch.equal(torch.stack([first, *served]), policy.predict_action_chunk(frame(5)))
    assert policy.needs_images
    with pytest.raises(ValueError, match="has no 'observation.images.corner' image"):
        policy.select_action(blind)  # the next chunk is decoded from this frame: it must hold the image
    rows = VLAPolicy(model)
    rows.select_action(batch([frame(1), frame(2)]))
    with pytest.raises(ValueError, match="got 3 observation rows but the queued chunk has 2"):
        rows.select_action({**blind, "task": ["to be"] * 3})


def test_batches_equal_one_by_one(model):
    frames = [frame(i, text=t) for i, t in enumerate(["to be", "the quick", "or not to be"])]
    policy = mmdiff.pipeline("robotics", model=model)
    one_by_one = torch.stack([policy.predict_action_chunk(f) for f in frames])
    assert torch.equal(policy.predict_action_chunk(batch(frames)), one_by_one)
    assert torch.equal(VLAPolicy(model, batch_size=2)(frames), one_by_one)  # chunks of two rows
    policy.reset()
    actions = policy.select_action(batch(frames))  # (B, D)
    assert actions.shape == (3, 2) and torch.equal(actions, one_by_one[:, 0])
    with pytest.raises(ValueError, match="call reset"):
        policy.select_action(frames[0])


def test_save_and_from_pretrained_give_the_same_actions(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "vla")
    frames = [frame(i) for i in range(2)]
    assert torch.equal(VLAPolicy.from_pretrained(folder)(frames), VLAPolicy(model)(frames))
    assert torch.equal(mmdiff.pipeline("vla", model=str(folder))(frames), VLAPolicy(model)(frames))


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input_names_the_fix(model, tokenizer):
    policy = VLAPolicy(model)
    obs = frame(0)
    with pytest.raises(ValueError, match=r"no 'observation.images.corner' image.*task_options.vla.cameras"):
        policy.select_action({k: v for k, v in obs.items() if "images" not in k} | {"observation.images.top": 0})
    with pytest.raises(ValueError, match=r"no 'observation.state'.*pass the state vector"):
        policy.select_action({k: v for k, v in obs.items() if k != "observation.state"})
    with pytest.raises(ValueError, match="no 'task'"):
        policy.select_action({k: v for k, v in obs.items() if k != "task"})
    with pytest.raises(ValueError, match=r"image is 24x16 but this policy takes 16x16 images.*resize"):
        policy.select_action({**obs, "observation.images.corner": np.zeros((24, 16, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"dtype torch.int64; give uint8 \(H, W, C\) or float"):
        policy.select_action({**obs, "observation.images.corner": np.zeros((16, 16, 3), np.int64)})
    with pytest.raises(ValueError, match=r"values in \[0, 255\]; float images must lie in \[0, 1\]"):
        policy.select_action({**obs, "observation.images.corner": np.linspace(0, 255, 768, dtype=np.float32
                                                                                  ).reshape(3, 16, 16)})
    with pytest.raises(ValueError, match="looks channels-last: permute it to"):
        policy.select_action({**obs, "observation.images.corner": np.zeros((16, 16, 3), np.float32)})
    with pytest.raises(ValueError, match=r"has 5 values but this policy's state adapter.*takes 2"):
        policy.select_action({**obs, "observation.state": np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match="has 27 tokens but instruction_length is 8"):
        policy.select_action({**obs, "task": "the quick brown fox jumps over the lazy dog"})
    with pytest.raises(ValueError, match=r"2 instructions for a batch of 3"):
        policy.select_action({**batch([frame(i) for i in range(3)]), "task": ["to be", "or not"]})
    # the action dimension: the tokenizer's statistics against the data and the environment
    with pytest.raises(ValueError, match=r"\(B, 4, 2\) chunks .* action_dim D = 2.*fit the tokenizer"):
        VLATask.collator(model)([{**frame(0, chunk=True), "action": np.zeros((4, 3), np.float32)}])
    with pytest.raises(ValueError, match=r"MetaWorldDemosSource\(chunk_size=4\)"):
        VLATask.collator(model)([{**frame(0, chunk=True), "action": np.zeros((2, 2), np.float32)}])
    with pytest.raises(ValueError, match=r"takes 4-dimensional actions but this policy's action tokenizer"):
        policy.check_action_dim(4, "the Meta-World environment")
    with pytest.raises(ValueError, match=r"unknown pipeline 'vla-policy'; tasks with one: .*robotics.*vla"):
        mmdiff.pipeline("vla-policy", model=model)
    with pytest.raises(ValueError, match="is a 'text' model, not a 'vla' model"):
        mmdiff.pipeline("vla", model=DiffusionModel(ModelConfig(CoreConfig(vocab=model.vocab, d_model=32,
                                                                           n_layers=1, n_heads=2))))
    with pytest.raises(ValueError, match="n_action_steps must be"):
        VLAPolicy(model, n_action_steps=5)
    with pytest.raises(ValueError, match="use_state is true but the model has no state adapter"):
        VLATask(make_vla(tokenizer, state=None, use_state=True))
    with pytest.raises(ValueError, match="exceed the core's max_seq_len=64"):
        VLATask(make_vla(tokenizer, instruction_length=60)).prompt_canvas(obs)
    with pytest.raises(ValueError, match="chunk_length must be >= 1"):
        VLAOptions(chunk_length=0)


# ------------------------------------------------------------------------------------------------ a toy robot
class PointReach:
    """A 2-D point that must reach the corner an instruction names, B copies stepped in lockstep.

    State: the point's (x, y) in [-1, 1]; image: 16x16, the point drawn white, the goal corner green; action (2,)
    in [-1, 1] moves the point by STEP * action. Success: within TOLERANCE of the goal (max-norm)."""

    GOALS = {"to be": (-0.6, 0.6), "to die": (0.6, 0.6), "to sleep": (-0.6, -0.6), "the mind": (0.6, -0.6)}
    STEP, TOLERANCE, MAX_STEPS = 0.25, 0.1, 12

    def __init__(self, n: int, seed: int) -> None:
        g = np.random.default_rng(seed)
        self.texts = [list(self.GOALS)[i] for i in g.integers(0, 4, n)]
        self.goal = np.array([self.GOALS[t] for t in self.texts])  # (B, 2)
        self.pos = g.uniform(-1, 1, (n, 2))  # (B, 2)
        self.done = np.zeros(n, dtype=bool)

    @staticmethod
    def image(pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
        img = np.zeros((16, 16, 3), np.uint8)
        for (x, y), colour in ((goal, (0, 255, 0)), (pos, (255, 255, 255))):
            r, c = int(round((1 - y) / 2 * 15)), int(round((x + 1) / 2 * 15))
            img[r, c] = colour
        return img

    def observation(self) -> dict:
        images = [self.image(p, g) for p, g in zip(self.pos, self.goal, strict=True)]
        return {"observation.images.corner": np.stack(images),
                "observation.state": self.pos.astype(np.float32), "task": list(self.texts)}

    @classmethod
    def expert(cls, pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
        return np.clip((goal - pos) / cls.STEP, -1, 1)

    def step(self, action: np.ndarray) -> None:
        moving = ~self.done
        self.pos[moving] = np.clip(self.pos[moving] + self.STEP * np.clip(action[moving], -1, 1), -1, 1)
        self.done |= np.abs(self.pos - self.goal).max(1) < self.TOLERANCE

    def run(self, act) -> float:
        """The success rate of `act(observation) -> (B, 2)` within MAX_STEPS steps."""
        for _ in range(self.MAX_STEPS):
            self.step(np.asarray(act(self.observation())))
        return float(self.done.mean())


def expert_examples(n: int, seed: int, horizon: int = 4, near: float = 0.5) -> list[dict]:
    """Frames with the expert's next `horizon` actions (the point follows them): a share `near` of the positions
    lies close to the goal (where an expert's episodes end and the actions are fine), the rest anywhere."""
    env = PointReach(n, seed)
    g = np.random.default_rng(seed + 1)
    close = g.random(n) < near
    env.pos[close] = np.clip(env.goal[close] + g.normal(0, 0.3, (int(close.sum()), 2)), -1, 1)
    chunk, pos = [], env.pos.copy()
    for _ in range(horizon):
        a = PointReach.expert(pos, env.goal)
        chunk.append(a)
        pos = np.clip(pos + PointReach.STEP * a, -1, 1)
    chunks = np.stack(chunk, 1).astype(np.float32)  # (B, H, 2)
    obs = env.observation()
    return [{"observation.images.corner": obs["observation.images.corner"][i], "observation.state":
             obs["observation.state"][i], "task": obs["task"][i], "action": chunks[i]} for i in range(n)]


@pytest.fixture(scope="module")
def trained(tokenizer):
    """A tiny policy (image, instruction, binned state -> chunks of 4 binned actions) trained for 500 steps on the
    expert's chunks (about 15 s on two CPU cores)."""
    from mmdiff.diffusion import get_schedule

    model = make_vla(tokenizer, state="bins", state_bins=16, steps=4, instruction_length=6, random_weights=False)
    model.train()
    collate, schedule = VLATask.collator(model), get_schedule("linear")
    data = expert_examples(4096, seed=1)
    batches = [collate(data[i : i + 32]) for i in range(0, len(data), 32)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    steps = 500
    warmup = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        loss = model.loss(batches[step % len(batches)], schedule, normalize="sft", complementary=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        warmup.step()
    return model.eval()


def test_tiny_policy_imitates_the_expert_far_above_a_random_policy(trained):
    """The trained policy reaches the goal the instruction names in nearly every held-out episode (1.0 measured;
    0.77 to 1.0 over five initialisations), a random policy in about one of twenty (0.06 measured)."""
    policy = VLAPolicy(trained, n_action_steps=2)
    policy.reset()
    rate = PointReach(64, seed=123).run(lambda obs: policy.select_action(obs).numpy())
    g = np.random.default_rng(0)
    random_rate = PointReach(64, seed=123).run(lambda obs: g.uniform(-1, 1, (64, 2)))
    goal = PointReach(64, seed=123).goal
    expert_rate = PointReach(64, seed=123).run(lambda obs: PointReach.expert(obs["observation.state"], goal))
    assert expert_rate == 1.0 and random_rate <= 0.15, (expert_rate, random_rate)
    assert rate >= 0.75 and rate >= random_rate + 0.5, (rate, random_rate)
    assert set(policy.nfe) == {4}  # 4 forward passes per chunk of 8 action tokens


# ------------------------------------------------------------------------------------------------ evaluation loop
class PointReachEnv:
    """One `PointReach` as a simulator with the environment protocol of `mmdiff.evaluation.rollouts`; the task is
    the instruction."""

    image_key = "observation.images.corner"

    def __init__(self, task: str) -> None:
        self.task, self.closed = task, False

    def reset(self, seed: int) -> dict:
        self.sim, self.steps = PointReach(1, seed), 0
        self.sim.texts, self.sim.goal = [self.task], np.array([PointReach.GOALS[self.task]])
        return self.observation()

    def observation(self) -> dict:
        return {k: v[0] for k, v in self.sim.observation().items()}

    def step(self, action):
        self.sim.step(np.asarray(action)[None])
        self.steps += 1
        success = bool(self.sim.done[0])
        return self.observation(), float(success), success, self.steps >= PointReach.MAX_STEPS, {"success": success}

    def close(self) -> None:
        self.closed = True


def test_evaluate_policy_reports_success_length_and_nfe_and_writes_a_gif(trained, tmp_path):
    from PIL import Image

    from mmdiff.evaluation import RandomPolicy, ScriptedPolicy, evaluate_policy, format_results

    tasks = ["to be", "the mind"]
    envs: list[PointReachEnv] = []

    def make_env(task):
        envs.append(PointReachEnv(task))
        return envs[-1]

    policy = VLAPolicy(trained, n_action_steps=2)
    gif = tmp_path / "rollout.gif"
    results = evaluate_policy(policy, tasks, episodes=8, seed=10, make_env=make_env, gif=gif, progress=False)
    assert [r.task for r in results] == tasks and all(e.closed for e in envs)
    assert [[e.seed for e in r.episodes] for r in results] == [list(range(10, 18))] * 2
    for r in results:  # the loop's bookkeeping against the episodes themselves
        assert r.success_rate == np.mean([e.success for e in r.episodes])
        assert r.mean_length == np.mean([e.length for e in r.episodes])
        assert r.nfe_per_chunk == 4.0 and r.seconds_per_action > 0
        assert all(e.length <= PointReach.MAX_STEPS and (e.success or e.length == PointReach.MAX_STEPS)
                   for e in r.episodes)
    assert min(r.success_rate for r in results) >= 0.75
    first = results[0].episodes[0]
    assert Image.open(gif).n_frames <= first.length + 1 and Image.open(gif).size == (256, 256)
    lines = format_results(results).splitlines()
    assert lines[0] == results[0].line() and lines[0].startswith("to be: success ")
    assert "NFE per chunk 4.0" in lines[0] and lines[-1].startswith("average success ")
    # four environments in lockstep (one batch row each) give the same episodes as one at a time
    batched = evaluate_policy(policy, tasks, episodes=8, seed=10, make_env=make_env, num_envs=4, progress=False)
    assert [r.episodes for r in batched] == [r.episodes for r in results]
    experts = ScriptedPolicy({t: (lambda obs, t=t: PointReach.expert(obs["observation.state"],
                                                                      np.array(PointReach.GOALS[t]))) for t in tasks})
    upper = evaluate_policy(experts, tasks, episodes=8, make_env=make_env, num_envs=3, progress=False)
    lower = evaluate_policy(RandomPolicy(2, seed=0), tasks, episodes=8, make_env=make_env, progress=False)
    assert [r.success_rate for r in upper] == [1.0, 1.0] and all(r.nfe_per_chunk is None for r in upper)
    assert max(r.success_rate for r in lower) <= 0.25


needs_metaworld = pytest.mark.skipif(importlib.util.find_spec("metaworld") is None,
                                     reason="needs metaworld (pip install 'mmdiff[robot]')")


@needs_metaworld
def test_evaluate_policy_runs_seeded_metaworld_episodes(tokenizer, tmp_path):
    """A random-weight policy for Meta-World's 4-D actions and 39-D state runs two short seeded episodes of
    "reach" at its own image size; the names and dimensions the simulator needs are checked first."""
    from mmdiff.evaluation import evaluate_policy

    model = make_vla(tokenizer, action_dim=4, state_dim=39, instruction_length=12)
    policy = VLAPolicy(model)
    results = evaluate_policy(policy, "reach-v3", episodes=2, seed=3, max_steps=5, gif=tmp_path / "reach.gif",
                              progress=False)
    assert [r.task for r in results] == ["reach"] and [e.seed for e in results[0].episodes] == [3, 4]
    assert [e.length for e in results[0].episodes] == [5, 5] and results[0].nfe_per_chunk == 8.0
    assert (tmp_path / "reach.gif").is_file()
    with pytest.raises(ValueError, match="unknown Meta-World task 'reech': did you mean 'reach'"):
        evaluate_policy(policy, ["reach", "reech"], episodes=1)
    with pytest.raises(ValueError, match="the Meta-World simulator takes 4-dimensional actions"):
        evaluate_policy(VLAPolicy(make_vla(tokenizer, state_dim=39)), "reach", episodes=1)


@needs_metaworld
def test_skipped_frames_change_no_episode(tokenizer):
    """Meta-World renders only the frames the policy reads (one per decoded chunk, plus the first frame of an
    episode and the last of a finished row); the episodes, actions and forward passes equal rendering every step."""
    from mmdiff.evaluation import evaluate_policy
    from mmdiff.sim.metaworld import MetaWorldEnv

    renders = []

    class Counting(MetaWorldEnv):
        def render(self):
            renders.append(self.steps)
            return super().render()

    class Eager:  # the same environment without `render=`: every step renders
        def __init__(self, task):
            self.env = Counting(task, image_size=16, max_steps=10)
            self.image_key = self.env.image_key

        def reset(self, seed):
            return self.env.reset(seed)

        def step(self, action):
            return self.env.step(action)

        def close(self):
            self.env.close()

    model = make_vla(tokenizer, action_dim=4, state_dim=39, instruction_length=12)
    runs = {}
    for name, make in (("lazy", lambda t: Counting(t, image_size=16, max_steps=10)), ("eager", Eager)):
        renders.clear()
        policy = VLAPolicy(model)
        (result,) = evaluate_policy(policy, "reach", episodes=3, seed=5, num_envs=2, make_env=make, progress=False)
        runs[name] = (result.episodes, policy.nfe, list(renders))
    assert runs["lazy"][:2] == runs["eager"][:2]
    assert [e.length for e in runs["lazy"][0]] == [10, 10, 10]
    # lazy, per row: the reset frame, steps 4 and 8 (the queue of 4 ran out), and step 10 (the episode ended)
    assert sorted(runs["lazy"][2]) == sorted([0, 4, 8, 10] * 3) and sorted(runs["eager"][2]) == sorted(
        list(range(11)) * 3)


@needs_metaworld
def test_cli_evaluates_a_policy_in_metaworld(tokenizer, tmp_path, capsys):
    """`mmdiff eval vla NAME --task T --episodes N --seed S`: one line per task, the average, a GIF; without
    --task the tasks of the model's data source."""
    from mmdiff.cli import main

    model = make_vla(tokenizer, action_dim=4, state_dim=39, instruction_length=20)
    model.config.task_options["data"] = {"name": "metaworld-demos", "options": {"root": str(tmp_path / "demos"),
                                                                                "tasks": ["reach", "push"]}}
    folder = str(model.save_pretrained(tmp_path / "vla"))
    gif = tmp_path / "out.gif"
    code = main(["eval", "vla", folder, "--task", "reach", "--episodes", "2", "--seed", "3", "--max-steps", "4",
                 "--gif", str(gif), "--device", "cpu", "--output", str(tmp_path / "eval.json")])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[:2] == ["reach: success 0.000  mean episode length 4.0  NFE per chunk 8.0",
                                     "average success 0.000"]
    assert gif.is_file() and (tmp_path / "eval.json").is_file()
    from mmdiff.data.metaworld_demos import MetaWorldDemosSource

    held_out = MetaWorldDemosSource(root=str(tmp_path / "demos"), tasks=["reach"]).candidate_seeds("val", "reach", 5)
    episodes = json.loads((tmp_path / "eval.json").read_text())["tasks"][0]["episodes"]
    assert [e["seed"] for e in episodes] == held_out[3:5]  # the source's held-out starts; --seed 3 skips three
    assert main(["eval", folder, "--episodes", "1", "--max-steps", "2", "--gif", "", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["reach", "push", "average success 0.000"]
    assert main(["eval", "vlm", folder, "--task", "reach", "--device", "cpu"]) == 2
    assert "is a 'vla' model, not a 'vlm' model" in capsys.readouterr().err
    assert main(["eval", folder, "--task", "reech", "--episodes", "1", "--device", "cpu"]) == 2
    assert "did you mean 'reach'" in capsys.readouterr().err
