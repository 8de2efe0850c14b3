"""Judges of a model's outputs: task metrics (exact match, token accuracy, bits per byte from the masked-diffusion
ELBO; `mmdiff.evaluation.metrics`), the digit classifier that scores generated MNIST digits (accuracy on the
requested digit and FID in its feature space; `mmdiff.evaluation.digit_classifier`) and the closed-loop evaluation
of robot policies in a simulator (success rate per task; `mmdiff.evaluation.rollouts`).

They sit with the datasets, above the tasks and below the zoo: they judge what a pipeline generates, and never load
a zoo entry themselves.

>>> from mmdiff.evaluation import exact_match
>>> exact_match([[1, 2], [3]], [[1, 2], [4]])
0.5
"""

from mmdiff.evaluation.digit_classifier import (
    DigitClassifier,
    DigitClassifierConfig,
    frechet_distance,
    load_digit_classifier,
    score_digits,
)
from mmdiff.evaluation.metrics import bits_per_byte, elbo_bits_per_byte, elbo_nats, exact_match, token_accuracy
from mmdiff.evaluation.rollouts import (
    RandomPolicy,
    ScriptedPolicy,
    TaskResult,
    average_success,
    evaluate_policy,
    format_results,
    save_gif,
)

__all__ = [
    "DigitClassifier",
    "DigitClassifierConfig",
    "RandomPolicy",
    "ScriptedPolicy",
    "TaskResult",
    "average_success",
    "bits_per_byte",
    "elbo_bits_per_byte",
    "elbo_nats",
    "evaluate_policy",
    "exact_match",
    "format_results",
    "frechet_distance",
    "load_digit_classifier",
    "save_gif",
    "score_digits",
    "token_accuracy",
]
