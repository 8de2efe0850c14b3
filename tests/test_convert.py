"""Foreign checkpoints (LLaDA, MMaDA, Dream) loaded natively and written back.

Every checkpoint here is a tiny random one written in the exact foreign layout (config.json with the real field
names, safetensors with the real tensor names, written by the official `safetensors` library, sharded with an index
where noted). Logits are checked against plain-PyTorch re-computations written below directly from the layout
descriptions (float64, from the foreign tensors; nothing goes through the core).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from mmdiff.convert import (
    DREAM,
    LLADA,
    MMADA,
    Converter,
    CorruptCheckpointError,
    detect_layout,
    load_foreign,
    save_foreign,
    scan_checkpoint,
)
from mmdiff.core.config import CoreConfig
from mmdiff.io import StateDictMismatch
from mmdiff.modeling import DiffusionModel, ModelConfig
from mmdiff.registry import CONVERTERS
from mmdiff.vocab import VocabLayout

# ------------------------------------------------------------------------------------------ tiny foreign checkpoints
TEXT, MASK, EOS, PAD = 100, 90, 91, 92  # mask/eos/pad ids sit inside the text range, as in LLaDA's tokenizer


def llada_config(**over: Any) -> dict[str, Any]:
    """A LLaDA config.json as LLaDAConfig writes it (all ModelConfig fields), at toy width."""
    config = {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 32,
        "embedding_dropout": 0.0, "embedding_size": 128, "eos_token_id": EOS, "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
        "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": MASK, "max_sequence_length": 64, "mlp_hidden_size": 48,
        "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 2,
        "n_layers": 2, "pad_token_id": PAD, "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05,
        "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
        "torch_dtype": "float32", "transformers_version": "4.46.3", "use_cache": False, "vocab_size": TEXT,
        "weight_tying": False,
    }
    config.update(over)
    return config


def dream_config(**over: Any) -> dict[str, Any]:
    """A Dream config.json (Qwen2 fields), at toy width."""
    config = {
        "architectures": ["DreamModel"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": EOS, "eos_token_id": EOS, "hidden_act": "silu", "hidden_size": 32,
        "initializer_range": 0.02, "intermediate_size": 48, "mask_token_id": MASK, "max_position_embeddings": 64,
        "max_window_layers": 28, "model_type": "Dream", "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "pad_token_id": PAD, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.46.2", "use_cache": False, "use_sliding_window": False, "vocab_size": TEXT,
    }
    config.update(over)
    return config


def _rand(gen: torch.Generator, *shape: int, scale: float = 0.2, offset: float = 0.0) -> Tensor:
    return torch.randn(*shape, generator=gen) * scale + offset


def llada_weights(cfg: dict[str, Any], seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, hidden, rows = cfg["d_model"], cfg["mlp_hidden_size"], cfg["embedding_size"]
    kv = cfg["n_kv_heads"] * d // cfg["n_heads"]
    p = "model.transformer."
    w = {f"{p}wte.weight": _rand(g, rows, d, scale=1.0)}
    for i in range(cfg["n_layers"]):
        b = f"{p}blocks.{i}."
        w[f"{b}attn_norm.weight"] = _rand(g, d, offset=1.0)
        w[f"{b}q_proj.weight"] = _rand(g, d, d)
        w[f"{b}k_proj.weight"] = _rand(g, kv, d)
        w[f"{b}v_proj.weight"] = _rand(g, kv, d)
        if cfg["include_qkv_bias"]:
            for proj, n in (("q", d), ("k", kv), ("v", kv)):
                w[f"{b}{proj}_proj.bias"] = _rand(g, n)
        w[f"{b}attn_out.weight"] = _rand(g, d, d)
        w[f"{b}ff_norm.weight"] = _rand(g, d, offset=1.0)
        w[f"{b}ff_proj.weight"] = _rand(g, hidden, d)
        w[f"{b}up_proj.weight"] = _rand(g, hidden, d)
        w[f"{b}ff_out.weight"] = _rand(g, d, hidden)
    w[f"{p}ln_f.weight"] = _rand(g, d, offset=1.0)
    if not cfg["weight_tying"]:
        w[f"{p}ff_out.weight"] = _rand(g, rows, d)
    return w


def dream_weights(cfg: dict[str, Any], seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, hidden, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * d // cfg["num_attention_heads"]
    w = {"model.embed_tokens.weight": _rand(g, vocab, d, scale=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        b = f"model.layers.{i}."
        w[f"{b}input_layernorm.weight"] = _rand(g, d, offset=1.0)
        for proj, n in (("q", d), ("k", kv), ("v", kv)):
            w[f"{b}self_attn.{proj}_proj.weight"] = _rand(g, n, d)
            w[f"{b}self_attn.{proj}_proj.bias"] = _rand(g, n)
        w[f"{b}self_attn.o_proj.weight"] = _rand(g, d, d)
        w[f"{b}post_attention_layernorm.weight"] = _rand(g, d, offset=1.0)
        w[f"{b}mlp.gate_proj.weight"] = _rand(g, hidden, d)
        w[f"{b}mlp.up_proj.weight"] = _rand(g, hidden, d)
        w[f"{b}mlp.down_proj.weight"] = _rand(g, d, hidden)
    w["model.norm.weight"] = _rand(g, d, offset=1.0)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = _rand(g, vocab, d)
    return w


def write_checkpoint(folder: Path, config: dict[str, Any], weights: dict[str, Tensor], shards: int = 1) -> Path:
    """config.json + safetensors via the official library: one model.safetensors, or `shards` files plus
    model.safetensors.index.json, as Hugging Face's save_pretrained writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if shards == 1:
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    keys = list(weights)
    per = math.ceil(len(keys) / shards)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: weights[k] for k in keys[s * per:(s + 1) * per]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in weights.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return folder


