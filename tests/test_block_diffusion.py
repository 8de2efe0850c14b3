"""Block diffusion end to end: the block-causal core against a hand-built mask and an independent float64 forward,
BD3-LM's vectorised training loss against block-by-block forward passes with an explicit clean prefix, and the
block-diffusion sampler: its exact block cache against a full recompute, a batch against one row at a time, forward
passes and windows counted by hand, D2F pipelining against sequential decoding, EOS early stop, and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import random_core
from test_core import ref_logits
from torch import nn

from mmdiff import Canvas, CoreConfig, DiffusionModel, VocabLayout, diffusion_loss, get_schedule
from mmdiff.core.masks import block_causal_mask, block_diffusion_mask, block_index
from mmdiff.core.model import KVCache
from mmdiff.diffusion import forward_process
from mmdiff.registry import DATASETS, SAMPLERS
from mmdiff.sampling import BlockDiffusionSampler, LLaDASampler
from mmdiff.train.config import ConfigError, TrainConfig

VOCAB = VocabLayout.build(text_size=12, specials=("mask", "eos", "pad"))
MASK, EOS = VOCAB.mask_id, VOCAB.eos_id


def block_core(seed: int = 0, block_size: int = 4, **kw) -> nn.Module:
    return random_core(VOCAB, seed, attention="block_causal", block_size=block_size, **kw)


class WindowCore(nn.Module):
    """A core that records the canvas columns [lo, hi) of every forward pass: `windows` those of the batch's first
    row, `row_windows` those of every row in the pass (the rows still decoding, in batch order)."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core, self.windows = core, []

    @property
    def config(self) -> CoreConfig:
        return self.core.config

    def check_ids(self, ids: torch.Tensor) -> None:
        self.core.check_ids(ids)

    def forward(self, x: torch.Tensor, position_ids=None, **kw):
        rows = [(int(p), int(p) + x.shape[1]) for p in position_ids[:, 0]]
        self.windows.append(rows[0])
        self.row_windows = getattr(self, "row_windows", []) + [rows]
        self.asked = getattr(self, "asked", []) + [kw["logits_at"].shape[1]]
        return self.core(x, position_ids=position_ids, **kw)


def decode(core, ids, attention=None, **options):
    inputs = {k: options.pop(k) for k in BlockDiffusionSampler.inputs if k in options}
    return BlockDiffusionSampler(**options)(core, ids, attention, mask_id=MASK, eos_id=EOS, return_history=True,
                                            **inputs)


