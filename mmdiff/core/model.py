"""The shared masked-diffusion transformer.

A bidirectional pre-norm transformer (RMSNorm, RoPE, SwiGLU, grouped-query attention) as used by
LLaDA (Nie et al., 2025, "Large Language Diffusion Models"), Dream 7B (Ye et al., 2025) and MDLM
(Sahoo et al., 2024). Its input is token ids and/or soft-token embeddings (continuous modality features); its
output is logits at the positions a loss or sampler asks for, never more.

Built with `attention="block_causal"` (`CoreConfig`) it is a block-diffusion core (BD3-LM, Arriola et al. 2025,
"Block Diffusion"; Fast-dLLM v2; D2F): bidirectional inside blocks of `block_size` positions, causal across them,
so the keys and values of finished blocks can be cached exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmdiff.core.config import CoreConfig
from mmdiff.core.masks import block_causal_rows
from mmdiff.registry import ARCHITECTURES

__all__ = ["MaskedDiffusionTransformer", "CoreOutput", "KVCache", "RMSNorm", "make_norm", "rotary_embedding",
           "place_soft_tokens"]


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32 (as LLaDA and Llama do), cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # one fused kernel, the same numbers
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


def make_norm(cfg: CoreConfig, dim: int) -> nn.Module:
    """The block / final norm of a core: RMSNorm, or LayerNorm with a bias (`CoreConfig.norm="layer"`)."""
    return RMSNorm(dim, cfg.norm_eps) if cfg.norm == "rms" else nn.LayerNorm(dim, eps=cfg.norm_eps)


def rotary_embedding(position_ids: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (B, 1, L, head_dim) in float32 for non-interleaved (rotate-half) RoPE."""
    exponents = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)  # (head_dim/2,)
    angles = position_ids.float()[..., None] * inv_freq  # (B, L, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, L, head_dim)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates (B, H, L, D) queries or keys; the arithmetic is float32."""
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat([-x32[..., half:], x32[..., :half]], dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.linear_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(
        self, x: Tensor, cos: Tensor | None, sin: Tensor | None, mask: Tensor | None,
        past: tuple[Tensor, Tensor] | None = None, window: tuple[int, int] | Tensor | None = None,
        queries: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attention of the L input positions (rotated by `cos`, `sin`; None with learned positions); with `past`
        (keys, values of the whole canvas) the input is the window [lo, hi) of that canvas and attends to the cached
        keys outside it; with `queries` (B, K) only those input positions ask (keys and values still come from all
        L). Returns the output (B, L or K, d_model) and this call's (keys, values) over all positions it attended to
        (post-RoPE)."""
        B, L, _ = x.shape
        k = self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, L, D)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, L, D)
        q_cos, q_sin = cos, sin
        if queries is not None:
            x = _gather_rows(x, queries)  # (B, K, d_model)
            if cos is not None:
                q_cos = _gather_rows(cos.expand(B, -1, -1, -1), queries, dim=2)  # (B, 1, K, D)
                q_sin = _gather_rows(sin.expand(B, -1, -1, -1), queries, dim=2)
            if mask is not None and mask.shape[2] != 1:
                mask = _gather_rows(mask.expand(B, -1, -1, -1), queries, dim=2)  # (B, 1|H, K, L_canvas)
        Q = x.shape[1]
        q = self.q_proj(x).view(B, Q, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, Q, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if cos is not None:
            q, k = apply_rotary(q, q_cos, q_sin), apply_rotary(k, cos, sin)
        if past is not None:  # the window's fresh keys/values are written into the cache in place (no O(L) copy)
            if isinstance(window, Tensor):  # per-row cache columns (B, L)
                _write_columns(past[0], window, k)
                _write_columns(past[1], window, v)
            else:
                lo, hi = window
                past[0][:, :, lo:hi] = k
                past[1][:, :, lo:hi] = v
            k, v = past  # (B, Hkv, L_canvas, D)
        if mask is not None and mask.dtype != q.dtype and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)  # 0 and -inf are exact in every float type
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, Q, self.n_heads * self.head_dim)), (k, v)  # (B, Q, d)


def _write_columns(cache: Tensor, columns: Tensor, new: Tensor) -> None:
    """cache[b, h, columns[b, j]] = new[b, h, j] for a (B, H, L_c, D) cache whose last dimension is contiguous (a
    slice of columns of a bigger cache included): one row copy of D values per (b, h, j), which costs about a third
    of `scatter_` along dimension 2 with an expanded index."""
    B, H, L_c, D = cache.shape
    s_b, s_h, s_l, s_d = cache.stride()
    if (s_d != 1 or s_l != D or s_h % D or s_b % D or cache.dtype != new.dtype
            or torch.compiler.is_compiling()):  # the general scatter (a traced as_strided view cannot be bounded)
        cache.scatter_(2, columns[:, None, :, None].expand(-1, H, -1, D), new)
        return
    s_b, s_h = s_b // D, s_h // D  # in rows of D values
    rows = (torch.arange(B, device=cache.device)[:, None, None] * s_b
            + torch.arange(H, device=cache.device)[None, :, None] * s_h + columns[:, None, :])  # (B, H, L)
    flat = cache.as_strided(((B - 1) * s_b + (H - 1) * s_h + L_c, D), (D, 1))  # every row the cache view reaches
    flat.index_copy_(0, rows.reshape(-1), new.reshape(-1, D))


def _additive(mask: Tensor | None, x: Tensor) -> Tensor | None:
    """A boolean attention mask (True = may attend) as the additive bias (0 / -inf) that scaled_dot_product_attention
    would make of it in every layer, made once per forward pass in the attention's dtype (autocast's, else x's): the
    same numbers, bit for bit, without a conversion per layer (a few percent of a block-diffusion pass over a
    1024-token cache on the CPU; in training one bias is kept instead of one per layer)."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    kind = x.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
    # broadcast (stride-0) dimensions stay broadcast: the bias is made at size 1 there and expanded back
    small = mask[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in mask.stride())]
    return torch.zeros(small.shape, dtype=dtype, device=mask.device).masked_fill_(~small, -math.inf).expand(mask.shape)


def _gather_rows(x: Tensor, index: Tensor, dim: int = 1) -> Tensor:
    """x[b, ..., index[b, k], ...] along `dim` (1 for (B, L, d), 2 for (B, H, L, D)): (B, K) index -> K rows."""
    shape = list(x.shape)
    shape[dim] = index.shape[1]
    view = [index.shape[0]] + [1] * (x.dim() - 1)
    view[dim] = index.shape[1]
    return x.gather(dim, index.view(view).expand(shape))


def place_soft_tokens(embeds: Tensor, soft_embeds: Tensor, soft_positions: Tensor,
                      window: tuple[int, int] | None = None) -> Tensor:
    """The one placement of soft tokens (image / audio features) into token embeddings, for every caller.

    Args:
        embeds: (B', L, d_model) token embeddings of the canvas, or of its window [lo, hi) (a cached call).
        soft_embeds: (B, N, d_model) soft tokens; B' a multiple of B (classifier-free guidance runs the batch
            twice: the soft tokens repeat).
        soft_positions: (B, N) canvas positions of the soft tokens.
        window: (lo, hi) when `embeds` covers only those canvas positions: the soft tokens inside it are placed, the
            rest skipped; None = the whole canvas (every position must be inside).

    Returns:
        (B', L, d_model) embeddings with the soft tokens in place (a new tensor).

    >>> place_soft_tokens(torch.zeros(1, 4, 2), torch.ones(1, 1, 2), torch.tensor([[2]]))[0, :, 0].tolist()
    [0.0, 0.0, 1.0, 0.0]
    """
    repeat = embeds.shape[0] // soft_embeds.shape[0]
    if repeat > 1:
        soft_embeds, soft_positions = soft_embeds.repeat(repeat, 1, 1), soft_positions.repeat(repeat, 1)
    if window is None:
        index = soft_positions[..., None].expand(-1, -1, embeds.shape[-1])  # (B', N, d_model)
        return embeds.scatter(1, index, soft_embeds.to(embeds.dtype))
    lo = window[0]
    inside = (soft_positions >= lo) & (soft_positions < lo + embeds.shape[1])  # (B', N)
    if not bool(inside.any()):
        return embeds
    rows, slots = inside.nonzero(as_tuple=True)
    embeds = embeds.clone()
    embeds[rows, soft_positions[rows, slots] - lo] = soft_embeds[rows, slots].to(embeds.dtype)
    return embeds


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=bias)
        self.up_proj = nn.Linear(d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _identity(x: Tensor) -> Tensor:
    return x


class GeluMLP(nn.Module):
    """down(gelu_tanh(up(x))), with biases when `bias` (GPT-2's MLP: c_fc, gelu_new, c_proj)."""

    def __init__(self, d_model: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.up_proj = nn.Linear(d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__()
        self.attn_norm = make_norm(cfg, cfg.d_model)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg, cfg.d_model)
        self.mlp = (SwiGLU(cfg.d_model, cfg.mlp_hidden_size, cfg.linear_bias) if cfg.mlp == "swiglu" else
                    GeluMLP(cfg.d_model, cfg.mlp_hidden_size, cfg.linear_bias))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, cos: Tensor | None, sin: Tensor | None, mask: Tensor | None,
        past: tuple[Tensor, Tensor] | None = None, window: tuple[int, int] | Tensor | None = None,
        queries: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """(B, L, d_model) -> (B, L, d_model), or (B, K, d_model) at the positions `queries` (B, K) only (keys and
        values from all L: what the last block needs when only some positions' logits are asked for)."""
        attended, kv = self.attn(self.attn_norm(x), cos, sin, mask, past, window, queries)
        if queries is not None:
            x = _gather_rows(x, queries)
        drop = self.dropout if self.training and self.dropout.p > 0 else _identity
        x = x + drop(attended)
        return x + drop(self.mlp(self.mlp_norm(x))), kv


@dataclass
class KVCache:
    """Keys and values (after RoPE) of every position of a canvas, per layer: keys[i], values[i] (B, H_kv, L, D).

    Made by `core(..., use_cache=True)`; passed back as `core(window_ids, cache=..., cache_window=(lo, hi))` to run
    only the positions [lo, hi) against the cached rest (Fast-dLLM's prefix cache: hi = L; dual cache: hi = the end
    of the current block). Exact while the cached positions' inputs and everything they attend to are unchanged.
    A window call writes its fresh keys and values into the cache in place (the cache then describes the canvas
    with the window's current tokens, as autoregressive decoding needs).
    """

    keys: list[Tensor]
    values: list[Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def select_rows(self, rows: Tensor) -> KVCache:
        """A copy holding only the batch rows `rows` (R,)."""
        return KVCache([k[rows] for k in self.keys], [v[rows] for v in self.values])


@dataclass
class CoreOutput:
    """logits: (B, L, V) for all positions, (N, V) for a boolean selection, (B, K, V) for an index selection, or
    None; hidden: final normed hidden states (B, L, d_model) when asked for; cache: the keys and values of the
    canvas when `use_cache=True`; head_hidden: with `apply_head=False`, what the output projection would score
    instead of the logits (the final-normed, shifted hidden states at the `logits_at` positions: (N, d_model),
    (B, K, d_model) or (B, L, d_model)), for a loss that applies `head_weight` in chunks."""

    logits: Tensor | None
    hidden: Tensor | None = None
    cache: KVCache | None = None
    head_hidden: Tensor | None = None


@ARCHITECTURES.register("masked_diffusion_transformer")
class MaskedDiffusionTransformer(nn.Module):
    """Bidirectional transformer over a canvas of token ids and soft tokens.

    >>> from mmdiff import CoreConfig, VocabLayout
    >>> cfg = CoreConfig(vocab=VocabLayout.build(text_size=32), d_model=32, n_layers=1, n_heads=2)
    >>> core = MaskedDiffusionTransformer(cfg)
    >>> core(torch.zeros(2, 5, dtype=torch.long)).logits.shape
    torch.Size([2, 5, 36])
    """

    def __init__(self, config: CoreConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_positions = (nn.Embedding(config.max_seq_len, config.d_model) if config.positions == "learned"
                                else None)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = make_norm(config, config.d_model)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self._compiled: list[nn.Module] | None = None  # torch.compile'd blocks (`compile_blocks`)
        self._rope_tables: dict[torch.device, tuple[Tensor, Tensor]] = {}  # per device: cos, sin of 0..max_seq_len-1
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 2:
                residual_out = name.endswith(("o_proj.weight", "down_proj.weight"))
                scale = 1 / math.sqrt(2 * self.config.n_layers) if residual_out else 1.0  # GPT-2 residual scaling
                nn.init.normal_(p, std=std * scale)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    @property
    def output_weight(self) -> Tensor:
        """(vocab_size, d_model) output projection (the embedding matrix when tied)."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Activation checkpointing per block: in training mode with gradients enabled, each block keeps only its
        input for the backward pass and recomputes its activations there (`torch.utils.checkpoint`, non-reentrant;
        dropout replays the same random numbers), so the gradients are the same, the activation memory drops from
        every block's to about one block's, and a step costs about a third more compute."""
        self.gradient_checkpointing = enabled

    def rope_table(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos, sin (1, 1, max_seq_len, head_dim) of the positions 0..max_seq_len-1, computed once per device with
        the arithmetic of `rotary_embedding` (so its rows are bit-identical to a per-call computation)."""
        table = self._rope_tables.get(device)
        if table is None or table[0].shape[2] != self.config.max_seq_len:  # made, or the config's length changed
            positions = torch.arange(self.config.max_seq_len, device=device)[None]
            table = self._rope_tables[device] = rotary_embedding(positions, self.config.head_dim,
                                                                 self.config.rope_theta)
        return table

    def compile_blocks(self, **options: object) -> bool:
        """Runs every transformer block through `torch.compile(block, **options)` from now on (e.g. `mode=
        "reduce-overhead"` for CUDA graphs on a GPU; the default `dynamic=True` spares a recompile per window width).
        The weights stay shared with the eager blocks, and the eager blocks still run activation checkpointing.

        A named fallback, never a crash: when torch.compile is unavailable (no C++ compiler, an unsupported Python)
        or a compiled block fails at its first call, a `RuntimeWarning` names the reason and the core runs eager
        from then on (a genuine input error then surfaces from the eager block). Returns whether the blocks are
        compiled now. `compile_blocks(enabled=False)` returns to eager. Compiling takes a while at the first call
        of each new input shape; it pays where kernel launches dominate a step (small batches on a GPU)."""
        if options.pop("enabled", True) is False:
            self._compiled = None
            return False
        options.setdefault("dynamic", True)
        try:
            self._compiled = [torch.compile(block, **options) for block in self.blocks]
        except Exception as exc:  # noqa: BLE001 - any failure of the compiler stack means: run eager
            self._compile_failed(exc)
        return self._compiled is not None

    def _compile_failed(self, exc: BaseException) -> None:
        import warnings

        self._compiled = None
        reason = (str(exc).splitlines() or [""])[0]
        warnings.warn(f"torch.compile is unavailable here ({type(exc).__name__}: {reason}); the core runs its blocks "
                      "eager", RuntimeWarning, stacklevel=3)

    def _run_block(self, i: int, *args: object) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Block i, compiled when `compile_blocks` made it so (falling back to eager on a compiler failure)."""
        if self._compiled is not None:
            try:
                return self._compiled[i](*args)
            except Exception as exc:  # noqa: BLE001 - the eager block below re-raises a genuine input error
                self._compile_failed(exc)
        return self.blocks[i](*args)

    def embed(self, input_ids: Tensor | None, soft_embeds: Tensor | None, soft_positions: Tensor | None) -> Tensor:
        if input_ids is None:
            if soft_embeds is None or soft_positions is not None:
                raise ValueError("give input_ids, or a full (B, L, d_model) soft_embeds without soft_positions")
            self._check_soft_width(soft_embeds)
            return soft_embeds
        x = self.embed_tokens(input_ids)  # (B, L, d_model)
        if soft_embeds is not None:
            if soft_positions is None:
                raise ValueError("soft_embeds with input_ids needs soft_positions (B, N): where each soft token goes")
            self._check_soft_width(soft_embeds)
            if soft_positions.shape != soft_embeds.shape[:2]:
                raise ValueError(
                    f"soft_positions {tuple(soft_positions.shape)} must be (B, N) matching soft_embeds "
                    f"{tuple(soft_embeds.shape)}"
                )
            x = place_soft_tokens(x, soft_embeds, soft_positions)
        return x

    def _check_soft_width(self, soft_embeds: Tensor) -> None:
        if soft_embeds.shape[-1] != self.config.d_model:
            raise ValueError(
                f"soft tokens have width {soft_embeds.shape[-1]} but the core has d_model={self.config.d_model}; "
                "project them to d_model first (a projector in the modality adapter)"
            )

    def check_ids(self, input_ids: Tensor) -> None:
        """Raises on ids outside the embedding table (one host sync; samplers call it once per prompt)."""
        if input_ids.numel() == 0:
            return
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size}); "
                "check the tokenizer matches this model"
            )

    def forward(
        self,
        input_ids: Tensor | None = None,
        *,
        soft_embeds: Tensor | None = None,
        soft_positions: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        logits_at: Tensor | None | bool = None,
        vocab_range: tuple[int, int] | None = None,
        output_hidden: bool = False,
        check_inputs: bool = True,
        use_cache: bool = False,
        cache: KVCache | None = None,
        cache_window: tuple[int, int] | Tensor | None = None,
        apply_head: bool = True,
    ) -> CoreOutput:
        """Runs the core.

        Args:
            input_ids: (B, L) token ids (mask id at positions to predict).
            soft_embeds: (B, N, d_model) continuous tokens placed at `soft_positions` (B, N); or (B, L, d_model)
                as the whole input when input_ids is None.
            attention_mask: (B, L) padding mask (True = real token), or a boolean (B, 1|H, L, L) mask from
                `mmdiff.core.masks` (True = may attend). A core built `attention="block_causal"` applies its
                block-causal mask (blocks of `block_size` from the first column, `masks.block_causal_rows`) with the
                padding mask; a 4-D mask replaces it (block diffusion training and prompts as block 0 pass one).
            position_ids: (B, L) RoPE positions; default 0..L-1.
            logits_at: None -> logits everywhere (B, L, V); a (B, L) bool mask -> (N, V) at the True positions;
                a (B, K) long tensor -> (B, K, V) at those indices; False -> no logits.
            vocab_range: restrict logits to ids [start, stop) (a modality head); logits columns are then
                `start..stop-1`.
            output_hidden: also return the final normed hidden states (B, L, d_model).
            check_inputs: validate ids against the vocabulary (one host sync).
            use_cache: also return the keys and values of every position (`CoreOutput.cache`).
            cache: a `KVCache` of a canvas of length L_c; the input is then its window `cache_window` = (lo, hi),
                `position_ids` default to lo..hi-1, `attention_mask` is the canvas's (B, L_c) key mask or a
                (B, 1|H, L_c, L_c) mask (its rows lo..hi-1 are used), and `logits_at` indexes the window.
            cache_window: (lo, hi) with 0 <= lo < hi <= L_c; required with `cache`. Or a (B, L) long tensor: the
                cache column of each input position, per row (windows at different places in different rows, as
                block diffusion's rows drift apart): the input's keys and values are written there, `position_ids`
                default to it, and `attention_mask` must be the (B, 1|H, L, L_c) mask of the input's queries over
                the cache's columns (after the writes).
            apply_head: False -> no output projection: `CoreOutput.head_hidden` holds its inputs at `logits_at`
                (`logits` is None), so a loss can project them chunk by chunk (`head_weight`) and never hold the
                logits of every selected position at once.
        """
        if check_inputs and input_ids is not None:
            self.check_ids(input_ids)
        x = self.embed(input_ids, soft_embeds, soft_positions)
        B, L, _ = x.shape
        lo = self._check_cache(cache, cache_window, L, B, attention_mask)
        canvas_length = cache.length if cache is not None else L
        ragged = isinstance(cache_window, Tensor)  # per-row cache columns: their positions are checked below
        # explicit positions inside the range are accepted on a longer input (block diffusion's [x_t ; x_0] pass)
        if not ragged and canvas_length > self.config.max_seq_len and (
                cache is not None or position_ids is None or int(position_ids.max()) >= self.config.max_seq_len):
            raise ValueError(
                f"sequence length {canvas_length} exceeds max_seq_len={self.config.max_seq_len}; shorten the input or "
                "build the model with a larger max_seq_len"
            )
        if ragged and position_ids is None:
            position_ids = cache_window
        if self.embed_positions is not None:  # learned positions (GPT-2): added to the input, no rotation
            positions = torch.arange(lo, lo + L, device=x.device)[None] if position_ids is None else position_ids
            x = x + self.embed_positions(positions)
            cos = sin = None
        elif position_ids is None:  # positions lo..lo+L-1: rows of the precomputed table (no trigonometry per call)
            cos, sin = (t[:, :, lo : lo + L] for t in self.rope_table(x.device))
        elif ragged:  # rows of the table (bit-identical to computing them)
            if int(position_ids.max()) >= self.config.max_seq_len:
                raise ValueError(f"position_ids reach {int(position_ids.max())} >= max_seq_len="
                                 f"{self.config.max_seq_len}; keep a per-row window's positions inside the canvas")
            cos, sin = (t[0, 0][position_ids][:, None] for t in self.rope_table(x.device))
        else:
            cos, sin = rotary_embedding(position_ids, self.config.head_dim, self.config.rope_theta)
        mask = attention_mask
        if ragged:
            pass  # the caller's (B, 1|H, L, L_c) mask, checked by _check_cache
        elif self.config.attention == "block_causal" and (mask is None or mask.dim() == 2):
            mask = block_causal_rows(lo, L, canvas_length, self.config.block_size, padding=mask, device=x.device)
        elif mask is not None and mask.dim() == 2:
            mask = mask.bool()[:, None, None, :]  # (B, 1, 1, L_canvas) key padding
        elif mask is not None and cache is not None:
            mask = mask[:, :, lo : lo + L]  # (B, 1|H, L, L_canvas): the window's query rows
        mask = _additive(mask, x)
        # logits at a few indexed positions: the last block runs its queries, attention output and MLP only there
        # (its keys and values still cover every position), which is all those logits depend on
        last_queries = (
            logits_at if isinstance(logits_at, Tensor) and logits_at.dtype != torch.bool and not output_hidden
            and self.config.logits_shift == "none" else None
        )
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            past = (cache.keys[i], cache.values[i]) if cache is not None else None
            queries = last_queries if i == len(self.blocks) - 1 else None
            if self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled():
                x, kv = checkpoint(block, x, cos, sin, mask, None, None, queries, use_reentrant=False)
            else:
                x, kv = self._run_block(i, x, cos, sin, mask, past, cache_window, queries)
            if use_cache:
                keys.append(kv[0])
                values.append(kv[1])
        if last_queries is not None:  # x holds the asked positions already
            logits_at = None
        hidden = self.norm(x) if output_hidden else None
        if self.config.logits_shift == "previous":
            x = torch.cat([x[:, :1], x[:, :-1]], dim=1)  # hidden i-1 predicts token i (Dream)
        cache_out = KVCache(keys, values) if use_cache else None
        if not apply_head:
            self.head_weight(vocab_range)  # the same checks as with the head
            return CoreOutput(logits=None, hidden=hidden, cache=cache_out, head_hidden=self.head_inputs(x, logits_at))
        return CoreOutput(logits=self.head_logits(x, logits_at, vocab_range), hidden=hidden, cache=cache_out)

    def _check_cache(self, cache: KVCache | None, window: tuple[int, int] | Tensor | None, length: int,
                     batch: int, mask: Tensor | None) -> int:
        """Validates a cached call; returns the window start (0 without a cache or with per-row columns)."""
        if cache is None:
            if window is not None:
                raise ValueError("cache_window was given without a cache; pass cache=core(..., use_cache=True).cache")
            return 0
        if window is None:
            raise ValueError("a cache needs cache_window=(lo, hi): the canvas positions of the input")
        if isinstance(window, Tensor):
            if window.shape != (batch, length) or window.dtype != torch.long:
                raise ValueError(f"a per-row cache_window must be a ({batch}, {length}) long tensor (the cache column "
                                 f"of each input position), got {window.dtype} of shape {tuple(window.shape)}")
            if mask is None or mask.dim() != 4 or mask.shape[2] != length or mask.shape[3] != cache.length:
                got = None if mask is None else tuple(mask.shape)
                raise ValueError(f"a per-row cache_window needs attention_mask of shape ({batch}, 1|H, {length}, "
                                 f"{cache.length}) (the input's queries over the cache's columns), got {got}")
            if self.config.logits_shift == "previous":
                raise ValueError("per-row cache windows cannot give shifted logits (logits_shift='previous'); use "
                                 "cache=None with this model")
            return 0
        lo, hi = window
        if not 0 <= lo < hi <= cache.length or hi - lo != length:
            raise ValueError(f"cache_window {tuple(window)} must satisfy 0 <= lo < hi <= {cache.length} (the cached "
                             f"length) and hi - lo = {length} (the input length)")
        if self.config.logits_shift == "previous" and lo > 0:
            raise ValueError("a cache window not starting at 0 cannot give shifted logits (logits_shift='previous' "
                             "needs the hidden state left of the window); use cache=None with this model")
        return lo

    def head_inputs(self, hidden: Tensor, at: Tensor | None | bool) -> Tensor | None:
        """The final norm of the hidden states at the selected positions: what the output projection scores."""
        if at is False:
            return None
        if at is None or at is True:
            selected = hidden
        elif at.dtype == torch.bool:
            selected = hidden[at]  # (N, d_model)
        else:
            selected = _gather_rows(hidden, at)  # (B, K, d_model)
        return self.norm(selected)

    def head_weight(self, vocab_range: tuple[int, int] | None = None) -> Tensor:
        """The output projection's rows for the ids [start, stop) of `vocab_range` (all rows for None)."""
        weight = self.output_weight
        if vocab_range is not None:
            if not 0 <= vocab_range[0] < vocab_range[1] <= weight.shape[0]:
                raise ValueError(
                    f"vocab_range {tuple(vocab_range)} is not a non-empty range inside [0, {weight.shape[0]})"
                )
            weight = weight[vocab_range[0] : vocab_range[1]]
        return weight

    def head_logits(
        self, hidden: Tensor, at: Tensor | None | bool, vocab_range: tuple[int, int] | None
    ) -> Tensor | None:
        """Final norm + output projection, only at the selected positions and vocabulary rows."""
        if at is False:
            return None
        return F.linear(self.head_inputs(hidden, at), self.head_weight(vocab_range))
