"""Running sums mod 10: a synthetic reasoning task with exactly checkable answers in which every answer token depends
on earlier ones, for supervised fine-tuning of masked-diffusion models and for benchmarking parallel decoding.

Problem: n random digits d1..dn. The canvas interleaves them with their running sums, `d1 s1 d2 s2 ... dn sn`
with s_k = (s_{k-1} + d_k) mod 10 and s_0 = 0: the digits are given in place (never masked) and the n sums are the
targets, filled in by infilling (`model.generate(canvas, gen_length=0, infill=True)`). An answer is the whole 2n-token
canvas (64 to 256 tokens for n = 32..128); it is right only if every sum is.

Sampling several sums in one step is wrong by construction (s_k needs s_{k-1}), so decoding several tokens per step
hurts accuracy: the property the sampler benchmark measures.

Why this layout. Putting the digits in a prompt and asking for `d1 s1 ... dn sn` after it makes the model copy each
digit across a distance that changes with k and n, which a 4-layer d_model=128 core did not learn in 1000 steps;
padding the prompt so the distance is fixed made copying easy but the sums were still not learned in 2000 steps
(13 min), the model preferring the unanchored rule s_k = s_{k+1} - d_{k+1}. With the digits in place, each target
has its two inputs one and two positions to its left, and the same core learns the sum in about 800 steps.

>>> answer_tokens([3, 9, 4])
[3, 3, 9, 2, 4, 6]
>>> grade_answer([3, 9, 4], "3 3 9 2 4 7")
Grade(exact=False, correct=2, total=3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmdiff.data import check_vocab_fits
from mmdiff.evaluation.metrics import token_matches
from mmdiff.registry import DATASETS, SAMPLERS
from mmdiff.vocab import VocabLayout

__all__ = [
    "RunningSumsSource",
    "RunningSumsDataset",
    "Grade",
    "running_sums",
    "answer_tokens",
    "grade_answer",
    "build_tokenizer",
    "length_buckets",
    "VOCAB",
]

VOCAB = {str(d): d for d in range(10)}  # token -> id of the text tokenizer
_TRAIN_STREAM, _VAL_STREAM = 0, 1  # seed-sequence words keeping the random streams apart


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
    """exact: the whole canvas is exactly right (same length); correct: running sums reproduced at their position;
    total: running sums of the right answer (n)."""

    exact: bool
    correct: int
    total: int


def grade_answer(digits: Sequence[int], answer: str | Sequence[str]) -> Grade:
    """Grades an answer canvas `d1 s1 ... dn sn`, given as a string (whitespace ignored) or a list of tokens, against
    the problem `digits`.

    Tokens other than single digits (e.g. a special token left in the answer) count as wrong.

    >>> grade_answer([1, 2], "1 1 2 3")
    Grade(exact=True, correct=2, total=2)
    >>> grade_answer([1, 2], "1123 4")
    Grade(exact=False, correct=2, total=2)
    """
    expected = [str(v) for v in answer_tokens(digits)]
    predicted = list("".join(answer.split())) if isinstance(answer, str) else [str(a) for a in answer]
    return Grade(exact=predicted == expected, correct=token_matches(predicted[1::2], expected[1::2]),
                 total=len(digits))


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
    """A character-level `PreTrainedTokenizerFast` over the ten digits (whitespace is ignored).

    >>> tok = build_tokenizer()
    >>> tok.encode("3 1 4"), tok.encode("314"), tok.decode([3, 1, 4])
    ([3, 1, 4], [3, 1, 4], '314')
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(dict(VOCAB), unk_token=None))
    tok.normalizer = normalizers.Replace(Regex(r"\s+"), "")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)


class RunningSumsDataset(Dataset):
    """Examples of one split: the interleaved canvas, the running sums as targets.

    Args:
        source: the `RunningSumsSource` that draws the problems.
        split: "train" or "val".
        vocab: the model's vocabulary layout (checked to hold the digits).
    """

    def __init__(self, source: RunningSumsSource, split: str, vocab: VocabLayout) -> None:
        self.source, self.split, self.vocab = source, split, vocab

    def __len__(self) -> int:
        return self.source.train_size if self.split == "train" else self.source.val_size

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for the {self.split} split of {len(self)} problems")
        return self.source.example(self.source.problem(self.split, index), self.vocab)