def file_tensors(folder: Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint folder, read with the official safetensors library."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


# ------------------------------------------------------------------------------------------ reference forwards
def _rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x: Tensor, pos: Tensor, theta: float) -> Tensor:
    """Rotate-half RoPE on (B, H, L, D) at positions (B, L): pairs (j, j + D/2) rotate by pos * theta^(-2j/D)."""
    half = x.shape[-1] // 2
    inv = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    angle = (pos.double()[..., None] * inv)[:, None]  # (B, 1, L, D/2)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], dim=-1)


def _heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, heads * D) -> (B, heads, L, D)."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """q (B, H, L, D), k/v (B, Hkv, L, D) shared by H/Hkv query heads each, allowed (B, 1, L, L) -> (B, L, H*D).

    A query that may attend to nothing (a padding row of Dream's mask) gets zeros, as PyTorch's SDPA returns."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    out = probs @ v  # (B, H, L, D)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def llada_reference(w: dict[str, Tensor], cfg: dict[str, Any], ids: Tensor, mask: Tensor,
                    swap_gate: bool = False) -> Tensor:
    """LLaDA's forward from its layout: bidirectional attention with padded keys masked, positions 0..L-1, logit i
    for token i. `swap_gate` applies SiLU to up_proj instead of ff_proj (a wrong reading, to show the test bites)."""
    w = {k: v.double() for k, v in w.items()}
    p, eps, theta = "model.transformer.", cfg["rms_norm_eps"], cfg["rope_theta"]
    B, L = ids.shape
    H, Hkv = cfg["n_heads"], cfg["n_kv_heads"]
    pos = torch.arange(L)[None].expand(B, L)
    allowed = mask.bool()[:, None, None, :].expand(B, 1, L, L)
    x = w[f"{p}wte.weight"][ids]
    for i in range(cfg["n_layers"]):
        b = f"{p}blocks.{i}."
        h = _rms(x, w[f"{b}attn_norm.weight"], eps)

        q, k, v = (_heads(h @ w[f"{b}{n}_proj.weight"].T + w.get(f"{b}{n}_proj.bias", 0), heads)
                   for n, heads in (("q", H), ("k", Hkv), ("v", Hkv)))
        q, k = _rope(q, pos, theta), _rope(k, pos, theta)
        x = x + _attention(q, k, v, allowed) @ w[f"{b}attn_out.weight"].T
        h = _rms(x, w[f"{b}ff_norm.weight"], eps)
        gate, up = h @ w[f"{b}ff_proj.weight"].T, h @ w[f"{b}up_proj.weight"].T
        if swap_gate:
            gate, up = up, gate
        x = x + (F.silu(gate) * up) @ w[f"{b}ff_out.weight"].T
    head = w[f"{p}wte.weight"] if cfg["weight_tying"] else w[f"{p}ff_out.weight"]
    return _rms(x, w[f"{p}ln_f.weight"], eps) @ head.T


