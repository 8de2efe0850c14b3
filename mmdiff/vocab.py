"""The one discrete vocabulary shared by every task: text ids, special ids, then one range per discrete modality.

Offsets are computed once, when a model is built, and saved in its `config.json`; code asks the layout for ids
(`layout.mask_id`, `layout.range("image")`) instead of writing numbers.

>>> layout = VocabLayout.build(text_size=256, specials=["mask", "eos", "pad", "bos"], ranges={"image": 16})
>>> layout.mask_id, layout.range("image"), layout.size
(256, (260, 276), 276)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["VocabLayout", "REQUIRED_SPECIALS"]

REQUIRED_SPECIALS = ("mask",)


@dataclass
class VocabLayout:
    """Where each kind of token lives in the shared vocabulary.

    Args:
        size: number of ids the layout uses (the embedding table may be larger, e.g. padded to a multiple of 64).
        special: special-token name -> id (`mask` is required; `eos`, `pad`, `bos`, `eot`, modality markers...).
        ranges: modality name -> half-open id range `[start, stop)`; `text` covers the text tokenizer.
    """

    size: int
    special: dict[str, int] = field(default_factory=dict)
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ranges = {k: (int(v[0]), int(v[1])) for k, v in self.ranges.items()}
        self.special = {k: int(v) for k, v in self.special.items()}
        self.validate()

    @classmethod
    def build(
        cls,
        text_size: int,
        specials: Iterable[str] = ("mask", "eos", "pad", "bos"),
        ranges: Mapping[str, int] | None = None,
    ) -> VocabLayout:
        """Lays out text ids first, then one id per special, then each modality range in order."""
        ranges = dict(ranges or {})
        if text_size < 0 or any(count < 0 for count in ranges.values()):
            raise ValueError(f"vocabulary sizes must be >= 0, got text_size={text_size}, ranges={ranges}")
        if "text" in ranges:
            raise ValueError("'text' is the text tokenizer's range (set by text_size); name modality ranges otherwise")
        specials = list(specials)
        if len(set(specials)) != len(specials):
            raise ValueError(f"special token names repeat in {specials}; give each special once")
        next_id = text_size
        special = {}
        for name in specials:
            special[name] = next_id
            next_id += 1
        spans = {"text": (0, text_size)}
        for name, count in ranges.items():
            spans[name] = (next_id, next_id + count)
            next_id += count
        return cls(size=next_id, special=special, ranges=spans)

    def validate(self) -> None:
        for name in REQUIRED_SPECIALS:
            if name not in self.special:
                raise ValueError(
                    f"vocabulary layout has no {name!r} id; add it to `special` (e.g. special={{'{name}': ...}})"
                )
        for name, (start, stop) in self.ranges.items():
            if not 0 <= start <= stop <= self.size:
                raise ValueError(f"vocabulary range {name!r} = [{start}, {stop}) lies outside [0, {self.size})")
        spans = sorted(self.ranges.items(), key=lambda kv: kv[1])
        for (a, (_, a_stop)), (b, (b_start, _)) in zip(spans, spans[1:], strict=False):
            if b_start < a_stop:
                raise ValueError(f"vocabulary ranges {a!r} and {b!r} overlap; give each modality its own ids")
        for name, idx in self.special.items():
            if not 0 <= idx < self.size:
                raise ValueError(f"special token {name!r} has id {idx}, outside the vocabulary [0, {self.size})")
            for rname, (start, stop) in self.ranges.items():
                if rname != "text" and start <= idx < stop:
                    raise ValueError(f"special token {name!r} (id {idx}) falls inside the {rname!r} range")

    def id(self, name: str) -> int:
        """The id of special token `name`."""
        if name not in self.special:
            raise KeyError(f"no special token {name!r} in this vocabulary; known: {', '.join(sorted(self.special))}")
        return self.special[name]

    def get_id(self, name: str) -> int | None:
        return self.special.get(name)

    def range(self, name: str) -> tuple[int, int]:
        """The half-open id range of modality `name`."""
        if name not in self.ranges:
            raise KeyError(f"no vocabulary range {name!r}; known ranges: {', '.join(sorted(self.ranges))}")
        return self.ranges[name]

    @property
    def mask_id(self) -> int:
        return self.special["mask"]

    @property
    def eos_id(self) -> int | None:
        return self.special.get("eos")

    @property
    def pad_id(self) -> int | None:
        return self.special.get("pad")

    @property
    def bos_id(self) -> int | None:
        return self.special.get("bos")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (ranges as lists), the inverse of `from_dict`."""
        ranges = {k: list(v) for k, v in self.ranges.items()}
        return {"size": self.size, "special": dict(self.special), "ranges": ranges}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VocabLayout:
        unknown = set(data) - {"size", "special", "ranges"}
        if unknown:
            raise ValueError(f"unknown vocabulary layout field(s) {sorted(unknown)}; expected size, special, ranges")
        if "size" not in data:
            raise ValueError("vocabulary layout has no 'size' field (the number of ids the layout uses)")
        return cls(size=int(data["size"]), special=dict(data.get("special", {})), ranges=dict(data.get("ranges", {})))
