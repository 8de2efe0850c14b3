"""Dream checkpoints <-> the shared core.

Dream 7B (Ye et al., 2025, "Dream 7B: Diffusion Large Language Models") is Qwen2.5 turned into a masked-diffusion
model: Qwen2 blocks (RMSNorm, RoPE on non-interleaved halves, SwiGLU, grouped-query attention, bias on q/k/v only)
with full bidirectional attention. It keeps the autoregressive head's alignment: the hidden state at position i-1
predicts token i (position 0 repeats its own logits), which the core reproduces with `logits_shift="previous"`.

The Hugging Face layout (`modeling_dream.py`):

    model.embed_tokens.weight
    model.layers.{i}.input_layernorm.weight
    model.layers.{i}.self_attn.{q,k,v}_proj.{weight,bias}
    model.layers.{i}.self_attn.o_proj.weight
    model.layers.{i}.post_attention_layernorm.weight
    model.layers.{i}.mlp.{gate,up,down}_proj.weight
    model.norm.weight
    lm_head.weight                                  (absent with tie_word_embeddings)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mmdiff.convert.base import Converter, DecoderNames, dtype_name, qkv_parts
from mmdiff.core.config import CoreConfig
from mmdiff.modeling import DiffusionModel, SamplerConfig
from mmdiff.registry import CONVERTERS
from mmdiff.vocab import VocabLayout

__all__ = ["DreamConverter", "DREAM", "QWEN2_NAMES", "LLAMA_NORMS", "LLAMA_MLP", "LLAMA_O"]

# DreamConfig's defaults for fields config.json may omit
_DEFAULTS = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 32768,
             "tie_word_embeddings": False, "mask_token_id": 151666, "pad_token_id": 151643}


# Qwen2's tensor names (Dream), in its checkpoint's order; LLaMA's (LLaDA-V, `mmdiff.convert.vlm`) are the same names
LLAMA_NORMS = (("input_layernorm.weight", "attn_norm.weight"), ("post_attention_layernorm.weight", "mlp_norm.weight"))
LLAMA_MLP = tuple((f"mlp.{p}_proj.weight", f"mlp.{p}_proj.weight") for p in ("gate", "up", "down"))
LLAMA_O = (("self_attn.o_proj.weight", "attn.o_proj.weight"),)
QWEN2_NAMES = DecoderNames(
    embed="model.embed_tokens.weight",
    layer="model.layers.{i}.",
    parts=(LLAMA_NORMS[0], *qkv_parts("self_attn.", bias=True), *LLAMA_O, LLAMA_NORMS[1], *LLAMA_MLP),
    norm="model.norm.weight",
    head="lm_head.weight",
)


class DreamConverter(Converter):
    """Dream's (Qwen2-style) Hugging Face layout.

    >>> from mmdiff.convert import DREAM
    >>> model = DREAM.load("Dream-v0-Instruct-7B", dtype=torch.bfloat16)   # doctest: +SKIP
    """

    name = "dream"
    label = "Dream"
    model_types = ("Dream",)
    eot_tokens = ("<|im_end|>",)
    tokenizer_fallback = "Qwen2TokenizerFast"  # Dream's tokenizer config points at custom code; the files are Qwen2's
    ignored_keys = (r"\.rotary_emb\.inv_freq$",)  # a RoPE buffer some exports include; it holds no weights

    def core_config(self, hf_config: Mapping[str, Any], *, specials: Mapping[str, int] | None = None) -> CoreConfig:
        """The core described by Dream's config.json (hidden_size, num_hidden_layers, num_attention_heads, ...).

        Raises:
            ValueError: a required field is missing or the config uses something the core does not run
                (another activation, RoPE scaling, sliding-window attention, a head_dim not hidden_size/heads).
        """
        hf = {**_DEFAULTS, **hf_config}  # an explicit null (e.g. pad_token_id) stays null
        for key in ("rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings"):
            hf[key] = _DEFAULTS[key] if hf[key] is None else hf[key]
        d_model, n_layers, n_heads, mlp, vocab_size = (int(self.require(hf, f)) for f in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"))
        self._check_supported(hf, d_model, n_heads)
        special = self.specials_from(hf, specials)
        vocab = self.stored_vocab(hf, special) or VocabLayout(size=vocab_size, special=special,
                                                             ranges={"text": (0, vocab_size)})
        return CoreConfig(
            vocab=vocab,
            vocab_size=vocab_size,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
            mlp_hidden_size=mlp,
            rope_theta=float(hf["rope_theta"]),
            norm_eps=float(hf["rms_norm_eps"]),
            qkv_bias=True,  # Dream's attention always has q/k/v biases (attention_bias is not read)
            tie_embeddings=bool(hf["tie_word_embeddings"]),
            max_seq_len=int(hf["max_position_embeddings"]),
            logits_shift="previous",
        )

    def _check_supported(self, hf: Mapping[str, Any], d_model: int, n_heads: int) -> None:
        bad = []
        if hf.get("hidden_act", "silu") != "silu":
            bad.append(f"hidden_act={hf['hidden_act']!r} (only 'silu')")
        scaling = hf.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            bad.append(f"rope_scaling={scaling!r} (only plain RoPE)")
        if hf.get("use_sliding_window"):
            bad.append("use_sliding_window=true (only full attention)")
        if hf.get("head_dim") not in (None, d_model // n_heads):
            bad.append(f"head_dim={hf['head_dim']} (only hidden_size / num_attention_heads = {d_model // n_heads})")
        if hf.get("mlp_bias"):
            bad.append("mlp_bias=true (the MLP has no biases)")
        if bad:
            raise ValueError(f"this Dream config describes a variant the core does not run: {'; '.join(bad)}")

    def key_map(self, core_config: CoreConfig) -> dict[str, str]:
        """Dream tensor names -> core parameter names (see the module docstring for the layout); the q/k/v biases
        are always there."""
        return QWEN2_NAMES.key_map(core_config, qkv_bias=True)

    def export_tensors(self, model: DiffusionModel) -> dict[str, Tensor]:
        """As the base, with zero q/k/v biases for a core built without them (Dream's layout always has them)."""
        state = model.core.state_dict()
        out = {}
        for foreign, core in self.key_map(model.config.core).items():
            if core in state:
                out[foreign] = state[core]
            else:  # a bias the core does not have: zeros compute the same projection
                weight = state[core.removesuffix(".bias") + ".weight"]
                out[foreign] = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        return out

    def comparable(self, core: CoreConfig) -> dict[str, Any]:
        data = super().comparable(core)
        data["qkv_bias"] = True  # no bias and zero bias are the same network
        return data

    def config_fields(self, core: CoreConfig, dtype: torch.dtype) -> dict[str, Any]:
        if core.logits_shift != "previous":
            raise ValueError("the Dream layout implies shifted logits (hidden state i-1 predicts token i); this "
                             "model has logits_shift='none': export it as 'llada' instead")
        if core.qk_norm:
            raise ValueError("the Dream layout has no qk-norm; this model cannot be exported as Dream")
        fields: dict[str, Any] = {
            "model_type": "Dream",
            "architectures": ["DreamModel"],
            "hidden_size": core.d_model,
            "num_hidden_layers": core.n_layers,
            "num_attention_heads": core.n_heads,
            "num_key_value_heads": core.n_kv_heads,
            "intermediate_size": core.mlp_hidden_size,
            "hidden_act": "silu",
            "rope_theta": core.rope_theta,
            "rope_scaling": None,
            "rms_norm_eps": core.norm_eps,
            "vocab_size": core.vocab_size,
            "max_position_embeddings": core.max_seq_len,
            "tie_word_embeddings": core.tie_embeddings,
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "torch_dtype": dtype_name(dtype),
            "use_cache": False,
        }
        fields.update({field: core.vocab.special.get(name) for name, field in self.config_specials.items()})
        return fields

    def default_sampler(self) -> SamplerConfig:
        return SamplerConfig(sampler="dream")


DREAM = DreamConverter()
CONVERTERS.add("dream", DREAM)
