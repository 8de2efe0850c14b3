"""Every recipe under configs/ parses, round-trips through YAML and builds its model from the data source's
tokenizer alone: no data is read or downloaded (the data cache points at an empty folder and `pip download` is
switched off). The parameter count is checked against an independent count from the core's shape."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import torch

import mmdiff.adapters  # noqa: F401  (registers the adapters)
import mmdiff.data.running_sums  # noqa: F401  (registers "running-sums")
import mmdiff.data.shakespeare  # noqa: F401  (registers "shakespeare")
from mmdiff.core.config import CoreConfig
from mmdiff.registry import ADAPTERS
from mmdiff.train import TrainConfig, build_model, build_source, load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "accelerate")  # accelerate/: launch configs


def expected_parameters(core: CoreConfig) -> int:
    """Embedding, per block (2 RMSNorms, q/k/v/o, optional qkv biases and qk-norms, SwiGLU), final norm, head."""
    d, hd = core.d_model, core.head_dim
    attention = d * core.n_heads * hd + 2 * d * core.n_kv_heads * hd + core.n_heads * hd * d
    attention += (core.n_heads + 2 * core.n_kv_heads) * hd if core.qkv_bias else 0
    attention += 2 * hd if core.qk_norm else 0
    block = 2 * d + attention + 3 * d * core.mlp_hidden_size
    head = 0 if core.tie_embeddings else core.vocab_size * d
    return core.vocab_size * d + core.n_layers * block + d + head


def test_the_toy_recipe_is_there():
    assert CONFIGS / "toy" / "copy-tiny.yaml" in RECIPES


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """An empty data cache and no downloads: building a model must not need the data."""
    monkeypatch.setenv("MMDIFF_DATA_DIR", str(tmp_path / "empty-data-cache"))

    def refuse(*args, **kwargs):
        raise AssertionError(f"building a model must not run subprocesses (tried {args[:1]})")

    monkeypatch.setattr(subprocess, "run", refuse)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_parses_and_builds_its_model(path, no_data):
    cfg = load_train_config(path)
    assert TrainConfig.from_yaml(cfg.to_yaml()) == cfg
    unregistered = [a.get("adapter") for a in cfg.model.adapters.values() if a.get("adapter") not in ADAPTERS]
    assert not unregistered, f"{path.name} uses adapter(s) {unregistered} that no module registers"
    assert cfg.name and cfg.train.out_dir
    source = build_source(cfg.data)
    if cfg.train.eval_metrics_limit > 0:
        assert callable(getattr(source, "evaluate", None)), f"{path}: eval_metrics_limit needs source.evaluate"
    if cfg.sampler.gen_length:  # 0: the entry only fills masks in place (infilling)
        n_blocks = cfg.sampler.gen_length // cfg.sampler.block_length
        assert cfg.sampler.gen_length % cfg.sampler.block_length == 0 and cfg.sampler.steps % n_blocks == 0, (
            f"{path}: sampler.gen_length must be a multiple of block_length and steps a multiple of the block count")

    if cfg.model.init_from is not None:
        # a later training stage: its starting weights are another run's output, checked against this recipe's core
        # by the trainer (and LoRA goes on top of them); here the recipe's own shape is built
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=None, lora=None, trainable=None))
    if cfg.model.adapters:  # pretrained towers / tokenizers come from an earlier stage's output; here the shape
        adapters = {m: {**a, "pretrained": None if isinstance(a.get("pretrained"), str) else False,
                        **({"save_encoder": True} if "save_encoder" in a else {})}  # random weights: keep them
                    if _has_pretrained_field(a["adapter"]) else a for m, a in cfg.model.adapters.items()}
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adapters=adapters))
    torch.manual_seed(0)
    model = build_model(cfg, source)
    tokenizer = source.tokenizer()
    vocab = model.vocab
    assert vocab.range("text") == (0, len(tokenizer))
    modality_ids = sum(stop - start for name, (start, stop) in vocab.ranges.items() if name != "text")
    assert vocab.size == len(tokenizer) + len(source.specials) + modality_ids
    assert [vocab.id(s) for s in source.specials] == list(range(len(tokenizer), len(tokenizer) + len(source.specials)))
    assert all(getattr(model.config.core, k) == v for k, v in cfg.model.core.items())
    assert model.config.name == cfg.name and model.config.task == source.task
    assert model.config.task_options["data"] == {"name": cfg.data.name, "options": cfg.data.options}
    assert model.sampler_config == cfg.sampler
    assert sum(p.numel() for p in model.core.parameters()) == expected_parameters(model.config.core)

    length = min(12, model.config.core.max_seq_len)
    ids = torch.randint(0, len(tokenizer), (2, length))
    logits = model.eval()(ids).logits
    assert logits.shape == (2, length, model.config.core.vocab_size) and torch.isfinite(logits).all()


def _has_pretrained_field(key: str) -> bool:
    """Whether the adapter registered as `key` loads pretrained weights (a config field `pretrained`); adapters
    trained from scratch (e.g. audio/logmel-conv) have none."""
    import mmdiff.adapters  # noqa: F401  (registers the adapters)
    from mmdiff.registry import ADAPTERS

    return "pretrained" in {f.name for f in dataclasses.fields(ADAPTERS.get(key).config_class)}
