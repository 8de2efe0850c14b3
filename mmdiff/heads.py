"""Output heads: which ids of the shared vocabulary score a canvas's targets, found by name in `mmdiff.registry.HEADS`.

The core's output projection scores every id of one vocabulary (text ids, specials, then a range per discrete
modality; `mmdiff.vocab.VocabLayout`). A head picks the rows of that projection a task decodes: the LM head the whole
vocabulary (text generation, LLaDA / Dream), a range head one modality's ids only (MMaDA's and Lumina-DiMOO's image
codes, Yang et al. 2025 and Xin et al. 2025; the action bins a VLA adds). Logits are computed only at the positions
a loss or a sampler asks for and only for the head's rows, so a restricted head costs (positions x range) instead of
(positions x vocabulary), and sampling through it can never emit an id outside its range.

A canvas names its head (`Canvas.head`), resolved to its id range (`Canvas.vocab_range`) when the task builds it; a
new modality registers one more head:

>>> from mmdiff.vocab import VocabLayout
>>> vocab = VocabLayout.build(text_size=10, ranges={"image": 4})
>>> get_head("image").id_range(vocab), get_head("lm").id_range(vocab) is None
((14, 18), True)
>>> get_head("action")  # the action codes of a VLA (`mmdiff.adapters.actions`)
RangeHead('action')
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mmdiff.registry import HEADS

__all__ = ["Head", "LMHead", "RangeHead", "get_head", "head_for_codes"]


class Head:
    """Scores canvas positions over an id range of the shared vocabulary (None: the whole vocabulary).

    Attributes:
        name: the registry key.
    """

    name: str = ""

    def id_range(self, vocab: Any) -> tuple[int, int] | None:
        """[start, stop) of the ids this head scores in `vocab`, or None for the whole vocabulary."""
        raise NotImplementedError

    def logits(self, core: Any, hidden: Tensor, at: Tensor | None = None) -> Tensor:
        """Logits of the head's ids at the positions `at` (see `MaskedDiffusionTransformer.head_logits`): hidden
        (B, L, d_model) -> (B, L, V_head), (N, V_head) for a boolean `at`, (B, K, V_head) for indices."""
        return core.head_logits(hidden, at, self.id_range(core.config.vocab))

    def to_vocab_ids(self, indices: Tensor, vocab: Any) -> Tensor:
        """Column indices of this head's logits -> ids of the shared vocabulary."""
        span = self.id_range(vocab)
        return indices if span is None else indices + span[0]

    def allowed_ids(self, vocab: Any) -> range | None:
        """The ids a sampler may emit through this head (None: any)."""
        span = self.id_range(vocab)
        return None if span is None else range(*span)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class LMHead(Head):
    """The language-model head: the whole vocabulary."""

    name = "lm"

    def id_range(self, vocab: Any) -> None:
        return None


class RangeHead(Head):
    """A head restricted to one named range of the vocabulary (a discrete modality: image codes, action bins).

    Args:
        range_name: the `VocabLayout` range it scores (its registry name too).
    """

    def __init__(self, range_name: str) -> None:
        self.name = range_name

    def id_range(self, vocab: Any) -> tuple[int, int]:
        start, stop = vocab.ranges.get(self.name, (0, 0))
        if stop <= start:
            raise ValueError(f"the vocabulary has no {self.name!r} ids (ranges: {dict(vocab.ranges)}); the "
                             f"{self.name!r} head needs the layout built with ranges={{{self.name!r}: N}}")
        return start, stop


def get_head(name: str | None) -> Head:
    """The head registered as `name` (None: the LM head); an unknown name raises KeyError naming the known ones."""
    return HEADS.get("lm" if name is None else name)


HEADS.add("lm", LMHead())
HEADS.add("image", RangeHead("image"))
HEADS.add("action", RangeHead("action"))


def head_for_codes(name: str | None, vocab: Any, codes_range: str, *, codes: str, option: str) -> Head:
    """The head `name` of a task that decodes one discrete modality's codes (the `codes_range` range of `vocab`):
    a ValueError naming `option` (the task option that picks the head) when the head scores other ids."""
    head = get_head(name)
    span, wanted = head.id_range(vocab), vocab.range(codes_range)
    if span != wanted:
        raise ValueError(f"the {head.name!r} head scores ids {span} but the {codes}'s codes are {wanted}; set "
                         f"{option} to the head of the {codes_range!r} range")
    return head