def dream_reference(w: dict[str, Tensor], cfg: dict[str, Any], ids: Tensor, mask: Tensor,
                    shift: bool = True) -> Tensor:
    """Dream's forward as its diffusion_generate runs it on a padded batch: position ids from the attention mask
    (cumsum - 1, padding at 1), a query-and-key padding mask, biased q/k/v, then logits shifted right by one."""
    w = {k: v.double() for k, v in w.items()}
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    B, L = ids.shape
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    allowed = (mask.bool()[:, None, :, None] & mask.bool()[:, None, None, :])  # (B, 1, L, L)
    x = w["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        b = f"model.layers.{i}."
        h = _rms(x, w[f"{b}input_layernorm.weight"], eps)

        q, k, v = (_heads(h @ w[f"{b}self_attn.{n}_proj.weight"].T + w[f"{b}self_attn.{n}_proj.bias"], heads)
                   for n, heads in (("q", H), ("k", Hkv), ("v", Hkv)))
        q, k = _rope(q, pos, theta), _rope(k, pos, theta)
        x = x + _attention(q, k, v, allowed) @ w[f"{b}self_attn.o_proj.weight"].T
        h = _rms(x, w[f"{b}post_attention_layernorm.weight"], eps)
        mlp = F.silu(h @ w[f"{b}mlp.gate_proj.weight"].T) * (h @ w[f"{b}mlp.up_proj.weight"].T)
        x = x + mlp @ w[f"{b}mlp.down_proj.weight"].T
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    logits = _rms(x, w["model.norm.weight"], eps) @ head.T
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1) if shift else logits


