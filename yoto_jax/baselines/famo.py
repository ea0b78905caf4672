"""Fast Adaptive Multitask Optimization (FAMO, Liu et al., NeurIPS 2023)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.baselines._common import LossWeighting, loss_vector

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
    learning_rate: float = DEFAULT_FAMO_LEARNING_RATE,
    weight_decay: float = DEFAULT_FAMO_WEIGHT_DECAY,
) -> LossWeighting:
    r"""FAMO: balances the tasks' log-loss decrease rates at O(1) extra cost per step.

    With logits ξ (init 0), :math:`z = \operatorname{softmax}(ξ)` and
    :math:`D_i = l_i - b_i + 10^{-8}` (b = 0), the reference minimises

    .. math::
        \sum_i z_i \log D_i / c, \qquad c = \operatorname{sg}\Big(\sum_i z_i / D_i\Big),

    whose gradient is :math:`\sum_i λ_i \nabla l_i` with
    :math:`λ_i = (z_i / D_i) / \sum_j (z_j / D_j)`; ``weights`` returns that λ, so
    ``weighted_loss(weights(state, l), l)`` gives the reference's model gradient.
    After the model's step, the losses :math:`l'` are recomputed *on the same batch*
    and ξ takes one step of its own optimizer on

    .. math::
        g_ξ = z \odot (δ - z^\top δ), \qquad δ = \log D(l) - \log D(l'),

    (the vector-Jacobian product of the softmax with δ). The optimizer is Adam with
    coupled L2 decay, as ``torch.optim.Adam(weight_decay=γ)`` in the reference:
    ``optax.chain(optax.add_decayed_weights(γ), optax.adam(lr))``.

    The losses must stay positive (log D). The reference's gradient clipping of the
    model (``max_norm``) belongs to the training loop, not to the weighting, and is
    not part of this function.

    Args:
      learning_rate: ξ's Adam learning rate, > 0 (0.025 in the reference).
      weight_decay: γ >= 0 (1e-3, LibMTL's default; the FAMO code's own default varies
        by experiment).

    Returns:
      A :class:`LossWeighting` whose ``update(state, losses, losses_after=l')`` needs
      the losses recomputed after the model's step (an extra forward pass).

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import famo, weighted_loss
      >>> method = famo()
      >>> state = method.init(2)
      >>> losses = jnp.array([1.0, 0.5])
      >>> loss = weighted_loss(method.weights(state, losses), losses)
      >>> # ... model step, then the losses again on the same batch:
      >>> state = method.update(state, losses, losses_after=jnp.array([0.9, 0.45]))

    References:
      Liu, Liu, Jin, Stone and Liu, "FAMO: Fast Adaptive Multitask Optimization",
      NeurIPS 2023, Alg. 1; https://github.com/Cranial-XIX/FAMO.
    """
    _checks.positive(learning_rate, "learning_rate")
    _checks.non_negative(weight_decay, "weight_decay")
    logits_tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))

    def init_fn(num_losses: int) -> FAMOState:
        logits = jnp.zeros((_checks.positive_int(num_losses, "num_losses"),), jnp.float32)
        return FAMOState(logits=logits, opt_state=logits_tx.init(logits))

    def weights_fn(state: FAMOState, losses: ArrayLike) -> jax.Array:
        losses = loss_vector(losses, state.logits.shape[0])
        scaled = jax.nn.softmax(state.logits).astype(losses.dtype) / (losses + _OFFSET)
        return jax.lax.stop_gradient(scaled / jnp.sum(scaled))

    def update_fn(
        state: FAMOState, losses: ArrayLike, losses_after: ArrayLike | None = None, **extra_args
    ) -> FAMOState:
        del extra_args
        if losses_after is None:
            raise ValueError(
                "FAMO's update needs losses_after: the losses recomputed on the same batch after "
                "the model's step, update(state, losses, losses_after=...)."
            )
        num_losses = state.logits.shape[0]
        before = loss_vector(losses, num_losses)
        after = loss_vector(losses_after, num_losses, what="losses_after")
        delta = jax.lax.stop_gradient(jnp.log(before + _OFFSET) - jnp.log(after + _OFFSET))
        z = jax.nn.softmax(state.logits)
        delta = delta.astype(z.dtype)
        grad = z * (delta - jnp.dot(z, delta))
        updates, opt_state = logits_tx.update(grad, state.opt_state, state.logits)
        return FAMOState(logits=optax.apply_updates(state.logits, updates), opt_state=opt_state)

    return LossWeighting(init_fn, weights_fn, update_fn)
