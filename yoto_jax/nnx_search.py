"""Flax NNX models in the searches: a model factory and its optimizer as the pure
``init_fn``, ``train_fn`` and ``eval_fn`` of :func:`yoto_jax.successive_halving`,
:func:`yoto_jax.population_based_training` and (composed) :func:`yoto_jax.vmapped_training`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import optax
from flax import nnx

from yoto_jax import _checks
from yoto_jax.nnx import LossWeights, train_step


class SearchFunctions(NamedTuple):
    """The three pure functions of :func:`yoto_jax.successive_halving` and
    :func:`yoto_jax.population_based_training` for an NNX model (:func:`search_functions`).

    Attributes:
      init_fn: ``(config, key) -> state``, the ``nnx.State`` of a new model and its
        ``nnx.Optimizer``.
      train_fn: ``(state, config, key, num_steps) -> state``, ``num_steps`` steps of
        :func:`~yoto_jax.nnx.train_step` in a ``lax.scan``.
      eval_fn: ``(state, config) -> score``, the metric of the trained model.
    """

    init_fn: Callable[[Any, jax.Array], nnx.State]
    train_fn: Callable[[nnx.State, Any, jax.Array, int], nnx.State]
    eval_fn: Callable[[nnx.State, Any], jax.Array]


def search_functions(
    make_model: Callable[[Any, nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation | Callable[[Any], optax.GradientTransformation],
    losses_fn: Callable[[nnx.Module, jax.Array], Mapping[str, jax.Array]],
    metric_fn: Callable[[nnx.Module], jax.Array],
) -> SearchFunctions:
    """An NNX model and its optimizer as the pure functions the searches take.

    A member's state is the ``nnx.State`` of the pair (model, ``nnx.Optimizer``): a
    pytree of arrays, so the searches vmap it, gather survivors from it, fingerprint and
    checkpoint it. Each function rebuilds the model's structure (its ``nnx.GraphDef``)
    from ``config`` with ``nnx.eval_shape``, which allocates nothing, and merges the
    state into it; no split or merge is left to write. The structure is rebuilt on
    every trace because the weighting may close over the (traced) configuration, as
    ``fixed_weights(config["weights"])`` does.

    Each training step draws one step key, splits it into the batch's key (passed to
    ``losses_fn``) and the weighting's (``train_step(..., key=)``, for RLW or PCGrad),
    and runs :func:`~yoto_jax.nnx.train_step`. Keep the model's randomness out of its state (a model
    that stores ``nnx.Rngs`` holds PRNG keys, which halving's checkpoints cannot save).

    Args:
      make_model: ``(config, rngs) -> model``, one member's model: it must hold exactly
        one :class:`~yoto_jax.nnx.LossWeights`, whose weighting may depend on ``config`` (a traced
        pytree with the leaves of one row of ``configs``). Its shapes must not.
      tx: the model's optimizer, or ``config -> optimizer`` to search its
        hyperparameters (a learning rate with ``optax.inject_hyperparams``, say); it is
        wrapped in ``loss_weights.optimizer``.
      losses_fn: ``(model, key) -> {name: scalar loss}``, the losses on the batch that
        ``key`` draws (the names of the model's ``LossWeights``).
      metric_fn: ``model -> scalar``, the validation score the search ranks.

    Returns:
      :class:`SearchFunctions` ``(init_fn, train_fn, eval_fn)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, yoto_jax
      >>> from flax import nnx
      >>> from yoto_jax.nnx import LossWeights
      >>> from yoto_jax.nnx_search import search_functions
      >>> class Model(nnx.Module):
      ...     def __init__(self, config, rngs):
      ...         self.theta = nnx.Param(jax.random.normal(rngs.params(), ()))
      ...         weighting = yoto_jax.fixed_weights(config)
      ...         self.loss_weights = LossWeights("a", ["b"], weighting=weighting)
      >>> functions = search_functions(
      ...     Model,
      ...     optax.sgd(0.1),
      ...     lambda model, key: {"a": (model.theta - 1) ** 2, "b": (model.theta + 1) ** 2},
      ...     lambda model: -jnp.abs(model.theta[...]),
      ... )
      >>> result = yoto_jax.successive_halving(
      ...     *functions, jnp.array([[1.0, 0.5], [1.0, 1.0]]), jax.random.key(0), total_steps=60
      ... )
      >>> result.best_index, round(float(result.best_state[0]["theta"][...]), 4)
      (1, 0.0)
    """
    _checks.functions(make_model=make_model, losses_fn=losses_fn, metric_fn=metric_fn)
    if not callable(tx) and not isinstance(tx, optax.GradientTransformation):
        raise TypeError(
            f"tx must be an optax.GradientTransformation or a function config -> one, got "
            f"{type(tx).__name__}."
        )

    def build(config: Any, key: jax.Array) -> tuple[nnx.Module, nnx.Optimizer]:
        model = make_model(config, nnx.Rngs(key))
        base = tx if isinstance(tx, optax.GradientTransformation) else tx(config)
        optimizer = nnx.Optimizer(model, _loss_weights_of(model).optimizer(base), wrt=nnx.Param)
        return model, optimizer

    def graphdef(config: Any) -> nnx.GraphDef:
        return nnx.graphdef(nnx.eval_shape(lambda: build(config, jax.random.key(0))))

    def init_fn(config: Any, key: jax.Array) -> nnx.State:
        return nnx.state(build(config, key))

    def train_fn(state: nnx.State, config: Any, key: jax.Array, num_steps: int) -> nnx.State:
        structure = graphdef(config)

        def step(state: nnx.State, step_key: jax.Array) -> tuple[nnx.State, None]:
            model, optimizer = nnx.merge(structure, state)
            batch_key, weighting_key = jax.random.split(step_key)
            train_step(
                model,
                optimizer,
                _loss_weights_of(model),
                lambda model: losses_fn(model, batch_key),
                key=weighting_key,
            )
            return nnx.state((model, optimizer)), None

        return jax.lax.scan(step, state, jax.random.split(key, num_steps))[0]

    def eval_fn(state: nnx.State, config: Any) -> jax.Array:
        model, _ = nnx.merge(graphdef(config), state)
        return metric_fn(model)

    return SearchFunctions(init_fn, train_fn, eval_fn)


def _loss_weights_of(model: nnx.Module) -> LossWeights:
    """The one :class:`~yoto_jax.nnx.LossWeights` inside ``model``."""
    found = [node for _, node in nnx.iter_graph(model) if isinstance(node, LossWeights)]
    if len(found) != 1:
        raise ValueError(
            "search_functions' make_model must return a model holding exactly one LossWeights "
            f"(the objective the search weights), got {type(model).__name__} holding {len(found)}."
        )
    return found[0]
