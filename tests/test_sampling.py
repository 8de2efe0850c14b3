"""LLaDA sampling against an independent, straightforward re-implementation of the reference loop (LLaDA's
`generate.py`: full-sequence logits every step, confidence = softmax probability of the argmax, -inf beyond the
current block, torch.topk per row), plus the commit tables, Gumbel sampling and errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import RecordingCore
from torch import nn

from mmdiff import CoreConfig, MaskedDiffusionTransformer, VocabLayout, llada_generate
from mmdiff.sampling import commit_mask, gumbel_argmax, tokens_per_step
from mmdiff.sampling.llada import (
    confidence_scores,
    cosine_tokens_per_step,
    factor_commits,
    filter_logits,
    threshold_commits,
)
from mmdiff.sampling.reference import reference_generate

LAYOUT = VocabLayout.build(text_size=20)  # mask 20, eos 21, pad 22, bos 23
MASK, PAD = LAYOUT.mask_id, LAYOUT.pad_id


@pytest.fixture(scope="module")
def core() -> MaskedDiffusionTransformer:
    """A random tiny core with O(1) weights, so confidences are well separated (no near-ties)."""
    torch.manual_seed(0)
    core = MaskedDiffusionTransformer(CoreConfig(vocab=LAYOUT, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in core.named_parameters():
            if not name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 2 / math.sqrt(p.shape[-1]))
    return core.eval()


def prompts(B: int, P: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 20, (B, P), generator=torch.Generator().manual_seed(seed))


def test_tokens_per_step_tables():
    assert tokens_per_step(torch.tensor([10]), 4).tolist() == [[3, 3, 2, 2]]
    assert tokens_per_step(torch.tensor([10, 3, 0, 8]), 4).tolist() == [
        [3, 3, 2, 2],
        [1, 1, 1, 0],
        [0, 0, 0, 0],
        [2, 2, 2, 2],
    ]
    assert tokens_per_step(torch.tensor([7]), 7).tolist() == [[1] * 7]
    table = tokens_per_step(torch.arange(50), 6)
    assert torch.equal(table.sum(1), torch.arange(50))
    assert (table.max(1).values - table.min(1).values).max() <= 1


def test_commit_mask_picks_top_k():
    conf = torch.tensor([[0.1, 0.9, 0.5, -math.inf], [0.3, 0.2, 0.1, 0.0], [0.5, 0.5, 0.5, 0.1]])
    got = commit_mask(conf, torch.tensor([2, 3, 2]))
    assert got.int().tolist() == [[0, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0]]  # ties: the earlier position first
    assert not commit_mask(conf, torch.tensor([0, 0, 0])).any()


def test_gumbel_argmax_greedy_and_distribution():
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    assert gumbel_argmax(logits, 0.0).tolist() == [1]
    many = logits.expand(40000, 3)
    for temp in (0.5, 1.0, 2.0):
        draws = gumbel_argmax(many, temp, torch.Generator().manual_seed(0))
        freq = torch.bincount(draws, minlength=3).double() / 40000
        torch.testing.assert_close(freq, torch.softmax(logits[0].double() / temp, -1), atol=0.01, rtol=0)


@pytest.mark.parametrize(
    "gen_length, steps, block_length", [(8, 8, 8), (8, 4, 4), (12, 6, 4), (16, 4, 8), (6, 3, 2), (10, 4, 10)]
)
def test_matches_reference_loop(core, gen_length, steps, block_length):
    prompt = prompts(3, 5)
    options = dict(mask_id=MASK, gen_length=gen_length, steps=steps, block_length=block_length)
    got, want = llada_generate(core, prompt, **options), reference_generate(core, prompt, **options)
    assert torch.equal(got, want)
    assert torch.equal(got[:, :5], prompt)
    assert not (got == MASK).any()


def test_reference_loop_history_matches_llada(core):
    """With `return_history` the reference loop reports the step of every commit and its forward passes, as the
    `llada` sampler does (what the benchmark and the running-sums eval count)."""
    options = dict(mask_id=MASK, gen_length=12, steps=6, block_length=4, return_history=True)
    got, want = llada_generate(core, prompts(3, 5), **options), reference_generate(core, prompts(3, 5), **options)
    assert torch.equal(got.sequences, want.sequences) and torch.equal(got.commit_step, want.commit_step)
    assert want.nfe == got.nfe == 6 and (want.commit_step[:, :5] == -1).all()


def test_left_padded_batch_matches_reference_and_single_rows(core):
    rows = [prompts(1, 6, seed=4)[0], prompts(1, 3, seed=5)[0], prompts(1, 4, seed=6)[0]]
    ids = torch.full((3, 6), PAD)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, 6 - len(r) :] = r
        mask[i, 6 - len(r) :] = True
    got = llada_generate(core, ids, mask, mask_id=MASK, gen_length=8, steps=8, block_length=4)
    want = reference_generate(core, ids, mask, mask_id=MASK, gen_length=8, steps=8, block_length=4)
    assert torch.equal(got, want)  # absolute positions, as the reference
    assert torch.equal(got[:, :6], ids)
    compact = llada_generate(core, ids, mask, mask_id=MASK, gen_length=8, steps=8, block_length=4, positions="compact")
    for i, r in enumerate(rows):  # with compact positions each padded row decodes exactly like its prompt alone
        alone = llada_generate(core, r[None], mask_id=MASK, gen_length=8, steps=8, block_length=4)
        assert torch.equal(compact[i, 6:], alone[0, len(r) :]), i


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_one_token_per_step_when_steps_equal_length(core, remasking):
    wrapped = RecordingCore(core)
    prompt = prompts(2, 4)
    out = llada_generate(wrapped, prompt, mask_id=MASK, gen_length=8, steps=8, block_length=4, remasking=remasking,
                         generator=torch.Generator().manual_seed(0))
    assert len(wrapped.inputs) == 8
    seen = wrapped.inputs + [out]
    masked = [(x == MASK).sum(1).tolist() for x in seen]
    assert masked == [[8 - i, 8 - i] for i in range(9)]
    # committed tokens are never changed again, and the second block waits for the first
    for before, after in zip(seen[:-1], seen[1:], strict=True):
        kept = before != MASK
        assert torch.equal(after[kept], before[kept])
    assert (wrapped.inputs[4][:, 4:8] != MASK).all() and (wrapped.inputs[3][:, 8:] == MASK).all()


def test_sampling_with_temperature_is_reproducible(core):
    prompt = prompts(2, 4)

    def run(seed: int, **kw) -> torch.Tensor:
        return llada_generate(core, prompt, mask_id=MASK, gen_length=8, steps=4, block_length=8, temperature=1.0,
                              generator=torch.Generator().manual_seed(seed), **kw)

    a, b = run(0, logits_mask_inf=True), run(0, logits_mask_inf=True)
    assert torch.equal(a, b) and not (a == MASK).any()
    assert any(not torch.equal(a, run(s, logits_mask_inf=True)) for s in range(1, 4))
    # like the reference, without logits_mask_inf a sampled mask id is committed and the position stays masked
    assert bool((run(0) == MASK).any())


def test_errors(core):
    prompt = prompts(1, 3)
    with pytest.raises(ValueError, match="gen_length=10 must be a multiple of block_length=4"):
        llada_generate(core, prompt, mask_id=MASK, gen_length=10, steps=10, block_length=4)
    with pytest.raises(ValueError, match=r"steps=5 must be a multiple of the number of blocks \(2\)"):
        llada_generate(core, prompt, mask_id=MASK, gen_length=8, steps=5, block_length=4)
    with pytest.raises(ValueError, match=r"remasking must be one of \('low_confidence', 'margin', 'entropy', "):
        llada_generate(core, prompt, mask_id=MASK, gen_length=4, steps=4, block_length=4, remasking="topk")
    bad = [(dict(threshold=0.0), r"threshold must be in \(0, 1\], got 0.0"),
           (dict(threshold=1.5), r"threshold must be in \(0, 1\], got 1.5"),
           (dict(factor=-1.0), "factor must be > 0"),
           (dict(threshold=0.9, factor=1.0), "give threshold or factor, not both"),
           (dict(cache="full"), r"cache must be one of \(None, 'prefix', 'dual', 'delayed'\), got 'full'"),
           (dict(top_k=0), "top_k must be >= 1"), (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
           (dict(positions="relative"), "positions must be one of"), (dict(cfg_scale=-1.0), "cfg_scale must be >= 0"),
           (dict(eos_early_stop=True), "need eos_id")]
    for kw, message in bad:
        with pytest.raises(ValueError, match=message):
            llada_generate(core, prompt, mask_id=MASK, gen_length=4, steps=4, block_length=4, **kw)
    shifted = MaskedDiffusionTransformer(CoreConfig(vocab=LAYOUT, d_model=16, n_layers=1, n_heads=2,
                                                    logits_shift="previous"))
    with pytest.raises(ValueError, match="cache='dual' needs a core whose logit at i predicts token i"):
        llada_generate(shifted, prompt, mask_id=MASK, gen_length=4, steps=4, block_length=4, cache="dual")
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        llada_generate(core, prompt, mask_id=MASK, gen_length=4, steps=4, block_length=4, temperature=-1.0)
    with pytest.raises(ValueError, match=r"attention_mask \(1, 2\) must match input_ids \(1, 3\)"):
        llada_generate(core, prompt, torch.ones(1, 2, dtype=torch.bool), mask_id=MASK, gen_length=4, steps=4,
                       block_length=4)
    with pytest.raises(ValueError, match=r"token id 99 is outside the vocabulary \[0, 24\)"):
        llada_generate(core, torch.tensor([[1, 99]]), mask_id=MASK, gen_length=4, steps=4, block_length=4)
    with pytest.raises(ValueError, match=r"the prompt holds the mask id 20 \(row 0, position 1\); pass infill=True"):
        llada_generate(core, torch.tensor([[1, MASK, 2]]), mask_id=MASK, gen_length=4, steps=4, block_length=4)
    with pytest.raises(ValueError, match="nothing to generate: gen_length=0"):
        llada_generate(core, prompt, mask_id=MASK, gen_length=0, steps=4, block_length=4, infill=True)


def test_infill_of_a_masked_tail_equals_generation(core):
    """Masks in place at the end of the prompt decode exactly like the same number of generated positions."""
    prompt = prompts(2, 4)
    generated = llada_generate(core, prompt, mask_id=MASK, gen_length=8, steps=8, block_length=4)
    canvas = torch.cat([prompt, torch.full((2, 8), MASK)], 1)
    filled = llada_generate(core, canvas, mask_id=MASK, gen_length=0, steps=8, block_length=4, infill=True)
    assert torch.equal(filled, generated)


def test_infill_fills_only_the_masks_one_per_step_and_keeps_given_tokens(core):
    wrapped = RecordingCore(core)
    canvas = prompts(2, 10)
    holes = torch.zeros(2, 10, dtype=torch.bool)
    holes[0, [3, 5, 9]] = True
    holes[1, [4, 8]] = True
    canvas[holes] = MASK
    canvas[1, 0] = PAD  # a padded position is never filled, even when pad and mask ids coincide below
    attention = torch.ones(2, 10, dtype=torch.bool)
    attention[1, 0] = False
    out = llada_generate(wrapped, canvas, attention, mask_id=MASK, gen_length=2, steps=9, block_length=4, infill=True)
    assert out.shape == (2, 12) and not (out[:, 1:] == MASK).any()
    assert torch.equal(out[:, :10][~holes], canvas[~holes])  # given tokens stay
    # the region starts at the first hole (column 3): blocks [3, 7), [7, 11), [11, 12), 3 steps each
    assert len(wrapped.inputs) == 9
    masked = [(x == MASK).sum(1).tolist() for x in wrapped.inputs + [out]]
    assert masked == [[5, 4], [4, 3], [3, 3], [3, 3], [2, 2], [1, 1], [1, 1], [0, 0], [0, 0], [0, 0]]
    with pytest.raises(ValueError, match=r"steps=8 must be a multiple of the number of blocks \(3\)"):
        llada_generate(core, canvas, attention, mask_id=MASK, gen_length=2, steps=8, block_length=4, infill=True)
    same_mask = canvas.clone()
    same_mask[1, 0] = MASK  # padding that uses the mask id is not a hole
    out2 = llada_generate(core, same_mask, attention, mask_id=MASK, gen_length=2, steps=9, block_length=4,
                          infill=True)
    assert out2[1, 0] == MASK and torch.equal(out2[:, 1:], out[:, 1:])


# ------------------------------------------------------------------------------------------------ fast path
class FixedLogits(nn.Module):
    """A dummy core with deterministic logits: position j of the canvas always predicts token `target[j]` with
    probability `prob[j]` (the rest spread evenly), whatever the input."""

    def __init__(self, target: torch.Tensor, prob: torch.Tensor, vocab: int = LAYOUT.size) -> None:
        super().__init__()
        p = torch.full((len(target), vocab), 1.0)
        p = p * ((1 - prob) / (vocab - 1))[:, None]
        p[torch.arange(len(target)), target] = prob
        self.logits = p.log()  # (L, V)
        self.calls: list[dict] = []

    def check_ids(self, ids):
        pass

    def forward(self, x, logits_at=None, cache_window=None, **kw):
        self.calls.append({"shape": tuple(x.shape), "window": cache_window,
                           "asked": None if logits_at is None else logits_at.tolist()})
        lo = cache_window[0] if cache_window is not None else 0
        full = self.logits[None, lo : lo + x.shape[1]].expand(x.shape[0], -1, -1)
        if logits_at is None:
            return type("Out", (), {"logits": full.clone(), "cache": None})()
        out = full.gather(1, logits_at[..., None].expand(-1, -1, full.shape[-1]))
        return type("Out", (), {"logits": out.clone(), "cache": "kv" if kw.get("use_cache") else None})()


def test_threshold_commits_every_confident_token_at_least_one_per_step():
    # prompt of 2, answer of 8 in one block; confidences: 4 above 0.9, then 0.8, 0.7, 0.6, 0.5
    prob = torch.tensor([0.5, 0.5, 0.99, 0.95, 0.8, 0.97, 0.7, 0.92, 0.6, 0.5])
    core = FixedLogits(torch.arange(10) % 20, prob)
    out = llada_generate(core, torch.tensor([[0, 1]]), mask_id=MASK, gen_length=8, steps=8, block_length=8,
                         threshold=0.9, return_history=True)
    assert out.sequences[0, 2:].tolist() == list(range(2, 10))
    # step 0: the four > 0.9; then one per step in order of confidence 0.8, 0.7, 0.6, 0.5
    assert out.commit_step[0].tolist() == [-1, -1, 0, 0, 1, 0, 2, 0, 3, 4] and out.nfe == 5
    fixed = llada_generate(core, torch.tensor([[0, 1]]), mask_id=MASK, gen_length=8, steps=4, block_length=8,
                           return_history=True)
    assert fixed.nfe == 4 and fixed.commit_step[0].tolist() == [-1, -1, 0, 1, 2, 0, 2, 1, 3, 3]  # two per step


def test_threshold_decoding_asks_logits_only_where_a_row_still_has_masks():
    """Each adaptive step computes logits at each row's still-masked block columns (padded to the widest row with
    decided columns, whose predictions are never committed), and commits exactly as the whole-block logits would."""
    prob = torch.tensor([0.5, 0.5, 0.99, 0.95, 0.8, 0.97, 0.7, 0.92, 0.6, 0.5])
    core = FixedLogits(torch.arange(10) % 20, prob)
    out = llada_generate(core, torch.tensor([[0, 1], [1, 0]]), mask_id=MASK, gen_length=8, steps=8, block_length=8,
                         threshold=0.9, return_history=True)
    assert out.sequences[:, 2:].tolist() == [list(range(2, 10))] * 2
    assert out.commit_step[0].tolist() == [-1, -1, 0, 0, 1, 0, 2, 0, 3, 4] and out.nfe == 5
    # canvas columns asked per step: all 8, then the 4 still masked, 3, 2, 1
    assert [c["asked"][0] for c in core.calls] == [list(range(2, 10)), [4, 6, 8, 9], [6, 8, 9], [8, 9], [9]]
    core.calls.clear()
    again = llada_generate(core, torch.tensor([[0, 1]]), mask_id=MASK, gen_length=8, steps=8, block_length=8,
                           threshold=0.9, remask_below=0.01, return_history=True)  # needs every column's logits
    assert torch.equal(again.sequences[0], out.sequences[0])
    assert all(len(c["asked"][0]) == 8 for c in core.calls)


@pytest.mark.parametrize("options", [
    {"threshold": 0.3}, {"threshold": 0.3, "cache": "dual"}, {"factor": 3.0, "cache": "delayed"},
    {"threshold": 0.3, "cfg_scale": 1.5}, {"threshold": 0.3, "remasking": "margin", "cache": "prefix"},
    {"threshold": 0.3, "cache": "delayed"},
], ids=["threshold", "dual", "factor-delayed", "guidance", "margin-prefix", "delayed"])
def test_masked_columns_only_decode_like_the_whole_block(core, options):
    """Asking logits only at still-masked columns changes nothing: a run forced onto whole-block logits (an identity
    logits processor) gives the same tokens, commit steps and NFE, with left padding and two rows of unequal
    progress."""
    ids = torch.tensor([[PAD, PAD, 3, 7], [1, 2, 3, 4]])
    attention = ids != PAD
    kw = dict(mask_id=MASK, gen_length=16, steps=16, block_length=8, return_history=True, **options)
    batch_rows = []
    recording = RowsSeen(core, batch_rows)
    fast = llada_generate(recording, ids, attention, **kw)
    whole = llada_generate(core, ids, attention, logits_processor=lambda logits, *args: logits, **kw)
    assert torch.equal(fast.sequences, whole.sequences) and torch.equal(fast.commit_step, whole.commit_step)
    assert fast.nfe == whole.nfe and fast.nfe < 16  # parallel commits happened
    # a row that finished its block sits out the block's last steps (every cache mode), except with guidance (with
    # the factor rule both rows finish each block at the same step)
    subset = "cfg_scale" not in options and "factor" not in options
    assert (1 in batch_rows) == subset and batch_rows[0] == (4 if "cfg_scale" in options else 2)


class RowsSeen(nn.Module):
    """Runs a core and records the batch size of every call."""

    def __init__(self, core: nn.Module, seen: list[int]) -> None:
        super().__init__()
        self.core, self.seen = core, seen

    def check_ids(self, ids):
        self.core.check_ids(ids)

    def forward(self, x, **kw):
        self.seen.append(x.shape[0])
        return self.core(x, **kw)


def test_factor_rule_exact():
    # sorted confidences 0.99, 0.95, 0.8, 0.6: thresholds 1 - 1/(i+1) = -, 0.667, 0.75, 0.8 -> commit 3
    conf = torch.tensor([[0.8, 0.99, 0.6, 0.95, 0.3]], dtype=torch.float64)
    still = torch.tensor([[True, True, True, True, False]])
    assert factor_commits(conf, still, 1.0).tolist() == [[True, True, False, True, False]]
    assert factor_commits(conf, still, 0.1).tolist() == [[False, True, False, False, False]]  # at least one
    assert threshold_commits(conf, still, 0.99).tolist() == [[False, True, False, False, False]]


def test_confidence_orders_and_filters_exact():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]]))
    x0 = torch.tensor([0, 1])
    assert confidence_scores(logits, x0, "low_confidence").tolist() == pytest.approx([0.5, 0.4])
    assert confidence_scores(logits, x0, "margin").tolist() == pytest.approx([0.2, 0.0])
    entropy = [-(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)),
               -(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2))]
    assert confidence_scores(logits, x0, "entropy").tolist() == pytest.approx([-e for e in entropy])
    assert filter_logits(logits, top_k=1)[0].isinf().tolist() == [False, True, True]
    assert filter_logits(logits, top_p=0.7)[0].isinf().tolist() == [False, False, True]  # 0.5 + 0.3 >= 0.7
    assert filter_logits(logits, top_p=0.5)[0].isinf().tolist() == [False, True, True]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_windows_and_refresh_per_block(cache):
    prob = torch.linspace(0.5, 0.99, 12)
    core = FixedLogits(torch.arange(12) % 20, prob)
    out = llada_generate(core, torch.tensor([[0, 1, 2, 3]]), mask_id=MASK, gen_length=8, steps=8, block_length=4,
                         cache=cache)
    assert out[0].tolist() == list(range(12))
    # per block of 4 steps: one full pass that builds the cache, then 3 passes over the window only
    first, second = ((4, 8), (8, 12)) if cache == "dual" else ((4, 12), (8, 12))
    assert [c["window"] for c in core.calls] == [None, first, first, first, None, second, second, second]
    assert [c["shape"][1] for c in core.calls] == [12] + [first[1] - first[0]] * 3 + [12] + [4] * 3


def test_delayed_cache_runs_the_block_widened_to_tokens_committed_since_their_keys_were_computed():
    prob = torch.linspace(0.5, 0.99, 12)  # a block commits right to left
    core = FixedLogits(torch.arange(12) % 20, prob)
    out = llada_generate(core, torch.tensor([[0, 1, 2, 3]]), mask_id=MASK, gen_length=8, steps=8, block_length=4,
                         cache="delayed")
    assert out[0].tolist() == list(range(12))
    # one full pass, never refreshed; the first step of block 2 re-runs position 4, committed at the last step of
    # block 1; the positions of block 1 committed earlier were re-run by block 1's own steps
    assert [c["window"] for c in core.calls] == [None, (4, 8), (4, 8), (4, 8), (4, 12), (8, 12), (8, 12), (8, 12)]
    assert [c["shape"][1] for c in core.calls] == [12, 4, 4, 4, 8, 4, 4, 4]


class CausalCore(nn.Module):
    """A real core run with causal attention: every position sees itself and the positions left of it."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core

    def check_ids(self, ids):
        self.core.check_ids(ids)

    def forward(self, x, attention_mask=None, cache=None, **kw):
        length = cache.length if cache is not None else x.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None].expand(x.shape[0], 1, -1, -1)
        return self.core(x, attention_mask=causal, cache=cache, **kw)


