"""Heads, one soft-token placement and one canvas attention-mask builder: a restricted head's logits are the full
head's sliced to its range, sampling through it stays inside the range, and the placement / mask helpers equal
hand-built references (the windowed cache case included)."""

from __future__ import annotations

import pytest
import torch

from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout
from mmdiff.canvas import Canvas, CanvasCore, canvas_attention_mask
from mmdiff.core.masks import build_attention_mask
from mmdiff.core.model import place_soft_tokens
from mmdiff.heads import LMHead, RangeHead, get_head
from mmdiff.registry import HEADS


def make_model(seed: int = 0) -> DiffusionModel:
    torch.manual_seed(seed)
    vocab = VocabLayout.build(text_size=20, ranges={"image": 6})
    return DiffusionModel(ModelConfig(CoreConfig(vocab=vocab, d_model=32, n_layers=2, n_heads=2))).eval()


def test_registry_holds_the_lm_head_and_the_image_head():
    assert isinstance(HEADS.get("lm"), LMHead) and isinstance(HEADS.get("image"), RangeHead)
    assert get_head(None) is HEADS.get("lm")
    vocab = make_model().vocab
    assert get_head("lm").id_range(vocab) is None and get_head("lm").allowed_ids(vocab) is None
    start, stop = vocab.range("image")
    assert get_head("image").id_range(vocab) == (start, stop) and get_head("image").allowed_ids(vocab) == range(
        start, stop)
    assert torch.equal(get_head("image").to_vocab_ids(torch.tensor([0, 5]), vocab), torch.tensor([start, start + 5]))
    with pytest.raises(KeyError, match="unknown head 'no_such_head'"):
        get_head("no_such_head")
    with pytest.raises(ValueError, match=r"the vocabulary has no 'image' ids \(ranges: \{'text': \(0, 20\)\}\)"):
        RangeHead("image").id_range(VocabLayout.build(text_size=20))


def test_restricted_head_logits_are_the_full_logits_sliced():
    model = make_model()
    ids = torch.randint(0, model.vocab.size, (2, 7))
    full = model.core(ids).logits  # (B, L, V)
    start, stop = model.vocab.range("image")
    image = model.core(ids, vocab_range=get_head("image").id_range(model.vocab)).logits
    torch.testing.assert_close(image, full[..., start:stop], atol=1e-6, rtol=1e-6)
    at = torch.tensor([[1, 4], [0, 6]])
    x = model.core.embed(ids, None, None)  # the last block's output (pre-norm): what the head reads
    for block in model.core.blocks:
        x, _ = block(x, *_rope(model, ids), None)
    got = get_head("image").logits(model.core, x, at)  # (B, K, V_image)
    torch.testing.assert_close(got, full.gather(1, at[..., None].expand(-1, -1, full.shape[-1]))[..., start:stop],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(get_head("lm").logits(model.core, x), full, atol=1e-5, rtol=1e-5)


def _rope(model, ids):
    from mmdiff.core.model import rotary_embedding

    positions = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
    return rotary_embedding(positions, model.config.core.head_dim, model.config.core.rope_theta)


def test_sampling_through_the_image_head_never_leaves_its_range():
    model = make_model(seed=1)
    head = get_head("image")
    out = model.generate(torch.tensor([[1, 2, 3], [4, 5, 6]]), gen_length=8, steps=8, block_length=8,
                         temperature=1.0, allowed_token_ids=head.allowed_ids(model.vocab),
                         generator=torch.Generator().manual_seed(0))
    start, stop = model.vocab.range("image")
    assert bool(((out[:, 3:] >= start) & (out[:, 3:] < stop)).all())
    free = model.generate(torch.tensor([[1, 2, 3], [4, 5, 6]]), gen_length=8, steps=8, block_length=8,
                          temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert not bool(((free[:, 3:] >= start) & (free[:, 3:] < stop)).all())  # the constraint is what keeps it there


def test_one_soft_placement_for_whole_canvases_windows_and_guidance():
    embeds = torch.zeros(2, 6, 3)
    soft = torch.arange(2 * 2 * 3, dtype=torch.float).view(2, 2, 3) + 1
    positions = torch.tensor([[1, 4], [0, 5]])
    whole = place_soft_tokens(embeds, soft, positions)
    want = embeds.clone()
    want[0, 1], want[0, 4], want[1, 0], want[1, 5] = soft[0, 0], soft[0, 1], soft[1, 0], soft[1, 1]
    assert torch.equal(whole, want)
    window = place_soft_tokens(torch.zeros(2, 3, 3), soft, positions, window=(3, 6))  # canvas positions 3..5
    assert torch.equal(window, want[:, 3:])
    assert torch.equal(place_soft_tokens(torch.zeros(4, 6, 3), soft, positions), torch.cat([want, want]))
    untouched = torch.zeros(2, 2, 3)
    assert place_soft_tokens(untouched, soft, positions, window=(2, 4)) is untouched  # nothing inside [2, 4)


def test_one_attention_mask_builder_serves_canvas_and_sampler():
    padding = torch.tensor([[False, True, True, True, True], [True, True, True, True, True]])
    prefix = torch.tensor([3, 3])
    canvas = Canvas(ids=torch.zeros(2, 3, dtype=torch.long), maskable=torch.zeros(2, 3, dtype=torch.bool),
                    attention_mask=padding[:, :3], attention="prefix", prefix_len=prefix)
    want = build_attention_mask("prefix", 3, attention_mask=padding[:, :3], prefix_len=prefix)
    assert torch.equal(canvas.attention_bias(), want)
    assert canvas_attention_mask("full", 5, padding=padding) is padding
    core = CanvasCore(make_model().core, canvas)
    # the sampler's view: the answer (2 more positions) sees the prompt, the prompt never sees the answer
    got = core._attention(padding, 5)
    assert torch.equal(got, build_attention_mask("prefix", 5, attention_mask=padding, prefix_len=prefix))
    assert got[0, 0, 1].tolist() == [False, True, True, False, False]
    guided = core._attention(torch.cat([padding, padding]), 5)  # guidance runs the batch twice
    assert torch.equal(guided, torch.cat([got, got]))
