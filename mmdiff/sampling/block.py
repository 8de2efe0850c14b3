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
  nothing is committed early, and the tokens equal sequential block decoding. `window_blocks` caps the blocks a
  row's window holds (its finished blocks awaiting their clean pass and its started ones): in a batch the windows
  share one width, the widest row's, so with a cap of 2 a row that has no clean pass to run fills that width with
  its next block instead of idle columns.
- Greedy steps ask logits only at the masked columns of the started blocks (the core's last layer and the output
  projection run only there; exact: nothing else is read); a `logits_processor` or sampling gets every column.
- EOS early stop (`eos_early_stop`): a row whose answer holds an EOS with nothing undecided before it is finished:
  its remaining masks become EOS, and finished rows leave the batch's forward passes.

Layouts. An answer after a prompt (`gen_length` > 0): the prompt (left-padded, P columns) is block 0, seen whole by
every block after it (D2F's layout; training canvases whose `prefix_len` is the prompt), then `gen_length /
block_size` answer blocks. Masks in place (`gen_length=0, infill=True`, e.g. the running-sums canvases): the core's
own blocks from each row's first token, as the right-padded training canvases have them (rows are moved left for
the decoding and back after it); the last block may be short.

Rows decode independently: a row that finished a block starts its next one while others still decode theirs, so a
batch gives each row the tokens it gets alone. Each row keeps its own place in the cache: its window starts at its
own first uncached block (the core writes each row's keys and values at that row's columns, `cache_window` as a
per-row tensor), so rows that drift apart never re-run each other's finished blocks; the windows share one width
(the widest row's, padded with the columns after it, which no earlier column sees). With a `logits_processor` every
row's window starts at the batch's first uncached block, so that the processor gets the same canvas columns [lo, hi)
in every row. `cache=False` recomputes every step from the canvas's first column (the reference the cache is tested
against).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    window_blocks: int | None = option(None, "with pipeline: a block starts early only while the row's window (its "
                                             "finished blocks not cached yet and its started ones) holds at most "
                                             "this many blocks (more only after a pass that finished two); None = "
                                             "no cap")
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
        if self.window_blocks is not None and (isinstance(self.window_blocks, bool)
                                               or not isinstance(self.window_blocks, int) or self.window_blocks < 2):
            raise ValueError(f"window_blocks must be an integer >= 2 (the open block and one more), got "
                             f"{self.window_blocks!r}")
        if self.pipeline is None and (self.pipeline_threshold != 0.9 or self.activate_at != 1.0
                                      or self.window_blocks is not None):
            raise ValueError("pipeline_threshold, activate_at and window_blocks act only with pipeline (the decoded "
                             "fraction of a block at which the next one starts, e.g. pipeline=0.5); set it or drop "
                             "them")


@dataclass
class _Layout:
    """The canvas a call decodes: x (B, L) (infill: rows moved left so that each starts at column 0), fillable
    (B, L), real (B, L) (False = padding: no query sees it), the block starts (block k = [starts[k], starts[k+1]):
    the prompt as block 0, or the core's own blocks from column 0), the left padding moved to the right (infill) and
    the first answer column (for EOS)."""

    x: Tensor
    fillable: Tensor
    real: Tensor
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
        B, L = lay.x.shape
        dev = lay.x.device
        n_blocks = len(lay.starts) - 1
        starts = torch.tensor(lay.starts, device=dev)  # (nb + 1,)
        col_block = torch.repeat_interleave(torch.arange(n_blocks, device=dev), starts.diff())  # (L,)
        # one column past the canvas: window columns beyond a row's canvas go there (never decoded, and no real
        # query sees them: their block, n_blocks, comes after every real one)
        key_block = torch.cat([col_block, col_block.new_full((1,), n_blocks)])  # (L + 1,)
        x = F.pad(lay.x, (0, 1), value=mask_id)
        open_ = F.pad(lay.fillable & (lay.x == mask_id), (0, 1), value=False)  # (B, L + 1) still masked
        real = F.pad(lay.real, (0, 1), value=False)  # (B, L + 1) keys a real query may see
        commit_step = F.pad(torch.where(lay.fillable, 0, GIVEN), (0, 1), value=GIVEN)
        n_masks = _per_block(open_[:, :L], col_block, n_blocks)  # (B, nb)
        filters = LogitFilters(banned=[mask_id], allowed=allowed_token_ids, processor=logits_processor,
                               top_k=o.top_k, top_p=o.top_p, device=dev)
        trigger = o.pipeline if o.pipeline is not None else 1.0
        # each row's window starts at its own first uncached block, except that a processor is given the same
        # canvas columns [lo, hi) for every row (the window then starts at the batch's first uncached block)
        per_row = logits_processor is None
        blk = torch.arange(n_blocks, device=dev)
        cached = torch.zeros(B, dtype=torch.long, device=dev)  # per row: blocks [0, cached) are in the cache
        kv: KVCache | None = None
        kv_rows: list[int] = list(range(B))  # the batch rows the cache holds (finished rows leave it)
        nfe = 0
        while True:
            # ---- the step's block states, per row and block
            open_blocks = _per_block(open_[:, :L], col_block, n_blocks)  # (B, nb)
            frac = torch.where(n_masks > 0, (n_masks - open_blocks) / n_masks.clamp(min=1), 1.0)
            ones = torch.ones(B, 1, dtype=torch.bool, device=dev)
            started = torch.cat([ones, (frac[:, :-1] >= trigger).long().cumprod(1).bool()], 1)  # (B, nb)
            if o.window_blocks is not None:  # early starts only within the window cap; the first open block always
                first_open = torch.where(open_blocks > 0, blk, n_blocks).amin(1, keepdim=True)
                started &= (blk[None] <= first_open) | (blk[None] < cached[:, None] + o.window_blocks)
            before = torch.cat([torch.ones_like(frac[:, :1]), frac[:, :-1]], 1)
            full = started & (before >= o.activate_at)  # decoded at `threshold`, one commit forced
            active = started & (open_blocks > 0)
            live = active.any(1)  # (B,) rows with a block to decode (a row with masks has one)
            first = torch.where(active, blk, n_blocks).amin(1)  # (B,) first and last active block
            last = torch.where(active, blk, -1).amax(1)
            window = cached if o.cache else torch.zeros_like(cached)  # (B,) the first block each row runs
            if not per_row:
                window = torch.where(live, window, n_blocks).amin().clamp(max=n_blocks).expand(B)
            start_col, end_col = starts[window], starts[last + 1]
            width = torch.where(live, end_col - start_col, 0).amax()  # columns every row's window holds
            keys = torch.where(live, start_col, 0).amax() + width  # cache columns the pass reads
            asked = torch.where(live, (started * open_blocks).sum(1), 0).amax()  # most masked columns a row asks
            lo_a = starts[torch.where(live, first, n_blocks).amin().clamp(max=n_blocks)]
            head = torch.stack([width, keys.clamp(max=L + 1), asked, start_col[0], lo_a, end_col.amax()])
            summary = torch.cat([live.long(), head]).tolist()  # one host sync per step
            live_rows, (K, n_keys, n_asked, s0, lo, hi) = summary[:B], summary[B:]
            live_list = [r for r, a in enumerate(live_rows) if a]
            if not live_list:
                break
            rows = None if len(live_list) == B else torch.tensor(live_list, device=dev)
            # ---- the forward pass: each row's window of blocks not cached yet, logits at the decoded columns
            if o.cache and kv is not None and live_list != kv_rows:  # finished rows leave the cache
                kv = kv.select_rows(torch.tensor([kv_rows.index(r) for r in live_list], device=dev))
                kv_rows = live_list
            columns = _take(start_col, rows)[:, None] + torch.arange(K, device=dev)  # (R, K) canvas columns
            columns = columns.clamp(max=L)
            x_live, open_live, step_live = _take(x, rows), _take(open_, rows), _take(commit_step, rows)
            win_block = key_block[columns]  # (R, K) block of each window column (n_blocks past the canvas)
            in_canvas = win_block.clamp(max=n_blocks - 1)
            eligible = open_live.gather(1, columns) & _take(started, rows).gather(1, in_canvas)
            is_full = _take(full, rows).gather(1, in_canvas)
            R = len(live_list)
            if not per_row:  # the processor's columns [lo, hi): from the batch's first active block
                at = torch.arange(lo - s0, hi - s0, device=dev)[None].expand(R, -1)
            elif o.temperature == 0 and n_asked < K:
                # logits only where a token can be committed (the core's last layer runs only there): exact, as
                # the rest are never read; not with sampling (its noise per column)
                at = torch.sort((~eligible).to(torch.int8), dim=1, stable=True).indices[:, :n_asked]
            else:
                at = torch.arange(K, device=dev)[None].expand(R, -1)
            logits, kv = _forward(core, x_live.gather(1, columns), columns, _take(real, rows), key_block, kv,
                                  o.cache, n_keys, at, L)
            nfe += 1
            if o.cache:
                kv_rows = live_list
            # blocks finished before this pass, whole inside the window and after cached ones only: this pass ran
            # them clean, so their keys and values in the cache are final (counted without a cache too: the window
            # cap reads it, and decodes the same either way)
            inside = starts[1:][None] <= (start_col + K)[:, None]  # (B, nb)
            final = (blk[None] < cached[:, None]) | ((open_blocks == 0) & inside)
            cached = torch.where(live, torch.maximum(cached, final.long().cumprod(1).sum(1)), cached)
            # ---- selection at the asked window columns of the live rows
            logits = filters(logits, x_live[:, :L], lo, hi)
            x0 = gumbel_argmax(logits, o.temperature, generator)  # (R, n) at `at`
            conf = confidence_scores(logits, x0, "low_confidence")  # float64
            current = x_live.gather(1, columns)  # back to the window's columns; the others are never eligible
            x0 = current.scatter(1, at, x0)
            conf = torch.full(x0.shape, -math.inf, dtype=conf.dtype, device=dev).scatter(1, at, conf)
            thresholds = torch.full_like(conf, o.pipeline_threshold).masked_fill(is_full, o.threshold)
            commit = eligible & (conf > thresholds)
            commit |= _most_confident(conf.masked_fill(~(eligible & is_full), -math.inf), win_block, n_blocks + 1)
            new = torch.where(commit, x0, current)
            step_of = torch.where(commit, nfe - 1, step_live.gather(1, columns))
            still = open_live.gather(1, columns) & ~commit
            if rows is None:
                x.scatter_(1, columns, new)
                commit_step.scatter_(1, columns, step_of)
                open_.scatter_(1, columns, still)
            else:
                x[rows] = x_live.scatter(1, columns, new)
                commit_step[rows] = step_live.scatter(1, columns, step_of)
                open_[rows] = open_live.scatter(1, columns, still)
            if o.eos_early_stop:
                _finish_rows_at_eos(x[:, :L], open_[:, :L], commit_step[:, :L], lay.first, L, eos_id, nfe)
        x, commit_step = x[:, :L], commit_step[:, :L]
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


def _most_confident(scores: Tensor, block: Tensor, n_blocks: int) -> Tensor:
    """Bool (R, K): in every block (ids `block` (R, K) < n_blocks) its highest score, the first on ties; none in a
    block whose scores are all -inf."""
    R, K = scores.shape
    best = scores.new_full((R, n_blocks), -math.inf).scatter_reduce(1, block, scores, "amax")  # (R, nb)
    top = (scores == best.gather(1, block)) & (scores > -math.inf)
    column = torch.arange(K, device=scores.device)[None].expand(R, -1)
    first = torch.full((R, n_blocks), K, device=scores.device).scatter_reduce(
        1, block, torch.where(top, column, K), "amin")  # (R, nb) first best column of each block
    return top & (column == first.gather(1, block))


def _window_mask(key_block: Tensor, real: Tensor, queries: Tensor, keys: Tensor) -> Tensor:
    """(R, 1, K, Kc) bool: the query columns `queries` (R, K) over the key columns `keys` (R|1, Kc) of the canvas
    (column L is past it): block-causal (`key_block` (L + 1,) is each column's block), real keys only (`real`
    (R, L + 1)), and every query sees itself (a query past the canvas attends to something)."""
    q_block, k_block = key_block[queries][:, :, None], key_block[keys][:, None, :]
    seen = real.gather(1, keys.expand(real.shape[0], -1))[:, None, :]
    return (((k_block <= q_block) & seen) | (keys[:, None, :] == queries[:, :, None]))[:, None]


def _forward(core: nn.Module, x: Tensor, columns: Tensor, real: Tensor, key_block: Tensor, kv: KVCache | None,
             use_cache: bool, n_keys: int, at: Tensor, L: int) -> tuple[Tensor, KVCache | None]:
    """Logits (R, n, V) at the window columns `at` (R, n) of a pass over the windows `x` (R, K) at the canvas
    columns `columns` (R, K) (L = past the canvas). Without a cache the windows see only themselves (the first pass,
    whose keys and values make the cache of L + 1 columns, or every pass with `use_cache=False`); with it they are
    written into the cache at `columns` and the queries see its first `n_keys` columns."""
    positions = columns.clamp(max=L - 1)
    if kv is None:
        mask = _window_mask(key_block, real, columns, columns)
        out = core(x, attention_mask=mask, position_ids=positions, logits_at=at, check_inputs=False,
                   use_cache=use_cache)
        if not use_cache:
            return out.logits, None
        index = columns[:, None, :, None].expand(-1, *out.cache.keys[0].shape[1:2], -1, out.cache.keys[0].shape[3])
        tensors = [t.new_zeros(t.shape[:2] + (L + 1,) + t.shape[3:]).scatter_(2, index, t)
                   for t in out.cache.keys + out.cache.values]
        n = len(out.cache.keys)
        return out.logits, KVCache(tensors[:n], tensors[n:])
    keys = torch.arange(n_keys, device=x.device)[None]
    mask = _window_mask(key_block, real, columns, keys)
    view = KVCache([k[:, :, :n_keys] for k in kv.keys], [v[:, :, :n_keys] for v in kv.values])
    out = core(x, attention_mask=mask, cache=view, cache_window=columns, position_ids=positions, logits_at=at,
               check_inputs=False)
    return out.logits, kv


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
    real = torch.ones(B, L, dtype=torch.bool, device=device)
    if attention_mask is not None:
        real[:, :P] = attention_mask.bool()
    starts = ([0] if P else []) + list(range(P, L + 1, size))  # the prompt is block 0
    return _Layout(x=x, fillable=fillable, real=real, starts=starts, shift=None, first=P)


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
    real = torch.ones(B, L, dtype=torch.bool, device=x.device) if padding is None else padding.bool()
    return _Layout(x=x, fillable=fillable, real=real, starts=starts, shift=shift, first=0)
