"""Random Loss Weighting (RLW, Lin et al., TMLR 2022)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from yoto_jax import _checks
from yoto_jax.baselines._common import NumLosses
from yoto_jax.weighting import Weighting, loss_vector, objective_weighting, require_key


def rlw() -> Weighting:
    r"""Random Loss Weighting: fresh random weights on the simplex every step.

    .. math::
        λ = \operatorname{softmax}(z), \qquad z \sim \mathcal{N}(0, I_T),

    drawn at every step from the step's ``key`` (the reference's default, normal,
    distribution); the model descends :math:`\sum_i \operatorname{sg}(λ_i) l_i`. λ
    sums to 1, not to T as equal weights do, as in the reference; with plain SGD
    that is a learning rate T times smaller than equal weights'.

    The draw is a pure function of the key: pass a new key every step (e.g.
    ``jax.random.fold_in(key, step)``); ``step`` without a key raises. There are no
    params and nothing is carried between steps (the state only remembers T, with
    no arrays). ``result.weights`` is the λ applied at the step;
    ``weights(params, state)``, which has no key, is its expectation, 1/T each (by
    symmetry), for logging.

    Returns:
      A :class:`~yoto_jax.Weighting` whose ``step`` needs ``key=``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from yoto_jax.baselines import rlw
      >>> method = rlw()
      >>> params, state = method.init(2)
      >>> losses_fn = lambda w: jnp.array([w**2, (w - 1.0) ** 2])
      >>> result = method.step(losses_fn, 0.5, params, state, key=jax.random.key(0))
      >>> round(float(result.weights.sum()), 6)
      1.0
      >>> method.weights(params, state)  # the expectation
      Array([0.5, 0.5], dtype=float32)

    References:
      Lin, Ye, Xu, Shi and Zhang, "Reasonable Effectiveness of Random Weighting: A
      Litmus Test for Multi-Task Learning", TMLR 2022; LibMTL's ``RLW``.
    """

    def init(num_losses: int) -> tuple[dict[str, jax.Array], NumLosses]:
        return {}, NumLosses(_checks.positive_int(num_losses, "num_losses"))

    def applied(params, state: NumLosses, losses, key) -> jax.Array:
        losses = loss_vector(losses, state.num_losses)
        logits = jax.random.normal(require_key(key, "rlw"), losses.shape, losses.dtype)
        return jax.nn.softmax(logits)

    def weights(params: dict[str, jax.Array], state: NumLosses) -> jax.Array:
        return jnp.full((state.num_losses,), 1.0 / state.num_losses, jnp.float32)

    return objective_weighting(init, None, applied, weights)
