"""Uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.weighting import Weighting, loss_vector, objective_weighting

UNCERTAINTY_KEY = "uncertainty_log_var"
"""The name of the log-variances s in the weighting's params."""

DEFAULT_LOG_VAR_INIT = 0.0
"""Initial s = log σ² = 0 (σ = 1), as in the Nash-MTL and FAMO code; LibMTL uses -0.5."""


def _aligned(log_vars: ArrayLike, losses: ArrayLike) -> tuple[jax.Array, jax.Array]:
    losses = loss_vector(losses)
    log_vars = loss_vector(log_vars, losses.shape[0], what="log_vars")
    dtype = _checks.compute_dtype(log_vars, losses)
    return log_vars.astype(dtype), losses.astype(dtype)


def uncertainty_loss(log_vars: ArrayLike, losses: ArrayLike) -> jax.Array:
    r"""Kendall et al.'s uncertainty-weighted loss, minimised over the model and s.

    .. math::
        L = \sum_i \frac{l_i}{2 e^{s_i}} + \frac{s_i}{2},
        \qquad \frac{\partial L}{\partial s_i} = \frac{1}{2} - \frac{l_i}{2 e^{s_i}},

    so for a constant loss the optimum is :math:`s_i = \log l_i`: a task's weight
    :math:`1/(2e^{s_i})` falls as its loss (its homoscedastic noise) grows. The same
    formula is used for every loss (the paper's regression form; its classification
    form differs by constants, as in the LibMTL and Nash-MTL code). This is the
    objective of :func:`uncertainty`.

    Args:
      log_vars: s, shape (T,).
      losses: the scalar losses, shape (T,).

    Returns:
      The scalar loss, float32 or wider.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import uncertainty_loss
      >>> uncertainty_loss(jnp.zeros(2), jnp.array([1.0, 3.0]))  # (1 + 3) / 2
      Array(2., dtype=float32)

    References:
      Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses
      for Scene Geometry and Semantics", CVPR 2018, Eq. (7).
    """
    log_vars, losses = _aligned(log_vars, losses)
    return jnp.sum(0.5 * jnp.exp(-log_vars) * losses + 0.5 * log_vars)


def uncertainty(log_var_init: float = DEFAULT_LOG_VAR_INIT) -> Weighting:
    r"""Uncertainty weighting: learnt log-variances s weigh the losses by :math:`1/(2e^{s_i})`.

    The model and s descend :func:`uncertainty_loss`,

    .. math::
        L = \sum_i \frac{l_i}{2 e^{s_i}} + \frac{s_i}{2},

    with the model's own optimizer (``weighting.optimizer(tx)`` is ``tx``): s is a
    param, ``{"uncertainty_log_var": s}``, trained together with the model from
    ``result.grads``; there is no state. The weights are :math:`λ_i = 1/(2e^{s_i})`.

    The default s = 0 (unit variance) is the neutral choice: every loss starts with
    weight 1/2, i.e. equal weights scaled by 1/2, and the objective is not shifted;
    it is also the initialisation of the Nash-MTL and FAMO benchmark code. LibMTL
    starts at s = -0.5 (weights ≈ 0.82): ``uncertainty(log_var_init=-0.5)``. Under
    Adam the constant scale of the initial weights hardly matters; under SGD it
    scales the model's effective learning rate. Keep s out of weight decay.

    Args:
      log_var_init: the initial value of every s_i, a finite number (may be traced).

    Returns:
      A :class:`~yoto_jax.Weighting` with params ``{"uncertainty_log_var": s}``.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import uncertainty
      >>> method = uncertainty()
      >>> params, state = method.init(2)
      >>> losses_fn = lambda w: jnp.array([w**2, 3.0 * w])
      >>> result = method.step(losses_fn, 1.0, params, state)
      >>> result.weights  # 1 / (2 e^0)
      Array([0.5, 0.5], dtype=float32)
      >>> result.grads  # ∂L/∂s = 1/2 - l / 2
      {'uncertainty_log_var': Array([ 0., -1.], dtype=float32)}

    References:
      Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses
      for Scene Geometry and Semantics", CVPR 2018, Eq. (7).
    """
    value = _checks.concrete_float(log_var_init)
    if value is not None and not math.isfinite(value):
        raise ValueError(f"log_var_init must be a finite number, got {value}.")

    def init(num_losses: int) -> tuple[dict[str, jax.Array], tuple]:
        num_losses = _checks.positive_int(num_losses, "num_losses")
        return {UNCERTAINTY_KEY: jnp.full((num_losses,), log_var_init, jnp.float32)}, ()

    def weights(params: dict[str, jax.Array], state: tuple) -> jax.Array:
        return 0.5 * jnp.exp(-loss_vector(params[UNCERTAINTY_KEY], what="log_vars"))

    def applied(params, state, losses, key) -> jax.Array:
        return weights(params, state)

    def objective(params, state, losses, key) -> jax.Array:
        log_vars = params[UNCERTAINTY_KEY]
        return uncertainty_loss(log_vars, loss_vector(losses, jnp.shape(log_vars)[0]))

    return objective_weighting(init, objective, applied, weights)
