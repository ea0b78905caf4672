"""``hyperparameter_decay``: the Optax transformation that adds ρ∇R(µ) to the µ updates."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from yoto_jax import _checks
from yoto_jax.composite import regularizer_grad

DEFAULT_RHO = 0.1
"""Default regularisation strength ρ, in the units of the losses (see README)."""


class HyperparameterDecayState(NamedTuple):
    """Counts updates, for a scheduled ρ."""

    count: jax.Array  # shape=(), dtype=int32


def _mu_groups(tree: Any) -> dict[tuple, list[int]]:
    """Leaf indices of `tree` grouped into µ vectors.

    A group is one array leaf of shape (K,), or the scalar leaves of one dict (the
    named form, ``{"aux_a": µ_a, "aux_b": µ_b}``), which share one softmax.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(tree)[0]):
        shape = jnp.shape(leaf)
        if len(shape) == 0:
            groups[path[:-1]].append(index)
        elif len(shape) == 1:
            groups[path].append(index)
        else:
            raise ValueError(
                f"hyperparameter_decay got a leaf of shape {shape} at "
                f"{jax.tree_util.keystr(path)}; µ leaves are logit vectors of shape (K,) or "
                "scalars. Select the µ leaves with mask=yoto_jax.mu_mask (or optax.partition)."
            )
    return groups


def _regularizer_updates(params: Any) -> Any:
    """∇R(µ) for every µ group in `params`, with the structure of `params`."""
    leaves, treedef = jax.tree.flatten(params)
    grads = [None] * len(leaves)
    for indices in _mu_groups(params).values():
        vector = jnp.concatenate([jnp.ravel(leaves[i]) for i in indices])
        group_grad = regularizer_grad(vector)
        offset = 0
        for i in indices:
            size = jnp.size(leaves[i])
            grads[i] = group_grad[offset : offset + size].reshape(jnp.shape(leaves[i]))
            offset += size
    return jax.tree.unflatten(treedef, grads)


def hyperparameter_decay(
    rho: optax.ScalarOrSchedule = DEFAULT_RHO,
    mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adds YOTO's hyperparameter decay :math:`ρ \nabla R(µ)` to the µ updates.

    .. math::
        u_µ \leftarrow u_µ + ρ \left[λ_i (\log λ_i + H(λ)) + σ(µ_i)\right]_{i=1..K}

    This is to µ what ``optax.add_decayed_weights`` is to weights. Placed first in an
    ``optax.chain`` (coupled, the default reading), it is exactly the gradient of
    ``ρR(µ)`` added to the loss, for any optimizer. Placed after the optimizer's
    scaling (decoupled, like AdamW's weight decay), the decay is not rescaled by
    the optimizer's preconditioner; then follow it with ``optax.scale(-lr)``.

    ρ is in the units of the losses: without the softplus term the optimum is
    λ ∝ exp(−l/ρ), so multiplying every loss by c is the same as dividing ρ by c.

    A µ group is an array leaf of shape (K,) or the scalar leaves of one dict (the
    named form); each group has its own softmax and its own R.

    Args:
      rho: the strength ρ >= 0: a float, a scalar array or an optax schedule.
      mask: a tree of bools with the structure of (or a prefix of) the params, or a
        callable returning one, True for the µ leaves. ``yoto_jax.mu_mask`` selects
        the leaves under a ``yoto_mu`` key. ``None`` treats every leaf as µ (use it
        on a µ-only tree, e.g. inside ``optax.partition``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its ``update`` needs ``params``.

    Example:
      >>> import optax, yoto_jax
      >>> tx = optax.chain(
      ...     yoto_jax.hyperparameter_decay(0.1, mask=yoto_jax.mu_mask),
      ...     optax.adam(1e-3),
      ... )

    References:
      Sakaridis, "You Only Train Once", arXiv:2506.04349, Sec. 3.4.
    """
    _checks.non_negative(rho, "rho")

    def init_fn(params: optax.Params) -> HyperparameterDecayState:
        _mu_groups(params)
        return HyperparameterDecayState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "hyperparameter_decay needs the current µ: call update(updates, state, params)."
            )
        strength = rho(state.count) if callable(rho) else rho
        decay = _regularizer_updates(params)
        new_updates = jax.tree.map(lambda u, g: u + (strength * g).astype(u.dtype), updates, decay)
        return new_updates, HyperparameterDecayState(optax.safe_increment(state.count))

    transform = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return transform if mask is None else optax.masked(transform, mask)
