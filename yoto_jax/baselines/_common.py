"""What the loss-weighting baselines share: the loss vector and the `LossWeighting` shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from yoto_jax import _checks


def loss_vector(
    losses: ArrayLike, num_losses: int | None = None, what: str = "losses"
) -> jax.Array:
    """`losses` as a floating array of shape (T,), T >= 1 (or T = `num_losses`)."""
    losses = _checks.floating_array(losses, what)
    if losses.ndim != 1 or losses.shape[0] < 1:
        raise ValueError(
            f"{what} must be a vector of shape (T,), one entry per loss (stack the reduced scalar "
            f"losses with jnp.stack), got shape {losses.shape}."
        )
    if num_losses is not None and losses.shape[0] != num_losses:
        raise ValueError(
            f"{what} has {losses.shape[0]} entries, expected {num_losses}: one per loss (as the "
            "weighting state or the other arguments were set up)."
        )
    return losses.astype(_checks.compute_dtype(losses))


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
    use this form set λ from loss statistics, not by descending the model's loss.

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


class LossWeighting(NamedTuple):
    """A weighting method that sets constant weights λ from loss statistics.

    The model's loss is ``weighted_loss(weights(state, losses), losses)``; after the
    model's step, ``update`` advances the state. Equal weights, DWA, RLW and FAMO
    have this shape; uncertainty weighting (λ from learnable parameters) and
    GradNorm (λ from gradient norms) have their own functions.

    Attributes:
      init: ``init(num_losses) -> state``.
      weights: ``weights(state, losses) -> λ`` of shape (T,), with no gradient into
        λ; ``losses`` are this step's losses (FAMO's weights depend on them).
      update: ``update(state, losses, **extra_args) -> state``, called once per
        training step after the model's step with the same ``losses``. Extra
        arguments a method does not need are ignored, as in Optax; FAMO needs
        ``losses_after``.

    Example:
      One training step with any of them (``method = dwa(100)``, ``rlw()``, ...)::

          def train_step(params, opt_state, state, batch):
              def loss_fn(params):
                  losses = losses_fn(params, batch)  # shape (T,)
                  return weighted_loss(method.weights(state, losses), losses), losses

              grads, losses = jax.grad(loss_fn, has_aux=True)(params)
              updates, opt_state = tx.update(grads, opt_state, params)
              params = optax.apply_updates(params, updates)
              return params, opt_state, method.update(state, losses)
    """

    init: Callable[[int], Any]
    weights: Callable[[Any, ArrayLike], jax.Array]
    update: Callable[..., Any]
