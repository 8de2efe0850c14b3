"""The model zoo: named entries, each described by a card, and the factory that builds them (after timm's
`_registry.py` / `_factory.py`: a small registry of named entries and a thin factory whose errors name the fix).

An entry is a folder `zoo/<name>/` (shipped inside the package as `mmdiff.zoo_entries`) holding `card.yaml` and,
for entries trained by this project, the checkpoint files beside it (`config.json`, `model.safetensors`,
`sampler_config.json`, tokenizer files, `README.md`). Other entries point at a hub repo (`weights: org/name`).
Third parties add their own cards with `register_model`.

Reading the cards needs neither torch nor any model code (`mmdiff list` runs on them alone); building a model
imports them on first use.

>>> import mmdiff.zoo as zoo
>>> isinstance(zoo.list_models(), list)
True
>>> # model = zoo.create_model("shakespeare-tiny")          # a zoo name
>>> # model = zoo.create_model("runs/my-run/final")          # a local checkpoint folder
>>> # model = zoo.create_model("org/name")                   # a hub repo id
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmdiff.card import CARD_NAME, SHIPPED, ZooCard, load_card
from mmdiff.hub import cached_checkpoint, is_hub_id, resolve_checkpoint
from mmdiff.registry import CONVERTERS, Registry

if TYPE_CHECKING:  # torch and the model are imported where a model is built, not by listing the zoo
    import torch

    from mmdiff.modeling import DiffusionModel, ModelConfig

__all__ = [
    "CARD_NAME",
    "CONVERTERS",
    "SHIPPED",
    "ZooCard",
    "checkpoint_folder",
    "core_summary",
    "count_parameters",
    "create_model",
    "format_params",
    "list_models",
    "load_card",
    "model_info",
    "register_model",
    "save_zoo_entry",
    "write_card_readme",
    "zoo_root",
]

README_NAME = "README.md"
# the checkpoint file names of `mmdiff.modeling` (CONFIG_NAME, WEIGHTS_NAME), spelled here so that reading the cards
# needs no torch; tests/test_zoo.py checks that the two agree
_CONFIG_NAME = "config.json"
_WEIGHTS_NAME = "model.safetensors"
LIST_HINT = "list all entries with mmdiff.list_models() or `mmdiff list`"


# ------------------------------------------------------------------------------------------------- discovery
_MODELS = Registry("zoo model")
_discovered = False


def zoo_root() -> Path:
    """The folder of the shipped zoo entries (`mmdiff.zoo_entries`), in a checkout or an installed package."""
    root = importlib.resources.files("mmdiff.zoo_entries")
    if not isinstance(root, Path):  # e.g. a zipped install: checkpoint files must be real files to load
        raise FileNotFoundError(f"the zoo entries live in {root!s}, which is not a folder; install mmdiff unzipped")
    return root


def _discover() -> None:
    """Registers every shipped card once (lazily, so a broken card never breaks `import mmdiff`)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for entry in sorted(zoo_root().iterdir()):
        if not (entry / CARD_NAME).is_file():
            continue
        card = load_card(entry)
        if card.name != entry.name:
            raise ValueError(
                f"zoo card {entry / CARD_NAME} is named {card.name!r}; name it {entry.name!r} like its folder"
            )
        _MODELS.add(card.name, card)


