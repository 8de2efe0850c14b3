"""A small LeNet-style CNN that judges generated MNIST digits: classifier accuracy on the requested digit, and the
Frechet distance between generated and real digits in its penultimate feature space.

The network follows LeNet-5 ("Gradient-based learning applied to document recognition", LeCun et al., 1998): two
convolution + max-pool stages and a fully connected layer, here with ReLU, batch norm and dropout; its 64-dim
penultimate activations are the features. The Frechet distance is the FID formula of "GANs Trained by a Two
Time-Scale Update Rule Converge to a Local Nash Equilibrium" (Heusel et al., 2017),

    FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}),

computed in float64 with symmetric eigen-decompositions: Tr((S_a S_b)^{1/2}) = Tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}),
and the inner matrix is symmetric positive semi-definite. Like FID with Inception features, the value depends on the
feature extractor and on the sample sizes: compare numbers only with the same (shipped) classifier and sizes.

A trained classifier ships inside the package (`mmdiff/data/assets/digit-classifier/`, written by
`scripts/train_digit_classifier.py` from the train pool of `mmdiff.data.mnist_grid.digit_split`, so held-out digits
were never seen); `load_digit_classifier()` loads it.

>>> clf = load_digit_classifier()                                              # doctest: +SKIP
>>> from mmdiff.data.mnist_grid import digit_split, load_mnist_digits
>>> images, labels = load_mnist_digits()                                       # doctest: +SKIP
>>> held = digit_split(labels)["val"]                                          # doctest: +SKIP
>>> a, b = held[0::2], held[1::2]                                              # doctest: +SKIP
>>> score_digits(images[a], labels[a], images[b], classifier=clf)              # doctest: +SKIP
{'classifier_accuracy': 0.982, 'fid': 7.91, 'n': 500}
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiff.dataclass_io import from_dict
from mmdiff.io import load_json, load_safetensors, load_state_dict_strict, save_json, save_safetensors

__all__ = [
    "DigitClassifierConfig",
    "DigitClassifier",
    "train_digit_classifier",
    "save_digit_classifier",
    "load_digit_classifier",
    "to_digit_pixels",
    "features",
    "predict",
    "accuracy",
    "frechet_distance",
    "score_digits",
    "SHIPPED_FOLDER",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# the shipped weights stay package data of mmdiff.data (pyproject.toml)
SHIPPED_FOLDER = Path(__file__).resolve().parents[1] / "data" / "assets" / "digit-classifier"
DIGIT_SIZE = 28
TRAIN_HINT = "python scripts/train_digit_classifier.py"


@dataclass
class DigitClassifierConfig:
    """Architecture of a `DigitClassifier` (saved as its config.json).

    Args:
        channels: output channels of the two 3x3 convolution stages (each followed by 2x2 max-pooling).
        feature_dim: width of the penultimate (feature) layer.
        dropout: dropout before the output layer (training only).
        n_classes: number of digit classes.
    """

    channels: list[int] = field(default_factory=lambda: [16, 32])
    feature_dim: int = 64
    dropout: float = 0.2
    n_classes: int = 10

    def __post_init__(self) -> None:
        self.channels = [int(c) for c in self.channels]
        if len(self.channels) != 2 or min(self.channels) < 1 or self.feature_dim < 1 or self.n_classes < 2:
            raise ValueError(f"need two conv widths >= 1, feature_dim >= 1 and n_classes >= 2; got {self}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class DigitClassifier(nn.Module):
    """Conv(3x3)-BN-ReLU-MaxPool x 2, then a `feature_dim` ReLU layer (the features) and a linear classifier.

    Input: float (B, 1, 28, 28) pixels in [0, 1] (white digit on black, as MNIST).

    >>> model = DigitClassifier(DigitClassifierConfig())
    >>> model.eval().features(torch.zeros(2, 1, 28, 28)).shape, model(torch.zeros(2, 1, 28, 28)).shape
    (torch.Size([2, 64]), torch.Size([2, 10]))
    """

    def __init__(self, config: DigitClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),  # -> (c1, 14, 14)
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),  # -> (c2, 7, 7)
        )
        self.fc = nn.Linear(c2 * 7 * 7, config.feature_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.n_classes)

    def features(self, pixels: Tensor) -> Tensor:
        """Penultimate activations: (B, 1, 28, 28) in [0, 1] -> (B, feature_dim), after the ReLU."""
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (1, DIGIT_SIZE, DIGIT_SIZE):
            raise ValueError(f"DigitClassifier takes (B, 1, 28, 28) pixels in [0, 1], got {tuple(pixels.shape)}; "
                             "convert images with to_digit_pixels")
        return F.relu(self.fc(self.conv(pixels).flatten(1)))  # (B, c2, 7, 7) -> (B, c2 * 49) -> (B, F)

    def forward(self, pixels: Tensor) -> Tensor:
        """(B, 1, 28, 28) pixels in [0, 1] -> (B, n_classes) logits."""
        return self.head(self.dropout(self.features(pixels)))


# ------------------------------------------------------------------------------------------------ inputs


def to_digit_pixels(images: Any) -> Tensor:
    """Digit images -> float (N, 1, 28, 28) pixels in [0, 1].

    Accepts a list of PIL images (any mode: converted to "L"; square images of another size are resized to 28x28
    with a box filter), a uint8 array / tensor (N, 28, 28) or (N, 1, 28, 28) in 0..255, or a float array / tensor
    of those shapes in [0, 1].

    Raises:
        ValueError: empty input, a non-square PIL image, an array that is not 28x28, or float pixels outside [0, 1].

    >>> from PIL import Image
    >>> to_digit_pixels(np.full((2, 28, 28), 255, dtype=np.uint8)).max().item()
    1.0
    >>> to_digit_pixels([Image.new("RGB", (56, 56), (255, 255, 255))]).shape
    torch.Size([1, 1, 28, 28])
    """
    if isinstance(images, (list, tuple)) and images and _is_pil(images[0]):
        return torch.stack([_pil_pixels(im, i) for i, im in enumerate(images)])
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given; pass a non-empty list of PIL images or an (N, 28, 28) array")
        images = np.stack([np.asarray(im) for im in images])
    array = torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images.detach().cpu()
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]  # (N, 1, H, W) -> (N, H, W)
    if array.ndim != 3 or tuple(array.shape[1:]) != (DIGIT_SIZE, DIGIT_SIZE) or len(array) == 0:
        raise ValueError(f"digit images must be (N, 28, 28) or (N, 1, 28, 28) with N >= 1, got shape "
                         f"{tuple(array.shape)}; resize them to 28x28 first, or pass PIL images (resized for you)")
    if array.dtype == torch.uint8:
        return array.float().div(255).unsqueeze(1)
    if not array.is_floating_point():
        raise ValueError(f"digit pixels must be uint8 in 0..255 or float in [0, 1], got dtype {array.dtype}")
    if array.numel() and (array.min() < 0 or array.max() > 1):
        raise ValueError(f"float digit pixels must lie in [0, 1], got [{array.min():.3g}, {array.max():.3g}]; "
                         "map [-1, 1] pixels with (x + 1) / 2, or pass uint8 0..255")
    return array.float().unsqueeze(1)


def _is_pil(obj: Any) -> bool:
    return hasattr(obj, "convert") and hasattr(obj, "size") and hasattr(obj, "mode")


def _pil_pixels(image: Any, index: int) -> Tensor:
    from PIL import Image

    width, height = image.size
    if width != height:
        raise ValueError(f"image {index} is {width}x{height}; digit images must be square (28x28) to be judged")
    grey = image.convert("L")
    if grey.size != (DIGIT_SIZE, DIGIT_SIZE):
        grey = grey.resize((DIGIT_SIZE, DIGIT_SIZE), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(grey, dtype=np.uint8).copy()).float().div(255).unsqueeze(0)  # (1, 28, 28)


# ------------------------------------------------------------------------------------------------ training


def _augment(pixels: Tensor, generator: torch.Generator, shift: float, rotate: float, scale: float) -> Tensor:
    """Random small affine jitter per image (translation in pixels, rotation in degrees, relative scale)."""
    b = pixels.shape[0]
    u = torch.rand(b, 4, generator=generator) * 2 - 1  # (B, 4) uniform in [-1, 1]
    angle = u[:, 0] * math.radians(rotate)
    zoom = 1 + u[:, 1] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * shift * 2 / DIGIT_SIZE], 1),
                         torch.stack([sin, cos, u[:, 3] * shift * 2 / DIGIT_SIZE], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, align_corners=False, padding_mode="zeros")


def train_digit_classifier(
    images: Any,
    labels: Any,
    *,
    epochs: int = 12,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    augment: bool = True,
    config: DigitClassifierConfig | None = None,
    log: Any = None,
) -> DigitClassifier:
    """Trains a `DigitClassifier` with AdamW and a one-cycle learning rate, on small random affine jitter.

    Args:
        images: uint8 (N, 28, 28) digits (anything `to_digit_pixels` reads).
        labels: int (N,) classes.
        epochs, batch_size, lr, weight_decay: the optimisation.
        seed: seeds the initialisation, the shuffling and the augmentation (same seed, same weights).
        augment: jitter each batch by up to 2 px shift, 10 degrees rotation and 10 % scale.
        config: the architecture (default `DigitClassifierConfig()`).
        log: optional `fn(epoch, mean_loss)` after each epoch.

    Returns:
        The trained classifier, in eval mode.

    >>> images, labels = np.zeros((20, 28, 28), np.uint8), np.arange(20) % 2
    >>> images[labels == 1, 10:18, 10:18] = 255
    >>> model = train_digit_classifier(images, labels, epochs=10, augment=False, batch_size=4)
    >>> accuracy(model, images, labels)
    1.0
    """
    pixels = to_digit_pixels(images)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long).flatten()
    config = config or DigitClassifierConfig()
    if len(targets) != len(pixels):
        raise ValueError(f"got {len(pixels)} images but {len(targets)} labels; pass one label per image")
    if targets.min() < 0 or targets.max() >= config.n_classes:
        raise ValueError(f"labels must be in 0..{config.n_classes - 1}, got {targets.min()}..{targets.max()}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initialisation and dropout
        model = DigitClassifier(config)
        steps_per_epoch = math.ceil(len(pixels) / batch_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch,
                                                       pct_start=0.2)
        model.train()
        for epoch in range(epochs):
            total = 0.0
            for batch in torch.randperm(len(pixels), generator=gen).split(batch_size):
                x = _augment(pixels[batch], gen, 2.0, 10.0, 0.1) if augment else pixels[batch]
                loss = F.cross_entropy(model(x), targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(batch)
            if log is not None:
                log(epoch, total / len(pixels))
    return model.eval()


# ------------------------------------------------------------------------------------------------ save / load


def save_digit_classifier(model: DigitClassifier, folder: str | Path) -> None:
    """Writes `folder/config.json` and `folder/model.safetensors` (float32), each atomically.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> save_digit_classifier(DigitClassifier(DigitClassifierConfig()), folder)
    >>> sorted(p.name for p in folder.iterdir())
    ['config.json', 'model.safetensors']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_safetensors(folder / WEIGHTS_NAME, state)
    save_json(folder / CONFIG_NAME, {"model": "digit-classifier", **asdict(model.config)})


