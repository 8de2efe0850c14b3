"""Dream sampling (Ye et al. 2025, "Dream 7B: Diffusion Large Language Models"): the `diffusion_generate` loop of
Dream-v0 (`generation_utils.py`, `DreamGenerationMixin._sample`), token for token at temperature 0.

The canvas is the prompt followed by `gen_length` mask ids. Time runs over `timesteps = linspace(1, eps, steps + 1)`;
step i (t = timesteps[i], s = timesteps[i + 1]) predicts every masked position and

- `origin`: commits each masked position with probability 1 - s/t (all of them at the last step), its token sampled
  from the filtered distribution;
- `maskgit_plus` / `topk_margin` / `entropy`: scores every masked position by the probability of its token, the
  top-1 minus top-2 probability, or the negative entropy, and commits the int(n_masked * (1 - s/t)) best ones (all
  remaining at the last step), chosen by top-k, or with `alg_temp > 0` sampled without replacement from
  softmax(confidence / alg_temp).

Dream predicts token j from the hidden state at j - 1 (its logits are shifted by one, position 0 repeating itself);
mmdiff's core does that shift itself when built with `CoreConfig(logits_shift="previous")`, so this sampler reads
the logit at j as the prediction for token j and works unchanged for unshifted cores.

Deliberate differences from the reference:

1. (none by default) The mask id can be sampled and keeps its probability mass in the softmax, as in Dream: a
   position whose sampled token is the mask id stays masked. `logits_mask_inf=True` sets its logit to -inf before
   temperature, top-p/top-k and softmax instead (never commit it; confidences renormalised without it).
2. Logits are computed only from the first column that holds a mask to the end of the canvas (Dream computes all of
   them): the same numbers, a smaller head.
3. The number of tokens committed per step is counted per row (`count_rule="per_row"`, the default). Dream uses
   one count for the whole batch, int(mean masked count * (1 - s/t)) (`count_rule="batch_mean"` reproduces it).
   The two are identical whenever every row holds the same number of masks, which is always so for generation
   without infill holes: batch 1, equal-length batches and left-padded batches (each row has `gen_length` masks;
   the padding is not masked), as long as no row chooses the mask id (which leaves the position masked; with a
   mask probability that is not negligible rows then differ, and `batch_mean` reproduces Dream).
   Dream's rule is wrong when the counts differ (rows with different numbers of infill
   holes, or a padding id equal to the mask id, which Dream counts and fills as masks): top-k then picks unmasked
   positions of the emptier rows (confidence -inf) and writes the mask id into them, re-masking prompt or committed
   tokens, and at the last step int(mean) can leave masks in the fuller rows.
4. Padding positions (attention_mask False) are never decoded, even when they hold the mask id.
5. Prompts must be left-padded. Padding queries attend to the real tokens here where Dream masks their whole
   attention row; real positions never see padding in either, so no output changes.
6. With `alg_temp > 0`, when softmax(confidence / alg_temp) underflows to 0 at masked positions, multinomial
   sampling without replacement can pick unmasked positions (probability 0); Dream writes the mask id there. Here
   only masked picks are committed, and the last step commits every remaining masked position. With `batch_mean`
   Dream's writes are reproduced as they are.
7. Random draws take an explicit `generator`. With `generator=None` they are the same torch calls as Dream's, in the
   same order, on the global generator (torch.rand for `origin`, torch.multinomial as Categorical.sample does for
   tokens, torch.multinomial for `alg_temp`). Dream falls back to argmax when sampling raises (NaN
   probabilities); here the error propagates.
8. Mask ids inside the prompt are filled only with `infill=True` (Dream fills them silently); otherwise they are an
   error. The loop stops once nothing is masked (only `origin` can finish early; the output is unchanged) and the
   forward passes run are reported as `nfe`. Dream's token/logit hooks, `num_return_sequences` and its history of
   canvases are not offered; `return_history=True` gives the step at which each position was committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiff.registry import SAMPLERS
from mmdiff.sampling.base import Sampler, SamplerOptions, option
from mmdiff.sampling.output import GIVEN, SamplerOutput
from mmdiff.sampling.selection import sample_tokens, top_k_logits, top_p_logits

__all__ = ["DreamSampler", "DreamOptions", "dream_generate", "sample_tokens", "top_p_logits", "top_k_logits",
           "transfer_counts", "ALGORITHMS"]

ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")
COUNT_RULES = ("per_row", "batch_mean")


def transfer_counts(n_masked: list[int], fraction: Tensor, last: bool, rule: str = "per_row") -> list[int]:
    """Tokens to commit this step for each row: int(n * fraction) in float32 as Dream computes it (n = the row's
    masked count, or the batch mean for `rule="batch_mean"`), and every remaining mask (int(n)) at the last step.

    >>> transfer_counts([8, 5], torch.tensor(0.5), last=False)
    [4, 2]
    >>> transfer_counts([8, 5], torch.tensor(0.5), last=False, rule="batch_mean")
    [3, 3]
    """
    n = torch.tensor(n_masked, dtype=torch.float32)  # (B,)
    if rule == "batch_mean":
        n = (torch.tensor(sum(n_masked), dtype=torch.float32) / len(n_masked)).expand(len(n_masked))
    k = n if last else n * fraction.float()
    return k.long().tolist()  # truncation toward zero, as int() on a float


def select_positions(
    confidence: Tensor, k: list[int], alg_temp: float | None, generator: torch.Generator | None
) -> Tensor:
    """(B, L) confidences (-inf where nothing may be committed), per-row counts -> bool (B, L) picks: Dream's
    torch.topk, or torch.multinomial over softmax(confidence / alg_temp) without replacement when alg_temp > 0.
    Rows sharing one count (always, without infill holes) are picked in one batched call, exactly as Dream does."""
    picks = torch.zeros_like(confidence, dtype=torch.bool)
    if len(set(k)) == 1:
        rows, counts = [slice(None)], [k[0]]
    else:  # rows with different counts: one call per row
        rows, counts = list(range(len(k))), k
    for row, count in zip(rows, counts, strict=True):
        if count == 0:
            continue
        conf = confidence[row]
        if alg_temp:
            index = torch.multinomial(torch.softmax(conf / alg_temp, dim=-1), count, generator=generator)
        else:
            index = torch.topk(conf, count).indices
        picks[row] = picks[row].scatter(-1, index, True)
    return picks


@dataclass(frozen=True)
class DreamOptions(SamplerOptions):
    """The settings of `DreamSampler` (Dream's `GenerationConfig` fields it uses); validated on construction."""

    gen_length: int = option(128, "answer length (Dream's max_new_tokens)")
    steps: int = option(128, "denoising steps (one forward pass each)")
    temperature: float = option(0.0, "0 = argmax tokens; > 0 samples them")
    top_p: float | None = option(None, "nucleus filter in (0, 1]; None or 1 = off")
    top_k: int | None = option(None, "keep the k most likely tokens; None = off")
    alg: str = option("entropy", f"one of {ALGORITHMS} (entropy: Dream's default for its instruct model)")
    alg_temp: float | None = option(0.0, "0 or None = commit the most confident positions; > 0 = sample positions "
                                         "from softmax(confidence / alg_temp) without replacement")
    eps: float = option(1e-3, "last timestep of linspace(1, eps, steps + 1)")
    infill: bool = option(False, "also fill mask ids found in the prompt (else they are an error)")
    count_rule: str = option("per_row", "'per_row' or 'batch_mean' (Dream's exact rule, wrong when rows hold "
                                        "different numbers of masks)")
    logits_mask_inf: bool = option(False, "never sample the mask id (its logit -inf before the softmax); Dream "
                                          "does not, so the default keeps it, as Dream")

    def _check(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.gen_length < 1:
            raise ValueError(f"gen_length must be >= 1, got {self.gen_length}")
        if self.alg not in ALGORITHMS:
            raise ValueError(f"unknown alg {self.alg!r}; choose one of {', '.join(ALGORITHMS)}")
        if self.count_rule not in COUNT_RULES:
            raise ValueError(f"unknown count_rule {self.count_rule!r}; choose one of {', '.join(COUNT_RULES)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (or None to switch it off), got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 (or None to switch it off), got {self.top_k}")
        if self.alg_temp is not None and self.alg_temp < 0:
            raise ValueError(f"alg_temp must be >= 0 (0 or None = plain top-k), got {self.alg_temp}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")


def _check_inputs(input_ids: Tensor, attention_mask: Tensor | None) -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, prompt_length), got shape {tuple(input_ids.shape)}")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}"
            )
        real = attention_mask.bool()
        if bool((real[:, :-1] & ~real[:, 1:]).any()):
            raise ValueError("attention_mask must be left padding (False before True in every row); pad prompts on "
                             "the left, e.g. tokenizer(..., padding_side='left')")


