"""GPT-2 checkpoints <-> the shared core, for adapting causal models to masked diffusion (DiffuGPT: Gong et al.
2025, "Scaling Diffusion Language Models via Adaptation from Autoregressive Models").

GPT-2 (Radford et al., 2019) is a pre-norm transformer with LayerNorm (with biases), learned absolute positions,
a GELU MLP (tanh approximation, "gelu_new") and biases on every projection; its output projection is tied to the
token embedding unless `tie_word_embeddings` is false. The core runs it with `norm="layer"`, `mlp="gelu_tanh"`,
`positions="learned"`, `linear_bias=True`, `qkv_bias=True`. The logit at position i predicts token i + 1, which a
masked-diffusion core reads as `logits_shift="previous"` (hidden state i-1 predicts token i, Dream's convention):
the same network, so this layout reads back as "previous" and writes either.

The Hugging Face layout (`GPT2LMHeadModel`; the original checkpoints lack the `transformer.` prefix, both load).
GPT-2's projections are `Conv1D` modules whose weights are stored (in, out), the transpose of a `nn.Linear`'s:

    transformer.wte.weight                       token embedding (vocab_size, n_embd)
    transformer.wpe.weight                       position embedding (n_positions, n_embd)
    transformer.h.{i}.ln_1.{weight,bias}         LayerNorm before attention
    transformer.h.{i}.attn.c_attn.{weight,bias}  q, k, v fused: (n_embd, 3 n_embd), (3 n_embd,)
    transformer.h.{i}.attn.c_proj.{weight,bias}  attention output projection (n_embd, n_embd)
    transformer.h.{i}.ln_2.{weight,bias}         LayerNorm before the MLP
    transformer.h.{i}.mlp.c_fc.{weight,bias}     MLP in (n_embd, n_inner)
    transformer.h.{i}.mlp.c_proj.{weight,bias}   MLP out (n_inner, n_embd)
    transformer.ln_f.{weight,bias}               final LayerNorm
    lm_head.weight                               (only with tie_word_embeddings false)

>>> from mmdiff.convert import GPT2
>>> model = GPT2.load("gpt2")          # doctest: +SKIP   (a folder holding config.json + model.safetensors)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmdiff.convert.base import Converter, _materialize_index_buffers, _place, _skip_init, dtype_name, read_tensors
from mmdiff.core.config import CoreConfig
from mmdiff.io import StateDictMismatch
from mmdiff.modeling import DiffusionModel, ModelConfig, SamplerConfig
from mmdiff.registry import CONVERTERS
from mmdiff.vocab import VocabLayout

__all__ = ["GPT2Converter", "GPT2", "gpt2_to_core", "core_to_gpt2"]

_DEFAULTS = {"n_inner": None, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
             "tie_word_embeddings": True, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
             "reorder_and_upcast_attn": False, "add_cross_attention": False}
_PREFIX = "transformer."
_IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older exports hold; no weights


def _layer_pairs(i: int) -> list[tuple[str, str, bool]]:
    """(GPT-2 name, core name, transposed) of layer i's 1:1 tensors (c_attn is split apart)."""
    g, c = f"h.{i}.", f"blocks.{i}."
    pairs = [("ln_1", "attn_norm", False), ("attn.c_proj", "attn.o_proj", True), ("ln_2", "mlp_norm", False),
             ("mlp.c_fc", "mlp.up_proj", True), ("mlp.c_proj", "mlp.down_proj", True)]
    return [(f"{g}{gpt}.{part}", f"{c}{core}.{part}", transposed and part == "weight")
            for gpt, core, transposed in pairs for part in ("weight", "bias")]


def _pairs(n_layers: int) -> list[tuple[str, str, bool]]:
    outer = [("wte.weight", "embed_tokens.weight", False), ("wpe.weight", "embed_positions.weight", False),
             ("ln_f.weight", "norm.weight", False), ("ln_f.bias", "norm.bias", False)]
    return outer + [p for i in range(n_layers) for p in _layer_pairs(i)]


