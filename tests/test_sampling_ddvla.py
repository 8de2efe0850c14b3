"""The Discrete Diffusion VLA sampler: the cosine keep schedule's counts on hand-computed cases, secondary re-masking
of exactly the tokens its checks name on scripted logits, parity with the LLaDA sampler when re-masking is off, the
prefix cache under prefix attention equal to no cache, and the options' errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import RecordingCore, random_core
from torch import nn

from mmdiff import CoreConfig, DiffusionModel, ModelConfig, SamplerConfig, VocabLayout, llada_generate
from mmdiff.canvas import Canvas, CanvasCore
from mmdiff.registry import SAMPLERS
from mmdiff.sampling import DDVLAOptions, DiscreteDiffusionVLASampler, Sampler
from mmdiff.sampling.schedule import commit_counts, masked_after
from mmdiff.sampling.selection import secondary_remask, token_scores

LAYOUT = VocabLayout.build(text_size=20)  # mask 20, eos 21, pad 22, bos 23
MASK, V = LAYOUT.mask_id, LAYOUT.size


class ScriptedCore(nn.Module):
    """A core whose logits are scripted per call: `script[c][j]` is {token: probability} of chunk position j at the
    c-th forward pass (the rest of the mass spread evenly over the other ids, the mask id excluded), whatever the
    input. `prompt` positions precede the chunk."""

    def __init__(self, script: list[list[dict[int, float]]], prompt: int = 2) -> None:
        super().__init__()
        self.script, self.prompt, self.calls = script, prompt, 0

    def check_ids(self, ids):
        pass

    def forward(self, x, logits_at=None, **kw):
        rows = self.script[self.calls]
        self.calls += 1
        p = torch.zeros(len(rows), V, dtype=torch.float64)
        for j, given in enumerate(rows):
            rest = [i for i in range(V) if i != MASK and i not in given]
            p[j, rest] = (1 - sum(given.values())) / len(rest)
            for token, prob in given.items():
                p[j, token] = prob
        full = torch.cat([torch.full((self.prompt, V), 1.0 / V, dtype=torch.float64), p]).log().float()  # (L, V)
        out = full[None].expand(x.shape[0], -1, -1).gather(1, logits_at[..., None].expand(-1, -1, V))
        return type("Out", (), {"logits": out, "cache": None})()


def test_keep_schedule_counts_hand_computed():
    # floor(7 cos(pi/6)) = floor(6.06) = 6, floor(7 cos(pi/3)) = floor(3.5) = 3, then 0
    assert masked_after("cosine", torch.tensor([7]), 3).tolist() == [[6, 3, 0]]
    # floor(16 cos(pi/8)) = 14, floor(16 cos(pi/4)) = 11, floor(16 cos(3 pi/8)) = 6
    assert masked_after("cosine", torch.tensor([16, 0]), 4).tolist() == [[14, 11, 6, 0], [0, 0, 0, 0]]
    assert masked_after("linear", torch.tensor([10]), 4).tolist() == [[7, 4, 2, 0]]  # commits 3, 3, 2, 2
    n = torch.arange(40)
    for schedule in ("cosine", "linear"):  # the same schedule as commit_counts, written as what is left
        left = masked_after(schedule, n, 5)
        assert torch.equal(torch.cat([n[:, None], left[:, :-1]], 1) - left, commit_counts(schedule, n, 5))
    with pytest.raises(ValueError, match="schedule must be one of"):
        masked_after("exp", n, 5)

    # the sampler commits exactly those counts, most confident first (1, 3, 3 of 7 over 3 rounds)
    probs = [0.9, 0.3, 0.8, 0.4, 0.7, 0.6, 0.5]
    script = [[{3 + j: p} for j, p in enumerate(probs)]] * 3
    out = DiscreteDiffusionVLASampler(gen_length=7, steps=3, remask="none")(
        ScriptedCore(script), torch.tensor([[0, 1]]), mask_id=MASK, return_history=True)
    assert out.commit_step[0, 2:].tolist() == [0, 2, 1, 2, 1, 1, 2] and out.nfe == 3
    assert out.sequences[0, 2:].tolist() == [3, 4, 5, 6, 7, 8, 9]


def test_remask_rule_and_scores():
    committed = torch.tensor([[True, True, True, False]])
    now, kept = torch.tensor([[0.05, 0.5, 0.65, 0.0]]), torch.tensor([[0.9, 0.8, 0.7, 0.9]])
    assert secondary_remask(committed, now, kept, threshold=0.1).tolist() == [[True, False, False, False]]
    assert secondary_remask(committed, now, kept, drop=0.25).tolist() == [[True, True, False, False]]
    assert secondary_remask(committed, now, kept).tolist() == [[False] * 4]
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    assert token_scores(logits, torch.tensor([0]), "low_confidence").item() == pytest.approx(0.6)
    assert [round(token_scores(logits, torch.tensor([t]), "margin").item(), 6) for t in (0, 1, 2)] == [0.3, -0.3, -0.5]


# 8 chunk tokens over 4 rounds: floor(8 cos(pi/8)) = 7, floor(8 cos(pi/4)) = 5, floor(8 cos(3 pi/8)) = 3, 0 left,
# so rounds commit 1, 2, 2, 3. Token j predicts 3 + j (11 + j at the last round), with these probabilities:
ROUNDS = [
    [0.90, 0.20, 0.20, 0.20, 0.20, 0.20, 0.20, 0.20],  # commits 0 (A, kept at 0.9)
    [0.85, 0.30, 0.60, 0.20, 0.20, 0.20, 0.20, 0.20],  # commits 2 (C, 0.6) and 1 (B, 0.3); A fine
    [0.35, 0.05, 0.55, 0.70, 0.65, 0.20, 0.20, 0.20],  # A dropped 0.55; B below 0.1; C fine; commits 3, 4
    [0.50] * 8,                                        # the last round: everything masked is committed
]


@pytest.mark.parametrize(("remask", "steps", "reopened"), [
    ("none", [0, 1, 1, 2, 2, 3, 3, 3], []),
    ("threshold", [0, 3, 1, 2, 2, 3, 3, 3], [1]),  # B: 0.05 < 0.1 (it dropped only 0.25)
    ("drop", [3, 1, 1, 2, 2, 3, 3, 3], [0]),       # A: 0.9 -> 0.35 dropped 0.55 > 0.5 (still above 0.1)
    ("both", [3, 3, 1, 2, 2, 3, 3, 3], [0, 1]),
])
def test_secondary_remasking_reopens_exactly_the_named_tokens(remask, steps, reopened):
    script = [[{3 + j + (8 if c == 3 else 0): p} for j, p in enumerate(row)] for c, row in enumerate(ROUNDS)]
    sampler = DiscreteDiffusionVLASampler(gen_length=8, steps=4, remask=remask, remask_threshold=0.1,
                                          remask_drop=0.5)
    out = sampler(ScriptedCore(script), torch.tensor([[0, 1]]), mask_id=MASK, return_history=True)
    assert out.commit_step[0, 2:].tolist() == steps and out.nfe == 4
    # a re-opened position is decoded again at the last round, with that round's token
    assert out.sequences[0, 2:].tolist() == [11 + j if s == 3 else 3 + j for j, s in enumerate(steps)]
    assert all(steps[j] == 3 for j in reopened)


def test_margin_score_remasks_a_changed_prediction_by_its_margin():
    # 4 tokens over 3 rounds: floor(4 cos(pi/6)) = 3, floor(4 cos(pi/3)) = 2 left: commits 1, 1, 2
    def run(changed_to: dict[int, float], **options):
        script = [[{3: 0.9}, {4: 0.4}, {5: 0.4}, {6: 0.4}],
                  [changed_to, {4: 0.6}, {5: 0.4}, {6: 0.4}],
                  [{12: 0.9}, {4: 0.6}, {5: 0.6}, {6: 0.6}]]
        sampler = DiscreteDiffusionVLASampler(gen_length=4, steps=3, remasking="margin", **options)
        return sampler(ScriptedCore(script), torch.tensor([[0, 1]]), mask_id=MASK, return_history=True)

    # now the model prefers 12 (p 0.7) to the committed 3 (p 0.3 / 22): gap -0.686 < -0.3, re-masked, then 12
    out = run({12: 0.7}, remask="threshold", remask_threshold=-0.3)
    assert out.sequences[0, 2:].tolist() == [12, 4, 5, 6] and out.commit_step[0, 2:].tolist() == [2, 1, 2, 2]
    # a change by a small margin (12: 0.35 vs 3: 0.30, gap -0.05) passes the threshold check ...
    out = run({12: 0.35, 3: 0.30}, remask="threshold", remask_threshold=-0.3)
    assert out.sequences[0, 2:].tolist() == [3, 4, 5, 6] and out.commit_step[0, 2:].tolist() == [0, 1, 2, 2]
    # ... not the residual-drop check: 0.9 - 0.1 / 22 at its commit, -0.05 now
    out = run({12: 0.35, 3: 0.30}, remask="drop", remask_drop=0.5)
    assert out.sequences[0, 2:].tolist() == [12, 4, 5, 6] and out.commit_step[0, 2:].tolist() == [2, 1, 2, 2]


@pytest.mark.parametrize("options", [
    {},
    {"remasking": "margin"},
    {"schedule": "linear"},
    {"choice_temperature": 3.0},
    {"temperature": 0.7, "choice_temperature": 1.0},
])
def test_without_remasking_it_is_llada_over_one_block(options):
    core = random_core(LAYOUT, seed=2)
    prompt = torch.randint(0, 20, (3, 5), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, :2] = False  # a left-padded row
    seeded = "temperature" in options or "choice_temperature" in options
    ours = DiscreteDiffusionVLASampler(gen_length=12, steps=4, remask="none", **options)(
        core, prompt, mask, mask_id=MASK, return_history=True,
        generator=torch.Generator().manual_seed(0) if seeded else None)
    theirs = llada_generate(core, prompt, mask, mask_id=MASK, gen_length=12, steps=4, block_length=12,
                            logits_mask_inf=True, schedule=options.get("schedule", "cosine"), return_history=True,
                            generator=torch.Generator().manual_seed(0) if seeded else None,
                            **{k: v for k, v in options.items() if k != "schedule"})
    assert torch.equal(ours.sequences, theirs.sequences) and torch.equal(ours.commit_step, theirs.commit_step)
    assert ours.nfe == theirs.nfe == 4


def _prefix_canvas(B: int = 3, P: int = 6, seed: int = 5) -> Canvas:
    """A prompt canvas under prefix attention: ids with a left-padded row and two soft tokens per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 20, (B, P), generator=g)
    attention = torch.ones(B, P, dtype=torch.bool)
    attention[0, :2] = False
    soft = torch.randn(B, 2, 32, generator=g)
    positions = torch.tensor([[3, 4]] * B)
    return Canvas(ids=ids, maskable=torch.zeros(B, P, dtype=torch.bool), attention_mask=attention,
                  attention="prefix", prefix_len=torch.full((B,), P), soft_embeds=soft, soft_positions=positions)


