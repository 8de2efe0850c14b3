"""Task metrics: exact match and token accuracy of generated answers, and bits per byte from the masked-diffusion
ELBO.

Bits per byte of a masked-diffusion model are an upper bound computed from its negative ELBO (MDLM, Sahoo et al.
2024; LLaDA, Nie et al. 2025, eq. 3-4): for a sequence x of L target tokens,

    -log p(x) <= E_{t ~ U[eps, 1]} E_{x_t ~ q(.|x, t)} [ w(t) * sum_{i masked in x_t} -log p(x_i | x_t) ]

with w(t) = 1 / m(t) for the linear schedule. We estimate the expectation by Monte Carlo with antithetic times per
sequence, sum the nats over a set of sequences, and divide by ln 2 and by the UTF-8 byte count of their text.

>>> bits_per_byte(total_nats=math.log(2) * 10, total_bytes=5)
2.0
>>> exact_match([[1, 2], [3]], [[1, 2], [4]]), token_accuracy([[1, 2], [3]], [[1, 2], [4]])
(0.5, 0.6666666666666666)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mmdiff.canvas import Canvas
from mmdiff.diffusion.schedules import Schedule, get_schedule

__all__ = [
    "exact_match",
    "token_accuracy",
    "token_matches",
    "bits_per_byte",
    "elbo_nats",
    "elbo_bits_per_byte",
]


def token_matches(prediction: Sequence[Any], reference: Sequence[Any]) -> int:
    """Number of reference positions the prediction reproduces at the same index (missing positions are wrong).

    >>> token_matches([1, 2, 9], [1, 2, 3, 4])
    2
    """
    return sum(int(p == r) for p, r in zip(prediction, reference, strict=False))  # lengths may differ


def exact_match(predictions: Sequence[Sequence[Any]], references: Sequence[Sequence[Any]]) -> float:
    """Fraction of predictions equal to their reference (same length, same tokens).

    >>> exact_match(["12", "34"], ["12", "35"])
    0.5
    """
    _check_pairs(predictions, references)
    return sum(int(list(p) == list(r)) for p, r in zip(predictions, references, strict=True)) / len(references)


def token_accuracy(predictions: Sequence[Sequence[Any]], references: Sequence[Sequence[Any]]) -> float:
    """Fraction of all reference tokens reproduced at their position (pooled over the examples).

    >>> token_accuracy(["12", "3"], ["12", "45"])
    0.5
    """
    _check_pairs(predictions, references)
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("token_accuracy needs at least one reference token")
    return sum(token_matches(p, r) for p, r in zip(predictions, references, strict=True)) / total


def _check_pairs(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; pass one per example")
    if not references:
        raise ValueError("no examples to score")


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Converts a summed negative log-likelihood (or its ELBO bound) in nats to bits per byte of text.

    >>> round(bits_per_byte(total_nats=100 * math.log(256), total_bytes=100), 6)
    8.0
    """
    if total_bytes <= 0:
        raise ValueError(f"total_bytes must be positive, got {total_bytes}")
    return total_nats / math.log(2) / total_bytes


@torch.no_grad()
def elbo_nats(
    model: Any,
    examples: Sequence[dict[str, Tensor]],
    *,
    collate: Callable[[Sequence[dict[str, Tensor]]], Canvas] | None = None,
    schedule: str | Schedule = "linear",
    samples: int = 4,
    times: Sequence[float] | Tensor | None = None,
    batch_size: int = 16,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Monte-Carlo negative ELBO in nats of each example (summed over its target positions).

    Every example is evaluated at `samples` mask times t spread antithetically over [eps, 1] (one uniform offset
    per example, then equally spaced), or at the fixed `times` given; the estimate is the mean over those times of
    `diffusion_loss(...).elbo_per_row`.

    Args:
        model: a `DiffusionModel` (anything with `.loss(canvas, schedule, normalize=, t=, generator=)` and
            `.vocab`).
        examples: dicts {"ids", "maskable"}; the maskable positions are the ones scored.
        collate: list of examples -> Canvas; default `TextTask.collate` with the model's vocabulary.
        schedule: masking schedule (name or object); the linear schedule gives the usual 1/t-weighted bound.
        samples: Monte-Carlo times per example (ignored when `times` is given).
        times: fixed times in [0, 1] used for every example instead of random ones (t = 1 masks everything).
        batch_size: examples per forward pass (each is repeated once per time).
        generator: torch.Generator making the estimate reproducible; default a fresh one seeded with 0.

    Returns:
        (N,) float64 tensor of nats per example.

    >>> # nats = elbo_nats(model, source.dataset("val", model.vocab)[:8], samples=4)
    """
    from mmdiff.tasks.text import TextTask

    if collate is None:
        def collate(batch):
            return TextTask.collate(batch, model.vocab)
    schedule = get_schedule(schedule)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    fixed = None if times is None else torch.as_tensor(times, dtype=torch.float32).flatten()
    if fixed is not None and (fixed.numel() == 0 or bool(((fixed < 0) | (fixed > 1)).any())):
        raise ValueError(f"times must be a non-empty list of values in [0, 1], got {fixed.tolist()}")
    k = samples if fixed is None else fixed.numel()
    if k < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    device = model.device if hasattr(model, "device") else torch.device("cpu")
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(examples), batch_size):
            batch = list(examples[start : start + batch_size])
            canvas = collate([e for e in batch for _ in range(k)]).to(device)  # each example k times in a row
            if fixed is None:
                t = torch.cat([schedule.sample_t(k, generator=generator, antithetic=True) for _ in batch])
            else:
                t = fixed.repeat(len(batch))  # (len(batch) * k,)
            nats = model.loss(canvas, schedule, normalize="elbo", t=t.to(device), generator=_on(generator, device))
            out.append(nats.elbo_per_row.double().cpu().view(len(batch), k).mean(1))  # (B*k,) -> (B,)
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _on(generator: torch.Generator, device: torch.device) -> torch.Generator | None:
    """The generator where the masks are drawn (a CPU generator cannot drive CUDA sampling)."""
    if torch.device(device).type == generator.device.type:
        return generator
    seeded = torch.Generator(device=device)
    seeded.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    return seeded


def elbo_bits_per_byte(
    model: Any,
    examples: Sequence[dict[str, Tensor]],
    n_bytes: Sequence[int],
    **kwargs: Any,
) -> dict[str, float]:
    """Bits per byte (an upper bound, from the ELBO) of a list of examples with known UTF-8 byte counts.

    Args:
        model: a `DiffusionModel`.
        examples: dicts {"ids", "maskable"}.
        n_bytes: UTF-8 bytes of text each example stands for.
        **kwargs: passed to `elbo_nats` (samples, times, batch_size, schedule, generator, collate).

    Returns:
        {"bits_per_byte", "nats_per_token", "tokens", "bytes"}.

    >>> # elbo_bits_per_byte(model, examples, [len(t.encode()) for t in texts], samples=4)["bits_per_byte"]
    """
    if len(n_bytes) != len(examples):
        raise ValueError(f"{len(examples)} examples but {len(n_bytes)} byte counts; pass one count per example")
    nats = elbo_nats(model, examples, **kwargs)
    total_nats = float(nats.sum())
    tokens = int(sum(int(e["maskable"].sum()) for e in examples))
    total_bytes = int(sum(n_bytes))
    return {
        "bits_per_byte": bits_per_byte(total_nats, total_bytes),
        "nats_per_token": total_nats / max(tokens, 1),
        "tokens": float(tokens),
        "bytes": float(total_bytes),
    }
