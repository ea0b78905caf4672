"""``yoto_optimizer``: one optax optimizer for the model weights and µ together."""

from __future__ import annotations

import optax

from yoto_jax.decay import DEFAULT_RHO, hyperparameter_decay
from yoto_jax.selection import mu_labels, mu_mask


def yoto_optimizer(
    tx: optax.GradientTransformation,
    rho: optax.ScalarOrSchedule = DEFAULT_RHO,
    mu_tx: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """Wraps the model's optimizer so that it also trains µ with hyperparameter decay.

    Without ``mu_tx``, µ is updated by ``tx`` itself, after ``hyperparameter_decay``
    (coupled: the same as adding ρR(µ) to the loss)::

        optax.chain(hyperparameter_decay(rho, mask=mu_mask), tx)

    With ``mu_tx``, µ gets its own optimizer through ``optax.partition``. Use it to
    give µ a larger learning rate: under Adam µ moves at most about ``lr`` per step,
    so with a model learning rate of 1e-3 it cannot travel far from log ε in a short
    run, and ε rather than the learned equilibrium sets the weights.

    The µ leaves are those under a ``yoto_mu`` key (:func:`yoto_jax.mu_mask`). If
    ``tx`` has weight decay, exclude µ from it with ``mask=yoto_jax.model_mask``.

    Args:
      tx: the model's optimizer.
      rho: the regularisation strength ρ >= 0, in loss units (float or schedule).
      mu_tx: an optional separate optimizer for µ, e.g. ``optax.adam(1e-2)``.

    Returns:
      An ``optax.GradientTransformation`` over the whole parameter tree.

    Example:
      >>> import optax, yoto_jax
      >>> tx = yoto_jax.yoto_optimizer(optax.adam(1e-3), rho=0.1, mu_tx=optax.adam(1e-2))
    """
    if mu_tx is None:
        return optax.chain(hyperparameter_decay(rho, mask=mu_mask), tx)
    return optax.partition(
        {"model": tx, "mu": optax.chain(hyperparameter_decay(rho), mu_tx)}, mu_labels
    )
