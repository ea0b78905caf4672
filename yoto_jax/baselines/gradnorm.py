"""GradNorm (Chen et al., ICML 2018): learn weights that balance gradient norms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.baselines._common import selected_leaves
from yoto_jax.baselines._gradients import losses_vjp, per_loss_gradients
from yoto_jax.representation import RepresentationLosses, representation_gradients
from yoto_jax.weighting import Weighting, WeightingStep, loss_vector

DEFAULT_GRADNORM_ALPHA = 1.5
"""The restoring-force strength α of the reference."""

GRADNORM_KEY = "gradnorm_logits"
"""The name of GradNorm's logits s in the weighting's params."""


class GradNormState(NamedTuple):
    """The initial losses l(0) that the training rates are measured against."""

    initial_losses: jax.Array  # shape=(T,): l(0), set on the first step
    count: jax.Array  # shape=(), int32: steps taken


def _weights(logits: ArrayLike) -> jax.Array:
    """w = T softmax(s), shape (T,), float32 or wider."""
    logits = loss_vector(logits, what="logits")
    return logits.shape[0] * jax.nn.softmax(logits)


def gradnorm_balance_loss(
    logits: ArrayLike,
    grad_norms: ArrayLike,
    losses: ArrayLike,
    initial_losses: ArrayLike,
    alpha: float = DEFAULT_GRADNORM_ALPHA,
) -> jax.Array:
    r"""GradNorm's loss on the logits s: gradient norms pulled towards a common rate.

    .. math::
        G_i = w_i \lVert \nabla_W l_i \rVert, \quad
        r_i = \frac{l_i / l_i(0)}{\operatorname{mean}_j (l_j / l_j(0))}, \quad
        L_\text{grad} = \sum_i \big| G_i - \operatorname{sg}\big(\bar G\, r_i^{α}\big) \big|,

    with :math:`w = T \operatorname{softmax}(s)` and :math:`\bar G = \operatorname{mean}_j
    G_j`. Since :math:`w_i > 0`, :math:`\lVert\nabla_W (w_i l_i)\rVert = w_i
    \lVert\nabla_W l_i\rVert`, so only the unweighted norms are needed. Its gradient is

    .. math::
        \frac{\partial L_\text{grad}}{\partial s} = T\, z \odot (u - z^\top u),
        \qquad u_i = \operatorname{sign}(G_i - \bar G r_i^{α}) \lVert\nabla_W l_i\rVert,
        \quad z = \operatorname{softmax}(s).

    Args:
      logits: s, shape (T,).
      grad_norms: :math:`\lVert \nabla_W l_i \rVert`, shape (T,) (treated as constants).
      losses: this step's losses, shape (T,).
      initial_losses: l(0), shape (T,), positive.
      alpha: α >= 0; larger pulls harder towards equal training rates (1.5 in the
        reference; α = 0 equalises the gradient norms; may be traced).

    Returns:
      The scalar :math:`L_\text{grad}`, differentiable in ``logits`` only.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import gradnorm_balance_loss
      >>> ones = jnp.ones(2)  # w = 1, equal rates: G = (1, 3), target Ḡ = 2
      >>> gradnorm_balance_loss(jnp.zeros(2), jnp.array([1.0, 3.0]), ones, ones)
      Array(2., dtype=float32)

    References:
      Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: Gradient Normalization for
      Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018, Eq. (1)-(2).
    """
    _checks.non_negative(alpha, "alpha")
    weights = _weights(logits)
    num_losses = weights.shape[0]
    grad_norms, losses, initial_losses = (
        jax.lax.stop_gradient(loss_vector(x, num_losses, what=what))
        for x, what in (
            (grad_norms, "grad_norms"),
            (losses, "losses"),
            (initial_losses, "initial_losses"),
        )
    )
    norms = weights * grad_norms.astype(weights.dtype)
    rates = losses / initial_losses
    relative_rates = (rates / jnp.mean(rates)).astype(weights.dtype)
    target = jax.lax.stop_gradient(jnp.mean(norms) * relative_rates**alpha)
    return jnp.sum(jnp.abs(norms - target))


def _shared_grad_norms(per_loss_grads: Any, flags: list[bool], num_losses: int) -> jax.Array:
    """‖∇_W l_i‖ for each i from per-loss gradients with a leading axis of size T, over
    the leaves that ``flags`` selects."""
    squared = [
        jnp.sum(jnp.square(g).reshape(num_losses, -1), axis=1)
        for g, selected in zip(jax.tree.leaves(per_loss_grads), flags)
        if selected
    ]
    return jnp.sqrt(sum(squared))


def gradnorm(
    shared: Any | Callable[[Any], Any], alpha: float = DEFAULT_GRADNORM_ALPHA
) -> Weighting:
    r"""GradNorm: weights w = T softmax(s), with s learnt on the gradient-balancing loss.

    The params are the logits, ``{"gradnorm_logits": s}``, from s = 0 (w = 1); the
    state (:class:`GradNormState`) holds l(0), the losses of the first step. One
    ``step`` does GradNorm's step:

    * the model's gradient is :math:`\sum_i \operatorname{sg}(w_i) \nabla l_i` (all of
      the model's parameters);
    * the logits' gradient is :math:`\nabla_s L_\text{grad}`
      (:func:`gradnorm_balance_loss`), with the norms taken over the shared
      parameters W that ``shared`` selects; s gets no gradient from the model's loss.

    Both gradients go to the model's optimizer (``weighting.optimizer(tx)`` is
    ``tx``), as in the reference. ``weights(params, state)`` and ``result.weights``
    are w = T softmax(s), which sums to T.

    W is the caller's choice: the paper takes the last shared layer (cheaper); LibMTL
    takes all shared parameters. Cost: one forward pass, T backward passes for the
    per-loss gradients (vmapped; under ``jit`` XLA drops the parts below W) and one
    for the model's gradient. In representation mode (``losses_fn`` from
    :func:`yoto_jax.representation_losses`) W is the representation z, whatever
    ``shared`` says: the norms are those of :math:`\partial l_i / \partial z` (T
    backward passes through the heads only), and the model's gradient one backward
    pass.

    Deviations from the paper and from LibMTL:

    * the weights are a softmax of logits (as in LibMTL) instead of free weights
      renormalised to sum to T after each step;
    * l(0) is the first step's losses (LibMTL uses the first epoch's mean, with equal
      weights during that epoch);
    * every model parameter, the task-specific heads included, gets the weighted
      gradient :math:`\sum_i w_i \nabla l_i` (so a head's gradient is scaled by its
      task's weight); LibMTL weights the shared parameters' gradients only and leaves
      the heads' unweighted, :math:`\nabla l_i`.

    Args:
      shared: which model parameters are W: a tree of bools with the structure of
        the model's params (or a prefix of it), or a callable returning one from a
        tree of that structure (it is given the model's params, as in every other
        method); True selects.
        The bools must be concrete Python bools.
      alpha: α >= 0 (1.5 in the reference; may be traced).

    Returns:
      A :class:`~yoto_jax.Weighting` with params ``{"gradnorm_logits": s}`` and a
      :class:`GradNormState`.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import gradnorm
      >>> model = {"trunk": jnp.ones(3), "heads": jnp.array([1.0, 2.0])}
      >>> def losses_fn(p):
      ...     feature = jnp.sum(p["trunk"])
      ...     return (p["heads"] * feature - jnp.array([1.0, 0.0])) ** 2
      >>> method = gradnorm(shared={"trunk": True, "heads": False})
      >>> params, state = method.init(2)
      >>> result = method.step(losses_fn, model, params, state)
      >>> result.weights  # w = 2 softmax(0) at the first step
      Array([1., 1.], dtype=float32)
      >>> result.grads["gradnorm_logits"].shape
      (2,)

    References:
      Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: Gradient Normalization for
      Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018, Eq. (1)-(2);
      LibMTL's ``GradNorm``.
    """
    _checks.non_negative(alpha, "alpha")
    if shared is None:
        raise TypeError("shared must select the shared parameters W (a bool tree or a callable).")

    def init(num_losses: int) -> tuple[dict[str, jax.Array], GradNormState]:
        num_losses = _checks.positive_int(num_losses, "num_losses")
        params = {GRADNORM_KEY: jnp.zeros((num_losses,), jnp.float32)}
        return params, GradNormState(
            initial_losses=jnp.ones((num_losses,), jnp.float32), count=jnp.zeros([], jnp.int32)
        )

    def weights(params: dict[str, jax.Array], state: GradNormState) -> jax.Array:
        return _weights(params[GRADNORM_KEY])

    def step(losses_fn, model_params, params, state: GradNormState, *, key=None) -> WeightingStep:
        num_losses = state.initial_losses.shape[0]
        logits = loss_vector(params[GRADNORM_KEY], num_losses, what="logits")
        applied = jax.lax.stop_gradient(_weights(logits))
        if isinstance(losses_fn, RepresentationLosses):  # W is the representation z
            rep = representation_gradients(losses_fn, model_params, num_losses)
            losses, model_grads = rep.losses, rep.weighted_gradient(applied)
            flags = [True] * len(jax.tree.leaves(rep.per_loss))
            grad_norms = _shared_grad_norms(rep.per_loss, flags, num_losses)
        else:
            losses, vjp_fn = losses_vjp(losses_fn, model_params, num_losses)
            (model_grads,) = vjp_fn(applied.astype(losses.dtype))
            per_loss_grads = per_loss_gradients(vjp_fn, losses)
            losses = jax.lax.stop_gradient(losses)
            flags = selected_leaves(shared, model_params)
            grad_norms = _shared_grad_norms(per_loss_grads, flags, num_losses)
        initial_losses = jnp.where(
            state.count == 0, losses.astype(state.initial_losses.dtype), state.initial_losses
        )
        logit_grad = jax.grad(gradnorm_balance_loss)(
            logits, grad_norms, losses, initial_losses, alpha
        )
        new_state = GradNormState(
            initial_losses=initial_losses, count=optax.safe_increment(state.count)
        )
        return WeightingStep(losses, applied, model_grads, {GRADNORM_KEY: logit_grad}, new_state)

    return Weighting(init, step, weights=weights)
