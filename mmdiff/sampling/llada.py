"""LLaDA-style sampling (Nie et al. 2025, "Large Language Diffusion Models", semi-autoregressive remasking) with the
Fast-dLLM accelerations (Wu et al. 2025, "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV
Cache and Parallel Decoding"): the answer is split into blocks decoded left to right; within a block each step
predicts every masked position and commits some of them, the rest stay masked.

With the defaults the sampler reproduces the reference `generate.py` token for token at temperature 0 (the order
of commits, the per-step counts floor(M/S) (+1 for the first M mod S steps), the float64 Gumbel-max, confidence
= softmax probability of the prediction in the logits' dtype, `logits_eos_inf` / `confidence_eos_eot_inf` /
`cfg_scale` as it applies them, left-padded prompts with absolute positions and a key mask).
What it does differently computes the same numbers with less work: logits only for the current block, selection
vectorised over the batch (no Python loop over rows, no host syncs inside a step). With `threshold` / `factor`
(one host sync per step, to know when a block is done) it also asks logits only at the block's still-masked
positions (the core's last layer then runs only there) and only of the rows still decoding the block.

Options beyond the reference:
- `cache="prefix"` / `"dual"` (Fast-dLLM): keys and values of the whole canvas are computed once per block; each
  further step of the block runs only the block and everything right of it ("prefix") or only the block ("dual").
  Approximate (the cached positions would see the newly committed tokens), refreshed at every block.
- `cache="delayed"`: the dual cache without the per-block refresh, with delayed caching of decoded tokens (Ma et
  al. 2025, "dKV-Cache"): one full forward at the start; each step runs the block widened to every position whose
  token changed since its keys and values were computed (the tokens committed at the previous step), so a decoded
  token is cached one step after it is decoded. The positions right of the block keep their first keys and values.
  Exact with causal attention; with bidirectional attention as approximate as the dual cache, and much cheaper: no
  full forward per block, so small blocks cost little.
- `threshold` (commit every masked position whose confidence exceeds it, at least one per row and step) and
  `factor` (Fast-dLLM's rule: commit the n most confident while the i-th of them has confidence
  >= 1 - factor / (i + 1), at least one); with either, `steps` no longer fixes the number of steps.
- `remasking` orders: "low_confidence" (probability of the prediction), "margin" (top-1 minus top-2 probability),
  "entropy" (negative entropy), "random".
- `eos_early_stop`: after a block, a row whose answer holds an EOS with nothing left undecided before it is
  finished: its remaining masks become EOS and later blocks skip it (and are skipped when every row is finished).
- `infill`: mask ids inside the prompt are filled too (the decoded region starts at the first of them).
- `positions="compact"`: RoPE positions counted from each row's first real token, so a left-padded row decodes
  exactly like the same prompt alone (the reference counts from the padding; with RoPE the two differ only by
  rounding).
- `logits_mask_inf`: never predict the mask id (the reference may commit it, which leaves the position masked; so
  does this sampler by default, for parity; models trained here never predict it).
- `schedule="cosine"` with `choice_temperature` (MaskGIT: cosine commit counts, Gumbel top-k commit order; the
  image tasks use it), `remask_below` (ReMDM-style secondary remasking of committed low-confidence tokens).
- constraints: `allowed_token_ids`, a `logits_processor` hook, and pinned tokens anywhere (`infill`).
- `top_k` / `top_p` filtering before sampling; `return_history` for trajectory views.

The sampler is `LLaDASampler` (options: `LLaDAOptions`); its parts live beside it: the commit schedule
(`mmdiff.sampling.schedule`), the selection shared with Dream (`mmdiff.sampling.selection`: filters, confidences,
commit rules) and the forward pass with one cache strategy object per mode (`mmdiff.sampling.cache`).
`llada_generate` is the same sampler as a function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmdiff.registry import SAMPLERS
from mmdiff.sampling.base import Sampler, SamplerOptions, check_choice, option
from mmdiff.sampling.cache import CACHES as CACHE_STRATEGIES
from mmdiff.sampling.cache import CacheStrategy, _Forward, make_cache
from mmdiff.sampling.output import GIVEN, SamplerOutput
from mmdiff.sampling.schedule import SCHEDULES, commit_counts, cosine_tokens_per_step, tokens_per_step
from mmdiff.sampling.selection import (
    REMASKING,
    LogitFilters,
    commit_mask,
    confidence_scores,
    factor_commits,
    filter_logits,
    gumbel_argmax,
    threshold_commits,
    uniform64,
)

__all__ = [
    "LLaDASampler",
    "LLaDAOptions",
    "llada_generate",
    "tokens_per_step",
    "cosine_tokens_per_step",
    "gumbel_argmax",
    "commit_mask",
    "confidence_scores",
    "filter_logits",
    "threshold_commits",
    "factor_commits",
    "REMASKING",
    "CACHES",
]

CACHES = tuple(CACHE_STRATEGIES)
POSITIONS = ("absolute", "compact")
CFG_FORMS = ("llada", "standard")


@dataclass(frozen=True)
class LLaDAOptions(SamplerOptions):
    """The settings of `LLaDASampler` (what `sampler_config.json` saves); validated on construction."""

    gen_length: int = option(128, "answer length (0 with `infill`: only fill the prompt's masks); with a mask-free "
                                  "prompt a multiple of block_length")
    steps: int = option(128, "total denoising steps, split evenly over blocks (with threshold / factor: a block runs "
                             "until decoded, at most one step per position)")
    block_length: int = option(32, "semi-autoregressive block size")
    temperature: float = option(0.0, "0 = greedy; > 0 samples with Gumbel noise in float64")
    remasking: str = option("low_confidence", f"commit order, one of {REMASKING}")
    cfg_scale: float = option(0.0, "classifier-free guidance weight w (see cfg_form)")
    cfg_form: str = option("llada", "'llada': (1 + w)c - w u (w = 0: no guidance); 'standard': u + w (c - u) "
                                    "(w = 1: no guidance)")
    threshold: float | None = option(None, "in (0, 1]: commit every position more confident than this (at least "
                                           "one per row and step)")
    factor: float | None = option(None, "> 0: Fast-dLLM's factor rule instead of a fixed count")
    cache: str | None = option(None, "None, 'prefix', 'dual' (Fast-dLLM, refreshed per block) or 'delayed' "
                                     "(dKV-Cache)")
    top_k: int | None = option(None, "keep the k most likely tokens before sampling")
    top_p: float | None = option(None, "nucleus filter in (0, 1] before sampling")
    infill: bool = option(False, "fill mask ids found in the prompt (else they are an error)")
    eos_early_stop: bool = option(False, "finish a row once its answer has an EOS with everything before decoded")
    logits_eos_inf: bool = option(False, "never predict EOS (needs eos_id)")
    confidence_eos_eot_inf: bool = option(False, "as the reference: EOT's logit is -inf in the confidence softmax")
    logits_mask_inf: bool = option(False, "never predict the mask id (the reference may, leaving it masked)")
    schedule: str = option("linear", "commits per step: 'linear' (the reference's split) or 'cosine' (MaskGIT)")
    choice_temperature: float = option(0.0, "MaskGIT's Gumbel top-k: log-confidence + T (1 - step/steps) Gumbel "
                                            "noise orders the commits (0 = deterministic)")
    remask_below: float | None = option(None, "in (0, 1): ReMDM secondary remasking of this sampler's earlier "
                                              "commits whose probability fell below it (never at a block's last step)")
    positions: str = option("absolute", "RoPE positions: 'absolute' (count padding, the reference) or 'compact'")

    def _check(self) -> None:
        if self.gen_length < 0 or self.block_length < 1 or self.steps < 1:
            raise ValueError(f"need gen_length >= 0, block_length >= 1 and steps >= 1, got {self.gen_length}, "
                             f"{self.block_length}, {self.steps}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        check_choice("remasking", self.remasking, REMASKING)
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.factor is not None and self.factor <= 0:
            raise ValueError(f"factor must be > 0, got {self.factor}")
        if self.threshold is not None and self.factor is not None:
            raise ValueError("give threshold or factor, not both")
        check_choice("cache", self.cache, CACHES)
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if self.choice_temperature < 0:
            raise ValueError(f"choice_temperature must be >= 0, got {self.choice_temperature}")
        if self.remask_below is not None and not 0 < self.remask_below < 1:
            raise ValueError(f"remask_below must be in (0, 1), got {self.remask_below}")
        check_choice("positions", self.positions, POSITIONS)
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        check_choice("cfg_form", self.cfg_form, CFG_FORMS)

    @property
    def adaptive(self) -> bool:
        """Steps until each block is decoded (threshold / factor) instead of a fixed count."""
        return self.threshold is not None or self.factor is not None


@dataclass
class _Run:
    """One call's canvas and parts: x (B, L) the canvas, fillable (B, L) positions this call decodes, open_ (B, L)
    those still masked, commit_step (B, L), the first decoded column, the forward pass with its cache strategy, the
    logit filters."""

    x: Tensor
    fillable: Tensor
    open_: Tensor
    commit_step: Tensor
    start: int
    steps_per_block: int
    cache: CacheStrategy
    filters: LogitFilters
    narrow: bool  # adaptive steps compute logits only at still-masked columns
    no_confidence_for: int | None


@SAMPLERS.register("llada")
class LLaDASampler(Sampler):
    """LLaDA's semi-autoregressive remasking sampler with the Fast-dLLM accelerations (see the module docstring).

    Per-call inputs: `uncond_input_ids` (B, P) the unconditional prompt for guidance (a negative prompt or an
    empty caption left-padded to P; the generated part, infilled prompt positions included, is shared) and
    `uncond_attention_mask` its padding; `allowed_token_ids` (ids every generated token is constrained to);
    `logits_processor` (`fn(logits (B, K, V), canvas (B, L), lo, hi) -> logits`, applied before sampling).

    >>> from mmdiff import CoreConfig, MaskedDiffusionTransformer, VocabLayout
    >>> core = MaskedDiffusionTransformer(CoreConfig(VocabLayout.build(16), d_model=32, n_layers=1, n_heads=2))
    >>> sampler = LLaDASampler(gen_length=4, steps=4, block_length=4)
    >>> sampler(core, torch.tensor([[1, 2, 3]]), mask_id=16).shape
    torch.Size([1, 7])
    """

    name = "llada"
    Options = LLaDAOptions
    inputs = ("uncond_input_ids", "uncond_attention_mask", "allowed_token_ids", "logits_processor")
    takes_eos = True
    options: LLaDAOptions

    def _sample(self, core: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, *, mask_id: int,
                eos_id: int | None, eot_id: int | None, generator: torch.Generator | None, return_history: bool,
                **inputs: Any) -> Tensor | SamplerOutput:
        o = self.options
        run = _prepare(o, core, input_ids, attention_mask, mask_id, eos_id, eot_id, **inputs)
        x, open_, commit_step, B, L = run.x, run.open_, run.commit_step, *run.x.shape
        nfe = 0
        for lo in range(run.start, L, o.block_length):
            hi = min(lo + o.block_length, L)
            if not bool(open_[:, lo:hi].any()):
                continue  # every row finished (EOS early stop) or nothing to decode here
            counts = commit_counts(o.schedule, open_[:, lo:hi].sum(1), run.steps_per_block)  # (B, S)
            max_steps = hi - lo if o.adaptive else run.steps_per_block
            run.cache.begin_block()
            step = 0
            while step < max_steps:
                still_masked = open_[:, lo:hi]
                order, open_counts, n_rows = None, None, B  # order: (B, n) the block columns asked, when not all
                if o.adaptive:
                    open_counts = still_masked.sum(1)
                    per_row = open_counts.tolist()  # the step's one host sync: is the block done, how wide, which rows
                    n_open = max(per_row)
                    if n_open == 0:
                        break
                    if run.narrow and n_open < hi - lo:
                        # logits only where a row still has masks (each row's masked columns first, in column order)
                        order = still_masked.long().argsort(dim=1, descending=True, stable=True)[:, :n_open]
                        still_masked = still_masked.gather(1, order)
                    n_rows = sum(c > 0 for c in per_row)
                columns = None if order is None else order + lo
                logits = run.cache.logits(x, lo, hi, columns, open_counts, n_rows)  # (B, K or n, V)
                nfe += 1
                logits = run.filters(logits, x, lo, hi)
                x0, conf = self._choose(logits, run.no_confidence_for, step / max_steps, generator)  # (B, K or n)
                commit = self._commit(conf, still_masked, counts, step)
                if order is not None:  # back to the block's columns
                    commit = torch.zeros_like(open_[:, lo:hi]).scatter(1, order, commit)
                    x0 = x[:, lo:hi].scatter(1, order, x0)
                if o.remask_below is not None and step < max_steps - 1:
                    self._remask(run, logits, commit, still_masked, counts[:, step + 1], lo, hi, mask_id)
                if run.cache.tracks_changes:  # keys and values of changed tokens are recomputed at the next step
                    run.cache.changed(commit & (x0 != x[:, lo:hi]), lo, hi)
                x[:, lo:hi] = torch.where(commit, x0, x[:, lo:hi])
                open_[:, lo:hi] = run.fillable[:, lo:hi] & (x[:, lo:hi] == mask_id)
                commit_step[:, lo:hi] = torch.where(commit, nfe - 1, commit_step[:, lo:hi])
                step += 1
            if o.eos_early_stop:
                run.cache.changed(_finish_rows_at_eos(x, open_, commit_step, run.start, hi, eos_id, nfe))
        if return_history:
            return SamplerOutput(sequences=x, commit_step=commit_step, nfe=nfe)
        return x

    def _choose(self, logits: Tensor, no_confidence_for: int | None, progress: float,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(B, K, V) filtered logits -> (predictions (B, K), float64 confidences (B, K)); MaskGIT's annealed Gumbel
        noise on the confidences with `choice_temperature` (`progress` = step / steps)."""
        o = self.options
        x0 = gumbel_argmax(logits, o.temperature, generator)  # (B, K)
        if no_confidence_for is not None:  # the reference removes EOT from the softmax that gives confidences
            logits[..., no_confidence_for] = -math.inf
        conf = confidence_scores(logits, x0, o.remasking, generator)
        if o.choice_temperature > 0:
            anneal = o.choice_temperature * (1 - progress)
            u = uniform64(conf.shape, generator, conf.device)
            conf = torch.log(conf.clamp(min=1e-300)) + anneal * -torch.log(-torch.log(u.clamp(min=1e-300)))
        return x0, conf

    def _commit(self, conf: Tensor, still_masked: Tensor, counts: Tensor, step: int) -> Tensor:
        """Bool (B, K): the still-masked positions this step commits (threshold, factor, or the step's count of
        `counts` (B, S))."""
        o = self.options
        if o.threshold is not None:
            return threshold_commits(conf, still_masked, o.threshold)
        if o.factor is not None:
            return factor_commits(conf, still_masked, o.factor)
        return commit_mask(conf.masked_fill(~still_masked, -math.inf), counts[:, step]) & still_masked

    def _remask(self, run: _Run, logits: Tensor, commit: Tensor, still_masked: Tensor, next_count: Tensor, lo: int,
                hi: int, mask_id: int) -> None:
        """ReMDM-style secondary remasking: tokens committed earlier by this sampler, now improbable, are masked
        again and re-decoded at the next step at the latest (`next_count` grows in place)."""
        x = run.x
        own = run.fillable[:, lo:hi] & ~still_masked
        p_own = torch.softmax(logits.double(), -1).gather(-1, x[:, lo:hi, None]).squeeze(-1)
        again = own & (p_own < self.options.remask_below) & ~commit
        x[:, lo:hi] = x[:, lo:hi].masked_fill(again, mask_id)
        run.cache.changed(again, lo, hi)
        next_count += again.sum(1)