# -------------------------------------------------------------------------------------------- block-causal core
def test_block_causal_core_equals_hand_built_mask():
    core = block_core(block_size=3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 12, (2, 10), generator=g)
    padding = torch.ones(2, 10, dtype=torch.bool)
    padding[1, 8:] = False  # a right-padded row
    allowed = torch.zeros(2, 1, 10, 10, dtype=torch.bool)
    for b in range(2):
        for q in range(10):
            for k in range(10):
                allowed[b, 0, q, k] = q == k or (k // 3 <= q // 3 and bool(padding[b, k]))
    got = core(ids, attention_mask=padding).logits
    torch.testing.assert_close(got.double(), ref_logits(core, ids, allowed=allowed), atol=2e-5, rtol=1e-5)
    # the same weights in a full-attention core given the hand-built mask: the same logits
    full = random_core(VOCAB, 0)
    full.load_state_dict(core.state_dict())
    torch.testing.assert_close(full(ids, attention_mask=allowed).logits, got, atol=1e-6, rtol=1e-6)
    # earlier blocks are blind to later ones
    later = ids.clone()
    later[:, 6:] = MASK
    torch.testing.assert_close(core(later, attention_mask=padding).logits[:, :6], got[:, :6], atol=1e-6, rtol=1e-6)


def test_block_masks_equal_hand_built():
    assert block_index(7, 2, prefix_len=torch.tensor([0, 3])).tolist() == [[1, 1, 2, 2, 3, 3, 4],
                                                                            [0, 0, 0, 1, 1, 2, 2]]
    L, size = 5, 2
    prefix, padding = torch.tensor([0, 1]), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got = block_diffusion_mask(L, size, prefix, padding=padding)
    for b in range(2):
        blk = [0 if i < prefix[b] else 1 + (i - int(prefix[b])) // size for i in range(L)]
        for q in range(2 * L):
            for k in range(2 * L):
                qb, kb = blk[q % L], blk[k % L]
                if q < L:  # noised query: its own noised block, clean blocks before it
                    want = (k < L and kb == qb) or (k >= L and kb < qb)
                else:  # clean query: clean blocks up to its own
                    want = k >= L and kb <= qb
                want = (want and bool(padding[b, k % L])) or q == k
                assert bool(got[b, 0, q, k]) == want, (b, q, k)


def test_cached_window_equals_full_recompute():
    core = block_core(block_size=4)
    ids = torch.randint(0, 12, (2, 16), generator=torch.Generator().manual_seed(1))
    cache = core(ids, use_cache=True).cache
    changed = ids.clone()
    changed[:, 8:] = MASK  # blocks 2 and 3 change; their stale keys stay in the cache
    window = core(changed[:, 8:12], cache=cache, cache_window=(8, 12)).logits
    torch.testing.assert_close(window, core(changed).logits[:, 8:12], atol=1e-5, rtol=1e-5)


def test_per_row_cache_windows_equal_full_recompute():
    """Windows at different columns in different rows (block diffusion's rows drift apart), written into the cache
    at per-row columns: each row's logits equal a full recompute of its canvas. Column 16, past the canvas, takes the
    columns a shorter window does not need (seen only by their own queries)."""
    core = block_core(block_size=4, max_seq_len=16)
    ids = torch.randint(0, 12, (2, 16), generator=torch.Generator().manual_seed(1))
    cache = core(ids, use_cache=True).cache
    cache = KVCache([F.pad(k, (0, 0, 0, 1)) for k in cache.keys], [F.pad(v, (0, 0, 0, 1)) for v in cache.values])
    changed = ids.clone()
    changed[0, 4:] = MASK  # row 0 decodes blocks 1 and 2, row 1 its last block
    changed[1, 12:] = MASK
    columns = torch.tensor([[4, 5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 16, 16, 16]])
    k = torch.arange(17)
    mask = ((k[None, None] // 4 <= columns[:, :, None] // 4) & (k < 16)) | (k[None, None] == columns[:, :, None])
    window = changed.gather(1, columns.clamp(max=15))
    out = core(window, cache=cache, cache_window=columns, attention_mask=mask[:, None],
               position_ids=columns.clamp(max=15)).logits
    full = core(changed).logits
    torch.testing.assert_close(out[0], full[0, 4:12], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, :4], full[1, 12:16], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"per-row cache_window must be a \(2, 8\) long tensor"):
        core(window, cache=cache, cache_window=columns[:, :4], attention_mask=mask[:, None])
    with pytest.raises(ValueError, match=r"needs attention_mask of shape \(2, 1\|H, 8, 17\)"):
        core(window, cache=cache, cache_window=columns)
    with pytest.raises(ValueError, match="position_ids reach 16 >= max_seq_len=16"):
        core(window, cache=cache, cache_window=columns, attention_mask=mask[:, None])


def test_core_config_errors():
    with pytest.raises(ValueError, match="needs block_size"):
        CoreConfig(vocab=VOCAB, attention="block_causal")
    with pytest.raises(ValueError, match="only used with attention='block_causal'"):
        CoreConfig(vocab=VOCAB, block_size=4)
    with pytest.raises(ValueError, match="logits_shift='none'"):
        CoreConfig(vocab=VOCAB, attention="block_causal", block_size=4, logits_shift="previous")
    with pytest.raises(ValueError, match="attention must be one of"):
        CoreConfig(vocab=VOCAB, attention="causal")
    config = CoreConfig(vocab=VOCAB, attention="block_causal", block_size=4)
    assert CoreConfig.from_dict(config.to_dict()) == config


# ---------------------------------------------------------------------------------------------------- training
def block_by_block_loss(core, canvas, t, seed, normalize="elbo"):
    """The loss from one forward pass per row and block: [clean blocks before b ; noised block b]."""
    schedule = get_schedule("linear")
    B, L = canvas.ids.shape
    noisy, masked = forward_process(canvas.ids, canvas.maskable, schedule.mask_prob(t), MASK,
                                    generator=torch.Generator().manual_seed(seed))
    weight = schedule.weight(t)
    prefix = canvas.prefix_len if canvas.prefix_len is not None else torch.zeros(B, dtype=torch.long)
    padding = canvas.attention_mask if canvas.attention_mask is not None else torch.ones(B, L, dtype=torch.bool)
    elbo = torch.zeros(B)
    size = core.config.block_size
    for r in range(B):
        blocks = block_index(L, size, int(prefix[r]))[0]
        for b in blocks.unique().tolist():
            cols = (blocks == b).nonzero().squeeze(1)
            lo, hi = int(cols[0]), int(cols[-1]) + 1
            x = torch.cat([canvas.ids[r, :lo], noisy[r, lo:hi]])[None]
            mask = block_causal_mask(hi, size, int(prefix[r])) & padding[r, :hi][None, None, None]
            mask |= torch.eye(hi, dtype=torch.bool)
            logits = core(x, attention_mask=mask).logits[0, lo:hi]
            here = masked[r, lo:hi]
            ce = F.cross_entropy(logits[here].float(), canvas.ids[r, lo:hi][here], reduction="none")
            elbo[r] += (ce * weight[r]).sum()
    n_targets = canvas.maskable.sum(1)
    loss = elbo.sum() / n_targets.sum() if normalize == "elbo" else (elbo / n_targets).mean()
    return loss, elbo


@pytest.mark.parametrize("with_prompt", [False, True])
def test_vectorised_loss_equals_block_by_block(with_prompt):
    core = block_core(block_size=3)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 12, (3, 11), generator=g)
    padding = torch.ones(3, 11, dtype=torch.bool)
    padding[1, 9:] = False
    padding[2, 7:] = False  # right-padded rows, as the text collate makes them
    maskable = padding.clone()
    prefix = None
    if with_prompt:  # SFT: the prompt is block 0 and never a target
        prefix = torch.tensor([2, 4, 3])
        maskable &= torch.arange(11)[None] >= prefix[:, None]
    canvas = Canvas(ids=ids, maskable=maskable, attention_mask=padding, prefix_len=prefix)
    t = torch.tensor([0.3, 0.6, 0.9])
    for normalize in ("elbo", "sft"):
        out = diffusion_loss(core, canvas, "linear", mask_id=MASK, t=t, normalize=normalize,
                             generator=torch.Generator().manual_seed(5))
        loss, elbo = block_by_block_loss(core, canvas, t, seed=5, normalize=normalize)
        assert int(out.n_masked) > 5
        torch.testing.assert_close(out.elbo_per_row, elbo, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=1e-5)
    out.loss.backward()  # one pass, gradients through both copies
    assert core.embed_tokens.weight.grad.abs().sum() > 0


def test_vectorised_loss_accepts_a_canvas_as_long_as_max_seq_len():
    core = block_core(block_size=4)  # max_seq_len 64: the [x_t ; x_0] pass is 128 positions
    canvas = Canvas(ids=torch.randint(0, 12, (2, 64)), maskable=torch.ones(2, 64, dtype=torch.bool))
    out = diffusion_loss(core, canvas, "linear", mask_id=MASK, t=torch.ones(2))
    assert int(out.n_masked) == 128 and torch.isfinite(out.loss)


def test_recipe_block_diffusion_option():
    data = {"name": "demo", "data": {"name": "running-sums"}}
    block = {"core": {"attention": "block_causal", "block_size": 8}}
    cfg = TrainConfig.from_dict({**data, "model": block, "objective": {"block_diffusion": True}})
    assert TrainConfig.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(ConfigError, match="set model.core.attention: block_causal and model.core.block_size"):
        TrainConfig.from_dict({**data, "objective": {"block_diffusion": True}})
    with pytest.raises(ConfigError, match="set objective.block_diffusion: true"):
        TrainConfig.from_dict({**data, "model": block})
    with pytest.raises(ConfigError, match="block_size"):
        TrainConfig.from_dict({**data, "model": {"core": {"attention": "block_causal"}},
                               "objective": {"block_diffusion": True}})


# ----------------------------------------------------------------------------------------------------- sampler
PROMPTS = torch.tensor([[1, 2, 3, 4, 5], [0, 0, 6, 7, 8], [0, 0, 0, 9, 1]])
PROMPT_MASK = PROMPTS != 0
PROMPT_MASK[0] = True
INFILL = torch.tensor([[1, MASK, 2, MASK, 3, MASK, 4, MASK, 5, MASK, 6, MASK],
                       [0, 0, 0, 0, 0, 6, MASK, 7, MASK, 8, MASK, MASK],
                       [0, 0, 0, 2, MASK, MASK, 3, MASK, 9, MASK, 1, MASK]])
INFILL_MASK = torch.ones_like(INFILL, dtype=torch.bool)
INFILL_MASK[1, :5] = False
INFILL_MASK[2, :3] = False
LAYOUTS = {"answer": (PROMPTS, PROMPT_MASK, {"gen_length": 8}),
           "infill": (INFILL, INFILL_MASK, {"gen_length": 0, "infill": True})}
SETTINGS = [{"threshold": 1.0}, {"threshold": 0.25}, {"threshold": 0.25, "pipeline": 0.5, "pipeline_threshold": 0.15},
            {"threshold": 0.3, "pipeline": 0.25, "pipeline_threshold": 0.1, "activate_at": 0.5},
            {"threshold": 0.5, "pipeline": 0.25, "pipeline_threshold": 0.05, "window_blocks": 2}]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_block_cache_logits_equal_full_recompute(layout, setting):
    ids, attention, options = LAYOUTS[layout]
    core = block_core()
    seen = {True: [], False: []}
    outs = {}
    for cache in (True, False):
        def record(logits, x, lo, hi, cache=cache):
            seen[cache].append(logits.clone())
            return logits
        outs[cache] = decode(core, ids, attention, cache=cache, **options, **SETTINGS[setting],
                             logits_processor=record)
    assert len(seen[True]) == len(seen[False]) == outs[True].nfe
    for a, b in zip(seen[True], seen[False], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(outs[True].sequences, outs[False].sequences)
    assert torch.equal(outs[True].commit_step, outs[False].commit_step)
    assert not bool((outs[True].sequences == MASK).any())


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("setting", [1, 2, 3])
def test_batch_equals_one_by_one(layout, setting):
    ids, attention, options = LAYOUTS[layout]
    core = block_core(seed=2)
    batch = decode(core, ids, attention, **options, **SETTINGS[setting])
    for r in range(ids.shape[0]):
        real = attention[r]
        alone = decode(core, ids[r : r + 1, real], None, **options, **SETTINGS[setting])
        cut = ids.shape[1] - int(real.sum())  # the row's left padding
        assert torch.equal(batch.sequences[r, cut:], alone.sequences[0, : ids.shape[1] - cut + options["gen_length"]]
                           if layout == "infill" else alone.sequences[0]), r
        assert torch.equal(batch.commit_step[r, cut:] >= 0, alone.commit_step[0] >= 0)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_logits_at_masked_columns_only_decode_like_the_whole_window(layout, setting):
    """Greedy steps ask logits only where a token can be committed (the core's last layer runs only there): the same
    tokens, commit steps and passes as a run forced onto every column of the window (an identity processor)."""
    ids, attention, options = LAYOUTS[layout]
    narrow, whole = WindowCore(block_core(seed=3)), WindowCore(block_core(seed=3))
    fast = decode(narrow, ids, attention, **options, **SETTINGS[setting])
    full = decode(whole, ids, attention, **options, **SETTINGS[setting], logits_processor=lambda logits, *a: logits)
    assert torch.equal(fast.sequences, full.sequences) and torch.equal(fast.commit_step, full.commit_step)
    assert fast.nfe == full.nfe
    assert sum(narrow.asked) < sum(whole.asked)  # given tokens and committed ones are never asked
    assert all(a <= w for a, w in zip(narrow.asked, whole.asked, strict=True))
    # each row runs its own window (from its first uncached block), a processor gets the same columns in every row
    assert all(len({w for w in rows}) == 1 for rows in whole.row_windows)
    assert column_passes(narrow) <= column_passes(whole)


def column_passes(core: WindowCore) -> int:
    """Window columns run, summed over the rows and passes of a recorded decoding."""
    return sum(hi - lo for rows in core.row_windows for lo, hi in rows)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_every_row_runs_the_windows_it_runs_alone(layout, setting):
    """Rows drift apart (one finishes a block while another still decodes its own): in a batch each row's window
    starts where it starts when the row is decoded alone, pass by pass (the cache holds each row's own finished
    blocks), and the batch runs fewer columns than windows starting at the batch's first uncached block."""
    ids, attention, options = LAYOUTS[layout]
    batch_core = WindowCore(block_core(seed=5))
    batch = decode(batch_core, ids, attention, **options, **SETTINGS[setting])
    alone_starts, passes = [], []
    for r in range(ids.shape[0]):
        real = attention[r]
        core = WindowCore(block_core(seed=5))
        alone = decode(core, ids[r : r + 1, real], None, **options, **SETTINGS[setting])
        cut = ids.shape[1] - int(real.sum())  # the row's left padding: its answer columns move by it
        shift = cut if layout == "answer" else 0
        alone_starts.append([lo + shift if lo > 0 else lo for lo, _ in core.windows])
        passes.append(alone.nfe)
    assert batch.nfe == max(passes)
    for t, rows in enumerate(batch_core.row_windows):  # pass t runs the rows that are still decoding
        live = [r for r in range(ids.shape[0]) if passes[r] > t]
        assert [lo for lo, _ in rows] == [alone_starts[r][t] for r in live], t
    uniform = WindowCore(block_core(seed=5))
    decode(uniform, ids, attention, **options, **SETTINGS[setting], logits_processor=lambda logits, *a: logits)
    assert column_passes(batch_core) <= column_passes(uniform)


def test_forward_passes_and_windows_by_hand():
    """Prompt of 3 (block 0), two answer blocks of 4 at columns [3, 7) and [7, 11)."""
    core = WindowCore(block_core())
    prompt = torch.tensor([[1, 2, 3]])

    def run(**options):
        core.windows.clear()
        out = decode(core, prompt, gen_length=8, **options)
        return out.nfe, list(core.windows)

    # one commit per step: the prompt runs with block 1's first step, block 1 once more, clean, with block 2's first
    assert run(threshold=1.0) == (8, [(0, 7), (3, 7), (3, 7), (3, 7), (3, 11), (7, 11), (7, 11), (7, 11)])
    # every position above 0: a block per step
    assert run(threshold=0.0) == (2, [(0, 7), (3, 11)])
    # pipelined: block 2 starts when block 1 is a quarter decoded and commits everything at once (threshold 0),
    # block 1 keeps one commit per step; block 2 waits for block 1 before its clean pass, which nothing needs
    assert run(threshold=1.0, pipeline=0.25, pipeline_threshold=0.0) == (4, [(0, 7), (3, 11), (3, 7), (3, 7)])
    # block 2 starts at a quarter (nothing commits above 1), decodes one per step once block 1 is half done:
    # block 1 done after step 4, block 2 (one commit at steps 3, 4, 5, 6) after step 6
    assert run(threshold=1.0, pipeline=0.25, pipeline_threshold=1.0, activate_at=0.5)[0] == 6
    # a sequential decoding of the same
    assert run(threshold=1.0, pipeline=1.0, pipeline_threshold=1.0) == run(threshold=1.0)


def test_window_blocks_caps_the_blocks_a_row_runs():
    """Pipelined, a row's window holds its finished blocks not cached yet and every started block; with
    `window_blocks=2` a block starts early only while the window stays within 2 blocks (8 columns here), so a pass
    runs more only right after a pass that finished two blocks (both clean passes run, with the open block), while
    uncapped passes do; the first open block always runs."""
    ids = torch.tensor([[1, MASK, 2, MASK, 3, MASK, 4, MASK, 5, MASK, 6, MASK, 7, MASK, 8, MASK]])
    options = dict(gen_length=0, infill=True, threshold=1.0, pipeline=0.25, pipeline_threshold=0.2)
    widths, wide = {}, {}
    for cap in (None, 2):
        core = WindowCore(block_core(seed=7))
        out = decode(core, ids, **options, window_blocks=cap)
        assert not bool((out.sequences == MASK).any())
        widths[cap] = [hi - lo for lo, hi in core.windows]
        finished_at = out.commit_step[0].view(4, 4).amax(1).tolist()  # the pass that finished each block
        twice = {p + 1 for p in finished_at if finished_at.count(p) > 1}  # passes after two blocks finished
        wide[cap] = [p for p, w in enumerate(widths[cap]) if w > 8 and p not in twice]
    assert wide[2] == [] and wide[None] == [2, 3] and widths[2] == [4, 8, 8, 8, 8]
    sequential = decode(block_core(seed=7), ids, gen_length=0, infill=True, threshold=1.0)
    assert len(widths[2]) < sequential.nfe  # still pipelined: fewer passes than one block after the other


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("trigger", [0.25, 0.5, 0.75])
def test_pipelined_with_next_threshold_one_equals_sequential(layout, trigger):
    ids, attention, options = LAYOUTS[layout]
    core = block_core(seed=4)
    nfe = {}
    for threshold in (1.0, 0.2):
        seq = decode(core, ids, attention, threshold=threshold, **options)
        nfe[threshold] = seq.nfe
        pipe = decode(core, ids, attention, threshold=threshold, pipeline=trigger, pipeline_threshold=1.0, **options)
        assert torch.equal(seq.sequences, pipe.sequences)
        assert torch.equal(seq.commit_step, pipe.commit_step)
        assert seq.nfe == pipe.nfe
    # committing early in the next block saves steps (the infill blocks hold two masks: 0.75 waits for both)
    faster = decode(core, ids, attention, threshold=1.0, pipeline=trigger, pipeline_threshold=0.05, **options)
    assert faster.nfe < nfe[1.0] if trigger <= 0.5 else faster.nfe <= nfe[1.0]


def test_eos_early_stop_finishes_rows_and_skips_them():
    core = block_core(seed=1)
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])

    def eos_first(logits, x, lo, hi):  # rows whose prompt starts with 1 answer EOS at their first answer column
        if lo <= 3 < hi:
            logits[x[:, 0] == 1, 3 - lo, EOS] = 100.0
        return logits

    out = decode(core, prompts, gen_length=8, threshold=1.0, eos_early_stop=True, logits_processor=eos_first)
    assert out.sequences[0, 3:].tolist() == [EOS] * 8
    assert out.commit_step[0, 3:].tolist() == [0] * 8  # committed, then filled, at the first step
    alone = decode(core, prompts[1:], gen_length=8, threshold=1.0, eos_early_stop=True, logits_processor=eos_first)
    assert torch.equal(out.sequences[1], alone.sequences[0]) and out.nfe == alone.nfe
    single = decode(core, prompts[:1], gen_length=8, threshold=1.0, eos_early_stop=True, logits_processor=eos_first)
    assert single.nfe == 1
    without = decode(core, prompts[:1], gen_length=8, threshold=1.0, logits_processor=eos_first)
    assert without.nfe == 8


def test_sampler_errors():
    core = block_core()
    with pytest.raises(ValueError, match=r"gen_length=6 is not a multiple of the core's block_size=4.*gen_length=8"):
        decode(core, PROMPTS, gen_length=6)
    with pytest.raises(ValueError, match="needs a block-causal core"):
        decode(random_core(VOCAB), PROMPTS, gen_length=8)
    for name in ("llada", "dream", "llada-reference", "discrete-diffusion-vla"):
        with pytest.raises(ValueError, match="decode it with sampler='block-diffusion'"):
            SAMPLERS.get(name)(gen_length=8, steps=8)(core, PROMPTS, mask_id=MASK)
    right_padded = torch.tensor([[1, MASK, 2, MASK, 0, 0]])
    with pytest.raises(ValueError, match="left-padded"):
        decode(core, right_padded, right_padded != 0, gen_length=0, infill=True)
    with pytest.raises(ValueError, match="pass infill=True"):
        decode(core, INFILL, INFILL_MASK, gen_length=0)
    with pytest.raises(ValueError, match="either an answer after a mask-free prompt or masks in place"):
        decode(core, INFILL, INFILL_MASK, gen_length=8, infill=True)
    with pytest.raises(ValueError, match="nothing to generate"):
        decode(core, PROMPTS, gen_length=0, infill=True)
    with pytest.raises(ValueError, match="act only with pipeline"):
        BlockDiffusionSampler(pipeline_threshold=0.5)
    with pytest.raises(ValueError, match="act only with pipeline"):
        BlockDiffusionSampler(window_blocks=2)
    with pytest.raises(ValueError, match=r"window_blocks must be an integer >= 2 \(the open block and one more\)"):
        BlockDiffusionSampler(pipeline=0.5, window_blocks=1)
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0 and <= 1"):
        BlockDiffusionSampler(threshold=1.5)
    with pytest.raises(TypeError, match="does not take \\['steps'\\]"):
        BlockDiffusionSampler(steps=8)


def test_diffusion_model_generates_and_round_trips(make_tiny_model, tmp_path):
    model = make_tiny_model(attention="block_causal", block_size=4, sampler={"sampler": "block-diffusion"})
    ids = torch.tensor([[5, 6, 7]])
    out = model.generate(ids, gen_length=8, threshold=0.5)
    assert out.shape == (1, 11)
    model.save_pretrained(tmp_path / "m")
    loaded = DiffusionModel.from_pretrained(tmp_path / "m")
    assert loaded.config.core.attention == "block_causal" and loaded.config.core.block_size == 4
    assert torch.equal(loaded.generate(ids, gen_length=8, threshold=0.5), out)
    with pytest.raises(ValueError, match="decode it with sampler='block-diffusion'"):
        model.generate(ids, sampler=LLaDASampler(gen_length=8, steps=8, block_length=4))


# --------------------------------------------------------------------------------------------------- it learns
@DATASETS.register("test-block-copy", override=True)
class BlockCopySource:
    """Copy task: 8 random digits, then the same digits as the targets (no prompt block: the core's own blocks)."""

    task = "text"
    specials = ("mask", "eos", "pad", "bos")

    def __init__(self, train_size: int = 4096, val_size: int = 64) -> None:
        self.train_size, self.val_size = train_size, val_size

    def tokenizer(self):
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel({str(d): d for d in range(10)}, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=tok)

    def digits(self, split: str) -> torch.Tensor:
        size, seed = (self.train_size, 1) if split == "train" else (self.val_size, 2)
        return torch.randint(0, 10, (size, 8), generator=torch.Generator().manual_seed(seed))

    def dataset(self, split: str, vocab: VocabLayout) -> list[dict[str, torch.Tensor]]:
        maskable = torch.arange(16) >= 8
        return [{"ids": torch.cat([row, row]), "maskable": maskable} for row in self.digits(split)]

    @torch.no_grad()
    def evaluate(self, model: DiffusionModel, split: str = "val", limit: int | None = None) -> dict[str, float]:
        digits = self.digits(split)[:limit]
        out = model.generate(digits, gen_length=8)  # the checkpoint's sampler: block-diffusion
        right = out[:, 8:].cpu() == digits
        return {"exact_match": right.all(1).float().mean().item(), "token_accuracy": right.float().mean().item()}


def test_tiny_block_diffusion_model_learns_to_copy(tmp_path):
    from mmdiff.train import train

    cfg = TrainConfig.from_dict({
        "name": "block-copy", "seed": 0,
        "model": {"core": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 16,
                           "attention": "block_causal", "block_size": 4}},
        "data": {"name": "test-block-copy"},
        "objective": {"normalize": "sft", "block_diffusion": True},
        "optim": {"lr": 1e-2, "warmup_steps": 10},
        "train": {"steps": 60, "batch_size": 32, "log_every": 10, "eval_every": 0, "eval_batches": 2,
                  "eval_metrics_limit": 64, "save_every": 0, "out_dir": str(tmp_path / "run")},
        "sampler": {"sampler": "block-diffusion", "gen_length": 8, "options": {"threshold": 0.9}},
    })
    model = DiffusionModel.from_pretrained(train(cfg))
    assert model.config.core.attention == "block_causal"
    result = BlockCopySource().evaluate(model, "val", 64)
    # chance is 10 % per token and 1e-8 per answer
    assert result["token_accuracy"] >= 0.9 and result["exact_match"] >= 0.5, result
    out = model.generate(BlockCopySource().digits("val")[:16], gen_length=8, return_history=True)
    assert out.nfe <= 8  # two blocks of four, several digits committed per step


def test_log_likelihood_of_a_block_core_scores_blocks_from_clean_prefixes():
    from mmdiff.diffusion import elbo_log_likelihood, stratified_masks

    core = block_core(block_size=2)
    prompt, answer = [1, 2, 3], [4, 5, 6, 7, 8]
    got = elbo_log_likelihood(core, prompt, answer, mask_id=MASK, mc_samples=4, batch_size=4,
                              generator=torch.Generator().manual_seed(0))
    masks, counts = stratified_masks(4, 5, torch.Generator().manual_seed(0))
    seq = torch.tensor(prompt + answer)
    total = 0.0
    for r in range(4):  # one forward per answer block: clean prompt and blocks before it, the noised block
        for lo in (3, 5, 7):
            hi = min(lo + 2, 8)
            here = masks[r, lo - 3 : hi - 3]
            x = torch.cat([seq[:lo], seq[lo:hi].masked_fill(here, MASK)])[None]
            with torch.no_grad():
                logits = core(x, attention_mask=block_causal_mask(hi, 2, 3)).logits[0, lo:hi][here]
            total += float(F.cross_entropy(logits, seq[lo:hi][here], reduction="sum")) / (int(counts[r]) / 5)
    assert got == pytest.approx(-total / 4, rel=1e-5)
