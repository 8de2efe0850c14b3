"""Shared test fixtures: a tiny byte-level BPE tokenizer, tiny models and checkpoint folders written on the fly, a
fake offline Hugging Face cache, and an isolated copy of the zoo registry.

Tests never touch the network: the hub is switched off for the whole session.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported anywhere
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from mmdiff.core.config import CoreConfig  # noqa: E402
from mmdiff.modeling import DiffusionModel, ModelConfig, SamplerConfig  # noqa: E402
from mmdiff.vocab import VocabLayout  # noqa: E402

TOKENIZER_CORPUS = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
    "And by opposing end them. To die: to sleep;",
    "1 2 3 4 5 6 7 8 9 0 = + - the quick brown fox jumps over the lazy dog",
]
TINY_SPECIALS = ("mask", "eos", "pad", "bos")


def build_tiny_tokenizer(vocab_size: int = 300) -> Any:
    """A byte-level BPE tokenizer (any text round-trips) trained in milliseconds, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TOKENIZER_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    """A 300-token byte-level BPE tokenizer."""
    return build_tiny_tokenizer()


@pytest.fixture
def make_tiny_model(tiny_tokenizer: Any) -> Callable[..., DiffusionModel]:
    """Factory: `make_tiny_model(seed=0, name=None, task_options=None, sampler=None, **core_fields)`.

    The model uses `tiny_tokenizer`, specials (mask, eos, pad, bos) after the text ids, d_model 32, 2 layers and
    sampler defaults gen_length 8, steps 8, block_length 4 unless overridden.
    """

    def make(
        seed: int = 0,
        *,
        name: str | None = None,
        task_options: dict[str, Any] | None = None,
        sampler: dict[str, Any] | None = None,
        tokenizer: Any = tiny_tokenizer,
        **core: Any,
    ) -> DiffusionModel:
        torch.manual_seed(seed)
        vocab = VocabLayout.build(text_size=len(tokenizer), specials=TINY_SPECIALS)
        core = {"d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 128, **core}
        config = ModelConfig(core=CoreConfig(vocab=vocab, **core), task="text", name=name,
                             task_options=dict(task_options or {}))
        sampler_config = SamplerConfig(**{"gen_length": 8, "steps": 8, "block_length": 4, **(sampler or {})})
        return DiffusionModel(config, tokenizer=tokenizer, sampler_config=sampler_config).eval()

    return make


@pytest.fixture
def make_checkpoint(tmp_path: Path, make_tiny_model: Callable[..., DiffusionModel]) -> Callable[..., Path]:
    """Factory: `make_checkpoint(directory=None, **make_tiny_model_kwargs) -> folder` saves a tiny model."""
    counter = iter(range(1_000_000))

    def make(directory: str | os.PathLike | None = None, **kwargs: Any) -> Path:
        folder = Path(directory) if directory is not None else tmp_path / f"checkpoint-{next(counter)}"
        make_tiny_model(**kwargs).save_pretrained(folder)
        return folder

    return make


@pytest.fixture
def tiny_checkpoint(make_checkpoint: Callable[..., Path]) -> Path:
    """A saved tiny model (seed 0) with its tokenizer and sampler_config.json."""
    return make_checkpoint()


@pytest.fixture
def fake_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_checkpoint: Callable[..., Path]):
    """Factory: `fake_hub_cache(repo_id="tiny-org/tiny-model", commit=..., **model_kwargs) -> snapshot folder`.

    Writes a tiny checkpoint into a Hugging Face cache layout (`models--org--name/snapshots/<commit>/...` plus
    `refs/main`) under a temporary `HF_HUB_CACHE`, with `HF_HUB_OFFLINE=1`: hub code must resolve it offline.
    """
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def make(repo_id: str = "tiny-org/tiny-model", commit: str = "0123456789abcdef0123456789abcdef01234567",
             **kwargs: Any) -> Path:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = make_checkpoint(repo / "snapshots" / commit, **kwargs)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        return snapshot

    make.cache = cache
    return make


@pytest.fixture
def isolated_zoo(monkeypatch: pytest.MonkeyPatch):
    """The zoo registry as a throwaway copy: cards registered in a test vanish after it. Returns `mmdiff.zoo`."""
    import mmdiff.zoo as zoo
    from mmdiff.registry import Registry

    zoo.list_models()  # discover the shipped cards first
    copy = Registry(zoo._MODELS.kind)
    for name in zoo._MODELS.list():
        copy.add(name, zoo._MODELS.get(name))
    monkeypatch.setattr(zoo, "_MODELS", copy)
    return zoo


def card_fields(name: str = "zz-test-model", **overrides: Any) -> dict[str, Any]:
    """The fields of a valid hub-weights zoo card, as card.yaml would hold them."""
    fields = {
        "name": name,
        "task": "text",
        "description": "A tiny random model used by the tests.",
        "weights": "tiny-org/tiny-model",
        "license": "apache-2.0",
        "params": 1234,
        "data": "nothing: random init",
        "recipe": None,
        "reproduce": None,
        "train_wall_time": None,
        "metrics": {},
        "metrics_command": None,
    }
    fields.update(overrides)
    return fields


SHIPPED_FIELDS = {
    "weights": "shipped",
    "recipe": "configs/zz.yaml",
    "reproduce": "mmdiff train configs/zz.yaml",
    "train_wall_time": "0 s (random init)",
    "metrics": {"exact_match": 0.25, "bpb": 3.5},
    "metrics_command": "mmdiff eval zz",
}


@pytest.fixture
def make_card_fields() -> Callable[..., dict[str, Any]]:
    """Factory: `make_card_fields(name="zz-test-model", shipped=False, **fields) -> dict` (valid card.yaml data)."""

    def make(name: str = "zz-test-model", *, shipped: bool = False, **overrides: Any) -> dict[str, Any]:
        return card_fields(name, **{**(SHIPPED_FIELDS if shipped else {}), **overrides})

    return make


@pytest.fixture
def make_card() -> Callable[..., Any]:
    """Factory: `make_card(name="zz-test-model", shipped=False, **fields) -> ZooCard`.

    Hub weights ("tiny-org/tiny-model") by default; `shipped=True` fills the fields a shipped entry must give.
    """
    from mmdiff.zoo import ZooCard

    def make(name: str = "zz-test-model", *, shipped: bool = False, **overrides: Any) -> Any:
        return ZooCard.from_dict(card_fields(name, **{**(SHIPPED_FIELDS if shipped else {}), **overrides}))

    return make


@torch.no_grad()
def randomize_weights(model: torch.nn.Module) -> torch.nn.Module:
    """O(1) random weights everywhere but the norms (N(0, 1/fan_in)), so every part of a computation matters."""
    for name, p in model.named_parameters():
        if not name.endswith(("norm.weight", "norm.bias")):
            p.normal_(0, 1 / math.sqrt(p.shape[-1]))
    return model
