"""Schedules (exact endpoints and weights) and the masked-diffusion loss against independent re-computations:
a real core with an explicit t and generator, an all-zero core whose cross-entropy is exactly ln V, SFT
normalisation, complementary masking, and logits computed only at masked positions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmdiff import Canvas, CoreConfig, MaskedDiffusionTransformer, VocabLayout, diffusion_loss, get_schedule
from mmdiff.diffusion import CosineSchedule, LinearSchedule, LogLinearSchedule, forward_process

LAYOUT = VocabLayout.build(text_size=28)  # size 32, mask id 28
MASK = LAYOUT.mask_id


def make_core(seed: int = 0, zero: bool = False, **kw) -> MaskedDiffusionTransformer:
    torch.manual_seed(seed)
    core = MaskedDiffusionTransformer(CoreConfig(vocab=LAYOUT, d_model=32, n_layers=2, n_heads=4, **kw))
    if zero:
        with torch.no_grad():
            for p in core.parameters():
                p.zero_()
    return core


def make_canvas(seed: int = 1) -> Canvas:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 28, (3, 10), generator=g)
    maskable = torch.zeros(3, 10, dtype=torch.bool)
    maskable[0, 2:] = True  # 8 targets
    maskable[1, 5:] = True  # 5 targets
    maskable[2, :] = True  # 10 targets
    return Canvas(ids=ids, maskable=maskable)


# ------------------------------------------------------------------------------------------------------ schedules
def test_linear_schedule_exact():
    s = LinearSchedule(eps=1e-3)
    assert s.mask_prob(torch.tensor([1.0])).item() == pytest.approx(1.0, abs=1e-7)
    assert s.mask_prob(torch.tensor([0.0])).item() == pytest.approx(1e-3, abs=1e-9)
    s = LinearSchedule(eps=0.1)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(s.mask_prob(t), torch.tensor([0.1, 0.55, 1.0], dtype=torch.float64))
    torch.testing.assert_close(s.weight(t), 1 / torch.tensor([0.1, 0.55, 1.0], dtype=torch.float64))


def test_log_linear_schedule_exact():
    s = LogLinearSchedule(eps=0.1)
    t = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(s.mask_prob(t), torch.tensor([0.225, 0.45, 0.9], dtype=torch.float64))
    torch.testing.assert_close(s.weight(t), torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64))


def test_cosine_schedule_exact():
    s = CosineSchedule(eps=1e-3)
    t = torch.tensor([0.5, 1.0], dtype=torch.float64)
    m = 1 - math.sqrt(2) / 2
    torch.testing.assert_close(s.mask_prob(t), torch.tensor([m, 1.0], dtype=torch.float64))
    w_half = (math.pi / 2) * (math.sqrt(2) / 2) / m
    torch.testing.assert_close(s.weight(t), torch.tensor([w_half, math.pi / 2], dtype=torch.float64))
    assert w_half == pytest.approx(3.7922, abs=1e-4)
    assert s.mask_prob(torch.tensor([0.0])).item() == pytest.approx(1e-3)  # clamped at eps


def test_sample_t_and_errors():
    s = get_schedule("linear", eps=0.2)
    t = s.sample_t(1000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0.2 and t.max() <= 1.0 and abs(t.mean().item() - 0.6) < 0.02
    anti = s.sample_t(4, generator=torch.Generator().manual_seed(0), antithetic=True)
    gaps = anti.sort().values.diff()
    torch.testing.assert_close(gaps, torch.full((3,), 0.8 / 4))
    with pytest.raises(ValueError, match=r"eps must be in \[0, 1\)"):
        LinearSchedule(eps=1.0)
    with pytest.raises(KeyError, match="Did you mean: log-linear"):
        get_schedule("loglinear")
    assert get_schedule(CosineSchedule).name == "cosine"
    s = LinearSchedule()
    assert get_schedule(s) is s


def test_t_range_clips_the_sampled_times_and_keeps_the_weights():
    clipped = get_schedule("linear", eps=0.001, t_range=(0.5, 0.9))
    t = clipped.sample_t(2000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0.5 and t.max() <= 0.9 and abs(t.mean().item() - 0.7) < 0.01
    # the same uniforms as the unclipped schedule, mapped onto [0.5, 0.9]
    u = torch.rand(5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(clipped.sample_t(5, generator=torch.Generator().manual_seed(3)), 0.5 + 0.4 * u)
    anti = clipped.sample_t(4, generator=torch.Generator().manual_seed(0), antithetic=True)
    torch.testing.assert_close(anti.sort().values.diff(), torch.full((3,), 0.4 / 4))
    t = torch.tensor([0.6, 0.8])  # the weight and mask probability are the schedule's own
    torch.testing.assert_close(clipped.weight(t), LinearSchedule(eps=0.001).weight(t))
    for bad in ((0.9, 0.5), (0.0, 1.0), (0.5, 1.5)):
        with pytest.raises(ValueError, match="t_range must be"):
            LinearSchedule(eps=0.001, t_range=bad)
    from mmdiff.train.config import ConfigError, ObjectiveSection

    assert ObjectiveSection(t_range=[0.5, 1.0]).make_schedule().t_range == (0.5, 1.0)
    assert ObjectiveSection().make_schedule().t_range is None
    with pytest.raises(ConfigError, match=r"objective.t_range must be \[low, high\]"):
        ObjectiveSection(t_range=[1.0])


# ---------------------------------------------------------------------------------------------------------- loss
def expected_loss(core, canvas, schedule, t, seed, normalize="elbo"):
    """Independent: draw the same uniforms, mask, full-sequence logits, CE at masked positions, weight, normalise."""
    u = torch.rand(canvas.ids.shape, generator=torch.Generator().manual_seed(seed))
    masked = (u < schedule.mask_prob(t)[:, None]) & canvas.maskable
    noisy = torch.where(masked, MASK, canvas.ids)
    with torch.no_grad():
        logits = core(noisy).logits  # (B, L, V) everywhere
    ce = F.cross_entropy(logits.transpose(1, 2), canvas.ids, reduction="none")  # (B, L)
    per_row = (ce * masked).sum(1) * schedule.weight(t)
    n = canvas.maskable.sum(1)
    if normalize == "elbo":
        return per_row.sum() / n.sum(), per_row, masked
    return (per_row / n).mean(), per_row, masked


@pytest.mark.parametrize("name", ["linear", "log-linear", "cosine"])
@pytest.mark.parametrize("normalize", ["elbo", "sft"])
def test_loss_equals_independent_computation(name, normalize):
    core, canvas = make_core(), make_canvas()
    schedule = get_schedule(name)
    t = torch.tensor([0.3, 0.7, 0.95])
    with torch.no_grad():
        out = diffusion_loss(core, canvas, name, mask_id=MASK, t=t, normalize=normalize,
                             generator=torch.Generator().manual_seed(7))
    want, per_row, masked = expected_loss(core, canvas, schedule, t, seed=7, normalize=normalize)
    assert int(out.n_masked) == int(masked.sum()) > 0 and int(out.n_targets) == 23
    torch.testing.assert_close(out.elbo_per_row, per_row, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=1e-5)


def test_zero_model_loss_is_ln_v_exactly():
    core, canvas = make_core(zero=True), make_canvas()
    V = core.config.vocab_size
    t = torch.tensor([1.0, 0.5, 0.25])
    m = LinearSchedule(eps=0.0).mask_prob(t)
    schedule = LinearSchedule(eps=0.0)
    out = diffusion_loss(core, canvas, schedule, mask_id=MASK, t=t, generator=torch.Generator().manual_seed(3))
    u = torch.rand(3, 10, generator=torch.Generator().manual_seed(3))
    n_masked = ((u < m[:, None]) & canvas.maskable).sum(1).double()  # row 0: all 8 targets (m = 1)
    assert n_masked[0] == 8
    lnv = math.log(V)
    assert out.loss.item() == pytest.approx(lnv * (n_masked / m.double()).sum().item() / 23, rel=1e-6)
    torch.testing.assert_close(out.elbo_per_row.double(), lnv * n_masked / m.double(), atol=1e-5, rtol=1e-6)
    sft = diffusion_loss(core, canvas, schedule, mask_id=MASK, t=t, normalize="sft",
                         generator=torch.Generator().manual_seed(3))
    per_answer = n_masked / m.double() / torch.tensor([8.0, 5.0, 10.0], dtype=torch.float64)
    assert sft.loss.item() == pytest.approx(lnv * per_answer.mean().item(), rel=1e-6)
    # all targets masked with weight 1 (t = 1): the loss is ln V itself, whatever the normalisation
    ones = torch.ones(3)
    for normalize in ("elbo", "sft"):
        full = diffusion_loss(core, canvas, schedule, mask_id=MASK, t=ones, normalize=normalize)
        assert full.loss.item() == pytest.approx(lnv, rel=1e-6)
        assert int(full.n_masked) == 23


def test_sft_normalises_per_answer():
    """Rows with a short answer weigh as much as rows with a long one under sft, in proportion under elbo."""
    core, canvas = make_core(), make_canvas()
    t = torch.ones(3)  # every target masked, weight 1 (linear, eps = 0)
    s = LinearSchedule(eps=0.0)
    elbo = diffusion_loss(core, canvas, s, mask_id=MASK, t=t)
    sft = diffusion_loss(core, canvas, s, mask_id=MASK, t=t, normalize="sft")
    rows = elbo.elbo_per_row.double()
    n = torch.tensor([8.0, 5.0, 10.0], dtype=torch.float64)
    assert elbo.loss.item() == pytest.approx((rows.sum() / 23).item(), rel=1e-6)
    assert sft.loss.item() == pytest.approx((rows / n).mean().item(), rel=1e-6)
    assert abs(elbo.loss.item() - sft.loss.item()) > 1e-4


def test_complementary_masking_covers_each_target_once():
    core, canvas = make_core(zero=True), make_canvas()
    seen = []
    hook = core.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True)
    t = torch.tensor([0.3, 0.6, 0.9])
    s = LinearSchedule(eps=0.0)
    out = diffusion_loss(core, canvas, s, mask_id=MASK, t=t, complementary=True,
                         generator=torch.Generator().manual_seed(11))
    hook.remove()
    (noisy,) = seen
    assert noisy.shape == (6, 10)
    first, second = noisy[:3] == MASK, noisy[3:] == MASK
    assert not (first & second).any()
    assert torch.equal(first | second, canvas.maskable)
    assert torch.equal(noisy[:3][~first], canvas.ids[~first]) and torch.equal(noisy[3:][~second], canvas.ids[~second])
    assert int(out.n_masked) == 23 and out.elbo_per_row.shape == (6,)
    # zero model: CE = ln V; the complement copy has weight 1 / (1 - m) for the linear schedule
    lnv = math.log(core.config.vocab_size)
    n1, n2 = first.sum(1).double(), second.sum(1).double()
    m = t.double()
    rows = torch.cat([lnv * n1 / m, lnv * n2 / (1 - m)])
    torch.testing.assert_close(out.elbo_per_row.double(), rows, atol=1e-5, rtol=1e-6)
    assert out.loss.item() == pytest.approx(rows.sum().item() / 46, rel=1e-6)


def test_complementary_weight_for_cosine():
    """Complement copy weight w(t) m(t) / (1 - m(t)); at t = 1/2 for the cosine schedule it is pi/2 * tan(pi/4)."""
    core, canvas = make_core(zero=True), make_canvas()
    t = torch.full((3,), 0.5)
    out = diffusion_loss(core, canvas, "cosine", mask_id=MASK, t=t, complementary=True,
                         generator=torch.Generator().manual_seed(2))
    u = torch.rand(3, 10, generator=torch.Generator().manual_seed(2))
    first = (u < 1 - math.sqrt(2) / 2) & canvas.maskable
    second = canvas.maskable & ~first
    lnv = math.log(core.config.vocab_size)
    w1 = (math.pi / 2) * (math.sqrt(2) / 2) / (1 - math.sqrt(2) / 2)
    rows = torch.cat([lnv * w1 * first.sum(1), lnv * (math.pi / 2) * second.sum(1)]).double()
    torch.testing.assert_close(out.elbo_per_row.double(), rows, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_logits_only_at_masked_positions(tie):
    core, canvas = make_core(tie_embeddings=tie), make_canvas()
    rows = []
    hook = core.norm.register_forward_hook(lambda mod, args, output: rows.append(output.shape))
    out = diffusion_loss(core, canvas, "linear", mask_id=MASK, t=torch.tensor([0.2, 0.5, 0.8]),
                         generator=torch.Generator().manual_seed(4))
    hook.remove()
    n = int(out.n_masked)
    assert 0 < n < 23
    assert rows == [torch.Size([n, 32])]  # the head projected exactly the masked rows
    out.loss.backward()
    assert core.embed_tokens.weight.grad.abs().sum() > 0


def test_forward_process():
    ids = torch.arange(12).view(2, 6)
    maskable = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    noisy, masked = forward_process(ids, maskable, torch.tensor([1.0, 0.0]), mask_id=99)
    assert noisy.tolist() == [[0, 99, 99, 99, 99, 99], [6, 7, 8, 9, 10, 11]]
    assert torch.equal(masked, maskable & torch.tensor([[True], [False]]))
    big = torch.zeros(4, 5000, dtype=torch.long)
    _, masked = forward_process(big, torch.ones_like(big, dtype=torch.bool), torch.tensor([0.1, 0.4, 0.7, 0.95]),
                                mask_id=1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(masked.float().mean(1), torch.tensor([0.1, 0.4, 0.7, 0.95]), atol=0.02, rtol=0)


def test_vocab_range_targets():
    """A modality head: logits over [start, stop) only, targets shifted by start."""
    core = make_core()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(10, 20, (2, 6), generator=g)
    canvas = Canvas(ids=ids, maskable=torch.ones(2, 6, dtype=torch.bool), vocab_range=(10, 20))
    s = LinearSchedule(eps=0.0)
    out = diffusion_loss(core, canvas, s, mask_id=MASK, t=torch.ones(2))
    with torch.no_grad():
        logits = core(torch.full_like(ids, MASK)).logits[..., 10:20]
    want = F.cross_entropy(logits.reshape(-1, 10), (ids - 10).reshape(-1))
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_loss_errors():
    core, canvas = make_core(), make_canvas()
    with pytest.raises(ValueError, match="normalize must be 'elbo' or 'sft', got 'mean'"):
        diffusion_loss(core, canvas, mask_id=MASK, normalize="mean")
    with pytest.raises(ValueError, match=r"t must have shape \(batch,\) = \(3,\), got \(2,\)"):
        diffusion_loss(core, canvas, mask_id=MASK, t=torch.ones(2))


# ------------------------------------------------------------------------------------ AR-to-diffusion annealing
@pytest.mark.parametrize("ratio", [0.0, 0.4, 1.0])
def test_annealed_attention_loss_equals_a_run_under_the_drawn_mask(ratio):
    """DiffuLLaMA's annealing: the loss is the plain loss of the core run under causal attention plus each later key
    with probability `ratio`, the pattern drawn from the loss's generator after the masks."""
    core, canvas = make_core(), make_canvas()
    t = torch.tensor([0.3, 0.7, 0.95])
    schedule = get_schedule("linear")
    with torch.no_grad():
        out = diffusion_loss(core, canvas, "linear", mask_id=MASK, t=t, generator=torch.Generator().manual_seed(7),
                             attention_anneal=ratio)
        g = torch.Generator().manual_seed(7)
        u = torch.rand(canvas.ids.shape, generator=g)
        allowed = torch.ones(10, 10, dtype=torch.bool).tril()
        if ratio:
            allowed |= torch.rand(10, 10, generator=g) < ratio
        masked = (u < schedule.mask_prob(t)[:, None]) & canvas.maskable
        logits = core(torch.where(masked, MASK, canvas.ids), attention_mask=allowed[None, None].expand(3, 1, 10, 10)
                      ).logits
    ce = F.cross_entropy(logits.transpose(1, 2), canvas.ids, reduction="none")
    want = ((ce * masked).sum(1) * schedule.weight(t)).sum() / 23
    torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=1e-5)
    if ratio == 1.0:  # the end of the annealing is plain full attention
        plain = diffusion_loss(core, canvas, "linear", mask_id=MASK, t=t, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(out.loss, plain.loss, atol=1e-5, rtol=1e-5)


def test_annealed_attention_pattern_and_schedule():
    from mmdiff.diffusion.objective import annealed_attention
    from mmdiff.train import ConfigError
    from mmdiff.train.config import ObjectiveSection

    g = torch.Generator().manual_seed(0)
    pattern = annealed_attention(200, 0.3, generator=g)
    lower = torch.ones(200, 200, dtype=torch.bool).tril()
    assert bool(pattern[lower].all())  # the causal part always
    upper = pattern[~lower]
    assert abs(upper.float().mean().item() - 0.3) < 0.01  # each later key with probability 0.3
    section = ObjectiveSection(attention_anneal_steps=4)
    assert [section.attention_anneal(s) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, None, None]
    assert ObjectiveSection().attention_anneal(0) is None
    with pytest.raises(ConfigError, match="attention_anneal_steps must be 0"):
        ObjectiveSection(attention_anneal_steps=-1)
    with pytest.raises(ConfigError, match="block diffusion keeps its block-causal attention"):
        ObjectiveSection(attention_anneal_steps=5, block_diffusion=True)
    block = make_core(attention="block_causal", block_size=2)
    with pytest.raises(ValueError, match="adapts a core with full attention"):
        diffusion_loss(block, make_canvas(), "linear", mask_id=MASK, attention_anneal=0.5)
