"""DIFFA's dual audio adapter (Zhou et al., 2025, "DIFFA: Large Language Diffusion Models Can Listen and Understand",
hub `zhoujiaming777/DIFFA`): a frozen Whisper encoder read twice.

- semantic connector: the encoder's last hidden state (the positions covering the clip) through DIFFA's conv
  subsampler (`diffa_conv`, 4x shorter; keys `projector.*` = DIFFA's `semantic_connector.*`);
- acoustic connector: a 2-layer Q-Former (BERT layers with cross-attention, Li et al., 2023, "BLIP-2") run once per
  selected encoder layer with that layer's own `prompt_size` learned queries over all of the window's positions; the
  per-layer outputs are mixed with a softmax over layers (one weight vector per query), then LayerNorm + Linear to
  the core's width (keys `acoustic_connector.*`, DIFFA's names: `layer_prompts.{k}`, `layer_weights`,
  `qformer.layer.{j}.{attention,crossattention,intermediate,output}.*`, `proj.{0,1}.*`);
- prompt embeddings: `trainable_prompts` (20 x d_model), which DIFFA's stage 1 puts before the semantic tokens; its
  stage 2 (the released checkpoint's inference, `model.stage = 2`) puts the acoustic tokens there instead.

A clip's soft tokens, in DIFFA's order: stage 2 = [acoustic x prompt_size] [semantic x n // 4]; stage 1 =
[prompts x 20] [semantic x n // 4], n = ceil(samples / 320) encoder positions.

>>> from mmdiff.adapters import build_adapter
>>> adapter = build_adapter("audio/diffa", d_model=8, pretrained=False, prompt_size=3, target_layers=[1, 2],
...     qformer_intermediate_size=16, whisper_config={"num_mel_bins": 8, "d_model": 16, "encoder_layers": 2,
...     "encoder_attention_heads": 2, "encoder_ffn_dim": 32, "max_source_positions": 50})
>>> adapter.num_tokens((16000,))  # 3 acoustic + 50 // 4 semantic
15
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmdiff.adapters.audio import WHISPER_STRIDE, WhisperAdapter, WhisperAdapterConfig
from mmdiff.adapters.base import register_adapter

__all__ = ["DiffaAdapterConfig", "DiffaAdapter", "QFormerLayer", "AcousticConnector", "DIFFA_TARGET_LAYERS",
           "DIFFA_PROMPTS"]

# QformerConnector.target_layer_ids of DIFFA's modeling_DIFFA.py, per Whisper checkpoint (indices into the encoder's
# hidden_states tuple: 0 = the embeddings, i = the output of layer i - 1 ... the last = the final LayerNorm's output)
DIFFA_TARGET_LAYERS = {"openai/whisper-tiny": [0, 1, 2, 3], "openai/whisper-small": [2, 5, 8, 11],
                       "openai/whisper-medium": [5, 11, 17, 23],
                       "openai/whisper-large-v3": [3, 7, 11, 15, 19, 23, 27, 31]}
DIFFA_PROMPTS = 20  # nn.Embedding(20, d_model): DIFFA's trainable_prompts


@dataclass
class DiffaAdapterConfig(WhisperAdapterConfig):
    """The Whisper adapter plus DIFFA's acoustic connector and prompt embeddings.

    Args:
        prompt_size: learned queries per selected layer (= acoustic soft tokens; DIFFA's config `prompt_size`, 64).
        target_layers: indices into the encoder's hidden_states tuple the Q-Former reads (`DIFFA_TARGET_LAYERS`).
        qformer_layers: BERT layers of the Q-Former (DIFFA: 2).
        qformer_heads: its attention heads; None = the Whisper encoder's (as DIFFA sets them).
        qformer_intermediate_size: its MLP width (DIFFA keeps `BertConfig()`'s 3072).
        qformer_eps: its LayerNorm eps (BertConfig's 1e-12).
        stage: 2 = acoustic tokens first (the released inference), 1 = the 20 prompt embeddings first.
        num_prompts: rows of `trainable_prompts` (20).
    """

    projector: str = "diffa_conv"
    prompt_size: int = 64
    target_layers: list[int] = field(default_factory=lambda: list(DIFFA_TARGET_LAYERS["openai/whisper-small"]))
    qformer_layers: int = 2
    qformer_heads: int | None = None
    qformer_intermediate_size: int = 3072
    qformer_eps: float = 1e-12
    stage: int = 2
    num_prompts: int = DIFFA_PROMPTS

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("prompt_size", "qformer_layers", "qformer_intermediate_size", "num_prompts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 (prompt embeddings + semantic tokens) or 2 (acoustic + semantic "
                             f"tokens, DIFFA's inference), got {self.stage!r}")
        if not self.target_layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0
                                          for i in self.target_layers):
            raise ValueError(f"target_layers must be a non-empty list of hidden_states indices >= 0, got "
                             f"{self.target_layers!r} (DIFFA's for whisper-small: [2, 5, 8, 11])")
        if self.whisper_config is not None:
            top = int(self.whisper_config.get("encoder_layers", 0))
            if max(self.target_layers) > top:
                raise ValueError(f"target_layers {self.target_layers} reach past the encoder's hidden_states "
                                 f"(0..{top} for {top} layers); use indices <= {top}")


def _attention_block(width: int, eps: float) -> nn.ModuleDict:
    """BERT's attention: `self.{query,key,value}` and `output.{dense,LayerNorm}`."""
    return nn.ModuleDict({
        "self": nn.ModuleDict({n: nn.Linear(width, width) for n in ("query", "key", "value")}),
        "output": nn.ModuleDict({"dense": nn.Linear(width, width), "LayerNorm": nn.LayerNorm(width, eps=eps)}),
    })


class QFormerLayer(nn.Module):
    """One post-norm BERT layer with cross-attention (BERT's `BertLayer` of a decoder config, no masks).

    h = LN(h + SelfAttn(h)); h = LN(h + CrossAttn(h, memory)); h = LN(h + W2 gelu(W1 h)).
    """

    def __init__(self, width: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"the Q-Former width {width} is not divisible by its {heads} heads")
        self.heads = heads
        self.attention = _attention_block(width, eps)
        self.crossattention = _attention_block(width, eps)
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(width, intermediate)})
        self.output = nn.ModuleDict({"dense": nn.Linear(intermediate, width),
                                     "LayerNorm": nn.LayerNorm(width, eps=eps)})

    def _attend(self, block: nn.ModuleDict, x: Tensor, memory: Tensor) -> Tensor:
        proj = block["self"]
        b, n, width = x.shape
        hd = width // self.heads

        def heads(t: Tensor) -> Tensor:  # (B, L, C) -> (B, H, L, hd)
            return t.view(b, -1, self.heads, hd).transpose(1, 2)

        q, k, v = heads(proj["query"](x)), heads(proj["key"](memory)), heads(proj["value"](memory))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # (B, H, n, hd)
        out = out.transpose(1, 2).reshape(b, n, width)  # (B, n, C)
        return block["output"]["LayerNorm"](block["output"]["dense"](out) + x)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        """Queries (B, n, C) attending to memory (B, M, C) -> (B, n, C)."""
        x = self._attend(self.attention, x, x)
        x = self._attend(self.crossattention, x, memory)
        hidden = torch.nn.functional.gelu(self.intermediate["dense"](x))
        return self.output["LayerNorm"](self.output["dense"](hidden) + x)


class _QFormer(nn.Module):
    def __init__(self, layers: list[QFormerLayer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        for layer in self.layer:
            x = layer(x, memory)
        return x


class AcousticConnector(nn.Module):
    """DIFFA's `QformerConnector`: per selected layer k, queries (prompt_size, C) through the Q-Former over that
    layer's states; a per-query softmax over the layers mixes them; LayerNorm + Linear to d_model.

    Args:
        width: Whisper's d_model C.
        d_model: the core's width.
        config: the adapter config (prompt_size, target_layers, Q-Former shape).
        heads: the Q-Former's attention heads.
    """

    def __init__(self, width: int, d_model: int, config: DiffaAdapterConfig, heads: int) -> None:
        super().__init__()
        self.target_layers = list(config.target_layers)
        self.layer_prompts = nn.ParameterList(
            [nn.Parameter(torch.randn(1, config.prompt_size, width)) for _ in self.target_layers])
        self.layer_weights = nn.Parameter(torch.zeros(config.prompt_size, len(self.target_layers)))
        self.qformer = _QFormer([QFormerLayer(width, heads, config.qformer_intermediate_size, config.qformer_eps)
                                 for _ in range(config.qformer_layers)])
        self.proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d_model))

    def forward(self, hidden_states: Sequence[Tensor]) -> Tensor:
        """The encoder's hidden_states tuple (each (B, M, C)) -> (B, prompt_size, d_model)."""
        outs = []
        for k, index in enumerate(self.target_layers):
            states = hidden_states[index]  # (B, M, C)
            queries = self.layer_prompts[k].expand(states.shape[0], -1, -1).to(states.dtype)  # (B, P, C)
            outs.append(self.qformer(queries, states))
        stacked = torch.stack(outs, dim=2)  # (B, P, K, C)
        weights = self.layer_weights.softmax(dim=-1).to(stacked.dtype)[..., None]  # (P, K, 1)
        return self.proj((stacked * weights).sum(dim=2))  # (B, P, d_model)


@register_adapter("audio/diffa")
class DiffaAdapter(WhisperAdapter):
    """Whisper encoder + DIFFA's semantic connector (`projector`, diffa_conv) + acoustic connector + prompts.

    State keys: `encoder.*` (transformers' WhisperEncoder), `projector.*` (DIFFA's `semantic_connector.*`),
    `acoustic_connector.*` and `trainable_prompts.weight` (DIFFA's own names).
    """

    config_class: ClassVar[type] = DiffaAdapterConfig
    config: DiffaAdapterConfig

    def __init__(self, config: DiffaAdapterConfig, *, load_pretrained: bool | None = None) -> None:
        super().__init__(config, load_pretrained=load_pretrained)
        fields: dict[str, Any] = self.config.whisper_config  # type: ignore[assignment]
        top = int(fields["encoder_layers"])
        if max(config.target_layers) > top:
            raise ValueError(f"target_layers {config.target_layers} reach past the encoder's hidden_states (0..{top})")
        heads = config.qformer_heads or int(fields["encoder_attention_heads"])
        self.acoustic_connector = AcousticConnector(self.encoder_width, config.d_model, config, heads)
        self.trainable_prompts = nn.Embedding(config.num_prompts, config.d_model)

    @property
    def prefix_tokens(self) -> int:
        """Soft tokens before the semantic ones: prompt_size (stage 2) or num_prompts (stage 1)."""
        return self.config.prompt_size if self.config.stage == 2 else self.config.num_prompts

    def num_tokens(self, input_shape: Sequence[int] | None = None) -> int:
        """prefix_tokens + the semantic tokens of a clip (0 when the clip is too short for one semantic token)."""
        semantic = super().num_tokens(input_shape)
        return semantic + self.prefix_tokens if semantic >= 1 else 0

    def forward(self, signal: dict[str, Tensor]) -> Tensor:
        """A signal (`prepare`) -> (B, N, d_model): per clip [prefix tokens, semantic tokens], right-aligned."""
        features, frames = self._signal_tensors(signal)
        param = next(self.encoder.parameters())
        trainable = any(p.requires_grad for p in self.encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            out = self.encoder(input_features=features.to(param.dtype), output_hidden_states=True)
        keep = (frames + WHISPER_STRIDE - 1) // WHISPER_STRIDE  # (B,) positions covering each clip
        semantic = self._project([out.last_hidden_state[i, : int(n)] for i, n in enumerate(keep)])  # (m_i, D)
        if self.config.stage == 2:
            prefix = self.acoustic_connector(out.hidden_states)  # (B, P, D)
        else:
            prefix = self.trainable_prompts.weight[None].expand(len(semantic), -1, -1)  # (B, 20, D)
        rows = [torch.cat([prefix[i].to(s.dtype), s]) for i, s in enumerate(semantic)]
        counts = [int(n) for n in signal["tokens"]]
        if [r.shape[0] for r in rows] != counts:
            raise RuntimeError(f"the {self.key} adapter gave {[r.shape[0] for r in rows]} tokens but prepared "
                               f"{counts}; the signal does not come from this adapter's prepare")
        width = int(signal["width"].max())
        embeds = rows[0].new_zeros(len(rows), width, self.d_model)  # (B, N, d_model)
        for i, row in enumerate(rows):
            embeds[i, width - row.shape[0]:] = row
        return embeds
