"""Configuration of the shared masked-diffusion transformer.

One dataclass describes LLaDA (bidirectional Llama-style blocks), Dream (Qwen2 blocks with qkv bias, logits shifted
by one position), MMaDA (LLaDA with an extended vocabulary), GPT-2-style blocks (LayerNorm, GELU MLP, learned
positions, biases: what DiffuGPT adapts) and the small models trained by this project.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from mmdiff.dataclass_io import from_dict
from mmdiff.vocab import VocabLayout

__all__ = ["CoreConfig", "CORE_ATTENTION"]

CORE_ATTENTION = ("full", "block_causal")  # the attention a core is built (and trained) with


@dataclass
class CoreConfig:
    """Shape and numerics of `MaskedDiffusionTransformer`.

    Args:
        vocab: the vocabulary layout (special ids and modality ranges).
        vocab_size: rows of the embedding table and the output projection (>= vocab.size; may be padded).
        d_model: residual stream width.
        n_layers: number of transformer blocks.
        n_heads: query heads.
        n_kv_heads: key/value heads (grouped-query attention); defaults to n_heads.
        mlp_hidden_size: SwiGLU inner width; defaults to the Llama rule (8/3 d_model rounded up to 64).
        rope_theta: RoPE base.
        norm_eps: RMSNorm epsilon.
        qkv_bias: bias on the q, k and v projections (Dream / Qwen2).
        qk_norm: RMSNorm on queries and keys per head.
        tie_embeddings: the output projection shares the embedding matrix.
        max_seq_len: longest canvas accepted.
        logits_shift: "none" (the logit at i predicts token i, LLaDA) or "previous" (hidden state i-1 predicts
            token i and position 0 repeats position 0, Dream).
        dropout: residual dropout during training.
        attention: "full" (bidirectional, LLaDA / Dream / MDLM) or "block_causal" (block diffusion: BD3-LM, Arriola
            et al. 2025; Fast-dLLM v2; D2F): the canvas is cut into blocks of `block_size` positions from its first
            column, a position sees every position of its own block and of the blocks before it, none after. Such a
            core is trained with clean and noised copies in one pass (`mmdiff.diffusion.diffusion_loss`) and decoded
            block by block with an exact key/value cache (sampler "block-diffusion").
        block_size: the block length of "block_causal" attention (None with "full").
        norm: "rms" (RMSNorm, Llama) or "layer" (LayerNorm with a bias, GPT-2), for the block and final norms.
        mlp: "swiglu" (down(silu(gate(x)) * up(x)), Llama) or "gelu_tanh" (down(gelu_tanh(up(x))), GPT-2's
            "gelu_new"); `mlp_hidden_size` is the inner width of either.
        positions: "rope" (rotary, `rope_theta`) or "learned" (a table of `max_seq_len` position embeddings added
            to the input embeddings, GPT-2).
        linear_bias: biases on the attention output projection and the MLP (GPT-2); q/k/v biases are `qkv_bias`.
    """

    vocab: VocabLayout
    vocab_size: int | None = None
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    mlp_hidden_size: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    max_seq_len: int = 1024
    logits_shift: Literal["none", "previous"] = "none"
    dropout: float = 0.0
    attention: Literal["full", "block_causal"] = "full"
    block_size: int | None = None
    norm: Literal["rms", "layer"] = "rms"
    mlp: Literal["swiglu", "gelu_tanh"] = "swiglu"
    positions: Literal["rope", "learned"] = "rope"
    linear_bias: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.vocab, dict):
            self.vocab = VocabLayout.from_dict(self.vocab)
        if not isinstance(self.vocab, VocabLayout):
            raise TypeError(f"vocab must be a VocabLayout (e.g. VocabLayout.build(text_size)), got {self.vocab!r}")
        if self.vocab_size is None:
            self.vocab_size = self.vocab.size
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.mlp_hidden_size is None:
            self.mlp_hidden_size = 64 * ((8 * self.d_model // 3 + 63) // 64)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError(f"norm_eps and rope_theta must be > 0, got {self.norm_eps} and {self.rope_theta}")
        if self.vocab_size < self.vocab.size:
            raise ValueError(f"vocab_size={self.vocab_size} is smaller than the vocabulary layout ({self.vocab.size})")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; pick n_heads dividing d_model"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        for name, allowed in (("norm", ("rms", "layer")), ("mlp", ("swiglu", "gelu_tanh")),
                              ("positions", ("rope", "learned"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head size {self.d_model // self.n_heads} must be even for RoPE")
        if self.logits_shift not in ("none", "previous"):
            raise ValueError(f"logits_shift must be 'none' or 'previous', got {self.logits_shift!r}")
        if self.attention not in CORE_ATTENTION:
            raise ValueError(f"attention must be one of {CORE_ATTENTION}, got {self.attention!r}")
        if self.attention == "block_causal":
            if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
                raise ValueError(f"attention='block_causal' needs block_size, a positive integer (the block length, "
                                 f"e.g. 8), got {self.block_size!r}")
            if self.logits_shift != "none":
                raise ValueError("attention='block_causal' needs logits_shift='none': with shifted logits the first "
                                 "position of a block would be predicted from the block before it")
        elif self.block_size is not None:
            raise ValueError(f"block_size={self.block_size} is only used with attention='block_causal'; set "
                             "attention='block_causal' (block diffusion) or drop block_size")

    @property
    def head_dim(self) -> int:
        """Width of one attention head (d_model / n_heads)."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["vocab"] = self.vocab.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoreConfig:
        data = dict(data)
        vocab = data.get("vocab")
        if isinstance(vocab, dict):
            data["vocab"] = VocabLayout.from_dict(vocab)
        return from_dict(cls, data, where="core config")
