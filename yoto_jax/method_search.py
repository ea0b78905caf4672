r"""Successive halving across families of members: pick the method, not only its weights.

:func:`search_methods` runs successive halving over *heterogeneous* members: each
family (a weighting method, say) has its own ``init_fn``, ``train_fn``, ``eval_fn`` and
configurations, so its states may have any structure. Every rung trains each family's
survivors as one jitted, vmapped program, scores them with the family's ``eval_fn``,
and keeps the best :math:`\max(1, \lfloor n / \eta \rfloor)` of all families together.

References: those of :mod:`yoto_jax.halving`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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
    search_key,
    search_members,
    take,
)

Family = tuple[InitFn, TrainFn, EvalFn, Any]
"""``(init_fn, train_fn, eval_fn, configs)``, as in :func:`yoto_jax.successive_halving`."""


class MethodRung(NamedTuple):
    """One rung of :func:`search_methods`, best first.

    Attributes:
      families: the family of each member trained in this rung.
      indices: each member's index into its family's configs.
      scores: their ``eval_fn`` scores after the rung.
      num_steps: the training steps each member got in this rung.
    """

    families: tuple[str, ...]
    indices: np.ndarray
    scores: np.ndarray
    num_steps: int


class MethodSearchResult(NamedTuple):
    """The outcome of :func:`search_methods`.

    Attributes:
      best_family: the winner's family (its name in ``families``).
      best_index: the winner's index into its family's configs.
      best_config: the winner's configuration (without the leading axis).
      best_state: the winner's final state, trained for ``total_steps`` in all.
      member_steps: the training steps asked of the ``train_fn`` s, summed over members.
      history: one :class:`MethodRung` per rung.
    """

    best_family: str
    best_index: int
    best_config: Any
    best_state: Any
    member_steps: int
    history: tuple[MethodRung, ...]


def family_key(key: ArrayLike, name: str) -> jax.Array:
    """The key of family ``name``: ``fold_in(key, h)``, ``h`` the first 31 bits of the
    SHA-256 of the name. Its members' keys are :func:`yoto_jax.member_keys` of it, so
    they depend on the family's name, the member's index and the rung only.

    Example:
      >>> import jax
      >>> from yoto_jax import member_keys
      >>> init_key, rung_keys = member_keys(family_key(jax.random.key(0), "upgrad"), 2, 3)
      >>> rung_keys.shape
      (3,)
    """
    digest = hashlib.sha256(name.encode()).digest()
    return jax.random.fold_in(jnp.asarray(key), int.from_bytes(digest[:4], "big") >> 1)


def _checked_families(families: Any) -> dict[str, tuple]:
    """``{name: (init_fn, train_fn, eval_fn, configs as arrays, N)}``, each checked."""
    if not isinstance(families, Mapping):
        raise TypeError(
            "families must map a name to (init_fn, train_fn, eval_fn, configs), got "
            f"{type(families).__name__}."
        )
    if not families:
        raise ValueError(
            "families is empty: give at least one name -> (init_fn, train_fn, eval_fn, configs)."
        )
    checked = {}
    for name, family in families.items():
        if not isinstance(name, str):
            raise TypeError(f"family names must be strings, got {name!r}.")
        if not isinstance(family, tuple | list) or len(family) != 4:
            given = type(family).__name__
            if isinstance(family, tuple | list):
                given += f" of {len(family)}"
            raise TypeError(
                f"family {name!r} must be a tuple (init_fn, train_fn, eval_fn, configs), got "
                f"a {given}."
            )
        init_fn, train_fn, eval_fn, configs = family
        functions = {"init_fn": init_fn, "train_fn": train_fn, "eval_fn": eval_fn}
        with _naming(name):
            configs, num = search_members(functions, configs, 1)
        checked[name] = (init_fn, train_fn, eval_fn, configs, num)
    return checked


@contextlib.contextmanager
def _naming(name: str) -> Iterator[None]:
    """Prefixes a ``TypeError`` or ``ValueError`` raised inside with the family's name."""
    try:
        yield
    except (TypeError, ValueError) as error:
        if type(error) not in (TypeError, ValueError):
            raise
        raise type(error)(f"family {name!r}: {error}") from None


