"""``weight_report``: the state of YOTO's loss weights, for logging, with a collapse flag."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.composite import Logits, Losses, _logit_vector_of, _loss_vector, loss_weights

DEFAULT_PRIMARY_THRESHOLD = 0.2
"""The primary weight λ_0 below which a run whose largest weight sits on the auxiliary
with the smallest loss is flagged as collapsed."""


class WeightReport(NamedTuple):
    """What :func:`weight_report` returns; every field is a JAX array (jit-friendly)."""

    weights: jax.Array  # λ, shape (K+1,), primary first (for a dict µ: sorted auxiliary names)
    primary_weight: jax.Array  # λ_0
    entropy: jax.Array  # H(λ) = −Σ λ_i log λ_i, in nats
    normalized_entropy: jax.Array  # H(λ) / log(K+1): 1 for uniform weights, 0 for one-hot
    heaviest: jax.Array  # int32: the index of the largest weight (0 is the primary)
    smallest_loss: jax.Array  # int32: the index of the auxiliary with the smallest loss, or -1
    collapsed: jax.Array  # bool: see weight_report


def weight_report(
    mu: Logits,
    losses: Losses | None = None,
    *,
    primary_threshold: float = DEFAULT_PRIMARY_THRESHOLD,
    primary_floor: ArrayLike = 0.0,
) -> WeightReport:
    r"""Summarises YOTO's weights λ = softmax([0, µ]) and flags a collapse, for logging.

    At its equilibrium YOTO weights the losses like :math:`λ \propto e^{-l/ρ}`
    (tempered by the regulariser), so when µ learns fast a loss that is small by
    construction (a consistency term, a distillation term, an auxiliary in small
    units) can take the weight from the primary loss. The report flags that state:

    .. math::
        \mathrm{collapsed} = \big[λ_0 < \tau\big] \wedge
        \big[\arg\max_i λ_i = \arg\min_{i \ge 1} l_i\big],

    with τ = ``primary_threshold``. Without ``losses`` the second condition becomes
    "an auxiliary holds the largest weight". Pure and jittable: log the fields, or
    act on ``collapsed`` (e.g. set ``primary_floor`` of
    :func:`yoto_jax.yoto_composite`, or rescale the losses).

    Args:
      mu: auxiliary logits, shape (K,), or a dict of K auxiliary names to scalars.
      losses: optional recent losses (e.g. this step's or a running mean), in the form
        :func:`yoto_jax.yoto_composite` takes: shape (K+1,) primary first, or a dict.
      primary_threshold: τ in (0, 1).
      primary_floor: the floor m of the weights being reported (see
        :func:`yoto_jax.loss_weights`); the report is of the weights applied.

    Returns:
      A :class:`WeightReport`.

    Example:
      >>> import jax.numpy as jnp
      >>> report = weight_report(jnp.array([4.0, -3.0]), jnp.array([0.5, 0.01, 0.9]))
      >>> round(float(report.primary_weight), 3), bool(report.collapsed)
      (0.018, True)
    """
    value = _checks.concrete_float(primary_threshold)
    if value is not None and not 0.0 < value < 1.0:
        raise ValueError(f"primary_threshold must be in (0, 1), got {value}.")
    if losses is None:
        vector = _logit_vector_of(mu)
        smallest = jnp.int32(-1)
    else:
        vector, loss_values = _loss_vector(mu, losses)
        smallest = (1 + jnp.argmin(loss_values[1:])).astype(jnp.int32)
    weights = loss_weights(vector, primary_floor=primary_floor)
    entropy = -jnp.sum(jnp.where(weights > 0, weights * jnp.log(weights), 0.0))
    heaviest = jnp.argmax(weights).astype(jnp.int32)
    on_smallest = heaviest > 0 if losses is None else heaviest == smallest
    return WeightReport(
        weights=weights,
        primary_weight=weights[0],
        entropy=entropy,
        normalized_entropy=entropy / jnp.log(weights.shape[0]),
        heaviest=heaviest,
        smallest_loss=smallest,
        collapsed=(weights[0] < primary_threshold) & on_smallest,
    )


def ordered_losses(
    losses: Mapping[str, ArrayLike], primary: str, auxiliary: Sequence[str]
) -> jax.Array:
    """The dict ``losses`` as a (K+1,) vector in the order ``(primary, *auxiliary)``.

    Example:
      >>> ordered_losses({"aux": 0.5, "main": 1.0}, "main", ["aux"])
      Array([1. , 0.5], dtype=float32)
    """
    names = [primary, *auxiliary]
    missing = sorted(set(names) - set(losses))
    if missing:
        raise KeyError(f"losses is missing {missing}; expected the names {names}.")
    values = [_checks.scalar(losses[name], f"losses[{name!r}]") for name in names]
    return jnp.stack(values).astype(_checks.compute_dtype(*values))
