r"""What the gradient-combining baselines share: products, Gram matrices, per-loss gradients.

PCGrad, MGDA, CAGrad, Aligned-MTL, UPGrad, IMTL-G and Nash-MTL act on the T per-loss
gradients of the shared parameters, the rows of a (T, n) matrix G. This module holds
their plumbing, written once:

* full-precision products (:func:`dot`, :func:`gram`) and the checks of a Gram matrix
  (:func:`checked_gram`) and of a per-task vector (:func:`task_vector`,
  :func:`task_vector_for`);
* the per-loss gradients: :func:`losses_vjp` and :func:`per_loss_gradients` (the
  loss vector's ``jax.vjp``, vmapped over the T unit cotangents), the check of a
  caller's ``per_loss_grads`` (:func:`per_loss_leaves`) and the shared leaves' matrix
  G (:func:`shared_matrix`);
* the builders: :func:`manipulation_transformation`, the Optax transformation that
  applies a combination of G's rows to the shared leaves, :func:`gram_transformation`
  for the methods whose combination is :math:`α^\top G` with α a function of
  :math:`G G^\top`, and :func:`manipulation_weighting`, a transformation as a
  :class:`~yoto_jax.Weighting`.

In representation mode (``losses_fn`` from :func:`yoto_jax.representation_losses`)
:func:`manipulated_gradients` combines the per-loss gradients of the representation z
instead (:mod:`yoto_jax.representation`): the transformation's ``update`` with
``combine_all=True`` acts on every leaf of z, then one VJP through the trunk.

Every product of gradients (the Gram matrix, the solvers' T-vector products, the
combinations :math:`\sum_i α_i g_i`) runs at ``jax.lax.Precision.HIGHEST``: on GPUs
float32 matmuls default to TF32 (10-bit mantissa), which put errors of 3e-4 (3e-2
relative) into MGDA's min-norm point on an H100. The products are T x n or T x T, so
full precision costs nothing measurable.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.baselines._common import NumLosses, selected_leaves
from yoto_jax.representation import RepresentationLosses, representation_gradients
from yoto_jax.weighting import LossesFn, Params, Weighting, WeightingStep, loss_vector

Combine = Callable[[jax.Array, Any], tuple[jax.Array, Any]]
"""``combine((T, n) matrix G of the shared per-loss gradients, state) -> ((n,) update, state)``."""

HIGHEST = jax.lax.Precision.HIGHEST

CLIP_EPS = 1e-6
"""``torch.nn.utils.clip_grad_norm_``'s ε: the scale is max_norm / (norm + 1e-6)."""


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` at full float32 precision, whatever the backend's or the scope's default
    (no TF32 or bfloat16 passes on GPUs and TPUs). Where the contracted axis is split over
    a mesh's explicit axis (representation mode on a batch-sharded z), the product, a
    small T x T matrix or T-vector, is replicated."""
    return jnp.matmul(a, b, precision=HIGHEST, out_sharding=_replicated_if_split(a, b))


def _replicated_if_split(a: jax.Array, b: jax.Array) -> jax.sharding.NamedSharding | None:
    """A replicated sharding where ``a @ b`` contracts an axis split over a mesh (JAX asks
    for the output's sharding there), else None (JAX's own choice)."""
    for x, axis in ((a, -1), (b, 0 if jnp.ndim(b) == 1 else -2)):
        sharding = getattr(jax.typeof(x), "sharding", None)
        spec = getattr(sharding, "spec", ())
        if jnp.ndim(x) and len(spec) == jnp.ndim(x) and spec[axis] is not None:
            return jax.sharding.NamedSharding(sharding.mesh, P())
    return None


def gram(grads: jax.Array) -> jax.Array:
    """G Gᵀ, the (T, T) matrix of gᵢ·gⱼ, at full precision."""
    return dot(grads, grads.T)


def checked_gram(matrix: ArrayLike) -> jax.Array:
    """``matrix`` as a square (T, T) floating matrix, T >= 1, in float32 or wider."""
    matrix = _checks.floating_array(matrix, "gram")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(f"gram must be a square (T, T) matrix, got shape {matrix.shape}.")
    return matrix.astype(_checks.compute_dtype(matrix))


def task_vector(values: ArrayLike | None, name: str) -> jax.Array | None:
    """``values`` as a floating vector (checked for finiteness when concrete), or None."""
    if values is None:
        return None
    values = _checks.floating_array(values, name)
    if values.ndim != 1 or values.shape[0] < 1:
        raise ValueError(
            f"{name} must be a vector of shape (T,), one per loss, got {values.shape}."
        )
    if not isinstance(values, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(values))):
        raise ValueError(f"{name} must be finite, got {values}.")
    return values


def task_vector_for(values: jax.Array | None, num_losses: int, default: float, name: str, dtype):
    """``values`` (or ``default`` everywhere) for T = ``num_losses`` losses, checked at trace time."""
    if values is None:
        return jnp.full((num_losses,), default, dtype)
    if values.shape[0] != num_losses:
        raise ValueError(
            f"{name} has {values.shape[0]} entries but the per-loss gradients have T = "
            f"{num_losses}: give one per loss, primary first."
        )
    return values.astype(dtype)


def losses_vjp(
    losses_fn: LossesFn,
    model_params: Params,
    num_losses: int,
    transform: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, Callable[[jax.Array], tuple[Params]]]:
    """The checked (T,) losses and the ``jax.vjp`` function of the loss vector (of
    ``transform(losses)`` if given, e.g. IMTL's scaled losses): one forward pass, then
    one backward pass per cotangent."""

    def differentiated(model_params: Params) -> tuple[jax.Array, jax.Array]:
        losses = loss_vector(losses_fn(model_params), num_losses)
        return (losses if transform is None else transform(losses)), losses

    _, vjp_fn, losses = jax.vjp(differentiated, model_params, has_aux=True)
    return losses, vjp_fn


def per_loss_gradients(vjp_fn: Callable[[jax.Array], tuple[Params]], losses: jax.Array) -> Params:
    """The per-loss gradients, a tree like the params whose leaves carry a leading axis
    of size T: ``vjp_fn`` vmapped over the T unit cotangents (what ``jax.jacrev`` does,
    keeping the forward pass of ``vjp_fn`` for weighted gradients)."""
    (grads,) = jax.vmap(vjp_fn)(jnp.eye(losses.shape[0], dtype=losses.dtype))
    return grads


def weighted_leaves(alpha: jax.Array, per_loss: list[jax.Array]) -> list[jax.Array]:
    """Σ_i α_i g_i for every leaf, at full precision, in the leaf's dtype."""
    out = []
    for grads in per_loss:
        dtype = _checks.compute_dtype(grads)
        combined = dot(alpha.astype(dtype), grads.astype(dtype).reshape(grads.shape[0], -1))
        out.append(combined.reshape(grads.shape[1:]).astype(grads.dtype))
    return out


def clip_shared_leaves(
    leaves: list[jax.Array], flags: list[bool], max_norm: Any
) -> list[jax.Array]:
    """The shared leaves scaled by min(1, max_norm / (‖shared‖ + 1e-6)), as torch's
    ``clip_grad_norm_``; max_norm = 0 disables it."""
    if _checks.concrete_float(max_norm) == 0.0:
        return leaves
    squared = [jnp.sum(jnp.square(leaf.astype(_checks.compute_dtype(leaf)))) for leaf in leaves]
    norm = jnp.sqrt(sum(s for s, flag in zip(squared, flags) if flag))
    factor = jnp.minimum(1.0, max_norm / (norm + CLIP_EPS))
    factor = jnp.where(max_norm > 0, factor, 1.0)
    return [
        (leaf * factor).astype(leaf.dtype) if flag else leaf for leaf, flag in zip(leaves, flags)
    ]


def per_loss_leaves(
    name: str, updates: optax.Updates, per_loss_grads: Any
) -> tuple[list[jax.Array], list[jax.Array], Any]:
    """The leaves of ``updates`` and of ``per_loss_grads``, checked against each other."""
    if per_loss_grads is None:
        raise TypeError(
            f"{name}'s update needs the per-loss gradients: call "
            "tx.update(updates, state, params, per_loss_grads=jax.jacrev(losses_fn)(params)), "
            "with updates the gradient of the summed loss."
        )
    leaves, treedef = jax.tree.flatten(updates)
    per_loss_treedef = jax.tree.structure(per_loss_grads)
    if per_loss_treedef != treedef:
        raise ValueError(
            f"per_loss_grads must have the structure of updates (the params'), with a leading "
            f"axis of size T on every leaf; got {per_loss_treedef} for updates {treedef}."
        )
    paths = [
        jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(updates)[0]
    ]
    leaves = [_checks.floating_array(leaf, f"updates{path}") for leaf, path in zip(leaves, paths)]
    per_loss = [
        _checks.floating_array(leaf, f"per_loss_grads{path}")
        for leaf, path in zip(jax.tree.leaves(per_loss_grads), paths)
    ]
    sizes = set()
    for leaf, grads, path in zip(leaves, per_loss, paths):
        if grads.ndim != leaf.ndim + 1 or grads.shape[1:] != leaf.shape:
            raise ValueError(
                "per_loss_grads must hold per-loss gradients, every leaf of shape (T, *the "
                "update's shape) with the same leading axis of size T (jax.jacrev of the loss "
                f"vector); per_loss_grads{path} has shape {grads.shape} for an update of shape "
                f"{leaf.shape}."
            )
        sizes.add(grads.shape[0])
    if len(sizes) != 1:
        raise ValueError(
            "per_loss_grads must hold per-loss gradients, every leaf with the same leading axis "
            f"of size T (jax.jacrev of the loss vector); got leading sizes {sorted(sizes)}."
        )
    return leaves, per_loss, treedef


def shared_matrix(per_loss: list[jax.Array], flags: list[bool]) -> jax.Array:
    """G, the (T, n) matrix of the selected leaves' per-loss gradients, float32 or wider."""
    num_losses = per_loss[0].shape[0]
    shared = [grads for grads, flag in zip(per_loss, flags) if flag]
    dtype = _checks.compute_dtype(*shared)
    return jnp.concatenate([g.reshape(num_losses, -1).astype(dtype) for g in shared], axis=1)


def require_shared(shared: Any) -> None:
    """Raises unless ``shared`` selects something (a bool tree or a callable)."""
    if shared is None:
        raise TypeError("shared must select the shared parameters (a bool tree or a callable).")


def manipulation_transformation(
    name: str, shared: Any, init_state: Callable[[], Any], combine: Combine
) -> optax.GradientTransformationExtraArgs:
    """The transformation that applies ``combine`` (:data:`Combine`) to the shared leaves'
    per-loss gradients; every other leaf keeps ``updates``. ``shared`` selects the leaves
    of the params-shaped ``updates`` (a bool tree, a prefix, or a callable of that tree);
    the extra argument ``combine_all=True`` combines every leaf instead (representation
    mode, where ``updates`` is the gradient of the representation z)."""
    require_shared(shared)

    def init_fn(params: optax.Params) -> Any:
        del params
        return init_state()

    def update_fn(
        updates: optax.Updates,
        state: Any,
        params: optax.Params | None = None,
        *,
        per_loss_grads: Any = None,
        combine_all: bool = False,
        **extra_args: Any,
    ) -> tuple[optax.Updates, Any]:
        del params, extra_args
        leaves, per_loss, treedef = per_loss_leaves(name, updates, per_loss_grads)
        flags = [True] * len(leaves) if combine_all else selected_leaves(shared, updates)
        combined, state = combine(shared_matrix(per_loss, flags), state)
        sizes = [math.prod(grads.shape[1:]) for grads, flag in zip(per_loss, flags) if flag]
        parts = iter(jnp.split(combined, list(itertools.accumulate(sizes))[:-1]))
        out = [
            next(parts).reshape(leaf.shape).astype(leaf.dtype) if flag else leaf
            for leaf, flag in zip(leaves, flags)
        ]
        return jax.tree.unflatten(treedef, out), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gram_transformation(
    name: str, shared: Any, weights_fn: Callable[[jax.Array], jax.Array]
) -> optax.GradientTransformationExtraArgs:
    r"""The stateless transformation whose shared update is :math:`α^\top G`, α =
    ``weights_fn(G Gᵀ)``: MGDA, Aligned-MTL, UPGrad and IMTL-G."""

    def combine(grads: jax.Array, state: optax.EmptyState):
        return dot(weights_fn(gram(grads)), grads), state

    return manipulation_transformation(name, shared, optax.EmptyState, combine)


def manipulated_gradients(
    transformation: optax.GradientTransformationExtraArgs,
    transformation_state: Any,
    losses_fn: LossesFn,
    model_params: Params,
    num_losses: int,
    transform: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, Params]:
    """The (T,) losses (no gradient) and ``transformation``'s update of the model from
    the per-loss gradients of ``losses_fn`` (of ``transform(losses)`` if given): one
    forward and T backward passes. In representation mode, ``transformation`` combines
    the per-loss gradients of z, and the update is one VJP through the trunk with that
    combination plus the sum of the heads' own gradients."""
    if isinstance(losses_fn, RepresentationLosses):
        grads = representation_gradients(losses_fn, model_params, num_losses, transform)
        combined, _ = transformation.update(
            jax.tree.map(lambda g: jnp.sum(g, 0), grads.per_loss),
            transformation_state,
            None,
            per_loss_grads=grads.per_loss,
            combine_all=True,
        )
        return grads.losses, grads.pullback(combined, jnp.ones_like(grads.losses))
    losses, vjp_fn = losses_vjp(losses_fn, model_params, num_losses, transform)
    per_loss_grads = per_loss_gradients(vjp_fn, losses)
    updates = jax.tree.map(lambda g: jnp.sum(g, 0), per_loss_grads)
    model_grads, _ = transformation.update(
        updates, transformation_state, model_params, per_loss_grads=per_loss_grads
    )
    return jax.lax.stop_gradient(losses), model_grads


def manipulation_weighting(
    transformation: optax.GradientTransformationExtraArgs,
    transformation_state: Callable[[jax.Array | None], Any] = lambda key: optax.EmptyState(),
) -> Weighting:
    """The :class:`~yoto_jax.Weighting` that applies ``transformation`` to the per-loss
    gradients of each step, its state built by ``transformation_state(key)``; no params,
    weights of ones (the method combines gradients, not losses)."""

    def init(num_losses: int) -> tuple[dict[str, jax.Array], NumLosses]:
        return {}, NumLosses(_checks.positive_int(num_losses, "num_losses"))

    def step(losses_fn, model_params, params, state: NumLosses, *, key=None) -> WeightingStep:
        losses, model_grads = manipulated_gradients(
            transformation, transformation_state(key), losses_fn, model_params, state.num_losses
        )
        return WeightingStep(losses, jnp.ones_like(losses), model_grads, {}, state)

    def weights(params: dict[str, jax.Array], state: NumLosses) -> jax.Array:
        return jnp.ones((state.num_losses,), jnp.float32)

    return Weighting(init, step, weights=weights)