@pytest.mark.parametrize("options", [dict(steps=12, block_length=4), dict(steps=24, block_length=8, threshold=0.3),
                                     dict(steps=24, block_length=3)])
def test_delayed_cache_is_exact_with_causal_attention(core, options):
    """Causal attention hides the stale keys right of the block, so every step of the delayed cache sees exactly
    the canvas an uncached step sees: the outputs agree token for token (a position decoded but not re-run would
    show its mask id to the next block and break this)."""
    causal = CausalCore(core)
    prompt = prompts(3, 4)
    plain = llada_generate(causal, prompt, mask_id=MASK, gen_length=24, **options)
    rows_seen = []
    delayed = llada_generate(RowsSeen(causal, rows_seen), prompt, mask_id=MASK, gen_length=24, cache="delayed",
                             **options)
    assert torch.equal(plain, delayed)
    # with a threshold, rows that finished a block sit out its last steps (their fresh keys and values of the rows
    # that ran go back into the batch's cache; their own stale columns are recomputed at the next block)
    assert (min(rows_seen) < 3) == ("threshold" in options)
    dual = llada_generate(causal, prompt, mask_id=MASK, gen_length=24, cache="dual", **options)
    assert torch.equal(plain, dual)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_sampling_with_one_block_equals_uncached_at_first_step(core, cache):
    """Within a block only the first step is exact with a cache; with one step per block the caches are exact."""
    prompt = prompts(2, 4)
    plain = llada_generate(core, prompt, mask_id=MASK, gen_length=8, steps=2, block_length=4)
    cached = llada_generate(core, prompt, mask_id=MASK, gen_length=8, steps=2, block_length=4, cache=cache)
    assert torch.equal(plain, cached)
    many = llada_generate(core, prompt, mask_id=MASK, gen_length=8, steps=8, block_length=4, cache=cache,
                          return_history=True)
    assert many.nfe == 8 and not (many.sequences == MASK).any()