def _padding(attention_mask: Tensor | None, gen_length: int) -> tuple[Tensor | None, Tensor | None]:
    """(B, P) prompt mask -> (B, L) key mask and RoPE positions counted from each row's first real token (padding
    at position 1, as Dream puts it), or (None, None) when nothing is padded (Dream's "full" attention)."""
    if attention_mask is None or bool(attention_mask.bool().all()):
        return None, None
    real = F.pad(attention_mask.bool(), (0, gen_length), value=True)  # (B, L)
    position_ids = (real.long().cumsum(-1) - 1).masked_fill(~real, 1)  # (B, L)
    return real, position_ids


def _predict(
    logits: Tensor, alg: str, fraction: Tensor, last: bool, mask_id: int, temperature: float, top_p: float | None,
    top_k: int | None, generator: torch.Generator | None,
) -> tuple[Tensor, Tensor | None]:
    """(N, V) logits at the masked positions -> (tokens (N,), confidence (N,)). For `origin` each position is drawn
    with probability `fraction` (1 at the last step); the others keep the mask id, and confidence is None."""
    if alg == "origin":
        draw = torch.rand(logits.shape[0], generator=generator, device=logits.device)  # (N,)
        transfer = draw < (1 if last else fraction)
        tokens = torch.full_like(draw, mask_id, dtype=torch.long)  # (N,)
        if bool(transfer.any()):
            tokens[transfer] = sample_tokens(logits[transfer], temperature, top_p, top_k, generator=generator)[1]
        return tokens, None
    confidence, tokens = sample_tokens(
        logits, temperature, top_p, top_k, margin_confidence=alg == "topk_margin", neg_entropy=alg == "entropy",
        generator=generator,
    )
    return tokens, confidence


