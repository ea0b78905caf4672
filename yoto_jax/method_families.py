r"""The families of :func:`yoto_jax.search_methods` for the common case: one model, one
optimizer, one validation metric, and the weighting methods to choose among.

:func:`weighting_choices` names the candidate weightings (by default equal weights,
YOTO, uncertainty weighting, UPGrad, Aligned-MTL, DWA and a few fixed-weight rows), each
with its configurations; :func:`trainer_families` turns them into families trained by
:func:`yoto_jax.trainer` on functional params, :func:`nnx_families` into families of an
NNX model (through :func:`yoto_jax.nnx_search.search_functions`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from yoto_jax import _checks, baselines
from yoto_jax.method_search import Family
from yoto_jax.nnx_search import search_functions
from yoto_jax.trainer import TrainerState, trainer
from yoto_jax.weighting import Weighting, fixed_weights
from yoto_jax.yoto_weighting import yoto


class WeightingChoice(NamedTuple):
    """One family of candidate weightings.

    Attributes:
      make: ``config -> Weighting``, the weighting of one configuration (a row of
        ``configs``, traced inside the search's program).
      configs: a pytree of arrays with a leading axis, one entry per member.
    """

    make: Callable[[Any], Weighting]
    configs: Any


DEFAULT_METHODS = ("equal", "yoto", "uncertainty", "upgrad", "aligned_mtl", "dwa", "fixed")
"""The weightings :func:`weighting_choices` offers by default."""

DEFAULT_FIXED_VALUES = (0.01, 0.1, 0.3)
"""The auxiliary weights of the ``fixed`` rows: (1, v, ..., v) for each v."""

DEFAULT_DWA_STEPS_PER_EPOCH = 10
"""DWA's "epoch" when the data has none: a window of this many steps."""

ONE_MEMBER = {"member": jnp.zeros((1,), jnp.float32)}
"""The configs of a family of one member whose weighting has nothing to search."""


def weighting_choices(
    num_losses: int,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    shared: Any = True,
    fixed_values: Sequence[float] = DEFAULT_FIXED_VALUES,
    dwa_steps_per_epoch: int = DEFAULT_DWA_STEPS_PER_EPOCH,
) -> dict[str, WeightingChoice]:
    r"""Candidate weightings by name, each a :class:`WeightingChoice`.

    ``"equal"`` (:math:`w = 1`), ``"yoto"`` (:func:`yoto_jax.yoto`'s defaults),
    ``"uncertainty"``, ``"upgrad"`` and ``"aligned_mtl"`` (on the ``shared`` parameters),
    ``"dwa"`` and ``"rlw"`` are one member each, with the methods' default
    hyperparameters; ``"fixed"`` is one member per value :math:`v` of ``fixed_values``,
    the loss weights :math:`(1, v, \dots, v)`, primary first. Add your own entries to
    the returned dict (a name and a :class:`WeightingChoice`) to search them too.

    Args:
      num_losses: T, the number of losses (primary first), >= 2.
      methods: the names to include, from ``"equal"``, ``"yoto"``, ``"uncertainty"``,
        ``"upgrad"``, ``"aligned_mtl"``, ``"dwa"``, ``"rlw"``, ``"fixed"``.
      shared: the gradient methods' shared parameters (UPGrad, Aligned-MTL): a bool tree
        like the model's params, a prefix of it (``True``: every parameter), or a
        callable; for an NNX model, :func:`yoto_jax.nnx.shared_params`.
      fixed_values: the auxiliary weights of the ``"fixed"`` rows, each > 0.
      dwa_steps_per_epoch: DWA's epoch in steps.

    Returns:
      ``{name: WeightingChoice}`` in the order of ``methods``.

    Example:
      >>> choices = weighting_choices(3)
      >>> list(choices), choices["fixed"].configs.shape
      (['equal', 'yoto', 'uncertainty', 'upgrad', 'aligned_mtl', 'dwa', 'fixed'], (3, 3))
    """
    num_losses = _checks.positive_int(num_losses, "num_losses", minimum=2)
    dwa_steps_per_epoch = _checks.positive_int(dwa_steps_per_epoch, "dwa_steps_per_epoch")
    if isinstance(methods, str):
        raise TypeError(f"methods must be a sequence of names, got the string {methods!r}.")
    values = [float(v) for v in fixed_values]
    if not values or min(values) <= 0:
        raise ValueError(f"fixed_values must be positive weights, at least one; got {values}.")
    table = {
        "equal": lambda: WeightingChoice(lambda c: baselines.equal_weighting(), ONE_MEMBER),
        "yoto": lambda: WeightingChoice(lambda c: yoto(), ONE_MEMBER),
        "uncertainty": lambda: WeightingChoice(lambda c: baselines.uncertainty(), ONE_MEMBER),
        "upgrad": lambda: WeightingChoice(lambda c: baselines.upgrad(shared), ONE_MEMBER),
        "aligned_mtl": lambda: WeightingChoice(lambda c: baselines.aligned_mtl(shared), ONE_MEMBER),
        "dwa": lambda: WeightingChoice(lambda c: baselines.dwa(dwa_steps_per_epoch), ONE_MEMBER),
        "rlw": lambda: WeightingChoice(lambda c: baselines.rlw(), ONE_MEMBER),
        "fixed": lambda: WeightingChoice(fixed_weights, fixed_rows(num_losses, values)),
    }
    unknown = [name for name in methods if name not in table]
    if unknown or not methods:
        raise ValueError(
            f"methods must name at least one of {sorted(table)}, got unknown {unknown}."
            if unknown
            else f"methods is empty: name at least one of {sorted(table)}."
        )
    return {name: table[name]() for name in methods}


def fixed_rows(num_losses: int, values: Sequence[float]) -> jax.Array:
    """The loss weights (1, v, ..., v), one row per v, (len(values), num_losses) float32.

    Example:
      >>> fixed_rows(3, [0.1, 1.0]).tolist()
      [[1.0, 0.10000000149011612, 0.10000000149011612], [1.0, 1.0, 1.0]]
    """
    aux = jnp.asarray(values, jnp.float32)[:, None] * jnp.ones((1, num_losses - 1), jnp.float32)
    return jnp.concatenate([jnp.ones((len(values), 1), jnp.float32), aux], axis=1)


def _checked(choices: Any) -> Mapping[str, WeightingChoice]:
    if not isinstance(choices, Mapping) or not choices:
        raise TypeError(
            "choices must be a non-empty mapping of names to WeightingChoice (see "
            f"weighting_choices), got {choices!r:.80}."
        )
    for name, choice in choices.items():
        if not isinstance(choice, WeightingChoice):
            raise TypeError(
                f"choice {name!r} must be a WeightingChoice(make, configs), got "
                f"{type(choice).__name__}."
            )
    return choices


def trainer_families(
    choices: Mapping[str, WeightingChoice],
    init_params: Callable[[jax.Array], Any],
    losses_fn: Callable[[Any, jax.Array], jax.Array],
    metric_fn: Callable[[Any], jax.Array],
    tx: optax.GradientTransformation,
    *,
    num_losses: int,
) -> dict[str, Family]:
    """The families of :func:`yoto_jax.search_methods` for functional model params
    trained by :func:`yoto_jax.trainer`.

    A member's state is its :class:`~yoto_jax.TrainerState` (the optimizer's state
    carries the step count, so a schedule over ``total_steps`` runs across rungs as in
    one run). Each training step draws one key, split into the batch's (passed to
    ``losses_fn``) and the weighting's (RLW's draws).

    Args:
      choices: ``{name: WeightingChoice}``, e.g. :func:`weighting_choices`.
      init_params: ``key -> model params``, a member's initialisation.
      losses_fn: ``(params, key) -> (T,)``, the losses on the batch ``key`` draws,
        primary first.
      metric_fn: ``params -> scalar``, the validation score the search ranks.
      tx: the model's optimizer.
      num_losses: T.

    Returns:
      ``{name: (init_fn, train_fn, eval_fn, configs)}`` for :func:`yoto_jax.search_methods`.

    Example:
      >>> import jax, jax.numpy as jnp, optax, yoto_jax
      >>> def losses_fn(theta, key):  # a primary and an auxiliary target
      ...     return jnp.stack([(theta - 1.0) ** 2, (theta + 1.0) ** 2])
      >>> families = trainer_families(
      ...     weighting_choices(2, methods=["equal", "fixed"], fixed_values=[0.1]),
      ...     lambda key: jnp.zeros(()), losses_fn, lambda theta: -(theta - 0.8) ** 2,
      ...     optax.sgd(0.1), num_losses=2)
      >>> result = yoto_jax.search_methods(families, jax.random.key(0), total_steps=40)
      >>> result.best_family, round(float(result.best_state.params["model"]), 3)
      ('fixed', 0.818)
    """
    num_losses = _checks.positive_int(num_losses, "num_losses", minimum=2)
    _checks.functions(init_params=init_params, losses_fn=losses_fn, metric_fn=metric_fn)
    families = {}
    for name, choice in _checked(choices).items():
        families[name] = (
            *_trainer_functions(choice.make, init_params, losses_fn, metric_fn, tx, num_losses),
            choice.configs,
        )
    return families


def _trainer_functions(
    make: Callable[[Any], Weighting],
    init_params: Callable,
    losses_fn: Callable,
    metric_fn: Callable,
    tx: optax.GradientTransformation,
    num_losses: int,
) -> tuple[Callable, Callable, Callable]:
    """One family's ``(init_fn, train_fn, eval_fn)``."""

    def init_fn(config: Any, key: jax.Array) -> TrainerState:
        return trainer(make(config), tx).init(init_params(key), num_losses)

    def train_fn(state: TrainerState, config: Any, key: jax.Array, num_steps: int) -> TrainerState:
        train = trainer(make(config), tx)

        def step(state: TrainerState, step_key: jax.Array) -> tuple[TrainerState, None]:
            batch_key, weighting_key = jax.random.split(step_key)
            state, _ = train.step(state, lambda params: losses_fn(params, batch_key), weighting_key)
            return state, None

        return jax.lax.scan(step, state, jax.random.split(key, num_steps))[0]

    def eval_fn(state: TrainerState, config: Any) -> jax.Array:
        return metric_fn(state.params["model"])

    return init_fn, train_fn, eval_fn


def nnx_families(
    choices: Mapping[str, WeightingChoice],
    make_model: Callable[[Weighting, nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation,
    losses_fn: Callable[[nnx.Module, jax.Array], Mapping[str, jax.Array]],
    metric_fn: Callable[[nnx.Module], jax.Array],
) -> dict[str, Family]:
    """The families of :func:`yoto_jax.search_methods` for an NNX model.

    Args:
      choices: ``{name: WeightingChoice}``, e.g. :func:`weighting_choices` (with
        ``shared=yoto_jax.nnx.shared_params(...)`` for UPGrad and Aligned-MTL on a
        trunk).
      make_model: ``(weighting, rngs) -> model``: the model, holding one
        :class:`~yoto_jax.nnx.LossWeights` built with ``weighting=weighting``.
      tx: the model's optimizer.
      losses_fn: ``(model, key) -> {name: scalar loss}`` on the batch ``key`` draws.
      metric_fn: ``model -> scalar``, the validation score the search ranks.

    Returns:
      ``{name: (init_fn, train_fn, eval_fn, configs)}``, each from
      :func:`yoto_jax.nnx_search.search_functions`: a member's state is the
      ``nnx.State`` of its model and ``nnx.Optimizer``.
    """
    _checks.functions(make_model=make_model)
    return {
        name: (
            *search_functions(
                lambda config, rngs, make=choice.make: make_model(make(config), rngs),
                tx,
                losses_fn,
                metric_fn,
            ),
            choice.configs,
        )
        for name, choice in _checked(choices).items()
    }
