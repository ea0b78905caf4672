"""The benchmark's losses and metrics against their definitions, computed by hand in NumPy."""

import numpy as np

from benchmarks import losses, metrics

RNG = np.random.default_rng(0)


def test_silog_matches_its_definition_per_image():
    pred, true = RNG.normal(size=(2, 2, 3, 3)).astype(np.float32)
    d = (pred - true).reshape(2, -1)
    expected = np.mean(np.mean(d**2, 1) - 0.15 * np.mean(d, 1) ** 2)
    np.testing.assert_allclose(losses.silog(pred, true, 0.15), expected, rtol=1e-5)
    # λ = 1 ignores a global log-scale offset; λ = 0 does not.
    np.testing.assert_allclose(losses.silog(true + 0.7, true, 1.0), 0.0, atol=1e-6)
    np.testing.assert_allclose(losses.silog(true + 0.7, true, 0.0), 0.49, rtol=1e-5)


def test_dice_loss_of_hard_predictions():
    labels = np.array([[0, 0, 1, 2]])
    logits = 50.0 * np.eye(3)[[0, 1, 1, 2]][None]  # predicts 0, 1, 1, 2
    # class 0: overlap 1, |p| 1, |y| 2; class 1: 1, 2, 1; class 2: 1, 1, 1 (smooth s = 1).
    dice = [(2 + 1) / (3 + 1), (2 + 1) / (3 + 1), (2 + 1) / (2 + 1)]
    np.testing.assert_allclose(losses.dice_loss(logits, labels), 1 - np.mean(dice), rtol=1e-5)


def test_soft_cross_entropy_reduces_to_cross_entropy_for_one_hot_targets():
    logits = RNG.normal(size=(5, 4)).astype(np.float32)
    labels = RNG.integers(0, 4, size=5)
    one_hot = np.eye(4, dtype=np.float32)[labels]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean(log_probs[np.arange(5), labels])
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-5)
    np.testing.assert_allclose(losses.soft_cross_entropy(logits, one_hot), expected, rtol=1e-5)


def test_depth_metrics():
    depth = np.array([[[1.0, 2.0], [4.0, 10.0]]])
    pred = np.array([[[1.1, 3.0], [4.0, 7.0]]])
    stats = metrics.depth_statistics(np.log(pred), depth)
    out = metrics.depth_metrics(stats)
    np.testing.assert_allclose(out["abs_rel"], np.mean([0.1, 0.5, 0.0, 0.3]), rtol=1e-5)
    np.testing.assert_allclose(out["delta1"], 0.5, rtol=1e-6)  # ratios 1.1, 1.5, 1, 1.43


def test_mean_iou_and_accuracy_from_the_confusion_matrix():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    stats = metrics.confusion_statistics(np.eye(3)[predicted], labels)
    np.testing.assert_array_equal(stats["confusion"], [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    iou = [1 / 3, 2 / 3, 1 / 2]  # TP / (TP + FP + FN) per class
    out = metrics.segmentation_metrics(stats)
    np.testing.assert_allclose(out["miou"], np.mean(iou), rtol=1e-6)
    np.testing.assert_allclose([out[f"iou_{c}"] for c in range(3)], iou, rtol=1e-6)
    np.testing.assert_allclose(metrics.accuracy_metrics(stats)["accuracy"], 4 / 6, rtol=1e-6)