def test_cfg_matches_hand_guided_logits(core):
    prompt = prompts(1, 4)
    w = 1.5
    got = llada_generate(core, prompt, mask_id=MASK, gen_length=4, steps=4, block_length=4, cfg_scale=w)

    class Guided(nn.Module):  # applies the guidance formula by hand on full canvases
        def check_ids(self, ids):
            pass

        def forward(self, x, logits_at=None, **kw):
            uncond = x.clone()
            uncond[:, :4] = MASK
            c, u = core(x).logits, core(uncond).logits
            full = u + (w + 1) * (c - u)
            return type("Out", (), {"logits": full.gather(1, logits_at[..., None].expand(-1, -1, full.shape[-1])),
                                    "cache": None})()

    assert torch.equal(got, llada_generate(Guided(), prompt, mask_id=MASK, gen_length=4, steps=4, block_length=4))


@pytest.mark.parametrize("form", ["llada", "standard"])
def test_cfg_forms_and_negative_prompts_match_hand_guided_logits(core, form):
    """Both guidance parametrisations, with the unconditional pass run on a (left-padded) negative prompt that
    shares the generated part; no guidance (w = 0 for "llada", w = 1 for "standard") equals the conditional run."""
    prompt = prompts(2, 4)
    negative = prompts(2, 4, seed=5)
    negative_mask = torch.tensor([[False, True, True, True], [True, True, True, True]])
    negative = negative.masked_fill(~negative_mask, LAYOUT.pad_id)
    w = 2.5
    options = dict(mask_id=MASK, gen_length=4, steps=4, block_length=4)
    got = llada_generate(core, prompt, cfg_scale=w, cfg_form=form, uncond_input_ids=negative,
                         uncond_attention_mask=negative_mask, **options)

    class Guided(nn.Module):  # the guidance formula by hand on full canvases
        def check_ids(self, ids):
            pass

        def forward(self, x, logits_at=None, **kw):
            uncond = torch.cat([negative, x[:, 4:]], dim=1)
            keys = torch.cat([negative_mask, torch.ones(2, 4, dtype=torch.bool)], dim=1)
            c, u = core(x).logits, core(uncond, attention_mask=keys).logits
            full = u + (w + 1) * (c - u) if form == "llada" else u + w * (c - u)
            return type("Out", (), {"logits": full.gather(1, logits_at[..., None].expand(-1, -1, full.shape[-1])),
                                    "cache": None})()

    assert torch.equal(got, llada_generate(Guided(), prompt, **options))
    unguided = llada_generate(core, prompt, **options)
    off = 0.0 if form == "llada" else 1.0
    assert torch.equal(unguided, llada_generate(core, prompt, cfg_scale=off, cfg_form=form, uncond_input_ids=negative,
                                                **options))
    assert not torch.equal(got, unguided)  # the guidance changed something
    with pytest.raises(ValueError, match="must match the prompt"):
        llada_generate(core, prompt, cfg_scale=w, uncond_input_ids=negative[:, 1:], **options)
    with pytest.raises(ValueError, match="cfg_form must be one of"):
        llada_generate(core, prompt, cfg_scale=w, cfg_form="ho", **options)