def padded_batch(vocab: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two rows of 10 ids, the second left-padded by 4 (pad id PAD) and holding mask ids."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, 10), generator=g)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :4] = False
    ids[1, :4] = PAD
    ids[1, 6:8] = MASK
    return ids, mask


# ------------------------------------------------------------------------------------------ logits parity
def test_llada_sharded_logits_match_reference(tmp_path):
    cfg = llada_config()
    weights = llada_weights(cfg)
    folder = write_checkpoint(tmp_path / "llada", cfg, weights, shards=3)
    model = load_foreign(folder)
    assert model.config.core.vocab_size == 128 and model.vocab.size == TEXT  # padded embedding rows kept
    assert model.vocab.mask_id == MASK and model.vocab.range("text") == (0, TEXT)
    assert (model.vocab.eos_id, model.vocab.pad_id) == (EOS, PAD)
    assert model.config.core.n_kv_heads == 2 and model.config.core.logits_shift == "none"
    ids, mask = padded_batch(TEXT)
    got = model(ids, attention_mask=mask).logits.double()
    want = llada_reference(weights, cfg, ids, mask)
    assert got.shape == (2, 10, 128)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the check discriminates: reading ff_proj as the linear branch (and up_proj as the gate) is far off
    assert (llada_reference(weights, cfg, ids, mask, swap_gate=True) - want).abs().max() > 0.1


def test_llada_tied_with_qkv_bias_single_file(tmp_path):
    cfg = llada_config(weight_tying=True, include_qkv_bias=True, n_kv_heads=4, embedding_size=TEXT)
    weights = llada_weights(cfg, seed=1)
    assert "model.transformer.ff_out.weight" not in weights  # the tied layout has no LM head tensor
    model = load_foreign(write_checkpoint(tmp_path / "tied", cfg, weights))
    assert model.core.lm_head is None and model.config.core.qkv_bias
    ids, mask = padded_batch(TEXT, seed=1)
    torch.testing.assert_close(model(ids, attention_mask=mask).logits.double(),
                               llada_reference(weights, cfg, ids, mask), atol=1e-4, rtol=1e-4)


def test_dream_logits_match_reference_shifted_gqa_bias(tmp_path):
    cfg = dream_config()
    weights = dream_weights(cfg)
    model = load_foreign(write_checkpoint(tmp_path / "dream", cfg, weights, shards=2))
    core = model.config.core
    assert (core.logits_shift, core.qkv_bias, core.n_kv_heads, core.norm_eps) == ("previous", True, 2, 1e-6)
    assert (model.vocab.mask_id, model.vocab.eos_id, model.vocab.bos_id) == (MASK, EOS, EOS)
    ids, mask = padded_batch(TEXT)
    position_ids = (mask.long().cumsum(-1) - 1).masked_fill(~mask, 1)
    got = model(ids, attention_mask=mask, position_ids=position_ids).logits.double()
    want = dream_reference(weights, cfg, ids, mask)
    # compare where Dream's own logits are defined: real positions whose left neighbour (or itself at 0) is real
    valid = mask & torch.cat([mask[:, :1], mask[:, :-1]], dim=1)
    assert valid.sum() == 15
    torch.testing.assert_close(got[valid], want[valid], atol=1e-4, rtol=1e-4)
    assert (dream_reference(weights, cfg, ids, mask, shift=False)[valid] - want[valid]).abs().max() > 0.1


def test_mmada_text_side_and_image_range(tmp_path):
    codes = 16
    cfg = llada_config(model_type="mmada", architectures=["MMadaModelLM"], vocab_size=TEXT + codes,
                       embedding_size=TEXT + codes, llm_vocab_size=TEXT, codebook_size=codes,
                       num_new_special_tokens=0, num_vq_tokens=4)
    weights = llada_weights(cfg, seed=2)
    folder = write_checkpoint(tmp_path / "mmada", cfg, weights)
    assert detect_layout(folder) == "mmada" and CONVERTERS.get("mmada") is MMADA
    model = load_foreign(folder)
    assert model.vocab.range("text") == (0, TEXT) and model.vocab.range("image") == (TEXT, TEXT + codes)
    assert model.vocab.mask_id == MASK and model.config.core.vocab_size == TEXT + codes
    ids, mask = padded_batch(TEXT + codes, seed=2)
    torch.testing.assert_close(model(ids, attention_mask=mask).logits.double(),
                               llada_reference(weights, cfg, ids, mask), atol=1e-4, rtol=1e-4)
    # image-only logits through the vocabulary range: the same columns
    image = model(ids, attention_mask=mask, vocab_range=model.vocab.range("image")).logits
    torch.testing.assert_close(image, model(ids, attention_mask=mask).logits[..., TEXT:])
    # a config without MMaDA's llm_vocab_size / codebook_size fields: the vocabulary ends with 8192 image codes
    bare = {k: v for k, v in cfg.items() if k not in ("llm_vocab_size", "codebook_size", "num_new_special_tokens")}
    (folder / "config.json").write_text(json.dumps({**bare, "vocab_size": TEXT + 8192, "embedding_size": 8320}))
    model = MMADA.load(folder, pretrained=False)
    assert model.vocab.range("image") == (TEXT, TEXT + 8192) and model.config.core.vocab_size == 8320


# ------------------------------------------------------------------------------------------ dtypes
def test_bf16_stays_bf16_and_dtype_casts(tmp_path):
    cfg = llada_config(torch_dtype="bfloat16")
    weights = {k: v.to(torch.bfloat16) for k, v in llada_weights(cfg).items()}
    folder = write_checkpoint(tmp_path / "bf16", cfg, weights, shards=2)
    model = LLADA.load(folder)
    core = model.core.state_dict()
    for foreign, name in LLADA.key_map(model.config.core).items():
        assert core[name].dtype == torch.bfloat16
        assert torch.equal(core[name], weights[foreign])
    as_float = LLADA.load(folder, dtype=torch.float32)
    wte = as_float.core.embed_tokens.weight
    assert wte.dtype == torch.float32 and torch.equal(wte, weights["model.transformer.wte.weight"].float())
    ids, mask = padded_batch(TEXT)
    assert model(ids, attention_mask=mask).logits.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------ export round trip
def _header(folder: Path) -> dict[str, tuple[list[int], str]]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            out.update({k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()})
    return out


@pytest.mark.parametrize("kind", ["llada-sharded-mixed-dtypes", "dream-single", "mmada-single"])
def test_export_round_trip_bit_for_bit(tmp_path, kind):
    if kind.startswith("llada"):
        cfg = llada_config(torch_dtype="bfloat16")
        weights = {k: v.float() if k.endswith("norm.weight") or "ln_f" in k else v.to(torch.bfloat16)
                   for k, v in llada_weights(cfg).items()}  # norms float32, matrices bf16
        shards = 3
    elif kind.startswith("dream"):
        cfg, shards = dream_config(torch_dtype="bfloat16"), 1
        weights = {k: v.to(torch.bfloat16) for k, v in dream_weights(cfg).items()}
    else:
        cfg = llada_config(model_type="mmada", vocab_size=116, embedding_size=116, llm_vocab_size=TEXT,
                           codebook_size=16, num_new_special_tokens=0)
        weights, shards = llada_weights(cfg), 1
    source = write_checkpoint(tmp_path / "source", cfg, weights, shards=shards)
    (source / "generation_config.json").write_text(json.dumps({"eos_token_id": EOS, "max_length": 64}))
    first = load_foreign(source)
    out = save_foreign(first, tmp_path / "export", max_shard_bytes=20_000 if shards > 1 else 5 * 10**9)
    assert json.loads((out / "config.json").read_text()) == cfg  # the original config.json, unchanged
    assert json.loads((out / "generation_config.json").read_text()) == {"eos_token_id": EOS, "max_length": 64}
    assert _header(out) == _header(source)  # same tensor names, shapes and dtypes
    assert ((out / "model.safetensors.index.json").is_file()) == (shards > 1)
    exported = file_tensors(out)
    assert all(torch.equal(exported[k], v) and exported[k].dtype == v.dtype for k, v in weights.items())
    second = load_foreign(out)
    a, b = first.core.state_dict(), second.core.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert second.config.core == first.config.core
    card_specials = {"pad": EOS, "eot": 95, "soi": 96}  # a zoo card's map overriding config.json's pad id
    out = save_foreign(load_foreign(source, specials=card_specials), tmp_path / "with-card")
    assert json.loads((out / "config.json").read_text()) == cfg
    changed = load_foreign(source, specials=card_specials)
    changed.vocab.special["mask"] = 97  # a real change is written, and only it
    out = save_foreign(changed, tmp_path / "changed")
    assert json.loads((out / "config.json").read_text()) == {**cfg, "mask_token_id": 97}
    if kind.startswith("dream"):  # loaded as float32, written as float32: config.json says so
        out = save_foreign(load_foreign(source, dtype=torch.float32), tmp_path / "as-float32")
        assert json.loads((out / "config.json").read_text()) == {**cfg, "torch_dtype": "float32"}
        assert {dtype for _, dtype in _header(out).values()} == {"F32"}


def test_export_an_mmdiff_model_as_llada_and_dream(tmp_path, make_tiny_model):
    model = make_tiny_model(seed=3)  # text ids then mask/eos/pad/bos after them, tied=False, no qkv bias
    out = save_foreign(model, tmp_path / "as-llada", layout="llada")
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["d_model"], config["n_layers"]) == ("llada", 32, 2)
    assert config["mmdiff_vocab"] == model.vocab.to_dict()  # a layout LLaDA's fields cannot express
    assert "model.transformer.ff_out.weight" in _header(out)
    again = load_foreign(out)
    assert again.vocab == model.vocab and again.tokenizer is not None
    ids = torch.randint(0, model.vocab.size, (2, 7), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match="logits_shift='none': export it as 'llada'"):
        save_foreign(model, tmp_path / "as-dream", layout="dream")

    shifted = make_tiny_model(seed=4, logits_shift="previous", n_kv_heads=2)
    out = save_foreign(shifted, tmp_path / "as-dream", layout="dream")
    tensors = file_tensors(out)
    assert torch.count_nonzero(tensors["model.layers.1.self_attn.k_proj.bias"]) == 0  # Dream always has biases
    dream = load_foreign(out)
    torch.testing.assert_close(dream(ids).logits, shifted(ids).logits, atol=1e-6, rtol=1e-6)


