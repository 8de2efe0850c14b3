"""Block diffusion decoding with an exact key/value cache (BD3-LM, Arriola et al. 2025, "Block Diffusion:
Interpolating Between Autoregressive and Diffusion Language Models"; Fast-dLLM v2, Wu et al. 2025) and D2F's
pipelined blocks (Wang et al. 2025, "Diffusion LLMs Can Do Faster-Than-AR Inference via Discrete Diffusion Forcing").

The core is block-causal (`CoreConfig(attention="block_causal", block_size=...)`, trained with clean and noised
copies in one pass, `mmdiff.diffusion.diffusion_loss`): a block sees itself and the blocks before it, never a later
one. So once a block is decoded its keys and values are final: it is run once more, clean, to write them into the
cache, and never again (no refresh pass, no approximation). Each forward pass runs only the window of blocks that
changed: the blocks finished at the step before (their clean pass, fused with the step) and the blocks being decoded.

- Threshold decoding inside a block (Fast-dLLM v2): each step commits every masked position whose prediction is more
  probable than `threshold`, and at least the most probable one per row and block, so a block of n masks takes 1 to
  n steps.
- Pipelining (D2F, `pipeline`): the next block starts decoding once the decoded fraction of the block before it
  reaches `pipeline` (D2F's block-add threshold), before that block is finished; while its predecessor's decoded
  fraction is below `activate_at` (D2F's decoded-token threshold) it commits only positions more probable than
  `pipeline_threshold` (none forced), afterwards it decodes as the oldest block does. With `pipeline_threshold=1`
  nothing is committed early, and the tokens equal sequential block decoding.
- Greedy steps ask logits only at the masked columns of the started blocks (the core's last layer and the output
  projection run only there; exact: nothing else is read); a `logits_processor` or sampling gets every column.
- EOS early stop (`eos_early_stop`): a row whose answer holds an EOS with nothing undecided before it is finished:
  its remaining masks become EOS, and finished rows leave the batch's forward passes.

Layouts. An answer after a prompt (`gen_length` > 0): the prompt (left-padded, P columns) is block 0, seen whole by
every block after it (D2F's layout; training canvases whose `prefix_len` is the prompt), then `gen_length /
block_size` answer blocks. Masks in place (`gen_length=0, infill=True`, e.g. the running-sums canvases): the core's
own blocks from each row's first token, as the right-padded training canvases have them (rows are moved left for
the decoding and back after it); the last block may be short.

Rows decode independently: a row that finished a block starts its next one while others still decode theirs (the
window covers both), so a batch gives each row the tokens it gets alone. The cache is shared by the batch: a block
enters it once every row has finished it (until then the window starts at it, and it is recomputed with the rest).
`cache=False` recomputes every step from the canvas's first column (the reference the cache is tested against).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiff.core.masks import block_causal_mask
from mmdiff.core.model import KVCache
from mmdiff.registry import SAMPLERS
from mmdiff.sampling.base import Sampler, SamplerOptions, check_range, option
from mmdiff.sampling.llada import _finish_rows_at_eos
from mmdiff.sampling.output import GIVEN, SamplerOutput
from mmdiff.sampling.selection import LogitFilters, confidence_scores, gumbel_argmax

__all__ = ["BlockDiffusionSampler", "BlockDiffusionOptions"]


@dataclass(frozen=True)
class BlockDiffusionOptions(SamplerOptions):
    """The settings of `BlockDiffusionSampler` (the block length is the core's `block_size`)."""

    gen_length: int = option(128, "answer length, a multiple of the core's block_size (0 with `infill`: only fill the "
                                  "prompt's masks)")
    threshold: float = option(0.9, "in [0, 1]: commit every masked position more probable than this, at least the "
                                   "most probable one per row and block and step")
    temperature: float = option(0.0, "0 = greedy; > 0 samples with Gumbel noise in float64")
    top_k: int | None = option(None, "keep the k most likely tokens before sampling")
    top_p: float | None = option(None, "nucleus filter in (0, 1] before sampling")
    pipeline: float | None = option(None, "in (0, 1]: D2F pipelining, the next block starts once this fraction of the "
                                          "block before it is decoded; None = one block after the other")
    pipeline_threshold: float = option(0.9, "in [0, 1]: the threshold of a block started early (while its "
                                            "predecessor's decoded fraction is below activate_at); none forced")
    activate_at: float = option(1.0, "in (0, 1]: a started block decodes at `threshold` (at least one commit per "
                                     "step) once this fraction of the block before it is decoded (D2F's decoded-token "
                                     "threshold)")
    eos_early_stop: bool = option(False, "finish a row once its answer has an EOS with everything before decoded")
    infill: bool = option(False, "fill the mask ids of the prompt in place (gen_length=0)")
    cache: bool = option(True, "the exact block cache; False recomputes every step from the first column")

    def _check(self) -> None:
        if isinstance(self.gen_length, bool) or not isinstance(self.gen_length, int) or self.gen_length < 0:
            raise ValueError(f"gen_length must be an integer >= 0, got {self.gen_length!r}")
        check_range("threshold", self.threshold, 0, 1)
        check_range("temperature", self.temperature, 0)
        check_range("top_p", self.top_p, 0, 1, low_open=True)
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        check_range("pipeline", self.pipeline, 0, 1, low_open=True)
        check_range("pipeline_threshold", self.pipeline_threshold, 0, 1)
        check_range("activate_at", self.activate_at, 0, 1, low_open=True)
        if self.pipeline is None and (self.pipeline_threshold != 0.9 or self.activate_at != 1.0):
            raise ValueError("pipeline_threshold and activate_at act only with pipeline (the decoded fraction of a "
                             "block at which the next one starts, e.g. pipeline=0.5); set it or drop them")


@dataclass
class _Layout:
    """The canvas a call decodes: x (B, L) (infill: rows moved left so that each starts at column 0), fillable
    (B, L), the attention the core gets (a (B, L) padding mask or None: the core's own blocks; or a (B|1, 1, L, L)
    mask: the prompt as block 0), the block starts (block k = [starts[k], starts[k+1])), the left padding moved to the
    right (infill) and the first answer column (for EOS)."""

    x: Tensor
    fillable: Tensor
    attention: Tensor | None
    starts: list[int]
    shift: Tensor | None
    first: int


@SAMPLERS.register("block-diffusion")
class BlockDiffusionSampler(Sampler):
    """Block diffusion decoding of a block-causal core with an exact block cache, threshold commits and optional D2F
    pipelining (see the module docstring).

    Per-call inputs: `allowed_token_ids` (ids every generated token is constrained to) and `logits_processor`
    (`fn(logits (B', K, V), canvas (B, L), lo, hi) -> logits` at the decoded columns [lo, hi)). The mask id is never
    predicted.

    >>> from mmdiff import CoreConfig, MaskedDiffusionTransformer, VocabLayout
    >>> cfg = CoreConfig(VocabLayout.build(16), d_model=32, n_layers=1, n_heads=2, attention="block_causal",
    ...                  block_size=4)
    >>> out = BlockDiffusionSampler(gen_length=8, threshold=1.0)(MaskedDiffusionTransformer(cfg),
    ...                                                          torch.tensor([[1, 2, 3]]), mask_id=16,
    ...                                                          return_history=True)
    >>> out.sequences.shape, out.nfe   # threshold 1: one commit per step, 8 steps
    (torch.Size([1, 11]), 8)
    """

    name = "block-diffusion"
    Options = BlockDiffusionOptions
    inputs = ("allowed_token_ids", "logits_processor")
    takes_eos = True
    core_attention = ("block_causal",)
    options: BlockDiffusionOptions

    def _sample(self, core: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, *, mask_id: int,
                eos_id: int | None, eot_id: int | None, generator: torch.Generator | None, return_history: bool,
                allowed_token_ids: Sequence[int] | None = None,
                logits_processor: Callable[[Tensor, Tensor, int, int], Tensor] | None = None,
                ) -> Tensor | SamplerOutput:
        o = self.options
        if o.eos_early_stop and eos_id is None:
            raise ValueError("eos_early_stop needs eos_id (the model's vocabulary has no EOS id)")
        core.check_ids(input_ids)
        lay = _layout(o, core, input_ids, attention_mask, mask_id)
        x, starts, B, L = lay.x, lay.starts, *lay.x.shape
        n_blocks, size = len(starts) - 1, core.config.block_size
        sizes = torch.tensor([b - a for a, b in zip(starts, starts[1:], strict=False)], device=x.device)
        col_block = torch.repeat_interleave(torch.arange(n_blocks, device=x.device), sizes)  # (L,) block of a column
        open_ = lay.fillable & (x == mask_id)  # (B, L) still masked
        n_masks = _per_block(open_, col_block, n_blocks)  # (B, nb)
        commit_step = torch.where(lay.fillable, 0, GIVEN)
        filters = LogitFilters(banned=[mask_id], allowed=allowed_token_ids, processor=logits_processor,
                               top_k=o.top_k, top_p=o.top_p, device=x.device)
        trigger = o.pipeline if o.pipeline is not None else 1.0
        kv: KVCache | None = None
        kv_rows: list[int] = list(range(B))  # the batch rows the cache holds (finished rows leave it)
        cached, nfe = 0, 0  # blocks [0, cached) have their final keys and values in the cache
        while True:
            # ---- the step's block states, per row and block (one host sync)
            open_blocks = _per_block(open_, col_block, n_blocks)  # (B, nb)
            frac = torch.where(n_masks > 0, (n_masks - open_blocks) / n_masks.clamp(min=1), 1.0)
            ones = torch.ones(B, 1, dtype=torch.bool, device=x.device)
            started = torch.cat([ones, (frac[:, :-1] >= trigger).long().cumprod(1).bool()], 1)  # (B, nb)
            before = torch.cat([torch.ones_like(frac[:, :1]), frac[:, :-1]], 1)
            full = started & (before >= o.activate_at)  # decoded at `threshold`, one commit forced
            active = started & (open_blocks > 0)
            asked = (started * open_blocks).sum(1).max()[None]  # the most masked columns a row decodes this step
            summary = torch.cat([active.any(0), (open_blocks == 0).all(0), open_.any(1), asked]).tolist()
            active_any, done_all = summary[:n_blocks], summary[n_blocks : 2 * n_blocks]
            live_rows, n_asked = summary[2 * n_blocks : -1], int(summary[-1])
            blocks = [b for b, a in enumerate(active_any) if a]
            if not blocks:
                break
            first_a, last_a = blocks[0], blocks[-1]
            lo_a, hi = starts[first_a], starts[last_a + 1]
            live = [r for r, a in enumerate(live_rows) if a]
            rows = None if len(live) == B else torch.tensor(live, device=x.device)
            # ---- the forward pass: the window [lo, hi) of blocks not cached yet, logits at the decoded columns
            if o.cache and kv is not None and live != kv_rows:  # finished rows leave the cache
                kv = kv.select_rows(torch.tensor([kv_rows.index(r) for r in live], device=x.device))
                kv_rows = live
            lo = starts[cached] if o.cache else 0
            x_live = _take(x, rows)
            block_of = col_block[lo_a:hi] - first_a  # (K,) block of each column in the window's active part
            eligible = _take(open_, rows)[:, lo_a:hi] & _take(started, rows)[:, first_a:last_a + 1][:, block_of]
            is_full = _take(full, rows)[:, first_a:last_a + 1][:, block_of]
            # logits only where a token can be committed (the core's last layer runs only there): exact, as the
            # rest are never read; not with a processor (it gets every column) or sampling (its noise per column)
            narrow = logits_processor is None and o.temperature == 0 and n_asked < hi - lo_a
            asked_at = (torch.sort((~eligible).to(torch.int8), dim=1, stable=True).indices[:, :n_asked] if narrow
                        else None)
            logits, kv = _forward(core, x_live, _take(lay.attention, rows), lo, lo_a, hi, kv, o.cache, asked_at)
            nfe += 1
            if o.cache:
                kv_rows = live
                while cached <= last_a and done_all[cached]:  # finished before this pass: their clean pass was it
                    cached += 1
            # ---- selection in the decoded columns [lo_a, hi) of the live rows
            logits = filters(logits, x_live, lo_a, hi)
            x0 = gumbel_argmax(logits, o.temperature, generator)  # (R, K), or (R, n_asked) at `asked_at`
            conf = confidence_scores(logits, x0, "low_confidence")  # float64
            if asked_at is not None:  # back to the window's columns; the others are never eligible
                x0 = x_live[:, lo_a:hi].scatter(1, asked_at, x0)
                conf = torch.full(x0.shape, -math.inf, dtype=conf.dtype, device=conf.device).scatter(1, asked_at, conf)
            thresholds = torch.full_like(conf, o.pipeline_threshold).masked_fill(is_full, o.threshold)
            commit = eligible & (conf > thresholds)
            commit |= _most_confident(conf.masked_fill(~(eligible & is_full), -math.inf), size, last_a - first_a + 1)
            columns = x_live[:, lo_a:hi]
            new = torch.where(commit, x0, columns)
            step_of = torch.where(commit, nfe - 1, _take(commit_step, rows)[:, lo_a:hi])
            if rows is None:
                x[:, lo_a:hi], commit_step[:, lo_a:hi] = new, step_of
                open_[:, lo_a:hi] &= ~commit
            else:
                x[rows, lo_a:hi], commit_step[rows, lo_a:hi] = new, step_of
                open_[rows, lo_a:hi] = open_[rows, lo_a:hi] & ~commit
            if o.eos_early_stop:
                _finish_rows_at_eos(x, open_, commit_step, lay.first, L, eos_id, nfe)
        if lay.shift is not None:  # back to the caller's left padding
            x, commit_step = _unshift(x, lay.shift), _unshift(commit_step, lay.shift)
        if return_history:
            return SamplerOutput(sequences=x, commit_step=commit_step, nfe=nfe)
        return x


def _take(t: Tensor | None, rows: Tensor | None) -> Tensor | None:
    """Rows `rows` of a per-row tensor (all rows when None; a tensor broadcast over the batch is kept)."""
    if t is None or rows is None or t.shape[0] == 1:
        return t
    return t[rows]


def _per_block(flags: Tensor, col_block: Tensor, n_blocks: int) -> Tensor:
    """(B, L) bool -> (B, n_blocks) long: the True columns of each block."""
    return flags.new_zeros(flags.shape[0], n_blocks, dtype=torch.long).index_add_(1, col_block, flags.long())


def _most_confident(scores: Tensor, size: int, n_blocks: int) -> Tensor:
    """Bool (R, K): in every block of `size` columns (the last may be short) its highest score, the first on ties;
    none in a block whose scores are all -inf."""
    R, K = scores.shape
    padded = F.pad(scores, (0, n_blocks * size - K), value=-math.inf).view(R, n_blocks, size)
    best = padded.argmax(-1, keepdim=True)  # (R, nb, 1)
    has = padded.amax(-1, keepdim=True) > -math.inf
    one = torch.zeros_like(padded, dtype=torch.bool).scatter_(2, best, has)
    return one.view(R, n_blocks * size)[:, :K]


def _forward(core: nn.Module, x: Tensor, attention: Tensor | None, lo: int, lo_a: int, hi: int, kv: KVCache | None,
             use_cache: bool, asked_at: Tensor | None = None) -> tuple[Tensor, KVCache | None]:
    """Logits (R, hi - lo_a, V) of the columns [lo_a, hi), or (R, n, V) at the columns lo_a + `asked_at` (R, n), from
    a pass over [lo, hi); with the cache the keys and values of [lo, hi) are written into it (the first pass, lo = 0,
    makes it)."""
    R, L = x.shape
    if asked_at is None:
        at = torch.arange(lo_a - lo, hi - lo, device=x.device)[None].expand(R, -1)  # (R, K) window indices
    else:
        at = asked_at + (lo_a - lo)
    if kv is not None:
        out = core(x[:, lo:hi], attention_mask=attention, cache=kv, cache_window=(lo, hi), logits_at=at,
                   check_inputs=False)
        return out.logits, kv
    if attention is not None:  # the canvas's first hi columns
        attention = attention[:, :hi] if attention.dim() == 2 else attention[:, :, :hi, :hi]
    out = core(x[:, :hi], attention_mask=attention, logits_at=at, check_inputs=False, use_cache=use_cache)
    if not use_cache:
        return out.logits, None
    # the cache of the whole canvas, the pass's keys and values in its first hi columns
    keys = [k.new_zeros(k.shape[:2] + (L,) + k.shape[3:]) for k in out.cache.keys]
    values = [v.new_zeros(v.shape[:2] + (L,) + v.shape[3:]) for v in out.cache.values]
    for full, part in zip(keys + values, out.cache.keys + out.cache.values, strict=True):
        full[:, :, :hi] = part
    return out.logits, KVCache(keys, values)


def _unshift(t: Tensor, shift: Tensor) -> Tensor:
    """Rows moved left by `shift` (B,) columns (padding at the right) back to the caller's left padding."""
    L = t.shape[1]
    index = (torch.arange(L, device=t.device)[None] - shift[:, None]) % L  # (B, L)
    return t.gather(1, index)


def _layout(o: BlockDiffusionOptions, core: nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
            mask_id: int) -> _Layout:
    """Checks the call and builds the canvas, its attention and its blocks (see the module docstring)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, prompt_length), got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    canvas = getattr(core, "canvas", None)
    if canvas is not None and getattr(canvas, "attention", "full") != "full":
        raise ValueError(f"the prompt canvas has attention {canvas.attention!r}; the block-diffusion sampler applies "
                         "the core's block-causal attention itself: build the canvas with attention 'full'")
    size, device = core.config.block_size, input_ids.device
    B, P = input_ids.shape
    to_fill = input_ids == mask_id
    if attention_mask is not None:
        to_fill &= attention_mask.bool()
    has_masks = bool(to_fill.any())
    if has_masks and not o.infill:
        row, col = (int(i) for i in to_fill.nonzero()[0])
        raise ValueError(f"the prompt holds the mask id {mask_id} (row {row}, position {col}); pass infill=True "
                         "(with gen_length=0) to fill masks in place, or remove them from the prompt")
    if o.gen_length == 0:
        if not has_masks:
            raise ValueError("nothing to generate: gen_length=0 and the prompt holds no mask id to fill; pass "
                             f"gen_length >= 1 (a multiple of the core's block_size={size})")
        return _infill_layout(input_ids, attention_mask, to_fill, size)
    if has_masks:
        raise ValueError(f"gen_length={o.gen_length} with mask ids in the prompt: the block-diffusion sampler fills "
                         "either an answer after a mask-free prompt or masks in place (gen_length=0, infill=True)")
    if o.gen_length % size:
        raise ValueError(f"gen_length={o.gen_length} is not a multiple of the core's block_size={size}: the answer is "
                         f"whole blocks; pass gen_length={-(-o.gen_length // size) * size} (or "
                         f"{o.gen_length // size * size})")
    G, L = o.gen_length, P + o.gen_length
    x = torch.cat([input_ids, torch.full((B, G), mask_id, dtype=input_ids.dtype, device=device)], 1)
    fillable = torch.cat([torch.zeros_like(to_fill), torch.ones(B, G, dtype=torch.bool, device=device)], 1)
    attention = block_causal_mask(L, size, P, device=device)  # (1, 1, L, L): the prompt is block 0
    if attention_mask is not None:  # padding keys hidden; every query sees itself
        padding = torch.cat([attention_mask.bool(), torch.ones(B, G, dtype=torch.bool, device=device)], 1)
        attention = (attention & padding[:, None, None, :]) | torch.eye(L, dtype=torch.bool, device=device)
    starts = ([0] if P else []) + list(range(P, L + 1, size))
    return _Layout(x=x, fillable=fillable, attention=attention, starts=starts, shift=None, first=P)


def _infill_layout(input_ids: Tensor, attention_mask: Tensor | None, to_fill: Tensor, size: int) -> _Layout:
    """Masks in place: the core's blocks from each row's first real token (rows moved left, padding to the right)."""
    B, L = input_ids.shape
    shift = None
    x, fillable, padding = input_ids.clone(), to_fill, attention_mask
    if attention_mask is not None and not bool(attention_mask.all()):
        real = attention_mask.bool()
        if bool((real[:, 1:] < real[:, :-1]).any()):
            raise ValueError("block-diffusion infilling needs left-padded canvases (padding before the tokens, as "
                             "mmdiff.tasks.left_pad makes them): the blocks start at each row's first token")
        shift = (~real).sum(1)  # (B,) left padding
        index = (torch.arange(L, device=x.device)[None] + shift[:, None]) % L  # row r starts at its first token
        x, fillable, padding = x.gather(1, index), to_fill.gather(1, index), real.gather(1, index)
    starts = list(range(0, L, size)) + [L]
    return _Layout(x=x, fillable=fillable, attention=padding, starts=starts, shift=shift, first=0)
