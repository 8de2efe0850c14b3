"""Running sums mod 10: a synthetic reasoning task with exactly checkable answers in which every answer token depends
on earlier ones, for supervised fine-tuning of masked-diffusion models and for benchmarking parallel decoding.

Problem: n random digits d1..dn. Prompt: `d1 d2 ... dn =`. Answer: digits and running sums interleaved,
`d1 s1 d2 s2 ... dn sn` with s_k = (s_{k-1} + d_k) mod 10, s_0 = 0, then EOS tokens up to a fixed `answer_length`.
As in LLaDA's SFT (Nie et al. 2025, section 2.3), the EOS padding is part of the target, so a model learns where its
answer ends and generation with a longer `gen_length` stops cleanly. The prompt is never masked ("sft").

Sampling every answer token in one pass is wrong by construction (s_k needs s_{k-1}), so decoding several tokens
per step can hurt accuracy: the property the sampler benchmark measures.

Layouts. In the "compact" prompt `d1 ... dn =` the copy of d_k in the answer sits n + k positions after d_k: an
offset that changes with every k and n, which a small RoPE model learns slowly (no progress in 1000 steps for
n in 8..16 on a 4-layer d_model=128 core, while a fixed n = 8 is copied after 200 steps). The "aligned" prompt
`d1 _ d2 _ ... dn _ _ ... =` (2 * n_max + 1 tokens) puts every digit at the same distance before its copy, so copying
is one fixed relative offset for all problems (copying is learned in about 200 steps for n in 32..128), and only
the running sum itself has to be learned.

Direction. Uniform masking shows the model s_k next to both s_{k-1} (left) and s_{k+1} (right) equally often, and
s_k = s_{k+1} - d_{k+1} is as easy to learn as s_k = s_{k-1} + d_k. Only the left-to-right chain is anchored (s_0 = 0)
and usable for generation; a model that learns the right-to-left one first predicts a masked sum almost perfectly
when its right neighbour is visible and at chance when it is not, so every generated sum is wrong (observed after
1100 steps for n in 32..128). `frontier_prob` mixes in examples in the state a left-to-right sampler sees (given
answer prefix, a few target pairs, later sums hidden), where only the left-to-right rule works; `train_n_min` with
log-uniform `train_lengths` adds short problems, where the anchor s_1 = d_1 is a larger share of the targets.

>>> answer_tokens([3, 9, 4])
[3, 3, 9, 2, 4, 6]
>>> grade_answer([3, 9, 4], "3 3 9 2 4 7")
Grade(exact=False, correct=5, total=6)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmdiff.data import check_vocab_fits
from mmdiff.metrics import token_matches
from mmdiff.registry import DATASETS
from mmdiff.vocab import VocabLayout

__all__ = [
    "RunningSumsSource",
    "RunningSumsDataset",
    "Grade",
    "running_sums",
    "answer_tokens",
    "grade_answer",
    "build_tokenizer",
    "frontier_example",
    "length_buckets",
    "VOCAB",
    "SEPARATOR",
    "BLANK",
]

SEPARATOR = "="
BLANK = "_"
VOCAB = {**{str(d): d for d in range(10)}, SEPARATOR: 10, BLANK: 11}  # token -> id of the text tokenizer
LAYOUTS = ("compact", "aligned")
_TRAIN_STREAM, _VAL_STREAM, _FRONTIER_STREAM = 0, 1, 2  # seed-sequence words keeping the random streams apart


def running_sums(digits: Sequence[int]) -> list[int]:
    """s_k = (s_{k-1} + d_k) mod 10 with s_0 = 0.

    >>> running_sums([7, 5, 9])
    [7, 2, 1]
    """
    sums, total = [], 0
    for d in digits:
        total = (total + int(d)) % 10
        sums.append(total)
    return sums


def answer_tokens(digits: Sequence[int]) -> list[int]:
    """The answer digits `d1 s1 d2 s2 ... dn sn` (2n values)."""
    return [v for pair in zip(digits, running_sums(digits), strict=True) for v in pair]


@dataclass(frozen=True)
class Grade:
    """exact: the answer is exactly right (same length); correct: answer tokens reproduced at their position;
    total: tokens of the right answer (2n)."""

    exact: bool
    correct: int
    total: int


def grade_answer(digits: Sequence[int], answer: str | Sequence[str]) -> Grade:
    """Grades an answer, given as a string (whitespace ignored) or a list of tokens, against the problem `digits`.

    Tokens other than single digits (e.g. a special token left in the answer) count as wrong.

    >>> grade_answer([1, 2], "1 1 2 3")
    Grade(exact=True, correct=4, total=4)
    >>> grade_answer([1, 2], "1123 4")
    Grade(exact=False, correct=4, total=4)
    """
    expected = [str(v) for v in answer_tokens(digits)]
    predicted = list("".join(answer.split())) if isinstance(answer, str) else [str(a) for a in answer]
    return Grade(exact=predicted == expected, correct=token_matches(predicted, expected), total=len(expected))


def length_buckets(n_min: int, n_max: int, count: int = 3) -> list[tuple[int, int]]:
    """`count` inclusive ranges of problem sizes covering [n_min, n_max], equally wide except the last.

    >>> length_buckets(32, 128)
    [(32, 63), (64, 95), (96, 128)]
    """
    width = (n_max - n_min) // count
    if width == 0:
        return [(n_min, n_max)]
    edges = [n_min + k * width for k in range(count)] + [n_max + 1]
    return [(lo, hi - 1) for lo, hi in zip(edges, edges[1:], strict=False)]


def build_tokenizer() -> Any:
    """A character-level `PreTrainedTokenizerFast` over the ten digits, "=" and "_" (whitespace is ignored).

    >>> tok = build_tokenizer()
    >>> tok.encode("3 1 4 ="), tok.encode("314="), tok.decode([3, 1, 4])
    ([3, 1, 4, 10], [3, 1, 4, 10], '314')
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(dict(VOCAB), unk_token=None))
    tok.normalizer = normalizers.Replace(Regex(r"\s+"), "")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)