IN_PLACE = {"gen_length": 0, "infill": True}  # the sums are filled in where they stand on the canvas


def _in_place(overrides: dict[str, Any]) -> dict[str, Any]:
    """Sampler overrides without `gen_length` / `infill`, which the problems fix (a card preset may repeat them); other
    values of these two are an error naming the fix."""
    wrong = {k: overrides[k] for k in IN_PLACE if k in overrides and overrides[k] != IN_PLACE[k]}
    if wrong:
        raise ValueError(f"running-sums problems are filled in place (gen_length=0, infill=True), got {wrong}; "
                         "drop these options (--gen-length)")
    return {k: v for k, v in overrides.items() if k not in IN_PLACE}


@DATASETS.register("running-sums")
class RunningSumsSource:
    """Running sums mod 10 with n digits, n uniform in [n_min, n_max].

    Args:
        n_min: fewest digits per problem.
        n_max: most digits per problem.
        train_size: problems in the train split (drawn lazily from per-index seeds).
        val_size: held-out problems (their sizes spread evenly over [n_min, n_max]; never in the train split).
        seed: seed of both splits.
        eval_batch_size: problems per `generate` call in `evaluate`.

    >>> source = RunningSumsSource(n_min=2, n_max=3, val_size=4)
    >>> vocab = VocabLayout.build(len(source.tokenizer()), source.specials)
    >>> source.problem("val", 0)
    [5, 8]
    >>> ex = source.example([9, 2], vocab)
    >>> ex["ids"].tolist(), ex["maskable"].int().tolist()
    ([9, 9, 2, 1], [0, 1, 0, 1])
    """

    task = "text"
    specials = ("mask", "eos", "pad", "bos")

    def __init__(
        self,
        n_min: int = 32,
        n_max: int = 128,
        train_size: int = 200_000,
        val_size: int = 256,
        seed: int = 0,
        eval_batch_size: int = 32,
    ) -> None:
        if not 1 <= n_min <= n_max:
            raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
        if train_size < 1 or val_size < 1 or eval_batch_size < 1:
            raise ValueError(f"train_size, val_size and eval_batch_size must be >= 1, got {train_size}, {val_size}, "
                             f"{eval_batch_size}")
        self.n_min, self.n_max = n_min, n_max
        self.train_size, self.val_size, self.seed = train_size, val_size, seed
        self.eval_batch_size = eval_batch_size
        self._tokenizer = None

    def tokenizer(self) -> Any:
        """The ten digits as ids 0..9 (see `VOCAB`)."""
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
            digits = self._digits_from(rng, int(rng.integers(self.n_min, self.n_max + 1)))
            if bytes(digits) not in self._val_keys:
                return digits
        raise RuntimeError("could not draw a train problem outside the val set; widen [n_min, n_max]")

    def _digits(self, stream: int, index: int, n: int) -> list[int]:
        return self._digits_from(np.random.default_rng([self.seed, stream, index]), n)

    @staticmethod
    def _digits_from(rng: np.random.Generator, n: int) -> list[int]:
        return rng.integers(0, 10, size=n).tolist()

    # ------------------------------------------------------------------------------------------------ examples
    def example(self, digits: Sequence[int], vocab: VocabLayout) -> dict[str, Tensor]:
        """{"ids": `d1 s1 ... dn sn`, "maskable": True at the running sums}."""
        self._check_vocab(vocab)
        if not self.n_min <= len(digits) <= self.n_max:
            raise ValueError(f"problem has {len(digits)} digits; this source takes {self.n_min}..{self.n_max}")
        ids = torch.tensor([VOCAB[str(v)] for v in answer_tokens(digits)], dtype=torch.long)
        maskable = torch.zeros(len(ids), dtype=torch.bool)
        maskable[1::2] = True
        return {"ids": ids, "maskable": maskable}

    def dataset(self, split: str, vocab: VocabLayout) -> RunningSumsDataset:
        """`train_size` (train) or `val_size` (val) examples, generated on access."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self._check_vocab(vocab)
        return RunningSumsDataset(self, split, vocab)

    def _check_vocab(self, vocab: VocabLayout) -> None:
        check_vocab_fits(vocab, len(VOCAB), ("pad",), self.specials)

    # ------------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(
        self,
        model: Any,
        split: str = "val",
        limit: int | None = None,
        *,
        tokens_per_step: int = 1,
        batch_size: int | None = None,
        **sampler_overrides: Any,
    ) -> dict[str, float]:
        """Fills in the running sums and grades them: exact match overall and per length bucket, token accuracy.

        Problems are sorted by size and batched (left-padded canvases, the sums masked); each batch is decoded as
        one block in `ceil(n_max_of_batch / tokens_per_step)` steps unless `steps` / `block_length` are given (for
        samplers that take them: a block-diffusion model decodes its own blocks until done).

        Args:
            model: a `DiffusionModel` with this source's vocabulary.
            split: "val" or "train" (the first `limit` train problems).
            limit: grade this many problems (val: spread evenly over the sizes; None = all).
            tokens_per_step: sums committed per denoising step (1 = one forward pass per sum).
            batch_size: problems per `generate` call (default `eval_batch_size`).
            **sampler_overrides: passed to `model.generate` (steps, block_length, temperature, remasking, ...).

        Returns:
            {"exact_match", "token_accuracy" (of the running sums), "exact_match_n{lo}_{hi}" per bucket,
            "problems", "forward_passes" (per problem: the denoising passes of its batch; fewer with parallel
            decoding)}.

        >>> # RunningSumsSource().evaluate(model, limit=64, tokens_per_step=2)["exact_match"]
        """
        if tokens_per_step < 1:
            raise ValueError(f"tokens_per_step must be >= 1, got {tokens_per_step}")
        sampler_overrides = _in_place(sampler_overrides)
        problems = self._eval_problems(split, limit)
        order = sorted(range(len(problems)), key=lambda i: len(problems[i]))
        size = batch_size or self.eval_batch_size
        grades: list[Grade] = [None] * len(problems)  # type: ignore[list-item]
        passes = 0
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            answers, batch_passes = self._fill([problems[i] for i in idx], model, tokens_per_step, sampler_overrides)
            passes += batch_passes * len(idx)
            for i, answer in zip(idx, answers, strict=True):
                grades[i] = grade_answer(problems[i], answer)
        return {**self._summarize(problems, grades), "forward_passes": passes / len(problems)}

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

    def _fill(self, batch: list[list[int]], model: Any, tokens_per_step: int,
              overrides: dict[str, Any]) -> tuple[list[list[str]], int]:
        """The batch's answers and the forward passes that decoded it."""
        from mmdiff.tasks.text import left_pad

        vocab = model.vocab
        self._check_vocab(vocab)
        canvases = []
        for digits in batch:
            ex = self.example(digits, vocab)
            canvases.append(ex["ids"].masked_fill(ex["maskable"], vocab.mask_id))
        ids, attention = left_pad(canvases, vocab.pad_id)  # (B, L), (B, L)
        longest = max(len(p) for p in batch)
        sampler = overrides.get("sampler") or model.sampler_config.sampler
        accepts = SAMPLERS.get(sampler).accepts if isinstance(sampler, str) else sampler.accepts
        defaults = {"block_length": ids.shape[1], "steps": -(-longest // tokens_per_step)}  # one block
        options = {**{k: v for k, v in defaults.items() if accepts(k)}, **overrides}
        out = model.generate(ids.to(model.device), attention.to(model.device), **IN_PLACE, return_history=True,
                             **options)
        names = self.tokenizer().convert_ids_to_tokens(list(range(len(VOCAB))))
        answers = [[names[t] if 0 <= t < len(names) else f"<{t}>" for t in row[keep].tolist()]
                   for row, keep in zip(out.sequences.cpu(), attention, strict=True)]
        return answers, out.nfe

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
