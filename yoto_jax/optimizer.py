"""``yoto_optimizer``: one optax optimizer for the model weights and µ together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

from yoto_jax import _checks
from yoto_jax.decay import DEFAULT_RHO, hyperparameter_decay
from yoto_jax.selection import MU_KEY, is_mu_path, mu_mask, partition_labels

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
            mask_compatible_extra_args=True,
        )

    (the last so that extra arguments shaped like the params, e.g.
    :func:`yoto_jax.learned_learning_rate`'s ``validation_grads``, reach each optimizer
    masked like its updates).

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

    The µ leaves are those under a ``yoto_mu`` key (:func:`yoto_jax.mu_mask`); ``init``
    raises if the params hold none (µ under another name would be trained as a model
    weight). If ``tx`` has weight decay, exclude µ from it with ``mask=yoto_jax.model_mask``.

    A schedule's value at step 0 is checked like a constant (ρ >= 0, a learning rate
    > 0); later values are the caller's responsibility.

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
        return _requiring_mu(optax.chain(hyperparameter_decay(rho, mask=mu_mask), tx))
    if mu_tx is None:
        _checks.at_step_zero(_checks.positive, mu_learning_rate, "mu_learning_rate")
        mu_tx = optax.adam(mu_learning_rate)
    return _requiring_mu(
        optax.partition(
            {"model": tx, "mu": optax.chain(hyperparameter_decay(rho), mu_tx)},
            partition_labels,
            mask_compatible_extra_args=True,
        )
    )


def _top_keys(tree: Any) -> str:
    """The keys of `tree`'s first two levels of mappings, for an error message."""
    if not isinstance(tree, Mapping):
        return type(tree).__name__
    keys = [
        f"{key}/{inner}" if isinstance(child, Mapping) else str(key)
        for key, child in tree.items()
        for inner in (child if isinstance(child, Mapping) else [None])
    ]
    return str(keys)


def _requiring_mu(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` whose ``init`` raises unless some leaf of the params sits under ``MU_KEY``."""

    def init_fn(params: optax.Params) -> optax.OptState:
        paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        if not any(is_mu_path(path) for path in paths):
            raise ValueError(
                f"yoto_optimizer found no µ in the params: µ must sit under a {MU_KEY!r} key "
                f"(e.g. {{'model': ..., {MU_KEY!r}: yoto_jax.init_mu(K)}}), got the keys "
                f"{_top_keys(params)}. Without it every leaf is trained as a model weight."
            )
        return tx.init(params)

    return tx._replace(init=init_fn)