def frontier_example(example: dict[str, Tensor], n: int, start: int, width: int, mask_id: int) -> dict[str, Tensor]:
    """Turns an SFT example into the state a left-to-right sampler sees at sum `start`: the answer before pair
    `start` is given, pairs `start .. start + width - 1` are targets, and every later running sum is hidden (the mask
    id, not a target) while later digits and the EOS padding stay given.

    Targets next to the hidden sums can only be predicted from the left (s_k = s_{k-1} + d_k), never from the right
    (s_k = s_{k+1} - d_{k+1}); uniform masking alone teaches both directions equally often, and a model that learns
    only the right-to-left one cannot generate (see the module notes).

    >>> ex = {"ids": torch.tensor([7, 5, 10, 7, 7, 5, 2, 13]), "maskable": torch.tensor([False] * 3 + [True] * 5)}
    >>> out = frontier_example(ex, n=2, start=1, width=1, mask_id=12)
    >>> out["ids"].tolist(), out["maskable"].int().tolist()
    ([7, 5, 10, 7, 7, 5, 12, 13], [0, 0, 0, 1, 1, 0, 0, 0])
    """
    ids, maskable = example["ids"].clone(), example["maskable"].clone()
    first = int(maskable.nonzero()[0])  # where the answer starts
    lo, hi = first + 2 * (start - 1), first + 2 * min(start - 1 + width, n)  # target pairs [lo, hi)
    maskable[first:lo] = False
    maskable[hi:] = False
    hidden = torch.arange(hi + 1, max(hi + 1, first + 2 * n), 2)  # the running sums after the targets
    ids[hidden] = mask_id
    return {"ids": ids, "maskable": maskable}


class RunningSumsDataset(Dataset):
    """SFT examples of one split: prompt (not a target) then answer + EOS padding (targets).

    Args:
        source: the `RunningSumsSource` that draws the problems.
        split: "train" or "val".
        vocab: the model's vocabulary layout (for the EOS id).
    """

    def __init__(self, source: RunningSumsSource, split: str, vocab: VocabLayout) -> None:
        self.source, self.split, self.vocab = source, split, vocab

    def __len__(self) -> int:
        return self.source.train_size if self.split == "train" else self.source.val_size

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for the {self.split} split of {len(self)} problems")
        digits = self.source.problem(self.split, index)
        example = self.source.example(digits, self.vocab)
        if self.split == "train" and self.source.frontier_prob > 0:
            rng = np.random.default_rng([self.source.seed, _FRONTIER_STREAM, index])
            if rng.random() < self.source.frontier_prob:
                start = int(rng.integers(1, len(digits) + 1))
                width = int(rng.integers(1, self.source.frontier_window + 1))
                example = frontier_example(example, len(digits), start, width, self.vocab.mask_id)
        return example


