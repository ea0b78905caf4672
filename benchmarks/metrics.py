"""Test metrics, computed from additive statistics so that a split can be evaluated in chunks.

Each `*_statistics` function returns a dict of sums over a chunk; the harness adds the
chunks' dicts and the matching `*_metrics` function turns the totals into metrics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def depth_statistics(log_pred: jax.Array, depth: jax.Array) -> dict[str, jax.Array]:
    """Sums for AbsRel and δ<1.25 of predicted log depths (B, H, W) against depths (B, H, W)."""
    pred = jnp.exp(log_pred)
    ratio = jnp.maximum(pred / depth, depth / pred)
    return {
        "abs_rel": jnp.sum(jnp.abs(pred - depth) / depth),
        "delta1": jnp.sum(ratio < 1.25).astype(jnp.float32),
        "pixels": jnp.asarray(depth.size, jnp.float32),
    }


def depth_metrics(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """AbsRel = mean |ẑ − z| / z (lower is better) and δ<1.25 (the fraction within 25%)."""
    return {
        "abs_rel": stats["abs_rel"] / stats["pixels"],
        "delta1": stats["delta1"] / stats["pixels"],
    }


def confusion_statistics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """The confusion matrix (true class, predicted class) of per-pixel or per-item predictions."""
    num_classes = logits.shape[-1]
    pred = jax.nn.one_hot(jnp.argmax(logits, -1).reshape(-1), num_classes)
    true = jax.nn.one_hot(labels.reshape(-1), num_classes)
    return {"confusion": true.T @ pred}


def segmentation_metrics(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """mIoU = mean over classes of TP / (TP + FP + FN), and the per-class IoU."""
    confusion = stats["confusion"]
    true_pos = jnp.diag(confusion)
    union = jnp.sum(confusion, 0) + jnp.sum(confusion, 1) - true_pos
    iou = true_pos / jnp.maximum(union, 1.0)
    return {"miou": jnp.mean(iou), **{f"iou_{c}": iou[c] for c in range(iou.shape[0])}}


def accuracy_metrics(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Accuracy = trace / total of a confusion matrix."""
    confusion = stats["confusion"]
    return {"accuracy": jnp.trace(confusion) / jnp.sum(confusion)}