def load_digit_classifier(folder: str | Path | None = None) -> DigitClassifier:
    """Loads a classifier written by `save_digit_classifier` (strict: keys and shapes must match), in eval mode.

    Args:
        folder: the classifier folder; None loads the one shipped in `mmdiff/data/assets/digit-classifier/`.

    Raises:
        FileNotFoundError: the folder holds no config.json (names the script that writes one).

    >>> load_digit_classifier().config.feature_dim   # doctest: +SKIP
    64
    """
    folder = SHIPPED_FOLDER if folder is None else Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_NAME}; write a digit classifier there with {TRAIN_HINT} "
                                "(or save_digit_classifier)")
    data = dict(load_json(folder / CONFIG_NAME))
    if data.pop("model", None) != "digit-classifier":
        raise ValueError(f"{folder / CONFIG_NAME} is not a digit-classifier config (its 'model' field must be "
                         "'digit-classifier')")
    model = DigitClassifier(from_dict(DigitClassifierConfig, data, where=str(folder / CONFIG_NAME)))
    load_state_dict_strict(model, load_safetensors(folder / WEIGHTS_NAME), source=str(folder / WEIGHTS_NAME))
    return model.eval()


# ------------------------------------------------------------------------------------------------ judging


@torch.no_grad()
def _run(model: DigitClassifier, images: Any, what: str, batch_size: int = 512) -> Tensor:
    pixels = to_digit_pixels(images)
    was_training = model.training
    model.eval()
    try:
        fn = model.features if what == "features" else model
        return torch.cat([fn(chunk) for chunk in pixels.split(batch_size)])
    finally:
        model.train(was_training)


