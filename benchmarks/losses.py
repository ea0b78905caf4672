"""Per-batch training losses shared by the benchmark tasks (each returns a scalar)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def silog(log_pred: jax.Array, log_true: jax.Array, variance_focus: float = 0.5) -> jax.Array:
    r"""Scale-invariant log loss (Eigen et al. 2014), averaged over images.

    .. math::
        \frac{1}{n}\sum_p d_p^2 - \frac{λ}{n^2}\Big(\sum_p d_p\Big)^2, \quad
        d = \log \hat z - \log z,

    with λ = ``variance_focus``: λ = 1 ignores the global scale, λ = 0 is the plain
    squared log error; 0.5 (Eigen et al.'s training value) keeps the scale learnable.

    Args:
      log_pred: predicted log depths, shape (B, H, W).
      log_true: true log depths, shape (B, H, W).
      variance_focus: λ in [0, 1].
    """
    d = (log_pred - log_true).reshape(log_pred.shape[0], -1)
    return jnp.mean(jnp.mean(d**2, axis=1) - variance_focus * jnp.mean(d, axis=1) ** 2)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer `labels` (...,) under `logits` (..., C)."""
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[..., None], axis=-1))


def soft_cross_entropy(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Mean cross-entropy −Σ_c t_c log p_c of soft targets `target` (..., C) under `logits`."""
    return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))


def dice_loss(logits: jax.Array, labels: jax.Array, smooth: float = 1.0) -> jax.Array:
    r"""Soft multi-class Dice loss over the batch (Milletari et al. 2016).

    .. math::
        1 - \frac{1}{C}\sum_c \frac{2\sum p_c y_c + s}{\sum p_c + \sum y_c + s},

    with p the softmax probabilities, y the one-hot labels, s = ``smooth``. Every
    class counts equally, so rare classes weigh more than under cross-entropy.

    Args:
      logits: shape (..., C).
      labels: integer labels, shape (...,).
      smooth: the additive smoothing s > 0.
    """
    num_classes = logits.shape[-1]
    probs = jax.nn.softmax(logits).reshape(-1, num_classes)
    onehot = jax.nn.one_hot(labels.reshape(-1), num_classes)
    overlap = jnp.sum(probs * onehot, axis=0)
    total = jnp.sum(probs, axis=0) + jnp.sum(onehot, axis=0)
    return 1.0 - jnp.mean((2.0 * overlap + smooth) / (total + smooth))


def binary_cross_entropy(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of targets in [0, 1] under `logits` (same shape)."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))


def mean_squared_error(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean of (pred − target)²."""
    return jnp.mean((pred - target) ** 2)