@SAMPLERS.register("dream")
class DreamSampler(Sampler):
    """Dream's `diffusion_generate` (see the module docstring); no per-call inputs.

    >>> from mmdiff import CoreConfig, MaskedDiffusionTransformer, VocabLayout
    >>> core = MaskedDiffusionTransformer(CoreConfig(VocabLayout.build(16), d_model=32, n_layers=1, n_heads=2))
    >>> DreamSampler(gen_length=4, steps=4, alg="maskgit_plus")(core, torch.tensor([[1, 2]]), mask_id=16).shape
    torch.Size([1, 6])
    """

    name = "dream"
    Options = DreamOptions
    options: DreamOptions

    def _sample(self, core: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, *, mask_id: int,
                eos_id: int | None, eot_id: int | None, generator: torch.Generator | None, return_history: bool,
                **inputs: Any) -> Tensor | SamplerOutput:
        o = self.options
        _check_inputs(input_ids, attention_mask)
        return _dream_loop(core, input_ids, attention_mask, mask_id=mask_id, gen_length=o.gen_length, steps=o.steps,
                           temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, alg=o.alg, alg_temp=o.alg_temp,
                           eps=o.eps, return_history=return_history, generator=generator, infill=o.infill,
                           count_rule=o.count_rule, logits_mask_inf=o.logits_mask_inf)


