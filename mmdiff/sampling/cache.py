"""The forward pass of a LLaDA step and its key/value cache strategies (Fast-dLLM, Wu et al. 2025; dKV-Cache, Ma
et al. 2025), one class per mode with one interface:

- `NoCache`: every step runs the whole canvas.
- `PrefixCache` / `DualCache` (Fast-dLLM): keys and values of the whole canvas are computed at a block's first
  step; each further step runs the block and everything right of it ("prefix") or only the block ("dual").
- `DelayedCache` (dKV-Cache): the dual cache without the per-block refresh: each step runs the block widened to
  every position whose token changed since its keys and values were computed.

A strategy owns the cache and the rows that sit out a block's remaining steps; the loop calls `begin_block`, then
per step `logits(x, lo, hi, columns, open_counts, n_rows)`, and reports changed tokens with `changed`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = ["CacheStrategy", "NoCache", "PrefixCache", "DualCache", "DelayedCache", "CACHES", "make_cache"]


class _Forward:
    """One denoising forward pass: logits (B, K, V) of the block [lo, hi), with classifier-free guidance and the
    Fast-dLLM caches (the cache is rebuilt at the first step of each block)."""

    def __init__(self, core: nn.Module, attention: Tensor | None, position_ids: Tensor, cfg_scale: float | None,
                 cfg_form: str, uncond: tuple[Tensor, Tensor | None, Tensor] | None,
                 shared: Tensor | None = None) -> None:
        self.core, self.cfg_scale, self.cfg_form = core, cfg_scale, cfg_form
        self.uncond_prompt, self.shared = None, shared  # shared: (B, P) prompt positions being filled (infill)
        self.attention, self.position_ids = attention, position_ids
        if uncond is not None:  # rows B..2B-1 are the unconditional canvases
            self.uncond_prompt, uncond_attention, uncond_positions = uncond
            if attention is not None or uncond_attention is not None:
                ones = torch.ones_like(position_ids, dtype=torch.bool)
                self.attention = torch.cat([ones if attention is None else attention,
                                            ones if uncond_attention is None else uncond_attention])
            self.position_ids = torch.cat([position_ids, uncond_positions])

    def __call__(self, x: Tensor, lo: int, hi: int, cache: str | None, kv: object, window: tuple[int, int],
                 columns: Tensor | None = None,
                 rows: tuple[Tensor, object] | None = None) -> tuple[Tensor, object]:
        """Logits (B, K, V) at the block's columns [lo, hi), or (B, n, V) at `columns` (B, n) (canvas positions
        inside the block) when given. With `rows` = (row indices (R,), their gathered cache) only those rows run
        (no guidance); the others get zero logits and the returned cache is `kv` unchanged."""
        attention, position_ids, batch, given_kv = self.attention, self.position_ids, x.shape[0], kv
        core = self.core
        if rows is not None:
            keep, kv = rows
            core = self._row_core(keep)
            x, position_ids = x[keep], position_ids[keep]
            attention = None if attention is None else attention[keep]
            columns = None if columns is None else columns[keep]
        if self.uncond_prompt is not None:  # (2B, L): conditional, unconditional (same generated part)
            P = self.uncond_prompt.shape[1]
            prompt = self.uncond_prompt
            if self.shared is not None:  # infilled prompt positions are generated: both canvases share them
                prompt = torch.where(self.shared, x[:, :P], prompt)
            x = torch.cat([x, torch.cat([prompt, x[:, P:]], dim=1)])
        L = x.shape[1]
        if columns is None:
            columns = torch.arange(lo, hi, device=x.device)[None]
        columns = columns.expand(x.shape[0], -1) if columns.shape[0] == 1 else columns.repeat(
            x.shape[0] // columns.shape[0], 1)  # (B', n): the unconditional rows ask at the same columns
        if cache is None or kv is None:
            index = columns
            out = core(x, attention_mask=attention, position_ids=position_ids, logits_at=index,
                            check_inputs=False, use_cache=cache is not None)
            logits, kv = out.logits, out.cache
        else:
            # prefix: the block and all right of it; dual: the block only; delayed: `window` (the block and the
            # positions changed since their keys and values were computed)
            start, end = window if cache == "delayed" else (lo, L if cache == "prefix" else hi)
            index = columns - start
            logits = core(x[:, start:end], attention_mask=attention,
                               position_ids=position_ids[:, start:end], logits_at=index, check_inputs=False,
                               cache=kv, cache_window=(start, end)).logits
        if self.uncond_prompt is not None:
            cond, uncond = logits.chunk(2)
            w = self.cfg_scale
            logits = uncond + (w + 1) * (cond - uncond) if self.cfg_form == "llada" else uncond + w * (cond - uncond)
        if rows is not None:  # the rows that sat out get zero logits; the caller keeps its whole-batch cache
            full = logits.new_zeros((batch,) + logits.shape[1:])
            full[rows[0]] = logits
            return full, given_kv
        return logits, kv


    def _row_core(self, keep: Tensor) -> nn.Module:
        """The core for rows `keep` only: a core bound to per-row inputs (a canvas's soft tokens and prefix lengths)
        selects those rows; a plain core serves any rows. Kept while the same rows decode."""
        select = getattr(self.core, "select_rows", None)
        if select is None:
            return self.core
        cached = getattr(self, "_rows_core", None)
        if cached is None or cached[0] is not keep:
            self._rows_core = (keep, select(keep))
        return self._rows_core[1]


class CacheStrategy:
    """How a step's forward pass reuses keys and values (base: no cache).

    Args:
        forward: the `_Forward` of the run (guidance, positions, padding).
        skip_rows: rows that finished the block may sit out its remaining steps (exact here).
        shape: (B, L) of the canvas.
        device: the canvas's device.
    """

    mode: ClassVar[str | None] = None
    refreshes_per_block: ClassVar[bool] = True
    tracks_changes: ClassVar[bool] = False  # whether `changed` matters (the delayed cache)

    def __init__(self, forward: _Forward, *, skip_rows: bool, shape: tuple[int, int], device: torch.device) -> None:
        self.forward, self.skip_rows, self.batch = forward, skip_rows, shape[0]
        self.kv: object = None
        self.rows: tuple[Tensor, object] | None = None  # rows still decoding the block, and their gathered cache

    def begin_block(self) -> None:
        """A new block starts: the cache is rebuilt at its first step, every row decodes again."""
        if self.refreshes_per_block:
            self.kv = None
        self.rows = None

    def _ready(self) -> bool:
        return self.kv is not None

    def _step_rows(self, open_counts: Tensor | None, n_rows: int) -> tuple[Tensor, object] | None:
        """(row indices, their cache) when only some rows still decode the block (no host sync: `n_rows` is known)."""
        if open_counts is None or not self.skip_rows or n_rows >= self.batch or not self._ready():
            return None
        if self.rows is None or len(self.rows[0]) != n_rows:
            keep = (open_counts > 0).nonzero().squeeze(1)
            self.rows = (keep, None if self.kv is None else self.kv.select_rows(keep))
        return self.rows

    def logits(self, x: Tensor, lo: int, hi: int, columns: Tensor | None = None, open_counts: Tensor | None = None,
               n_rows: int = 0) -> Tensor:
        """(B, K, V) logits of the block [lo, hi) (or (B, n, V) at `columns`); rows sit out when they may."""
        rows = self._step_rows(open_counts, n_rows)
        logits, self.kv = self.forward(x, lo, hi, self.mode, self.kv, (lo, hi), columns, rows)
        return logits

    def changed(self, positions: Tensor, lo: int = 0, hi: int | None = None) -> None:
        """Tokens at `positions` (bool, columns [lo, hi) of the canvas) changed after their keys and values were
        computed (only the delayed cache keeps track)."""


class NoCache(CacheStrategy):
    """Every step runs the whole canvas."""

    def _ready(self) -> bool:
        return True


class PrefixCache(CacheStrategy):
    """Fast-dLLM's prefix cache: after the block's first step, the block and everything right of it run."""

    mode = "prefix"


class DualCache(CacheStrategy):
    """Fast-dLLM's dual cache: after the block's first step, only the block runs."""

    mode = "dual"


class DelayedCache(CacheStrategy):
    """dKV-Cache's delayed caching: one full forward at the start, no per-block refresh; each step runs the block
    widened to every column whose token changed since its keys and values were computed.

    Rows that finished the block sit out its remaining steps (with `skip_rows`): a step runs only the rows still
    decoding, writes their fresh keys and values back into the batch's cache, and a row that sat out keeps its stale
    columns marked, so its first step of the next block recomputes them."""

    mode = "delayed"
    refreshes_per_block = False
    tracks_changes = True

    def __init__(self, forward: _Forward, *, skip_rows: bool, shape: tuple[int, int], device: torch.device) -> None:
        super().__init__(forward, skip_rows=skip_rows, shape=shape, device=device)
        self.stale = torch.zeros(shape, dtype=torch.bool, device=device)  # keys/values computed before a change

    def logits(self, x: Tensor, lo: int, hi: int, columns: Tensor | None = None, open_counts: Tensor | None = None,
               n_rows: int = 0) -> Tensor:
        rows = self._step_rows(open_counts, n_rows)
        if rows is None:
            window = _recompute_window(self.stale, lo, hi)
            logits, self.kv = self.forward(x, lo, hi, self.mode, self.kv, window, columns, None)
            self.stale[:, : window[1]] = False  # the window is fresh; a first (full) forward refreshed all before it
            return logits
        keep, kv = rows
        window = _recompute_window(self.stale[keep], lo, hi)
        logits = self.forward(x, lo, hi, self.mode, self.kv, window, columns, rows)[0]
        a, b = window  # the running rows' fresh keys and values (written into their gathered cache) go back
        for full, part in zip(self.kv.keys + self.kv.values, kv.keys + kv.values, strict=True):
            full[keep, :, a:b] = part[:, :, a:b]
        self.stale[keep, :b] = False
        return logits

    def changed(self, positions: Tensor, lo: int = 0, hi: int | None = None) -> None:
        self.stale[:, lo:hi] |= positions


def _recompute_window(stale: Tensor, lo: int, hi: int) -> tuple[int, int]:
    """The canvas columns a "delayed"-cache step runs: the block [lo, hi) widened to every column whose cached
    keys and values predate a change of its token (one host sync)."""
    changed = stale.any(0).nonzero()
    if not len(changed):
        return lo, hi
    return min(lo, int(changed[0])), max(hi, int(changed[-1]) + 1)


CACHES: dict[str | None, type[CacheStrategy]] = {
    None: NoCache, "prefix": PrefixCache, "dual": DualCache, "delayed": DelayedCache,
}


def make_cache(mode: str | None, forward: _Forward, *, skip_rows: bool, shape: tuple[int, int],
               device: torch.device) -> CacheStrategy:
    """The strategy of cache `mode` (None, "prefix", "dual" or "delayed")."""
    return CACHES[mode](forward, skip_rows=skip_rows, shape=shape, device=device)