def register_model(
    card: ZooCard | Mapping[str, Any] | str | os.PathLike,
    *,
    folder: str | os.PathLike | None = None,
    override: bool = False,
) -> ZooCard:
    """Adds a third-party zoo entry, so `list_models`, `model_info` and `create_model` find it by name.

    Args:
        card: a `ZooCard`, a dict of card fields, or the path of a `card.yaml` (or of its folder).
        folder: the checkpoint folder of a "shipped" card (default: the folder of its card.yaml).
        override: replace an entry of the same name.

    >>> card = ZooCard(name="my-model", task="text", description="A model trained elsewhere.",
    ...                weights="my-org/my-model", license="mit", params=1000, data="my data", recipe=None,
    ...                reproduce=None, train_wall_time=None, metrics={}, metrics_command=None)
    >>> register_model(card, override=True).name
    'my-model'
    """
    _discover()
    if isinstance(card, (str, os.PathLike)):
        card = load_card(card)
    elif isinstance(card, Mapping):
        card = ZooCard.from_dict(card)
    elif not isinstance(card, ZooCard):
        raise TypeError(f"register_model takes a ZooCard, a dict of card fields or a card.yaml path, got {card!r}")
    if folder is not None:
        card.folder = Path(folder)
    if card.shipped and (card.folder is None or not (card.folder / _CONFIG_NAME).is_file()):
        raise ValueError(
            f"zoo card {card.name!r} has weights: shipped, so it needs its checkpoint folder: "
            "register_model(card, folder=<folder with config.json and model.safetensors>)"
        )
    _MODELS.add(card.name, card, override=override)
    return card


# ------------------------------------------------------------------------------------------------- queries
def _available_offline(card: ZooCard) -> bool:
    if card.shipped:
        return card.folder is not None and (card.folder / _WEIGHTS_NAME).is_file()
    folder = cached_checkpoint(card.weights, card.revision)
    return folder is not None and any(folder.glob("*.safetensors"))


def list_models(pattern: str | list[str] = "*", *, pretrained: bool = False) -> list[str]:
    """Zoo names matching fnmatch pattern(s), in natural order (`m-2` before `m-10`).

    Args:
        pattern: one pattern or a list of them (a name matching any is listed).
        pretrained: list only entries whose weights load right now without network: shipped weights, or hub
            weights already in the local hub cache.

    >>> list_models("*no-such-model*")
    []
    """
    _discover()
    names = _MODELS.list(pattern)
    if pretrained:
        names = [n for n in names if _available_offline(_MODELS.get(n))]
    return names


