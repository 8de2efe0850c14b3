"""LLaDA and MMaDA checkpoints <-> the shared core.

LLaDA (Nie et al., 2025, "Large Language Diffusion Models") is a bidirectional Llama-style transformer: pre-norm
RMSNorm, RoPE on non-interleaved halves, SwiGLU, no biases, untied output projection; the logit at position i
predicts token i. MMaDA (Yang et al., 2025, "MMaDA: Multimodal Large Diffusion Language Models") is the same
network with the vocabulary extended by 8192 image codes (126464 text ids + 8192 = 134656); its converter
(`mmdiff.convert.mmada`) builds on this one, with the image codes recorded as the vocabulary range "image".

The Hugging Face layout (`modeling_llada.py`, block_type "llama"), inside `model.transformer`:

    wte.weight                                   token embedding (embedding_size rows, may exceed vocab_size)
    blocks.{i}.attn_norm.weight                  RMSNorm before attention
    blocks.{i}.{q,k,v}_proj.weight (+ .bias)     projections (bias only with include_qkv_bias)
    blocks.{i}.attn_out.weight                   attention output projection
    blocks.{i}.ff_norm.weight                    RMSNorm before the MLP
    blocks.{i}.ff_proj.weight                    SwiGLU gate (SiLU is applied to it)
    blocks.{i}.up_proj.weight                    SwiGLU linear branch
    blocks.{i}.ff_out.weight                     MLP down projection
    ln_f.weight                                  final RMSNorm
    ff_out.weight                                LM head (absent with weight_tying)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from mmdiff.convert.base import Converter, DecoderNames, dtype_name, qkv_parts
from mmdiff.core.config import CoreConfig
from mmdiff.registry import CONVERTERS
from mmdiff.vocab import VocabLayout

__all__ = ["LLaDAConverter", "LLADA", "LLADA_NAMES"]

# Field values of LLaDA's reference `ModelConfig` when config.json omits them (LLaDAConfig fills these defaults),
# and the values this converter supports (LLaDA-8B's own): anything else changes the network.
_SUPPORTED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "block_type": ("sequential", ("llama",)),
    "activation_type": ("swiglu", ("silu",)),
    "layer_norm_type": ("default", ("rms",)),
    "rope": (False, (True,)),
    "alibi": (False, (False,)),
    "attention_layer_norm": (False, (False,)),
    "layer_norm_with_affine": (True, (True,)),
    "include_bias": (False, (False,)),
    "bias_for_layer_norm": (None, (None, False)),
    "scale_logits": (False, (False,)),
    "input_emb_norm": (False, (False,)),
    "block_group_size": (1, (1,)),
}


# LLaDA's tensor names (`model.transformer.*`), in its checkpoint's order
LLADA_NAMES = DecoderNames(
    embed="model.transformer.wte.weight",
    layer="model.transformer.blocks.{i}.",
    parts=(("attn_norm.weight", "attn_norm.weight"), *qkv_parts("", bias=True),
           ("attn_out.weight", "attn.o_proj.weight"), ("ff_norm.weight", "mlp_norm.weight"),
           ("ff_proj.weight", "mlp.gate_proj.weight"), ("up_proj.weight", "mlp.up_proj.weight"),
           ("ff_out.weight", "mlp.down_proj.weight")),
    norm="model.transformer.ln_f.weight",
    head="model.transformer.ff_out.weight",
)


class LLaDAConverter(Converter):
    """LLaDA's Hugging Face layout (and MMaDA's, which adds an image-code range to the vocabulary).

    >>> from mmdiff.convert import LLADA
    >>> model = LLADA.load("LLaDA-8B-Instruct", dtype=torch.bfloat16)   # doctest: +SKIP
    >>> LLADA.save(model, "export/LLaDA-8B-Instruct")                   # doctest: +SKIP
    """

    eot_tokens = ("<|eot_id|>",)
    tokenizer_fallback = "PreTrainedTokenizerFast"

    def __init__(self, name: str, label: str, model_types: tuple[str, ...], architecture: str,
                 image_codes: int | None = None) -> None:
        self.name, self.label, self.model_types = name, label, model_types
        self.architecture = architecture
        # MMaDA: the vocabulary ends with this many image codes when config.json does not say (codebook_size)
        self.image_codes = image_codes

    # -------------------------------------------------------------------------------- config.json -> core
    def core_config(self, hf_config: Mapping[str, Any], *, specials: Mapping[str, int] | None = None) -> CoreConfig:
        """The core described by LLaDA's config.json fields (d_model, n_layers, n_heads, n_kv_heads, ...).

        Raises:
            ValueError: a required field is missing, or the config describes a variant the core does not run
                (e.g. block_type "sequential", LayerNorm instead of RMSNorm, biases on every linear layer).
        """
        hf = hf_config
        self._check_supported(hf)
        d_model, n_heads, n_layers = (int(self.require(hf, f)) for f in ("d_model", "n_heads", "n_layers"))
        vocab_size = int(self.require(hf, "vocab_size"))
        special = self.specials_from(hf, specials)
        if "mask" not in special:
            self.require(hf, "mask_token_id")
        rows = int(hf.get("embedding_size") or vocab_size)
        if rows < vocab_size:
            raise ValueError(f"embedding_size={rows} is smaller than vocab_size={vocab_size}")
        mlp_hidden = hf.get("mlp_hidden_size") or int(hf.get("mlp_ratio", 4)) * d_model
        vocab = self.vocab_layout(hf, vocab_size, special)
        return CoreConfig(
            vocab=vocab,
            vocab_size=rows,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=_effective_kv_heads(hf, n_heads),
            mlp_hidden_size=int(mlp_hidden),
            rope_theta=float(hf.get("rope_theta", 10000.0)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            qkv_bias=bool(hf.get("include_qkv_bias") or False),
            tie_embeddings=bool(hf.get("weight_tying", True)),
            max_seq_len=int(hf.get("max_sequence_length", 1024)),
            logits_shift="none",
        )

    def _check_supported(self, hf: Mapping[str, Any]) -> None:
        bad = []
        for field, (default, allowed) in _SUPPORTED.items():
            value = hf.get(field, default)
            if value not in allowed:
                origin = "" if field in hf else " (LLaDA's default when config.json omits it)"
                bad.append(f"{field}={value!r}{origin}, supported: {list(allowed)}")
        if bad:
            raise ValueError(f"this {self.label} config describes a variant the core does not run: {'; '.join(bad)}")
        if hf.get("rope_full_precision", True) is False:
            warnings.warn("config.json has rope_full_precision=false; mmdiff always applies RoPE in float32, so "
                          "low-precision logits differ slightly from the reference", stacklevel=6)

    def vocab_layout(self, hf: Mapping[str, Any], vocab_size: int, special: dict[str, int]) -> VocabLayout:
        """Text ids (special ids inside them, as in the tokenizer), then MMaDA's image codes when present."""
        stored = self.stored_vocab(hf, special)
        if stored is not None:
            return stored
        llm, codebook = hf.get("llm_vocab_size"), hf.get("codebook_size")
        if self.image_codes is None and (llm is None or codebook is None):
            return VocabLayout(size=vocab_size, special=special, ranges={"text": (0, vocab_size)})
        if llm is not None:  # MMaDA's fields: text ids (+ added specials), then the codebook
            text = int(llm) + int(hf.get("num_new_special_tokens") or 0)
            codes = int(codebook or vocab_size - text)
        else:
            codes = int(codebook or self.image_codes)
            text = vocab_size - codes
        if not (0 < text and text + codes <= vocab_size):
            raise ValueError(f"text ids ({text}) + image codes ({codes}) exceed vocab_size={vocab_size}")
        return VocabLayout(size=vocab_size, special=special,
                           ranges={"text": (0, text), "image": (text, text + codes)})

    # -------------------------------------------------------------------------------- names
    def key_map(self, core_config: CoreConfig) -> dict[str, str]:
        """LLaDA tensor names -> core parameter names (see the module docstring for the layout)."""
        return LLADA_NAMES.key_map(core_config)

    # -------------------------------------------------------------------------------- core -> config.json
    def config_fields(self, core: CoreConfig, dtype: torch.dtype) -> dict[str, Any]:
        if core.qk_norm:
            raise ValueError(f"the {self.label} layout has no per-head qk-norm (its attention_layer_norm normalizes "
                             "the full width); this model cannot be exported as " + self.label)
        fields: dict[str, Any] = {
            "model_type": self.model_types[0],
            "architectures": [self.architecture],
            **{field: allowed[0] for field, (_, allowed) in _SUPPORTED.items()},
            "d_model": core.d_model,
            "n_layers": core.n_layers,
            "n_heads": core.n_heads,
            "n_kv_heads": core.n_kv_heads,
            "multi_query_attention": None,
            "mlp_hidden_size": core.mlp_hidden_size,
            "rope_theta": core.rope_theta,
            "rope_full_precision": True,
            "rms_norm_eps": core.norm_eps,
            "include_qkv_bias": core.qkv_bias,
            "weight_tying": core.tie_embeddings,
            "vocab_size": core.vocab.size,
            "embedding_size": core.vocab_size,
            "max_sequence_length": core.max_seq_len,
            "torch_dtype": dtype_name(dtype),
            "use_cache": False,
        }
        fields.update({field: core.vocab.special.get(name) for name, field in self.config_specials.items()})
        image = core.vocab.ranges.get("image")
        if image is not None:
            fields.update(llm_vocab_size=image[0], codebook_size=image[1] - image[0], num_new_special_tokens=0)
        return fields


def _effective_kv_heads(hf: Mapping[str, Any], n_heads: int) -> int:
    """LLaDA's `effective_n_kv_heads`: n_kv_heads, or 1 for multi-query attention, or n_heads."""
    n_kv, mqa = hf.get("n_kv_heads"), hf.get("multi_query_attention")
    if n_kv is None:
        return 1 if mqa is True else n_heads
    if mqa is not None and int(n_kv) != (1 if mqa else n_heads):
        raise ValueError(f"n_kv_heads={n_kv} contradicts multi_query_attention={mqa}")
    return int(n_kv)


LLADA = LLaDAConverter("llada", "LLaDA", ("llada",), "LLaDAModelLM")
CONVERTERS.add("llada", LLADA)  # MMaDA (LLaDA + image codes) is registered by mmdiff.convert.mmada
