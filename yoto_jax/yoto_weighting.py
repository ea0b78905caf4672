"""YOTO behind the weighting contract: :func:`yoto`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.composite import DEFAULT_EPS, UNIFORM, loss_weights, resolve_floor, yoto_composite
from yoto_jax.decay import DEFAULT_RHO
from yoto_jax.optimizer import DEFAULT_MU_LEARNING_RATE, yoto_optimizer
from yoto_jax.selection import MU_KEY
from yoto_jax.weighting import Weighting, loss_vector, objective_weighting


def yoto(
    eps: ArrayLike = DEFAULT_EPS,
    rho: optax.ScalarOrSchedule = DEFAULT_RHO,
    *,
    mu_learning_rate: optax.ScalarOrSchedule | None = DEFAULT_MU_LEARNING_RATE,
    mu_tx: optax.GradientTransformation | None = None,
    primary_floor: ArrayLike | str = UNIFORM,
) -> Weighting:
    r"""YOTO as a :class:`~yoto_jax.Weighting`: λ = softmax([0, µ]) learnt with the model.

    The model and µ descend :math:`\sum_i λ_i l_i` (:func:`yoto_jax.yoto_composite`);
    µ's regulariser :math:`ρ R(µ)` is added by the optimizer,
    ``weighting.optimizer(tx)`` = :func:`yoto_jax.yoto_optimizer`, so ``result.grads``
    holds the composite's gradient only. The params are ``{"yoto_mu": µ}``, from
    µ = log ε; there is no state.

    The defaults are the library's (see the README's "Defaults"): µ on its own Adam at
    0.05 nats per step and the primary's weight floored at 1/(K+1). The paper's
    formulation exactly: ``yoto(mu_learning_rate=None, primary_floor=0.0)``.

    Args:
      eps: the initial weight ratio λ_i / λ_0 of every auxiliary, > 0 (may be traced).
      rho: the regularisation strength ρ >= 0 (float or schedule).
      mu_learning_rate: µ's Adam learning rate; None puts µ on the model's optimizer.
      mu_tx: replaces µ's optimizer altogether.
      primary_floor: m in [0, 1), or ``"uniform"`` (1/(K+1)); see
        :func:`yoto_jax.loss_weights`.

    Returns:
      A :class:`~yoto_jax.Weighting`.

    Example:
      >>> import jax.numpy as jnp, yoto_jax
      >>> weighting = yoto_jax.yoto(eps=1.0, primary_floor=0.0)
      >>> params, state = weighting.init(3)  # T = 3 losses: µ has K = 2 logits
      >>> weighting.weights(params, state)
      Array([0.33333334, 0.33333334, 0.33333334], dtype=float32)
    """
    if jnp.ndim(eps) == 0:
        _checks.positive(eps, "eps")
    _checks.non_negative(rho, "rho")

    def floor(num_losses: int) -> ArrayLike:
        return resolve_floor(primary_floor, num_losses - 1)

    def init(num_losses: int) -> tuple[dict[str, jax.Array], Any]:
        num_losses = _checks.positive_int(num_losses, "num_losses")
        if num_losses < 2:
            raise ValueError(
                f"YOTO needs a primary and at least one auxiliary loss, got {num_losses} loss."
            )
        logits = jnp.log(_checks.floating_array(eps, "eps").astype(jnp.float32))
        return {MU_KEY: jnp.broadcast_to(logits, (num_losses - 1,))}, ()

    def weights(params: dict[str, jax.Array], state: Any) -> jax.Array:
        mu = params[MU_KEY]
        return loss_weights(mu, primary_floor=floor(mu.shape[0] + 1))

    def objective(params, state, losses, key) -> jax.Array:
        mu = params[MU_KEY]
        losses = loss_vector(losses, mu.shape[0] + 1)
        return yoto_composite(mu, losses, primary_floor=floor(mu.shape[0] + 1))

    def optimizer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
        return yoto_optimizer(tx, rho, mu_tx, mu_learning_rate=mu_learning_rate)

    return objective_weighting(
        init,
        objective,
        lambda params, state, losses, key: weights(params, state),
        weights,
        optimizer=optimizer,
    )