def test_cfg_with_infilled_positions_shares_them_with_the_unconditional_canvas(core):
    """The T2I layout: caption, masks to fill, an end marker after them. The unconditional canvas (caption padded
    away) must see the tokens committed so far in the filled region, not the masks it started with."""
    prompt = prompts(2, 8)
    prompt[:, 3:7] = MASK  # region to fill; column 7 is a given end marker
    caption = torch.tensor([[True, True, True] + [True] * 5, [False, True, True] + [True] * 5])
    empty = prompt.clone()
    empty[:, :3] = LAYOUT.pad_id
    empty_mask = caption.clone()
    empty_mask[:, :3] = False
    w = 2.0
    options = dict(mask_id=MASK, gen_length=0, infill=True, steps=4, block_length=4, logits_mask_inf=True)
    got = llada_generate(core, prompt, caption, cfg_scale=w, uncond_input_ids=empty, uncond_attention_mask=empty_mask,
                         **options)

    class Guided(nn.Module):  # by hand: the unconditional canvas is the current canvas with its caption padded away
        def check_ids(self, ids):
            pass

        def forward(self, x, logits_at=None, **kw):
            uncond = x.clone()
            uncond[:, :3] = LAYOUT.pad_id
            c = core(x, attention_mask=caption).logits
            u = core(uncond, attention_mask=empty_mask).logits
            full = u + (w + 1) * (c - u)
            return type("Out", (), {"logits": full.gather(1, logits_at[..., None].expand(-1, -1, full.shape[-1])),
                                    "cache": None})()

    assert torch.equal(got, llada_generate(Guided(), prompt, **options))
    assert torch.equal(got[:, 7], prompt[:, 7]) and not (got == MASK).any()


