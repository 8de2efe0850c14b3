"""Dream sampling against an independent, plain transcription of Dream's `_sample` loop (full-sequence logits every
step from an UNSHIFTED core, shifted by hand as Dream does, its 4-D query-and-key padding mask, the batch-mean
transfer count, torch.topk / torch.multinomial over the whole canvas, Categorical sampling), plus the commit
schedule, reproducibility, the mask id never being produced, the batch-mean rule's failure on uneven batches, and
errors."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdiff import CoreConfig, MaskedDiffusionTransformer, VocabLayout
from mmdiff.registry import SAMPLERS
from mmdiff.sampling.dream import ALGORITHMS, DreamSampler, dream_generate, sample_tokens, transfer_counts
from mmdiff.sampling.output import GIVEN, SamplerOutput

LAYOUT = VocabLayout.build(text_size=20)  # mask 20, eos 21, pad 22, bos 23
MASK, PAD = LAYOUT.mask_id, LAYOUT.pad_id


def _tiny_core(shift: str) -> MaskedDiffusionTransformer:
    """A random tiny core with O(1) weights, so confidences are well separated (no near-ties)."""
    torch.manual_seed(0)
    core = MaskedDiffusionTransformer(
        CoreConfig(vocab=LAYOUT, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, qkv_bias=True, logits_shift=shift)
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in core.named_parameters():
            if not name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 2 / math.sqrt(p.shape[-1]))
    return core.eval()


@pytest.fixture(scope="module")
def cores() -> tuple[MaskedDiffusionTransformer, MaskedDiffusionTransformer]:
    """(Dream-style core with logits_shift="previous", the same weights unshifted)."""
    return _tiny_core("previous"), _tiny_core("none")


@pytest.fixture(scope="module")
def core(cores) -> MaskedDiffusionTransformer:
    return cores[0]


# ---------------------------------------------------------------- the reference loop, written out plainly
def ref_sample_tokens(logits, temperature=0.0, top_p=None, top_k=None, margin_confidence=False, neg_entropy=False):
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = 0
        remove = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_indices, remove)
        logits = logits.masked_fill(remove, torch.finfo(logits.dtype).min)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        x0 = torch.distributions.Categorical(probs=probs).sample()
        confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if margin_confidence:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


@torch.no_grad()
def reference_dream(unshifted, prompt, gen_length, steps, alg, attention_mask=None, temperature=0.0, top_p=None,
                    top_k=None, alg_temp=None, eps=1e-3, mask_inf=False):
    """Dream's `_sample` (random draws from the global generator); `mask_inf`: never sample the mask id (mmdiff's
    `logits_mask_inf`, not Dream's behaviour)."""
    x = F.pad(prompt, (0, gen_length), value=MASK)
    mask4 = tok_idx = None
    if attention_mask is not None and torch.any(attention_mask == 0):
        am = F.pad(attention_mask.long(), (0, gen_length), value=1)
        tok_idx = am.cumsum(-1) - 1
        tok_idx.masked_fill_(am == 0, 1)
        am = am.bool()
        mask4 = am[:, None, None, :] & am[:, None, :, None]  # (B, 1, L, L): query and key both real
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == MASK
        logits = unshifted(x, attention_mask=mask4, position_ids=tok_idx).logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        if mask_inf:
            logits[..., MASK] = -math.inf
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index]) + MASK
            transfer = torch.rand(*x0.shape) < p_transfer
            _, x0[transfer] = ref_sample_tokens(mask_logits[transfer], temperature, top_p, top_k)
            x[mask_index] = x0.clone()
            continue
        confidence, x0 = ref_sample_tokens(mask_logits, temperature, top_p, top_k,
                                           margin_confidence=alg == "topk_margin", neg_entropy=alg == "entropy")
        num_mask_token = mask_index.sum() / mask_index.shape[0]
        number_transfer_tokens = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
        full_confidence[mask_index] = confidence
        if number_transfer_tokens > 0:
            if alg_temp is None or alg_temp == 0:
                _, transfer_index = torch.topk(full_confidence, number_transfer_tokens)
            else:
                probs = F.softmax(full_confidence / alg_temp, dim=-1)
                transfer_index = torch.multinomial(probs, num_samples=number_transfer_tokens)
            x_ = torch.zeros_like(x) + MASK
            x_[mask_index] = x0.clone()
            rows = torch.arange(x.size(0)).unsqueeze(1).expand_as(transfer_index)
            x[rows, transfer_index] = x_[rows, transfer_index]
    return x


