r"""Population-based training: the worst members copy the best ones and perturb them.

:func:`population_based_training` trains all N members for the whole budget in one
jitted program, and every ``interval`` steps the worst members take over the state and
the (perturbed) configuration of the best ones.

Reference:
  M. Jaderberg et al., "Population Based Training of Neural Networks", arXiv:1711.09846,
  2017.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax._population import (
    CACHE_SIZE,
    EvalFn,
    InitFn,
    TrainFn,
    badness,
    check_same_avals,
    check_scores,
    member_keys,
    one_member,
    search_inputs,
    take,
    train_and_score,
)


class PBTHistory(NamedTuple):
    """Per round of :func:`population_based_training`, stacked along a leading axis R.

    Attributes:
      scores: (R, N), every member's score after the round's training.
      configs: ``configs`` with leaves (R, N, ...), the configuration each member
        trained with in the round.
      parents: (R, N) int32, whose state and configuration each member took after the
        round (its own index if it was not replaced; always its own in the last round).
    """

    scores: jax.Array
    configs: Any
    parents: jax.Array


class PBTResult(NamedTuple):
    """The outcome of :func:`population_based_training`.

    Attributes:
      best_index: the member with the best final score.
      best_config: its final configuration.
      best_state: its final state.
      member_steps: N * total_steps, the training steps spent summed over members.
      history: a :class:`PBTHistory`.
    """

    best_index: int
    best_config: Any
    best_state: Any
    member_steps: int
    history: PBTHistory


def _perturb(config: Any, key: jax.Array, perturbation: jax.Array) -> Any:
    """The default explore: every element of every floating leaf times ``perturbation``
    or ``1 / perturbation``, each with probability 1/2; integer leaves (a seed) stay."""
    leaves, treedef = jax.tree.flatten(config)
    factors = [
        jnp.where(jax.random.bernoulli(k, 0.5, leaf.shape), perturbation, 1 / perturbation)
        for leaf, k in zip(leaves, jax.random.split(key, len(leaves)), strict=True)
    ]
    return jax.tree.unflatten(
        treedef,
        [
            leaf * f.astype(leaf.dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf
            for leaf, f in zip(leaves, factors, strict=True)
        ],
    )


@functools.lru_cache(maxsize=CACHE_SIZE)
def _pbt_program(
    init_fn: InitFn,
    train_fn: TrainFn,
    eval_fn: EvalFn,
    explore_fn: Callable[[Any, jax.Array], Any] | None,
    interval: int,
    rounds: int,
    num_replaced: int,
    maximize: bool,
) -> Callable:
    """The whole of population-based training as one jitted program:
    ``(configs, key, perturbation) -> (best index, its config, its state, history)``."""
    member = train_and_score(train_fn, eval_fn, interval)

    def program(configs: Any, key: jax.Array, perturbation: jax.Array) -> tuple:
        num = jax.tree.leaves(configs)[0].shape[0]
        everyone = jnp.arange(num)
        member_root, exploit_root = jax.random.split(key)
        init_keys, train_keys = member_keys(member_root, everyone, rounds)
        explore = explore_fn or functools.partial(_perturb, perturbation=perturbation)

        def checked_explore(config: Any, key: jax.Array) -> Any:
            explored = explore(config, key)
            check_same_avals(explored, config, "explore_fn's config")
            return explored

        def one_round(carry: tuple, inputs: tuple) -> tuple:
            states, configs = carry
            round_index, keys = inputs
            states, scores = jax.vmap(member)(states, configs, keys)
            order = jnp.argsort(badness(scores, maximize), stable=True)  # best first
            exploit_keys = jax.random.split(jax.random.fold_in(exploit_root, round_index), num + 1)
            # floor(m U), U ~ U[0, 1): a uniform pick among the m best (one threefry call
            # instead of randint's three, so the program compiles faster)
            uniform = jax.random.uniform(exploit_keys[0], (num_replaced,))
            picks = jnp.minimum(uniform * num_replaced, num_replaced - 1).astype(jnp.int32)
            exploit = everyone.at[order[num - num_replaced :]].set(order[picks])
            parents = jnp.where(round_index == rounds - 1, everyone, exploit)
            copied = take(configs, parents, None)
            explored = jax.vmap(checked_explore)(copied, exploit_keys[1:])
            replaced = parents != everyone
            new_configs = jax.tree.map(
                lambda new, old: jnp.where(
                    replaced.reshape((num,) + (1,) * (old.ndim - 1)), new, old
                ),
                explored,
                copied,
            )
            history = (scores, configs, parents, order[0])
            return (take(states, parents, None), new_configs), history

        states = jax.vmap(init_fn)(configs, init_keys)
        (states, configs), (scores, trained_with, parents, leaders) = jax.lax.scan(
            one_round, (states, configs), (jnp.arange(rounds), jnp.moveaxis(train_keys, 1, 0))
        )
        best = leaders[-1]
        history = PBTHistory(scores, trained_with, parents)
        return best, one_member(configs, best), one_member(states, best), history

    return jax.jit(program)


def population_based_training(
    init_fn: InitFn,
    train_fn: TrainFn,
    eval_fn: EvalFn,
    configs: Any,
    key: ArrayLike,
    *,
    total_steps: int,
    interval: int,
    maximize: bool = True,
    fraction: float = 0.25,
    explore_fn: Callable[[Any, jax.Array], Any] | None = None,
    perturbation: float = 1.25,
) -> PBTResult:
    r"""Population-based training: the worst members copy the best ones and perturb them.

    All N members train side by side for ``total_steps`` in :math:`R` = ``total_steps /
    interval`` rounds, as one ``jax.jit``-ed ``jax.lax.scan`` over the rounds of a
    ``jax.vmap`` over the members. After round :math:`t < R`:

    1. every member trains ``interval`` more steps with its configuration :math:`h_i`
       and is scored, :math:`s_i` = ``eval_fn(state_i, h_i)``;
    2. *exploit*: with :math:`m = \max(1, \lfloor \text{fraction} \cdot N \rfloor)`, each
       of the :math:`m` worst members :math:`b` picks a parent :math:`p` uniformly among
       the :math:`m` best and takes its whole state (model and optimizer state) and
       configuration, :math:`(\text{state}_b, h_b) \leftarrow (\text{state}_p, h_p)`,
       a gather over the population axis;
    3. *explore*: each replaced member perturbs its copied configuration,
       :math:`h_b \leftarrow` ``explore_fn(h_p, key)``; by default every element of
       every floating leaf is multiplied by ``perturbation`` or ``1 / perturbation``,
       each with probability 1/2 (integer leaves, such as a seed, are kept).

    The last round only trains and scores. The cost is N * ``total_steps`` member-steps,
    as much as a grid over the same N configurations, but the configurations move
    towards good ones during training, and a member's configuration may change over
    time (a schedule of loss weights).

    Keys: with ``member_root, exploit_root = jax.random.split(key)``, member ``i`` is
    initialised and trained with ``member_keys(member_root, i, R)`` (its own keys
    whatever state it copied); round :math:`t`'s exploit and explore split
    ``jax.random.fold_in(exploit_root, t)`` into N + 1 keys: the first picks the
    parents, key :math:`1 + i` is member :math:`i`'s ``explore_fn`` key. Ties in the
    ranking go to the lower index, a NaN score ranks last. Keep the optimizer state in
    ``state``: a replaced member takes its parent's step count, so an Optax schedule
    over ``total_steps`` continues.

    Args:
      init_fn: ``(config, key) -> state``, one member's initial training state.
      train_fn: ``(state, config, key, num_steps) -> state``, pure and jittable; called
        with ``num_steps = interval``, a static Python int.
      eval_fn: ``(state, config) -> score``, a scalar validation score of one member.
      configs: a pytree of floating or integer arrays with a common leading axis
        N >= 2, the initial configurations.
      key: one PRNG key.
      total_steps: every member's training steps, a multiple of ``interval``.
      interval: the steps between two exploit/explore steps, an int >= 1.
      maximize: a bool, whether a higher score is better (False for a validation loss).
      fraction: the share of members replaced each round (and of parents to copy
        from), in (0, 0.5].
      explore_fn: ``(config, key) -> config`` of the same structure, shapes and dtypes
        (checked when the program is traced); by default the random multiplicative
        perturbation above.
      perturbation: the default explore's factor, > 0 (unused with ``explore_fn``).

    Returns:
      A :class:`PBTResult`; ``history`` holds every round's scores, configurations and
      parents.

    Raises:
      TypeError: at call time, for non-numeric configs, a key that is not a PRNG key,
        a ``maximize`` that is not a bool, or functions that are not callable.
      ValueError: at call time, for fewer than 2 members, scalar or unequal configs,
        several keys, bad ``total_steps``, ``interval``, ``fraction`` or
        ``perturbation``; when the program is traced, for an ``eval_fn`` that returns a
        non-scalar or a ``train_fn`` or ``explore_fn`` that changes shapes or dtypes;
        after the run, when every score of a round is NaN (naming the round).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> def init_fn(w, key):  # fit theta on the loss (theta - 1)^2 + w (theta + 1)^2
      ...     return jnp.zeros(())
      >>> def train_fn(theta, w, key, num_steps):
      ...     grad = lambda t: 2 * (t - 1) + 2 * w[0] * (t + 1)
      ...     step = lambda t, _: (t - 0.1 * grad(t), None)
      ...     return jax.lax.scan(step, theta, None, length=num_steps)[0]
      >>> def eval_fn(theta, w):  # validation wants theta = 0.5, i.e. w = 1/3
      ...     return -((theta - 0.5) ** 2)
      >>> weights = jnp.array([[0.0], [0.05], [1.0], [2.0], [3.0], [5.0], [8.0], [10.0]])
      >>> result = population_based_training(
      ...     init_fn, train_fn, eval_fn, weights, jax.random.key(0),
      ...     total_steps=200, interval=10, fraction=0.25)
      >>> result.member_steps, result.history.scores.shape
      (1600, (20, 8))
      >>> bool(result.history.scores[-1].max() > result.history.scores[0].max())
      True

    References:
      M. Jaderberg et al., "Population Based Training of Neural Networks",
      arXiv:1711.09846, 2017.
    """
    functions = {"init_fn": init_fn, "train_fn": train_fn, "eval_fn": eval_fn}
    if explore_fn is not None:
        functions["explore_fn"] = explore_fn
    configs, num, key, maximize = search_inputs(functions, configs, key, maximize, 2)
    total_steps = _checks.positive_int(total_steps, "total_steps")
    interval = _checks.positive_int(interval, "interval")
    if total_steps % interval:
        raise ValueError(
            f"total_steps must be a multiple of interval, got total_steps={total_steps} and "
            f"interval={interval}."
        )
    share = _checks.concrete_float(fraction)
    if share is None or not 0.0 < share <= 0.5:
        raise ValueError(f"fraction must be a number in (0, 0.5], got {fraction!r}.")
    _checks.positive(perturbation, "perturbation")

    program = _pbt_program(
        init_fn,
        train_fn,
        eval_fn,
        explore_fn,
        interval,
        total_steps // interval,
        max(1, int(share * num)),
        maximize,
    )
    best, best_config, best_state, history = program(configs, key, jnp.float32(perturbation))
    for round_index, scores in enumerate(np.asarray(history.scores)):
        check_scores(scores, f"after round {round_index} (of {total_steps // interval})")
    return PBTResult(
        best_index=int(best),
        best_config=best_config,
        best_state=best_state,
        member_steps=num * total_steps,
        history=history,
    )
