"""Equal weights (EW): the plain sum of the losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.baselines._common import LossWeighting, loss_vector


def equal_weighting() -> LossWeighting:
    r"""Equal weights: :math:`λ_i = 1`, so the model's loss is :math:`\sum_i l_i`.

    The baseline every other method is measured against; it has no state.

    Returns:
      A :class:`LossWeighting` whose weights are ones of shape (T,).

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import equal_weighting, weighted_loss
      >>> ew, losses = equal_weighting(), jnp.array([0.5, 2.0])
      >>> weighted_loss(ew.weights(ew.init(2), losses), losses)
      Array(2.5, dtype=float32)
    """

    def init_fn(num_losses: int) -> optax.EmptyState:
        _checks.positive_int(num_losses, "num_losses")
        return optax.EmptyState()

    def weights_fn(state: optax.EmptyState, losses: ArrayLike) -> jax.Array:
        del state
        losses = loss_vector(losses)
        return jnp.ones_like(losses)

    def update_fn(state: optax.EmptyState, losses: ArrayLike, **extra_args) -> optax.EmptyState:
        del extra_args
        loss_vector(losses)
        return state

    return LossWeighting(init_fn, weights_fn, update_fn)
