"""Discrete Diffusion VLA decoding (Liang et al. 2025, "Discrete Diffusion VLA: Bringing Discrete Diffusion to Action
Decoding in Vision-Language-Action Policies", arXiv 2508.20072): an action chunk of `gen_length` tokens after the
prompt (images, instruction, state) starts fully masked and is decoded in `steps` refinement rounds, one forward
pass each, all positions in parallel (one block, no semi-autoregressive split).

- Adaptive decoding order: each round predicts every masked position and commits the most confident first; the
  number of positions still masked after round t of T follows the keep schedule, MaskGIT's cosine by default
  (floor(N cos(pi/2 t/T)) of the N chunk tokens; `mmdiff.sampling.schedule.masked_after`). The score is the
  probability of the predicted token ("low_confidence") or the confidence gap to the runner-up ("margin"), the
  paper's "confidence / confidence-gap scores"; `choice_temperature` adds MaskGIT's annealed Gumbel noise to it.
- Secondary re-masking: every round also re-checks the tokens committed in earlier rounds under the new context and
  masks again those that fail (`mmdiff.sampling.selection.secondary_remask`): the threshold check (the token's score
  now is below `remask_threshold`) and the residual-drop check (its score fell by more than `remask_drop` since the
  round that committed it). Re-masked positions rejoin the masked pool, so the next round commits them on top of
  its schedule count (the pool after round t is the schedule's count plus the re-masked ones); no re-masking at the
  last round, so every position is decoded after `steps` rounds.

Choices where the public material stops (the paper's text describes both checks with step-dependent thresholds
whose values are not public; the authors' released `parallel_decode.py` is a MaskGIT loop that instead scales the
kept tokens' probabilities by 1 - t/T and lets them compete with masked positions for the keep slots):

1. The thresholds are constants, in the units of the score: a probability in [0, 1] for "low_confidence"; a gap
   in [-1, 1] for "margin", where the committed token's score p(token) - max other p is negative when the model now
   prefers another token, so a negative `remask_threshold` re-masks exactly the tokens whose prediction changed with
   at least that margin.
2. A token's score at its commit is measured without the Gumbel noise; the predicted token is the argmax (or a
   sample at `temperature` > 0), never the mask id.
3. Commit counts follow the schedule's floor exactly: with more steps than the schedule separates, a round may
   commit nothing (it still re-checks the committed tokens).

The forward pass, logit filters and key/value caches are the LLaDA sampler's (`mmdiff.sampling.llada`,
`mmdiff.sampling.cache`); `cache="prefix"` computes the prompt's keys and values once per chunk (exact when the
prompt never attends to the actions: the "prefix" attention kind of a `CanvasCore`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmdiff.registry import SAMPLERS
from mmdiff.sampling.base import Sampler, SamplerOptions, check_choice, check_range, option
from mmdiff.sampling.llada import CACHES, POSITIONS, LLaDAOptions, _prepare
from mmdiff.sampling.output import SamplerOutput
from mmdiff.sampling.schedule import SCHEDULES, masked_after
from mmdiff.sampling.selection import commit_mask, gumbel_argmax, secondary_remask, token_scores, uniform64

__all__ = ["DiscreteDiffusionVLASampler", "DDVLAOptions", "REMASK_CHECKS", "SCORES"]

SCORES = ("low_confidence", "margin")
REMASK_CHECKS = ("none", "threshold", "drop", "both")


@dataclass(frozen=True)
class DDVLAOptions(SamplerOptions):
    """The settings of `DiscreteDiffusionVLASampler` (what `sampler_config.json` saves); validated on construction."""

    gen_length: int = option(32, "action tokens decoded after the prompt (the chunk: H steps x D dimensions)")
    steps: int = option(12, "refinement rounds T, one forward pass each")
    temperature: float = option(0.0, "0 = argmax predictions; > 0 samples them with Gumbel noise in float64")
    remasking: str = option("low_confidence", "the score ordering commits and re-checks: 'low_confidence' "
                                              "(probability of the token) or 'margin' (its gap to the best other "
                                              "token)")
    schedule: str = option("cosine", "positions still masked after round t: 'cosine' (floor(N cos(pi/2 t/T)), "
                                     "MaskGIT) or 'linear'")
    choice_temperature: float = option(0.0, "MaskGIT's Gumbel top-k: log-score + T (1 - t/steps) Gumbel noise orders "
                                            "the commits (0 = most confident first, deterministic)")
    remask: str = option("both", f"secondary re-masking checks of committed tokens, one of {REMASK_CHECKS}")
    remask_threshold: float = option(0.1, "threshold check: re-mask a committed token whose score is now below this "
                                          "(a probability, or a gap in [-1, 1] with remasking='margin')")
    remask_drop: float = option(0.5, "residual-drop check: re-mask a committed token whose score fell by more than "
                                     "this since the round that committed it")
    cache: str | None = option(None, "None, 'prefix' (the prompt's keys and values computed once per chunk; exact "
                                     "under prefix attention), 'dual' or 'delayed' (as the llada sampler)")
    top_k: int | None = option(None, "keep the k most likely tokens before sampling")
    top_p: float | None = option(None, "nucleus filter in (0, 1] before sampling")
    positions: str = option("absolute", "RoPE positions: 'absolute' (count padding) or 'compact' (from each row's "
                                        "first real token)")

    def _check(self) -> None:
        if self.gen_length < 1 or self.steps < 1:
            raise ValueError(f"need gen_length >= 1 and steps >= 1, got {self.gen_length} and {self.steps}")
        check_range("temperature", self.temperature, 0)
        check_choice("remasking", self.remasking, SCORES)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_range("choice_temperature", self.choice_temperature, 0)
        check_choice("remask", self.remask, REMASK_CHECKS)
        check_range("remask_threshold", self.remask_threshold, -1, 1)
        check_range("remask_drop", self.remask_drop, 0, 2, low_open=True)
        if self.remask in ("threshold", "both") and self.remasking == "low_confidence" and self.remask_threshold <= 0:
            raise ValueError(f"remask_threshold={self.remask_threshold} never re-masks with "
                             "remasking='low_confidence' (a probability is never below it): give a threshold in "
                             "(0, 1], or use remasking='margin' for a negative gap")
        check_choice("cache", self.cache, CACHES)
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        check_range("top_p", self.top_p, 0, 1, low_open=True)
        check_choice("positions", self.positions, POSITIONS)


@SAMPLERS.register("discrete-diffusion-vla")
class DiscreteDiffusionVLASampler(Sampler):
    """Discrete Diffusion VLA's decoder: adaptive order under a cosine keep schedule, with secondary re-masking (see
    the module docstring).

    Per-call inputs: `allowed_token_ids` (ids every decoded token is constrained to, e.g. the action bins) and
    `logits_processor` (`fn(logits (B, K, V), canvas (B, L), lo, hi) -> logits`, applied before choosing tokens).

    >>> from mmdiff import CoreConfig, MaskedDiffusionTransformer, VocabLayout
    >>> core = MaskedDiffusionTransformer(CoreConfig(VocabLayout.build(16), d_model=32, n_layers=1, n_heads=2))
    >>> sampler = DiscreteDiffusionVLASampler(gen_length=6, steps=3)
    >>> out = sampler(core, torch.tensor([[1, 2, 3]]), mask_id=16, return_history=True)
    >>> out.sequences.shape, out.nfe
    (torch.Size([1, 9]), 3)
    """

    name = "discrete-diffusion-vla"
    Options = DDVLAOptions
    inputs = ("allowed_token_ids", "logits_processor")
    options: DDVLAOptions

    def _sample(self, core: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, *, mask_id: int,
                eos_id: int | None, eot_id: int | None, generator: torch.Generator | None, return_history: bool,
                **inputs: Any) -> Tensor | SamplerOutput:
        o = self.options
        _check_prompt(input_ids, attention_mask, mask_id)
        run = _prepare(self._llada_options(), core, input_ids, attention_mask, mask_id, None, None, **inputs)
        x, open_, commit_step, fillable = run.x, run.open_, run.commit_step, run.fillable
        lo, hi = run.start, x.shape[1]  # the chunk: every position after the prompt
        left = masked_after(o.schedule, open_[:, lo:hi].sum(1), o.steps)  # (B, S) still masked after each round
        kept = torch.zeros(x[:, lo:hi].shape, dtype=torch.float64, device=x.device)  # (B, K) score at commit
        checks = {"threshold": o.remask_threshold if o.remask in ("threshold", "both") else None,
                  "drop": o.remask_drop if o.remask in ("drop", "both") else None}
        run.cache.begin_block()
        for step in range(o.steps):
            still = open_[:, lo:hi]  # (B, K)
            logits = run.filters(run.cache.logits(x, lo, hi), x, lo, hi)  # (B, K, V)
            x0, score, order = self._choose(logits, step, generator)  # (B, K) each
            k = (still.sum(1) - left[:, step]).clamp(min=0)  # (B,) commits of this round
            commit = commit_mask(order.masked_fill(~still, -math.inf), k) & still
            again = torch.zeros_like(commit)
            if o.remask != "none" and step < o.steps - 1:  # re-check the tokens committed in earlier rounds
                block = x[:, lo:hi]
                again = secondary_remask(fillable[:, lo:hi] & ~still, token_scores(logits, block, o.remasking),
                                         kept, **checks)
            if run.cache.tracks_changes:  # keys and values of changed tokens are recomputed at the next round
                run.cache.changed((commit & (x0 != x[:, lo:hi])) | again, lo, hi)
            x[:, lo:hi] = torch.where(commit, x0, x[:, lo:hi]).masked_fill(again, mask_id)
            kept = torch.where(commit, score, kept)
            open_[:, lo:hi] = fillable[:, lo:hi] & (x[:, lo:hi] == mask_id)
            commit_step[:, lo:hi] = torch.where(commit, step, commit_step[:, lo:hi])
        if return_history:
            return SamplerOutput(sequences=x, commit_step=commit_step, nfe=o.steps)
        return x

    def _choose(self, logits: Tensor, step: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """(B, K, V) filtered logits -> predictions, their float64 scores and the commit order (the scores, or with
        `choice_temperature` MaskGIT's log-score plus annealed Gumbel noise), each (B, K)."""
        o = self.options
        x0 = gumbel_argmax(logits, o.temperature, generator)  # (B, K)
        score = token_scores(logits, x0, o.remasking)
        if o.choice_temperature == 0:
            return x0, score, score
        anneal = o.choice_temperature * (1 - step / o.steps)
        u = uniform64(score.shape, generator, score.device)
        order = torch.log(score.clamp(min=1e-300)) + anneal * -torch.log(-torch.log(u.clamp(min=1e-300)))
        return x0, score, order

    def _llada_options(self) -> LLaDAOptions:
        """The LLaDA settings of the shared preparation: one block over the chunk, the mask id never predicted."""
        o = self.options
        return LLaDAOptions(gen_length=o.gen_length, steps=o.steps, block_length=o.gen_length,
                            temperature=o.temperature, remasking=o.remasking, cache=o.cache, top_k=o.top_k,
                            top_p=o.top_p, logits_mask_inf=True, schedule=o.schedule,
                            choice_temperature=o.choice_temperature, positions=o.positions)


def _check_prompt(input_ids: Tensor, attention_mask: Tensor | None, mask_id: int) -> None:
    """The prompt must hold no mask id: this sampler decodes only the chunk after it."""
    holds = input_ids == mask_id if input_ids.dim() == 2 else None
    if holds is None:
        return  # the shared checks name the shape
    if attention_mask is not None and attention_mask.shape == holds.shape:
        holds &= attention_mask.bool()
    if bool(holds.any()):
        row, col = (int(i) for i in holds.nonzero()[0])
        raise ValueError(f"the prompt holds the mask id {mask_id} (row {row}, position {col}); the "
                         "discrete-diffusion-vla sampler decodes only the gen_length positions after the prompt: "
                         "remove it, or fill prompt masks with the llada sampler's infill=True")