def features(images: Any, classifier: DigitClassifier | None = None) -> Tensor:
    """Penultimate features (N, feature_dim) of `images` (anything `to_digit_pixels` reads), in eval mode.

    >>> features(np.zeros((3, 28, 28), np.uint8), DigitClassifier(DigitClassifierConfig())).shape
    torch.Size([3, 64])
    """
    return _run(classifier or load_digit_classifier(), images, "features")


def predict(images: Any, classifier: DigitClassifier | None = None) -> Tensor:
    """Predicted digit (N,) int64 of each image (default: the shipped classifier).

    >>> predict(np.zeros((2, 28, 28), np.uint8), DigitClassifier(DigitClassifierConfig())).shape
    torch.Size([2])
    """
    return _run(classifier or load_digit_classifier(), images, "logits").argmax(-1)


def accuracy(classifier: DigitClassifier, images: Any, labels: Any) -> float:
    """Fraction of `images` whose predicted digit equals `labels`."""
    pred = predict(images, classifier)
    targets = _labels(labels, len(pred))
    return float((pred == targets).float().mean())


def _labels(labels: Any, n: int) -> Tensor:
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long).flatten()
    if len(targets) != n:
        raise ValueError(f"got {n} images but {len(targets)} labels; pass one requested digit per image")
    if n and (targets.min() < 0 or targets.max() > 9):
        raise ValueError(f"digit labels must be in 0..9, got {targets.min().item()}..{targets.max().item()}")
    return targets


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0 against rounding)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula), in float64.

    Args:
        feats_a: (N_a, F) features, N_a >= 2.
        feats_b: (N_b, F) features, N_b >= 2.

    Returns:
        ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}), clipped at 0; covariances
        are unbiased (N - 1).

    >>> a = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    >>> round(frechet_distance(a, a), 9), round(frechet_distance(a, a + 1), 9)
    (0.0, 2.0)
    """
    a, b = (np.asarray(f.detach().cpu() if isinstance(f, Tensor) else f, dtype=np.float64) for f in (feats_a, feats_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance needs two (N, F) feature arrays with the same F and N >= 2 each, got "
                         f"{a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("features contain NaN or infinity; check the images fed to the classifier")
    mu = a.mean(0) - b.mean(0)
    cov_a, cov_b = (np.atleast_2d(np.cov(f, rowvar=False, ddof=1)) for f in (a, b))  # (F, F), also for F = 1
    root_a = _sqrt_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(_symmetric(root_a @ cov_b @ root_a)), 0, None)).sum()
    return max(float(mu @ mu + np.trace(cov_a) + np.trace(cov_b) - 2 * cross), 0.0)


def _symmetric(matrix: np.ndarray) -> np.ndarray:
    return (matrix + matrix.T) / 2


def score_digits(
    images: Any,
    labels: Any,
    reference_images: Any,
    *,
    classifier: DigitClassifier | None = None,
) -> dict[str, float]:
    """Judges generated digits: accuracy of the classifier on the requested digits, and FID in its feature space.

    Args:
        images: generated digits: a list of PIL images (any mode, square) or a uint8 (N, 28, 28) array / tensor.
        labels: the requested digit of each image, (N,).
        reference_images: real digits to compare with (e.g. the held-out pool), at least 2.
        classifier: the judge (default: the shipped classifier).

    Returns:
        {"classifier_accuracy": fraction classified as requested, "fid": Frechet distance of the features of
        `images` versus `reference_images`, "n": number of images}.

    >>> from mmdiff.data.mnist_grid import load_mnist_digits
    >>> images, labels = load_mnist_digits()                           # doctest: +SKIP
    >>> score_digits(images[:10], labels[:10], images[10:20])["n"]      # doctest: +SKIP
    10
    """
    classifier = classifier or load_digit_classifier()
    pixels = to_digit_pixels(images)
    targets = _labels(labels, len(pixels))
    if len(pixels) < 2:
        raise ValueError(f"score_digits needs at least 2 images for the feature covariance, got {len(pixels)}")
    feats = _run(classifier, pixels, "features")
    with torch.no_grad():
        hits = classifier.head(feats).argmax(-1) == targets  # the head alone: no dropout between it and `feats`
    reference = _run(classifier, reference_images, "features")
    return {
        "classifier_accuracy": float(hits.float().mean()),
        "fid": frechet_distance(feats, reference),
        "n": len(pixels),
    }

