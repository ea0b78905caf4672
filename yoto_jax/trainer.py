"""The multi-loss training step, written once for every weighting: :func:`trainer`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from yoto_jax import _checks
from yoto_jax.learning_rate import VALIDATION_GRADS, LearnedLearningRateState
from yoto_jax.weighting import LossesFn, Params, Weighting

MODEL = "model"
WEIGHTING = "weighting"


class TrainerState(NamedTuple):
    """Everything a multi-loss training run carries between steps.

    Attributes:
      params: ``{"model": model params, "weighting": the weighting's params}``, the one
        tree the optimizer updates.
      opt_state: the optimizer's state over ``params`` (with ``skip_nonfinite``, a
        :class:`NonfiniteSkipState` holding it).
      weighting_state: the weighting's own state.
    """

    params: dict[str, Any]
    opt_state: optax.OptState
    weighting_state: Any


class StepLog(NamedTuple):
    """What one step reports.

    Attributes:
      losses: the (T,) losses before the step.
      weights: the (T,) weights applied at the step.
      skipped: with ``trainer(..., skip_nonfinite=True)``, a bool scalar: whether the
        step was skipped (its losses, weights, gradients or new weighting state were
        not finite); None otherwise.
    """

    losses: jax.Array
    weights: jax.Array
    skipped: jax.Array | None = None


class NonfiniteSkipState(NamedTuple):
    """``TrainerState.opt_state`` with ``trainer(..., skip_nonfinite=True)``.

    The field names are those of ``optax.apply_if_finite``'s state.

    Attributes:
      inner_state: the optimizer's state, as without the guard.
      notfinite_count: the number of consecutive skipped steps, int32 (0 after a
        step that was applied).
      total_notfinite: the number of skipped steps since ``init``, int32.
    """

    inner_state: optax.OptState
    notfinite_count: jax.Array
    total_notfinite: jax.Array


class Trainer(NamedTuple):
    """The functions of :func:`trainer`.

    Attributes:
      init: ``init(model_params, num_losses) -> TrainerState``.
      step: ``step(state, losses_fn, key=None, *, validation_fn=None) -> (TrainerState,
        StepLog)``.
      weights: ``weights(state) -> (T,)``, the weighting's ``weights(params, state)``
        for the state's params and weighting state. For methods whose weights are a
        function of their params and state (fixed and equal weights, YOTO,
        uncertainty weighting, DWA, GradNorm, IMTL, and the gradient-combination
        methods, which report ones) these are the weights the next step applies,
        ``log.weights``. The others depend on the next step's batch or key, so no
        function of the state can give them: Auto-λ's and Nash-MTL's are those the
        last step applied (the next step updates them first); FAMO's are
        z = softmax(ξ), and a step applies :math:`z_i / l_i` normalised to sum to 1
        with that step's losses l; RLW's are the expectation 1/T of the weights a
        step draws from its key (``log.weights`` is the draw).
    """

    init: Callable[[Params, int], TrainerState]
    step: Callable[..., tuple[TrainerState, StepLog]]
    weights: Callable[[TrainerState], jax.Array]


def _all_finite(tree: Any) -> jax.Array:
    """Whether every floating entry of ``tree`` is finite (a bool scalar; True if none)."""
    checks = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def _validation_grads(
    validation_fn: Callable[[Params], jax.Array], model_params: Params, opt_state: Any
) -> Params:
    """The gradient of ``validation_fn`` at ``model_params``, checked to be that of a
    floating scalar, for an optimizer that reads it (a learned learning rate)."""
    found = jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, LearnedLearningRateState))
    if not any(isinstance(s, LearnedLearningRateState) for s in found):
        raise ValueError(
            "validation_fn is read only by yoto_jax.learned_learning_rate, and the optimizer "
            "holds none: drop validation_fn, or build tx with learned_learning_rate."
        )
    value = jax.eval_shape(validation_fn, model_params)
    if getattr(value, "shape", None) != () or not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(
            "validation_fn(model_params) must return a floating scalar (a held-out loss), "
            f"got {value}."
        )
    return jax.grad(validation_fn)(model_params)


def trainer(
    weighting: Weighting, tx: optax.GradientTransformation, *, skip_nonfinite: bool = False
) -> Trainer:
    r"""One multi-loss training step for any :class:`~yoto_jax.Weighting`.

    A step takes ``losses_fn(model_params) -> (T,)``, the losses on this step's batch
    (primary first), and

    1. asks the weighting for the model's and its own params' gradients
       (``weighting.step``);
    2. applies both with one optimizer, ``weighting.optimizer(tx)``, over the tree
       ``{"model": ..., "weighting": ...}`` (for YOTO this adds µ's regulariser and
       µ's own Adam; for the others it is ``tx``);
    3. lets the weighting look at the updated model (``weighting.after_update``).

    The functions are pure: jit them, ``jax.vmap`` them over configurations (a grid:
    build the weighting inside the vmapped function from traced hyperparameters), or
    shard the state with ``jax.jit``'s shardings.

    **Non-finite steps.** With ``skip_nonfinite=True`` a step whose losses, weights,
    gradients (the model's and the weighting's) or new weighting state hold a NaN or
    an inf is skipped as a whole: the returned state is the input state, bitwise
    (model params, the weighting's params and state, the optimizer's state), but for
    the counters of :class:`NonfiniteSkipState`, which replaces ``opt_state`` and
    holds the optimizer's state as ``inner_state``; ``log.skipped`` says which steps
    were skipped. ``optax.apply_if_finite`` around ``tx`` cannot do this: it sees
    only the gradients, so the state a weighting updates itself (FAMO's logits,
    Auto-λ's λ, DWA's and GradNorm's loss statistics) takes the NaN, and after its
    ``max_consecutive_errors`` it applies the update anyway; around ``tx`` alone
    (not ``weighting.optimizer(tx)``) it leaves YOTO's µ unguarded when µ has its own
    optimizer. There is no limit
    here: a run that only sees bad batches stops moving, so watch
    ``total_notfinite``. Values the optimizer makes non-finite from finite gradients
    (an infinite learning rate) are not detected. Under ``jax.vmap`` each member
    skips its own steps.

    **A held-out loss for the learning rate.** ``step(..., validation_fn=f)``, with
    ``f(model_params)`` a scalar loss on a held-out batch, also takes f's gradient at
    the step's params and passes it to the optimizer as the extra argument
    ``validation_grads`` (``{"model": ∇f, "weighting": the weighting's own gradient}``),
    from which :func:`~yoto_jax.learned_learning_rate` learns α instead of from the
    training gradient. It costs one more gradient per step; an optimizer without a
    learned learning rate raises rather than ignore it.

    Args:
      weighting: the loss-weighting method.
      tx: the model's optimizer.
      skip_nonfinite: skip the steps that would write a non-finite value (above).

    Returns:
      A :class:`Trainer` of ``init``, ``step`` and ``weights``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, yoto_jax
      >>> def losses(w, x):  # a primary and an auxiliary loss of one parameter vector
      ...     return jnp.stack([jnp.mean((x @ w - 1.0) ** 2), jnp.mean(w**2)])
      >>> train = yoto_jax.trainer(yoto_jax.yoto(), optax.adam(1e-2))
      >>> state = train.init(jnp.zeros(3), num_losses=2)
      >>> x = jnp.ones((8, 3))
      >>> step = jax.jit(lambda state, key: train.step(state, lambda w: losses(w, x), key))
      >>> for i in range(3):
      ...     state, log = step(state, jax.random.key(i))
      >>> log.losses.shape, log.weights.shape
      ((2,), (2,))
      >>> guarded = yoto_jax.trainer(yoto_jax.yoto(), optax.adam(1e-2), skip_nonfinite=True)
      >>> state = guarded.init(jnp.zeros(3), num_losses=2)
      >>> bad = x.at[0, 0].set(jnp.nan)  # a NaN in the batch: the step is skipped
      >>> state, log = guarded.step(state, lambda w: losses(w, bad))
      >>> bool(log.skipped), int(state.opt_state.total_notfinite), state.params["model"]
      (True, 1, Array([0., 0., 0.], dtype=float32))
    """
    if not isinstance(weighting, Weighting):
        raise TypeError(
            "weighting must be a yoto_jax.Weighting (yoto_jax.yoto(), a method of "
            f"yoto_jax.baselines, ...), got {type(weighting).__name__}; the optimizer is tx."
        )
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(
            "tx must be an optax.GradientTransformation (e.g. optax.adam(1e-3)), got "
            f"{type(tx).__name__}."
        )
    full_tx = optax.with_extra_args_support(weighting.optimizer(tx))

    def init(model_params: Params, num_losses: int) -> TrainerState:
        num_losses = _checks.positive_int(num_losses, "num_losses")
        weighting_params, weighting_state = weighting.init(num_losses)
        params = {MODEL: model_params, WEIGHTING: weighting_params}
        opt_state = full_tx.init(params)
        if skip_nonfinite:
            zero = jnp.zeros([], jnp.int32)
            opt_state = NonfiniteSkipState(opt_state, zero, zero)
        return TrainerState(params, opt_state, weighting_state)

    def applied_step(
        state: TrainerState,
        losses_fn: LossesFn,
        key: jax.Array | None,
        validation_fn: Callable[[Params], jax.Array] | None,
    ) -> tuple[TrainerState, StepLog, jax.Array | None]:
        """The step, unguarded, and (with the guard) whether all it computed is finite."""
        params = state.params
        result = weighting.step(
            losses_fn, params[MODEL], params[WEIGHTING], state.weighting_state, key=key
        )
        grads = {MODEL: result.model_grads, WEIGHTING: result.grads}
        extra_args = {}
        if validation_fn is not None:
            held_out = _validation_grads(validation_fn, params[MODEL], state.opt_state)
            # the weighting's params have no held-out loss: their own gradient stands in
            extra_args[VALIDATION_GRADS] = {MODEL: held_out, WEIGHTING: result.grads}
        updates, opt_state = full_tx.update(grads, state.opt_state, params, **extra_args)
        params = optax.apply_updates(params, updates)
        weighting_state = weighting.after_update(losses_fn, params[MODEL], result)
        checked = (result.losses, result.weights, grads, weighting_state, extra_args)
        finite = _all_finite(checked) if skip_nonfinite else None
        log = StepLog(result.losses, result.weights)
        return TrainerState(params, opt_state, weighting_state), log, finite

    def step(
        state: TrainerState,
        losses_fn: LossesFn,
        key: jax.Array | None = None,
        *,
        validation_fn: Callable[[Params], jax.Array] | None = None,
    ) -> tuple[TrainerState, StepLog]:
        if not skip_nonfinite:
            new_state, log, _ = applied_step(state, losses_fn, key, validation_fn)
            return new_state, log
        guard = state.opt_state
        before = state._replace(opt_state=guard.inner_state)
        new_state, log, finite = applied_step(before, losses_fn, key, validation_fn)
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, before)
        count = jnp.where(finite, 0, guard.notfinite_count + 1).astype(jnp.int32)
        total = guard.total_notfinite + (~finite).astype(jnp.int32)
        kept = kept._replace(opt_state=NonfiniteSkipState(kept.opt_state, count, total))
        return kept, log._replace(skipped=~finite)

    def weights(state: TrainerState) -> jax.Array:
        return weighting.weights(state.params[WEIGHTING], state.weighting_state)

    return Trainer(init, step, weights)