def test_eos_early_stop_fills_the_rest_and_skips_blocks():
    EOS = LAYOUT.eos_id
    target = torch.tensor([0, 1, 5, EOS, 6, 7, 8, 9, 10, 11])
    core = FixedLogits(target, torch.full((10,), 0.9))
    out = llada_generate(core, torch.tensor([[0, 1]]), mask_id=MASK, gen_length=8, steps=8, block_length=4,
                         eos_early_stop=True, eos_id=EOS, return_history=True)
    assert out.sequences[0].tolist() == [0, 1, 5, EOS, 6, 7] + [EOS] * 4  # committed tokens stay, masks -> EOS
    assert out.nfe == 4  # the second block is never run
    plain = llada_generate(core, torch.tensor([[0, 1]]), mask_id=MASK, gen_length=8, steps=8, block_length=4)
    assert plain[0].tolist() == target.tolist()
    banned = llada_generate(core, torch.tensor([[0, 1]]), mask_id=MASK, gen_length=8, steps=8, block_length=4,
                            logits_eos_inf=True, eos_id=EOS)
    assert EOS not in banned[0].tolist()


def test_batch_of_two_equals_single_runs_on_the_fast_path(core):
    prompt = prompts(2, 4, seed=9)
    options = dict(mask_id=MASK, gen_length=8, steps=8, block_length=4, threshold=0.5, cache="dual")
    both = llada_generate(core, prompt, **options)
    for i in range(2):
        assert torch.equal(both[i], llada_generate(core, prompt[i : i + 1], **options)[0])