def gpt2_to_core(state: Mapping[str, Tensor], n_layers: int, tied: bool = True) -> dict[str, Tensor]:
    """GPT-2 tensors (names without the `transformer.` prefix; `lm_head.weight` untied) -> the core's state dict.

    >>> import torch
    >>> gpt = {"wte.weight": torch.zeros(5, 4), "wpe.weight": torch.zeros(8, 4), "ln_f.weight": torch.ones(4),
    ...        "ln_f.bias": torch.zeros(4)}
    >>> sorted(gpt2_to_core(gpt, n_layers=0))
    ['embed_positions.weight', 'embed_tokens.weight', 'norm.bias', 'norm.weight']
    """
    out = {core: (state[gpt].t() if transposed else state[gpt]).contiguous() for gpt, core, transposed in
           _pairs(n_layers)}
    for i in range(n_layers):
        weight, bias = state[f"h.{i}.attn.c_attn.weight"], state[f"h.{i}.attn.c_attn.bias"]  # (d, 3d), (3d,)
        for part, w, b in zip("qkv", weight.t().chunk(3, 0), bias.chunk(3, 0), strict=True):
            out[f"blocks.{i}.attn.{part}_proj.weight"] = w.contiguous()
            out[f"blocks.{i}.attn.{part}_proj.bias"] = b.contiguous()
    if not tied:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


def core_to_gpt2(state: Mapping[str, Tensor], n_layers: int, tied: bool = True) -> dict[str, Tensor]:
    """The inverse of `gpt2_to_core`: GPT-2 names with the `transformer.` prefix, in GPT-2's order."""
    out = {}
    for gpt, core, transposed in _pairs(n_layers):
        out[_PREFIX + gpt] = state[core].t() if transposed else state[core]
    for i in range(n_layers):
        parts = [state[f"blocks.{i}.attn.{p}_proj.weight"] for p in "qkv"]
        out[f"{_PREFIX}h.{i}.attn.c_attn.weight"] = torch.cat(parts, 0).t()
        out[f"{_PREFIX}h.{i}.attn.c_attn.bias"] = torch.cat([state[f"blocks.{i}.attn.{p}_proj.bias"] for p in "qkv"])
    if not tied:
        out["lm_head.weight"] = state["lm_head.weight"]
    return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def _order(name: str) -> tuple[int, int, str]:
    bare = name.removeprefix(_PREFIX)
    if bare.startswith("h."):
        return 1, int(bare.split(".")[1]), bare
    return (0 if bare.startswith(("wte", "wpe")) else 2), 0, bare