def test_prefix_cache_equals_no_cache_under_prefix_attention():
    core = random_core(LAYOUT, seed=3)
    canvas = _prefix_canvas()
    outs = {}
    for cache in (None, "prefix"):
        for remask in ("none", "both"):
            recorder = RecordingCore(CanvasCore(core, canvas))
            sampler = DiscreteDiffusionVLASampler(gen_length=10, steps=5, remask=remask, remask_threshold=0.3,
                                                  remask_drop=0.2, cache=cache, positions="compact")
            outs[cache, remask] = sampler(recorder, canvas.ids, canvas.attention_mask, mask_id=MASK,
                                          return_history=True)
            widths = [x.shape[1] for x in recorder.inputs]
            assert widths == ([16] * 5 if cache is None else [16] + [10] * 4)  # the prompt runs once with the cache
    for remask in ("none", "both"):
        a, b = outs[None, remask], outs["prefix", remask]
        assert torch.equal(a.sequences, b.sequences) and torch.equal(a.commit_step, b.commit_step)
    # re-masking did happen on this model: some position was committed again later than without it
    assert not torch.equal(outs[None, "none"].commit_step, outs[None, "both"].commit_step)
    assert (outs[None, "both"].sequences[:, 6:] != MASK).all()


def test_options_registry_and_generate():
    assert SAMPLERS.get("discrete-diffusion-vla") is DiscreteDiffusionVLASampler
    s = DiscreteDiffusionVLASampler(gen_length=28, steps=8, remasking="margin", remask_threshold=-0.2)
    data = json.loads(json.dumps(s.to_dict()))
    assert data["sampler"] == "discrete-diffusion-vla" and data["remask"] == "both" and data["schedule"] == "cosine"
    assert Sampler.from_dict(data) == s and s.options == DDVLAOptions(gen_length=28, steps=8, remasking="margin",
                                                                      remask_threshold=-0.2)
    assert SamplerConfig.from_sampler(s).build() == s
    torch.manual_seed(0)
    model = DiffusionModel(ModelConfig(CoreConfig(vocab=LAYOUT, d_model=32, n_layers=2, n_heads=4)),
                           sampler_config=SamplerConfig(gen_length=8, steps=8, block_length=4)).eval()
    out = model.generate(torch.tensor([[1, 2, 3]]), sampler="discrete-diffusion-vla", gen_length=6, steps=3,
                         allowed_token_ids=[7, 9], return_history=True)
    assert out.nfe == 3 and set(out.sequences[0, 3:].tolist()) <= {7, 9}


