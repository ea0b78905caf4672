r"""Auto-λ (Liu, James, Davison and Johns, TMLR 2022): weights learnt by a one-step lookahead."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from yoto_jax import _checks
from yoto_jax.weighting import (
    Params,
    Weighting,
    WeightingStep,
    loss_vector,
    require_key,
)

DEFAULT_AUTO_LAMBDA_INIT = 0.1
"""The initial weight of every loss (the reference's ``autol_init``)."""

DEFAULT_AUTO_LAMBDA_META_LEARNING_RATE = 1e-4
"""The learning rate of the weights' Adam (the reference's ``autol_lr``, dense tasks)."""


class AutoLambdaState(NamedTuple):
    """Auto-λ's weights, their optimizer's state and the number of steps taken."""

    weights: jax.Array  # shape=(T,): λ, the loss weights
    opt_state: Any  # the state of λ's own optimizer (Adam by default)
    count: jax.Array  # shape=(), int32: steps taken


def _tree_dot(a: Params, b: Params) -> jax.Array:
    """Σ a·b over the leaves of two trees of one structure, at full precision, float32 or wider."""
    leaves = [
        jnp.vdot(x, y, precision=jax.lax.Precision.HIGHEST).astype(_checks.compute_dtype(x, y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    ]
    return sum(leaves, jnp.zeros((), _checks.compute_dtype(*jax.tree.leaves(a))))


def _hypergradient(
    losses_fn: Callable[[Params], jax.Array],
    model_params: Params,
    train_grad: Params,
    val_grad_fn: Callable[[Params], Params],
    learning_rate: jax.Array,
    weight_decay: Any,
    finite_difference: float | None,
) -> jax.Array:
    r"""-α ∇l_j(θ)·∇L_val(θ') for each j, with θ' = θ - α (train_grad + w θ), shape (T,).

    ``train_grad`` is :math:`\sum_j λ_j \nabla l_j(θ)`. The products ∇l_j(θ)·d for
    :math:`d = \nabla L_\text{val}(θ')` are one forward-mode pass (``jax.jvp``) of the
    loss vector along d, or the reference's central difference with step
    ``finite_difference`` / ‖d‖.
    """
    virtual = jax.tree.map(
        lambda p, g: (p - learning_rate * (g + weight_decay * p)).astype(p.dtype),
        model_params,
        train_grad,
    )
    direction = val_grad_fn(virtual)
    if finite_difference is None:
        products = jax.jvp(losses_fn, (model_params,), (direction,))[1]
    else:
        norm = jnp.sqrt(_tree_dot(direction, direction))
        eps = finite_difference / jnp.where(norm > 0, norm, 1.0)

        def shifted(sign: float) -> jax.Array:
            return losses_fn(
                jax.tree.map(
                    lambda p, d: (p + sign * eps * d).astype(p.dtype), model_params, direction
                )
            )

        products = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps)
    return -learning_rate * products


def _check_arity(val_loss_fn: Callable[..., jax.Array], takes_key: bool) -> None:
    """Raises if ``val_loss_fn``'s signature (where Python can read one) cannot take the
    arguments ``val_takes_key`` says it is called with."""
    try:
        signature = inspect.signature(val_loss_fn)
    except (TypeError, ValueError):  # a builtin or C function: nothing to read
        return
    args = ("model_params", "key") if takes_key else ("model_params",)
    try:
        signature.bind(*args)
    except TypeError as error:
        hint = (
            "give it a second parameter for the key, or pass val_takes_key=False"
            if takes_key
            else "pass val_takes_key=True if it takes the step's key"
        )
        raise TypeError(
            f"val_loss_fn is called as val_loss_fn({', '.join(args)}) with "
            f"val_takes_key={takes_key}, but its signature is {signature}: {hint}."
        ) from error


def auto_lambda(
    val_loss_fn: Callable[..., jax.Array],
    *,
    learning_rate: optax.ScalarOrSchedule,
    meta_learning_rate: float = DEFAULT_AUTO_LAMBDA_META_LEARNING_RATE,
    weight_init: float = DEFAULT_AUTO_LAMBDA_INIT,
    update_every: int = 1,
    weight_decay: float = 0.0,
    val_takes_key: bool = False,
    finite_difference: float | None = None,
    meta_tx: optax.GradientTransformation | None = None,
) -> Weighting:
    r"""Auto-λ: loss weights λ learnt by descending a validation loss one step ahead.

    At a step with model parameters θ and weights λ, the reference takes a *virtual*
    SGD step of the model on the weighted training loss, evaluates the validation
    loss there, and descends that loss in λ:

    .. math::
        θ'(λ) = θ - α \Big(\sum_j λ_j \nabla l_j(θ) + w\, θ\Big), \qquad
        \frac{\partial L_\text{val}(θ'(λ))}{\partial λ_j}
            = -α\, \nabla l_j(θ)^\top \nabla L_\text{val}(θ').

    θ' is linear in λ and :math:`L_\text{val}` depends on λ only through θ', so the
    right-hand side is the exact gradient of the unrolled validation loss: there is
    no first-order truncation (DARTS's "first-order" variant would give zero here).
    The reference approximates the products :math:`\nabla l_j(θ)^\top d`, with
    :math:`d = \nabla L_\text{val}(θ')` (its ``compute_hessian``, the mixed second
    derivative :math:`\nabla^2_{λθ} \sum_j λ_j l_j` applied to d), by a central
    difference, :math:`(l_j(θ + εd) - l_j(θ - εd)) / 2ε` with ε = 0.01/‖d‖. Here
    they are one forward-mode pass instead, ``jax.jvp(losses_fn, (θ,), (d,))``:
    exact, no step size to choose (``finite_difference=0.01`` reproduces the
    reference's approximation). λ then takes one step of its own optimizer, Adam at
    ``meta_learning_rate`` by default, on that gradient, and *then* the model's
    gradient is taken with the updated weights, :math:`\sum_j λ^\text{new}_j \nabla
    l_j(θ)` (the reference's order: the meta step first, then the model's step).

    The reference neither clamps nor normalises λ: weights may grow past 1 or turn
    negative, and the primary loss is weighted like the others.

    **State, not params.** λ and its Adam state live in the weighting's state
    (:class:`AutoLambdaState`, like FAMO's logits), not in ``params`` trained by the
    caller's optimizer: the reference updates λ *before* the model's step and trains
    the model with the new λ, which one optimizer step over
    ``{"model", "weighting"}`` could not do (λ would be updated after the model and
    the model would use the old one); λ's optimizer never sees the model's weight
    decay or schedule, as in the reference (a separate ``torch.optim.Adam``); and on
    the steps between updates (``update_every`` > 1) λ and its Adam state stay as
    they are, rather than taking Adam steps on zero gradients.

    **The lookahead's step** α is ``learning_rate``: the model's learning rate (the
    reference passes its SGD's current learning rate, cosine-annealed; pass the same
    schedule here, it is evaluated at the weighting's step count). The reference's
    virtual step is the model's next SGD step, momentum included: it adds the SGD's
    momentum buffer times the momentum, and its weight decay. ``weight_decay`` adds
    the latter (torch's coupled decay, :math:`w θ` inside the step); the momentum
    buffer lives in the caller's optimizer state, which a weighting does not see, so
    the virtual step here is plain SGD. Both shift only where the validation
    gradient is taken, not the form of the hypergradient.

    **The validation loss.** ``val_loss_fn(model_params) -> scalar`` is the held-out
    objective; the reference's is the sum of the primary losses on a batch from a
    second, differently shuffled loader over the *training* set. For a new
    validation batch at every step, either pass ``val_takes_key=True`` and draw the
    batch from the step's key inside ``val_loss_fn(model_params, key)``, or build
    the weighting inside the jitted step from a function closing over that step's
    batch: the factory is cheap and pure, and the state's structure does not depend
    on ``val_loss_fn``::

        def train_step(state, batch, val_batch):
            weighting = auto_lambda(lambda p: val_loss(p, val_batch), learning_rate=lr)
            return yoto_jax.trainer(weighting, optax.sgd(lr)).step(
                state, lambda p: losses(p, batch))

    **Cost per step.** On an update step: one forward and two backward passes of the
    training losses (the virtual step's gradient with λ, the model's with the new
    λ; both from one ``jax.vjp``), one forward and one backward pass of the
    validation loss at θ', and one forward-mode pass (``jax.jvp``: the training
    losses' forward pass again, carrying the tangent d). The reference does four
    forward passes of the training losses (the virtual step, the two of the central
    difference, the model's step) and two backward passes. Between updates:
    one forward and one backward pass, as for fixed weights. Forward mode needs a
    ``losses_fn`` that JAX can differentiate forwards (a ``jax.custom_vjp`` inside it
    cannot); ``finite_difference`` needs forward passes only.

    Args:
      val_loss_fn: ``val_loss_fn(model_params) -> scalar``, or
        ``val_loss_fn(model_params, key)`` with ``val_takes_key``: the validation
        objective, differentiated at the virtual parameters θ'.
      learning_rate: α, the virtual step's size, > 0: the model's learning rate, a
        float or an optax schedule of the step count (may be traced).
      meta_learning_rate: the learning rate of λ's Adam, > 0 (the reference's
        default: 1e-4 for NYUv2; its README gives 3e-5 for CityScapes, and its
        CIFAR-100 script uses 3e-4; may be traced).
      weight_init: the initial weight of every loss (0.1 in the reference; may be
        traced).
      update_every: update λ every this many steps, from the first (an int >= 1; 1
        in the reference).
      weight_decay: w >= 0, the coupled weight decay of the virtual step (the
        reference uses its SGD's, 1e-4 or 5e-4; 0 by default here since the
        model's optimizer is the caller's; may be traced).
      val_takes_key: call ``val_loss_fn(model_params, key)`` with the step's key
        (then required).
      finite_difference: None for the exact forward-mode product; a number > 0 for
        the reference's central difference with step ``finite_difference`` / ‖d‖
        (the reference: 0.01).
      meta_tx: replaces λ's optimizer (default
        ``optax.adam(meta_learning_rate)``, torch's Adam defaults).

    Returns:
      A :class:`~yoto_jax.Weighting` with no params and an :class:`AutoLambdaState`;
      its weights are λ (the weights applied at the step, after its meta update).

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import auto_lambda
      >>> target = jnp.array([1.0, -1.0])
      >>> losses_fn = lambda w: jnp.stack([(w - target[0]) ** 2, (w - target[1]) ** 2])
      >>> val_loss_fn = lambda w: (w - 1.0) ** 2  # the held-out objective: the primary's
      >>> method = auto_lambda(val_loss_fn, learning_rate=0.1, meta_learning_rate=0.01)
      >>> params, state = method.init(2)
      >>> result = method.step(losses_fn, jnp.float32(0.0), params, state)
      >>> result.weights.round(4)  # Adam's first step: the primary's weight up, the other's down
      Array([0.11, 0.09], dtype=float32)

    References:
      Liu, James, Davison and Johns, "Auto-Lambda: Disentangling Dynamic Task
      Relationships", TMLR 2022; https://github.com/lorenmt/auto-lambda
      (``auto_lambda.py``, ``trainer_dense.py``).
    """
    if not callable(val_loss_fn):
        raise TypeError(
            f"val_loss_fn must be a function of the model's params returning a scalar, got "
            f"{type(val_loss_fn).__name__}."
        )
    _check_arity(val_loss_fn, _checks.boolean(val_takes_key, "val_takes_key"))
    _checks.positive(learning_rate, "learning_rate")
    _checks.positive(meta_learning_rate, "meta_learning_rate")
    _checks.non_negative(weight_decay, "weight_decay")
    update_every = _checks.positive_int(update_every, "update_every")
    if finite_difference is not None:
        _checks.positive(finite_difference, "finite_difference")
    init_value = _checks.concrete_float(weight_init)
    if init_value is not None and not math.isfinite(init_value):
        raise ValueError(f"weight_init must be a finite number, got {init_value}.")
    tx = optax.adam(meta_learning_rate) if meta_tx is None else meta_tx

    def init(num_losses: int) -> tuple[dict[str, jax.Array], AutoLambdaState]:
        num_losses = _checks.positive_int(num_losses, "num_losses")
        weights = jnp.full((num_losses,), weight_init, jnp.float32)
        return {}, AutoLambdaState(
            weights=weights, opt_state=tx.init(weights), count=jnp.zeros([], jnp.int32)
        )

    def weights(params: dict[str, jax.Array], state: AutoLambdaState) -> jax.Array:
        return state.weights

    def step(losses_fn, model_params, params, state: AutoLambdaState, *, key=None) -> WeightingStep:
        num_losses = state.weights.shape[0]
        if val_takes_key:
            key = require_key(key, "Auto-λ with val_takes_key=True")

        def checked_losses(model_params: Params) -> jax.Array:
            return loss_vector(losses_fn(model_params), num_losses)

        def val_loss(model_params: Params) -> jax.Array:
            value = val_loss_fn(model_params, key) if val_takes_key else val_loss_fn(model_params)
            return _checks.scalar(value, "val_loss_fn(model_params)")

        raw_losses, vjp_fn = jax.vjp(checked_losses, model_params)
        dtype = raw_losses.dtype
        alpha = learning_rate(state.count) if callable(learning_rate) else learning_rate
        alpha = jnp.asarray(alpha, dtype)

        def meta_update(operand: tuple[jax.Array, Any]) -> tuple[jax.Array, Any]:
            lam, opt_state = operand
            (train_grad,) = vjp_fn(lam.astype(dtype))
            hypergradient = _hypergradient(
                checked_losses,
                model_params,
                train_grad,
                jax.grad(val_loss),
                alpha,
                weight_decay,
                finite_difference,
            )
            updates, opt_state = tx.update(hypergradient.astype(lam.dtype), opt_state, lam)
            return optax.apply_updates(lam, updates), opt_state

        operand = (state.weights, state.opt_state)
        if update_every == 1:
            lam, opt_state = meta_update(operand)
        else:
            lam, opt_state = jax.lax.cond(
                state.count % update_every == 0, meta_update, lambda x: x, operand
            )
        (model_grads,) = vjp_fn(lam.astype(dtype))
        new_state = AutoLambdaState(
            weights=lam, opt_state=opt_state, count=optax.safe_increment(state.count)
        )
        return WeightingStep(jax.lax.stop_gradient(raw_losses), lam, model_grads, {}, new_state)

    return Weighting(init, step, weights=weights)