def model_info(name: str) -> ZooCard:
    """The card of zoo entry `name`; an unknown name raises KeyError listing the closest names.

    >>> # model_info("shakespeare-tiny").metrics
    """
    _discover()
    if name not in _MODELS:
        raise KeyError(f"{_MODELS.unknown_message(name)}. {LIST_HINT}")
    return _MODELS.get(name)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (tied matrices counted once)."""
    return sum(p.numel() for p in model.parameters())


def format_params(n: int) -> str:
    """Short human form of a parameter count: 812 -> '812', 5_300_000 -> '5.3M'.

    >>> format_params(5_300_000), format_params(81_200), format_params(8_000_000_000)
    ('5.3M', '81.2K', '8.0B')
    """
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


# ------------------------------------------------------------------------------------------------- factory
def checkpoint_folder(card: ZooCard) -> Path:
    """The checkpoint folder of a zoo entry: the folder beside a shipped card, or the (downloaded) hub snapshot."""
    if card.shipped:
        if card.folder is None or not (card.folder / _CONFIG_NAME).is_file():
            raise FileNotFoundError(f"zoo entry {card.name!r} ships no {_CONFIG_NAME} beside its card ({card.folder})")
        return card.folder
    return resolve_checkpoint(card.weights, card.revision)


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'")
    return value


def _load(folder: Path, card: ZooCard | None, *, pretrained: bool, device: Any, dtype: Any) -> DiffusionModel:
    from mmdiff.convert import detect_layout  # importing it registers the converters
    from mmdiff.modeling import DiffusionModel

    layout = card.converter if card is not None and card.converter else detect_layout(folder)
    if layout is not None:  # a foreign layout (LLaDA, Dream, MMaDA): converted natively, no remote code
        specials = card.special_tokens if card is not None else None
        model = CONVERTERS.get(layout).load(folder, pretrained=pretrained, device=device, dtype=dtype,
                                            specials=specials or None)
    else:
        model = DiffusionModel.from_pretrained(folder, device=device, dtype=dtype, pretrained=pretrained)
    model.card = card
    model.checkpoint_folder = folder
    return model


def create_model(
    name_or_path: str | os.PathLike,
    *,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    lora: str | os.PathLike | None = None,
) -> DiffusionModel:
    """Builds a model from a zoo name, a local checkpoint folder or a hub repo id.

    Args:
        name_or_path: zoo name (`list_models()`), checkpoint folder, or hub repo id "org/name"; a LoRA folder
            (`adapter_config.json`, no `config.json`) loads its recorded base with the LoRA on it.
        pretrained: load the trained weights; False builds the architecture from `config.json` with random init.
        device: where to put the model.
        dtype: parameter dtype (torch.dtype or its name, e.g. "bfloat16"); None keeps float32.
        lora: a LoRA folder (PEFT's `adapter_config.json` + `adapter_model.safetensors`, see `mmdiff.lora`) to load
            onto the model, strictly: a folder trained on another base is an error.

    Returns:
        The model in eval mode; `model.card` is its `ZooCard` (None for a folder or hub id without a card).

    Raises:
        KeyError: unknown name (the message lists the closest zoo names).

    >>> # model = create_model("shakespeare-tiny")
    >>> # model.card.metrics
    >>> # tuned = create_model("mnist-grid-vlm", lora="runs/my-lora")
    """
    from mmdiff.lora import is_lora_folder, load_lora, lora_base

    _discover()
    text = os.fspath(name_or_path)
    if text not in _MODELS and not (Path(text) / _CONFIG_NAME).is_file() and is_lora_folder(text):
        if lora is not None:
            raise ValueError(f"{text} is itself a LoRA folder; pass its base model as name_or_path")
        base = lora_base(text)
        if base is None:
            raise ValueError(f"LoRA folder {text} records no base (base_model_name_or_path); pass the base: "
                             f"create_model(base, lora={text!r})")
        name_or_path, lora = base, text
    if lora is not None and not pretrained:
        raise ValueError("lora= needs pretrained=True: a LoRA adapts the base's trained weights")
    model = _create(name_or_path, pretrained=pretrained, device=device, dtype=dtype)
    return model if lora is None else load_lora(model, lora).eval()


def _create(name_or_path: str | os.PathLike, *, pretrained: bool, device: Any, dtype: Any) -> DiffusionModel:
    dtype = _as_dtype(dtype)
    _discover()
    text = os.fspath(name_or_path)
    if text in _MODELS:
        card = _MODELS.get(text)
        return _load(checkpoint_folder(card), card, pretrained=pretrained, device=device, dtype=dtype)
    path = Path(text).expanduser()
    if path.is_dir():
        card = load_card(path) if (path / CARD_NAME).is_file() else None
        return _load(path, card, pretrained=pretrained, device=device, dtype=dtype)
    if path.exists():
        raise ValueError(f"{path} is a file; pass the checkpoint folder that holds {_CONFIG_NAME} and {_WEIGHTS_NAME}")
    if is_hub_id(text):
        return _load(resolve_checkpoint(text), None, pretrained=pretrained, device=device, dtype=dtype)
    raise KeyError(
        f"{_MODELS.unknown_message(text)}. {text!r} is neither a zoo name, a checkpoint folder nor a hub repo id "
        f"('org/name'); {LIST_HINT}"
    )


# ------------------------------------------------------------------------------------------------- model cards
def core_summary(config: ModelConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The headline numbers of a model config (for model cards and `mmdiff info`)."""
    from mmdiff.modeling import ModelConfig

    if isinstance(config, Mapping):
        config = ModelConfig.from_dict(dict(config))
    core, vocab = config.core, config.core.vocab
    return {
        "architecture": config.architecture,
        "task": config.task,
        "d_model": core.d_model,
        "n_layers": core.n_layers,
        "n_heads": core.n_heads,
        "n_kv_heads": core.n_kv_heads,
        "mlp_hidden_size": core.mlp_hidden_size,
        "vocab_size": core.vocab_size,
        "text_vocab": vocab.ranges.get("text", (0, 0))[1] - vocab.ranges.get("text", (0, 0))[0],
        "special_tokens": ", ".join(f"{k}={v}" for k, v in vocab.special.items()),
        "max_seq_len": core.max_seq_len,
        "rope_theta": core.rope_theta,
        "logits_shift": core.logits_shift,
        "qkv_bias": core.qkv_bias,
        "qk_norm": core.qk_norm,
        "tie_embeddings": core.tie_embeddings,
    }


def _weights_line(card: ZooCard) -> str:
    if card.shipped:
        return "shipped with mmdiff (the files beside this card)"
    rev = f" @ `{card.revision}`" if card.revision else ""
    conv = f", converted from its `{card.converter}` layout" if card.converter else ""
    return f"hub repo [{card.weights}](https://huggingface.co/{card.weights}){rev}{conv}"


def _table(rows: list[tuple[str, Any]], header: tuple[str, str] = ("", "")) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    return lines + [f"| {k} | {v} |" for k, v in rows]


def write_card_readme(card: ZooCard, config: ModelConfig | Mapping[str, Any]) -> str:
    """Renders the README.md model card of an entry from its card and model config (so the two never disagree).

    >>> # (folder / "README.md").write_text(write_card_readme(model_info(name), model.config))
    """
    tags = ", ".join(["mmdiff", "masked-diffusion", card.task, *card.tags])
    prompt = '--prompt "Hello"' if card.task == "text" else ""
    lines = ["---", f"license: {card.license}", "library_name: mmdiff", f"tags: [{tags}]", "---", "",
             f"# {card.name}", "", card.description.strip(), ""]
    lines += _table([("task", card.task), ("parameters", f"{card.params:,} ({format_params(card.params)})"),
                     ("weights", _weights_line(card)), ("license", card.license), ("training data", card.data)])
    lines += ["", "## Metrics", ""]
    if card.metrics:
        lines += _table([(k, v) for k, v in card.metrics.items()], ("metric", "value"))
        lines += ["", f"Measured with `{card.metrics_command}`."] if card.metrics_command else []
    else:
        lines += ["No metrics measured by mmdiff yet."]
    lines += ["", "## Use", "", "```python", "import mmdiff", "", f'model = mmdiff.create_model("{card.name}")',
              "```", "", "```bash", f"mmdiff generate {card.name} {prompt}".rstrip(), "```"]
    lines += ["", "## Architecture", ""] + _table(list(core_summary(config).items()), ("field", "value"))
    if card.sampler:
        lines += ["", "## Sampler presets", ""]
        presets = [(k, ", ".join(f"{a}={b}" for a, b in v.items())) for k, v in card.sampler.items()]
        lines += _table(presets, ("preset", "generate arguments"))
    lines += ["", "## Training", ""]
    lines += _table([("data", card.data), ("recipe", f"`{card.recipe}`" if card.recipe else "not trained by mmdiff"),
                     ("reproduce", f"`{card.reproduce}`" if card.reproduce else "-"),
                     ("wall time", card.train_wall_time or "-")])
    lines += ["", "_Generated from `card.yaml` by `mmdiff.zoo.write_card_readme`; edit the card, not this file._", ""]
    return "\n".join(lines)


def save_zoo_entry(model: DiffusionModel, card: ZooCard, directory: str | os.PathLike) -> Path:
    """Writes a shipped zoo entry: the checkpoint folder, `card.yaml` and the generated `README.md`.

    The card's `params` must equal the model's parameter count.

    >>> # save_zoo_entry(model, card, "zoo/shakespeare-tiny")
    """
    n = count_parameters(model)
    if card.params != n:
        raise ValueError(f"zoo card {card.name!r} says params={card.params} but the model has {n}; fix the card")
    directory = Path(directory)
    model.save_pretrained(directory, card=write_card_readme(card, model.config))
    from mmdiff.io import atomic_write

    text = card.to_yaml()
    atomic_write(directory / CARD_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory
