"""Equal weights (EW): the plain sum of the losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from yoto_jax import _checks
from yoto_jax.baselines._common import NumLosses
from yoto_jax.weighting import Weighting, loss_vector, objective_weighting


def equal_weighting() -> Weighting:
    r"""Equal weights: :math:`λ_i = 1`, so the model descends :math:`\sum_i l_i`.

    The baseline every other method is measured against. It has no params and
    carries nothing between steps (its state only remembers T, with no arrays); it
    is ``yoto_jax.fixed_weights(jnp.ones(T))`` without having to know T beforehand.

    Returns:
      A :class:`~yoto_jax.Weighting` whose weights are ones of shape (T,).

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import equal_weighting
      >>> ew = equal_weighting()
      >>> params, state = ew.init(2)
      >>> losses_fn = lambda w: jnp.array([w**2, (w - 1.0) ** 2])
      >>> result = ew.step(losses_fn, jnp.float32(0.5), params, state)
      >>> result.weights, result.model_grads  # d/dw (w² + (w − 1)²) at 0.5
      (Array([1., 1.], dtype=float32), Array(0., dtype=float32))
    """

    def init(num_losses: int) -> tuple[dict[str, jax.Array], NumLosses]:
        return {}, NumLosses(_checks.positive_int(num_losses, "num_losses"))

    def applied(params, state: NumLosses, losses, key) -> jax.Array:
        return jnp.ones_like(loss_vector(losses, state.num_losses))

    def objective(params, state: NumLosses, losses, key) -> jax.Array:
        return jnp.sum(loss_vector(losses, state.num_losses))

    def weights(params: dict[str, jax.Array], state: NumLosses) -> jax.Array:
        return jnp.ones((state.num_losses,), jnp.float32)

    return objective_weighting(init, objective, applied, weights)