def test_reference_loop_hand_computed_and_infill():
    """The plain reference loop on deterministic logits: 8 masks, 4 steps, one block -> 2 commits per step in
    confidence order; infill decodes the masks in place from the first one."""
    prob = torch.tensor([0.5, 0.5, 0.99, 0.95, 0.8, 0.97, 0.7, 0.92, 0.6, 0.5])
    core = FixedLogits(torch.arange(10) % 20, prob)
    wrapped = RecordingCore(core)
    out = reference_generate(wrapped, torch.tensor([[0, 1]]), mask_id=MASK, gen_length=8, steps=4, block_length=8)
    assert out[0].tolist() == list(range(10))
    # confidence order 2, 5, 3, 7, 4, 6, 8, 9: two per step
    masked_after = [[int(v) for v in (x[0] == MASK).nonzero().flatten()] for x in wrapped.inputs[1:] + [out]]
    assert masked_after == [[3, 4, 6, 7, 8, 9], [4, 6, 8, 9], [8, 9], []]
    canvas = torch.tensor([[0, 1, MASK, 3, MASK, 5, 6, MASK, 8, MASK]])
    filled = reference_generate(core, canvas, mask_id=MASK, gen_length=0, steps=4, block_length=4, infill=True)
    assert filled[0].tolist() == list(range(10))
    assert torch.equal(filled, llada_generate(core, canvas, mask_id=MASK, gen_length=0, steps=4, block_length=4,
                                              infill=True))


