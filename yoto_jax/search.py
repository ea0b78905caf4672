r"""Adaptive search over loss weights: successive halving and population-based training.

A grid search (:mod:`yoto_jax.grid`) trains every configuration for the whole budget.
Both searches here spend less on the configurations that are visibly losing:

* :func:`successive_halving` trains all N members for a short rung, keeps the best
  :math:`\lfloor n / \eta \rfloor`, trains those further, and so on until one member
  is left; each rung is one jitted, vmapped program over the survivors.
* :func:`population_based_training` trains all N members for the whole budget in one
  jitted program, and every ``interval`` steps the worst members take over the state
  and the (perturbed) configuration of the best ones.

Both take the same three pure functions: ``init_fn(config, key) -> state``,
``train_fn(state, config, key, num_steps) -> state`` and ``eval_fn(state, config) ->
score``, and a pytree of configurations whose leaves have a leading axis N, e.g. the
(N, K+1) loss-weight rows of :func:`yoto_jax.loss_weight_grid`.

References:
  K. Jamieson and A. Talwalkar, "Non-stochastic Best Arm Identification and
  Hyperparameter Optimization", AISTATS 2016.
  L. Li, K. Jamieson, G. DeSalvo, A. Rostamizadeh and A. Talwalkar, "Hyperband: A Novel
  Bandit-Based Approach to Hyperparameter Optimization", JMLR 2018 (arXiv:1603.06560).
  M. Jaderberg et al., "Population Based Training of Neural Networks", arXiv:1711.09846,
  2017.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.grid import _key_axis

InitFn = Callable[[Any, jax.Array], Any]
TrainFn = Callable[[Any, Any, jax.Array, int], Any]
EvalFn = Callable[[Any, Any], ArrayLike]

_CACHE_SIZE = 64
"""Compiled programs kept per kind (keyed by the user's functions and static steps)."""


class Rung(NamedTuple):
    """One rung of successive halving.

    Attributes:
      indices: the original indices (into ``configs``) of the members trained in this
        rung, best first; the first ``len(next_rung.indices)`` of them go on.
      scores: their ``eval_fn`` scores after the rung, in the same order.
      num_steps: the training steps each member got in this rung.
    """

    indices: np.ndarray
    scores: np.ndarray
    num_steps: int


class HalvingResult(NamedTuple):
    """The outcome of :func:`successive_halving`.

    Attributes:
      best_index: the winner's index into ``configs``.
      best_config: the winner's configuration (``configs`` without the leading axis).
      best_state: the winner's final state, trained for ``total_steps`` in all.
      member_steps: the training steps spent, summed over members (padding excluded).
      history: one :class:`Rung` per rung.
    """

    best_index: int
    best_config: Any
    best_state: Any
    member_steps: int
    history: tuple[Rung, ...]


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


def member_keys(key: ArrayLike, index: ArrayLike, num_rungs: int) -> tuple[jax.Array, jax.Array]:
    """The PRNG keys of member ``index``: one to initialise it, one per rung (or round).

    They depend on ``key``, the member's original index and the rung only:

    .. code-block:: python

        member = jax.random.fold_in(key, index)
        init_key = jax.random.fold_in(member, 0)
        rung_keys[r] = jax.random.fold_in(member, r + 1)   # r = 0, ..., num_rungs - 1

    Args:
      key: the search's PRNG key.
      index: the member's index into ``configs``, or an int array of several indices.
      num_rungs: the number of rungs (or rounds), an int >= 1.

    Returns:
      ``(init_key, rung_keys)``: ``init_key`` has the shape of ``index``, ``rung_keys``
      that shape plus a last axis ``num_rungs``. Typed keys (a raw ``uint32`` key is
      wrapped first).

    Example:
      >>> import jax
      >>> init_key, rung_keys = member_keys(jax.random.key(0), 4, num_rungs=3)
      >>> rung_keys.shape
      (3,)
    """
    num_rungs = _checks.positive_int(num_rungs, "num_rungs")
    key, index = _typed_key(key), jnp.asarray(index)
    # Two flat vmapped fold_ins: XLA compiles these much faster than nested vmaps.
    members = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index.ravel())
    keys = jax.vmap(jax.random.fold_in)(
        jnp.broadcast_to(members[:, None], (index.size, num_rungs + 1)).ravel(),
        jnp.tile(jnp.arange(num_rungs + 1), index.size),
    ).reshape(*index.shape, num_rungs + 1)
    return keys[..., 0], keys[..., 1:]


