"""What both searches do to a population: check its inputs, derive its members' keys,
train and score them in one vmapped step, rank them, and gather rows of it.

A population is a pytree whose leaves have a leading axis N, one entry per member.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.typing import ArrayLike

from yoto_jax import _checks

InitFn = Callable[[Any, jax.Array], Any]
TrainFn = Callable[[Any, Any, jax.Array, int], Any]
EvalFn = Callable[[Any, Any], ArrayLike]

CACHE_SIZE = 64
"""Compiled programs kept per kind (keyed by the user's functions and static steps)."""


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
    key, index = typed_key(key), jnp.asarray(index)
    # Two flat vmapped fold_ins: XLA compiles these much faster than nested vmaps.
    members = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index.ravel())
    keys = jax.vmap(jax.random.fold_in)(
        jnp.broadcast_to(members[:, None], (index.size, num_rungs + 1)).ravel(),
        jnp.tile(jnp.arange(num_rungs + 1), index.size),
    ).reshape(*index.shape, num_rungs + 1)
    return keys[..., 0], keys[..., 1:]


def typed_key(key: ArrayLike) -> jax.Array:
    """``key`` as a typed PRNG key; a raw ``uint32`` key is wrapped."""
    key = jnp.asarray(key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def search_inputs(
    functions: dict[str, Any], configs: Any, key: ArrayLike, maximize: Any, minimum: int
) -> tuple[Any, int, jax.Array, bool]:
    """A search's common arguments checked: ``(configs as arrays, N, key as a typed key,
    maximize as a bool)``; ``functions`` maps argument names to what must be callables,
    and N must be at least ``minimum``."""
    configs, num = search_members(functions, configs, minimum)
    key = search_key(key, num)
    maximize = _checks.boolean(maximize, "maximize")
    return configs, num, key, maximize


def search_members(functions: dict[str, Any], configs: Any, minimum: int) -> tuple[Any, int]:
    """``(configs as arrays, N)`` checked, as :func:`search_inputs` does."""
    _checks.functions(**functions)
    num = _checks.num_configs(configs, "configs", integers=True)
    if num < minimum:
        raise ValueError(
            f"the search needs at least {minimum} member{'s' * (minimum > 1)} (the leading size "
            f"of configs), got {num}."
        )
    return jax.tree.map(jnp.asarray, configs), num


def search_key(key: ArrayLike, num: int) -> jax.Array:
    """A search's one PRNG ``key`` checked (``num`` members) and made a typed key."""
    if _checks.key_axis(key, num, "key") is not None:
        raise ValueError(
            f"key must be one PRNG key (the search derives each member's keys from it), got "
            f"{num} keys."
        )
    return typed_key(key)


def badness(scores: Any, maximize: bool, xp: Any = jnp) -> Any:
    """Sort key, lower is better: the negated score when maximising; NaN ranks last.
    ``xp`` is ``jnp`` inside a program, ``np`` on the host."""
    return xp.where(xp.isnan(scores), xp.inf, -scores if maximize else scores)


def check_scores(scores: np.ndarray, when: str) -> None:
    """Raises when every score is NaN: there is nothing to rank ``when`` (e.g. "after
    rung 2")."""
    if np.all(np.isnan(scores)):
        raise ValueError(
            f"every member's score is NaN {when}: training diverged or eval_fn returned NaN, "
            "so there is nothing to rank."
        )


def check_same_avals(new: Any, old: Any, what: str) -> None:
    """Raises unless the pytree ``new`` (what a user function returned) has the
    structure, shapes and dtypes of ``old`` (what it was given)."""
    if jax.tree.structure(new) != jax.tree.structure(old):
        raise ValueError(
            f"{what} must keep the pytree structure it was given: got {jax.tree.structure(new)}, "
            f"expected {jax.tree.structure(old)}."
        )
    for (path, leaf), expected in zip(
        jax.tree_util.tree_leaves_with_path(new), jax.tree.leaves(old), strict=True
    ):
        if leaf_type(leaf) != leaf_type(expected):
            raise ValueError(
                f"{what} must keep the shapes and dtypes it was given: at "
                f"{jax.tree_util.keystr(path) or 'the root'} it returned {leaf_type(leaf)}, "
                f"expected {leaf_type(expected)}."
            )


def leaf_type(leaf: Any) -> str:
    """A leaf's dtype and shape, e.g. ``float32[9,2]`` (arrays, tracers, shape structs)."""
    if not hasattr(leaf, "shape"):
        leaf = jnp.asarray(leaf)
    return f"{leaf.dtype}[{','.join(map(str, leaf.shape))}]"


def train_and_score(train_fn: TrainFn, eval_fn: EvalFn, num_steps: int) -> Callable:
    """One member's ``(state, config, key) -> (state, score)``: train, then evaluate."""

    def member(state: Any, config: Any, key: jax.Array) -> tuple[Any, jax.Array]:
        trained = train_fn(state, config, key, num_steps)
        check_same_avals(trained, state, "train_fn's state")
        score = jnp.asarray(eval_fn(trained, config))
        if score.shape != ():
            raise ValueError(
                f"eval_fn must return one scalar score per member, got shape {score.shape}; "
                "reduce it (e.g. .mean()) first."
            )
        return trained, score

    return member


@functools.partial(jax.jit, static_argnums=2)
def take(tree: Any, positions: ArrayLike, out_sharding: NamedSharding | None) -> Any:
    """Rows ``positions`` of every leaf (a gather over the population axis), laid out as
    ``out_sharding`` (None: as JAX chooses)."""
    return jax.tree.map(lambda leaf: leaf.at[positions].get(out_sharding=out_sharding), tree)


@jax.jit
def one_member(tree: Any, index: ArrayLike) -> Any:
    """Member ``index`` of a population: every leaf's row, the leading axis removed."""
    return jax.tree.map(lambda leaf: leaf[index], tree)


@functools.partial(jax.jit, static_argnums=(1, 2))
def keys_per_rung(
    key: jax.Array, num: int, num_rungs: int
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """:func:`member_keys` of members 0, ..., num - 1: their init keys (num,), and one
    (num,) array of keys per rung."""
    init_keys, rung_keys = member_keys(key, jnp.arange(num), num_rungs)
    return init_keys, tuple(jnp.moveaxis(rung_keys, 1, 0))


@functools.lru_cache(maxsize=CACHE_SIZE)
def init_program(init_fn: InitFn) -> Callable:
    """``init_fn`` jitted and vmapped over the population."""
    return jax.jit(jax.vmap(init_fn))


@functools.lru_cache(maxsize=CACHE_SIZE)
def rung_program(train_fn: TrainFn, eval_fn: EvalFn, num_steps: int) -> Callable:
    """The jitted, vmapped rung; jit compiles it once per population size and layout."""
    return jax.jit(jax.vmap(train_and_score(train_fn, eval_fn, num_steps)))


def rung_sizes(num: int, eta: int) -> list[int]:
    """Population sizes per rung: N, then max(1, n // eta) until one is left."""
    sizes = [num]
    while sizes[-1] > 1:
        sizes.append(max(1, sizes[-1] // eta))
    return sizes


def rung_lengths(
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


def abstract_population(
    init_fn: InitFn, configs: Any, key: jax.Array, count: int, placement: Any = None
) -> Any:
    """The shapes, dtypes and placement (default: the first device) of ``count``
    members' states from ``init_fn``, allocating nothing."""
    members = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((count, *x.shape[1:]), x.dtype),
        (configs, jax.ShapeDtypeStruct((count,), key.dtype)),
    )
    shapes = jax.eval_shape(init_program(init_fn), *members)
    placement = placement or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=placement), shapes
    )


STEP_COUNTERS = ("count", "step", "steps")
"""Names of the integer leaves read as a state's step counter (an Optax state's
``count``, an ``nnx.Optimizer``'s ``step``, a hand-written ``"steps"``)."""
WRAPPERS = ("inner_state", "inner_opt_state", "weighting_state")
"""Fields under which a counter may lag the steps (``optax.apply_if_finite``,
``optax.MultiSteps``, the trainer's ``NonfiniteSkipState``) or count something else
(a weighting's state in a ``TrainerState``: DWA's steps within its epoch): not read."""


def _name(key: Any) -> str | None:
    """The name of one path entry: a dict key, an attribute or a field."""
    for attribute in ("key", "name"):
        value = getattr(key, attribute, None)
        if isinstance(value, str):
            return value
    return None


def step_counters(states: Any) -> dict[str, np.ndarray]:
    """The step counters of a population's states: integer leaves with one scalar per
    member whose name (the last, a trailing ``.value`` of NNX skipped) is one of
    :data:`STEP_COUNTERS`, outside :data:`WRAPPERS`; by path."""
    found = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(states):
        names = [_name(key) for key in path]
        while names and names[-1] in ("value", "raw_value"):
            names.pop()
        if (
            names
            and names[-1] in STEP_COUNTERS
            and not set(names) & set(WRAPPERS)
            and jnp.ndim(leaf) == 1
            and jnp.issubdtype(leaf.dtype, jnp.integer)
        ):
            found[jax.tree_util.keystr(path)] = np.asarray(leaf, np.int64)
    return found


def check_step_counters(before: Any, after: Any, num_steps: int, count: int) -> None:
    """Raises when the states carry step counters and, for one of the first ``count``
    members, none of them advanced by ``num_steps`` from ``before`` to ``after``: its
    ``train_fn`` did not run the ``num_steps`` steps it was asked for."""
    old, new = step_counters(before), step_counters(after)
    if not old:
        return
    moved = {path: new[path][:count] - old[path][:count] for path in old}
    honoured = np.any([delta == num_steps for delta in moved.values()], axis=0)
    if np.all(honoured):
        return
    member = int(np.argmin(honoured))
    seen = ", ".join(f"{path} by {int(delta[member])}" for path, delta in moved.items())
    raise ValueError(
        f"train_fn was asked for num_steps={num_steps} steps, but member {member}'s step "
        f"counters advanced {seen}: train_fn must run exactly num_steps steps (e.g. "
        "lax.scan(..., length=num_steps)); otherwise the rungs' lengths, member_steps and a "
        "schedule over total_steps are all wrong."
    )
