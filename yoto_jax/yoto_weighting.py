"""YOTO behind the weighting contract: :func:`yoto`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.composite import (
    DEFAULT_EPS,
    DEFAULT_LOSS_FLOOR,
    DEFAULT_PRIMARY_FLOOR,
    loss_weights,
    resolve_floor,
    yoto_composite,
)
from yoto_jax.decay import DEFAULT_RHO
from yoto_jax.optimizer import DEFAULT_MU_LEARNING_RATE, yoto_optimizer
from yoto_jax.selection import MU_KEY
from yoto_jax.weighting import Weighting, loss_vector, objective_weighting

NORMALIZE_MODES = ("mean", "each")
"""``yoto(normalize=...)``: the losses µ sees are divided by a running mean of the mean
loss (``"mean"``, so ρ is relative to the losses' scale) or of each loss (``"each"``)."""


class LossScaleState(NamedTuple):
    """YOTO's state with ``normalize``: a running mean of the losses, as in Adam's moments."""

    mean: jax.Array  # shape (T,): exponential moving average of the losses (biased)
    count: jax.Array  # shape (), int32: steps averaged


def _updated_scale(state: LossScaleState, losses: jax.Array, decay: ArrayLike) -> LossScaleState:
    decay = jnp.asarray(decay, losses.dtype)
    return LossScaleState(decay * state.mean + (1.0 - decay) * losses, state.count + 1)


def _scale(state: LossScaleState, decay: ArrayLike, mode: str) -> jax.Array:
    """The bias-corrected running mean, per loss (``"each"``) or of the mean loss."""
    mean = state.mean / (1.0 - jnp.asarray(decay, state.mean.dtype) ** state.count)
    return mean if mode == "each" else jnp.broadcast_to(jnp.mean(mean), mean.shape)


def yoto(
    eps: ArrayLike = DEFAULT_EPS,
    rho: optax.ScalarOrSchedule = DEFAULT_RHO,
    *,
    mu_learning_rate: optax.ScalarOrSchedule | None = DEFAULT_MU_LEARNING_RATE,
    mu_tx: optax.GradientTransformation | None = None,
    primary_floor: ArrayLike | str = DEFAULT_PRIMARY_FLOOR,
    loss_floor: ArrayLike = DEFAULT_LOSS_FLOOR,
    normalize: str | None = None,
    normalize_decay: ArrayLike = 0.99,
) -> Weighting:
    r"""YOTO as a :class:`~yoto_jax.Weighting`: λ = softmax([0, µ]) learnt with the model.

    The model and µ descend :math:`\sum_i λ_i l_i` (:func:`yoto_jax.yoto_composite`);
    µ's regulariser :math:`ρ R(µ)` is added by the optimizer,
    ``weighting.optimizer(tx)`` = :func:`yoto_jax.yoto_optimizer`, so ``result.grads``
    holds the composite's gradient only. The params are ``{"yoto_mu": µ}``, from
    µ = log ε.

    Two floors bound the weights applied. With ``primary_floor`` m_0 and ``loss_floor``
    m, of T losses,

    .. math::
        λ'' = \frac{m}{T} \mathbf{1} + (1 - m)\,λ', \qquad
        λ' = m_0 e_0 + (1 - m_0)\,\mathrm{softmax}([0, µ]),

    so every loss keeps at least m/T of the weight (m = 1 is equal weights) and the
    primary at least m_0 (``"uniform"``: 1/T). The model's loss is
    :math:`\sum_i λ''_i l_i`; µ's gradient is that of the composite scaled by 1 − m.

    ``normalize`` changes what µ sees, not the model's loss: µ descends the composite of
    :math:`l_i / c_i`, with c a bias-corrected running mean (decay ``normalize_decay``) of
    the mean loss (``"mean"``: ρ becomes relative to the losses' scale, since scaling
    every loss by c is dividing ρ by c) or of each loss (``"each"``: every loss in units
    of its own recent size). The state then holds the running mean
    (:class:`LossScaleState`); without it there is no state.

    The defaults are the library's, chosen on a suite of twelve tasks by the worst
    case against equal weights (the README's "Defaults"): ε = 1 (uniform weights at
    the start), µ on its own Adam at 0.05 nats per step, and every weight at least
    0.8/T, so the learnt weights stay within 20 % of uniform. YOTO's µ descends the
    *training* losses, so unbounded it turns down auxiliaries whose loss stays large
    (consistency, smoothness, denoising), whatever they do for generalisation; the
    floor bounds that cost. The paper's formulation:
    ``yoto(0.1, mu_learning_rate=None, loss_floor=0.0)``; the library's previous
    default: ``yoto(0.1, primary_floor="uniform", loss_floor=0.0)``.

    Args:
      eps: the initial weight ratio λ_i / λ_0 of every auxiliary, > 0: a scalar or one
        per auxiliary (may be traced).
      rho: the regularisation strength ρ >= 0 (float or schedule).
      mu_learning_rate: None puts µ on the model's optimizer; a number is the learning
        rate of µ's own Adam (see :func:`yoto_jax.yoto_optimizer`).
      mu_tx: replaces µ's optimizer altogether.
      primary_floor: m_0 in [0, 1), or ``"uniform"`` (1/T); see
        :func:`yoto_jax.loss_weights`.
      loss_floor: m in [0, 1]: every weight is at least m/T (0: the paper's).
      normalize: None, ``"mean"`` or ``"each"``: the losses µ sees (see above).
      normalize_decay: the running mean's decay in [0, 1).

    Returns:
      A :class:`~yoto_jax.Weighting`.

    Example:
      >>> import jax.numpy as jnp, yoto_jax
      >>> weighting = yoto_jax.yoto(loss_floor=0.0)
      >>> params, state = weighting.init(3)  # T = 3 losses: µ has K = 2 logits
      >>> weighting.weights(params, state)
      Array([0.33333334, 0.33333334, 0.33333334], dtype=float32)
      >>> floored = yoto_jax.yoto(eps=1e-3, loss_floor=0.5)
      >>> floored.weights(*floored.init(2)).round(4)  # each weight >= 0.5 / 2
      Array([0.7495, 0.2505], dtype=float32)
    """
    _checks.positive_entries(eps, "eps")
    _checks.at_step_zero(_checks.non_negative, rho, "rho")
    _checks.unit_interval(loss_floor, "loss_floor", closed=True)
    if normalize is not None and normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be None or one of {NORMALIZE_MODES}, got {normalize!r}.")
    _checks.unit_interval(normalize_decay, "normalize_decay")

    def floor(num_losses: int) -> ArrayLike:
        return resolve_floor(primary_floor, num_losses - 1)

    def init(num_losses: int) -> tuple[dict[str, jax.Array], Any]:
        num_losses = _checks.positive_int(num_losses, "num_losses")
        if num_losses < 2:
            raise ValueError(
                f"YOTO needs a primary and at least one auxiliary loss, got {num_losses} loss."
            )
        logits = jnp.log(_checks.floating_array(eps, "eps").astype(jnp.float32))
        if logits.ndim > 1 or logits.size not in (1, num_losses - 1):
            raise ValueError(
                f"eps must be a scalar or have shape (K,) = ({num_losses - 1},), one per "
                f"auxiliary loss; got shape {logits.shape}."
            )
        params = {MU_KEY: jnp.broadcast_to(logits, (num_losses - 1,))}
        if normalize is None:
            return params, ()
        return params, LossScaleState(jnp.zeros(num_losses, jnp.float32), jnp.int32(0))

    def weights(params: dict[str, jax.Array], state: Any) -> jax.Array:
        mu = params[MU_KEY]
        return loss_weights(mu, primary_floor=floor(mu.shape[0] + 1), loss_floor=loss_floor)

    def objective(params, state, losses, key) -> jax.Array:
        mu = params[MU_KEY]
        losses = loss_vector(losses, mu.shape[0] + 1)

        def composite(mu: jax.Array, losses: jax.Array) -> jax.Array:
            return yoto_composite(
                mu, losses, primary_floor=floor(mu.shape[0] + 1), loss_floor=loss_floor
            )

        if normalize is None:
            return composite(mu, losses)
        # The model descends the composite of the raw losses, µ that of l / c.
        seen = jax.lax.stop_gradient(losses) / _scale(
            _updated_scale(state, jax.lax.stop_gradient(losses), normalize_decay),
            normalize_decay,
            normalize,
        )
        for_mu = composite(mu, seen)
        return composite(jax.lax.stop_gradient(mu), losses) + for_mu - jax.lax.stop_gradient(for_mu)

    def next_state(state: Any, losses: jax.Array) -> Any:
        return state if normalize is None else _updated_scale(state, losses, normalize_decay)

    def optimizer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
        return yoto_optimizer(tx, rho, mu_tx, mu_learning_rate=mu_learning_rate)

    return objective_weighting(
        init,
        objective,
        lambda params, state, losses, key: weights(params, state),
        weights,
        next_state=next_state,
        optimizer=optimizer,
    )