def test_cosine_schedule_and_gumbel_choice():
    assert cosine_tokens_per_step(torch.tensor([16, 5, 0]), 4).tolist() == [[2, 3, 5, 6], [1, 1, 2, 1], [0, 0, 0, 0]]
    # floor(16 cos(pi/8)) = 14, floor(16 cos(pi/4)) = 11, floor(16 cos(3 pi/8)) = 6 positions left after steps 1-3
    prob = torch.linspace(0.3, 0.99, 18)
    core = FixedLogits(torch.arange(18) % 20, prob)
    out = llada_generate(core, torch.tensor([[0, 1]]), mask_id=MASK, gen_length=16, steps=4, block_length=16,
                         schedule="cosine", return_history=True)
    per_step = torch.bincount(out.commit_step[0, 2:], minlength=4).tolist()
    assert per_step == [2, 3, 5, 6] and out.commit_step[0, -2:].tolist() == [0, 0]  # most confident first

    def gumbel(seed):
        return llada_generate(core, torch.tensor([[0, 1]]), mask_id=MASK, gen_length=16, steps=4, block_length=16,
                              schedule="cosine", choice_temperature=5.0, return_history=True,
                              generator=torch.Generator().manual_seed(seed)).commit_step
    a = gumbel(0)
    assert torch.equal(a, gumbel(0)) and torch.bincount(a[0, 2:], minlength=4).tolist() == [2, 3, 5, 6]
    assert any(not torch.equal(a, gumbel(s)) for s in range(1, 4))  # the noise reorders commits


