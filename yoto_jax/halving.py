r"""Successive halving: train all configurations a little, keep the best 1/eta, repeat.

:func:`successive_halving` trains all N members for a short rung, keeps the best
:math:`\lfloor n / \eta \rfloor`, trains those further, and so on until one member is
left; each rung is one jitted, vmapped program over the survivors, optionally split
over a mesh axis and checkpointed after every rung.

References:
  K. Jamieson and A. Talwalkar, "Non-stochastic Best Arm Identification and
  Hyperparameter Optimization", AISTATS 2016.
  L. Li, K. Jamieson, G. DeSalvo, A. Rostamizadeh and A. Talwalkar, "Hyperband: A Novel
  Bandit-Based Approach to Hyperparameter Optimization", JMLR 2018 (arXiv:1603.06560).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from yoto_jax import _checks, _search_checkpoint
from yoto_jax._population import (
    EvalFn,
    InitFn,
    TrainFn,
    abstract_population,
    badness,
    check_scores,
    check_step_counters,
    init_program,
    keys_per_rung,
    one_member,
    rung_lengths,
    rung_program,
    rung_sizes,
    search_inputs,
    take,
)


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
      member_steps: the training steps asked of ``train_fn``, summed over members
        (padding excluded).
      history: one :class:`Rung` per rung.
    """

    best_index: int
    best_config: Any
    best_state: Any
    member_steps: int
    history: tuple[Rung, ...]


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
      configs: a pytree of floating or integer arrays with a common leading axis N >= 1,
        one entry per configuration (e.g. an (N, K+1) array of loss weights, and a seed).
      key: one PRNG key.
      total_steps: the winner's training steps, an int >= the number of rungs.
      eta: keep the best ``n // eta`` members after each rung, an int >= 2.
      maximize: a bool, whether a higher score is better (False for a validation loss).
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
        orbax, their original indices and the history as JSON) here; if the directory
        already holds this search's checkpoint, resume from it instead of starting over,
        to a bitwise-identical result. It is refused when it holds another search (other
        configuration values, plan, key or state structure: the error names what
        differs) or files that are not a search checkpoint, and while another process
        runs a search on it (a lock file). The last two rungs' checkpoints are kept: an
        unreadable latest one is moved aside with a warning and the search resumes from
        the one before. The states must be arrays orbax can save (store a PRNG key in a
        state as ``jax.random.key_data``). Needs ``orbax-checkpoint``.
      stop_after_rung: for testing preemption: return once this many rungs are done
        (and saved to ``checkpoint_dir``, which it needs). The result then describes the
        search so far: the best member of the last rung, trained for fewer steps.

    Returns:
      A :class:`HalvingResult`.

    Raises:
      TypeError: at call time, for non-numeric configs, a key that is not a PRNG key,
        a ``maximize`` that is not a bool, or functions that are not callable.
      ValueError: at call time, for empty, scalar or unequal configs, several keys, bad
        ``total_steps``, ``eta``, ``rung_steps``, ``mesh`` or ``axis``, or a
        ``checkpoint_dir`` that holds another search or other files; when the first
        rung is traced, for an ``eval_fn`` that returns a non-scalar or a ``train_fn``
        that changes the state's shapes or dtypes; after the first rung, for a
        ``train_fn`` that did not run ``num_steps`` steps by the state's own step
        counters (integer leaves per member named ``count``, ``step`` or ``steps``, as
        an Optax state's or an ``nnx.Optimizer``'s, outside a wrapper's
        ``inner_state``; at least one must have advanced by ``num_steps``); after a
        rung whose every score is NaN.
      RuntimeError: while another process holds ``checkpoint_dir``.

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
    configs, num, key, maximize = search_inputs(
        {"init_fn": init_fn, "train_fn": train_fn, "eval_fn": eval_fn}, configs, key, maximize, 1
    )
    eta = _checks.positive_int(eta, "eta", minimum=2)
    sizes = rung_sizes(num, eta)
    why = f"{num} configurations with eta={eta}"
    steps = rung_lengths(total_steps, len(sizes), rung_steps, why)
    replicated, split, num_shards = _population_shardings(mesh, axis)
    if stop_after_rung is not None:
        _checks.positive_int(stop_after_rung, "stop_after_rung")
        if checkpoint_dir is None:
            raise ValueError("stop_after_rung simulates preemption: it needs checkpoint_dir.")

    def place(tree: Any) -> Any:
        """``tree`` split over the mesh axis (as it is without a mesh)."""
        return tree if split is None else jax.device_put(tree, split)

    def population(tree: Any, positions: np.ndarray) -> Any:
        """Rows ``positions`` of ``tree``, padded with the first one to a multiple of the
        mesh axis and split over it."""
        padded = np.concatenate([positions, np.repeat(positions[:1], -len(positions) % num_shards)])
        return place(take(tree, padded, replicated))

    def abstract_states(count: int) -> Any:
        """The shapes, dtypes and placement of ``count`` members' states."""
        return abstract_population(init_fn, configs, key, count, replicated)

    fingerprint = (
        {}
        if checkpoint_dir is None
        else _fingerprint(configs, eta, maximize, sizes, steps, key, abstract_states(1))
    )
    with _search_checkpoint.checkpoint_manager(checkpoint_dir, fingerprint) as manager:
        init_keys, rung_keys = keys_per_rung(key, num, len(sizes))
        if replicated is not None:
            configs_on_mesh, init_keys, rung_keys = jax.device_put(
                (configs, init_keys, rung_keys), replicated
            )
        else:
            configs_on_mesh = configs

        restored = None
        if manager is not None:
            restored = _search_checkpoint.restore(
                manager, lambda record: abstract_states(len(record["survivors"]))
            )
        history, survivors, states = (
            ([], np.arange(num), None) if restored is None else _from_record(*restored)
        )
        for rung in range(len(history), len(sizes)):
            if stop_after_rung is not None and rung >= stop_after_rung:
                break
            if states is None:
                initial = population((configs_on_mesh, init_keys), survivors)
                states = place(init_program(init_fn)(*initial))
            elif split is not None:  # survivors are gathered unsplit; split them again
                states = population(states, np.arange(len(survivors)))
            members = population((configs_on_mesh, rung_keys[rung]), survivors)
            trained, scores = rung_program(train_fn, eval_fn, steps[rung])(states, *members)
            if rung == 0:
                check_step_counters(states, trained, steps[rung], len(survivors))
            states = trained
            scores = np.asarray(scores)[: len(survivors)]
            check_scores(scores, f"after rung {rung} (of {len(sizes)}, {steps[rung]} steps)")
            order = np.lexsort((survivors, badness(scores, maximize, np)))
            history.append(Rung(survivors[order], scores[order], steps[rung]))
            kept = order[: sizes[rung + 1] if rung + 1 < len(sizes) else 1]
            survivors, states = survivors[kept], take(states, kept, replicated)
            if manager is not None:
                _search_checkpoint.save(manager, len(history), _record(history, survivors), states)

    best = int(survivors[0])
    return HalvingResult(
        best_index=best,
        best_config=one_member(configs, best),
        best_state=one_member(states, 0),
        member_steps=sum(len(r.indices) * r.num_steps for r in history),
        history=tuple(history),
    )


