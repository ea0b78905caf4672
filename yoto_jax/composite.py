"""The YOTO composite-loss layer: loss weights λ = softmax([0, µ]) and Σ λ_i l_i.

Two forms give the same numbers:

* arrays: ``mu`` of shape (K,), ``losses`` of shape (K+1,) with the primary first;
* named: ``mu`` a dict of K auxiliary names to scalar logits, ``losses`` a dict
  with those names plus exactly one more key, the primary loss.

The primary logit µ_0 ≡ 0 is fixed and is not a parameter, so λ_i / λ_0 = e^{µ_i}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike, DTypeLike

from yoto_jax import _checks

DEFAULT_EPS = 1.0
"""Default initial weight of each auxiliary loss relative to the primary: 1, uniform
weights (chosen on the task suite by leave-one-task-out; see the README's "Defaults")."""

DEFAULT_PRIMARY_FLOOR = 0.0
"""Default least weight of the primary loss: none (see the README's "Defaults")."""

DEFAULT_LOSS_FLOOR = 0.8
"""Default floor on every loss: each weight is at least 0.8/T, so the learnt weights
stay within 20 % of uniform. Chosen on the task suite by the worst case against equal
weights, at two training lengths (see the README's "Defaults")."""

Logits = jax.Array | Mapping[str, ArrayLike]
Losses = ArrayLike | Mapping[str, ArrayLike]


def _logit_vector(mu: ArrayLike) -> jax.Array:
    mu = _checks.floating_array(mu, "mu")
    if mu.ndim != 1 or mu.shape[0] < 1:
        raise ValueError(
            f"mu must have shape (K,) with K >= 1 auxiliary logits, got shape {mu.shape}."
        )
    return mu


def _named_logit_vector(mu: Mapping[str, ArrayLike]) -> tuple[list[str], jax.Array]:
    if not mu:
        raise ValueError("mu must name at least one auxiliary loss, got an empty dict.")
    names = sorted(mu)
    logits = [_checks.scalar(mu[name], f"mu[{name!r}]") for name in names]
    return names, jnp.stack(logits).astype(_checks.compute_dtype(*logits))


def _full_logits(mu: jax.Array) -> jax.Array:
    """[0, µ] in the compute dtype (float32 or wider)."""
    mu = mu.astype(_checks.compute_dtype(mu))
    return jnp.concatenate([jnp.zeros((1,), mu.dtype), mu])


UNIFORM = "uniform"
"""``primary_floor=UNIFORM``: m = 1/(K+1), the primary never weighs less than under
uniform weights (the default of :func:`yoto_jax.yoto` and the Flax ``LossWeights``
modules until 2026-12-04)."""


def resolve_floor(primary_floor: ArrayLike | str, num_aux: int) -> ArrayLike:
    """``primary_floor`` as a number: ``UNIFORM`` ("uniform") is 1/(K+1).

    Example:
      >>> resolve_floor("uniform", num_aux=3), resolve_floor(0.1, num_aux=3)
      (0.25, 0.1)
    """
    if isinstance(primary_floor, str):
        if primary_floor != UNIFORM:
            raise ValueError(
                f"primary_floor must be a number in [0, 1) or {UNIFORM!r}, got {primary_floor!r}."
            )
        return 1.0 / (num_aux + 1)
    _checks.unit_interval(primary_floor, "primary_floor")
    return primary_floor


def _floored(weights: jax.Array, primary_floor: Any) -> jax.Array:
    """m e_0 + (1 − m) λ: the primary's weight is at least m."""
    _checks.unit_interval(primary_floor, "primary_floor")
    floor = jnp.asarray(primary_floor, weights.dtype)
    return (1.0 - floor) * weights + floor * jax.nn.one_hot(
        0, weights.shape[0], dtype=weights.dtype
    )


def _mixed(uniform_part: jax.Array, rest: jax.Array, loss_floor: Any) -> jax.Array:
    """m u + (1 − m) r: every loss keeps at least m/T of the weight (u: the uniform term)."""
    _checks.unit_interval(loss_floor, "loss_floor", closed=True)
    floor = jnp.asarray(loss_floor, rest.dtype)
    return floor * uniform_part + (1.0 - floor) * rest


def loss_weights(
    mu: Logits,
    primary: str = "primary",
    *,
    primary_floor: ArrayLike = 0.0,
    loss_floor: ArrayLike = 0.0,
) -> jax.Array | dict[str, jax.Array]:
    r"""The loss weights λ = softmax([0, µ]), optionally with floors.

    .. math::
        λ_0 = \frac{1}{1 + \sum_j e^{µ_j}}, \quad λ_i = e^{µ_i} λ_0 ;
        \quad λ'_i = m_0\,[i = 0] + (1 - m_0)\,λ_i ;
        \quad λ''_i = \frac{m}{T} + (1 - m)\,λ'_i .

    With ``primary_floor`` m_0 > 0 the primary's weight is at least m_0; with
    ``loss_floor`` m > 0 every weight is at least m/T of the T = K+1 losses (m = 1:
    equal weights). The paper's weights have no floor; :func:`yoto_jax.yoto` and the
    Flax ``LossWeights`` use ``DEFAULT_LOSS_FLOOR`` = 0.8.

    Args:
      mu: auxiliary logits, an array of shape (K,) or a dict of K names to scalars.
      primary: the name under which the primary weight is returned for a dict ``mu``.
      primary_floor: m_0 in [0, 1).
      loss_floor: m in [0, 1].

    Returns:
      An array of shape (K+1,) in float32 or wider, primary first; for a dict
      ``mu``, a dict with ``primary`` and every auxiliary name.

    Example:
      >>> import jax.numpy as jnp
      >>> loss_weights(jnp.zeros(2))
      Array([0.33333334, 0.33333334, 0.33333334], dtype=float32)
      >>> loss_weights(jnp.zeros(2), primary_floor=0.5)
      Array([0.6666667 , 0.16666667, 0.16666667], dtype=float32)
      >>> loss_weights(jnp.array([-2.0]), loss_floor=0.8).round(4)  # each >= 0.8 / 2
      Array([0.5762, 0.4238], dtype=float32)
    """
    if isinstance(mu, Mapping):
        names, vector = _named_logit_vector(mu)
        if primary in mu:
            raise KeyError(f"primary name {primary!r} is also an auxiliary name in mu.")
        return dict(zip([primary, *names], _weights(vector, primary_floor, loss_floor)))
    return _weights(_logit_vector(mu), primary_floor, loss_floor)


def _weights(mu: jax.Array, primary_floor: Any, loss_floor: Any) -> jax.Array:
    floored = _floored(jax.nn.softmax(_full_logits(mu)), primary_floor)
    return _mixed(jnp.full_like(floored, 1.0 / floored.shape[0]), floored, loss_floor)


def aligned_losses(mu: Logits, losses: Losses) -> tuple[jax.Array, jax.Array]:
    """Aligned (µ of shape (K,), l of shape (K+1,)) for either form."""
    if isinstance(mu, Mapping):
        names, vector = _named_logit_vector(mu)
        primary = _checks.primary_name(mu, losses)
        values = [_checks.scalar(losses[name], f"losses[{name!r}]") for name in [primary, *names]]
        return vector, jnp.stack(values).astype(_checks.compute_dtype(*values))
    if isinstance(losses, Mapping):
        raise TypeError("mu is an array, so losses must be an array of shape (K+1,), not a dict.")
    vector = _logit_vector(mu)
    losses = _checks.floating_array(losses, "losses")
    if losses.shape != (vector.shape[0] + 1,):
        raise ValueError(
            f"losses must have shape (K+1,) = ({vector.shape[0] + 1},): the primary loss first, "
            f"then one per logit of mu (shape {vector.shape}); got shape {losses.shape}."
        )
    return vector, losses


def yoto_composite(
    mu: Logits, losses: Losses, *, primary_floor: ArrayLike = 0.0, loss_floor: ArrayLike = 0.0
) -> jax.Array:
    r"""The YOTO composite loss :math:`L_e = \sum_{i=0}^{K} λ_i l_i`, λ = softmax([0, µ]).

    Its gradients are the weighted-sum gradient for the model and, for the logits,

    .. math::
        \frac{\partial L_e}{\partial µ_i} = λ_i (l_i - L_e) \qquad (i \ge 1),

    so a weight rises while its loss is below the weighted mean and falls while it
    is above: the losses compete. Computed in float32 or wider; a NaN or inf loss
    propagates (so ``optax.apply_if_finite`` can skip the step).

    With ``primary_floor`` m_0 the weights are :math:`λ' = m_0 e_0 + (1 - m_0) λ`, and
    with ``loss_floor`` m they are mixed with uniform weights, :math:`m/T + (1 - m) λ'`
    (:func:`loss_weights`): the composite is :math:`m \bar l + (1 - m) \sum_i λ'_i l_i`
    with :math:`\bar l` the mean loss, and the logits' gradient is scaled by
    (1 − m)(1 − m_0).

    Args:
      mu: auxiliary logits, shape (K,), or a dict of K auxiliary names to scalars.
      losses: scalar losses, shape (K+1,) with the primary first, or a dict with the
        names of ``mu`` plus exactly one more key, the primary loss.
      primary_floor: m_0 in [0, 1): a lower bound on the primary's weight (0: the paper's).
      loss_floor: m in [0, 1]: every weight is at least m/T (0: the paper's).

    Returns:
      The scalar composite loss.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> mu = init_mu(["segmentation", "consistency"], eps=0.1)
      >>> losses = {"depth": 1.0, "segmentation": 2.0, "consistency": 0.5}
      >>> loss = yoto_composite(mu, losses)  # (1 + 0.1 * 2 + 0.1 * 0.5) / 1.2
      >>> round(float(loss), 4)
      1.0417
      >>> jax.grad(yoto_composite)(jnp.zeros(1), jnp.array([1.0, 3.0]))  # λ_1 (l_1 − L_e)
      Array([0.5], dtype=float32)

    References:
      Sakaridis, "You Only Train Once", arXiv:2506.04349, Eq. (5)-(6).
    """
    vector, loss_values = aligned_losses(mu, losses)
    dtype = _checks.compute_dtype(vector, loss_values)
    _checks.unit_interval(primary_floor, "primary_floor")
    floor = jnp.asarray(primary_floor, dtype)
    loss_values = loss_values.astype(dtype)
    composite = _weighted_sum(vector.astype(dtype), loss_values, floor)
    return _mixed(jnp.mean(loss_values), composite, loss_floor)


@jax.custom_jvp
def _weighted_sum(mu: jax.Array, losses: jax.Array, floor: jax.Array) -> jax.Array:
    """Σ λ'_i l_i, λ' = m e_0 + (1 − m) softmax([0, µ]); differentiated in closed form."""
    return jnp.dot(_floored(jax.nn.softmax(_full_logits(mu)), floor), losses)


def _weighted_sum_jvp(primals, tangents):
    """Eq. (6) in closed form, from the forward pass's λ:

    ∂/∂l_i = λ'_i,  ∂/∂µ_i = (1 − m) λ_i (l_i − Σ_j λ_j l_j),  ∂/∂m = l_0 − Σ_j λ_j l_j.

    One reduction (Σ λ l) instead of the softmax's backward pass through the
    concatenated logits (fewer kernels per training step); equal to autodiff to
    float32 rounding. Zero tangents stay symbolic, so only the needed terms are built.
    """
    mu, losses, floor = primals
    mu_dot, losses_dot, floor_dot = tangents
    weights = jax.nn.softmax(_full_logits(mu))
    floored = _floored(weights, floor)
    terms = []
    if not isinstance(losses_dot, SymbolicZero):
        terms.append(jnp.dot(floored, losses_dot))
    if not (isinstance(mu_dot, SymbolicZero) and isinstance(floor_dot, SymbolicZero)):
        mean = jnp.dot(weights, losses)
        if not isinstance(mu_dot, SymbolicZero):
            terms.append((1.0 - floor) * jnp.dot(weights[1:] * (losses[1:] - mean), mu_dot))
        if not isinstance(floor_dot, SymbolicZero):
            terms.append(floor_dot * (losses[0] - mean))
    value = jnp.dot(floored, losses)
    return value, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(value)


_weighted_sum.defjvp(_weighted_sum_jvp, symbolic_zeros=True)


def init_mu(
    num_aux_or_names: int | Sequence[str],
    eps: float = DEFAULT_EPS,
    dtype: DTypeLike = jnp.float32,
) -> jax.Array | dict[str, jax.Array]:
    """Initial logits µ_i = log ε: each auxiliary starts at ε times the primary's weight.

    Args:
      num_aux_or_names: the number K >= 1 of auxiliary losses, or their names.
      eps: the initial weight ratio λ_i / λ_0, a finite number > 0.
      dtype: a floating dtype for the logits.

    Returns:
      An array of shape (K,), or a dict of names to scalars when names were given.

    Example:
      >>> init_mu(2, eps=0.1)
      Array([-2.3025851, -2.3025851], dtype=float32)
    """
    _checks.positive(eps, "eps")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {jnp.dtype(dtype)}.")
    logit = math.log(float(eps))
    if isinstance(num_aux_or_names, str):
        raise TypeError("num_aux_or_names must be an int or a sequence of names, not one string.")
    if isinstance(num_aux_or_names, Sequence):
        names = list(num_aux_or_names)
        if not names or not all(isinstance(name, str) for name in names):
            raise ValueError(f"expected a non-empty sequence of string names, got {names!r}.")
        if len(set(names)) != len(names):
            raise ValueError(f"auxiliary names must be unique, got {names!r}.")
        return {name: jnp.asarray(logit, dtype) for name in names}
    if isinstance(num_aux_or_names, bool) or not isinstance(num_aux_or_names, int):
        raise TypeError(
            f"num_aux_or_names must be an int or a sequence of names, got {num_aux_or_names!r}."
        )
    if num_aux_or_names < 1:
        raise ValueError(f"the number of auxiliary losses must be >= 1, got {num_aux_or_names}.")
    return jnp.full((num_aux_or_names,), logit, dtype)


def logit_vector_of(mu: Logits) -> jax.Array:
    """µ as a (K,) vector, from an array or a dict (sorted by name)."""
    return _named_logit_vector(mu)[1] if isinstance(mu, Mapping) else _logit_vector(mu)


def regularizer(mu: Logits) -> jax.Array:
    r"""YOTO's regulariser ("hyperparameter decay" loss) on the logits.

    .. math::
        R(µ) = \sum_{i=0}^{K} λ_i \log λ_i + \sum_{i=1}^{K} \operatorname{softplus}(µ_i)

    The negated entropy is smallest at uniform λ (a uniformity prior); the softplus
    keeps the optimum bounded. The trained objective is :math:`L_e + ρR`.

    Args:
      mu: auxiliary logits, shape (K,), or a dict of K names to scalars.

    Returns:
      The scalar R(µ), float32 or wider.

    Example:
      >>> import jax.numpy as jnp
      >>> regularizer(jnp.zeros(1))  # log(1/2) + softplus(0) = -log 2 + log 2
      Array(0., dtype=float32)
    """
    logits = _full_logits(logit_vector_of(mu))
    log_weights = jax.nn.log_softmax(logits)
    negated_entropy = jnp.sum(jnp.exp(log_weights) * log_weights)
    return negated_entropy + jnp.sum(jax.nn.softplus(logits[1:]))


def regularizer_grad(mu: ArrayLike) -> jax.Array:
    r"""The closed-form gradient of :func:`regularizer` for array logits.

    .. math::
        \frac{\partial R}{\partial µ_i} = λ_i (\log λ_i + H(λ)) + σ(µ_i),
        \qquad H(λ) = -\sum_j λ_j \log λ_j .

    Args:
      mu: auxiliary logits, shape (K,).

    Returns:
      An array of shape (K,) in float32 or wider.

    Example:
      >>> import jax.numpy as jnp
      >>> regularizer_grad(jnp.zeros(2))  # uniform λ: log λ_i + H = 0, σ(0) = 1/2
      Array([0.5, 0.5], dtype=float32)
    """
    mu = _logit_vector(mu)
    mu = mu.astype(_checks.compute_dtype(mu))
    # λ as the composite computes it (XLA computes it once per training step), and
    # log λ_i + H(λ) = µ_i − Σ_j λ_j µ_j (µ_0 = 0) without a logarithm: log λ_i's
    # logsumexp cancels. For accuracy the logits are shifted by their maximum, as in
    # the softmax; µ_0 = 0 is written out rather than concatenated (one kernel less).
    weights = jax.nn.softmax(_full_logits(mu))
    top = jnp.maximum(jnp.max(mu), 0.0)
    shifted = mu - top
    mean = jnp.dot(weights[1:], shifted) - weights[0] * top  # Σ_j λ_j (µ_j − top), j ≥ 0
    return weights[1:] * (shifted - mean) + jax.nn.sigmoid(mu)


def _named(mu: ArrayLike, auxiliary: Sequence[str]) -> dict[str, jax.Array]:
    mu = _logit_vector(mu)
    if len(auxiliary) != mu.shape[0]:
        raise ValueError(
            f"mu has {mu.shape[0]} logits but {len(auxiliary)} auxiliary names were given: "
            f"{list(auxiliary)}."
        )
    return dict(zip(auxiliary, mu))


def named_composite(
    mu: ArrayLike,
    losses: Mapping[str, ArrayLike],
    primary: str,
    auxiliary: Sequence[str],
    *,
    primary_floor: ArrayLike = 0.0,
    loss_floor: ArrayLike = 0.0,
) -> jax.Array:
    """:func:`yoto_composite` of a dict of losses, for array logits whose names are known.

    Args:
      mu: logits of shape (K,), in the order of ``auxiliary``.
      losses: scalar losses named ``primary`` and every name in ``auxiliary``.
      primary: the primary loss's name.
      auxiliary: the K auxiliary names.
      primary_floor: m_0 in [0, 1), see :func:`loss_weights`.
      loss_floor: m in [0, 1], see :func:`loss_weights`.

    Returns:
      The scalar composite loss.

    Example:
      >>> import jax.numpy as jnp
      >>> named_composite(jnp.zeros(1), {"depth": 1.0, "flip": 0.5}, "depth", ["flip"])
      Array(0.75, dtype=float32)
    """
    named = _named(mu, auxiliary)
    found = _checks.primary_name(named, losses)
    if found != primary:
        raise KeyError(f"losses must hold the primary loss {primary!r}, got {found!r} instead.")
    return yoto_composite(named, losses, primary_floor=primary_floor, loss_floor=loss_floor)


def named_loss_weights(
    mu: ArrayLike,
    primary: str,
    auxiliary: Sequence[str],
    *,
    primary_floor: ArrayLike = 0.0,
    loss_floor: ArrayLike = 0.0,
) -> dict[str, jax.Array]:
    """λ by name for array logits, e.g. for logging: ``{primary: λ_0, aux_i: λ_i}``.

    Example:
      >>> import jax.numpy as jnp
      >>> named_loss_weights(jnp.zeros(1), "depth", ["flip"])
      {'depth': Array(0.5, dtype=float32), 'flip': Array(0.5, dtype=float32)}
    """
    return loss_weights(
        _named(mu, auxiliary), primary=primary, primary_floor=primary_floor, loss_floor=loss_floor
    )