class ChangingMind(nn.Module):
    """Predicts token 3 everywhere (p = 0.9) on its first call, token 4 (p = 0.9) afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def check_ids(self, ids):
        pass

    def forward(self, x, logits_at=None, **kw):
        token = 3 if self.calls == 0 else 4
        self.calls += 1
        p = torch.full((*logits_at.shape, LAYOUT.size), 0.1 / (LAYOUT.size - 1))
        p[..., token] = 0.9
        return type("Out", (), {"logits": p.log(), "cache": None})()


def test_secondary_remasking_and_constraints():
    out = llada_generate(ChangingMind(), torch.tensor([[0, 1]]), mask_id=MASK, gen_length=4, steps=4, block_length=4,
                         return_history=True)
    assert out.sequences[0, 2:].tolist() == [3, 4, 4, 4]  # without remasking the first commit stays
    out = llada_generate(ChangingMind(), torch.tensor([[0, 1]]), mask_id=MASK, gen_length=4, steps=4, block_length=4,
                         remask_below=0.5, return_history=True)
    assert out.sequences[0, 2:].tolist() == [4, 4, 4, 4] and out.nfe == 4
    assert out.commit_step[0].tolist() == [-1, -1, 2, 1, 2, 3]  # remasked at step 1, decoded again at step 2
    core = FixedLogits(torch.arange(10) % 20, torch.full((10,), 0.9))
    allowed = llada_generate(core, torch.tensor([[0, 1]]), mask_id=MASK, gen_length=8, steps=8, block_length=8,
                             allowed_token_ids=[7, 9])
    assert set(allowed[0, 2:].tolist()) <= {7, 9} and allowed[0, 7].item() == 7 and allowed[0, 9].item() == 9

    def only_even_positions_five(logits, canvas, lo, hi):
        assert canvas.shape == (1, 10) and (lo, hi) == (2, 10)
        logits = logits.clone()
        logits[:, 0::2] = -math.inf
        logits[:, 0::2, 5] = 0.0
        return logits

    hooked = llada_generate(core, torch.tensor([[0, 1]]), mask_id=MASK, gen_length=8, steps=8, block_length=8,
                            logits_processor=only_even_positions_five)
    assert hooked[0, 2::2].tolist() == [5, 5, 5, 5] and hooked[0, 3::2].tolist() == [3, 5, 7, 9]
    for kw, message in [(dict(schedule="exp"), "schedule must be 'linear' or 'cosine'"),
                        (dict(choice_temperature=-1.0), "choice_temperature must be >= 0"),
                        (dict(remask_below=1.0), r"remask_below must be in \(0, 1\)")]:
        with pytest.raises(ValueError, match=message):
            llada_generate(core, torch.tensor([[0, 1]]), mask_id=MASK, gen_length=8, steps=8, block_length=8, **kw)


def test_shipped_checkable_entry_fast_path_parity():
    """On the shipped running-sums entry, the fast path with threshold and cache off decodes exactly like the
    reference loop, and solves the held-out problems; dual cache + threshold keeps the answers right."""
    from mmdiff import create_model
    from mmdiff.data.running_sums import RunningSumsSource, grade_answer
    from mmdiff.tasks.text import left_pad

    model = create_model("running-sums-small")
    source = RunningSumsSource(n_min=16, n_max=48, val_size=6, seed=7)
    rows = []
    for digits in source.val_problems:
        ex = source.example(digits, model.vocab)
        rows.append(ex["ids"].masked_fill(ex["maskable"], model.vocab.mask_id))
    ids, attention = left_pad(rows, model.vocab.pad_id)
    options = dict(gen_length=0, infill=True, steps=48, block_length=ids.shape[1])
    reference = model.generate(ids, attention, sampler="llada-reference", **options)
    fast = model.generate(ids, attention, sampler="llada", **options)
    assert torch.equal(fast, reference)
    cached = model.generate(ids, attention, sampler="llada", threshold=0.9, cache="dual", **options)
    delayed = model.generate(ids, attention, sampler="llada", threshold=0.99, cache="delayed",
                             **{**options, "block_length": 8})
    for out in (fast, cached, delayed):
        answers = [[str(t) for t in row[keep].tolist()] for row, keep in zip(out, attention, strict=True)]
        assert all(grade_answer(p, a).exact for p, a in zip(source.val_problems, answers, strict=True))


def test_confidence_eos_eot_inf_as_the_reference_applies_it():
    EOT = 15  # any id; the reference removes it from the confidence softmax after predicting
    core = FixedLogits(torch.tensor([0, 1, EOT, 5]), torch.tensor([0.5, 0.5, 0.9, 0.6]))
    options = dict(mask_id=MASK, gen_length=2, steps=2, block_length=2, return_history=True)
    plain = llada_generate(core, torch.tensor([[0, 1]]), **options)
    assert plain.commit_step[0].tolist() == [-1, -1, 0, 1]  # EOT (0.9) first
    late = llada_generate(core, torch.tensor([[0, 1]]), eot_id=EOT, confidence_eos_eot_inf=True, **options)
    assert late.sequences[0].tolist() == [0, 1, EOT, 5]  # the prediction itself is unchanged
    assert late.commit_step[0].tolist() == [-1, -1, 1, 0]  # its confidence became 0: committed last
