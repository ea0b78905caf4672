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
    """Counts updates, for a scheduled ρ (a constant ρ's state is ``optax.EmptyState()``)."""

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
      rho: the strength ρ >= 0: a float, a scalar array or an optax schedule (its value
        at step 0 is checked; later values are the caller's responsibility).
      mask: a tree of bools with the structure of (or a prefix of) the params, or a
        callable returning one, True for the µ leaves. ``yoto_jax.mu_mask`` selects
        the leaves under a ``yoto_mu`` key. ``None`` treats every leaf as µ (use it
        on a µ-only tree, e.g. inside ``optax.partition``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its ``update`` needs ``params``. Its
      state is a :class:`HyperparameterDecayState` step count when ``rho`` is a schedule,
      ``optax.EmptyState()`` for a constant ρ (no counter to update: one kernel less).

    Example:
      >>> import jax, jax.numpy as jnp, optax, yoto_jax
      >>> tx = optax.chain(  # coupled: the same as adding 0.1 R(µ) to the loss
      ...     yoto_jax.hyperparameter_decay(0.1, mask=yoto_jax.mu_mask),
      ...     optax.adam(1e-3),
      ... )
      >>> params = {"w": jnp.ones(2), "yoto_mu": jnp.zeros(1)}
      >>> decay = yoto_jax.hyperparameter_decay(0.5, mask=yoto_jax.mu_mask)
      >>> zeros = jax.tree.map(jnp.zeros_like, params)
      >>> updates, _ = decay.update(zeros, decay.init(params), params)
      >>> updates  # µ: 0.5 ∇R(0) = 0.5 σ(0); the weights are untouched
      {'w': Array([0., 0.], dtype=float32), 'yoto_mu': Array([0.25], dtype=float32)}

    References:
      Sakaridis, "You Only Train Once", arXiv:2506.04349, Sec. 3.4.
    """
    _checks.at_step_zero(_checks.non_negative, rho, "rho")

    scheduled = callable(rho)

    def init_fn(params: optax.Params) -> HyperparameterDecayState | optax.EmptyState:
        _mu_groups(params)
        # Only a schedule reads the step count: a constant ρ (a float, or an array as
        # under optax.inject_hyperparams) keeps no counter, one kernel less per step.
        if scheduled:
            return HyperparameterDecayState(count=jnp.zeros([], jnp.int32))
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "hyperparameter_decay needs the current µ: call update(updates, state, params)."
            )
        strength = rho(state.count) if scheduled else rho
        decay = _regularizer_updates(params)
        new_updates = jax.tree.map(lambda u, g: u + (strength * g).astype(u.dtype), updates, decay)
        if not scheduled:
            return new_updates, state
        return new_updates, HyperparameterDecayState(optax.safe_increment(state.count))

    transform = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return transform if mask is None else optax.masked(transform, mask)