def test_export_refuses_to_overwrite_an_mmdiff_checkpoint(tiny_checkpoint):
    from mmdiff.modeling import DiffusionModel

    model = DiffusionModel.from_pretrained(tiny_checkpoint)
    with pytest.raises(FileExistsError, match="holds an mmdiff checkpoint"):
        save_foreign(model, tiny_checkpoint, layout="llada")
    assert DiffusionModel.from_pretrained(tiny_checkpoint).config == model.config  # untouched


# ------------------------------------------------------------------------------------------ clear errors
@pytest.fixture
def sharded_llada(tmp_path) -> tuple[Path, dict[str, Any], dict[str, Tensor]]:
    cfg = llada_config()
    weights = llada_weights(cfg)
    return write_checkpoint(tmp_path / "ckpt", cfg, weights, shards=2), cfg, weights


def test_truncated_and_corrupt_shards_are_named(sharded_llada):
    folder, _, _ = sharded_llada
    shard = folder / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(CorruptCheckpointError, match=r"model-00002-of-00002\.safetensors is truncated"):
        load_foreign(folder)
    shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + data[24:])
    with pytest.raises(CorruptCheckpointError, match=r"model-00002-of-00002\.safetensors is not a readable"):
        load_foreign(folder)
    shard.write_bytes(b"\x01\x02")
    with pytest.raises(CorruptCheckpointError, match=r"model-00002-of-00002\.safetensors is truncated \(2 bytes\)"):
        load_foreign(folder)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=r"lists shard file\(s\) \['model-00002-of-00002.safetensors'\]"):
        load_foreign(folder)


def test_missing_unexpected_and_misshaped_tensors_in_one_report(tmp_path):
    cfg = llada_config()
    weights = llada_weights(cfg)
    del weights["model.transformer.blocks.1.ff_out.weight"]
    weights["model.transformer.blocks.0.up_proj.weight"] = torch.zeros(47, 32)
    weights["model.transformer.wpe.weight"] = torch.zeros(64, 32)
    with pytest.raises(StateDictMismatch) as info:
        load_foreign(write_checkpoint(tmp_path / "bad", cfg, weights, shards=2))
    message = str(info.value)
    assert "missing tensors (1):\n    model.transformer.blocks.1.ff_out.weight (core blocks.1.mlp.down_proj.weight)," \
           " expected shape [32, 48]" in message
    assert "unexpected tensors (1):\n    model.transformer.wpe.weight in model-00002-of-00002.safetensors, " \
           "shape [64, 32]" in message
    assert "mis-shaped tensors (1):\n    model.transformer.blocks.0.up_proj.weight (core blocks.0.mlp.up_proj." \
           "weight): checkpoint has shape [47, 32], config.json implies [48, 32]" in message