class GPT2Converter(Converter):
    """GPT-2's Hugging Face layout (`GPT2LMHeadModel`), loaded as a core with LayerNorm, GELU MLP, learned
    positions and biases; the weights are transposed from GPT-2's Conv1D layout and its fused q/k/v split."""

    name = "gpt2"
    label = "GPT-2"
    model_types = ("gpt2",)

    def core_config(self, hf_config: Mapping[str, Any], *, specials: Mapping[str, int] | None = None) -> CoreConfig:
        """The core a GPT-2 config.json describes.

        Raises:
            ValueError: a missing field, or a GPT-2 variant the core does not run (another activation, attention
                scaled by layer index, cross-attention, unscaled attention).
        """
        hf = {**_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None or k not in _DEFAULTS}}
        d_model, n_layers, n_heads, positions, vocab_size = (int(self.require(hf, f)) for f in (
            "n_embd", "n_layer", "n_head", "n_positions", "vocab_size"))
        bad = []
        if hf["activation_function"] not in ("gelu_new", "gelu_pytorch_tanh"):
            bad.append(f"activation_function={hf['activation_function']!r} (only 'gelu_new')")
        for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                          ("reorder_and_upcast_attn", False), ("add_cross_attention", False)):
            if bool(hf[key]) != want:
                bad.append(f"{key}={hf[key]!r} (only {want})")
        if bad:
            raise ValueError(f"this GPT-2 config describes a variant the core does not run: {'; '.join(bad)}")
        special = self.specials_from(hf, specials)
        if "mask" not in special:
            raise ValueError("GPT-2 has no mask token, which masked diffusion needs: load it with specials={'mask': "
                             "ID}, ID a token to repurpose (e.g. a rare one) or an added row of a resized embedding, "
                             "or set mask_token_id in config.json")
        vocab = self.stored_vocab(hf, special) or VocabLayout(size=vocab_size, special=special,
                                                             ranges={"text": (0, vocab_size)})
        return CoreConfig(
            vocab=vocab, vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
            mlp_hidden_size=int(hf["n_inner"] or 4 * d_model), norm_eps=float(hf["layer_norm_epsilon"]),
            qkv_bias=True, tie_embeddings=bool(hf["tie_word_embeddings"]), max_seq_len=positions,
            logits_shift="previous", norm="layer", mlp="gelu_tanh", positions="learned", linear_bias=True,
        )

    def comparable(self, core: CoreConfig) -> dict[str, Any]:
        data = super().comparable(core)
        data.pop("logits_shift")  # the layout does not store it: "previous" and a next-token model are one network
        data.pop("rope_theta")  # no rotary positions
        return data

    def config_fields(self, core: CoreConfig, dtype: torch.dtype) -> dict[str, Any]:
        wrong = [f"{k}={getattr(core, k)!r} (GPT-2: {v!r})" for k, v in (
            ("norm", "layer"), ("mlp", "gelu_tanh"), ("positions", "learned"), ("linear_bias", True),
            ("qkv_bias", True), ("qk_norm", False), ("attention", "full"), ("n_kv_heads", core.n_heads))
            if getattr(core, k) != v]
        if wrong:
            raise ValueError(f"the GPT-2 layout cannot hold this core: {', '.join(wrong)}")
        fields: dict[str, Any] = {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": core.d_model,
            "n_layer": core.n_layers, "n_head": core.n_heads, "n_inner": core.mlp_hidden_size,
            "n_positions": core.max_seq_len, "vocab_size": core.vocab_size, "layer_norm_epsilon": core.norm_eps,
            "activation_function": "gelu_new", "tie_word_embeddings": core.tie_embeddings, "resid_pdrop": 0.0,
            "embd_pdrop": 0.0, "attn_pdrop": 0.0, "torch_dtype": dtype_name(dtype), "use_cache": True,
        }
        fields.update({field: core.vocab.special.get(name) for name, field in self.config_specials.items()})
        return fields

    def default_sampler(self) -> SamplerConfig:
        return SamplerConfig(sampler="dream")  # shifted logits, as Dream decodes them

    def export_tensors(self, model: DiffusionModel) -> dict[str, Tensor]:
        core = model.config.core
        return core_to_gpt2(model.core.state_dict(), core.n_layers, core.tie_embeddings)

    def read_weights(self, folder: Path, config: ModelConfig, tokenizer: Any, device: str | torch.device,
                     dtype: torch.dtype | None, options: Mapping[str, Any]) -> DiffusionModel:
        """Reads every tensor (names with or without the `transformer.` prefix), checks names and shapes against
        config.json in one report, and loads the transposed / split tensors into a core built on the meta device."""
        entries = {name: entry for name, entry in self.entries(folder, config, options).items()
                   if not name.endswith(_IGNORED)}
        core = config.core
        expected = _expected_shapes(core)
        by_bare = {name.removeprefix(_PREFIX): name for name in entries}
        missing = [(name, name) for name in expected if name not in by_bare]
        unexpected = [stored for bare, stored in by_bare.items() if bare not in expected]
        shapes = [(by_bare[b], b, entries[by_bare[b]].shape, want) for b, want in expected.items()
                  if b in by_bare and tuple(entries[by_bare[b]].shape) != want]
        if missing or unexpected or shapes:
            raise StateDictMismatch(self.report(folder, missing, unexpected, shapes, entries, expected))
        stored: dict[str, Tensor] = {}
        for path in {entries[n].file for n in by_bare.values()}:
            group = {n: e for n, e in entries.items() if e.file == path}
            stored.update({name.removeprefix(_PREFIX): tensor for name, tensor in read_tensors(path, group)})
        state = {k: _place(v, device, dtype) for k, v in gpt2_to_core(stored, core.n_layers,
                                                                      core.tie_embeddings).items()}
        with torch.device("meta"), _skip_init():
            model = DiffusionModel(config, tokenizer=tokenizer, sampler_config=self.default_sampler(),
                                   load_pretrained_adapters=False)
        model.core.load_state_dict(state, strict=True, assign=True)
        _materialize_index_buffers(model, device)
        return model.eval()


def _expected_shapes(core: CoreConfig) -> dict[str, tuple[int, ...]]:
    """GPT-2 tensor name (no prefix) -> shape, for a core."""
    d, inner, V = core.d_model, core.mlp_hidden_size, core.vocab_size
    out: dict[str, tuple[int, ...]] = {"wte.weight": (V, d), "wpe.weight": (core.max_seq_len, d),
                                       "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(core.n_layers):
        g = f"h.{i}."
        out.update({g + "ln_1.weight": (d,), g + "ln_1.bias": (d,), g + "attn.c_attn.weight": (d, 3 * d),
                    g + "attn.c_attn.bias": (3 * d,), g + "attn.c_proj.weight": (d, d), g + "attn.c_proj.bias": (d,),
                    g + "ln_2.weight": (d,), g + "ln_2.bias": (d,), g + "mlp.c_fc.weight": (d, inner),
                    g + "mlp.c_fc.bias": (inner,), g + "mlp.c_proj.weight": (inner, d), g + "mlp.c_proj.bias": (d,)})
    if not core.tie_embeddings:
        out["lm_head.weight"] = (V, d)
    return out


GPT2 = GPT2Converter()
CONVERTERS.add("gpt2", GPT2)
