"""What both searches do to a population: check its inputs, derive its members' keys,
train and score them in one vmapped step, rank them, and gather rows of it.

A population is a pytree whose leaves have a leading axis N, one entry per member.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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
    for name, function in functions.items():
        if not callable(function):
            raise TypeError(f"{name} must be a function, got {type(function).__name__}.")
    num = _checks.num_configs(configs, "configs", integers=True)
    if num < minimum:
        raise ValueError(
            f"the search needs at least {minimum} member{'s' * (minimum > 1)} (the leading size "
            f"of configs), got {num}."
        )
    if _checks.key_axis(key, num, "key") is not None:
        raise ValueError(
            f"key must be one PRNG key (the search derives each member's keys from it), got "
            f"{num} keys."
        )
    maximize = _checks.boolean(maximize, "maximize")
    return jax.tree.map(jnp.asarray, configs), num, typed_key(key), maximize


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
