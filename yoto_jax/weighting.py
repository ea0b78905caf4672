r"""The weighting contract: every loss-weighting method as one NamedTuple of pure functions.

A multi-loss model is trained on T = K+1 losses, the primary first. A loss-weighting
method decides, at every step, how the T losses (or their T gradients) become one
update of the model. In ``yoto_jax`` every method, YOTO and each baseline, is a
factory returning a :class:`Weighting`, so that one training loop runs them all and
swapping methods is one line::

    weighting = yoto_jax.yoto()                 # or baselines.dwa(100), baselines.mgda(...)
    params, state = weighting.init(num_losses)  # its learnable params and its state
    result = weighting.step(losses_fn, model_params, params, state, key=key)
    # apply result.model_grads and result.grads with one optimizer, then:
    state = weighting.after_update(losses_fn, new_model_params, result)

One rule holds for all methods:

* ``params`` is a dict of the method's *learnable* arrays (YOTO's µ under ``"yoto_mu"``,
  uncertainty weighting's log-variances, GradNorm's logits; ``{}`` if none). They are
  trained by the caller's optimizer together with the model, from the gradients
  ``result.grads``: one pytree ``{"model": ..., "weighting": params}``, one optimizer,
  ``weighting.optimizer(tx)``, which is ``tx`` itself except for YOTO (where it adds
  µ's hyperparameter decay and µ's own Adam, see :func:`yoto_jax.yoto_optimizer`).
* ``state`` is everything else the method carries between steps (loss statistics,
  FAMO's logits and their Adam state, GradNorm's initial losses), updated by the
  method itself: ``result.state``, then ``after_update``.
* Randomness comes in as the explicit ``key`` of each step (RLW's weights, PCGrad's
  task orders); deterministic methods ignore it.

:func:`yoto_jax.trainer` is that loop, written once.

**Weights, one convention.** ``result.weights`` and ``weighting.weights(params, state)``
are the coefficients λ the method puts on the losses' gradients, on the method's own
scale: the model's update direction is :math:`\sum_i λ_i \nabla l_i` (YOTO's λ sums to 1,
DWA's and GradNorm's to T, uncertainty weighting's are :math:`1/(2σ_i^2)`, a fixed
weighting's are what you gave it; Nash-MTL's are its α, Auto-λ's its λ, IMTL's its
loss scales). Methods that combine the shared gradients without loss weights (PCGrad,
MGDA, CAGrad, Aligned-MTL, UPGrad) report ones. To compare methods,
or to turn weights into the grid's parametrisation (the primary's weight fixed at 1),
use :func:`relative_weights`: :math:`λ_i / λ_0`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, Self

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from yoto_jax import _checks

Params = Any
LossesFn = Callable[[Params], jax.Array]
"""``losses_fn(model_params) -> (T,)``: the losses on this step's batch, primary first."""


class WeightingStep(NamedTuple):
    """What a weighting's ``step`` returns.

    Attributes:
      losses: the (T,) losses at the model's parameters before the step (no gradient).
      weights: the (T,) weights λ applied at this step (see the module's convention).
      model_grads: the update direction for the model's parameters, a tree like them
        (a gradient: the optimizer negates and scales it).
      grads: the gradients of the weighting's learnable ``params``, a dict like them.
      state: the weighting's state after the step (before ``after_update``).
    """

    losses: jax.Array
    weights: jax.Array
    model_grads: Params
    grads: dict[str, jax.Array]
    state: Any


class StepFn(Protocol):
    def __call__(
        self,
        losses_fn: LossesFn,
        model_params: Params,
        params: dict[str, jax.Array],
        state: Any,
        *,
        key: jax.Array | None = None,
    ) -> WeightingStep: ...


def keep_state(losses_fn: LossesFn, new_model_params: Params, result: WeightingStep) -> Any:
    """The ``after_update`` of methods that need none: the state ``step`` returned."""
    del losses_fn, new_model_params
    return result.state


def same_optimizer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """The ``optimizer`` of methods whose params (if any) train with the model's ``tx``."""
    return tx


class _WeightingFields(NamedTuple):
    init: Callable[[int], tuple[dict[str, jax.Array], Any]]
    step: StepFn
    after_update: Callable[[LossesFn, Params, WeightingStep], Any]
    weights: Callable[[dict[str, jax.Array], Any], jax.Array]
    optimizer: Callable[[optax.GradientTransformation], optax.GradientTransformation]


