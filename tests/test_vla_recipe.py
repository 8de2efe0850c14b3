"""The Meta-World VLA recipe (configs/vla/metaworld-tiny.yaml) and what its data source gives the trainer: the
instruction tokenizer, specials, `task_options["vla"]`, disjoint train / held-out seeds, the adapter statistics
fitted on a tiny recorded set (two short episodes of "reach"), recomputed here by hand, and a 20-step training run
of the recipe whose final checkpoint loads as a policy that acts in the simulator and is scored by the source."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from mmdiff.data.metaworld_demos import SPECIALS, MetaWorldDemosSource, build_tokenizer, instruction_vocabulary
from mmdiff.sim.metaworld import INSTRUCTIONS
from mmdiff.tasks.vla import VLAOptions
from mmdiff.train import build_model, build_source, load_train_config
from mmdiff.train.loop import fit_adapters

RECIPE = "configs/vla/metaworld-tiny.yaml"
needs_metaworld = pytest.mark.skipif(importlib.util.find_spec("metaworld") is None,
                                     reason="Meta-World is not installed: pip install \"mmdiff[robot]\"")


def tiny_recipe(root, *overrides):
    """The recipe on a tiny recorded set: 2 train + 1 held-out episode of "reach", 10 steps each, 16x16 frames."""
    return load_train_config(RECIPE, [f"--data.options.root={root}", "--data.options.tasks=[reach]",
                                      "--data.options.train_episodes=2", "--data.options.val_episodes=1",
                                      "--data.options.image_size=16", "--data.options.max_steps=10",
                                      "--data.options.only_successful=false", *overrides])


def quantile(values: np.ndarray, q: float) -> np.ndarray:
    """Per-column quantile by linear interpolation between the sorted values (numpy's default rule), by hand."""
    rows = np.sort(values.astype(np.float64), axis=0)
    position = q * (len(rows) - 1)
    low = math.floor(position)
    high = min(low + 1, len(rows) - 1)
    return rows[low] + (position - low) * (rows[high] - rows[low])


# ---------------------------------------------------------------------------------------------- no simulator
def test_instruction_tokenizer_covers_every_task_and_round_trips():
    words, tok = instruction_vocabulary(), build_tokenizer()
    assert len(tok) == len(words) == 69 and words == sorted(set(words))
    for text in INSTRUCTIONS.values():
        ids = tok.encode(text)
        assert [words[i] for i in ids] == text.split() and tok.decode(ids) == text
    assert tok.encode("Open the DRAWER") == [words.index("open"), words.index("the"), words.index("drawer")]
    with pytest.raises(Exception, match="Missing \\[UNK\\] token"):  # a closed vocabulary: no unknown token
        tok.encode("fly to the moon")


def test_source_gives_specials_task_options_and_disjoint_seeds(tmp_path):
    source = MetaWorldDemosSource(tmp_path, tasks=["reach", "pick-place"], chunk_size=8, n_action_steps=4)
    assert source.task == "vla" and source.specials == SPECIALS == ("mask", "eos", "pad", "bos", "image", "state")
    assert source.tasks == ["reach", "pick-place"] and len(source.tokenizer()) == 69
    options = source.task_options["vla"]
    assert options == {"chunk_length": 8, "n_action_steps": 4, "cameras": ["corner"], "image_size": [64, 64],
                       "use_state": True, "attention": "prefix", "instruction_length": 13}
    assert VLAOptions(**options).chunk_length == 8
    # train seeds are even and held-out seeds odd: no number of held-out episodes can meet a training start
    train, val = source.candidate_seeds("train", "reach", 200), source.candidate_seeds("val", "reach", 200)
    assert all(s % 2 == 0 for s in train) and all(s % 2 == 1 for s in val) and len(set(val)) == 200
    assert not list(tmp_path.iterdir())  # nothing recorded to answer all that
    with pytest.raises(ValueError, match="instruction_length=5 is shorter than the longest instruction of these "
                                         "tasks \\(10 words\\)"):
        MetaWorldDemosSource(tmp_path, tasks=["pick-place"], instruction_length=5)
    with pytest.raises(ValueError, match="n_action_steps must be in 1..chunk_size=4"):
        MetaWorldDemosSource(tmp_path, chunk_size=4, n_action_steps=5)


def test_recipe_model_is_under_20_mb_and_builds_without_data(tmp_path):
    cfg = load_train_config(RECIPE, [f"--data.options.root={tmp_path}"])
    source = build_source(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg, source)
    size = sum(t.numel() * t.element_size() for t in model.weights().values())
    assert 10e6 < size < 20e6  # float32 weights of core, tower and projector
    assert model.vocab.range("action") == (75, 331) and "state" not in model.vocab.ranges  # state: soft tokens
    assert model.config.task_options["vla"] == source.task_options["vla"]
    assert model.adapters["action"].config.q01 is None  # fitted when training starts, from the demonstrations
    assert not list(tmp_path.iterdir())
    assert fit_adapters(object(), model) == []  # a source without fit_adapters fits nothing


# ---------------------------------------------------------------------------------------------- simulator
@needs_metaworld
def test_adapter_statistics_are_the_training_demonstrations_percentiles(tmp_path):
    cfg = tiny_recipe(tmp_path)
    source = build_source(cfg.data)
    model = build_model(cfg, source)
    assert fit_adapters(source, model) == ["action", "state"]
    episodes = source.episodes("train")
    assert [len(e) for e in episodes] == [10, 10] and all(e.seed % 2 == 0 for e in episodes)
    actions = np.concatenate([e.action for e in episodes])  # (20, 4)
    states = np.concatenate([e.state for e in episodes])  # (20, 39)
    action, state = model.adapters["action"].config, model.adapters["state"].config
    np.testing.assert_allclose(action.q01, quantile(actions, 0.01), rtol=0, atol=1e-12)
    np.testing.assert_allclose(action.q99, quantile(actions, 0.99), rtol=0, atol=1e-12)
    assert action.normalize == [True, True, True, False]  # the recipe's mask is kept
    assert model.config.adapters["action"]["q01"] == action.q01  # what config.json will hold
    # the recipe's state MLP gets the states' mean and (population) std
    np.testing.assert_allclose(state.mean, states.astype(np.float64).mean(0), atol=1e-6)
    np.testing.assert_allclose(state.std, states.astype(np.float64).std(0), atol=1e-6)
    assert fit_adapters(source, model) == []  # fitted adapters keep their statistics

    # the chunks FAST would be fitted on: each step's next H actions, the last one repeated past the end
    chunks = source.training_values("action", horizon=3)
    assert chunks.shape == (20, 3, 4)
    np.testing.assert_array_equal(chunks[8], episodes[0].action[[8, 9, 9]])
    np.testing.assert_array_equal(chunks[10], episodes[1].action[0:3])

    # binned state tokens get the states' q01 / q99
    bins = dataclasses.replace(cfg.model, adapters={**cfg.model.adapters,
                                                    "state": {"adapter": "state/bins", "state_dim": 39}})
    model = build_model(dataclasses.replace(cfg, model=bins), source)
    assert fit_adapters(source, model) == ["action", "state"]
    np.testing.assert_allclose(model.adapters["state"].config.q01, quantile(states, 0.01), rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.adapters["state"].config.q99, quantile(states, 0.99), rtol=0, atol=1e-12)

    # an action tokenizer for another robot names both dimensions
    seven = dataclasses.replace(cfg.model, adapters={**cfg.model.adapters,
                                                     "action": {"adapter": "action/bins", "action_dim": 7}})
    with pytest.raises(ValueError, match="the data has 4 dimensions but the tokenizer is set up for 7"):
        fit_adapters(source, build_model(dataclasses.replace(cfg, model=seven), source))


@needs_metaworld
@pytest.mark.filterwarnings("ignore::mmdiff.adapters.actions.ActionRangeWarning")  # percentiles of 20 frames
def test_twenty_training_steps_give_a_policy_that_acts_in_the_simulator(tmp_path):
    """The recipe (a narrower core for speed) trains 20 steps on the tiny set; the final folder holds the fitted
    statistics, loads as a policy, acts in Meta-World and is scored by the source on held-out seeds."""
    import mmdiff
    from mmdiff.sim.metaworld import make_env
    from mmdiff.train import train

    out = tmp_path / "run"
    cfg = tiny_recipe(tmp_path / "demos", "--train.steps=20", "--train.batch_size=4", f"--train.out_dir={out}",
                      "--model.core.d_model=64", "--model.core.n_layers=1", "--train.log_every=10",
                      "--train.eval_every=0", "--train.save_every=0", "--train.eval_metrics_limit=1")
    final = train(cfg, resume=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [10, 20]
    evaluation = records[-1]
    assert evaluation["split"] == "val" and evaluation["success_reach"] in (0.0, 1.0)
    assert evaluation["nfe_per_chunk"] == 4.0 and evaluation["mean_length"] <= 10

    policy = mmdiff.pipeline("vla", model=str(final))
    source = build_source(cfg.data)
    actions = np.concatenate([e.action for e in source.episodes("train")])
    assert policy.task.actions.config.q01 == pytest.approx(quantile(actions, 0.01).tolist(), abs=1e-12)
    assert policy.chunk_length == 8 and policy.n_action_steps == 4 and policy.cameras == ["corner"]
    with make_env("reach", image_size=16, max_steps=10) as env:
        obs = env.reset(seed=source.candidate_seeds("val", "reach", 1)[0])
        policy.reset()
        for _ in range(6):
            action = policy.select_action(obs)
            assert action.shape == (4,) and torch.isfinite(action).all() and action.abs().max() <= 1.0 + 1e-6
            obs, _, _, _, _ = env.step(action.numpy())
    assert policy.nfe == [4, 4]  # two chunks for six actions, four served from each
    metrics = source.evaluate(policy.model, limit=2, max_steps=5)
    assert set(metrics) == {"success", "success_reach", "mean_length", "nfe_per_chunk", "seconds_per_action",
                            "episodes"}
    assert metrics["episodes"] == 2.0 and metrics["mean_length"] <= 5 and metrics["nfe_per_chunk"] == 4.0
    wrong = MetaWorldDemosSource(tmp_path / "demos", tasks=["reach"], image_size=32)
    with pytest.raises(ValueError, match="the policy takes 16x16 images but this source renders 32x32"):
        wrong.evaluate(policy.model, limit=1)