def _fingerprint(
    configs: Any,
    eta: int,
    maximize: bool,
    sizes: list[int],
    steps: list[int],
    key: jax.Array,
    state: Any,
) -> dict:
    """What a checkpoint must match to be resumed: the configurations' values, the plan,
    the key and the structure, shapes and dtypes of a member's state (``state``: one
    member's, with a leading axis 1)."""
    return {
        "configs": _search_checkpoint.describe(configs, values=True),
        "num_configs": sizes[0],
        "eta": eta,
        "maximize": maximize,
        "rung_sizes": sizes,
        "rung_steps": steps,
        "key": _search_checkpoint.key_record(key),
        "state": _search_checkpoint.describe(
            jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), state), values=False
        ),
    }


def _record(history: list[Rung], survivors: np.ndarray) -> dict:
    """The history and the survivors' original indices, as JSON."""
    return {
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


def _from_record(record: dict, states: Any) -> tuple[list[Rung], np.ndarray, Any]:
    """``(history, survivors, states)`` from a checkpoint's JSON ``record`` and states."""
    history = [
        Rung(
            np.asarray(rung["indices"], np.int64),
            np.asarray(rung["scores"], jnp.dtype(rung["dtype"])),
            rung["num_steps"],
        )
        for rung in record["history"]
    ]
    return history, np.asarray(record["survivors"], np.int64), states
