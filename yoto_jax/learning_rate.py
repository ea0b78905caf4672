"""``learned_learning_rate``: a step size α = exp(ν) learnt in the same run by hypergradient descent."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from yoto_jax import _checks

DEFAULT_META_LEARNING_RATE = 0.05
"""How far log α grows per step while consecutive gradient and direction agree, in nats."""

SHRINK_RATIO = 10.0
"""log α falls this many times faster than it grows, for cosines of the same size."""


class LearnedLearningRateState(NamedTuple):
    """The state of :func:`learned_learning_rate`; α is ``exp(log_learning_rate)``."""

    log_learning_rate: jax.Array  # ν = log α, shape=(), float32
    previous_direction: optax.Updates  # d_{t-1}, the direction the last step took (before -α)
    inner_state: optax.OptState  # the direction's state
    count: jax.Array  # shape=(), int32


def learning_rate_of(state: optax.OptState, group: str | None = None) -> jax.Array:
    """The step size α = exp(ν) the next update starts from (for logging).

    ``state`` is a :class:`LearnedLearningRateState`, or any optimizer state holding
    one (e.g. a :func:`yoto_jax.trainer` state's ``opt_state``). With one α per
    parameter group (:func:`learned_learning_rate` in each group of an
    ``optax.partition``), ``group`` names the group's label.

    Example:
      >>> import jax.numpy as jnp, optax, yoto_jax
      >>> tx = yoto_jax.learned_learning_rate(optax.identity(), 0.1)
      >>> round(float(yoto_jax.learning_rate_of(tx.init(jnp.zeros(2)))), 6)
      0.1
      >>> train = yoto_jax.trainer(yoto_jax.yoto(), tx)
      >>> round(float(yoto_jax.learning_rate_of(train.init(jnp.zeros(2), 2).opt_state)), 6)
      0.1
      >>> grouped = optax.partition(
      ...     {"w": yoto_jax.learned_learning_rate(optax.identity(), 0.1),
      ...      "b": yoto_jax.learned_learning_rate(optax.identity(), 0.01)},
      ...     {"w": "w", "b": "b"})
      >>> state = grouped.init({"w": jnp.zeros(2), "b": jnp.zeros(())})
      >>> round(float(yoto_jax.learning_rate_of(state, "b")), 6)
      0.01
    """
    if isinstance(state, LearnedLearningRateState) and group is None:
        return jnp.exp(state.log_learning_rate)
    found = {}  # the dict keys (partition labels) on the path to each ν -> ν
    for path, value in optax.tree_utils.tree_get_all_with_path(state, "log_learning_rate"):
        if getattr(path[-1], "tuple_name", None) == LearnedLearningRateState.__name__:
            labels = tuple(key.key for key in path if isinstance(key, jax.tree_util.DictKey))
            found[labels] = value
    if not found:
        raise ValueError(
            "state holds no LearnedLearningRateState: pass the state of an optimizer built "
            "with yoto_jax.learned_learning_rate."
        )
    if group is not None:
        matches = [value for labels, value in found.items() if group in labels]
    else:
        matches = list(found.values())
    if len(matches) != 1:
        groups = ", ".join(repr(labels[-1]) if labels else "()" for labels in found)
        wanted = "one" if group is None else f"one under the label {group!r}"
        raise ValueError(
            f"state holds {len(found)} learned learning rates (groups {groups}), expected "
            f"{wanted}: pass group= with the optax.partition label of the one to read."
        )
    return jnp.exp(matches[0])


def _cosine(a: optax.Updates, b: optax.Updates) -> jax.Array:
    """⟨a, b⟩ / (‖a‖ ‖b‖) over all leaves in float32; 0 when either is zero."""
    a, b = (optax.tree.cast(tree, jnp.float32) for tree in (a, b))
    norms = optax.tree.norm(a) * optax.tree.norm(b)
    dot = optax.tree.vdot(a, b)
    positive = norms > 0
    return jnp.where(positive, dot / jnp.where(positive, norms, 1.0), 0.0)


def learned_learning_rate(
    direction: optax.GradientTransformation,
    learning_rate: float | jax.Array,
    *,
    meta_learning_rate: float | jax.Array = DEFAULT_META_LEARNING_RATE,
) -> optax.GradientTransformationExtraArgs:
    r"""``direction`` scaled by a learnt −α, with ν = log α updated every step.

    Each step t, with g_t the incoming gradient and d_{t-1} the previous step's
    direction (the output of ``direction``, before −α):

    .. math::
        c_t = \frac{⟨g_t, d_{t-1}⟩}{‖g_t‖\,‖d_{t-1}‖}, \qquad
        ν_t = ν_{t-1} + β \min(c_t, 10 c_t), \qquad
        u_t = -e^{ν_t}\, d_t .

    The last step moved the params by :math:`-α_{t-1} d_{t-1}`, so the current loss's
    derivative in the previous step size is :math:`∂f_t/∂α_{t-1} = -⟨g_t, d_{t-1}⟩`
    (Baydin et al.'s hypergradient), and in ν = log α it is
    :math:`-α_{t-1}⟨g_t, d_{t-1}⟩`. Its scale is the loss's, the gradients' and α's;
    dividing by :math:`α_{t-1}‖g_t‖‖d_{t-1}‖` leaves the cosine, so ν descends the
    hypergradient's direction at a rate β in nats per step whatever the scale
    (like YOTO's µ): α grows by at most :math:`e^β` a step while consecutive steps
    agree (too small a step), shrinks by up to :math:`e^{10β}` while they oppose (too
    large a step, the iterate oscillates) and rests where the new gradient is
    orthogonal to the last step, the exact line search's condition. The shrink is
    faster (``SHRINK_RATIO``) because past the stability edge the error grows
    geometrically while α is still coming down: on an ill-conditioned quadratic the
    symmetric rule overshoots that edge and blows up where this one does not
    (docs/learning_rate.md has the measurements). With ``meta_learning_rate=0`` this is
    ``optax.chain(direction, optax.scale_by_learning_rate(learning_rate))``.

    One α per parameter group: put one ``learned_learning_rate`` in each group of an
    ``optax.partition`` (its labels tree or function names the groups); each group's
    cosine is then taken over its own parameters, and ``learning_rate_of(state, label)``
    reads its α.

    Args:
      direction: the transformation producing the descent direction d_t, e.g.
        ``optax.scale_by_adam()`` (Adam) or ``optax.identity()`` (SGD).
      learning_rate: the initial α > 0; may be traced (e.g. ``jax.vmap`` over initial
        rates: it is read only by ``init``).
      meta_learning_rate: β >= 0, ν's step in nats per step.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`LearnedLearningRateState`; :func:`learning_rate_of` reads α from it.

    Example:
      >>> import jax, jax.numpy as jnp, optax, yoto_jax
      >>> tx = yoto_jax.learned_learning_rate(optax.identity(), 1e-3)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(50):  # f = ½‖x‖²: consecutive gradients agree, α grows
      ...     updates, state = tx.update(params, state)
      ...     params = optax.apply_updates(params, updates)
      >>> round(float(yoto_jax.learning_rate_of(state) / 1e-3), 2)  # e^{49 β}, β = 0.05
      11.59

    References:
      Baydin et al., "Online Learning Rate Adaptation with Hypergradient Descent",
      ICLR 2018.
    """
    if not isinstance(direction, optax.GradientTransformation):
        raise TypeError(
            "direction must be an optax.GradientTransformation (e.g. optax.scale_by_adam() or "
            f"optax.identity()), got {type(direction).__name__}."
        )
    _checks.positive(learning_rate, "learning_rate")
    _checks.non_negative(meta_learning_rate, "meta_learning_rate")
    direction = optax.with_extra_args_support(direction)

    def init_fn(params: optax.Params) -> LearnedLearningRateState:
        return LearnedLearningRateState(
            log_learning_rate=jnp.log(jnp.asarray(learning_rate, jnp.float32)),
            previous_direction=optax.tree.zeros_like(params),
            inner_state=direction.init(params),
            count=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None, **extra_args: Any):
        agreement = _cosine(updates, state.previous_direction)
        agreement = jnp.where(agreement < 0, SHRINK_RATIO * agreement, agreement)
        log_learning_rate = state.log_learning_rate + meta_learning_rate * agreement
        new_direction, inner_state = direction.update(
            updates, state.inner_state, params, **extra_args
        )
        alpha = jnp.exp(log_learning_rate)
        new_updates = jax.tree.map(lambda d: (-alpha * d).astype(d.dtype), new_direction)
        return new_updates, LearnedLearningRateState(
            log_learning_rate=log_learning_rate.astype(jnp.float32),
            previous_direction=new_direction,
            inner_state=inner_state,
            count=optax.safe_increment(state.count),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
