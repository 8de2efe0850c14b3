"""The zoo card: what one named entry of the model zoo is (`zoo/<name>/card.yaml`), as a strict dataclass.

It lives below the model (`DiffusionModel.card` declares it) and is re-exported by `mmdiff.zoo`, which registers
the shipped cards and builds their models.

>>> card = ZooCard(name="my-model", task="text", description="A model trained elsewhere.", weights="my-org/my-model",
...                license="mit", params=1000, data="my data", recipe=None, reproduce=None, train_wall_time=None,
...                metrics={"bpb": 2.5}, metrics_command=None)
>>> card.shipped, card.key_metric
(False, ('bpb', 2.5))
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mmdiff.dataclass_io import from_dict, load_yaml
from mmdiff.hub import is_hub_id

__all__ = ["CARD_NAME", "SHIPPED", "ZooCard", "load_card"]

CARD_NAME = "card.yaml"
SHIPPED = "shipped"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class ZooCard:
    """One zoo entry, as written in `zoo/<name>/card.yaml`.

    Args:
        name: zoo name (the folder name for shipped entries).
        task: task name in `mmdiff.registry.TASKS` ("text", ...).
        description: one paragraph: what the model is and does.
        weights: "shipped" (the checkpoint files beside the card) or a hub repo id "org/name".
        license: license of the weights.
        params: parameter count of the core.
        data: what it was trained on.
        recipe: path of its training recipe (`configs/*.yaml`); null for entries not trained by this project.
        reproduce: command that trains it; null for entries not trained here.
        train_wall_time: measured training wall time and hardware, e.g. "5 min on 2 CPU cores".
        metrics: metric name -> measured value (the first one is the entry's key metric).
        metrics_command: the repo command that measures `metrics`.
        revision: hub revision (branch, tag or commit) for hub weights.
        converter: foreign checkpoint layout name in `CONVERTERS` (hub checkpoints not in mmdiff's format).
        sampler: recommended sampler presets, preset name -> `generate` keyword arguments.
        tags: free-form search tags.
        special_tokens: special-token name -> id of a foreign checkpoint (mask, eos, eot, pad, bos, ...), checked
            against the loaded vocabulary.
        chat_template: Jinja chat template used when the tokenizer files carry none (`mmdiff generate --chat`).
    """

    name: str
    task: str
    description: str
    weights: str
    license: str
    params: int
    data: str
    recipe: str | None
    reproduce: str | None
    train_wall_time: str | None
    metrics: dict[str, float]
    metrics_command: str | None
    revision: str | None = None
    converter: str | None = None
    sampler: dict[str, dict[str, Any]] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    special_tokens: dict[str, int] = field(default_factory=dict)
    chat_template: str | None = None
    folder: Path | None = field(default=None, init=False, repr=False, compare=False)  # where card.yaml lives

    def __post_init__(self) -> None:
        where = f"zoo card {self.name!r}"
        if not _NAME.match(self.name or ""):
            raise ValueError(f"{where}: name must be letters, digits, '.', '_' or '-' (no '/'), got {self.name!r}")
        if self.weights != SHIPPED and not is_hub_id(self.weights):
            raise ValueError(f"{where}: weights must be 'shipped' or a hub repo id 'org/name', got {self.weights!r}")
        if isinstance(self.params, bool) or self.params < 1:
            raise ValueError(f"{where}: params must be a positive parameter count, got {self.params!r}")
        for key, value in self.metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: metric {key!r} must be a number, got {value!r}")
        for token, value in self.special_tokens.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}: special token {token!r} must be a non-negative id, got {value!r}")
        for preset, options in self.sampler.items():
            if not isinstance(options, Mapping):
                raise ValueError(f"{where}: sampler preset {preset!r} must be a mapping of generate arguments")
        if self.shipped:
            blank = [f for f in ("recipe", "reproduce", "train_wall_time", "metrics_command") if not getattr(self, f)]
            blank += ["metrics"] if not self.metrics else []
            if blank:
                raise ValueError(f"{where}: shipped entries are trained here and must give {', '.join(blank)}")

    @property
    def shipped(self) -> bool:
        """True when the weights are the files beside the card."""
        return self.weights == SHIPPED

    @property
    def key_metric(self) -> tuple[str, float] | None:
        """The card's first metric (its headline number), or None."""
        return next(iter(self.metrics.items()), None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "zoo card") -> ZooCard:
        """Parses a card strictly: unknown and missing fields are errors that name them."""
        return from_dict(cls, data, where=where)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=119)


def load_card(path: str | os.PathLike) -> ZooCard:
    """Reads a card from `card.yaml` (or a folder holding one); `card.folder` is set to the card's folder."""
    import yaml

    path = Path(path)
    if path.is_dir():
        path = path / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"zoo card {path} not found")
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"zoo card {path} is not valid YAML: {err}") from err
    card = ZooCard.from_dict(data or {}, where=f"zoo card {path}")
    card.folder = path.parent
    return card