class Weighting(_WeightingFields):
    """A loss-weighting method as pure, jittable functions (see the module docstring).

    A NamedTuple of five functions, in this order; ``after_update`` defaults to
    :func:`keep_state` and ``optimizer`` to :func:`same_optimizer`, so a method that
    needs neither is ``Weighting(init, step, weights=weights)``.

    Attributes:
      init: ``init(num_losses) -> (params, state)``: the learnable params (a dict of
        arrays, ``{}`` if none) and the state, for T = ``num_losses`` losses.
      step: ``step(losses_fn, model_params, params, state, *, key=None) ->``
        :class:`WeightingStep`: one step's gradients for the model and for ``params``.
        ``losses_fn(model_params)`` returns the (T,) losses on this step's batch and
        may be called, differentiated or re-evaluated freely.
      after_update: ``after_update(losses_fn, new_model_params, result) -> state``,
        called after the optimizer step with the updated model (FAMO looks at the
        losses after the step on the same batch); most methods return
        ``result.state`` (:func:`keep_state`, the default).
      weights: ``weights(params, state) -> (T,)``: the current weights, for logging.
      optimizer: ``optimizer(tx) -> tx'``: the optimizer over the tree
        ``{"model": ..., "weighting": params}``, built from the model's ``tx``
        (default: ``tx`` itself, :func:`same_optimizer`).

    Example:
      >>> import jax.numpy as jnp, yoto_jax
      >>> weighting = yoto_jax.baselines.uncertainty()  # or yoto_jax.yoto(), ...
      >>> params, state = weighting.init(2)
      >>> losses_fn = lambda w: jnp.array([w**2, (w - 1.0) ** 2])
      >>> result = weighting.step(losses_fn, jnp.float32(0.5), params, state)
      >>> result.losses, result.weights  # the weights 1/(2σ²) at s = 0
      (Array([0.25, 0.25], dtype=float32), Array([0.5, 0.5], dtype=float32))
    """

    __slots__ = ()

    def __new__(
        cls,
        init: Callable[[int], tuple[dict[str, jax.Array], Any]],
        step: StepFn,
        after_update: Callable[[LossesFn, Params, WeightingStep], Any] = keep_state,
        weights: Callable[[dict[str, jax.Array], Any], jax.Array] | None = None,
        optimizer: Callable[
            [optax.GradientTransformation], optax.GradientTransformation
        ] = same_optimizer,
    ) -> Self:
        if weights is None:
            raise TypeError("Weighting needs weights(params, state), the current (T,) weights.")
        return super().__new__(cls, init, step, after_update, weights, optimizer)


def weighted_loss(weights: ArrayLike, losses: ArrayLike) -> jax.Array:
    r"""The model's loss :math:`\sum_i \operatorname{sg}(λ_i)\, l_i` for constant weights λ.

    No gradient flows into ``weights`` (``jax.lax.stop_gradient``): the methods that
    use this form (equal weights, DWA, RLW, FAMO) set λ from loss statistics, not by
    descending the model's loss.

    Args:
      weights: λ, shape (T,).
      losses: the scalar losses, shape (T,).

    Returns:
      The scalar weighted sum, float32 or wider.
    """
    losses = loss_vector(losses)
    weights = _checks.floating_array(weights, "weights")
    if weights.shape != losses.shape:
        raise ValueError(
            f"weights must have the shape of losses {losses.shape}, got {weights.shape}."
        )
    return jnp.dot(jax.lax.stop_gradient(weights).astype(losses.dtype), losses)


def objective_weighting(
    init: Callable[[int], tuple[dict[str, jax.Array], Any]],
    objective: Callable[[dict[str, jax.Array], Any, jax.Array, jax.Array | None], jax.Array] | None,
    applied: Callable[[dict[str, jax.Array], Any, jax.Array, jax.Array | None], jax.Array],
    weights: Callable[[dict[str, jax.Array], Any], jax.Array],
    *,
    next_state: Callable[[Any, jax.Array], Any] | None = None,
    after_update: Callable[[LossesFn, Params, WeightingStep], Any] = keep_state,
    optimizer: Callable[
        [optax.GradientTransformation], optax.GradientTransformation
    ] = same_optimizer,
) -> Weighting:
    """A :class:`Weighting` whose gradients are those of a scalar objective of the losses.

    ``objective(params, state, losses, key)`` is differentiated with respect to the
    model's parameters (through ``losses``) and to ``params``: one forward and one
    backward pass; None is :func:`weighted_loss` of the applied weights (methods that
    set constant weights from loss statistics). ``applied(params, state, losses, key)``
    gives the weights applied at the step; ``next_state(state, losses)`` the state
    after it (default: unchanged). Methods of this shape: fixed and equal weights, YOTO,
    uncertainty weighting, DWA, RLW, FAMO.
    """

    def step(
        losses_fn: LossesFn,
        model_params: Params,
        params: dict[str, jax.Array],
        state: Any,
        *,
        key: jax.Array | None = None,
    ) -> WeightingStep:
        def total(model_params: Params, params: dict[str, jax.Array]):
            losses = losses_fn(model_params)
            if objective is None:
                return weighted_loss(applied(params, state, losses, key), losses), losses
            return objective(params, state, losses, key), losses

        grad_fn = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)
        (_, losses), (model_grads, grads) = grad_fn(model_params, params)
        losses = jax.lax.stop_gradient(losses)
        new_state = state if next_state is None else next_state(state, losses)
        return WeightingStep(
            losses, applied(params, state, losses, key), model_grads, grads, new_state
        )

    return Weighting(init, step, after_update, weights, optimizer)


