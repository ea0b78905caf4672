"""The validation-driven YOTO candidate: µ's gradient from a held-out batch, one step ahead.

YOTO's softmax, floors and regulariser are kept; only µ's gradient changes. Instead of
the training composite's :math:`λ_i (l_i - L)`, µ descends the validation loss after a
virtual SGD step of the model, :math:`θ' = θ - α \\sum_j λ_j \\nabla l_j(θ)`:

.. math::
    \\frac{\\partial L_\\text{val}(θ')}{\\partial λ_j} = -α\\, \\nabla l_j(θ)^\\top
    \\nabla L_\\text{val}(θ'),

exact (θ' is linear in λ), the products from one ``jax.jvp`` of the training losses along
:math:`\\nabla L_\\text{val}(θ')` (Auto-λ's hypergradient, applied to λ = softmax([0, µ])
through its vector-Jacobian product). One update costs about three training steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

import yoto_jax


def validation_yoto(
    config: dict[str, jax.Array],
    val_loss: Callable[[Any, jax.Array], jax.Array],
    learning_rate: float,
) -> yoto_jax.Weighting:
    """YOTO whose µ descends ``val_loss(model_params, key)`` one SGD step of size
    ``learning_rate`` ahead; ``config`` as for ``yoto_jax.yoto`` (numbers, may be traced)."""
    base = yoto_jax.yoto(
        eps=config["eps"],
        rho=config["rho"],
        mu_learning_rate=config["mu_learning_rate"],
        primary_floor=config["primary_floor"],
        loss_floor=config["loss_floor"],
    )

    def weights_of(mu: jax.Array) -> jax.Array:
        return yoto_jax.loss_weights(
            mu, primary_floor=config["primary_floor"], loss_floor=config["loss_floor"]
        )

    def step(losses_fn, model_params, params, state, *, key=None) -> yoto_jax.WeightingStep:
        key = jax.random.key(0) if key is None else key
        weights, weights_vjp = jax.vjp(weights_of, params[yoto_jax.MU_KEY])
        losses, losses_vjp = jax.vjp(losses_fn, model_params)
        (model_grads,) = losses_vjp(jax.lax.stop_gradient(weights).astype(losses.dtype))
        virtual = jax.tree.map(lambda p, g: p - learning_rate * g, model_params, model_grads)
        direction = jax.grad(val_loss)(virtual, key)
        products = jax.jvp(losses_fn, (model_params,), (direction,))[1]
        (mu_grad,) = weights_vjp((-learning_rate * products).astype(weights.dtype))
        return yoto_jax.WeightingStep(
            jax.lax.stop_gradient(losses), weights, model_grads, {yoto_jax.MU_KEY: mu_grad}, state
        )

    return base._replace(step=step)
