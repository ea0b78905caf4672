"""Dynamic Weight Average (DWA, Liu et al., CVPR 2019)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.baselines._common import LossWeighting, loss_vector

DEFAULT_DWA_TEMPERATURE = 2.0
"""The softmax temperature of the reference (Liu et al. 2019)."""


class DWAState(NamedTuple):
    """Running and per-epoch mean training losses."""

    loss_sum: jax.Array  # shape=(T,): sum of this epoch's losses so far
    step: jax.Array  # shape=(), int32: steps seen in this epoch
    means: jax.Array  # shape=(2, T): epoch-mean losses [L̄(t-1), L̄(t-2)]
    epochs: jax.Array  # shape=(), int32: completed epochs


def dwa(steps_per_epoch: int, temperature: float = DEFAULT_DWA_TEMPERATURE) -> LossWeighting:
    r"""Dynamic Weight Average: weights from the ratio of the last two epoch-mean losses.

    .. math::
        w_k = \frac{\bar L_k(t-1)}{\bar L_k(t-2)}, \qquad
        λ = T \operatorname{softmax}(w / \text{temperature}),

    where :math:`\bar L_k(t)` is the mean training loss of task k over the
    ``steps_per_epoch`` steps of epoch t. A task whose loss fell less over the last
    epoch gets more weight. λ = 1 during the first two epochs (no ratio yet).

    The epoch means are the means of the per-step training losses, as in the
    reference code (the model changes during the epoch). The state counts steps, so
    an epoch is ``steps_per_epoch`` calls of ``update``; with ``steps_per_epoch=1``
    the statistics are per step (a deviation: noisier, and λ moves every step).

    Args:
      steps_per_epoch: how many training steps make an epoch, an int >= 1.
      temperature: the softmax temperature, > 0 (2 in the reference).

    Returns:
      A :class:`LossWeighting`; call ``update(state, losses)`` once per step.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import dwa
      >>> method = dwa(steps_per_epoch=100)
      >>> method.weights(method.init(3), jnp.ones(3))  # λ = 1 for the first two epochs
      Array([1., 1., 1.], dtype=float32)

    References:
      Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention",
      CVPR 2019, Eq. (7); https://github.com/lorenmt/mtan.
    """
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int):
        raise TypeError(f"steps_per_epoch must be an int, got {steps_per_epoch!r}.")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
    _checks.positive(temperature, "temperature")

    def init_fn(num_losses: int) -> DWAState:
        num_losses = _checks.positive_int(num_losses, "num_losses")
        zeros = jnp.zeros((num_losses,), jnp.float32)
        return DWAState(
            loss_sum=zeros,
            step=jnp.zeros([], jnp.int32),
            means=jnp.ones((2, num_losses), jnp.float32),
            epochs=jnp.zeros([], jnp.int32),
        )

    def weights_fn(state: DWAState, losses: ArrayLike) -> jax.Array:
        losses = loss_vector(losses, state.loss_sum.shape[0])
        num_losses = losses.shape[0]
        ratios = state.means[0] / state.means[1]
        weights = num_losses * jax.nn.softmax(ratios / temperature)
        weights = jnp.where(state.epochs >= 2, weights, jnp.ones_like(weights))
        return jax.lax.stop_gradient(weights.astype(losses.dtype))

    def update_fn(state: DWAState, losses: ArrayLike, **extra_args) -> DWAState:
        del extra_args
        losses = jax.lax.stop_gradient(loss_vector(losses, state.loss_sum.shape[0]))
        loss_sum = state.loss_sum + losses.astype(state.loss_sum.dtype)
        step = state.step + 1
        epoch_done = step == steps_per_epoch
        new_means = jnp.stack([loss_sum / steps_per_epoch, state.means[0]])
        return DWAState(
            loss_sum=jnp.where(epoch_done, jnp.zeros_like(loss_sum), loss_sum),
            step=jnp.where(epoch_done, 0, step),
            means=jnp.where(epoch_done, new_means, state.means),
            epochs=state.epochs + epoch_done.astype(jnp.int32),
        )

    return LossWeighting(init_fn, weights_fn, update_fn)
