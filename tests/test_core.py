"""The core transformer against an independent float64 re-computation from its explicit weights, plus logits
selection, soft tokens, padding, attention kinds, gradient checkpointing, bf16 autocast and input errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import random_core

from mmdiff.core import CoreConfig, MaskedDiffusionTransformer, block_causal_mask, build_attention_mask, prefix_mask
from mmdiff.vocab import VocabLayout

V_TEXT = 40  # layout size 44 with the four default specials


def make_core(seed: int = 0, **kw) -> MaskedDiffusionTransformer:
    """A tiny random core with O(1) weights (see `helpers.random_core`)."""
    return random_core(VocabLayout.build(text_size=V_TEXT), seed, **kw)


# ------------------------------------------------------------------------------- independent reference (float64)
def ref_rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def ref_rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """x (B, H, L, D), pos (B, L): rotate-half RoPE, angle_i = pos * theta^(-2i/D)."""
    D = x.shape[-1]
    i = torch.arange(D // 2, dtype=torch.float64)
    ang = pos[:, None, :, None].double() * theta ** (-2 * i / D)  # (B, 1, L, D/2)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], dim=-1)


def ref_logits(core: MaskedDiffusionTransformer, ids: torch.Tensor, pos=None, allowed=None, embeds=None):
    """Plain-PyTorch forward: embedding, pre-norm blocks (GQA by repeat_interleave, SwiGLU), final norm, head."""
    cfg = core.config
    W = {k: v.double() for k, v in core.state_dict().items()}
    B, L = ids.shape
    H, Hkv, D, eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.norm_eps
    pos = torch.arange(L)[None].expand(B, L) if pos is None else pos
    x = W["embed_tokens.weight"][ids] if embeds is None else embeds.double()
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        h = ref_rmsnorm(x, W[p + "attn_norm.weight"], eps)
        proj = {}
        for name, heads in (("q", H), ("k", Hkv), ("v", Hkv)):
            y = h @ W[p + f"attn.{name}_proj.weight"].T
            if cfg.qkv_bias:
                y = y + W[p + f"attn.{name}_proj.bias"]
            proj[name] = y.view(B, L, heads, D).permute(0, 2, 1, 3)  # (B, heads, L, D)
        q, k, v = proj["q"], proj["k"], proj["v"]
        if cfg.qk_norm:
            q = ref_rmsnorm(q, W[p + "attn.q_norm.weight"], eps)
            k = ref_rmsnorm(k, W[p + "attn.k_norm.weight"], eps)
        q, k = ref_rope(q, pos, cfg.rope_theta), ref_rope(k, pos, cfg.rope_theta)
        k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)  # (B, H, L, L)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, -math.inf)
        att = scores.softmax(-1) @ v  # (B, H, L, D)
        x = x + att.permute(0, 2, 1, 3).reshape(B, L, H * D) @ W[p + "attn.o_proj.weight"].T
        h = ref_rmsnorm(x, W[p + "mlp_norm.weight"], eps)
        gate, up = h @ W[p + "mlp.gate_proj.weight"].T, h @ W[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ W[p + "mlp.down_proj.weight"].T
    h = ref_rmsnorm(x, W["norm.weight"], eps)
    head = W["embed_tokens.weight"] if cfg.tie_embeddings else W["lm_head.weight"]
    return h @ head.T  # (B, L, V)


def rand_ids(B: int, L: int, seed: int = 1, high: int = V_TEXT + 4) -> torch.Tensor:
    return torch.randint(0, high, (B, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_kv_heads=2, qkv_bias=True, qk_norm=True, tie_embeddings=False),
        dict(n_kv_heads=1, qkv_bias=False, qk_norm=False, tie_embeddings=True),
        dict(n_heads=2, n_kv_heads=2, qkv_bias=True, qk_norm=False, tie_embeddings=True, rope_theta=500.0),
        dict(n_kv_heads=4, qkv_bias=False, qk_norm=True, tie_embeddings=False, vocab_size=48, norm_eps=1e-3),
    ],
)
def test_logits_match_reference(kw):
    core = make_core(**kw)
    ids = rand_ids(3, 11)
    got = core(ids).logits
    want = ref_logits(core, ids)
    assert got.shape == (3, 11, core.config.vocab_size)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)
    assert ("lm_head.weight" in core.state_dict()) != kw["tie_embeddings"]


def test_logits_shift_previous():
    plain = make_core(n_kv_heads=2)
    shifted = MaskedDiffusionTransformer(CoreConfig(**{**plain.config.__dict__, "logits_shift": "previous"})).eval()
    shifted.load_state_dict(plain.state_dict())
    ids = rand_ids(2, 9)
    a, b = plain(ids).logits, shifted(ids).logits
    torch.testing.assert_close(b[:, 1:], a[:, :-1], atol=0, rtol=0)
    torch.testing.assert_close(b[:, 0], a[:, 0], atol=0, rtol=0)  # position 0 repeats itself
    assert not torch.allclose(a[:, 1:], a[:, :-1])  # the shift is visible
    at = torch.tensor([[0, 4], [8, 3]])
    want = b.gather(1, at[..., None].expand(-1, -1, b.shape[-1]))  # (2, 2, V)
    torch.testing.assert_close(shifted(ids, logits_at=at).logits, want)


def test_logits_at_selections():
    core = make_core(n_kv_heads=2)
    ids = rand_ids(2, 10)
    full = core(ids).logits  # (2, 10, 44)
    sel = torch.zeros(2, 10, dtype=torch.bool)
    sel[0, [1, 7]] = True
    sel[1, [0, 2, 9]] = True
    torch.testing.assert_close(core(ids, logits_at=sel).logits, full[sel], atol=1e-6, rtol=1e-6)
    assert core(ids, logits_at=sel).logits.shape == (5, 44)
    idx = torch.tensor([[9, 0, 3], [5, 5, 1]])
    want = torch.stack([full[b, idx[b]] for b in range(2)])  # (2, 3, 44)
    torch.testing.assert_close(core(ids, logits_at=idx).logits, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(core(ids, vocab_range=(10, 25)).logits, full[..., 10:25], atol=1e-6, rtol=1e-6)
    out = core(ids, logits_at=sel, vocab_range=(40, 44)).logits
    torch.testing.assert_close(out, full[sel][:, 40:44], atol=1e-6, rtol=1e-6)
    assert core(ids, logits_at=False).logits is None
    out = core(ids, logits_at=False, output_hidden=True)
    assert out.logits is None and out.hidden.shape == (2, 10, 32)
    with pytest.raises(ValueError, match=r"vocab_range \(30, 50\) is not a non-empty range inside \[0, 44\)"):
        core(ids, vocab_range=(30, 50))


def test_indexed_logits_run_the_last_block_only_at_the_asked_positions():
    """With a (B, K) index the last block's queries, attention output and MLP run on K rows (its keys and values on
    all L), earlier blocks on all L; the logits equal the full pass's, with a 4D mask, GQA, left padding, a cache
    window, and gradients through gradient checkpointing."""
    core = make_core(n_kv_heads=2)
    rows = []
    for block in core.blocks:
        block.mlp.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[1]))
    ids = rand_ids(2, 10)
    keep = torch.ones(2, 10, dtype=torch.bool)
    keep[1, :2] = False
    mask = keep[:, None, None, :] & prefix_mask(torch.tensor([4, 6]), 10)  # (2, 1, 10, 10)
    pos = (keep.long().cumsum(1) - 1).clamp(min=0)
    full = core(ids, attention_mask=mask, position_ids=pos, use_cache=True)
    assert rows == [10, 10] and full.logits.shape == (2, 10, 44)
    idx = torch.tensor([[9, 0, 4], [3, 3, 7]])
    rows.clear()
    out = core(ids, attention_mask=mask, position_ids=pos, logits_at=idx, use_cache=True)
    assert rows == [10, 3]
    want = torch.stack([full.logits[b, idx[b]] for b in range(2)])
    torch.testing.assert_close(out.logits, want, atol=1e-6, rtol=1e-6)
    for mine, theirs in zip(out.cache.keys + out.cache.values, full.cache.keys + full.cache.values, strict=True):
        torch.testing.assert_close(mine, theirs, atol=0, rtol=0)  # keys and values of every position, as before
    rows.clear()
    part = core(ids[:, 5:9], attention_mask=mask, position_ids=pos[:, 5:9], cache=full.cache, cache_window=(5, 9),
                logits_at=torch.tensor([[3, 1], [0, 2]]))
    assert rows == [4, 2]
    torch.testing.assert_close(part.logits, full.logits[[[0, 0], [1, 1]], [[8, 6], [5, 7]]], atol=1e-5, rtol=1e-5)
    # the hidden states are asked for: every position runs
    rows.clear()
    core(ids, logits_at=idx, output_hidden=True)
    assert rows == [10, 10]
    # training with gradient checkpointing: the same gradients as without it
    core.train()
    grads = []
    for checkpointing in (False, True):
        core.set_gradient_checkpointing(checkpointing)
        core.zero_grad()
        core(ids, attention_mask=mask, logits_at=idx).logits.logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in core.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_soft_embeds_equal_modified_embedding():
    core = make_core(n_kv_heads=2)
    B, L, N, d = 2, 8, 3, 32
    ids = rand_ids(B, L, high=V_TEXT)
    soft = torch.randn(B, N, d, generator=torch.Generator().manual_seed(5))
    positions = torch.tensor([[0, 3, 4], [5, 6, 7]])
    got = core(ids, soft_embeds=soft, soft_positions=positions).logits
    # the same vectors through an embedding table extended with B*N new rows (head rows zero, outputs unchanged)
    V = core.config.vocab_size
    big = MaskedDiffusionTransformer(CoreConfig(**{**core.config.__dict__, "vocab_size": V + B * N})).eval()
    state = core.state_dict()
    state["embed_tokens.weight"] = torch.cat([state["embed_tokens.weight"], soft.reshape(B * N, d)])
    state["lm_head.weight"] = torch.cat([state["lm_head.weight"], torch.zeros(B * N, d)])
    big.load_state_dict(state)
    new_ids = ids.clone()
    for b in range(B):
        new_ids[b, positions[b]] = V + b * N + torch.arange(N)
    want = big(new_ids).logits[..., :V]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, core(ids).logits, atol=1e-3)  # the soft tokens did something
    # the whole input as soft tokens equals the embedded ids
    full = core.embed_tokens(ids)
    torch.testing.assert_close(core(soft_embeds=full).logits, core(ids).logits, atol=1e-6, rtol=1e-6)


def test_left_padding_with_shifted_positions():
    core = make_core(n_kv_heads=2, qkv_bias=True)
    real = rand_ids(1, 6, seed=3, high=V_TEXT)
    other = rand_ids(1, 8, seed=4, high=V_TEXT)
    pad = core.config.vocab.pad_id
    padded = torch.cat([torch.full((1, 2), pad), real], 1)
    ids = torch.cat([padded, other])  # (2, 8): row 0 left-padded by 2
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8], dtype=torch.bool)
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    got = core(ids, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(got[0, 2:], core(real).logits[0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], core(other).logits[0], atol=2e-5, rtol=1e-5)
    # the reference with the same mask agrees, and the pad ids themselves are never seen
    want = ref_logits(core, ids, pos=pos, allowed=mask[:, None, None, :])
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)
    ids2 = ids.clone()
    ids2[0, :2] = torch.tensor([3, 17])
    got2 = core(ids2, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(got2[0, 2:], got[0, 2:], atol=1e-6, rtol=1e-6)


def test_prefix_attention_prompt_is_blind_to_targets():
    core = make_core(n_kv_heads=2)
    ids = rand_ids(2, 10, high=V_TEXT)
    prompt_len = torch.tensor([4, 6])
    mask = build_attention_mask("prefix", 10, prefix_len=prompt_len)
    changed = ids.clone()
    changed[0, 4:] = core.config.vocab.mask_id
    changed[1, 6:] = (changed[1, 6:] + 1) % V_TEXT
    a = core(ids, attention_mask=mask, output_hidden=True).hidden
    b = core(changed, attention_mask=mask, output_hidden=True).hidden
    torch.testing.assert_close(a[0, :4], b[0, :4], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a[1, :6], b[1, :6], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a[0, 4:], b[0, 4:], atol=1e-3)
    # with full attention the prompt does see the targets (so the check above can fail)
    full_a, full_b = core(ids, output_hidden=True).hidden, core(changed, output_hidden=True).hidden
    assert not torch.allclose(full_a[0, :4], full_b[0, :4], atol=1e-3)
    # and the prefix logits equal the reference with that mask
    want = ref_logits(core, ids, allowed=mask)
    torch.testing.assert_close(core(ids, attention_mask=mask).logits.double(), want, atol=2e-5, rtol=1e-5)


def test_mask_patterns_exact():
    got = block_causal_mask(7, 2, prefix_len=3)[0, 0].int().tolist()
    assert got == [
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1],
    ]
    per_row = block_causal_mask(4, 3, prefix_len=torch.tensor([0, 1]))
    assert per_row.shape == (2, 1, 4, 4)
    assert per_row[0, 0].int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert per_row[1, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert prefix_mask(torch.tensor([2]), 4)[0, 0].int().tolist() == [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 1, 1, 1],
    ]
    pad = torch.tensor([[0, 1, 1, 1]], dtype=torch.bool)
    both = build_attention_mask("prefix", 4, attention_mask=pad, prefix_len=torch.tensor([2]))
    assert both[0, 0].int().tolist() == [[0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1]]
    assert build_attention_mask("full", 4) is None
    assert build_attention_mask("full", 4, attention_mask=pad).shape == (1, 1, 1, 4)
    with pytest.raises(ValueError, match="unknown attention kind 'causal'"):
        build_attention_mask("causal", 4)
    with pytest.raises(ValueError, match="needs prefix_len"):
        build_attention_mask("prefix", 4)
    with pytest.raises(ValueError, match="needs block_size"):
        build_attention_mask("block_causal", 4)


def test_block_causal_model_earlier_blocks_blind_to_later():
    core = make_core()
    ids = rand_ids(1, 9, high=V_TEXT)
    mask = build_attention_mask("block_causal", 9, prefix_len=torch.tensor([3]), block_size=3)
    later = ids.clone()
    later[0, 6:] = core.config.vocab.mask_id
    a, b = core(ids, attention_mask=mask).logits, core(later, attention_mask=mask).logits
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)
    torch.testing.assert_close(a.double(), ref_logits(core, ids, allowed=mask), atol=2e-5, rtol=1e-5)


def test_gradient_checkpointing_identical_gradients():
    core = make_core(n_kv_heads=2, qkv_bias=True, qk_norm=True).train()
    ids = rand_ids(2, 12)

    def grads() -> dict[str, torch.Tensor]:
        core.zero_grad(set_to_none=True)
        core(ids).logits.float().pow(2).mean().backward()
        return {k: p.grad.clone() for k, p in core.named_parameters()}

    plain = grads()
    core.set_gradient_checkpointing(True)
    ckpt = grads()
    core.set_gradient_checkpointing(False)
    assert plain.keys() == ckpt.keys()
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], atol=0, rtol=0, msg=k)
    assert all(g.abs().sum() > 0 for g in plain.values())


def test_bf16_autocast_on_cpu_is_close():
    core = make_core(n_kv_heads=2, qk_norm=True)
    ids = rand_ids(2, 12)
    fp32 = core(ids).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = core(ids).logits
    assert bf16.dtype == torch.bfloat16
    err = (bf16.float() - fp32).abs().max().item()
    assert err < 0.1 * fp32.abs().max().item(), err
    # argmax agreement on most positions
    assert (bf16.float().argmax(-1) == fp32.argmax(-1)).float().mean() > 0.8


def test_input_errors():
    core = make_core(max_seq_len=16)
    with pytest.raises(ValueError, match=r"token id 44 is outside the vocabulary \[0, 44\)"):
        core(torch.tensor([[1, 44]]))
    with pytest.raises(ValueError, match=r"token id -1 is outside the vocabulary \[0, 44\)"):
        core(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="sequence length 17 exceeds max_seq_len=16"):
        core(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="soft tokens have width 8 but the core has d_model=32"):
        core(torch.zeros(1, 4, dtype=torch.long), soft_embeds=torch.zeros(1, 2, 8),
             soft_positions=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="soft tokens have width 8 but the core has d_model=32"):
        core(soft_embeds=torch.zeros(1, 4, 8))
    with pytest.raises(ValueError, match="needs soft_positions"):
        core(torch.zeros(1, 4, dtype=torch.long), soft_embeds=torch.zeros(1, 2, 32))
    with pytest.raises(ValueError, match=r"soft_positions \(1, 3\) must be \(B, N\)"):
        core(torch.zeros(1, 4, dtype=torch.long), soft_embeds=torch.zeros(1, 2, 32),
             soft_positions=torch.tensor([[0, 1, 2]]))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(d_model=30, n_heads=4), "d_model=30 is not divisible by n_heads=4"),
        (dict(n_heads=4, n_kv_heads=3), "n_heads=4 is not a multiple of n_kv_heads=3"),
        (dict(d_model=20, n_heads=4), "head size 5 must be even for RoPE"),
        (dict(vocab_size=10), r"vocab_size=10 is smaller than the vocabulary layout \(44\)"),
        (dict(logits_shift="next"), "logits_shift must be 'none' or 'previous'"),
        (dict(n_layers=0), "n_layers must be a positive integer, got 0"),
        (dict(dropout=1.5), r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_config(kw, message):
    with pytest.raises(ValueError, match=message):
        CoreConfig(vocab=VocabLayout.build(text_size=V_TEXT), **kw)


def test_config_dict_round_trip_and_unknown_field():
    cfg = CoreConfig(vocab=VocabLayout.build(text_size=V_TEXT, ranges={"image": 8}), d_model=64, n_kv_heads=2,
                     qkv_bias=True, logits_shift="previous")
    data = cfg.to_dict()
    assert data["vocab"]["ranges"]["image"] == [44, 52] and data["vocab_size"] == 52 and data["mlp_hidden_size"] == 192
    assert CoreConfig.from_dict(data) == cfg
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['n_expert'\] in core config"):
        CoreConfig.from_dict({**data, "n_expert": 8})
    with pytest.raises(TypeError, match="core config.qkv_bias must be bool"):
        CoreConfig.from_dict({**data, "qkv_bias": "yes"})


# ------------------------------------------------------------------------------------------------ KV cache
@pytest.mark.parametrize("window", [(5, 9), (5, 12), (0, 4)], ids=["dual", "prefix", "first-block"])
def test_cached_window_equals_full_forward(window):
    """Keys/values cached from a full pass, then only the window [lo, hi) run: its logits equal the full pass's at
    those positions (exact: nothing changed), with GQA, left padding and shifted positions."""
    core = make_core(n_kv_heads=2)
    ids = torch.randint(0, V_TEXT, (2, 12), generator=torch.Generator().manual_seed(4))
    keep = torch.ones(2, 12, dtype=torch.bool)
    keep[1, :3] = False  # row 1 left-padded by 3
    pos = (keep.long().cumsum(1) - 1).clamp(min=0)
    full = core(ids, attention_mask=keep, position_ids=pos, use_cache=True)
    assert len(full.cache.keys) == 2 and full.cache.keys[0].shape == (2, 2, 12, 8) and full.cache.length == 12
    lo, hi = window
    part = core(ids[:, lo:hi], attention_mask=keep, position_ids=pos[:, lo:hi], cache=full.cache, cache_window=window)
    torch.testing.assert_close(part.logits, full.logits[:, lo:hi], rtol=1e-5, atol=1e-5)
    # the cached keys are the ones a fresh pass computes, and position ids default to lo..hi-1
    plain = core(ids, use_cache=True)
    part = core(ids[:, lo:hi], cache=plain.cache, cache_window=window, logits_at=torch.tensor([[0], [hi - lo - 1]]))
    torch.testing.assert_close(part.logits[:, 0], plain.logits[[0, 1], [lo, hi - 1]], rtol=1e-5, atol=1e-5)


def test_cached_window_with_a_4d_mask_and_a_changed_window():
    """With LaViDa-style prefix attention the prompt never sees the answer, so a prompt cache stays exact while the
    answer changes: the window run on new answer tokens equals a full pass on the new canvas."""
    core = make_core()
    ids = torch.randint(0, V_TEXT, (1, 10), generator=torch.Generator().manual_seed(5))
    mask = prefix_mask(torch.tensor([6]), 10)  # (1, 1, 10, 10): prompt of 6 is blind to the answer
    cache = core(ids, attention_mask=mask, use_cache=True).cache
    new = ids.clone()
    new[0, 6:] = torch.tensor([1, 2, 3, 4])
    part = core(new[:, 6:], attention_mask=mask, cache=cache, cache_window=(6, 10))
    fresh = core(new, attention_mask=mask, use_cache=True)
    torch.testing.assert_close(part.logits, fresh.logits[:, 6:], rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(cache.keys + cache.values, fresh.cache.keys + fresh.cache.values, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)  # the window was written in place


def test_cache_errors():
    core = make_core()
    ids = torch.randint(0, V_TEXT, (1, 8))
    cache = core(ids, use_cache=True).cache
    with pytest.raises(ValueError, match="cache_window was given without a cache"):
        core(ids, cache_window=(0, 8))
    with pytest.raises(ValueError, match=r"a cache needs cache_window=\(lo, hi\)"):
        core(ids, cache=cache)
    with pytest.raises(ValueError, match=r"cache_window \(2, 5\) must satisfy 0 <= lo < hi <= 8 .* hi - lo = 4"):
        core(ids[:, :4], cache=cache, cache_window=(2, 5))
    shifted = make_core(logits_shift="previous")
    with pytest.raises(ValueError, match="logits_shift='previous' needs the hidden state left of the window"):
        shifted(ids[:, 2:], cache=shifted(ids, use_cache=True).cache, cache_window=(2, 8))


# ------------------------------------------------------------------------------- torch.compile option
def test_compile_unavailable_falls_back_to_eager_with_a_named_warning(monkeypatch):
    core, ids = make_core(), rand_ids(2, 7)
    expected = core(ids).logits

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable here .RuntimeError: no C.. compiler found"):
        assert core.compile_blocks() is False
    assert torch.equal(core(ids).logits, expected)


def test_a_compiled_block_failing_at_its_first_call_falls_back_for_good(monkeypatch):
    core, ids = make_core(), rand_ids(2, 7)
    expected = core(ids).logits
    calls = []

    def failing_compile(block, **options):
        calls.append(options)

        def run(*args):
            raise RuntimeError("backend compiler failed")
        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    assert core.compile_blocks(mode="max-autotune") is True
    assert calls == [{"mode": "max-autotune", "dynamic": True}] * core.config.n_layers
    with pytest.warns(RuntimeWarning, match="backend compiler failed"):
        assert torch.equal(core(ids).logits, expected)
    assert core._compiled is None  # eager from then on: no second warning
    assert torch.equal(core(ids).logits, expected)


def test_compiled_blocks_run_instead_of_the_eager_ones(monkeypatch):
    core, ids = make_core(), rand_ids(2, 7)
    expected = core(ids).logits
    ran = []

    def tracing_compile(block, **options):
        def run(*args):
            ran.append(block)
            return block(*args)
        return run

    monkeypatch.setattr(torch, "compile", tracing_compile)
    core.compile_blocks()
    assert torch.equal(core(ids).logits, expected)
    assert ran == list(core.blocks)
    core.compile_blocks(enabled=False)
    core(ids)
    assert len(ran) == core.config.n_layers


@pytest.mark.slow
def test_torch_compile_of_the_blocks_gives_the_eager_logits():
    core, ids = make_core(), rand_ids(2, 7)
    with torch.inference_mode():
        expected = core(ids).logits
        assert core.compile_blocks()
        torch.testing.assert_close(core(ids).logits, expected, rtol=1e-5, atol=1e-5)
        assert core._compiled is not None  # compiled for real: no fallback happened


@pytest.mark.slow
def test_torch_compile_runs_the_per_row_cache_windows_of_block_diffusion():
    """The block-diffusion sampler writes each row's keys and values at its own cache columns: compiled, that write
    takes the general scatter (a traced as_strided view of the cache cannot be bounded), with the eager tokens."""
    import warnings

    from mmdiff.sampling.block import BlockDiffusionSampler

    cfg = CoreConfig(VocabLayout.build(16), d_model=32, n_layers=2, n_heads=2, attention="block_causal",
                     block_size=4, max_seq_len=64)
    torch.manual_seed(0)
    core = MaskedDiffusionTransformer(cfg).eval()
    ids = torch.randint(0, 16, (3, 5), generator=torch.Generator().manual_seed(1))
    sampler = BlockDiffusionSampler(gen_length=16, threshold=0.5, pipeline=0.5)
    with torch.inference_mode():
        eager = sampler(core, ids, mask_id=16, return_history=True)
        assert core.compile_blocks()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would warn
            compiled = sampler(core, ids, mask_id=16, return_history=True)
    assert core._compiled is not None
    assert torch.equal(compiled.sequences, eager.sequences) and compiled.nfe == eager.nfe


def test_precomputed_rope_rows_equal_the_per_call_computation():
    from mmdiff.core.model import rotary_embedding

    core = make_core()
    cos, sin = core.rope_table(torch.device("cpu"))
    positions = torch.arange(core.config.max_seq_len)[None]
    ref_cos, ref_sin = rotary_embedding(positions, core.config.head_dim, core.config.rope_theta)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    assert core.rope_table(torch.device("cpu"))[0] is cos  # computed once
    ids = rand_ids(2, 9)
    explicit = torch.arange(9)[None].expand(2, 9)
    assert torch.equal(core(ids).logits, core(ids, position_ids=explicit).logits)  # the table path, bit for bit
    out = core(ids, use_cache=True)
    window = core(ids[:, 4:7], cache=out.cache, cache_window=(4, 7)).logits
    assert torch.equal(window, core(ids[:, 4:7], cache=out.cache, cache_window=(4, 7),
                                    position_ids=explicit[:, 4:7]).logits)


def test_boolean_masks_become_one_additive_bias_per_pass(monkeypatch):
    """The core turns a boolean attention mask into the 0 / -inf bias once per forward pass (not once per layer
    inside scaled_dot_product_attention): the logits are bit-identical to every layer getting the boolean mask, for
    a block-causal core with padding, a 4-D per-row mask with a cache window, and under bf16 autocast."""
    import mmdiff.core.model as core_model

    core = make_core(0, attention="block_causal", block_size=3, n_layers=3)
    ids = torch.randint(0, V_TEXT, (2, 9), generator=torch.Generator().manual_seed(1))
    padding = torch.ones(2, 9, dtype=torch.bool)
    padding[1, 7:] = False
    mask4 = block_causal_mask(9, 3)[:, :, 3:6].expand(2, -1, -1, -1) & padding[:, None, None, :]

    def runs():
        with torch.no_grad():
            out = [core(ids, attention_mask=padding).logits]
            full = core(ids, attention_mask=padding, use_cache=True).cache
            window = torch.tensor([[3, 4, 5], [3, 4, 5]])
            out.append(core(ids[:, 3:6], attention_mask=mask4, cache=full, cache_window=window).logits)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out.append(core(ids, attention_mask=padding).logits)
        return out

    made = []
    real = core_model._additive
    monkeypatch.setattr(core_model, "_additive", lambda mask, x: made.append(real(mask, x)) or made[-1])
    fast = runs()
    assert [m.dtype for m in made] == [torch.float32, torch.float32, torch.float32, torch.bfloat16]
    monkeypatch.setattr(core_model, "_additive", lambda mask, x: mask)  # every layer converts the boolean mask
    for a, b in zip(fast, runs(), strict=True):
        assert torch.equal(a, b)
    broadcast = (torch.rand(1, 1, 4, 6) > 0.3).expand(3, 2, 4, 6)
    bias = real(broadcast, torch.zeros(1))
    assert bias.stride()[:2] == (0, 0) and torch.equal(bias == 0, broadcast) and bias.min() == -math.inf


def test_per_row_cache_writes_equal_scatter_on_whole_caches_and_column_slices():
    """`_write_columns` (one row copy per position) writes what `scatter_` along the columns writes: into a whole
    cache, into a slice of its first columns (what the block sampler passes), and through the fallback (a cache whose
    rows are not contiguous)."""
    from mmdiff.core.model import _write_columns

    g = torch.Generator().manual_seed(0)
    full = torch.randn(3, 2, 12, 4, generator=g)
    new = torch.randn(3, 2, 5, 4, generator=g).transpose(1, 2).contiguous().transpose(1, 2)  # like k: (B, H, L, D)
    columns = torch.stack([torch.randperm(9, generator=g)[:5] for _ in range(3)])  # distinct per row, < 9
    for view in (lambda t: t, lambda t: t[:, :, :9], lambda t: t.transpose(2, 3).contiguous().transpose(2, 3)):
        want, got = view(full.clone()), view(full.clone())
        want.scatter_(2, columns[:, None, :, None].expand(-1, 2, -1, 4), new)
        _write_columns(got, columns, new)
        assert torch.equal(got, want)
