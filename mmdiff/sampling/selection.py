"""Selection, shared by the samplers: logit filters, token choice and confidences, and the commit rules.

- LLaDA (Nie et al. 2025, reference `generate.py`): float64 Gumbel-max sampling, low-confidence / margin / entropy /
  random confidences, the top-k commit per row; Fast-dLLM (Wu et al. 2025): the threshold and factor rules.
- Dream (Ye et al. 2025, `generation_utils.py`): its nucleus / top-k filters (the dtype's lowest value, not -inf)
  and `sample_tokens` (confidence = probability, margin or negative entropy).
- Discrete Diffusion VLA (Liang et al. 2025): `token_scores` (the confidence, or confidence gap, of given tokens, for
  committed tokens too) and `secondary_remask` (its threshold and residual-drop checks of committed tokens).
- `LogitFilters`: the constraints applied to a step's logits before sampling (banned ids, allowed ids, a hook,
  top-k / top-p).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "REMASKING",
    "uniform64",
    "gumbel_argmax",
    "filter_logits",
    "confidence_scores",
    "token_scores",
    "secondary_remask",
    "commit_mask",
    "threshold_commits",
    "factor_commits",
    "top_p_logits",
    "top_k_logits",
    "sample_tokens",
    "LogitFilters",
]

REMASKING = ("low_confidence", "margin", "entropy", "random")


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


def token_scores(logits: Tensor, tokens: Tensor, score: str) -> Tensor:
    """(..., V) logits and (...) tokens -> (...) float64 score of each given token under the logits: "low_confidence"
    its probability p(token) (the softmax in the logits' dtype, as `confidence_scores`); "margin" the confidence gap
    p(token) - max over the other ids of p, in [-1, 1]: negative when the model now prefers another id, by that
    margin. For the argmax token these are `confidence_scores`' "low_confidence" and "margin".

    >>> logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    >>> [round(float(token_scores(logits, torch.tensor([t]), "margin")), 4) for t in (0, 1)]
    [0.5, -0.5]
    """
    if score == "low_confidence":
        return F.softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1).double()
    if score == "margin":
        p = F.softmax(logits.double(), dim=-1)
        own = p.gather(-1, tokens[..., None])  # (..., 1)
        best_other = p.scatter(-1, tokens[..., None], -math.inf).max(-1).values
        return own.squeeze(-1) - best_other
    raise ValueError(f"score must be 'low_confidence' or 'margin', got {score!r}")


def secondary_remask(committed: Tensor, score_now: Tensor, score_kept: Tensor, *, threshold: float | None = None,
                     drop: float | None = None) -> Tensor:
    """Discrete Diffusion VLA's secondary re-masking checks of committed tokens (bool (B, K): which to mask again).

    A committed position fails the threshold check when its score now is below `threshold`, and the residual-drop
    check when its score fell by more than `drop` since the step that committed it (`score_kept`); either check
    (None = off) re-masks it. Positions not `committed` never are.

    >>> secondary_remask(torch.tensor([[True, True, True, False]]), torch.tensor([[0.05, 0.5, 0.65, 0.0]]),
    ...                  torch.tensor([[0.9, 0.8, 0.7, 0.9]]), threshold=0.1, drop=0.25).tolist()
    [[True, True, False, False]]
    """
    again = torch.zeros_like(committed)
    if threshold is not None:
        again |= score_now < threshold
    if drop is not None:
        again |= score_kept - score_now > drop
    return again & committed


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

    >>> factor_commits(torch.tensor([[0.9, 0.7, 0.5]]), torch.ones(1, 3, dtype=torch.bool), 1.0).tolist()
    [[True, True, False]]
    >>> factor_commits(torch.tensor([[0.9, 0.6, 0.5]]), torch.ones(1, 3, dtype=torch.bool), 1.0).tolist()  # < 2/3
    [[True, False, False]]
    """
    conf = confidence.masked_fill(~still_masked, -math.inf)
    ordered = conf.sort(dim=1, descending=True).values  # (B, N)
    i = torch.arange(1, conf.shape[1] + 1, device=conf.device, dtype=ordered.dtype)
    passes = ordered >= 1 - factor / (i + 1)
    passes[:, 0] = True
    n = passes.long().cumprod(1).sum(1)  # length of the passing prefix
    return commit_mask(conf, torch.minimum(n, still_masked.sum(1))) & still_masked


def top_p_logits(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filter: keeps the most probable tokens until their cumulative probability exceeds `top_p` (the token
    crossing it included); the others get the dtype's lowest finite value, as Dream does.

    >>> top_p_logits(torch.tensor([[2.0, 1.0, 0.0]]), 0.5).tolist()[0][:2]
    [2.0, -3.4028234663852886e+38]
    """
    sorted_logits, order = torch.sort(logits, descending=True)  # (..., V)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative > top_p
    drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()  # shift right: keep the token that crosses top_p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, torch.finfo(logits.dtype).min)


def top_k_logits(logits: Tensor, top_k: int) -> Tensor:
    """Keeps the `top_k` largest logits (and ties with the k-th); the others get the dtype's lowest finite value.

    >>> top_k_logits(torch.tensor([[2.0, 1.0, 0.0]]), 2)[0, 2].item() < -1e38
    True
    """
    top_k = min(top_k, logits.shape[-1])
    kth = torch.topk(logits, top_k)[0][..., -1, None]  # (..., 1)
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def sample_tokens(
    logits: Tensor,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    margin_confidence: bool = False,
    neg_entropy: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(N, V) logits -> (confidence (N,), tokens (N,)) as Dream's `sample_tokens`.

    Logits are divided by the temperature (when > 0), then nucleus- and top-k-filtered (also at temperature 0, where
    the filters change the probabilities and so the confidences, not the argmax). Tokens are the argmax at
    temperature 0, else sampled. Confidence is the probability of the chosen token, or top-1 minus top-2
    probability (`margin_confidence`), or the negative entropy sum(p log(p + 1e-10)) (`neg_entropy`).

    >>> conf, tok = sample_tokens(torch.tensor([[0.0, 2.0, 1.0]]), margin_confidence=True)
    >>> tok.tolist(), round(conf.item(), 4)
    ([1], 0.4205)
    """
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_logits(logits, top_p)
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    probs = torch.softmax(logits, dim=-1)  # (N, V)
    if temperature > 0:
        normalised = probs / probs.sum(-1, keepdim=True)  # what torch.distributions.Categorical samples from
        tokens = torch.multinomial(normalised, 1, replacement=True, generator=generator).squeeze(-1)  # (N,)
        confidence = probs.gather(-1, tokens[:, None]).squeeze(-1)
    else:
        confidence, tokens = probs.max(dim=-1)
    if margin_confidence:
        top2 = torch.topk(probs, 2, dim=-1).values  # (N, 2)
        confidence = top2[:, 0] - top2[:, 1]
    if neg_entropy:
        confidence = (probs * torch.log(probs + 1e-10)).sum(dim=-1)
    return confidence, tokens


class LogitFilters:
    """What a LLaDA step does to its logits before choosing tokens: banned ids (-inf), an allowed set (the rest
    -inf), a `logits_processor(logits, canvas, lo, hi)` hook, then top-k / top-p. Built once per call; the tensors
    it needs live on the run's device.

    >>> f = LogitFilters(banned=[0], device=torch.device("cpu"))
    >>> f(torch.zeros(1, 1, 3), None, 0, 1).tolist()
    [[[-inf, 0.0, 0.0]]]
    """

    def __init__(self, *, banned: Sequence[int] = (), allowed: Sequence[int] | None = None,
                 processor: Callable[[Tensor, Tensor, int, int], Tensor] | None = None, top_k: int | None = None,
                 top_p: float | None = None, device: torch.device) -> None:
        self.banned, self.processor, self.top_k, self.top_p = list(banned), processor, top_k, top_p
        self.allowed = None if allowed is None else torch.as_tensor(list(allowed), device=device)

    def __call__(self, logits: Tensor, x: Tensor, lo: int, hi: int) -> Tensor:
        """(B, K, V) logits (modified in place where it can) -> filtered logits."""
        if self.banned:
            logits[..., self.banned] = -math.inf
        if self.allowed is not None:
            keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            logits = logits.masked_fill(~keep.index_fill_(0, self.allowed, True), -math.inf)
        if self.processor is not None:
            logits = self.processor(logits, x, lo, hi)
        if self.top_k is not None or self.top_p is not None:
            logits = filter_logits(logits, self.top_k, self.top_p)
        return logits