def _prepare(o: LLaDAOptions, core: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, mask_id: int,
             eos_id: int | None, eot_id: int | None, *, uncond_input_ids: Tensor | None = None,
             uncond_attention_mask: Tensor | None = None, allowed_token_ids: Sequence[int] | None = None,
             logits_processor: Callable[[Tensor, Tensor, int, int], Tensor] | None = None) -> _Run:
    """Checks the call, builds the canvas (prompt then `gen_length` masks), the forward pass with its guidance and
    cache strategy, and the logit filters."""
    _check_call(o, core, input_ids, attention_mask, eos_id, eot_id)
    B, P = input_ids.shape
    to_fill = input_ids == mask_id  # (B, P) prompt positions to infill; padding never is one
    if attention_mask is not None:
        to_fill &= attention_mask.bool()
    start = _first_decoded_column(o, to_fill, mask_id)
    n_blocks = -(-(P + o.gen_length - start) // o.block_length)
    if o.steps % n_blocks and not o.adaptive:
        raise ValueError(f"steps={o.steps} must be a multiple of the number of blocks ({n_blocks})")
    core.check_ids(input_ids)
    device, G, L = input_ids.device, o.gen_length, P + o.gen_length
    x = torch.cat([input_ids, torch.full((B, G), mask_id, dtype=input_ids.dtype, device=device)], dim=1)
    fillable = torch.cat([to_fill, torch.ones(B, G, dtype=torch.bool, device=device)], 1)  # (B, L)
    attention, position_ids = None, None
    if attention_mask is not None:
        attention = torch.cat([attention_mask.bool(), torch.ones(B, G, dtype=torch.bool, device=device)], 1)
        if o.positions == "compact":  # the first real token of every row sits at RoPE position 0
            position_ids = (attention.long().cumsum(1) - 1).clamp(min=0)  # (B, L)
    if position_ids is None:
        position_ids = torch.arange(L, device=device)[None].expand(B, L)
    guided = o.cfg_scale != (1.0 if o.cfg_form == "standard" else 0.0)
    uncond = None
    if guided:  # the unconditional canvas's prompt: given tokens masked out (reference), or the one given
        uncond = _unconditional_prompt(x[:, :P], ~fillable[:, :P], mask_id, uncond_input_ids, uncond_attention_mask,
                                       attention, position_ids, o.positions, o.cfg_form)
    forward = _Forward(core, attention, position_ids, o.cfg_scale if guided else None, o.cfg_form, uncond,
                       shared=to_fill if guided and bool(to_fill.any()) else None)
    # adaptive steps may skip what cannot be committed (unless every column's logits are wanted): decided columns,
    # and rows that finished the block (exact without a cache and with the caches refreshed per block)
    narrow = o.adaptive and o.remask_below is None and logits_processor is None
    cache = make_cache(o.cache, forward, skip_rows=narrow and not guided, shape=(B, L), device=device)
    banned = [i for i, on in ((mask_id, o.logits_mask_inf), (eos_id, o.logits_eos_inf)) if on and i is not None]
    filters = LogitFilters(banned=banned, allowed=allowed_token_ids, processor=logits_processor, top_k=o.top_k,
                           top_p=o.top_p, device=device)
    return _Run(x=x, fillable=fillable, open_=fillable.clone(), commit_step=torch.where(fillable, 0, GIVEN),
                start=start, steps_per_block=max(o.steps // n_blocks, 1), cache=cache, filters=filters,
                narrow=narrow, no_confidence_for=eot_id if o.confidence_eos_eot_inf and eot_id is not None else None)


def _first_decoded_column(o: LLaDAOptions, to_fill: Tensor, mask_id: int) -> int:
    """The first column holding a mask to fill (the end of the prompt when none), after the infill checks."""
    P = to_fill.shape[1]
    if not o.infill and bool(to_fill.any()):
        row, col = (int(i) for i in to_fill.nonzero()[0])
        raise ValueError(f"the prompt holds the mask id {mask_id} (row {row}, position {col}); pass infill=True to "
                         "fill masks in place, or remove them from the prompt")
    prompt_masks = to_fill.any(0).nonzero()
    start = int(prompt_masks[0]) if len(prompt_masks) else P
    if start == P and o.gen_length == 0:
        raise ValueError("nothing to generate: gen_length=0 and the prompt holds no mask id to fill; pass "
                         "gen_length >= 1")
    if start == P and o.gen_length % o.block_length:
        raise ValueError(f"gen_length={o.gen_length} must be a multiple of block_length={o.block_length}")
    return start


def _check_call(o: LLaDAOptions, core: nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
                eos_id: int | None, eot_id: int | None) -> None:
    """What the options alone cannot check: shapes, the core's logit layout, the special ids needed."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, prompt_length), got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    if o.cache is not None and getattr(getattr(core, "config", None), "logits_shift", "none") != "none":
        raise ValueError(f"cache={o.cache!r} needs a core whose logit at i predicts token i; this core shifts logits "
                         "(Dream layout): use cache=None")
    if (o.logits_eos_inf or o.eos_early_stop) and eos_id is None:
        raise ValueError("logits_eos_inf and eos_early_stop need eos_id (the model's vocabulary has no EOS id)")
    if o.confidence_eos_eot_inf and eot_id is None:
        raise ValueError("confidence_eos_eot_inf needs eot_id (the model's vocabulary has no EOT id)")


@torch.no_grad()
def llada_generate(
    core: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    mask_id: int,
    eos_id: int | None = None,
    eot_id: int | None = None,
    return_history: bool = False,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Tensor | SamplerOutput:
    """`LLaDASampler(**settings)(core, input_ids, attention_mask, ...)` as one function: keywords that are
    `LLaDAOptions` fields are settings, `uncond_input_ids` / `uncond_attention_mask` / `allowed_token_ids` /
    `logits_processor` are per-call inputs (see `LLaDASampler`).

    Returns:
        (B, P + gen_length) prompt then answer, or a `SamplerOutput` with `return_history`.

    >>> # out = llada_generate(model.core, prompt, mask_id=model.vocab.mask_id, gen_length=64, steps=64)
    """
    inputs = {k: options.pop(k) for k in LLaDASampler.inputs if k in options}
    return LLaDASampler(**options)(core, input_ids, attention_mask, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id,
                                   generator=generator, return_history=return_history, **inputs)


def _unconditional_prompt(prompt: Tensor, given: Tensor, mask_id: int, uncond_ids: Tensor | None,
                          uncond_mask: Tensor | None, attention: Tensor | None, position_ids: Tensor,
                          positions: str, cfg_form: str) -> tuple[Tensor, Tensor | None, Tensor]:
    """(prompt ids, (B, L) attention or None, (B, L) positions) of the unconditional canvases."""
    if cfg_form not in CFG_FORMS:
        raise ValueError(f"cfg_form must be one of {CFG_FORMS}, got {cfg_form!r}")
    if uncond_ids is None:
        if uncond_mask is not None:
            raise ValueError("uncond_attention_mask needs uncond_input_ids")
        return prompt.masked_fill(given, mask_id), attention, position_ids
    if uncond_ids.shape != prompt.shape:
        raise ValueError(f"uncond_input_ids {tuple(uncond_ids.shape)} must match the prompt {tuple(prompt.shape)}: "
                         "left-pad the negative / empty prompt to the prompt's length")
    if uncond_mask is not None and uncond_mask.shape != uncond_ids.shape:
        raise ValueError(f"uncond_attention_mask {tuple(uncond_mask.shape)} must match uncond_input_ids "
                         f"{tuple(uncond_ids.shape)}")
    B, L = position_ids.shape
    if uncond_mask is None:
        uncond_mask = torch.ones_like(uncond_ids, dtype=torch.bool)
    answer = torch.ones(B, L - prompt.shape[1], dtype=torch.bool, device=prompt.device)
    full = torch.cat([uncond_mask.bool(), answer], dim=1)
    positions_u = (full.long().cumsum(1) - 1).clamp(min=0) if positions == "compact" else position_ids
    return uncond_ids, full, positions_u


def _finish_rows_at_eos(x: Tensor, open_: Tensor, commit_step: Tensor, start: int, hi: int, eos_id: int,
                        nfe: int) -> Tensor:
    """Rows with an EOS in [start, hi) and nothing undecided before it: their remaining masks become EOS (returns
    the (B, L) positions filled)."""
    region = x[:, start:hi]
    is_eos = (region == eos_id) & ~open_[:, start:hi]
    first_eos = torch.where(is_eos.any(1), is_eos.float().argmax(1), region.shape[1])  # (B,)
    cols = torch.arange(region.shape[1], device=x.device)[None]
    undecided_before = (open_[:, start:hi] & (cols < first_eos[:, None])).any(1)
    done = is_eos.any(1) & ~undecided_before  # (B,)
    fill = open_ & done[:, None]
    fill[:, :start] = False
    x[fill] = eos_id
    commit_step[fill] = nfe - 1
    open_ &= ~fill
    return fill