def require_key(key: jax.Array | None, method: str) -> jax.Array:
    """``key``, or a clear error for a random method called without one."""
    if key is None:
        raise ValueError(
            f"{method} is random: pass a PRNG key to its step, step(..., key=key) "
            "(one new key per step, e.g. jax.random.fold_in(key, step))."
        )
    dtype = getattr(key, "dtype", None)
    if dtype is None or not (
        jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) or dtype == jnp.uint32
    ):
        raise TypeError(
            f"{method} needs a PRNG key as key (jax.random.key(seed), one new key per step), "
            f"got {key!r}."
        )
    return key


def fixed_weights(weights: ArrayLike) -> Weighting:
    r"""Fixed loss weights: the model minimises :math:`\sum_i w_i l_i`.

    The weighting a grid search trains once per row of
    :func:`yoto_jax.loss_weight_grid`; ``weights`` may be traced (vmapped over the
    grid's rows).

    Args:
      weights: w, shape (T,), primary first: finite and >= 0 (checked when concrete).

    Returns:
      A :class:`Weighting` with no params and no state.

    Example:
      >>> import jax.numpy as jnp, yoto_jax
      >>> weighting = yoto_jax.fixed_weights(jnp.array([1.0, 0.1]))
      >>> params, state = weighting.init(2)
      >>> losses_fn = lambda w: jnp.array([w**2, (w - 1.0) ** 2])
      >>> result = weighting.step(losses_fn, jnp.float32(0.5), params, state)
      >>> result.model_grads  # d/dw (w² + 0.1 (w − 1)²) at 0.5
      Array(0.9, dtype=float32)
    """
    weights = _checks.floating_array(weights, "weights")
    if weights.ndim != 1:
        raise ValueError(f"weights must have shape (T,), one per loss, got {weights.shape}.")
    if not isinstance(weights, jax.core.Tracer):
        values = np.asarray(weights)
        if not np.all(np.isfinite(values) & (values >= 0)):
            raise ValueError(f"weights must hold finite numbers >= 0, got {values.tolist()}.")

    def init(num_losses: int) -> tuple[dict[str, jax.Array], Any]:
        num_losses = _checks.positive_int(num_losses, "num_losses")
        if num_losses != weights.shape[0]:
            raise ValueError(
                f"fixed_weights has {weights.shape[0]} weights but {num_losses} losses."
            )
        return {}, ()

    def applied(params, state, losses, key) -> jax.Array:
        return weights.astype(losses.dtype)

    def objective(params, state, losses, key) -> jax.Array:
        losses = loss_vector(losses, weights.shape[0])
        return jnp.dot(applied(params, state, losses, key), losses)

    return objective_weighting(init, objective, applied, lambda params, state: weights)


def loss_vector(losses: ArrayLike, num_losses: int | None = None, what: str = "losses"):
    """``losses`` as a floating array of shape (T,), T >= 1 (or T = ``num_losses``)."""
    losses = _checks.floating_array(losses, what)
    if losses.ndim != 1 or losses.shape[0] < 1:
        raise ValueError(
            f"{what} must be a vector of shape (T,), one entry per loss (stack the reduced scalar "
            f"losses with jnp.stack, primary first), got shape {losses.shape}."
        )
    if num_losses is not None and losses.shape[0] != num_losses:
        raise ValueError(
            f"{what} has {losses.shape[0]} entries, expected {num_losses}: one per loss (as the "
            "weighting was initialised)."
        )
    return losses.astype(_checks.compute_dtype(losses))


def transformed_losses(
    losses_fn: Callable[..., ArrayLike],
    num_losses: int,
    transform: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """``(*args) -> (transform(losses), losses)``, ``losses`` the checked loss vector of
    ``losses_fn(*args)`` (``transform`` None: the losses themselves): the function the
    gradient methods differentiate with ``has_aux=True`` (e.g. IMTL's scaled losses)."""

    def differentiated(*args: Any) -> tuple[jax.Array, jax.Array]:
        losses = loss_vector(losses_fn(*args), num_losses)
        return (losses if transform is None else transform(losses)), losses

    return differentiated


def relative_weights(weights: ArrayLike) -> jax.Array:
    r"""Weights relative to the primary's, :math:`λ_i / λ_0`: the grid's parametrisation.

    Any method's weights (see the module's convention) become comparable with a row
    of :func:`yoto_jax.loss_weight_grid`, whose primary weight is 1. For YOTO without
    a floor, :math:`λ_i / λ_0 = e^{µ_i}`.

    Args:
      weights: λ, shape (..., T), primary first.

    Returns:
      An array of the same shape with column 0 equal to 1.

    Example:
      >>> import jax.numpy as jnp, yoto_jax
      >>> yoto_jax.relative_weights(jnp.array([0.5, 0.25, 0.25]))
      Array([1. , 0.5, 0.5], dtype=float32)
    """
    weights = _checks.floating_array(weights, "weights")
    if weights.ndim < 1:
        raise ValueError("weights must have a last axis of size T, one per loss.")
    return weights / weights[..., :1]
