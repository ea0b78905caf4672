"""Uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.baselines._common import loss_vector

UNCERTAINTY_KEY = "uncertainty_log_var"
"""A suggested parameter name for s, e.g. ``{"model": ..., UNCERTAINTY_KEY: s}``."""

DEFAULT_LOG_VAR_INIT = 0.0
"""Initial s = log σ² = 0 (σ = 1), as in the Nash-MTL and FAMO code; LibMTL uses -0.5."""


def init_log_vars(
    num_losses: int, init: float = DEFAULT_LOG_VAR_INIT, dtype=jnp.float32
) -> jax.Array:
    r"""Initial log-variances :math:`s = \log σ^2`, one per loss.

    The default s = 0 (unit variance) is the neutral choice: every loss starts with
    weight :math:`1 / (2e^0) = 1/2`, i.e. equal weights scaled by 1/2, and the
    objective is not shifted; it is also the initialisation of the Nash-MTL and FAMO
    benchmark code. LibMTL starts at s = -0.5 (weights ≈ 0.82); pass ``init=-0.5``
    to reproduce it. Under Adam the constant scale of the initial weights hardly
    matters; under SGD it scales the model's effective learning rate.

    Args:
      num_losses: the number T >= 1 of losses.
      init: the initial value of every s_i, a finite number (or a traced scalar).
      dtype: a floating dtype.

    Returns:
      An array of shape (T,). Put it in the parameter tree (e.g. under
      :data:`UNCERTAINTY_KEY`) so the model's optimizer trains it, and keep it out
      of weight decay.
    """
    num_losses = _checks.positive_int(num_losses, "num_losses")
    value = _checks.concrete_float(init)
    if value is not None and not math.isfinite(value):
        raise ValueError(f"init must be a finite number, got {value}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {jnp.dtype(dtype)}.")
    return jnp.full((num_losses,), init, dtype)


def _aligned(log_vars: ArrayLike, losses: ArrayLike) -> tuple[jax.Array, jax.Array]:
    losses = loss_vector(losses)
    log_vars = loss_vector(log_vars, losses.shape[0], what="log_vars")
    dtype = _checks.compute_dtype(log_vars, losses)
    return log_vars.astype(dtype), losses.astype(dtype)


def uncertainty_loss(log_vars: ArrayLike, losses: ArrayLike) -> jax.Array:
    r"""Kendall et al.'s uncertainty-weighted loss, to minimise over the model and s.

    .. math::
        L = \sum_i \frac{l_i}{2 e^{s_i}} + \frac{s_i}{2},
        \qquad \frac{\partial L}{\partial s_i} = \frac{1}{2} - \frac{l_i}{2 e^{s_i}},

    so for a constant loss the optimum is :math:`s_i = \log l_i`: a task's weight
    :math:`1/(2e^{s_i})` falls as its loss (its homoscedastic noise) grows. The same
    formula is used for every loss (the paper's regression form; its classification
    form differs by constants, as in the LibMTL and Nash-MTL code).

    Args:
      log_vars: s, shape (T,), a parameter trained by the model's optimizer.
      losses: the scalar losses, shape (T,).

    Returns:
      The scalar loss, float32 or wider.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from yoto_jax.baselines import UNCERTAINTY_KEY, init_log_vars, uncertainty_loss
      >>> params = {"model": jnp.ones(3), UNCERTAINTY_KEY: init_log_vars(2)}
      >>> def loss_fn(params):
      ...     losses = jnp.stack([jnp.sum(params["model"] ** 2), jnp.sum(params["model"])])
      ...     return uncertainty_loss(params[UNCERTAINTY_KEY], losses)
      >>> grads = jax.grad(loss_fn)(params)  # one optimizer steps both

    References:
      Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses
      for Scene Geometry and Semantics", CVPR 2018, Eq. (7).
    """
    log_vars, losses = _aligned(log_vars, losses)
    return jnp.sum(0.5 * jnp.exp(-log_vars) * losses + 0.5 * log_vars)


def uncertainty_weights(log_vars: ArrayLike) -> jax.Array:
    r"""The weights :math:`1 / (2 e^{s_i})` that uncertainty weighting puts on the losses.

    Args:
      log_vars: s, shape (T,).

    Returns:
      An array of shape (T,), float32 or wider (for logging; no gradient is stopped).
    """
    log_vars = loss_vector(log_vars, what="log_vars")
    return 0.5 * jnp.exp(-log_vars)
