"""Random Loss Weighting (RLW, Lin et al., TMLR 2022)."""

from __future__ import annotations

from typing import NamedTuple

import jax
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.baselines._common import LossWeighting, loss_vector, prng_key


class RLWState(NamedTuple):
    """The PRNG key of the next draw."""

    key: jax.Array  # a typed or raw PRNG key


def rlw(seed: int | jax.Array = 0) -> LossWeighting:
    r"""Random Loss Weighting: fresh random weights on the simplex every step.

    .. math::
        λ = \operatorname{softmax}(z), \qquad z \sim \mathcal{N}(0, I_T),

    drawn anew at every step (the reference's default, normal, distribution). λ sums
    to 1, not to T as equal weights do, as in the reference; with plain SGD that is
    a learning rate T times smaller than equal weights'.

    ``weights`` is a pure function of the state: the same state gives the same λ
    (call it as often as needed within a step); ``update`` moves to the next key.

    Args:
      seed: an int seed or a PRNG key (``jax.random.key`` or ``PRNGKey``).

    Returns:
      A :class:`LossWeighting` whose state is the key of the next draw.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import rlw
      >>> method = rlw(seed=0)  # update() once per step draws anew
      >>> state = method.update(method.init(2), jnp.ones(2))
      >>> round(float(method.weights(state, jnp.ones(2)).sum()), 6)
      1.0

    References:
      Lin, Ye, Xu, Shi and Zhang, "Reasonable Effectiveness of Random Weighting: A
      Litmus Test for Multi-Task Learning", TMLR 2022; LibMTL's ``RLW``.
    """
    key = prng_key(seed)

    def init_fn(num_losses: int) -> RLWState:
        _checks.positive_int(num_losses, "num_losses")
        return RLWState(key=key)

    def weights_fn(state: RLWState, losses: ArrayLike) -> jax.Array:
        losses = loss_vector(losses)
        draw_key = jax.random.split(state.key)[1]
        logits = jax.random.normal(draw_key, losses.shape, losses.dtype)
        return jax.nn.softmax(logits)

    def update_fn(state: RLWState, losses: ArrayLike, **extra_args) -> RLWState:
        del extra_args
        loss_vector(losses)
        return RLWState(key=jax.random.split(state.key)[0])

    return LossWeighting(init_fn, weights_fn, update_fn)
