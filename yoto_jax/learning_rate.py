"""``learned_learning_rate``: a step size α = exp(ν) learnt in the same run by hypergradient descent."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from yoto_jax import _checks

DEFAULT_META_LEARNING_RATE = 0.05
"""How far log α moves per step while the cosine's sign is consistent, in nats."""

COSINE_DECAY = 0.8
"""b₁: the decay of the cosine's running mean m_t (a horizon of about 5 steps)."""

SQUARE_DECAY = 0.99
"""b₂: the decay of the cosine's running second moment v_t (about 100 steps)."""

SHRINK_THRESHOLD = 0.5
"""τ: a cosine below −τ (the step overshot a valley) adds the fast shrink."""

SHRINK_RATIO = 20.0
"""The fast shrink at a cosine of −1, in units of β: ν falls by up to (1 + 20)β a step."""

HORIZON = 33.0
"""The ``horizon`` the benchmark measures (docs/learning_rate.md), chosen there by
leave-one-task-out over 1, 10, 33 and 100 on the runs started 10× too small (every fold
picks 33; over the runs started 10× too large as well the folds disagree)."""

RAMP_FROM = 0.01
"""The ``ramp_from`` the benchmark measures (docs/learning_rate.md): safe from about
100× too large a rate."""

VALIDATION_GRADS = "validation_grads"
"""The extra argument of :func:`learned_learning_rate`'s update that carries a held-out
loss's gradient (:func:`yoto_jax.trainer`'s ``validation_fn`` passes it)."""

EPSILON = 1e-8


class LearnedLearningRateState(NamedTuple):
    """The state of :func:`learned_learning_rate`; α is ``exp(log_learning_rate)``."""

    log_learning_rate: jax.Array  # ν = log α, shape=(), float32
    previous_direction: optax.Updates  # d_{t-1}, the direction the last step took (before -α)
    direction_trace: optax.Updates | None  # e, the discounted past directions; None at H = 1
    inner_state: optax.OptState  # the direction's state
    count: jax.Array  # shape=(), int32
    cosine_mean: jax.Array  # m_t, the cosine's running mean (not bias-corrected), float32
    cosine_square: jax.Array  # v_t, its running second moment (not bias-corrected), float32
    rule_start: jax.Array  # shape=(), int32: the step the rule began at; -1 while ramping


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


def _hypergradient_signal(updates: optax.Updates, validation_grads: Any) -> optax.Updates:
    """The gradient the hypergradient reads: ``validation_grads`` when given (checked to
    have the updates' tree structure), else the incoming ``updates``."""
    if validation_grads is None:
        return updates
    expected, got = jax.tree.structure(updates), jax.tree.structure(validation_grads)
    if expected != got:
        raise ValueError(
            f"{VALIDATION_GRADS} must be a tree like the updates (the gradient of a held-out "
            f"loss in the same params), expected the structure {expected}, got {got}. Inside "
            "optax.partition, build it with mask_compatible_extra_args=True so each group "
            "gets its own part."
        )
    for update, grad in zip(jax.tree.leaves(updates), jax.tree.leaves(validation_grads)):
        if jnp.shape(update) != jnp.shape(grad):
            raise ValueError(
                f"{VALIDATION_GRADS} must have the updates' shapes, got a leaf of shape "
                f"{jnp.shape(grad)} where the updates have {jnp.shape(update)}."
            )
    return validation_grads


