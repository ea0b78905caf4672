"""What the baselines share: the weighted loss, a state that remembers T, and masks."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class NumLosses:
    """The state of a method that carries nothing between steps but must know T.

    A pytree with no leaves (``num_losses`` is static), so it costs nothing under
    ``jit``, ``vmap`` or in a checkpoint; equal weights and RLW use it to give their
    ``weights(params, state)`` the shape (T,).
    """

    num_losses: int


def _outline(tree: Any) -> str:
    """A tree's top level, for an error message: its keys, or its type and size."""
    if isinstance(tree, Mapping):
        return f"a {type(tree).__name__} with keys {sorted(map(str, tree))}"
    if isinstance(tree, list | tuple):
        return f"a {type(tree).__name__} of {len(tree)} entries"
    return f"a {type(tree).__name__}"


def selected_leaves(mask: Any, tree: Any) -> list[bool]:
    """One Python bool per leaf of `tree`, from ``mask``: a tree of bools with the
    structure of `tree` or a prefix of it, or a callable ``tree -> mask``.

    Under :func:`yoto_jax.nnx.train_step` ``tree`` is an ``nnx.State``: a mapping
    ``mask`` there is read as module names (:func:`yoto_jax.nnx.shared_params`), so
    ``{"trunk": True, "heads": False}`` works as it does on a dict of params.

    Raises unless the mask holds concrete bools and selects at least one leaf.
    """
    if isinstance(mask, Mapping) and _is_nnx_state(tree):
        from yoto_jax.nnx import shared_params  # flax.nnx is loaded: the tree is its State

        mask = shared_params(mask)
    mask = mask(tree) if callable(mask) else mask

    def broadcast(selected: Any, subtree: Any) -> list[bool]:
        if not isinstance(selected, bool | np.bool_):
            raise TypeError(
                f"shared must hold Python bools (one per leaf or subtree), got {selected!r}."
            )
        return [bool(selected)] * len(jax.tree.leaves(subtree))

    try:
        flags = jax.tree.leaves(jax.tree.map(broadcast, mask, tree))
    except ValueError as error:  # jax.tree.map's structure mismatch (broadcast raises TypeError)
        raise ValueError(
            "shared must be a callable params -> bool tree, or a tree of bools with the "
            "structure of the model params (or a prefix of it: one bool per subtree); got "
            f"{_outline(mask)} where the params are {_outline(tree)}."
        ) from error
    if not any(flags):
        raise ValueError("shared selects no parameter leaf: the shared parameters would be empty.")
    return flags


def _is_nnx_state(tree: Any) -> bool:
    """Whether ``tree`` is an ``nnx.State`` (without importing flax when it is not loaded)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(tree, nnx.State)


def prng_key(seed: int | jax.Array) -> jax.Array:
    """A PRNG key from an int seed or a key (``jax.random.key`` or ``PRNGKey``)."""
    if isinstance(seed, int) and not isinstance(seed, bool):
        return jax.random.key(seed)
    if not isinstance(seed, jax.Array):
        raise TypeError(f"seed must be an int or a PRNG key, got {type(seed).__name__}.")
    return seed