def test_dream_ignores_rope_buffers_only(tmp_path):
    cfg = dream_config()
    weights = dream_weights(cfg)
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    model = load_foreign(write_checkpoint(tmp_path / "dream", cfg, weights))
    assert torch.equal(model.core.norm.weight, weights["model.norm.weight"])
    weights["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(32)
    with pytest.raises(StateDictMismatch, match=r"unexpected tensors \(1\):\n    model.layers.0.self_attn.o_proj"):
        load_foreign(write_checkpoint(tmp_path / "dream2", cfg, weights))


def test_config_errors_name_the_field_and_the_fix(tmp_path):
    cfg = llada_config()
    weights = llada_weights(cfg)
    folder = write_checkpoint(tmp_path / "x", {k: v for k, v in cfg.items() if k != "d_model"}, weights)
    with pytest.raises(ValueError, match=r"x/config.json: missing field 'd_model', which the LLaDA layout needs"):
        load_foreign(folder)
    write_checkpoint(folder, {**cfg, "block_type": "sequential"}, weights)
    with pytest.raises(ValueError, match=r"block_type='sequential', supported: \['llama'\]"):
        load_foreign(folder)
    write_checkpoint(folder, {k: v for k, v in cfg.items() if k != "layer_norm_type"}, weights)
    with pytest.raises(ValueError, match=r"layer_norm_type='default' \(LLaDA's default when config.json omits it\)"):
        load_foreign(folder)
    write_checkpoint(folder, {**cfg, "model_type": "t5"}, weights)
    with pytest.raises(ValueError,
                       match=r"no converter reads model_type 't5'; known model types: Dream, diffa, gpt2, llada"):
        load_foreign(folder)
    write_checkpoint(folder, {**cfg, "mask_token_id": 500}, weights)
    with pytest.raises(ValueError, match=r"special token 'mask' has id 500, outside the vocabulary \[0, 100\)"):
        load_foreign(folder)
    write_checkpoint(folder, dream_config(rope_scaling={"rope_type": "yarn", "factor": 4.0}), weights)
    with pytest.raises(ValueError, match="rope_scaling=.*only plain RoPE"):
        load_foreign(folder)
    with pytest.raises(ValueError, match=r"has model_type 'Dream', but the 'llada' converter reads \['llada'\]"):
        LLADA.load(folder)


def test_pickle_only_folder_and_mmdiff_folder(tmp_path, tiny_checkpoint):
    folder = tmp_path / "pickles"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(llada_config()))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(FileNotFoundError, match=r"found pickle files \['pytorch_model.bin'\], which mmdiff refuses"):
        load_foreign(folder)
    assert detect_layout(tiny_checkpoint) is None
    with pytest.raises(ValueError, match="is an mmdiff checkpoint, not a foreign layout"):
        load_foreign(tiny_checkpoint)


# ------------------------------------------------------------------------------------------ loading modes
def test_random_init_from_config_alone_and_the_zoo_call_form(tmp_path, sharded_llada):
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dream_config()))
    model = CONVERTERS.get("dream")(folder, pretrained=False, device="cpu", dtype=torch.bfloat16)
    assert model.core.lm_head.weight.dtype == torch.bfloat16 and model.core.lm_head.weight.shape == (TEXT, 32)
    assert model.sampler_config.sampler == "dream" and model.config.task_options["foreign_layout"] == "dream"
    source, _, weights = sharded_llada
    zoo_style = CONVERTERS.get("llada")(source, pretrained=True, device="cpu", dtype=None)
    assert torch.equal(zoo_style.core.lm_head.weight, weights["model.transformer.ff_out.weight"])
    assert {e.file.name for e in scan_checkpoint(source).values()} == {"model-00001-of-00002.safetensors",
                                                                     "model-00002-of-00002.safetensors"}