def learned_learning_rate(
    direction: optax.GradientTransformation,
    learning_rate: float | jax.Array,
    *,
    meta_learning_rate: float | jax.Array = DEFAULT_META_LEARNING_RATE,
    ramp_from: float | None = None,
    horizon: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
    r"""``direction`` scaled by a learnt −α, with ν = log α updated every step.

    Each step t, with g_t the incoming gradient and d_{t-1} the previous step's
    direction (the output of ``direction``, before −α):

    .. math::
        c_t = \frac{⟨g_t, d_{t-1}⟩}{‖g_t‖\,‖d_{t-1}‖}, \quad
        m_t = b_1 m_{t-1} + (1 - b_1) c_t, \quad
        v_t = b_2 v_{t-1} + (1 - b_2) c_t^2,

        ν_t = ν_{t-1} + β \Big(\frac{\hat m_t}{\sqrt{\hat v_t} + ε}
              + K \frac{\min(c_t + τ, 0)}{1 - τ}\Big), \qquad
        u_t = -e^{ν_t}\, d_t ,

    with :math:`\hat m_t, \hat v_t` Adam's bias-corrected moments (b₁ = 0.8, b₂ = 0.99),
    τ = 0.5 and K = 20 (``SHRINK_RATIO``). The last step moved the params by
    :math:`-α_{t-1} d_{t-1}`, so the current loss's derivative in the previous step
    size is :math:`∂f_t/∂α_{t-1} = -⟨g_t, d_{t-1}⟩` (Baydin et al.'s hypergradient);
    its cosine :math:`c_t` has the same sign and no units. ν follows the cosine's
    *signal-to-noise ratio*: while the sign is consistent (too small a step, or too
    large a step on a deterministic problem), :math:`\hat m/\sqrt{\hat v} ≈ ±1` and
    ν moves β nats a step, whatever the loss's or the gradients' scale (like YOTO's
    µ); under minibatch noise whose cosine averages zero, the ratio averages zero
    too, so α does not drift, and a weak mean (a few hundredths against a noise of
    0.1) moves it slowly. α rests where the new gradient is, on average, orthogonal
    to the last step, the exact line search's condition. A cosine below −τ (the
    iterate overshot a valley) adds up to K·β nats of shrink at once: past the
    stability edge the error grows geometrically, and the running mean alone reacts
    too late (docs/learning_rate.md has the measurements). With
    ``meta_learning_rate=0`` this is
    ``optax.chain(direction, optax.scale_by_learning_rate(learning_rate))``.

    With ``ramp_from=r`` (0 < r <= 1) the run starts with a ramp, a bracketing search
    for the step size below ``learning_rate``: the first step takes α = r ·
    ``learning_rate``, then α doubles every step while :math:`c_t > 0` (the last step
    was too short for the current loss), up to ``learning_rate``. The first
    :math:`c_t \le 0` halves α back to the last rate that was still too short, and
    reaching ``learning_rate`` ends the ramp there; the rule above then takes over,
    its moments started afresh. The first step is the one the rule cannot correct
    (nothing has been seen yet), and with Adam it moves every parameter by about α:
    one step at 10× a tuned rate can leave a network in a state no later step size
    repairs (docs/learning_rate.md). The ramp never steps beyond ``learning_rate``, so
    it only guards against that rate being too large; it costs about
    :math:`\log_2(1/r)` shorter steps where the rate is fine.

    With ``horizon=H`` > 1 the moments read, instead of :math:`c_t`, the cosine of
    :math:`g_t` with a trace of the past directions,

    .. math::
        e_t = γ\, e_{t-1} + d_{t-1}, \qquad γ = 1 - 1/H,

    (e = d_{t-1} at H = 1, the rule above), the derivative of the current loss for an
    equal shift of the last ~H step sizes rather than the last one's only. The
    one-step derivative is greedy: minimising the next loss favours too small a
    step (Wu et al.'s short-horizon bias), and under minibatch noise it rests below
    the tuned rate. The ramp and the fast shrink still read :math:`c_t`. The trace
    costs one more buffer the size of the params. ``HORIZON`` (33) is the value the
    task benchmark chose by leave-one-task-out (from too small a rate); on a
    noiseless ill-conditioned quadratic with the Adam direction it learns less than
    the default H = 1 (docs/learning_rate.md has both measurements).

    **Validation-driven.** Passed ``validation_grads=`` (an extra argument of
    ``update``: the gradient :math:`h_t` of a held-out batch's loss at the same params,
    a tree like the updates), the rule reads :math:`h_t` in place of :math:`g_t`
    everywhere above: :math:`-⟨h_t, d_{t-1}⟩` is the derivative of the held-out loss in
    the last step size, so α follows what generalises rather than what fits the
    training batches (Auto-λ's one-step lookahead, for a step size). The direction
    still comes from :math:`g_t`. It costs one more gradient per step;
    ``yoto_jax.trainer``'s ``step(..., validation_fn=...)`` computes and passes it.

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
      ramp_from: None (no ramp: the first step takes ``learning_rate``), or r in
        (0, 1], the fraction of ``learning_rate`` the ramp starts from (e.g. 0.01:
        safe from up to about 100× too large a rate). No ramp where β = 0.
      horizon: H >= 1, a concrete number: the steps whose directions the
        hypergradient looks back over (1: the last step only, Baydin et al.'s).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`LearnedLearningRateState`; :func:`learning_rate_of` reads α from it. Its
      ``update`` takes the optional extra argument ``validation_grads`` (above).

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
      Wu et al., "Understanding Short-Horizon Bias in Stochastic Meta-Optimization",
      ICLR 2018.
      Liu et al., "Auto-Lambda: Disentangling Dynamic Task Relationships", TMLR 2022.
    """
    if not isinstance(direction, optax.GradientTransformation):
        raise TypeError(
            "direction must be an optax.GradientTransformation (e.g. optax.scale_by_adam() or "
            f"optax.identity()), got {type(direction).__name__}."
        )
    _checks.positive(learning_rate, "learning_rate")
    _checks.non_negative(meta_learning_rate, "meta_learning_rate")
    horizon_value = _checks.concrete_float(horizon)
    if horizon_value is None or not (math.isfinite(horizon_value) and horizon_value >= 1.0):
        raise ValueError(
            "horizon must be a concrete finite number >= 1, the steps the rule looks back "
            f"over (1: the last step only); got {horizon!r}."
        )
    trace_decay = 1.0 - 1.0 / horizon_value
    ramp_value = None if ramp_from is None else _checks.concrete_float(ramp_from)
    if ramp_value is not None and not (math.isfinite(ramp_value) and 0.0 < ramp_value <= 1.0):
        raise ValueError(
            "ramp_from must be None (no ramp) or a finite number in (0, 1], the fraction of "
            f"learning_rate the first step takes; got {ramp_value}."
        )
    direction = optax.with_extra_args_support(direction)

    ramp_start = 1.0 if ramp_from is None else ramp_from

    def init_fn(params: optax.Params) -> LearnedLearningRateState:
        ramping = jnp.asarray(ramp_from is not None) & (jnp.asarray(meta_learning_rate) > 0)
        start = jnp.where(ramping, ramp_start, 1.0)
        return LearnedLearningRateState(
            log_learning_rate=jnp.log(jnp.asarray(learning_rate, jnp.float32) * start),
            previous_direction=optax.tree.zeros_like(params),
            direction_trace=optax.tree.zeros_like(params) if trace_decay > 0 else None,
            inner_state=direction.init(params),
            count=jnp.zeros([], jnp.int32),
            cosine_mean=jnp.zeros([], jnp.float32),
            cosine_square=jnp.zeros([], jnp.float32),
            rule_start=jnp.where(ramping, -1, 0).astype(jnp.int32),
        )

    def update_fn(updates, state, params=None, **extra_args: Any):
        signal = _hypergradient_signal(updates, extra_args.get(VALIDATION_GRADS))
        cosine = _cosine(signal, state.previous_direction)
        ramping = state.rule_start < 0
        if trace_decay > 0:
            # e_t = γ e_{t-1} + d_{t-1}, the directions since the rule began, discounted
            kept = jnp.where(ramping, 0.0, trace_decay)
            direction_trace = jax.tree.map(
                lambda e, d: (kept * e + d).astype(d.dtype),
                state.direction_trace,
                state.previous_direction,
            )
            horizon_cosine = _cosine(signal, direction_trace)
        else:
            direction_trace, horizon_cosine = None, cosine
        # nats from the current α up to learning_rate: each earlier ramp step doubled it
        headroom = -jnp.log(jnp.asarray(ramp_start)) - jnp.log(2.0) * (state.count - 1)
        ramp_step = ramping & (state.count > 0)  # the first step has no cosine to read
        ramp_ends = ramp_step & ((cosine <= 0) | (headroom <= 0))
        doubling = ramp_step & ~ramp_ends
        # the rule's steps: from its first step with a previous direction of its own
        seen = ~ramping & (state.count > state.rule_start)
        b1, b2 = COSINE_DECAY, SQUARE_DECAY
        mean = jnp.where(seen, b1 * state.cosine_mean + (1 - b1) * horizon_cosine, 0.0)
        square = jnp.where(seen, b2 * state.cosine_square + (1 - b2) * horizon_cosine**2, 0.0)
        k = jnp.maximum(state.count - state.rule_start, 1).astype(jnp.float32)
        ratio = (mean / (1 - b1**k)) / (jnp.sqrt(square / (1 - b2**k)) + EPSILON)
        tau = SHRINK_THRESHOLD
        overshoot = jnp.minimum(cosine + tau, 0.0) / (1 - tau)  # in [-1, 0]
        agreement = jnp.where(seen, ratio + SHRINK_RATIO * overshoot, 0.0)
        ramp = jnp.where(ramp_ends & (cosine <= 0), -jnp.log(2.0), 0.0)
        ramp = jnp.where(doubling, jnp.minimum(jnp.log(2.0), headroom), ramp)
        log_learning_rate = state.log_learning_rate + meta_learning_rate * agreement + ramp
        new_direction, inner_state = direction.update(
            updates, state.inner_state, params, **extra_args
        )
        alpha = jnp.exp(log_learning_rate)
        new_updates = jax.tree.map(lambda d: (-alpha * d).astype(d.dtype), new_direction)
        return new_updates, LearnedLearningRateState(
            log_learning_rate=log_learning_rate.astype(jnp.float32),
            previous_direction=new_direction,
            direction_trace=direction_trace,
            inner_state=inner_state,
            count=optax.safe_increment(state.count),
            cosine_mean=mean.astype(jnp.float32),
            cosine_square=square.astype(jnp.float32),
            rule_start=jnp.where(ramp_ends, state.count, state.rule_start).astype(jnp.int32),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