def search_methods(
    families: Mapping[str, Family],
    key: ArrayLike,
    *,
    total_steps: int,
    eta: int = 3,
    maximize: bool = True,
    rung_steps: Sequence[int] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    stop_after_rung: int | None = None,
) -> MethodSearchResult:
    r"""Successive halving over members of several families, ranked together.

    ``families`` maps a name to ``(init_fn, train_fn, eval_fn, configs)`` with the
    meaning of :func:`yoto_jax.successive_halving`'s arguments; each family's
    ``configs`` has its own leading axis :math:`N_f`, and its states their own
    structure. The search starts from all :math:`N = \sum_f N_f` members. Rung
    :math:`r` trains the :math:`n_r` survivors for :math:`s_r` more steps (one jitted,
    vmapped program per family with survivors), scores each with its family's
    ``eval_fn``, and keeps the best :math:`n_{r+1} = \max(1, \lfloor n_r / \eta
    \rfloor)` over all families, until one is left; ``total_steps`` is split as evenly
    as possible over the rungs (the later rungs get the remainder), or as
    ``rung_steps`` says. The winner is
    trained for ``total_steps`` in all, and the search costs
    :math:`\sum_r n_r s_r` member-steps, e.g. :math:`(9 + 3 + 1) T / 3` for N = 9 and
    eta = 3. The scores must be comparable across families (the same validation
    metric). Ties go to the earlier family in ``families``, then the lower index; a NaN
    score ranks last.

    Member ``i`` of family ``name`` draws its keys from
    ``member_keys(family_key(key, name), i, num_rungs)`` (:func:`family_key`): they
    depend on its family's name, its index and the rung only, not on the other
    families, so adding a family leaves the others' training unchanged.

    Args:
      families: a mapping of names (strings) to ``(init_fn, train_fn, eval_fn,
        configs)``: ``init_fn(config, key) -> state``, ``train_fn(state, config, key,
        num_steps) -> state`` (pure, jittable, ``num_steps`` a static int),
        ``eval_fn(state, config) -> scalar score``, and ``configs`` a pytree of arrays
        with a leading axis :math:`N_f \ge 1`.
      key: one PRNG key.
      total_steps: the winner's training steps, an int >= the number of rungs.
      eta: keep the best ``n // eta`` members after each rung, an int >= 2.
      maximize: a bool, whether a higher score is better (False for a validation loss).
      rung_steps: the steps of each rung, one positive int per rung summing to
        ``total_steps`` (default: an even split). Shorter early rungs let more members
        start for the same member-steps, e.g. 15 members at (0.15, 0.3, 0.55) of the
        steps cost as much as 9 members at thirds.
      checkpoint_dir: save the search after every rung (the survivors' states with
        orbax, the history as JSON) and resume it from there, as
        :func:`yoto_jax.successive_halving` does: same fingerprint (here every family's
        name, configurations and state structure), lock and fallback to the rung
        before. Needs ``orbax-checkpoint``.
      stop_after_rung: for testing preemption: return once this many rungs are done
        and saved (needs ``checkpoint_dir``); the result describes the search so far.

    Returns:
      A :class:`MethodSearchResult`.

    Raises:
      TypeError: for ``families`` that is not a mapping of names to 4-tuples, or a
        family's non-numeric configs or non-callable functions, a key that is not a PRNG
        key, a non-bool ``maximize``.
      ValueError: for empty ``families``, a family with no configs, bad ``total_steps``,
        ``eta`` or ``rung_steps``, a ``checkpoint_dir`` that holds another search; when a family's rung
        is traced, for an ``eval_fn`` that returns a non-scalar or a ``train_fn`` that
        changes the state's structure, shapes or dtypes (naming the family); after the
        first rung, for a ``train_fn`` whose state's step counter shows it did not run
        ``num_steps`` steps; after a rung whose every score is NaN.
      RuntimeError: while another process holds ``checkpoint_dir``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> def init_fn(config, key):  # fit theta to (theta - target)^2
      ...     return jnp.zeros(())
      >>> def gradient_descent(theta, config, key, num_steps):
      ...     step = lambda t, _: (t - config["lr"] * 2 * (t - 1.0), None)
      ...     return jax.lax.scan(step, theta, None, length=num_steps)[0]
      >>> def halfway(theta, config, key, num_steps):  # jumps halfway to 1 each step
      ...     step = lambda t, _: ((t + 1.0) / 2, None)
      ...     return jax.lax.scan(step, theta, None, length=num_steps)[0]
      >>> def eval_fn(theta, config):
      ...     return -((theta - 1.0) ** 2)
      >>> families = {
      ...     "gd": (init_fn, gradient_descent, eval_fn, {"lr": jnp.array([0.01, 0.1, 0.2])}),
      ...     "halfway": (init_fn, halfway, eval_fn, {"lr": jnp.zeros(2)}),
      ... }
      >>> result = search_methods(families, jax.random.key(0), total_steps=30, eta=2)
      >>> result.best_family, result.best_index, result.member_steps  # (5 + 2 + 1) * 10
      ('halfway', 0, 80)
      >>> [list(zip(rung.families, rung.indices.tolist())) for rung in result.history][1]
      [('halfway', 0), ('halfway', 1)]
    """
    checked = _checked_families(families)
    total = sum(family[4] for family in checked.values())
    key = search_key(key, total)
    maximize = _checks.boolean(maximize, "maximize")
    eta = _checks.positive_int(eta, "eta", minimum=2)
    names = list(checked)
    sizes = rung_sizes(total, eta)
    steps = rung_lengths(
        total_steps,
        len(sizes),
        rung_steps,
        f"{total} members of {len(names)} families with eta={eta}",
    )
    if stop_after_rung is not None:
        _checks.positive_int(stop_after_rung, "stop_after_rung")
        if checkpoint_dir is None:
            raise ValueError("stop_after_rung simulates preemption: it needs checkpoint_dir.")

    def abstract_states(name: str, count: int) -> Any:
        init_fn, _, _, configs, _ = checked[name]
        return abstract_population(init_fn, configs, key, count)

    fingerprint = {}
    if checkpoint_dir is not None:
        fingerprint = _fingerprint(checked, eta, maximize, sizes, steps, key)
        for name in names:
            one = abstract_states(name, 1)
            fingerprint[f"state of {name}"] = _search_checkpoint.describe(
                jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), one),
                values=False,
            )
    with _search_checkpoint.checkpoint_manager(checkpoint_dir, fingerprint) as manager:
        keys = {
            name: keys_per_rung(family_key(key, name), checked[name][4], len(sizes))
            for name in names
        }
        history: list[MethodRung] = []
        survivors = {name: np.arange(checked[name][4]) for name in names}
        states: dict[str, Any] = {}
        if manager is not None:
            restored = _search_checkpoint.restore(
                manager,
                lambda record: {
                    _slot(names, name): abstract_states(name, len(indices))
                    for name, indices in record["survivors"].items()
                    if indices
                },
            )
            if restored is not None:
                history, survivors, states = _from_record(names, *restored)
        for rung in range(len(history), len(sizes)):
            if stop_after_rung is not None and rung >= stop_after_rung:
                break
            ranked = []  # (family, index, score) of every member trained in this rung
            for name in names:
                if not len(survivors[name]):
                    continue
                init_fn, train_fn, eval_fn, configs, _ = checked[name]
                init_keys, rung_keys = keys[name]
                members = take((configs, rung_keys[rung]), survivors[name], None)
                with _naming(name):
                    if rung == 0:
                        states[name] = init_program(init_fn)(configs, init_keys)
                    trained, scores = rung_program(train_fn, eval_fn, steps[rung])(
                        states[name], *members
                    )
                    if rung == 0:
                        check_step_counters(
                            states[name], trained, steps[rung], len(survivors[name])
                        )
                states[name] = trained
                ranked += [
                    (name, i, s) for i, s in zip(survivors[name], np.asarray(scores), strict=True)
                ]
            scores = np.asarray([s for _, _, s in ranked])
            check_scores(scores, f"after rung {rung} (of {len(sizes)}, {steps[rung]} steps)")
            family_order = [names.index(name) for name, _, _ in ranked]
            indices = [i for _, i, _ in ranked]
            order = np.lexsort((indices, family_order, badness(scores, maximize, np)))
            history.append(
                MethodRung(
                    tuple(ranked[j][0] for j in order),
                    np.asarray([ranked[j][1] for j in order], np.int64),
                    scores[order],
                    steps[rung],
                )
            )
            kept = [ranked[j] for j in order[: sizes[rung + 1] if rung + 1 < len(sizes) else 1]]
            for name in names:
                positions = {int(i): p for p, i in enumerate(survivors[name])}
                rows = [positions[int(i)] for family, i, _ in kept if family == name]
                survivors[name] = survivors[name][rows]
                if rows:
                    states[name] = take(states[name], np.asarray(rows), None)
                else:
                    states.pop(name, None)
            if manager is not None:
                _search_checkpoint.save(
                    manager,
                    len(history),
                    _record(history, survivors),
                    {_slot(names, name): state for name, state in states.items()},
                )

    best, best_index = history[-1].families[0], int(history[-1].indices[0])
    return MethodSearchResult(
        best_family=best,
        best_index=best_index,
        best_config=one_member(checked[best][3], best_index),
        best_state=one_member(states[best], 0),
        member_steps=sum(len(r.indices) * r.num_steps for r in history),
        history=tuple(history),
    )