def _typed_key(key: ArrayLike) -> jax.Array:
    """``key`` as a typed PRNG key; a raw ``uint32`` key is wrapped."""
    key = jnp.asarray(key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def _check_functions(**functions: Any) -> None:
    """Raises unless every keyword argument is callable."""
    for name, function in functions.items():
        if not callable(function):
            raise TypeError(f"{name} must be a function, got {type(function).__name__}.")


def _check_key(key: ArrayLike, num: int) -> None:
    """Raises unless ``key`` is one PRNG key (typed or raw)."""
    if _key_axis(key, num) is not None:
        raise ValueError(
            f"key must be one PRNG key (the search derives each member's keys from it), got "
            f"{num} keys."
        )


def _key_record(key: jax.Array) -> list[Any]:
    """A typed ``key`` as JSON: its implementation's name and its raw bits."""
    return [str(jax.random.key_impl(key)), np.asarray(jax.random.key_data(key)).tolist()]


def _badness(scores: Any, maximize: bool, xp: Any = jnp) -> Any:
    """Sort key, lower is better: the negated score when maximising; NaN ranks last.
    ``xp`` is ``jnp`` inside a program, ``np`` on the host."""
    return xp.where(xp.isnan(scores), xp.inf, -scores if maximize else scores)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _keys_per_rung(
    key: jax.Array, num: int, num_rungs: int
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """:func:`member_keys` of members 0, ..., num - 1: their init keys (num,), and one
    (num,) array of keys per rung."""
    init_keys, rung_keys = member_keys(key, jnp.arange(num), num_rungs)
    return init_keys, tuple(jnp.moveaxis(rung_keys, 1, 0))


def _train_and_score(train_fn: TrainFn, eval_fn: EvalFn, num_steps: int) -> Callable:
    """One member's ``(state, config, key) -> (state, score)``: train, then evaluate."""

    def member(state: Any, config: Any, key: jax.Array) -> tuple[Any, jax.Array]:
        state = train_fn(state, config, key, num_steps)
        score = jnp.asarray(eval_fn(state, config))
        if score.shape != ():
            raise ValueError(
                f"eval_fn must return one scalar score per member, got shape {score.shape}; "
                "reduce it (e.g. .mean()) first."
            )
        return state, score

    return member


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _init_program(init_fn: InitFn) -> Callable:
    """``init_fn`` jitted and vmapped over the population."""
    return jax.jit(jax.vmap(init_fn))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _rung_program(train_fn: TrainFn, eval_fn: EvalFn, num_steps: int) -> Callable:
    """The jitted, vmapped rung; jit compiles it once per population size and layout."""
    return jax.jit(jax.vmap(_train_and_score(train_fn, eval_fn, num_steps)))


@functools.partial(jax.jit, static_argnums=2)
def _take(tree: Any, positions: ArrayLike, out_sharding: NamedSharding | None) -> Any:
    """Rows ``positions`` of every leaf (a gather over the population axis), laid out as
    ``out_sharding`` (None: as JAX chooses)."""
    return jax.tree.map(lambda leaf: leaf.at[positions].get(out_sharding=out_sharding), tree)


@jax.jit
def _member(tree: Any, index: ArrayLike) -> Any:
    """Member ``index`` of a population: every leaf's row, the leading axis removed."""
    return jax.tree.map(lambda leaf: leaf[index], tree)


def _rung_sizes(num: int, eta: int) -> list[int]:
    """Population sizes per rung: N, then max(1, n // eta) until one is left."""
    sizes = [num]
    while sizes[-1] > 1:
        sizes.append(max(1, sizes[-1] // eta))
    return sizes


def _check_eta(eta: Any) -> int:
    """``eta`` itself when it is a Python int >= 2."""
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise ValueError(f"eta must be an int >= 2 (keep 1/eta of the members), got {eta!r}.")
    return eta


def _rung_steps(
    total_steps: Any, num_rungs: int, rung_steps: Sequence[int] | None, why: str
) -> list[int]:
    """Training steps per rung: ``rung_steps`` checked, or ``total_steps`` split evenly
    (the later rungs get the remainder)."""
    total_steps = _checks.positive_int(total_steps, "total_steps")
    if rung_steps is None:
        if total_steps < num_rungs:
            raise ValueError(
                f"total_steps too small for the rungs: {why} make {num_rungs} rungs of at least "
                f"one step each, got total_steps={total_steps}."
            )
        base, extra = divmod(total_steps, num_rungs)
        return [base] * (num_rungs - extra) + [base + 1] * extra
    steps = [_checks.positive_int(s, "every entry of rung_steps") for s in rung_steps]
    if len(steps) != num_rungs:
        raise ValueError(
            f"rung_steps must have one entry per rung: {why} make {num_rungs} rungs, got "
            f"{len(steps)} entries."
        )
    if sum(steps) != total_steps:
        raise ValueError(
            f"rung_steps must sum to total_steps={total_steps}, got {steps} (sum {sum(steps)})."
        )
    return steps


def _population_shardings(
    mesh: jax.sharding.Mesh | None, axis: str | None
) -> tuple[NamedSharding | None, NamedSharding | None, int]:
    """(replicated, split over ``axis``, axis size) on ``mesh`` with its axes made
    ``Auto``; (None, None, 1) without a mesh."""
    if mesh is None:
        if axis is not None:
            raise ValueError("axis names an axis of mesh; pass mesh too.")
        return None, None, 1
    if not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
    if axis is None:
        if len(mesh.axis_names) != 1:
            raise ValueError(
                f"mesh has axes {mesh.axis_names}: name the one to split the population over "
                "with axis=."
            )
        axis = mesh.axis_names[0]
    if axis not in mesh.axis_names:
        raise ValueError(f"axis {axis!r} is not an axis of mesh, whose axes are {mesh.axis_names}.")
    # Auto axes: the compiler propagates the population's layout, so train_fn and eval_fn
    # need no sharding annotations (on an Explicit mesh, indexing data with a member's
    # batched indices would ask for one).
    auto = jax.sharding.Mesh(
        mesh.devices,
        mesh.axis_names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names),
    )
    return NamedSharding(auto, P()), NamedSharding(auto, P(axis)), mesh.shape[axis]


@contextlib.contextmanager
def _checkpoint_manager(directory: str | os.PathLike | None) -> Iterator[Any]:
    """An orbax ``CheckpointManager`` on ``directory`` keeping the latest checkpoint, or
    None; closing it waits for a save still being written."""
    if directory is None:
        yield None
        return
    import orbax.checkpoint as ocp  # optional: only checkpointing needs orbax

    options = ocp.CheckpointManagerOptions(max_to_keep=1)
    with ocp.CheckpointManager(os.fspath(os.path.abspath(directory)), options=options) as manager:
        yield manager


def _save_rung(
    manager: Any, settings: dict, history: list[Rung], survivors: np.ndarray, states: Any
) -> None:
    """Checkpoint ``len(history)``: the survivors' states (orbax) and the rest (JSON)."""
    import orbax.checkpoint as ocp

    search = {
        "settings": settings,
        "survivors": survivors.tolist(),
        "history": [
            {
                "indices": rung.indices.tolist(),
                "scores": rung.scores.tolist(),
                "dtype": str(rung.scores.dtype),
                "num_steps": rung.num_steps,
            }
            for rung in history
        ],
    }
    manager.save(
        len(history),
        args=ocp.args.Composite(
            population=ocp.args.StandardSave(states), search=ocp.args.JsonSave(search)
        ),
    )


def _restore_rung(
    manager: Any, settings: dict, abstract_states: Callable[[int], Any]
) -> tuple[list[Rung], np.ndarray, Any] | None:
    """The latest checkpoint as (history, survivors, their states), or None if there is
    none; ``abstract_states(n)`` gives the shapes and placement of n members' states."""
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return None
    search = manager.restore(step, args=ocp.args.Composite(search=ocp.args.JsonRestore())).search
    if search["settings"] != settings:
        raise ValueError(
            "checkpoint_dir holds a search with other settings; pass an empty directory or the "
            f"original arguments. Saved: {search['settings']}, now: {settings}."
        )
    history = [
        Rung(
            np.asarray(rung["indices"], np.int64),
            np.asarray(rung["scores"], jnp.dtype(rung["dtype"])),
            rung["num_steps"],
        )
        for rung in search["history"]
    ]
    survivors = np.asarray(search["survivors"], np.int64)
    target = abstract_states(len(survivors))
    restored = manager.restore(
        step, args=ocp.args.Composite(population=ocp.args.StandardRestore(target))
    )
    return history, survivors, restored.population


def successive_halving(
    init_fn: InitFn,
    train_fn: TrainFn,
    eval_fn: EvalFn,
    configs: Any,
    key: ArrayLike,
    *,
    total_steps: int,
    eta: int = 3,
    maximize: bool = True,
    rung_steps: Sequence[int] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    axis: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    stop_after_rung: int | None = None,
) -> HalvingResult:
    r"""Successive halving: train all configurations a little, keep the best 1/eta, repeat.

    Rung :math:`r = 0, 1, \dots, R-1` trains the :math:`n_r` surviving members for
    :math:`s_r` more steps each (continuing from their states), scores every member
    with ``eval_fn``, and keeps the best :math:`n_{r+1} = \max(1, \lfloor n_r / \eta
    \rfloor)`; :math:`n_0 = N` and the rungs stop at one member, whose last rung finishes
    its training. So the winner is trained for :math:`\sum_r s_r` = ``total_steps``
    steps in all, and the search costs

    .. math::
        \text{member\_steps} = \sum_r n_r s_r,

    e.g. :math:`(9 + 3 + 1) T / 3` for N = 9, eta = 3 and :math:`s_r = T / 3`, about
    4.3 runs of ``total_steps`` against 9 for the grid. Ties are broken by the lower
    original index; a NaN score ranks last.

    Each rung is one ``jax.jit``-ed ``jax.vmap`` over the surviving population (train,
    then evaluate); the survivors are gathered by index on every leaf of the states.
    The compiled programs are cached by the functions, the population size and the rung
    length, so a second search of the same size with the same functions compiles
    nothing.

    Every member's randomness depends on its original index and the rung only (see
    :func:`member_keys`): training configuration :math:`i` alone,

    .. code-block:: python

        init_key, rung_keys = member_keys(key, i, len(result.history))
        state = init_fn(config_i, init_key)
        for r, rung in enumerate(result.history):
            state = train_fn(state, config_i, rung_keys[r], rung.num_steps)

    gives the winner's ``best_state`` (to float32 rounding: the vmapped program may
    order floating-point operations differently). Keep the optimizer state (with its
    step count) in ``state``: an Optax schedule defined over ``total_steps`` then
    continues across rungs exactly as in one uninterrupted run.

    Args:
      init_fn: ``(config, key) -> state``, one member's initial training state.
      train_fn: ``(state, config, key, num_steps) -> state``, pure and jittable; trains
        ``num_steps`` (a static Python int) steps, e.g. a ``jax.lax.scan``.
      eval_fn: ``(state, config) -> score``, a scalar validation score of one member.
      configs: a pytree of floating arrays with a common leading axis N, one entry per
        configuration (e.g. an (N, K+1) array of loss weights).
      key: one PRNG key.
      total_steps: the winner's training steps, an int >= the number of rungs.
      eta: keep the best ``n // eta`` members after each rung, an int >= 2.
      maximize: whether a higher score is better (False for a validation loss).
      rung_steps: the steps of each rung, one positive int per rung summing to
        ``total_steps``; by default ``total_steps`` split as evenly as possible (the
        later rungs get the remainder).
      mesh: split the population over an axis of this mesh. A rung whose population does
        not divide the axis size is padded with copies of its first member (their
        results are discarded and their steps not counted); between rungs the survivors
        are gathered onto every device and split again.
      axis: the mesh axis to split over; may be left out for a one-axis mesh. The
        population is laid out with the mesh's axes made ``Auto``, so ``train_fn`` and
        ``eval_fn`` need no sharding annotations.
      checkpoint_dir: after every rung, save the search (the survivors' states with
        orbax, their original indices, the history and the settings as JSON) here; if
        the directory already holds a checkpoint, resume from it instead of starting
        over, to a bitwise-identical result. The states must be arrays orbax can save
        (store a PRNG key in a state as ``jax.random.key_data``). Needs
        ``orbax-checkpoint``.
      stop_after_rung: for testing preemption: return once this many rungs are done
        (and saved to ``checkpoint_dir``, which it needs). The result then describes the
        search so far: the best member of the last rung, trained for fewer steps.

    Returns:
      A :class:`HalvingResult`.

    Raises:
      ValueError or TypeError at call time for empty, non-floating, scalar or unequal
      configs, bad ``total_steps``, ``eta``, ``rung_steps``, ``mesh`` or ``axis``, and
      (when the first rung is traced) for an ``eval_fn`` that returns a non-scalar.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> def init_fn(w, key):  # fit theta on the loss (theta - 1)^2 + w (theta + 1)^2
      ...     return jnp.zeros(())
      >>> def train_fn(theta, w, key, num_steps):
      ...     grad = lambda t: 2 * (t - 1) + 2 * w[0] * (t + 1)
      ...     step = lambda t, _: (t - 0.1 * grad(t), None)
      ...     return jax.lax.scan(step, theta, None, length=num_steps)[0]
      >>> def eval_fn(theta, w):  # validation wants theta = 0.5
      ...     return -((theta - 0.5) ** 2)
      >>> weights = jnp.array([[0.0], [0.1], [0.3], [1.5], [3.0], [10.0]])
      >>> result = successive_halving(
      ...     init_fn, train_fn, eval_fn, weights, jax.random.key(0), total_steps=60, eta=2)
      >>> result.best_index, result.member_steps  # (6 + 3 + 1) * 20 steps
      (2, 200)
      >>> [rung.indices.tolist() for rung in result.history]
      [[2, 1, 0, 3, 4, 5], [2, 1, 0], [2]]

    References:
      K. Jamieson and A. Talwalkar, "Non-stochastic Best Arm Identification and
      Hyperparameter Optimization", AISTATS 2016; L. Li et al., "Hyperband: A Novel
      Bandit-Based Approach to Hyperparameter Optimization", JMLR 2018.
    """
    _check_functions(init_fn=init_fn, train_fn=train_fn, eval_fn=eval_fn)
    configs = jax.tree.map(jnp.asarray, configs)
    num = _checks.num_configs(configs, "configs")
    _check_key(key, num)
    key = _typed_key(key)
    sizes = _rung_sizes(num, _check_eta(eta))
    why = f"{num} configurations with eta={eta}"
    steps = _rung_steps(total_steps, len(sizes), rung_steps, why)
    replicated, split, num_shards = _population_shardings(mesh, axis)
    if stop_after_rung is not None:
        _checks.positive_int(stop_after_rung, "stop_after_rung")
        if checkpoint_dir is None:
            raise ValueError("stop_after_rung simulates preemption: it needs checkpoint_dir.")
    maximize = bool(maximize)

    init_keys, rung_keys = _keys_per_rung(key, num, len(sizes))
    if replicated is not None:
        configs_on_mesh, init_keys, rung_keys = jax.device_put(
            (configs, init_keys, rung_keys), replicated
        )
    else:
        configs_on_mesh = configs

    def place(tree: Any) -> Any:
        """``tree`` split over the mesh axis (as it is without a mesh)."""
        return tree if split is None else jax.device_put(tree, split)

    def population(tree: Any, positions: np.ndarray) -> Any:
        """Rows ``positions`` of ``tree``, padded with the first one to a multiple of the
        mesh axis and split over it."""
        padded = np.concatenate([positions, np.repeat(positions[:1], -len(positions) % num_shards)])
        return place(_take(tree, padded, replicated))

    def abstract_states(count: int) -> Any:
        """The shapes, dtypes and placement of ``count`` members' states."""
        members = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct((count, *x.shape[1:]), x.dtype), (configs, init_keys)
        )
        shapes = jax.eval_shape(_init_program(init_fn), *members)
        placement = replicated or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=placement), shapes
        )

    settings = {
        "num_configs": num,
        "eta": eta,
        "maximize": maximize,
        "rung_steps": steps,
        "key": _key_record(key),
    }
    with _checkpoint_manager(checkpoint_dir) as manager:
        restored = None if manager is None else _restore_rung(manager, settings, abstract_states)
        history, survivors, states = restored or ([], np.arange(num), None)
        for rung in range(len(history), len(sizes)):
            if stop_after_rung is not None and rung >= stop_after_rung:
                break
            if states is None:
                initial = population((configs_on_mesh, init_keys), survivors)
                states = place(_init_program(init_fn)(*initial))
            elif split is not None:  # survivors are gathered unsplit; split them again
                states = population(states, np.arange(len(survivors)))
            members = population((configs_on_mesh, rung_keys[rung]), survivors)
            states, scores = _rung_program(train_fn, eval_fn, steps[rung])(states, *members)
            scores = np.asarray(scores)[: len(survivors)]
            order = np.lexsort((survivors, _badness(scores, maximize, np)))
            history.append(Rung(survivors[order], scores[order], steps[rung]))
            kept = order[: sizes[rung + 1] if rung + 1 < len(sizes) else 1]
            survivors, states = survivors[kept], _take(states, kept, replicated)
            if manager is not None:
                _save_rung(manager, settings, history, survivors, states)

    best = int(survivors[0])
    return HalvingResult(
        best_index=best,
        best_config=_member(configs, best),
        best_state=_member(states, 0),
        member_steps=sum(len(r.indices) * r.num_steps for r in history),
        history=tuple(history),
    )