@DATASETS.register("running-sums")
class RunningSumsSource:
    """Running sums mod 10 with n digits, n uniform in [n_min, n_max].

    Args:
        n_min: fewest digits per problem.
        n_max: most digits per problem.
        answer_length: answer positions incl. EOS padding; default 2 * n_max + 1 (every answer ends with an EOS).
        layout: "compact" writes the prompt as `d1 d2 ... dn =`; "aligned" as `d1 _ d2 _ ... dn _` filled with
            blanks to 2 * n_max tokens, then `=`, so every digit sits exactly 2 * n_max + 1 positions before its
            copy in the answer (a constant offset, which a RoPE model finds quickly; see the module notes).
        train_n_min: smallest train problem (default n_min); val problems keep [n_min, n_max].
        train_lengths: how train sizes are drawn from [train_n_min, n_max]: "uniform" or "log-uniform".
        frontier_prob: fraction of train examples turned into left-to-right "frontier" states (see
            `frontier_example`); 0 = plain SFT examples.
        frontier_window: most answer pairs (digit, sum) that are targets in a frontier example.
        train_size: problems in the train split (drawn lazily from per-index seeds).
        val_size: held-out problems (their sizes spread evenly over [n_min, n_max]; never in the train split).
        seed: seed of both splits.
        eval_batch_size: problems per `generate` call in `evaluate`.

    >>> source = RunningSumsSource(n_min=2, n_max=3, val_size=4)
    >>> vocab = VocabLayout.build(len(source.tokenizer()), source.specials)
    >>> source.problem("val", 0)
    [5, 8]
    >>> source.example([9, 2], vocab)["ids"].tolist()
    [9, 2, 10, 9, 9, 2, 1, 13, 13, 13]
    """

    task = "text"
    specials = ("mask", "eos", "pad", "bos")

    def __init__(
        self,
        n_min: int = 32,
        n_max: int = 128,
        answer_length: int | None = None,
        layout: str = "compact",
        train_n_min: int | None = None,
        train_lengths: str = "uniform",
        frontier_prob: float = 0.0,
        frontier_window: int = 4,
        train_size: int = 200_000,
        val_size: int = 256,
        seed: int = 0,
        eval_batch_size: int = 32,
    ) -> None:
        if not 1 <= n_min <= n_max:
            raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
        answer_length = 2 * n_max + 1 if answer_length is None else answer_length
        if answer_length < 2 * n_max + 1:
            raise ValueError(f"answer_length={answer_length} leaves no EOS after the longest answer (2 * n_max = "
                             f"{2 * n_max}); use answer_length >= {2 * n_max + 1}")
        train_n_min = n_min if train_n_min is None else train_n_min
        if not 1 <= train_n_min <= n_max:
            raise ValueError(f"need 1 <= train_n_min <= n_max, got train_n_min={train_n_min}, n_max={n_max}")
        if train_lengths not in ("uniform", "log-uniform"):
            raise ValueError(f"train_lengths must be 'uniform' or 'log-uniform', got {train_lengths!r}")
        if not 0 <= frontier_prob <= 1 or frontier_window < 1:
            raise ValueError(f"need 0 <= frontier_prob <= 1 and frontier_window >= 1, got {frontier_prob}, "
                             f"{frontier_window}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if train_size < 1 or val_size < 1 or eval_batch_size < 1:
            raise ValueError(f"train_size, val_size and eval_batch_size must be >= 1, got {train_size}, {val_size}, "
                             f"{eval_batch_size}")
        self.n_min, self.n_max, self.answer_length = n_min, n_max, answer_length
        self.layout = layout
        self.train_n_min, self.train_lengths = train_n_min, train_lengths
        self.frontier_prob, self.frontier_window = frontier_prob, frontier_window
        self.train_size, self.val_size, self.seed = train_size, val_size, seed
        self.eval_batch_size = eval_batch_size
        self._tokenizer = None

    def tokenizer(self) -> Any:
        """Digits, "=" and "_" as ids 0..11 (see `VOCAB`)."""
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer()
        return self._tokenizer

    # ------------------------------------------------------------------------------------------------ problems
    @cached_property
    def val_problems(self) -> list[list[int]]:
        """The held-out problems; problem i has n = n_min + floor(i * (n_max - n_min + 1) / val_size) digits."""
        span = self.n_max - self.n_min + 1
        return [self._digits(_VAL_STREAM, i, self.n_min + (i * span) // self.val_size) for i in range(self.val_size)]

    @cached_property
    def _val_keys(self) -> frozenset[bytes]:
        return frozenset(bytes(p) for p in self.val_problems)

    def problem(self, split: str, index: int) -> list[int]:
        """The digits of problem `index` of `split`; train problems are redrawn if they equal a val problem."""
        if split == "val":
            return list(self.val_problems[index])
        if split != "train":
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        for attempt in range(1000):
            rng = np.random.default_rng([self.seed, _TRAIN_STREAM, index, attempt])
            digits = self._digits_from(rng, self._draw_n(rng))
            if bytes(digits) not in self._val_keys:
                return digits
        raise RuntimeError("could not draw a train problem outside the val set; widen [n_min, n_max]")

    def _draw_n(self, rng: np.random.Generator) -> int:
        """A train problem size in [train_n_min, n_max]: uniform, or log-uniform (more short problems)."""
        lo, hi = self.train_n_min, self.n_max
        if self.train_lengths == "uniform":
            return int(rng.integers(lo, hi + 1))
        return min(int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))), hi)

    def _digits(self, stream: int, index: int, n: int) -> list[int]:
        return self._digits_from(np.random.default_rng([self.seed, stream, index]), n)

    @staticmethod
    def _digits_from(rng: np.random.Generator, n: int) -> list[int]:
        return rng.integers(0, 10, size=n).tolist()

    # ------------------------------------------------------------------------------------------------ examples
    def prompt_ids(self, digits: Sequence[int]) -> list[int]:
        """The prompt's token ids: `d1 ... dn =` ("compact") or `d1 _ ... dn _ _ ... =` ("aligned")."""
        if self.layout == "compact":
            return [VOCAB[str(d)] for d in digits] + [VOCAB[SEPARATOR]]
        spaced = [v for d in digits for v in (VOCAB[str(d)], VOCAB[BLANK])]
        return spaced + [VOCAB[BLANK]] * (2 * (self.n_max - len(digits))) + [VOCAB[SEPARATOR]]

    def example(self, digits: Sequence[int], vocab: VocabLayout) -> dict[str, Tensor]:
        """{"ids": prompt + answer + EOS padding, "maskable": True on the `answer_length` answer positions}."""
        self._check_vocab(vocab)
        lo = min(self.n_min, self.train_n_min)
        if not lo <= len(digits) <= self.n_max:
            raise ValueError(f"problem has {len(digits)} digits; this source takes {lo}..{self.n_max}")
        prompt = self.prompt_ids(digits)
        answer = [VOCAB[str(v)] for v in answer_tokens(digits)]
        answer += [vocab.id("eos")] * (self.answer_length - len(answer))
        ids = torch.tensor(prompt + answer, dtype=torch.long)
        maskable = torch.zeros(len(ids), dtype=torch.bool)
        maskable[len(prompt) :] = True
        return {"ids": ids, "maskable": maskable}

    def dataset(self, split: str, vocab: VocabLayout) -> RunningSumsDataset:
        """`train_size` (train) or `val_size` (val) SFT examples, generated on access."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self._check_vocab(vocab)
        return RunningSumsDataset(self, split, vocab)

    def _check_vocab(self, vocab: VocabLayout) -> None:
        check_vocab_fits(vocab, len(VOCAB), ("eos", "pad"), self.specials)

    # ------------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(
        self,
        model: Any,
        split: str = "val",
        limit: int | None = None,
        *,
        tokens_per_step: int = 1,
        gen_length: int | None = None,
        batch_size: int | None = None,
        **sampler_overrides: Any,
    ) -> dict[str, float]:
        """Generates answers and grades them: exact match overall and per length bucket, and token accuracy.

        Problems are sorted by size and batched (left-padded prompts); each batch generates `gen_length` tokens
        (default `answer_length`, the canvas seen in training) rounded up to a multiple of the block length, in
        `gen_length / tokens_per_step` steps unless `steps` is given. The answer is read up to the first EOS.

        Args:
            model: a `DiffusionModel` with this source's vocabulary.
            split: "val" or "train" (the first `limit` train problems).
            limit: grade this many problems (val: spread evenly over the sizes; None = all).
            tokens_per_step: tokens committed per denoising step (1 = one forward pass per token).
            gen_length: generated positions per problem (rounded up to a multiple of the block length).
            batch_size: problems per `generate` call (default `eval_batch_size`).
            **sampler_overrides: passed to `model.generate` (block_length, steps, temperature, remasking, ...).

        Returns:
            {"exact_match", "token_accuracy", "exact_match_n{lo}_{hi}" per bucket, "problems"}.

        >>> # RunningSumsSource().evaluate(model, limit=64, tokens_per_step=2)["exact_match"]
        """
        problems = self._eval_problems(split, limit)
        order = sorted(range(len(problems)), key=lambda i: len(problems[i]))
        size = batch_size or self.eval_batch_size
        grades: list[Grade] = [None] * len(problems)  # type: ignore[list-item]
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            answers = self._generate([problems[i] for i in idx], model, tokens_per_step, gen_length, sampler_overrides)
            for i, answer in zip(idx, answers, strict=True):
                grades[i] = grade_answer(problems[i], answer)
        return self._summarize(problems, grades)

    def _eval_problems(self, split: str, limit: int | None) -> list[list[int]]:
        count = self.val_size if split == "val" else self.train_size
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        if split == "val" and limit is not None and limit < count:
            index = np.linspace(0, count - 1, num=limit).round().astype(int).tolist()
        else:
            index = range(min(count, limit or count))
        return [self.problem(split, i) for i in index]

    def _generate(self, batch: list[list[int]], model: Any, tokens_per_step: int, gen_length: int | None,
                  overrides: dict[str, Any]) -> list[list[str]]:
        from mmdiff.tasks.text import left_pad

        vocab = model.vocab
        self._check_vocab(vocab)
        block = int(overrides.get("block_length", model.sampler_config.block_length))
        need = gen_length or self.answer_length
        length = -(-need // block) * block  # round up to whole blocks
        steps = overrides.get("steps", max(length // max(tokens_per_step, 1), 1))
        options = {**overrides, "block_length": block, "steps": steps}
        prompts = [torch.tensor(self.prompt_ids(p)) for p in batch]
        ids, attention = left_pad(prompts, vocab.id("pad"))  # (B, P), (B, P)
        out = model.generate(ids.to(model.device), attention.to(model.device), gen_length=length, **options)
        tokens = self.tokenizer().convert_ids_to_tokens(list(range(len(VOCAB))))
        answers = []
        for row in out[:, ids.shape[1] :].tolist():  # (B, gen_length)
            row = row[: row.index(vocab.eos_id)] if vocab.eos_id in row else row
            answers.append([tokens[t] if 0 <= t < len(tokens) else f"<{t}>" for t in row])
        return answers

    def _summarize(self, problems: list[list[int]], grades: list[Grade]) -> dict[str, float]:
        metrics = {
            "exact_match": sum(g.exact for g in grades) / len(grades),
            "token_accuracy": sum(g.correct for g in grades) / sum(g.total for g in grades),
            "problems": float(len(grades)),
        }
        for lo, hi in length_buckets(self.n_min, self.n_max):
            inside = [g for p, g in zip(problems, grades, strict=True) if lo <= len(p) <= hi]
            if inside:
                metrics[f"exact_match_n{lo}_{hi}"] = sum(g.exact for g in inside) / len(inside)
        return metrics