def _slot(names: list[str], name: str) -> str:
    """The checkpoint's key of a family's states (names may hold any character)."""
    return f"family_{names.index(name)}"


def _fingerprint(
    checked: dict[str, tuple], eta: int, maximize: bool, sizes: list, steps: list, key: jax.Array
) -> dict:
    """What a checkpoint must match to be resumed, but the states' structures."""
    fingerprint = {
        "families": list(checked),
        "eta": eta,
        "maximize": maximize,
        "rung_sizes": sizes,
        "rung_steps": steps,
        "key": _search_checkpoint.key_record(key),
    }
    for name, (*_, configs, _) in checked.items():
        fingerprint[f"configs of {name}"] = _search_checkpoint.describe(configs, values=True)
    return fingerprint


def _record(history: list[MethodRung], survivors: dict[str, np.ndarray]) -> dict:
    """The history and every family's survivors, as JSON."""
    return {
        "survivors": {name: indices.tolist() for name, indices in survivors.items()},
        "history": [
            {
                "families": list(rung.families),
                "indices": rung.indices.tolist(),
                "scores": rung.scores.tolist(),
                "dtype": str(rung.scores.dtype),
                "num_steps": rung.num_steps,
            }
            for rung in history
        ],
    }


def _from_record(names: list[str], record: dict, states: dict) -> tuple[list, dict, dict]:
    """``(history, survivors, states)`` from a checkpoint's JSON and states."""
    history = [
        MethodRung(
            tuple(rung["families"]),
            np.asarray(rung["indices"], np.int64),
            np.asarray(rung["scores"], jnp.dtype(rung["dtype"])),
            rung["num_steps"],
        )
        for rung in record["history"]
    ]
    survivors = {name: np.asarray(record["survivors"][name], np.int64) for name in names}
    by_name = {name: states[_slot(names, name)] for name in names if len(survivors[name])}
    return history, survivors, by_name
