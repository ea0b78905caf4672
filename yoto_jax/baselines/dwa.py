"""Dynamic Weight Average (DWA, Liu et al., CVPR 2019)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from yoto_jax import _checks
from yoto_jax.weighting import Weighting, loss_vector, objective_weighting

DEFAULT_DWA_TEMPERATURE = 2.0
"""The softmax temperature of the reference (Liu et al. 2019)."""


class DWAState(NamedTuple):
    """Running and per-epoch mean training losses."""

    loss_sum: jax.Array  # shape=(T,): sum of this epoch's losses so far
    step: jax.Array  # shape=(), int32: steps seen in this epoch
    means: jax.Array  # shape=(2, T): epoch-mean losses [L̄(t-1), L̄(t-2)]
    epochs: jax.Array  # shape=(), int32: completed epochs


def dwa(steps_per_epoch: int, temperature: float = DEFAULT_DWA_TEMPERATURE) -> Weighting:
    r"""Dynamic Weight Average: weights from the ratio of the last two epoch-mean losses.

    .. math::
        w_k = \frac{\bar L_k(t-1)}{\bar L_k(t-2)}, \qquad
        λ = T \operatorname{softmax}(w / \text{temperature}),

    where :math:`\bar L_k(t)` is the mean training loss of task k over the
    ``steps_per_epoch`` steps of epoch t. A task whose loss fell less over the last
    epoch gets more weight. λ = 1 during the first two epochs (no ratio yet). The
    model descends :math:`\sum_i \operatorname{sg}(λ_i) l_i`; λ sums to T.

    The state (:class:`DWAState`) holds the loss statistics and is advanced by
    ``step`` with that step's losses; the weights applied at a step are those of the
    state before it, so ``weights(params, state)`` is the λ the next step applies.
    The epoch means are the means of the per-step training losses, as in the
    reference code (the model changes during the epoch). An epoch is
    ``steps_per_epoch`` calls of ``step``; with ``steps_per_epoch=1`` the statistics
    are per step (a deviation: noisier, and λ moves every step).

    Args:
      steps_per_epoch: how many training steps make an epoch, an int >= 1.
      temperature: the softmax temperature, > 0 (2 in the reference; may be traced).

    Returns:
      A :class:`~yoto_jax.Weighting` with no params and a :class:`DWAState`.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import dwa
      >>> method = dwa(steps_per_epoch=1)
      >>> params, state = method.init(2)
      >>> for losses in ([1.0, 1.0], [1.0, 0.5]):  # two epochs: λ = 1 meanwhile
      ...     result = method.step(lambda w: jnp.array(losses) * w, 1.0, params, state)
      ...     state = method.after_update(None, None, result)
      >>> method.weights(params, state).round(4)  # 2 softmax([1, 0.5] / 2)
      Array([1.1244, 0.8756], dtype=float32)

    References:
      Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention",
      CVPR 2019, Eq. (7); https://github.com/lorenmt/mtan.
    """
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int):
        raise TypeError(f"steps_per_epoch must be an int, got {steps_per_epoch!r}.")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
    _checks.positive(temperature, "temperature")

    def init(num_losses: int) -> tuple[dict[str, jax.Array], DWAState]:
        num_losses = _checks.positive_int(num_losses, "num_losses")
        return {}, DWAState(
            loss_sum=jnp.zeros((num_losses,), jnp.float32),
            step=jnp.zeros([], jnp.int32),
            means=jnp.ones((2, num_losses), jnp.float32),
            epochs=jnp.zeros([], jnp.int32),
        )

    def weights(params: dict[str, jax.Array], state: DWAState) -> jax.Array:
        ratios = state.means[0] / state.means[1]
        lam = ratios.shape[0] * jax.nn.softmax(ratios / temperature)
        return jnp.where(state.epochs >= 2, lam, jnp.ones_like(lam))

    def applied(params, state: DWAState, losses, key) -> jax.Array:
        losses = loss_vector(losses, state.loss_sum.shape[0])
        return jax.lax.stop_gradient(weights(params, state).astype(losses.dtype))

    def next_state(state: DWAState, losses: jax.Array) -> DWAState:
        losses = loss_vector(losses, state.loss_sum.shape[0])
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

    return objective_weighting(init, None, applied, weights, next_state=next_state)
