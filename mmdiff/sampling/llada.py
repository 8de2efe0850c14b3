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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiff.registry import SAMPLERS
from mmdiff.sampling.output import GIVEN, SamplerOutput

__all__ = [
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

REMASKING = ("low_confidence", "margin", "entropy", "random")
CACHES = (None, "prefix", "dual", "delayed")
POSITIONS = ("absolute", "compact")
CFG_FORMS = ("llada", "standard")


def tokens_per_step(n_masked: Tensor, steps: int) -> Tensor:
    """(B,) masked counts -> (B, steps) commits per step: floor(M/S) each, the first M mod S steps one more.

    >>> tokens_per_step(torch.tensor([10]), 4).tolist()
    [[3, 3, 2, 2]]
    """
    base = torch.div(n_masked, steps, rounding_mode="floor")[:, None]  # (B, 1)
    extra = (torch.arange(steps, device=n_masked.device)[None] < (n_masked % steps)[:, None]).long()  # (B, S)
    return base + extra


def cosine_tokens_per_step(n_masked: Tensor, steps: int) -> Tensor:
    """MaskGIT's cosine schedule (Chang et al. 2022): after step s of S, floor(M cos(pi/2 (s+1)/S)) positions stay
    masked; (B,) masked counts -> (B, steps) commits per step (few first, many last; all done after S steps).

    >>> cosine_tokens_per_step(torch.tensor([16]), 4).tolist()
    [[2, 3, 5, 6]]
    """
    s = torch.arange(1, steps + 1, device=n_masked.device, dtype=torch.float64)
    left = torch.floor(n_masked[:, None].double() * torch.cos(math.pi / 2 * s / steps)).long()  # (B, S) still masked
    left[:, -1] = 0
    before = torch.cat([n_masked[:, None], left[:, :-1]], 1)
    return before - left


def uniform64(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U(0, 1) float64 noise on `device`, drawn on the generator's own device (a CPU generator drives a GPU run, and
    one seed gives the same noise on either)."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where, dtype=torch.float64).to(device)


def gumbel_argmax(logits: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """argmax of logits (temperature 0) or a sample at `temperature` by the Gumbel-max trick in float64."""
    if temperature == 0:
        return logits.argmax(-1)
    logits64 = logits.double()
    u = uniform64(logits64.shape, generator, logits.device)
    # exp(l) / (-log u)^T ranks like (l - T log(-log u)): a sample from softmax(l / T)
    return (logits64.exp() / (-torch.log(u)) ** temperature).argmax(-1)


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Sets logits outside the top-k and outside the smallest set of probability >= top_p (nucleus) to -inf.

    >>> filter_logits(torch.tensor([[1.0, 3.0, 2.0]]), top_k=2).tolist()
    [[-inf, 3.0, 2.0]]
    """
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.float().softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.float().softmax(-1) >= top_p  # mass before this token already >= p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def confidence_scores(logits: Tensor, x0: Tensor, remasking: str, generator: torch.Generator | None = None) -> Tensor:
    """(..., V) logits and (...) predictions -> (...) confidence in float64 (higher = commit earlier).

    >>> logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    >>> [round(float(confidence_scores(logits, torch.tensor([0]), r)), 4) for r in ("low_confidence", "margin")]
    [0.7, 0.5]
    """
    if remasking == "random":
        return uniform64(x0.shape, generator, x0.device)
    if remasking == "low_confidence":  # the reference's softmax, in the logits' dtype
        return F.softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1).double()
    p = F.softmax(logits.double(), dim=-1)
    if remasking == "margin":
        top2 = p.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if remasking == "entropy":
        return (p * torch.log(p.clamp(min=1e-300))).sum(-1)  # negative entropy
    raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")


def commit_mask(confidence: Tensor, k: Tensor) -> Tensor:
    """(B, N) confidences, (B,) counts -> bool (B, N) marking each row's k most confident positions.

    >>> commit_mask(torch.tensor([[0.1, 0.9, 0.5]]), torch.tensor([2])).tolist()
    [[False, True, True]]
    """
    order = confidence.argsort(dim=1, descending=True, stable=True)  # (B, N) positions, most confident first
    arange = torch.arange(order.shape[1], device=order.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, arange)  # (B, N) rank of each position
    return ranks < k[:, None]


def threshold_commits(confidence: Tensor, still_masked: Tensor, threshold: float) -> Tensor:
    """Every still-masked position with confidence > threshold, plus each row's most confident one.

    >>> threshold_commits(torch.tensor([[0.95, 0.5, 0.97]]), torch.tensor([[True, True, False]]), 0.9).tolist()
    [[True, False, False]]
    """
    conf = confidence.masked_fill(~still_masked, -math.inf)
    best = commit_mask(conf, still_masked.any(1).long())
    return ((conf > threshold) | best) & still_masked


def factor_commits(confidence: Tensor, still_masked: Tensor, factor: float) -> Tensor:
    """Fast-dLLM's factor rule: the n most confident masked positions, n the longest prefix of the sorted
    confidences c_1 >= c_2 >= ... with c_i >= 1 - factor / (i + 1) (c_1 always), per row.

    >>> factor_commits(torch.tensor([[0.9, 0.6, 0.5]]), torch.ones(1, 3, dtype=torch.bool), 1.0).tolist()
    [[True, True, False]]
    """
    conf = confidence.masked_fill(~still_masked, -math.inf)
    ordered = conf.sort(dim=1, descending=True).values  # (B, N)
    i = torch.arange(1, conf.shape[1] + 1, device=conf.device, dtype=ordered.dtype)
    passes = ordered >= 1 - factor / (i + 1)
    passes[:, 0] = True
    n = passes.long().cumprod(1).sum(1)  # length of the passing prefix
    return commit_mask(conf, torch.minimum(n, still_masked.sum(1))) & still_masked


@SAMPLERS.register("llada")
@torch.no_grad()
def llada_generate(
    core: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    mask_id: int,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int = 32,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    cfg_form: str = "llada",
    uncond_input_ids: Tensor | None = None,
    uncond_attention_mask: Tensor | None = None,
    threshold: float | None = None,
    factor: float | None = None,
    cache: str | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    infill: bool = False,
    eos_early_stop: bool = False,
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    logits_mask_inf: bool = False,
    schedule: str = "linear",
    choice_temperature: float = 0.0,
    remask_below: float | None = None,
    allowed_token_ids: Sequence[int] | None = None,
    logits_processor: Callable[[Tensor, Tensor, int, int], Tensor] | None = None,
    positions: str = "absolute",
    eos_id: int | None = None,
    eot_id: int | None = None,
    return_history: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor | SamplerOutput:
    """Generates `gen_length` tokens after each prompt row; with `infill=True` also fills the mask ids of the prompt.

    The decoded region runs from the first column holding a mask id to fill (the end of the prompt when there is
    none) to the end of the canvas; it is cut into blocks of `block_length` from its start (the last one may be
    shorter when the prompt holds masks), decoded left to right with `steps / n_blocks` steps each.

    Args:
        core: a `MaskedDiffusionTransformer` (or anything with its call signature).
        input_ids: (B, P) prompts, left-padded when lengths differ.
        attention_mask: (B, P) True at real prompt tokens.
        mask_id: the mask token id.
        gen_length: answer length (0 with `infill` = only fill the masks of the prompt); with a mask-free prompt it
            must be a multiple of block_length.
        steps: total denoising steps, split evenly over blocks (ignored with `threshold` / `factor`: each block then
            runs until decoded, at most one step per position).
        block_length: semi-autoregressive block size.
        temperature: 0 = greedy; > 0 samples with Gumbel noise in float64.
        remasking: commit order, one of `REMASKING`.
        cfg_scale: classifier-free guidance weight w (see `cfg_form`); u comes from the prompt with its given
            tokens masked out, or from `uncond_input_ids`.
        cfg_form: "llada": logits = u + (w + 1)(c - u) = (1 + w)c - w u (LLaDA, MMaDA; w = 0 is no guidance);
            "standard": u + w (c - u) (Ho & Salimans 2022; w = 1 is no guidance).
        uncond_input_ids: (B, P) the unconditional prompt (a negative prompt, or an empty caption left-padded to P);
            the generated part is shared with the conditional canvas, including the prompt positions filled with
            `infill` (whatever `uncond_input_ids` holds there is replaced by the current tokens).
            `uncond_attention_mask`: its padding.
        threshold: in (0, 1]: commit every position more confident than this (at least one per row and step).
        factor: > 0: Fast-dLLM's factor rule instead of a fixed count (see `factor_commits`).
        cache: None, "prefix" or "dual" (Fast-dLLM key/value caches, refreshed per block), or "delayed" (dual
            cache with delayed caching of decoded tokens and no per-block refresh).
        top_k, top_p: filter the logits before sampling.
        infill: fill mask ids found in the prompt (at real, non-padding positions); without it they are an error.
        eos_early_stop: finish a row once its answer has an EOS with everything before it decoded.
        logits_eos_inf: never predict EOS (needs `eos_id`).
        confidence_eos_eot_inf: as the reference does it: after the prediction, EOT's logit is set to -inf in the
            softmax that gives the confidences (an EOT prediction gets confidence 0, the others are renormalised).
        logits_mask_inf: never predict the mask id.
        schedule: commits per step with a fixed step count: "linear" (the reference's even split) or "cosine"
            (MaskGIT: few first, many last).
        choice_temperature: MaskGIT's Gumbel top-k: log-confidence + T (1 - step/steps) Gumbel noise decides the
            commit order (0 = deterministic).
        remask_below: secondary remasking (ReMDM, Wang et al. 2025; Discrete Diffusion VLA): tokens this sampler
            committed earlier in the block whose probability under the current step's logits fell below this
            value are masked again (never on a block's last step, so every block ends decoded).
        allowed_token_ids: constrain every generated token to these ids.
        logits_processor: constraint hook `fn(logits (B, K, V), canvas (B, L), lo, hi) -> logits` applied to the
            block's logits before sampling (e.g. per-position allowed sets, grammar masks).
        positions: "absolute" (the reference: positions count padding) or "compact" (from the first real token).
        eos_id, eot_id: special ids (`DiffusionModel.generate` passes the vocabulary's).
        return_history: return a `SamplerOutput` (sequences, commit step of each position, NFE) instead.
        generator: torch.Generator for reproducible sampling.

    Returns:
        (B, P + gen_length) prompt then answer, or a `SamplerOutput` with `return_history`.

    >>> # out = llada_generate(model.core, prompt, mask_id=model.vocab.mask_id, gen_length=64, steps=64)
    """
    B, P = input_ids.shape if input_ids.dim() == 2 else (0, 0)
    _check_options(input_ids, attention_mask, gen_length, steps, block_length, temperature, remasking, threshold,
                   factor, cache, top_k, top_p, positions, cfg_scale, logits_eos_inf, eos_early_stop,
                   confidence_eos_eot_inf, eos_id, eot_id, core, schedule, choice_temperature, remask_below)
    to_fill = input_ids == mask_id  # (B, P) prompt positions to infill; padding never is one
    if attention_mask is not None:
        to_fill &= attention_mask.bool()
    if not infill and bool(to_fill.any()):
        row, col = (int(i) for i in to_fill.nonzero()[0])
        raise ValueError(f"the prompt holds the mask id {mask_id} (row {row}, position {col}); pass infill=True to "
                         "fill masks in place, or remove them from the prompt")
    prompt_masks = to_fill.any(0).nonzero()
    start = int(prompt_masks[0]) if len(prompt_masks) else P  # first decoded column
    if start == P and gen_length == 0:
        raise ValueError("nothing to generate: gen_length=0 and the prompt holds no mask id to fill; pass "
                         "gen_length >= 1")
    if start == P and gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} must be a multiple of block_length={block_length}")
    n_blocks = -(-(P + gen_length - start) // block_length)
    adaptive = threshold is not None or factor is not None  # steps until each block is decoded (at most K)
    if steps % n_blocks and not adaptive:
        raise ValueError(f"steps={steps} must be a multiple of the number of blocks ({n_blocks})")
    core.check_ids(input_ids)
    steps_per_block = max(steps // n_blocks, 1)
    device, L = input_ids.device, P + gen_length
    x = torch.cat([input_ids, torch.full((B, gen_length), mask_id, dtype=input_ids.dtype, device=device)], dim=1)
    fillable = torch.cat([to_fill, torch.ones(B, gen_length, dtype=torch.bool, device=device)], 1)  # (B, L)
    open_ = fillable.clone()  # still masked; a committed mask id (reference behaviour) stays open
    commit_step = torch.where(open_, 0, GIVEN)  # (B, L)
    attention, position_ids = None, None
    if attention_mask is not None:
        attention = torch.cat([attention_mask.bool(), torch.ones(B, gen_length, dtype=torch.bool, device=device)], 1)
        if positions == "compact":  # the first real token of every row sits at RoPE position 0
            position_ids = (attention.long().cumsum(1) - 1).clamp(min=0)  # (B, L)
    if position_ids is None:
        position_ids = torch.arange(L, device=device)[None].expand(B, L)
    guided = cfg_scale != (1.0 if cfg_form == "standard" else 0.0)
    uncond = None
    if guided:  # the unconditional canvas's prompt: given tokens masked out (reference), or the one given
        uncond = _unconditional_prompt(x[:, :P], ~open_[:, :P], mask_id, uncond_input_ids, uncond_attention_mask,
                                       attention, position_ids, positions, cfg_form)
    banned = [i for i, on in ((mask_id, logits_mask_inf), (eos_id, logits_eos_inf)) if on and i is not None]
    # the reference removes EOT from the softmax that gives confidences (its EOS assignment there has no effect)
    no_confidence_for = eot_id if confidence_eos_eot_inf and eot_id is not None else None
    model = _Forward(core, attention, position_ids, cfg_scale if guided else None, cfg_form, uncond,
                     shared=to_fill if guided and bool(to_fill.any()) else None)
    allowed = None if allowed_token_ids is None else torch.as_tensor(list(allowed_token_ids), device=device)
    nfe, window_cache = 0, None
    # adaptive steps may skip what cannot be committed (unless every column's logits are wanted): decided columns, and
    # rows that finished the block (exact without a cache and with the caches refreshed per block)
    narrow = adaptive and remask_below is None and logits_processor is None
    skip_rows = narrow and cache in (None, "prefix", "dual") and not guided
    stale = torch.zeros(B, L, dtype=torch.bool, device=device)  # "delayed" cache: keys/values computed before a change
    for lo in range(start, L, block_length):
        hi = min(lo + block_length, L)
        if not bool(open_[:, lo:hi].any()):
            continue  # every row finished (EOS early stop) or nothing to decode here
        counts = (cosine_tokens_per_step if schedule == "cosine" else tokens_per_step)(
            open_[:, lo:hi].sum(1), steps_per_block)  # (B, S) commits per step
        max_steps = hi - lo if adaptive else steps_per_block
        step = 0
        if cache != "delayed":
            window_cache = None  # refreshed at the first step of every block
        rows = None  # the rows still decoding this block, when not all, and the cache gathered for them
        while step < max_steps:
            still_masked = open_[:, lo:hi]
            order, step_rows = None, None  # (B, n) block columns whose logits are computed, when not all of them
            if adaptive:
                open_counts = still_masked.sum(1)
                per_row = open_counts.tolist()  # the step's one host sync: is the block done, how wide, which rows
                n_open = max(per_row)
                if n_open == 0:
                    break
                if narrow and n_open < hi - lo:
                    # logits only where a row still has masks (each row's masked columns first, in column order)
                    order = still_masked.long().argsort(dim=1, descending=True, stable=True)[:, :n_open]
                    still_masked = still_masked.gather(1, order)
                n_rows = sum(c > 0 for c in per_row)
                if skip_rows and n_rows < B and (cache is None or window_cache is not None):
                    # rows that finished the block sit out its remaining steps (the next block refreshes them)
                    if rows is None or len(rows[0]) != n_rows:
                        keep = (open_counts > 0).nonzero().squeeze(1)
                        rows = (keep, None if window_cache is None else window_cache.select_rows(keep))
                    step_rows = rows
            window = _recompute_window(stale, lo, hi) if cache == "delayed" else (lo, hi)
            columns = None if order is None else order + lo
            logits, window_cache = model(x, lo, hi, cache, window_cache, window, columns, step_rows)  # (B, K|n, V)
            if cache == "delayed":
                stale[:, : window[1]] = False  # the window is fresh; a first (full) forward refreshed all before it
            nfe += 1
            if banned:
                logits[..., banned] = -math.inf
            if allowed is not None:
                keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=device).index_fill_(0, allowed, True)
                logits = logits.masked_fill(~keep, -math.inf)
            if logits_processor is not None:
                logits = logits_processor(logits, x, lo, hi)
            if top_k is not None or top_p is not None:
                logits = filter_logits(logits, top_k, top_p)
            x0 = gumbel_argmax(logits, temperature, generator)  # (B, K or n)
            if no_confidence_for is not None:
                logits[..., no_confidence_for] = -math.inf
            conf = confidence_scores(logits, x0, remasking, generator)
            if choice_temperature > 0:
                anneal = choice_temperature * (1 - step / max_steps)
                u = uniform64(conf.shape, generator, device)
                conf = torch.log(conf.clamp(min=1e-300)) + anneal * -torch.log(-torch.log(u.clamp(min=1e-300)))
            if threshold is not None:
                commit = threshold_commits(conf, still_masked, threshold)
            elif factor is not None:
                commit = factor_commits(conf, still_masked, factor)
            else:
                conf = conf.masked_fill(~still_masked, -math.inf)
                commit = commit_mask(conf, counts[:, step]) & still_masked
            if order is not None:  # back to the block's columns
                commit = torch.zeros_like(open_[:, lo:hi]).scatter(1, order, commit)
                x0 = x[:, lo:hi].scatter(1, order, x0)
            if remask_below is not None and step < max_steps - 1:
                # committed earlier by this sampler, now improbable: masked again (ReMDM-style secondary remasking)
                own = fillable[:, lo:hi] & ~still_masked
                p_own = torch.softmax(logits.double(), -1).gather(-1, x[:, lo:hi, None]).squeeze(-1)
                again = own & (p_own < remask_below) & ~commit
                x[:, lo:hi] = x[:, lo:hi].masked_fill(again, mask_id)
                stale[:, lo:hi] |= again
                counts[:, step + 1] += again.sum(1)  # re-decoded next step at the latest
            if cache == "delayed":  # keys and values of changed tokens are recomputed at the next step
                stale[:, lo:hi] |= commit & (x0 != x[:, lo:hi])
            x[:, lo:hi] = torch.where(commit, x0, x[:, lo:hi])
            open_[:, lo:hi] = fillable[:, lo:hi] & (x[:, lo:hi] == mask_id)
            commit_step[:, lo:hi] = torch.where(commit, nfe - 1, commit_step[:, lo:hi])
            step += 1
        if eos_early_stop:
            stale |= _finish_rows_at_eos(x, open_, commit_step, start, hi, eos_id, nfe)
    if return_history:
        return SamplerOutput(sequences=x, commit_step=commit_step, nfe=nfe)
    return x


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
        if rows is not None:
            keep, kv = rows
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
            out = self.core(x, attention_mask=attention, position_ids=position_ids, logits_at=index,
                            check_inputs=False, use_cache=cache is not None)
            logits, kv = out.logits, out.cache
        else:
            # prefix: the block and all right of it; dual: the block only; delayed: `window` (the block and the
            # positions changed since their keys and values were computed)
            start, end = window if cache == "delayed" else (lo, L if cache == "prefix" else hi)
            index = columns - start
            logits = self.core(x[:, start:end], attention_mask=attention,
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


def _recompute_window(stale: Tensor, lo: int, hi: int) -> tuple[int, int]:
    """The canvas columns a "delayed"-cache step runs: the block [lo, hi) widened to every column whose cached
    keys and values predate a change of its token (one host sync)."""
    changed = stale.any(0).nonzero()
    if not len(changed):
        return lo, hi
    return min(lo, int(changed[0])), max(hi, int(changed[-1]) + 1)


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


def _check_options(input_ids, attention_mask, gen_length, steps, block_length, temperature, remasking, threshold,
                   factor, cache, top_k, top_p, positions, cfg_scale, logits_eos_inf, eos_early_stop,
                   confidence_eos_eot_inf, eos_id, eot_id, core, schedule, choice_temperature,
                   remask_below) -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, prompt_length), got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    if gen_length < 0 or block_length < 1 or steps < 1:
        raise ValueError(f"need gen_length >= 0, block_length >= 1 and steps >= 1, got {gen_length}, {block_length}, "
                         f"{steps}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if factor is not None and factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    if threshold is not None and factor is not None:
        raise ValueError("give threshold or factor, not both")
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {CACHES}, got {cache!r}")
    if cache is not None and getattr(getattr(core, "config", None), "logits_shift", "none") != "none":
        raise ValueError(f"cache={cache!r} needs a core whose logit at i predicts token i; this core shifts logits "
                         "(Dream layout): use cache=None")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")
    if choice_temperature < 0:
        raise ValueError(f"choice_temperature must be >= 0, got {choice_temperature}")
    if remask_below is not None and not 0 < remask_below < 1:
        raise ValueError(f"remask_below must be in (0, 1), got {remask_below}")
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
    if (logits_eos_inf or eos_early_stop) and eos_id is None:
        raise ValueError("logits_eos_inf and eos_early_stop need eos_id (the model's vocabulary has no EOS id)")
    if confidence_eos_eot_inf and eot_id is None:
        raise ValueError("confidence_eos_eot_inf needs eot_id (the model's vocabulary has no EOT id)")