def _perturb(config: Any, key: jax.Array, perturbation: jax.Array) -> Any:
    """The default explore: every element of every leaf times ``perturbation`` or
    ``1 / perturbation``, each with probability 1/2."""
    leaves, treedef = jax.tree.flatten(config)
    factors = [
        jnp.where(jax.random.bernoulli(k, 0.5, leaf.shape), perturbation, 1 / perturbation)
        for leaf, k in zip(leaves, jax.random.split(key, len(leaves)), strict=True)
    ]
    return jax.tree.unflatten(
        treedef, [leaf * f.astype(leaf.dtype) for leaf, f in zip(leaves, factors, strict=True)]
    )


@functools.lru_cache(maxsize=_CACHE_SIZE)
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
    member = _train_and_score(train_fn, eval_fn, interval)

    def program(configs: Any, key: jax.Array, perturbation: jax.Array) -> tuple:
        num = jax.tree.leaves(configs)[0].shape[0]
        everyone = jnp.arange(num)
        member_root, exploit_root = jax.random.split(key)
        init_keys, train_keys = member_keys(member_root, everyone, rounds)
        explore = explore_fn or functools.partial(_perturb, perturbation=perturbation)

        def one_round(carry: tuple, inputs: tuple) -> tuple:
            states, configs = carry
            round_index, keys = inputs
            states, scores = jax.vmap(member)(states, configs, keys)
            order = jnp.argsort(_badness(scores, maximize), stable=True)  # best first
            exploit_keys = jax.random.split(jax.random.fold_in(exploit_root, round_index), num + 1)
            # floor(m U), U ~ U[0, 1): a uniform pick among the m best (one threefry call
            # instead of randint's three, so the program compiles faster)
            uniform = jax.random.uniform(exploit_keys[0], (num_replaced,))
            picks = jnp.minimum(uniform * num_replaced, num_replaced - 1).astype(jnp.int32)
            exploit = everyone.at[order[num - num_replaced :]].set(order[picks])
            parents = jnp.where(round_index == rounds - 1, everyone, exploit)
            copied = _take(configs, parents, None)
            explored = jax.vmap(explore)(copied, exploit_keys[1:])
            replaced = parents != everyone
            new_configs = jax.tree.map(
                lambda new, old: jnp.where(
                    replaced.reshape((num,) + (1,) * (old.ndim - 1)), new, old
                ),
                explored,
                copied,
            )
            history = (scores, configs, parents, order[0])
            return (_take(states, parents, None), new_configs), history

        states = jax.vmap(init_fn)(configs, init_keys)
        (states, configs), (scores, trained_with, parents, leaders) = jax.lax.scan(
            one_round, (states, configs), (jnp.arange(rounds), jnp.moveaxis(train_keys, 1, 0))
        )
        best = leaders[-1]
        history = PBTHistory(scores, trained_with, parents)
        return best, _member(configs, best), _member(states, best), history

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
       every leaf is multiplied by ``perturbation`` or ``1 / perturbation``, each with
       probability 1/2.

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
      configs: a pytree of floating arrays with a common leading axis N >= 2, the
        initial configurations.
      key: one PRNG key.
      total_steps: every member's training steps, a multiple of ``interval``.
      interval: the steps between two exploit/explore steps, an int >= 1.
      maximize: whether a higher score is better (False for a validation loss).
      fraction: the share of members replaced each round (and of parents to copy
        from), in (0, 0.5].
      explore_fn: ``(config, key) -> config`` of the same shapes and dtypes; by
        default the random multiplicative perturbation above.
      perturbation: the default explore's factor, > 0 (unused with ``explore_fn``).

    Returns:
      A :class:`PBTResult`; ``history`` holds every round's scores, configurations and
      parents.

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
    _check_functions(init_fn=init_fn, train_fn=train_fn, eval_fn=eval_fn)
    if explore_fn is not None:
        _check_functions(explore_fn=explore_fn)
    configs = jax.tree.map(jnp.asarray, configs)
    num = _checks.num_configs(configs, "configs")
    if num < 2:
        raise ValueError(f"population_based_training needs at least 2 members, got {num}.")
    _check_key(key, num)
    key = _typed_key(key)
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
        bool(maximize),
    )
    best, best_config, best_state, history = program(configs, key, jnp.float32(perturbation))
    return PBTResult(
        best_index=int(best),
        best_config=best_config,
        best_state=best_state,
        member_steps=num * total_steps,
        history=history,
    )
