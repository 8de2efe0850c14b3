"""An lm-evaluation-harness (EleutherAI lm-eval) model class for mmdiff: `MMDiffLM` scores and samples any
`DiffusionModel` (a zoo name, a checkpoint folder or a built model) on lm-eval tasks, e.g. custom tasks on local
jsonl files, fully offline.

The scores follow LLaDA's evaluation (Nie et al. 2025, "Large Language Diffusion Models", Appendix B.5, and its
`evaluation/eval_llada.py`):

- `loglikelihood`: the Monte-Carlo ELBO of the continuation given the context (`DiffusionModel.log_likelihood`:
  stratified mask counts; a lower bound on log p, exact for a one-token continuation). Context and continuation
  are tokenized as LLaDA's harness does: trailing whitespace of the context moves to the continuation, the two are
  encoded together and split after the context's tokens. `is_greedy` is LLaDA's `suffix_greedy_prediction`: with
  every continuation position masked, decode one token per forward pass (argmax everywhere, commit the most
  confident position) and report whether the result equals the continuation.
- `loglikelihood_rolling`: the ELBO of a whole text with an empty prompt, an ELBO bound, not an exact likelihood.
  Longer texts are cut into windows (see `rolling_windows`).
- `generate_until`: `DiffusionModel.generate` with the checkpoint's sampler, cut at EOS and at the `until` strings.

Each request's Monte-Carlo masks come from a fresh generator seeded with `seed`, so its score does not depend on
the other requests or on their order, and equals `model.log_likelihood(context_ids, continuation_ids,
mc_samples=..., batch_size=mc_batch_size, generator=torch.Generator().manual_seed(seed))`.

lm-eval does not import mmdiff by itself: import this module first (it registers the class as "mmdiff"), or run
lm-eval's command line through it:

    python -m mmdiff.harness --model_args model=running-sums-small,mc_samples=32 \
        --include_path my_tasks/ --tasks my_task

>>> # import lm_eval
>>> # from lm_eval.tasks import TaskManager
>>> # from mmdiff.harness import MMDiffLM
>>> # lm = MMDiffLM("running-sums-small", mc_samples=32)
>>> # lm_eval.simple_evaluate(model=lm, tasks=["my_task"], task_manager=TaskManager(include_path="my_tasks/"))
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

try:
    import lm_eval.models  # noqa: F401  (registers lm-eval's own models, which get_model skips once one is known)
    from lm_eval.api.instance import Instance
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as error:  # pragma: no cover - exercised only without lm-eval
    raise ImportError(
        "mmdiff.harness needs EleutherAI's lm-evaluation-harness: pip install 'mmdiff[eval]' (or pip install lm-eval)"
    ) from error

from mmdiff.diffusion.likelihood import stratified_masks
from mmdiff.modeling import DiffusionModel
from mmdiff.registry import SAMPLERS
from mmdiff.tasks.text import left_pad

__all__ = ["MMDiffLM", "rolling_windows", "main", "GREEDY_CHECKS", "DEFAULT_MAX_GEN_TOKS"]

GREEDY_CHECKS = ("sequential", "parallel", "off")
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when neither the task nor the model says
_SET_BY_GENERATE = ("core", "input_ids", "attention_mask", "mask_id", "eos_id", "eot_id")
_SUBCOMMANDS = ("run", "ls", "validate")
logger = logging.getLogger(__name__)


def rolling_windows(tokens: Sequence[int], max_len: int, prefix: Sequence[int] = ()) -> list[tuple[list, list]]:
    """(context, target) windows that score every token of `tokens` exactly once within `max_len` positions.

    The first window scores the first `max_len - len(prefix)` tokens given `prefix` (usually empty); each later
    window scores the next `max(1, max_len // 2)` tokens given the `max_len - len(target)` tokens before them.

    >>> rolling_windows(list(range(10)), 4)
    [([], [0, 1, 2, 3]), ([2, 3], [4, 5]), ([4, 5], [6, 7]), ([6, 7], [8, 9])]
    """
    if len(prefix) >= max_len:
        raise ValueError(f"the prefix ({len(prefix)} tokens) leaves no room in max_len={max_len}")
    seq, first = list(prefix) + list(tokens), max_len  # scored region: seq[len(prefix):]
    if len(seq) == len(prefix):
        return []
    windows = [(list(prefix), seq[len(prefix) : first])]
    stride = max(1, max_len // 2)
    for start in range(first, len(seq), stride):
        target = seq[start : start + stride]
        windows.append((seq[start - (max_len - len(target)) : start], target))
    return windows


@dataclass
class _Group:
    """One Monte-Carlo batch of one request: its sequence (L,), the masked positions (b, L), prompt length and the
    per-row ELBO weights (masked count / answer length) (b,)."""

    request: int
    seq: Tensor
    masked: Tensor
    prompt_len: int
    weight: Tensor


class MMDiffLM(LM):
    """lm-eval's `LM` interface over an mmdiff `DiffusionModel` (registered in lm-eval as "mmdiff").

    Args:
        model: zoo name, checkpoint folder or hub id (for `mmdiff.create_model`), or a built `DiffusionModel`.
        pretrained: alias of `model` (lm-eval's usual key in `--model_args`).
        batch_size: Monte-Carlo batches (of `mc_batch_size` rows) per forward pass when scoring, rows of the greedy
            check times `mc_batch_size`, and prompts per `generate` call. An integer ("auto" is not supported).
        max_batch_size: accepted for lm-eval's command line and ignored.
        mc_samples: Monte-Carlo samples of the ELBO per request (LLaDA's evaluation uses 128).
        mc_batch_size: samples per stratified batch (LLaDA's `batch_size`); must divide `mc_samples`; default the
            largest divisor of `mc_samples` up to 32.
        cfg_scale: classifier-free guidance in scoring and in the greedy check (0 = off).
        greedy_check: how `is_greedy` is decided: "sequential" (LLaDA: one committed token per forward pass, most
            confident first), "parallel" (one forward pass, argmax at every continuation position) or "off"
            (always False; saves the forward passes when no metric needs it).
        add_special_tokens: tokenize with the tokenizer's special tokens (e.g. a BOS, as LLaDA's harness does);
            never added to a text that already starts with the BOS string (a rendered chat template).
        device: where to run ("cuda" when available, else "cpu"; a built model stays where it is unless given; a
            CUDA device without CUDA falls back to the CPU with a warning, as lm-eval's "hf" model does).
        dtype: parameter dtype (torch.dtype or its name, e.g. "bfloat16"); None keeps the model's.
        seed: seed of the Monte-Carlo masks (fresh per request) and of sampling (fresh per `generate` call).
        gen_length: generated tokens per prompt; default: the request's `max_gen_toks` rounded up to a multiple of
            `block_length` (the answer is then cut to `max_gen_toks` tokens).
        steps: denoising steps; default `gen_length` (one token per step).
        block_length: semi-autoregressive block size (samplers that take one); default the checkpoint's.
        temperature: sampling temperature (0 = greedy); default the checkpoint's. A task's `do_sample: false`
            forces 0.
        remasking: commit order of the llada sampler; default the checkpoint's.
        sampler: sampler name in `mmdiff.registry.SAMPLERS`; default the checkpoint's.
        **sampler_options: further `generate` keywords (e.g. threshold=0.9, cache="dual").

    Generation options resolve as: a task's `generation_kwargs` over these arguments over the checkpoint's
    `sampler_config.json`.

    >>> # lm = MMDiffLM("running-sums-small", mc_samples=32, greedy_check="off")
    >>> # lm.loglikelihood([Instance("loglikelihood", {}, ("3 3 9 2 4", " 6"), 0)])
    """

    def __init__(
        self,
        model: str | os.PathLike | DiffusionModel | None = None,
        *,
        pretrained: str | os.PathLike | DiffusionModel | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        mc_samples: int = 128,
        mc_batch_size: int | None = None,
        cfg_scale: float = 0.0,
        greedy_check: str = "sequential",
        add_special_tokens: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        seed: int = 1234,
        gen_length: int | None = None,
        steps: int | None = None,
        block_length: int | None = None,
        temperature: float | None = None,
        remasking: str | None = None,
        sampler: str | None = None,
        **sampler_options: Any,
    ) -> None:
        super().__init__()
        self.model = _load_model(model, pretrained, device, dtype)
        if self.model.tokenizer is None:
            raise ValueError("this model has no tokenizer; lm-eval passes text, so load a checkpoint that ships one")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.mc_samples = _positive_int(mc_samples, "mc_samples")
        self.mc_batch_size = _positive_int(mc_batch_size or math.gcd(self.mc_samples, 32), "mc_batch_size")
        if self.mc_samples % self.mc_batch_size:
            raise ValueError(f"mc_samples ({mc_samples}) must be a multiple of mc_batch_size ({mc_batch_size})")
        if cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
        if greedy_check not in GREEDY_CHECKS:
            raise ValueError(f"greedy_check must be one of {GREEDY_CHECKS}, got {greedy_check!r}")
        self.cfg_scale, self.greedy_check = float(cfg_scale), greedy_check
        self.add_special_tokens, self.seed = bool(add_special_tokens), int(seed)
        named = {"gen_length": gen_length, "steps": steps, "block_length": block_length,
                 "temperature": temperature, "remasking": remasking, "sampler": sampler}
        self.generation = {**{k: v for k, v in named.items() if v is not None}, **sampler_options}
        self._plan({})  # checks the options against the sampler now rather than at the first generate request
        self._device = self.model.device

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def max_length(self) -> int:
        """The longest canvas (prompt + answer) the core accepts."""
        return self.model.core.config.max_seq_len

    @property
    def tokenizer_name(self) -> str:
        """Names the tokenizer in lm-eval's request caches."""
        name = getattr(self.model.tokenizer, "name_or_path", "") or self.model.config.name or "mmdiff"
        return str(name).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The model's chat template (its tokenizer's, else its zoo card's), or None."""
        card = self.model.card
        return getattr(self.model.tokenizer, "chat_template", None) or (card.chat_template if card else None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Renders lm-eval's chat history with the model's chat template (`DiffusionModel.chat_prompt`)."""
        if add_generation_prompt:
            return self.model.chat_prompt(chat_history)
        template = self.chat_template()
        if not template:
            raise ValueError("this model has no chat template; run lm-eval without --apply_chat_template")
        return self.model.tokenizer.apply_chat_template(chat_history, chat_template=template, tokenize=False,
                                                        add_generation_prompt=False)

    # ------------------------------------------------------------------------------------------------ requests
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(ELBO of the continuation given the context in nats, is_greedy) per (context, continuation) request."""
        pairs = [self._encode_pair(*req.args) for req in requests]
        scores = self._elbo(pairs, desc="mmdiff loglikelihood")
        greedy = self._greedy(pairs)
        out = [(score, bool(g)) for score, g in zip(scores, greedy, strict=True)]
        for req, result in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return out

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        """ELBO (in nats) of each whole text: the sum over `rolling_windows(tokens, max_length)` of the ELBO of
        each window's target given its context; a text within `max_length` is one ELBO with an empty prompt."""
        prefix = self._encode("")  # the tokenizer's own specials (e.g. a BOS) are conditioned on, never scored
        spans, windows = [], []
        for req in requests:
            ids = self._encode(req.args[0])
            ids = ids[len(prefix) :] if prefix and ids[: len(prefix)] == prefix else ids
            new = rolling_windows(ids, self.max_length, prefix)
            spans.append((len(windows), len(windows) + len(new)))
            windows += new
        scores = self._elbo(windows, desc="mmdiff loglikelihood_rolling")
        out = [float(sum(scores[lo:hi])) for lo, hi in spans]
        for req, result in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, result)
        return out

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Samples an answer per (context, gen_kwargs) request, cut at EOS and at the first `until` string.

        Requests with the same resolved options are batched (`batch_size` prompts, longest first, left-padded).
        """
        plans = [self._plan(req.args[1]) for req in requests]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, (options, _, _) in enumerate(plans):
            groups[json.dumps(options, sort_keys=True, default=str)].append(i)
        prompts = [self._encode(req.args[0]) for req in requests]
        out: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="mmdiff generate_until", disable=self.rank != 0)
        for index in groups.values():
            index = sorted(index, key=lambda i: -len(prompts[i]))
            for start in range(0, len(index), self.batch_size):
                batch = index[start : start + self.batch_size]
                options = plans[batch[0]][0]
                answers = self._generate([prompts[i] for i in batch], options)
                for i, ids in zip(batch, answers, strict=True):
                    _, until, max_gen_toks = plans[i]
                    out[i] = _cut(self.model.decode(ids[:max_gen_toks], stop_at_eos=True), until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                bar.update(len(batch))
        bar.close()
        return out

    # ------------------------------------------------------------------------------------------------ tokenization
    def _encode(self, text: str) -> list[int]:
        tok = self.model.tokenizer
        bos = getattr(tok, "bos_token", None)
        add = self.add_special_tokens and not (bos and text.startswith(bos))
        return list(tok.encode(text, add_special_tokens=add))

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """LLaDA's (and lm-eval's) split: trailing spaces go to the continuation; encode the whole and cut it after
        the context's tokens. The context is cut on the left to fit `max_length`."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, ctx = self._encode(context + continuation), self._encode(context)
        cont = whole[len(ctx) :]
        if not cont:
            raise ValueError(f"the continuation {continuation!r} (after {context[-40:]!r}) encodes to no tokens; "
                             "every scored continuation needs at least one")
        if len(cont) > self.max_length:
            raise ValueError(f"the continuation has {len(cont)} tokens, more than max_seq_len={self.max_length}")
        if len(ctx) + len(cont) > self.max_length:
            logger.warning("context of %d tokens cut on the left to fit max_seq_len=%d", len(ctx), self.max_length)
            ctx = ctx[len(ctx) + len(cont) - self.max_length :]  # keep the last tokens of the context
        self.model.core.check_ids(torch.tensor(ctx + cont))
        return ctx, cont

    # ------------------------------------------------------------------------------------------------ scoring
    def _forward(self, ids: Tensor, attention: Tensor | None, at: Tensor, prompt: Tensor) -> Tensor:
        """Float logits (N, V) at the True positions of `at`, guided as in LLaDA when cfg_scale > 0 (the
        unconditional pass masks the prompt positions `prompt`)."""
        core, mask_id = self.model.core, self.model.vocab.mask_id
        logits = core(ids, attention_mask=attention, logits_at=at, check_inputs=False).logits.float()
        if self.cfg_scale > 0:
            uncond = core(ids.masked_fill(prompt, mask_id), attention_mask=attention, logits_at=at,
                          check_inputs=False).logits.float()
            logits = uncond + (self.cfg_scale + 1) * (logits - uncond)
        return logits

    @torch.no_grad()
    def _elbo(self, pairs: list[tuple[list[int], list[int]]], desc: str) -> list[float]:
        """Monte-Carlo ELBO per (prompt ids, answer ids): `batch_size` stratified batches per forward pass, packed
        across requests (right-padded with a key mask when their lengths differ)."""
        groups: list[_Group] = []
        for i, (ctx, cont) in enumerate(pairs):
            generator = torch.Generator().manual_seed(self.seed)  # fresh per request: order-independent scores
            seq = torch.tensor(ctx + cont, dtype=torch.long)
            for _ in range(self.mc_samples // self.mc_batch_size):
                masks, counts = stratified_masks(self.mc_batch_size, len(cont), generator)
                prompt = torch.zeros(self.mc_batch_size, len(ctx), dtype=torch.bool)
                groups.append(_Group(i, seq, torch.cat([prompt, masks], 1), len(ctx), counts.float() / len(cont)))
        totals = [0.0] * len(pairs)
        order = sorted(range(len(groups)), key=lambda g: -groups[g].seq.numel())  # stable: a request's batches
        was_training = self.model.training
        self.model.eval()
        try:
            for start in tqdm(range(0, len(order), self.batch_size), desc=desc, disable=self.rank != 0):
                batch = [groups[g] for g in order[start : start + self.batch_size]]
                for group, loss in zip(batch, self._group_losses(batch), strict=True):
                    totals[group.request] += loss
        finally:
            self.model.train(was_training)
        return [-t / (self.mc_samples // self.mc_batch_size) for t in totals]

    def _group_losses(self, batch: list[_Group]) -> list[float]:
        """Sum over rows of the weighted cross-entropy at the masked positions, / rows, for each group."""
        device, b = self.model.device, self.mc_batch_size
        L = max(g.seq.numel() for g in batch)
        ids = torch.full((len(batch) * b, L), self._pad_id, dtype=torch.long)  # (R, L), R = groups x b
        masked = torch.zeros(len(batch) * b, L, dtype=torch.bool)
        prompt = torch.zeros_like(masked)
        attention = torch.zeros_like(masked)
        for k, g in enumerate(batch):
            n, rows = g.seq.numel(), slice(k * b, (k + 1) * b)
            ids[rows, :n], masked[rows, :n], attention[rows, :n] = g.seq, g.masked, True
            prompt[rows, : g.prompt_len] = True
        ids, masked, prompt = ids.to(device), masked.to(device), prompt.to(device)
        weight = torch.cat([g.weight for g in batch]).to(device)  # (R,)
        padded = not bool(attention.all())
        logits = self._forward(ids.masked_fill(masked, self.model.vocab.mask_id),
                               attention.to(device) if padded else None, masked, prompt)  # (N, V)
        row = masked.nonzero()[:, 0]
        ce = F.cross_entropy(logits, ids[masked], reduction="none") / weight[row]  # (N,) row-major
        bounds = masked.view(len(batch), -1).sum(1).cumsum(0).tolist()  # end of each group's entries in ce
        return [float(ce[lo:hi].sum()) / b for lo, hi in zip([0, *bounds[:-1]], bounds, strict=True)]

    @torch.no_grad()
    def _greedy(self, pairs: list[tuple[list[int], list[int]]]) -> list[bool]:
        """Whether greedy decoding of the (all masked) continuation reproduces it; see `greedy_check`."""
        if self.greedy_check == "off":
            return [False] * len(pairs)
        out = [False] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -sum(map(len, pairs[i])))
        rows = self.batch_size * self.mc_batch_size
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), rows):
                batch = order[start : start + rows]
                for i, ok in zip(batch, self._greedy_batch([pairs[i] for i in batch]), strict=True):
                    out[i] = ok
        finally:
            self.model.train(was_training)
        return out

    def _greedy_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[bool]:
        device, mask_id = self.model.device, self.model.vocab.mask_id
        L = max(len(c) + len(a) for c, a in pairs)
        ids = torch.full((len(pairs), L), self._pad_id, dtype=torch.long)  # (B, L) right-padded
        target, prompt, attention = (torch.zeros(len(pairs), L, dtype=torch.bool) for _ in range(3))
        for r, (ctx, cont) in enumerate(pairs):
            ids[r, : len(ctx) + len(cont)] = torch.tensor(ctx + cont)
            prompt[r, : len(ctx)], target[r, len(ctx) : len(ctx) + len(cont)] = True, True
            attention[r, : len(ctx) + len(cont)] = True
        ids, target, prompt = ids.to(device), target.to(device), prompt.to(device)
        key_mask = attention.to(device) if not bool(attention.all()) else None
        x, open_ = ids.masked_fill(target, mask_id), target.clone()
        while bool(open_.any()):
            logits = self._forward(x, key_mask, open_, prompt)  # (N, V) at the still-masked positions
            pred = logits.argmax(-1)  # (N,)
            if self.greedy_check == "parallel":
                x[open_] = pred
                break
            conf = torch.full(x.shape, -math.inf, device=device)  # (B, L)
            conf[open_] = torch.softmax(logits, -1).gather(-1, pred[:, None])[:, 0]
            proposal = torch.zeros_like(x)
            proposal[open_] = pred
            live = open_.any(1).nonzero()[:, 0]  # rows with masks left
            pick = conf[live].argmax(1)  # the most confident position of each such row
            x[live, pick] = proposal[live, pick]
            open_[live, pick] = False
        return [bool(((x[r] == ids[r]) | ~target[r]).all()) for r in range(len(pairs))]

    @property
    def _pad_id(self) -> int:
        vocab = self.model.vocab
        return next((i for i in (vocab.pad_id, vocab.eos_id) if i is not None), 0)  # hidden by the key mask

    # ------------------------------------------------------------------------------------------------ generation
    def _plan(self, gen_kwargs: dict[str, Any] | None) -> tuple[dict[str, Any], list[str], int]:
        """(generate options, until strings, max_gen_toks) of one request.

        max_gen_toks: the task's, else an explicit gen_length, else the checkpoint's gen_length (when > 0), else
        256. gen_length: explicit, else max_gen_toks rounded up to a multiple of block_length. steps: explicit,
        else gen_length.
        """
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        max_gen_toks, do_sample = kwargs.pop("max_gen_toks", None), kwargs.pop("do_sample", None)
        options = {**self.generation, **kwargs}
        if do_sample is False:
            options["temperature"] = 0.0
        defaults = self.model.sampler_config
        name = options.pop("sampler", defaults.sampler)
        sampler_cls = SAMPLERS.get(name)
        params = (*sampler_cls.option_names(), *sampler_cls.inputs, "generator", "return_history")
        accepted = [k for k in params if k not in _SET_BY_GENERATE]
        unknown = [k for k in options if k not in accepted]
        if unknown:
            raise ValueError(f"sampler {name!r} does not take {unknown} (from the model arguments or the task's "
                             f"generation_kwargs); it accepts: {', '.join(accepted)}")
        block = int(options.get("block_length", defaults.block_length)) if "block_length" in params else 1
        if max_gen_toks is None:
            explicit = options.get("gen_length", defaults.gen_length)
            max_gen_toks = explicit if explicit and explicit > 0 else DEFAULT_MAX_GEN_TOKS
        max_gen_toks = _positive_int(max_gen_toks, "max_gen_toks")
        options.setdefault("gen_length", -(-max_gen_toks // block) * block)
        options.setdefault("steps", options["gen_length"])
        if "block_length" in params:
            options["block_length"] = block
        return {"sampler": name, **options}, until, max_gen_toks

    def _generate(self, prompts: list[list[int]], options: dict[str, Any]) -> list[list[int]]:
        """Generated ids (after the prompt) of each prompt; prompts are cut on the left to fit max_length."""
        keep = self.max_length - int(options["gen_length"])
        if keep < 0:
            raise ValueError(f"gen_length={options['gen_length']} exceeds max_seq_len={self.max_length}")
        if any(len(p) > keep for p in prompts):
            logger.warning("prompts longer than max_seq_len - gen_length = %d tokens are cut on the left", keep)
        rows = [torch.tensor(p[len(p) - min(len(p), keep) :], dtype=torch.long) for p in prompts]
        ids, attention = left_pad(rows, self._pad_id)  # (B, P), (B, P)
        device = self.model.device
        extra = {}
        if SAMPLERS.get(options["sampler"]).accepts("generator"):
            extra["generator"] = torch.Generator(device=device).manual_seed(self.seed)
        mask = attention.to(device) if not bool(attention.all()) else None
        out = self.model.generate(ids.to(device), mask, **options, **extra)  # (B, P + gen_length)
        return out[:, ids.shape[1] :].cpu().tolist()


def _cut(text: str, until: Sequence[str]) -> str:
    """`text` up to the first occurrence of any of the `until` strings."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, str) and not value.strip().isdigit():
        raise ValueError(f"{name} must be a positive integer, got {value!r} ('auto' batch sizes are not supported)")
    if int(value) < 1 or int(value) != float(value):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _load_model(model: Any, pretrained: Any, device: Any, dtype: Any) -> DiffusionModel:
    if (model is None) == (pretrained is None):
        raise ValueError("give the model once: model=NAME_OR_FOLDER (or pretrained=...), or a built DiffusionModel")
    model = model if model is not None else pretrained
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use a torch dtype name such as 'float32' or 'bfloat16'")
        dtype = getattr(torch, dtype)
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        logger.warning("device %s requested but CUDA is not available (lm-eval's command line asks for cuda:0 "
                       "by default); running on the CPU", device)
        device = "cpu"
    if isinstance(model, DiffusionModel):
        return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a zoo name, a folder, a hub id or a DiffusionModel, got {type(model)}")
    from mmdiff.zoo import create_model

    device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    return create_model(model, device=device, dtype=dtype)


USAGE = """usage: {prog} [run] [lm-eval options] --model_args model=NAME[,key=value...] --tasks TASK [TASK ...]

Scores and samples an mmdiff model (a zoo name or a checkpoint folder) on lm-evaluation-harness tasks, e.g. custom
tasks on local jsonl files, fully offline. Every argument is passed to lm-eval's `run` command, with
`--model mmdiff` added when no --model is given.

model_args (comma-separated key=value, the keywords of mmdiff.harness.MMDiffLM):
  model=NAME            zoo name or checkpoint folder (required)
  mc_samples=N          Monte-Carlo samples of each loglikelihood ELBO
  greedy_check=MODE     is_greedy by {greedy} decoding
  device=, dtype=, seed=, batch_size=, and sampler options (steps=, block_length=, ...) for generate_until

examples:
  {prog} --model_args model=running-sums-small,mc_samples=32 --include_path my_tasks/ --tasks my_task
  {prog} ls tasks --include_path my_tasks/      list tasks (lm-eval's `ls`)
  {prog} run --help                             every lm-eval option (lm-eval's own usage)

Needs EleutherAI's lm-evaluation-harness: pip install 'mmdiff[eval]'.
"""


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m mmdiff.harness") -> None:
    """lm-eval's command line with the "mmdiff" model registered: arguments as for `lm-eval run`, and
    `--model mmdiff` when no --model is given. No arguments, `-h` or `--help` print mmdiff's usage (`USAGE`);
    `run --help` prints lm-eval's.

    >>> # main(["--model_args", "model=running-sums-small,mc_samples=32", "--include_path", "my_tasks/",
    >>> #       "--tasks", "my_task"])
    """
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE.format(prog=prog, greedy="/".join(GREEDY_CHECKS)), end="")
        return
    if args[0] not in _SUBCOMMANDS:
        args.insert(0, "run")
    if args[0] == "run" and not any(a in ("--model", "-M") or a.startswith("--model=") for a in args):
        args[1:1] = ["--model", "mmdiff"]
    saved = sys.argv
    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    # run through the importable module, so "mmdiff" is registered once (by mmdiff.harness, not by __main__)
    from mmdiff.harness import main as _main

    _main()
else:
    register_model("mmdiff")(MMDiffLM)
