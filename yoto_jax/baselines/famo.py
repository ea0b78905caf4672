"""Fast Adaptive Multitask Optimization (FAMO, Liu et al., NeurIPS 2023)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from yoto_jax import _checks
from yoto_jax.weighting import (
    LossesFn,
    Params,
    Weighting,
    WeightingStep,
    loss_vector,
    objective_weighting,
)

DEFAULT_FAMO_LEARNING_RATE = 0.025
"""The learning rate of FAMO's logits in the reference code."""

DEFAULT_FAMO_WEIGHT_DECAY = 1e-3
"""The weight decay γ of FAMO's logits (LibMTL's default ``FAMO_w_gamma``)."""

_OFFSET = 1e-8  # D_i = l_i - b_i + 1e-8, b = 0, as in the reference


class FAMOState(NamedTuple):
    """FAMO's task logits ξ and their optimizer's state."""

    logits: jax.Array  # shape=(T,): ξ, with z = softmax(ξ)
    opt_state: Any  # the state of FAMO's own Adam on ξ


def famo(
    meta_learning_rate: float = DEFAULT_FAMO_LEARNING_RATE,
    weight_decay: float = DEFAULT_FAMO_WEIGHT_DECAY,
    *,
    learning_rate: float | None = None,
) -> Weighting:
    r"""FAMO: balances the tasks' log-loss decrease rates at O(1) extra cost per step.

    With logits ξ (init 0), :math:`z = \operatorname{softmax}(ξ)` and
    :math:`D_i = l_i - b_i + 10^{-8}` (b = 0), the reference minimises

    .. math::
        \sum_i z_i \log D_i / c, \qquad c = \operatorname{sg}\Big(\sum_i z_i / D_i\Big),

    whose gradient is :math:`\sum_i λ_i \nabla l_i` with
    :math:`λ_i = (z_i / D_i) / \sum_j (z_j / D_j)`: ``step`` applies that λ (and
    reports it in ``result.weights``). After the model's step, ``after_update``
    recomputes the losses :math:`l' =` ``losses_fn(new_model_params)`` *on the same
    batch* (one extra forward pass) and ξ takes one step of its own optimizer on

    .. math::
        g_ξ = z \odot (δ - z^\top δ), \qquad δ = \log D(l) - \log D(l'),

    (the vector-Jacobian product of the softmax with δ). The optimizer is Adam with
    coupled L2 decay, as ``torch.optim.Adam(weight_decay=γ)`` in the reference:
    ``optax.chain(optax.add_decayed_weights(γ), optax.adam(lr))``. ξ and its Adam
    state are the method's state (:class:`FAMOState`), not params: the caller's
    optimizer never sees them.

    ``weights(params, state)`` is z = softmax(ξ), the task weighting FAMO learns;
    the weights applied at a step differ: :math:`z_i / l_i`, normalised to sum to 1.

    The losses must stay positive (log D). The reference code also clips the
    gradients of the shared parameters to global norm 1 (``max_norm=1.0``) after
    the weighting; neither this function nor the library's benchmark does. To
    reproduce it, put the clipping in the optimizer, e.g.
    ``optax.chain(optax.masked(optax.clip_by_global_norm(1.0), shared_mask), tx)``
    with ``shared_mask`` selecting the shared parameters in the tree
    ``{"model": ..., "weighting": {}}``.

    Args:
      meta_learning_rate: ξ's Adam learning rate, > 0 (0.025 in the reference; may be
        traced). Named like Auto-λ's: the method's own step size, not the model's.
      learning_rate: the deprecated alias of ``meta_learning_rate``.
      weight_decay: γ >= 0 (1e-3, LibMTL's default; the FAMO code's own default varies
        by experiment).

    Returns:
      A :class:`~yoto_jax.Weighting` with no params and a :class:`FAMOState`.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import famo
      >>> method = famo()
      >>> params, state = method.init(2)
      >>> losses_fn = lambda w: jnp.array([1.0, 0.5]) * w  # one model parameter w
      >>> result = method.step(losses_fn, 1.0, params, state)
      >>> result.weights  # z_i / l_i normalised, z = (1/2, 1/2)
      Array([0.33333334, 0.6666667 ], dtype=float32)
      >>> state = method.after_update(losses_fn, 0.9, result)  # the model stepped to 0.9

    References:
      Liu, Liu, Jin, Stone and Liu, "FAMO: Fast Adaptive Multitask Optimization",
      NeurIPS 2023, Alg. 1; https://github.com/Cranial-XIX/FAMO.
    """
    meta_learning_rate = _checks.renamed(
        meta_learning_rate,
        DEFAULT_FAMO_LEARNING_RATE,
        "meta_learning_rate",
        learning_rate,
        "learning_rate",
    )
    _checks.positive(meta_learning_rate, "meta_learning_rate")
    _checks.non_negative(weight_decay, "weight_decay")
    logits_tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(meta_learning_rate))

    def init(num_losses: int) -> tuple[dict[str, jax.Array], FAMOState]:
        logits = jnp.zeros((_checks.positive_int(num_losses, "num_losses"),), jnp.float32)
        return {}, FAMOState(logits=logits, opt_state=logits_tx.init(logits))

    def applied(params, state: FAMOState, losses, key) -> jax.Array:
        losses = loss_vector(losses, state.logits.shape[0])
        scaled = jax.nn.softmax(state.logits).astype(losses.dtype) / (losses + _OFFSET)
        return jax.lax.stop_gradient(scaled / jnp.sum(scaled))

    def weights(params: dict[str, jax.Array], state: FAMOState) -> jax.Array:
        return jax.nn.softmax(state.logits)

    def after_update(
        losses_fn: LossesFn, new_model_params: Params, result: WeightingStep
    ) -> FAMOState:
        state = result.state
        num_losses = state.logits.shape[0]
        before = loss_vector(result.losses, num_losses)
        after = loss_vector(
            losses_fn(new_model_params), num_losses, what="losses_fn(new_model_params)"
        )
        delta = jax.lax.stop_gradient(jnp.log(before + _OFFSET) - jnp.log(after + _OFFSET))
        z = jax.nn.softmax(state.logits)
        delta = delta.astype(z.dtype)
        grad = z * (delta - jnp.dot(z, delta))
        updates, opt_state = logits_tx.update(grad, state.opt_state, state.logits)
        return FAMOState(logits=optax.apply_updates(state.logits, updates), opt_state=opt_state)

    return objective_weighting(init, None, applied, weights, after_update=after_update)