@torch.no_grad()
def dream_generate(
    core: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    mask_id: int,
    return_history: bool = False,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Tensor | SamplerOutput:
    """Generates `gen_length` tokens after each prompt row with Dream's `diffusion_generate` algorithms:
    `DreamSampler(**options)(core, input_ids, attention_mask, mask_id=...)` as one function.

    Args:
        core: a `MaskedDiffusionTransformer` (Dream checkpoints: `logits_shift="previous"`) or anything with its
            call signature and `check_ids`.
        input_ids: (B, P) prompts, left-padded when lengths differ.
        attention_mask: (B, P) True (or 1) at real prompt tokens.
        mask_id: the mask token id.
        return_history: return a `SamplerOutput` (sequences, commit step of every position, forward passes).
        generator: torch.Generator for every random draw (None = the global generator, as Dream).
        **options: `DreamOptions` fields (gen_length, steps, temperature, top_p, top_k, alg, alg_temp, eps, infill,
            count_rule, logits_mask_inf).

    Returns:
        (B, P + gen_length) prompt then answer, or a `SamplerOutput` with `return_history=True`.

    >>> # out = dream_generate(model.core, prompt, mask_id=model.vocab.mask_id, gen_length=64, steps=64)
    """
    return DreamSampler(**options)(core, input_ids, attention_mask, mask_id=mask_id, generator=generator,
                                   return_history=return_history)


def _dream_loop(core: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, *, mask_id: int, gen_length: int,
                steps: int, temperature: float, top_p: float | None, top_k: int | None, alg: str,
                alg_temp: float | None, eps: float, return_history: bool, generator: torch.Generator | None,
                infill: bool, count_rule: str, logits_mask_inf: bool) -> Tensor | SamplerOutput:
    """The sampling loop of `DreamSampler` (options checked)."""
    core.check_ids(input_ids)
    B, P = input_ids.shape
    device = input_ids.device
    real_prompt = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    holes = (input_ids == mask_id) & real_prompt  # (B, P)
    if not infill and bool(holes.any()):
        row, col = (int(i) for i in holes.nonzero()[0])
        raise ValueError(f"the prompt holds the mask id {mask_id} (row {row}, position {col}); pass infill=True to "
                         "fill masks in place, or remove them from the prompt")
    x = F.pad(input_ids, (0, gen_length), value=mask_id)  # (B, L)
    decodable = F.pad(real_prompt, (0, gen_length), value=True)  # (B, L) positions that may hold a mask to fill
    key_mask, position_ids = _padding(attention_mask, gen_length)
    # logits from the first column holding a hole to the end (the whole canvas for batch_mean, which can re-mask
    # any position)
    first_hole = holes.any(0).nonzero()
    lo = 0 if count_rule == "batch_mean" else (int(first_hole[0]) if len(first_hole) else P)
    region = torch.arange(lo, P + gen_length, device=device).expand(B, -1)  # (B, K)
    timesteps = torch.linspace(1, eps, steps + 1, device=device, dtype=torch.float32)
    fractions = 1 - timesteps[1:] / timesteps[:-1]  # (steps,) 1 - s/t, computed in float32 as Dream does
    fractions_host = fractions.cpu()
    commit_step = torch.full_like(x, GIVEN, dtype=torch.long)
    nfe = 0
    for i in range(steps):
        masked = (x == mask_id) & decodable  # (B, L)
        counts = masked.sum(1).tolist()
        if not any(counts):
            break
        logits = core(x, attention_mask=key_mask, position_ids=position_ids, logits_at=region,
                      check_inputs=False).logits  # (B, K, V)
        nfe += 1
        if logits_mask_inf:  # committing the mask id would leave the position masked (Dream keeps it)
            logits[..., mask_id] = -torch.inf
        last = i == steps - 1
        tokens, confidence = _predict(logits[masked[:, lo:]], alg, fractions[i], last, mask_id, temperature, top_p,
                                      top_k, generator)  # (N,) each, row-major over the masked positions
        candidate = torch.full_like(x, mask_id)  # (B, L) Dream's x_: the mask id except at masked positions
        candidate[masked] = tokens.to(x.dtype)
        if alg == "origin":
            picks = masked  # positions not drawn get their mask id back
        else:
            full_confidence = torch.full(x.shape, -torch.inf, dtype=logits.dtype, device=device)  # (B, L)
            full_confidence[masked] = confidence
            k = transfer_counts(counts, fractions_host[i], last, count_rule)
            picks = select_positions(full_confidence, k, alg_temp, generator)
            if count_rule == "per_row":
                picks = masked if last else picks & masked  # never re-mask (difference 6)
        new_x = torch.where(picks, candidate, x)
        commit_step.masked_fill_(masked & (new_x != mask_id), i)
        commit_step.masked_fill_(~masked & (new_x == mask_id), GIVEN)  # re-masked by batch_mean
        x = new_x
    if return_history:
        return SamplerOutput(sequences=x, commit_step=commit_step, nfe=nfe)
    return x
