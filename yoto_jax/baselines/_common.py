"""What the baselines share: the weighted loss, a state that remembers T, and masks."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.weighting import loss_vector


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class NumLosses:
    """The state of a method that carries nothing between steps but must know T.

    A pytree with no leaves (``num_losses`` is static), so it costs nothing under
    ``jit``, ``vmap`` or in a checkpoint; equal weights and RLW use it to give their
    ``weights(params, state)`` the shape (T,).
    """

    num_losses: int


def selected_leaves(mask: Any, tree: Any) -> list[bool]:
    """One Python bool per leaf of `tree`, from ``mask``: a tree of bools with the
    structure of `tree` or a prefix of it, or a callable ``tree -> mask``.

    Raises unless the mask holds concrete bools and selects at least one leaf.
    """
    mask = mask(tree) if callable(mask) else mask

    def broadcast(selected: Any, subtree: Any) -> list[bool]:
        if not isinstance(selected, bool | np.bool_):
            raise TypeError(
                f"shared must hold Python bools (one per leaf or subtree), got {selected!r}."
            )
        return [bool(selected)] * len(jax.tree.leaves(subtree))

    flags = jax.tree.leaves(jax.tree.map(broadcast, mask, tree))
    if not any(flags):
        raise ValueError("shared selects no parameter leaf: the shared parameters would be empty.")
    return flags


def prng_key(seed: int | jax.Array) -> jax.Array:
    """A PRNG key from an int seed or a key (``jax.random.key`` or ``PRNGKey``)."""
    if isinstance(seed, int) and not isinstance(seed, bool):
        return jax.random.key(seed)
    if not isinstance(seed, jax.Array):
        raise TypeError(f"seed must be an int or a PRNG key, got {type(seed).__name__}.")
    return seed


def weighted_loss(weights: ArrayLike, losses: ArrayLike) -> jax.Array:
    r"""The model's loss :math:`\sum_i \operatorname{sg}(λ_i)\, l_i` for constant weights λ.

    No gradient flows into ``weights`` (``jax.lax.stop_gradient``): the methods that
    use this form (equal weights, DWA, RLW, FAMO) set λ from loss statistics, not by
    descending the model's loss.

    Args:
      weights: λ, shape (T,).
      losses: the scalar losses, shape (T,).

    Returns:
      The scalar weighted sum, float32 or wider.
    """
    losses = loss_vector(losses)
    weights = _checks.floating_array(weights, "weights")
    if weights.shape != losses.shape:
        raise ValueError(
            f"weights must have the shape of losses {losses.shape}, got {weights.shape}."
        )
    return jnp.dot(jax.lax.stop_gradient(weights).astype(losses.dtype), losses)