def test_tokenizer_files_without_remote_code(tmp_path, tiny_tokenizer):
    cfg = llada_config(vocab_size=len(tiny_tokenizer) + 4, embedding_size=len(tiny_tokenizer) + 4,
                       mask_token_id=len(tiny_tokenizer), eos_token_id=len(tiny_tokenizer) + 1,
                       pad_token_id=len(tiny_tokenizer) + 1)
    folder = write_checkpoint(tmp_path / "with-tok", cfg, llada_weights(cfg))
    tiny_tokenizer.save_pretrained(str(folder))
    tok_json = json.loads((folder / "tokenizer.json").read_text())
    tok_json.setdefault("added_tokens", []).append(
        {"id": len(tiny_tokenizer) + 2, "content": "<|eot_id|>", "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True})
    (folder / "tokenizer.json").write_text(json.dumps(tok_json))
    model = load_foreign(folder)
    assert model.tokenizer is not None and model.decode(model.encode("To be")[0]) == "To be"
    assert model.vocab.get_id("eot") == len(tiny_tokenizer) + 2
    assert LLADA.load(folder, specials={"eot": 7}).vocab.get_id("eot") == 7

    # a tokenizer config that points at custom code: AutoTokenizer refuses, the plain files still load, no code runs
    (folder / "tokenizer.json").unlink()
    tiny_tokenizer.backend_tokenizer.model.save(str(folder))  # vocab.json + merges.txt (Qwen2's files)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config.update(tokenizer_class="DreamTokenizer",
                      auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]})
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    marker = tmp_path / "remote-code-ran"
    (folder / "tokenization_dream.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (folder / "config.json").write_text(json.dumps(dream_config(vocab_size=cfg["vocab_size"], mask_token_id=
                                                                len(tiny_tokenizer), pad_token_id=None)))
    for name in list(folder.glob("*.safetensors")):
        name.unlink()
    dream = DREAM.load(folder, pretrained=False)
    assert not marker.exists()
    assert dream.tokenizer is not None and dream.tokenizer.decode(dream.encode("the question")[0]) == "the question"
    assert dream.vocab.pad_id is None  # an explicit null stays null


# ------------------------------------------------------------------------------------------ low memory
MEMORY_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from mmdiff.convert import load_foreign

    def status_kib(field):  # VmRSS: resident now; VmHWM: this process's peak (getrusage's ru_maxrss is not: it
        with open("/proc/self/status") as f:  # inherits the parent's peak across fork + exec)
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    before = status_kib("VmRSS")
    model = load_foreign(sys.argv[1])
    peak = status_kib("VmHWM")
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(before, peak, n_bytes)
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set size from /proc")
def test_loading_does_not_hold_the_weights_twice(tmp_path):
    cfg = llada_config(d_model=256, n_heads=4, n_kv_heads=4, n_layers=4, mlp_hidden_size=1024, vocab_size=16384,
                       embedding_size=16384, max_sequence_length=256)
    weights = llada_weights(cfg)
    folder = write_checkpoint(tmp_path / "fifty-mb", cfg, weights)  # one ~50 MB file: the worst case for mmap
    size = (folder / "model.safetensors").stat().st_size
    assert 45e6 < size < 55e6
    del weights
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(folder)], capture_output=True, text=True,
                          timeout=120, check=True)
    before, peak, n_bytes = (int(x) for x in done.stdout.split())
    assert abs(n_bytes - size) < 1e5
    increase = (peak - before) * 1024
    assert increase <= 1.3 * size + 16 * 2**20, f"peak RSS grew by {increase / 2**20:.1f} MiB for a " \
                                                f"{size / 2**20:.1f} MiB checkpoint"


# ---------------------------------------------------------------------------------------------------- one contract
def test_every_converter_loads_through_one_signature(tmp_path):
    """No converter overrides `load` with its own signature: the layouts' own keywords are `load_options`, and an
    unknown one is a TypeError naming the ones the layout takes."""
    import inspect

    from mmdiff.convert import LUMINA_DIMOO, MMADA
    from mmdiff.convert.vlm import LAVIDA, LLAVA_LLADA
    from mmdiff.registry import CONVERTERS

    base = inspect.signature(Converter.load)
    for name in CONVERTERS.list():
        converter = CONVERTERS.get(name)
        assert inspect.signature(type(converter).load) == base, name
    assert MMADA.load_options == {"task": "text", "tokenizer_weights": "showlab/magvitv2", "image_size": None}
    assert LUMINA_DIMOO.load_options == {"task": "t2i", "image_size": None}
    assert LAVIDA.load_options == {"vision_config": None} and LLADA.load_options == {}
    with pytest.raises(TypeError, match=r"unexpected keyword\(s\) \['task'\].*takes: none"):
        LLADA.load(tmp_path, task="t2i")
    with pytest.raises(TypeError, match=r"\['vision_config'\].*takes: task, tokenizer_weights, image_size"):
        MMADA.load(tmp_path, vision_config={})
    with pytest.raises(ValueError, match="task must be 'text' or 't2i', got 'vlm'"):
        MMADA.load(tmp_path, task="vlm")
    with pytest.raises(FileNotFoundError, match="not found"):
        LLAVA_LLADA.load(tmp_path / "absent", vision_config={})