def ref_with_seed(seed, *args, **kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return reference_dream(*args, **kwargs)


def prompts(B: int, P: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 20, (B, P), generator=torch.Generator().manual_seed(seed))


def left_padded(lengths: list[int], seed: int = 4) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    rows = [prompts(1, n, seed=seed + i)[0] for i, n in enumerate(lengths)]
    P = max(lengths)
    ids = torch.full((len(rows), P), PAD)
    mask = torch.zeros(len(rows), P, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, P - len(r) :] = r
        mask[i, P - len(r) :] = True
    return ids, mask, rows


# ---------------------------------------------------------------- parity
def test_core_shift_is_dreams(cores):
    shifted, unshifted = cores
    x = prompts(2, 7)
    plain = unshifted(x).logits
    assert torch.equal(shifted(x).logits, torch.cat([plain[:, :1], plain[:, :-1]], dim=1))
    at = torch.tensor([[3, 6], [0, 5]])
    assert torch.equal(shifted(x, logits_at=at).logits, torch.cat([plain[:, :1], plain[:, :-1]], 1)[[[0], [1]], at])


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("gen_length, steps", [(8, 3), (10, 6)])
def test_matches_reference_loop_greedy(cores, alg, B, gen_length, steps):
    shifted, unshifted = cores
    prompt = prompts(B, 5)
    got = dream_generate(shifted, prompt, mask_id=MASK, gen_length=gen_length, steps=steps, alg=alg,
                         generator=torch.Generator().manual_seed(11))
    want = ref_with_seed(11, unshifted, prompt, gen_length, steps, alg)
    assert torch.equal(got, want)
    assert torch.equal(got[:, :5], prompt) and not (got == MASK).any()


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_matches_reference_loop_sampling(cores, alg):
    """temperature, top-p, top-k and alg_temp > 0: the same random calls in the same order as Dream's."""
    shifted, unshifted = cores
    prompt = prompts(3, 4)
    kwargs = dict(temperature=0.8, top_p=0.9, top_k=6, alg_temp=0.5)
    got = dream_generate(shifted, prompt, mask_id=MASK, gen_length=9, steps=5, alg=alg,
                         generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(got, ref_with_seed(5, unshifted, prompt, 9, 5, alg, **kwargs))
    with torch.random.fork_rng():  # generator=None draws from the global generator, exactly as Dream
        torch.manual_seed(5)
        global_rng = dream_generate(shifted, prompt, mask_id=MASK, gen_length=9, steps=5, alg=alg, **kwargs)
    assert torch.equal(global_rng, got)
    greedy_filtered = dream_generate(shifted, prompt, mask_id=MASK, gen_length=9, steps=5, alg=alg, top_p=0.5,
                                     top_k=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(greedy_filtered, ref_with_seed(5, unshifted, prompt, 9, 5, alg, top_p=0.5, top_k=3))


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_left_padded_batch(cores, alg):
    shifted, unshifted = cores
    ids, mask, rows = left_padded([6, 3, 4])
    gen = torch.Generator().manual_seed(2)
    # with the mask id suppressed (this random core gives it real probability, see test_dream_parity_*)
    got = dream_generate(shifted, ids, mask, mask_id=MASK, gen_length=8, steps=5, alg=alg, generator=gen,
                         logits_mask_inf=True)
    assert torch.equal(got, ref_with_seed(2, unshifted, ids, 8, 5, alg, attention_mask=mask, mask_inf=True))
    assert torch.equal(got[:, :6], ids) and not (got == MASK).any()
    assert torch.equal(dream_generate(shifted, ids, mask.long(), mask_id=MASK, gen_length=8, steps=5, alg=alg,
                                      generator=torch.Generator().manual_seed(2), logits_mask_inf=True), got)
    if alg == "origin":
        return  # its random draws interleave the rows, so a row alone draws differently
    for i, r in enumerate(rows):  # every padded row decodes exactly like its prompt alone
        alone = dream_generate(shifted, r[None], mask_id=MASK, gen_length=8, steps=5, alg=alg, logits_mask_inf=True)
        assert torch.equal(got[i, 6:], alone[0, len(r) :]), i


def test_equal_batch_equals_single_rows(core):
    prompt = prompts(2, 5)
    for alg in ("maskgit_plus", "topk_margin", "entropy"):
        batch = dream_generate(core, prompt, mask_id=MASK, gen_length=8, steps=4, alg=alg)
        for i in range(2):
            assert torch.equal(batch[i], dream_generate(core, prompt[i : i + 1], mask_id=MASK, gen_length=8,
                                                        steps=4, alg=alg)[0]), (alg, i)


# ---------------------------------------------------------------- schedule and history
class CountingCore(nn.Module):
    """Wraps a core, records the canvases it sees, optionally adds `mask_bonus` to the mask id's logit."""

    def __init__(self, core: nn.Module, mask_bonus: float = 0.0) -> None:
        super().__init__()
        self.core, self.mask_bonus = core, mask_bonus
        self.inputs: list[torch.Tensor] = []
        self.argmax: list[torch.Tensor] = []

    def check_ids(self, ids: torch.Tensor) -> None:
        self.core.check_ids(ids)

    def forward(self, x, **kwargs):
        self.inputs.append(x.clone())
        out = self.core(x, **kwargs)
        out.logits[..., MASK] += self.mask_bonus
        self.argmax.append(out.logits.argmax(-1))
        return out


def test_transfer_count_rule():
    # linspace(1, 1e-3, 5) = [1, .75025, .5005, .25075, .001]; 1 - s/t = [.24975, .33289, .49900, .99601]
    # 8 masks: int(8 * .24975) = 1 -> 7 left; int(7 * .33289) = 2 -> 5; int(5 * .49900) = 2 -> 3; last step: 3
    ts = torch.linspace(1, 1e-3, 5)
    frac = 1 - ts[1:] / ts[:-1]
    left, got = [8, 4], []
    for i in range(4):
        k = transfer_counts(left, frac[i], last=i == 3)
        got.append(k)
        left = [n - c for n, c in zip(left, k, strict=True)]
    assert got == [[1, 0], [2, 1], [2, 1], [3, 2]] and left == [0, 0]
    assert transfer_counts([7, 4], frac[0], last=False, rule="batch_mean") == [1, 1]  # int(5.5 * .24975)
    assert transfer_counts([7, 4], frac[0], last=True, rule="batch_mean") == [5, 5]  # int(5.5)


def test_maskgit_plus_commit_counts_and_history(core):
    wrapped = CountingCore(core)
    prompt = prompts(2, 4)
    out = dream_generate(wrapped, prompt, mask_id=MASK, gen_length=8, steps=4, alg="maskgit_plus",
                         return_history=True)
    assert isinstance(out, SamplerOutput) and out.nfe == 4 and len(wrapped.inputs) == 4
    masked = [(x == MASK).sum(1).tolist() for x in wrapped.inputs + [out.sequences]]
    assert masked == [[8, 8], [7, 7], [5, 5], [3, 3], [0, 0]]  # commits 1, 2, 2, 3 (see test_transfer_count_rule)
    assert (out.commit_step[:, :4] == GIVEN).all()
    for b in range(2):
        assert Counter(out.commit_step[b, 4:].tolist()) == {0: 1, 1: 2, 2: 2, 3: 3}
    # the history agrees with the canvases: committed at step i = masked before step i, never changed after
    for i, (before, after) in enumerate(zip(wrapped.inputs, wrapped.inputs[1:] + [out.sequences], strict=True)):
        kept = before != MASK
        assert torch.equal(after[kept], before[kept])
        assert torch.equal((before == MASK) & (after != MASK), out.commit_step == i)
    # a second shape: 10 masks in 3 steps -> int(10 * .33300) = 3, int(7 * .49925) = 3, then the last 4
    out = dream_generate(core, prompt, mask_id=MASK, gen_length=10, steps=3, alg="maskgit_plus",
                         return_history=True)
    assert Counter(out.commit_step[0, 4:].tolist()) == {0: 3, 1: 3, 2: 4}


def test_origin_commits_every_position_once_and_reports_nfe(core):
    # origin commits each masked position with probability 1 - s/t, so with many steps the 4 positions are usually
    # all committed well before the last step (with this seed at step 57) and the loop stops there
    out = dream_generate(core, prompts(1, 3), mask_id=MASK, gen_length=4, steps=100, alg="origin",
                         return_history=True, generator=torch.Generator().manual_seed(2))
    assert not (out.sequences == MASK).any() and (out.commit_step[:, 3:] >= 0).all()
    assert out.nfe == int(out.commit_step.max()) + 1 < 100


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_mask_id_is_never_produced(core, alg):
    wrapped = CountingCore(core, mask_bonus=30.0)  # the mask id is now every position's argmax
    out = dream_generate(wrapped, prompts(2, 4), mask_id=MASK, gen_length=6, steps=3, alg=alg, temperature=0.0,
                         generator=torch.Generator().manual_seed(0), logits_mask_inf=True)
    assert (wrapped.argmax[0] == MASK).all()
    assert not (out == MASK).any()
    assert out.shape == (2, 10)
    # Dream's default: the mask id is chosen and every position stays masked
    out = dream_generate(wrapped, prompts(2, 4), mask_id=MASK, gen_length=6, steps=3, alg=alg, temperature=0.0,
                         generator=torch.Generator().manual_seed(0))
    assert (out[:, 4:] == MASK).all()


def test_sampling_is_reproducible_and_seed_dependent(core):
    prompt = prompts(2, 4)

    def run(seed: int, alg: str) -> torch.Tensor:
        return dream_generate(core, prompt, mask_id=MASK, gen_length=8, steps=4, alg=alg, temperature=1.0,
                              alg_temp=0.3, generator=torch.Generator().manual_seed(seed), logits_mask_inf=True)

    for alg in ALGORITHMS:
        a = run(0, alg)
        assert torch.equal(a, run(0, alg)) and not (a == MASK).any()
        assert any(not torch.equal(a, run(s, alg)) for s in range(1, 4)), alg


def test_registered():
    assert SAMPLERS.get("dream") is DreamSampler


# ---------------------------------------------------------------- infill and the batch-mean rule
def test_infill_equal_hole_counts_matches_reference(cores):
    shifted, unshifted = cores
    canvas = prompts(2, 7)
    canvas[0, [1, 3]] = MASK
    canvas[1, [2, 5]] = MASK  # the same number of holes per row: Dream's batch mean is exact
    for alg in ALGORITHMS:
        got = dream_generate(shifted, canvas, mask_id=MASK, gen_length=5, steps=4, alg=alg, infill=True,
                             generator=torch.Generator().manual_seed(3), logits_mask_inf=True)
        assert torch.equal(got, ref_with_seed(3, unshifted, canvas, 5, 4, alg, mask_inf=True)), alg
        assert not (got == MASK).any()
        given = canvas != MASK
        assert torch.equal(got[:, :7][given], canvas[given])


def test_batch_mean_rule_reproduces_dreams_failure_on_uneven_rows(cores):
    """Row 0 holds 3 holes + 4 answer masks, row 1 only its 4 answer masks. Dream commits int(mean * (1 - s/t))
    in every row: 1, 1, 1 and int(2.5) = 2 at the last step, so row 0 keeps 2 masks and row 1's top-k picks one
    unmasked position and writes the mask id into it. The per-row rule fills everything."""
    shifted, unshifted = cores
    canvas = prompts(2, 6)
    canvas[0, [1, 2, 4]] = MASK
    dream = dream_generate(shifted, canvas, mask_id=MASK, gen_length=4, steps=4, alg="entropy", infill=True,
                           count_rule="batch_mean", return_history=True)
    assert torch.equal(dream.sequences, reference_dream(unshifted, canvas, 4, 4, "entropy"))
    assert (dream.sequences[0] == MASK).sum() == 2 and (dream.sequences[1] == MASK).sum() == 1
    assert (dream.commit_step[dream.sequences == MASK] == GIVEN).all()
    fixed = dream_generate(shifted, canvas, mask_id=MASK, gen_length=4, steps=4, alg="entropy", infill=True)
    assert not (fixed == MASK).any()
    given = canvas != MASK
    assert torch.equal(fixed[:, :6][given], canvas[given])
    plain = dream_generate(shifted, canvas[1:], mask_id=MASK, gen_length=4, steps=4, alg="entropy")
    assert torch.equal(fixed[1], plain[0])  # the per-row rule: a row decodes as if alone


def test_padding_holding_the_mask_id_is_not_filled(core):
    ids, mask, _ = left_padded([5, 3])
    as_mask = ids.masked_fill(~mask, MASK)  # a tokenizer whose pad id is the mask id
    out = dream_generate(core, as_mask, mask, mask_id=MASK, gen_length=6, steps=3, alg="maskgit_plus")
    ref = dream_generate(core, ids, mask, mask_id=MASK, gen_length=6, steps=3, alg="maskgit_plus")
    assert torch.equal(out[:, 5:], ref[:, 5:]) and torch.equal(out[:, :5], as_mask)


# ---------------------------------------------------------------- helpers and errors
def test_sample_tokens_confidences():
    logits = torch.tensor([[0.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    p = torch.softmax(logits, -1)
    conf, tok = sample_tokens(logits)
    assert tok.tolist() == [1, 0] and torch.equal(conf, p.max(-1).values)
    conf, _ = sample_tokens(logits, margin_confidence=True)
    torch.testing.assert_close(conf, torch.tensor([p[0, 1] - p[0, 2], 0.0]))
    conf, _ = sample_tokens(logits, neg_entropy=True)
    torch.testing.assert_close(conf, torch.tensor([(p[0] * p[0].log()).sum(), -math.log(3)]))
    conf, tok = sample_tokens(logits[:1], top_k=1)  # only one token left: probability 1, entropy 0
    assert tok.tolist() == [1] and conf.tolist() == [1.0]
    conf, _ = sample_tokens(logits[:1], top_p=0.7, neg_entropy=True)  # keeps 2 (.665 < .7), drops 0
    q = torch.softmax(torch.tensor([2.0, 1.0]), -1)
    torch.testing.assert_close(conf, (q * q.log()).sum()[None])
    draws = sample_tokens(logits[:1].expand(20000, 3), temperature=2.0, generator=torch.Generator().manual_seed(0))[1]
    freq = torch.bincount(draws, minlength=3).double() / 20000
    torch.testing.assert_close(freq, torch.softmax(logits[0].double() / 2, -1), atol=0.015, rtol=0)


def test_errors(core):
    p = prompts(1, 3)

    def gen(ids=p, am=None, **kw):
        args = dict(mask_id=MASK, gen_length=4, steps=4) | kw
        return dream_generate(core, ids, am, **args)

    cases = [
        (dict(steps=0), "steps must be >= 1, got 0"),
        (dict(gen_length=0), "gen_length must be >= 1, got 0"),
        (dict(alg="low_confidence"), "unknown alg 'low_confidence'; choose one of origin, maskgit_plus, topk_margin"),
        (dict(temperature=-0.1), "temperature must be >= 0, got -0.1"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=0), "top_k must be >= 1"),
        (dict(eps=0.0), r"eps must be in \(0, 1\), got 0.0"),
        (dict(eps=1.0), r"eps must be in \(0, 1\), got 1.0"),
        (dict(alg_temp=-1.0), "alg_temp must be >= 0"),
        (dict(count_rule="mean"), "unknown count_rule 'mean'"),
        (dict(am=torch.ones(1, 2, dtype=torch.bool)), r"attention_mask \(1, 2\) must match input_ids \(1, 3\)"),
        (dict(am=torch.tensor([[True, False, True]])), "attention_mask must be left padding"),
        (dict(ids=p[0]), r"input_ids must be \(batch, prompt_length\)"),
        (dict(ids=torch.tensor([[1, 99]])), r"token id 99 is outside the vocabulary \[0, 24\)"),
        (dict(ids=torch.tensor([[1, MASK, 2]])), r"the prompt holds the mask id 20 \(row 0, position 1\); pass"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            gen(**kwargs)


@pytest.mark.parametrize("alg", ["maskgit_plus", "entropy"])
@pytest.mark.parametrize("B, rule", [(1, "per_row"), (2, "batch_mean")])
def test_dream_parity_with_probable_mask_id(cores, alg, B, rule):
    """Dream keeps the mask id in the softmax and may choose it (the position stays masked): the default reproduces
    its loop exactly on a core whose mask probability is far from negligible; `logits_mask_inf` departs from it.
    (Rows that choose the mask id a different number of times hold different mask counts: Dream's batch-mean count
    is then `count_rule="batch_mean"`.)"""
    shifted, unshifted = (CountingCore(c, mask_bonus=3.5) for c in cores)
    prompt = prompts(B, 5)
    with torch.no_grad():
        first = unshifted(F.pad(prompt, (0, 8), value=MASK)).logits.softmax(-1)[:, 5:, MASK]  # (B, 8)
    assert float(first.max()) > 0.2  # the mask id is a real contender
    got = dream_generate(shifted, prompt, mask_id=MASK, gen_length=8, steps=4, alg=alg, return_history=True,
                         count_rule=rule)
    assert torch.equal(got.sequences, reference_dream(unshifted, prompt, 8, 4, alg))
    assert bool((got.sequences == MASK).any())  # Dream leaves chosen mask ids masked
    suppressed = dream_generate(shifted, prompt, mask_id=MASK, gen_length=8, steps=4, alg=alg, logits_mask_inf=True,
                                count_rule=rule)
    assert torch.equal(suppressed, reference_dream(unshifted, prompt, 8, 4, alg, mask_inf=True))
    assert not (suppressed == MASK).any()
    assert (got.commit_step[got.sequences == MASK] == GIVEN).all()  # never counted as committed
