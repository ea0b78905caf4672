"""The multi-loss training step, written once for every weighting: :func:`trainer`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from yoto_jax import _checks
from yoto_jax.weighting import LossesFn, Params, Weighting

MODEL = "model"
WEIGHTING = "weighting"


class TrainerState(NamedTuple):
    """Everything a multi-loss training run carries between steps.

    Attributes:
      params: ``{"model": model params, "weighting": the weighting's params}``, the one
        tree the optimizer updates.
      opt_state: the optimizer's state over ``params``.
      weighting_state: the weighting's own state.
    """

    params: dict[str, Any]
    opt_state: optax.OptState
    weighting_state: Any


class StepLog(NamedTuple):
    """What one step reports: the (T,) losses before the step and the weights applied."""

    losses: jax.Array
    weights: jax.Array


class Trainer(NamedTuple):
    """The functions of :func:`trainer`.

    Attributes:
      init: ``init(model_params, num_losses) -> TrainerState``.
      step: ``step(state, losses_fn, key=None) -> (TrainerState, StepLog)``.
      weights: ``weights(state) -> (T,)``, the current weights.
    """

    init: Callable[[Params, int], TrainerState]
    step: Callable[..., tuple[TrainerState, StepLog]]
    weights: Callable[[TrainerState], jax.Array]


def trainer(weighting: Weighting, tx: optax.GradientTransformation) -> Trainer:
    r"""One multi-loss training step for any :class:`~yoto_jax.Weighting`.

    A step takes ``losses_fn(model_params) -> (T,)``, the losses on this step's batch
    (primary first), and

    1. asks the weighting for the model's and its own params' gradients
       (``weighting.step``);
    2. applies both with one optimizer, ``weighting.optimizer(tx)``, over the tree
       ``{"model": ..., "weighting": ...}`` (for YOTO this adds µ's regulariser and
       µ's own Adam; for the others it is ``tx``);
    3. lets the weighting look at the updated model (``weighting.after_update``).

    The functions are pure: jit them, ``jax.vmap`` them over configurations (a grid:
    build the weighting inside the vmapped function from traced hyperparameters), or
    shard the state with ``jax.jit``'s shardings.

    Args:
      weighting: the loss-weighting method.
      tx: the model's optimizer.

    Returns:
      A :class:`Trainer` of ``init``, ``step`` and ``weights``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, yoto_jax
      >>> def losses(w, x):  # a primary and an auxiliary loss of one parameter vector
      ...     return jnp.stack([jnp.mean((x @ w - 1.0) ** 2), jnp.mean(w**2)])
      >>> train = yoto_jax.trainer(yoto_jax.yoto(), optax.adam(1e-2))
      >>> state = train.init(jnp.zeros(3), num_losses=2)
      >>> x = jnp.ones((8, 3))
      >>> step = jax.jit(lambda state, key: train.step(state, lambda w: losses(w, x), key))
      >>> for i in range(3):
      ...     state, log = step(state, jax.random.key(i))
      >>> log.losses.shape, log.weights.shape
      ((2,), (2,))
    """
    full_tx = weighting.optimizer(tx)

    def init(model_params: Params, num_losses: int) -> TrainerState:
        num_losses = _checks.positive_int(num_losses, "num_losses")
        weighting_params, weighting_state = weighting.init(num_losses)
        params = {MODEL: model_params, WEIGHTING: weighting_params}
        return TrainerState(params, full_tx.init(params), weighting_state)

    def step(
        state: TrainerState, losses_fn: LossesFn, key: jax.Array | None = None
    ) -> tuple[TrainerState, StepLog]:
        params = state.params
        result = weighting.step(
            losses_fn, params[MODEL], params[WEIGHTING], state.weighting_state, key=key
        )
        grads = {MODEL: result.model_grads, WEIGHTING: result.grads}
        updates, opt_state = full_tx.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        weighting_state = weighting.after_update(losses_fn, params[MODEL], result)
        return TrainerState(params, opt_state, weighting_state), StepLog(
            result.losses, result.weights
        )

    def weights(state: TrainerState) -> jax.Array:
        return weighting.weights(state.params[WEIGHTING], state.weighting_state)

    return Trainer(init, step, weights)