@pytest.mark.parametrize(("options", "message"), [
    ({"remask": "always"}, r"remask must be one of \('none', 'threshold', 'drop', 'both'\), got 'always'"),
    ({"remask_threshold": 1.5}, r"remask_threshold must be a finite number >= -1 and <= 1, got 1.5"),
    ({"remask_threshold": -0.2}, r"never re-masks with remasking='low_confidence'.*remasking='margin'"),
    ({"remask_drop": 0.0}, r"remask_drop must be a finite number > 0 and <= 2, got 0.0"),
    ({"remask_drop": math.nan}, r"remask_drop must be a finite number, got nan"),
    ({"remasking": "entropy"}, r"remasking must be one of \('low_confidence', 'margin'\)"),
    ({"schedule": "exp"}, r"schedule must be one of \('linear', 'cosine'\)"),
    ({"cache": "everything"}, r"cache must be one of"),
    ({"steps": 0}, r"need gen_length >= 1 and steps >= 1, got 32 and 0"),
    ({"top_k": 0}, r"top_k must be an integer >= 1, got 0"),
    ({"choice_temperature": -1.0}, r"choice_temperature must be a finite number >= 0"),
])
def test_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        DiscreteDiffusionVLASampler(**options)


def test_call_errors():
    DiscreteDiffusionVLASampler(remask="drop", remask_threshold=-0.2)  # the threshold is unused: no error
    with pytest.raises(TypeError, match=r"does not take \['block_length'\]; it accepts: gen_length, steps"):
        DiscreteDiffusionVLASampler(block_length=4)
    core = random_core(LAYOUT)
    with pytest.raises(ValueError, match=r"prompt holds the mask id 20 \(row 0, position 1\).*after the prompt"):
        DiscreteDiffusionVLASampler(gen_length=4, steps=2)(core, torch.tensor([[1, MASK, 2]]), mask_id=MASK)
    with pytest.raises(TypeError, match=r"does not take \['uncond_input_ids'\]"):
        DiscreteDiffusionVLASampler(gen_length=4, steps=2)(core, torch.tensor([[1, 2]]), mask_id=MASK,
                                                           uncond_input_ids=torch.tensor([[1, 2]]))


def test_doctests_pass():
    import doctest

    import mmdiff.sampling.ddvla
    import mmdiff.sampling.schedule

    assert doctest.testmod(mmdiff.sampling.ddvla).failed == 0
    assert doctest.testmod(mmdiff.sampling.schedule).failed == 0
    assert doctest.testmod(mmdiff.sampling.selection).failed == 0
