"""``yoto_optimizer``: one optax optimizer for the model weights and µ together."""

from __future__ import annotations

import optax

from yoto_jax import _checks
from yoto_jax.decay import DEFAULT_RHO, hyperparameter_decay
from yoto_jax.selection import mu_mask, partition_labels

DEFAULT_MU_LEARNING_RATE = 0.05
"""µ's own constant Adam learning rate, in nats per step (see :func:`yoto_optimizer`)."""


def yoto_optimizer(
    tx: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = DEFAULT_RHO,
    mu_tx: optax.GradientTransformation | None = None,
    *,
    mu_learning_rate: optax.ScalarOrSchedule | None = DEFAULT_MU_LEARNING_RATE,
) -> optax.GradientTransformation:
    r"""Wraps the model's optimizer so that it also trains µ with hyperparameter decay.

    By default µ gets its own Adam at a constant learning rate of
    ``DEFAULT_MU_LEARNING_RATE`` = 0.05, through ``optax.partition``::

        optax.partition(
            {"model": tx, "mu": optax.chain(hyperparameter_decay(rho), optax.adam(0.05))},
            partition_labels,  # mu_labels, with one label per subtree without µ
        )

    Adam moves each logit by about its learning rate per step, so µ's learning rate is
    its step size in nats (a factor e^{lr} on λ_i/λ_0) and its sum over training bounds
    how far µ can travel from log ε. On the model's optimizer (the paper's setting)
    µ moves about the model's learning rate per step, a few nats in a whole run of
    1e-3 over a few thousand steps, so ε rather than the data sets the weights; a
    rate of its own, independent of the model's schedule, lets µ reach its equilibrium
    in a few hundred steps.

    ``mu_learning_rate=None`` is the paper's formulation: µ is updated by ``tx``
    itself, after ``hyperparameter_decay`` (coupled: the same as adding ρR(µ) to the
    loss)::

        optax.chain(hyperparameter_decay(rho, mask=mu_mask), tx)

    ``mu_tx`` replaces µ's optimizer altogether (``mu_learning_rate`` is then unused).

    The µ leaves are those under a ``yoto_mu`` key (:func:`yoto_jax.mu_mask`). If
    ``tx`` has weight decay, exclude µ from it with ``mask=yoto_jax.model_mask``.

    Args:
      tx: the model's optimizer.
      rho: the regularisation strength ρ >= 0, in loss units (float or schedule).
      mu_tx: an optional optimizer for µ, e.g. ``optax.sgd(1e-2)``.
      mu_learning_rate: µ's Adam learning rate (float or schedule) when ``mu_tx`` is
        None; None puts µ on ``tx``.

    Returns:
      An ``optax.GradientTransformation`` over the whole parameter tree.

    Example:
      >>> import jax.numpy as jnp, optax, yoto_jax
      >>> params = {"w": jnp.zeros(3), "yoto_mu": yoto_jax.init_mu(2, eps=0.1)}
      >>> tx = yoto_jax.yoto_optimizer(optax.adam(1e-3))  # µ on its own Adam, lr 0.05
      >>> state = tx.init(params)
      >>> paper = yoto_jax.yoto_optimizer(optax.adam(1e-3), mu_learning_rate=None)
    """
    if mu_tx is None and mu_learning_rate is None:
        return optax.chain(hyperparameter_decay(rho, mask=mu_mask), tx)
    if mu_tx is None:
        _checks.positive(mu_learning_rate, "mu_learning_rate")
        mu_tx = optax.adam(mu_learning_rate)
    return optax.partition(
        {"model": tx, "mu": optax.chain(hyperparameter_decay(rho), mu_tx)}, partition_labels
    )