def test_decoder_key_maps_are_written_once():
    """The LLaDA, Qwen2 (Dream) and LLaMA (LLaDA-V) key maps come from one `DecoderNames` expansion; spelled out by
    hand for one layer, in each checkpoint's order."""
    from mmdiff.convert.base import DecoderNames
    from mmdiff.convert.dream import QWEN2_NAMES
    from mmdiff.convert.llada import LLADA_NAMES
    from mmdiff.convert.vlm import LLADA_V, LLAMA_NAMES

    assert all(isinstance(n, DecoderNames) for n in (LLADA_NAMES, QWEN2_NAMES, LLAMA_NAMES))
    core = CoreConfig(VocabLayout.build(16), d_model=8, n_layers=1, n_heads=2, qkv_bias=True, tie_embeddings=False)
    t = "model.transformer."
    assert list(LLADA.key_map(core).items()) == [
        (f"{t}wte.weight", "embed_tokens.weight"), (f"{t}blocks.0.attn_norm.weight", "blocks.0.attn_norm.weight"),
        (f"{t}blocks.0.q_proj.weight", "blocks.0.attn.q_proj.weight"),
        (f"{t}blocks.0.q_proj.bias", "blocks.0.attn.q_proj.bias"),
        (f"{t}blocks.0.k_proj.weight", "blocks.0.attn.k_proj.weight"),
        (f"{t}blocks.0.k_proj.bias", "blocks.0.attn.k_proj.bias"),
        (f"{t}blocks.0.v_proj.weight", "blocks.0.attn.v_proj.weight"),
        (f"{t}blocks.0.v_proj.bias", "blocks.0.attn.v_proj.bias"),
        (f"{t}blocks.0.attn_out.weight", "blocks.0.attn.o_proj.weight"),
        (f"{t}blocks.0.ff_norm.weight", "blocks.0.mlp_norm.weight"),
        (f"{t}blocks.0.ff_proj.weight", "blocks.0.mlp.gate_proj.weight"),
        (f"{t}blocks.0.up_proj.weight", "blocks.0.mlp.up_proj.weight"),
        (f"{t}blocks.0.ff_out.weight", "blocks.0.mlp.down_proj.weight"),
        (f"{t}ln_f.weight", "norm.weight"), (f"{t}ff_out.weight", "lm_head.weight")]
    plain = CoreConfig(VocabLayout.build(16), d_model=8, n_layers=1, n_heads=2, tie_embeddings=True)
    llama = [(f"model.layers.0.{k}", f"blocks.0.{v}") for k, v in (
        ("self_attn.q_proj.weight", "attn.q_proj.weight"), ("self_attn.k_proj.weight", "attn.k_proj.weight"),
        ("self_attn.v_proj.weight", "attn.v_proj.weight"), ("self_attn.o_proj.weight", "attn.o_proj.weight"),
        ("mlp.gate_proj.weight", "mlp.gate_proj.weight"), ("mlp.up_proj.weight", "mlp.up_proj.weight"),
        ("mlp.down_proj.weight", "mlp.down_proj.weight"), ("input_layernorm.weight", "attn_norm.weight"),
        ("post_attention_layernorm.weight", "mlp_norm.weight"))]
    assert list(LLADA_V.key_map(plain).items()) == [("model.embed_tokens.weight", "embed_tokens.weight"), *llama,
                                                    ("model.norm.weight", "norm.weight")]
    dream = DREAM.key_map(plain)  # Dream's layout always stores q/k/v biases
    assert sorted(dream) == sorted([*(k for k, _ in llama), "model.embed_tokens.weight", "model.norm.weight",
                                    *(f"model.layers.0.self_attn.{p}_proj.bias" for p in "qkv")])
    assert list(dream)[:4] == ["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                               "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias"]


def test_save_pretrained_layout_is_a_registry_lookup(tmp_path):
    """`save_pretrained(layout=...)` finds the exporter by name in CONVERTERS (modeling never imports the
    converters); an unknown name lists the registered ones, a load-only converter says it cannot export."""
    model = DiffusionModel(ModelConfig(CoreConfig(VocabLayout.build(16), d_model=8, n_layers=1, n_heads=2)))
    calls = []

    class Recorder:
        def save(self, model, folder):
            calls.append((model, folder))
            return folder

    CONVERTERS.add("zz-recorder", Recorder())
    CONVERTERS.add("zz-loader", lambda folder, **kw: None)
    try:
        assert model.save_pretrained(tmp_path / "out", layout="zz-recorder") == tmp_path / "out"
        assert calls == [(model, tmp_path / "out")]
        with pytest.raises(TypeError, match="'zz-loader' is a plain loader and cannot export"):
            model.save_pretrained(tmp_path / "y", layout="zz-loader")
    finally:
        CONVERTERS.remove("zz-recorder")
        CONVERTERS.remove("zz-loader")
    with pytest.raises(KeyError, match=r"unknown converter 'lladda'.*Did you mean: llada.*mmdiff.convert"):
        model.save_pretrained(tmp_path / "x", layout="lladda")
