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
  :math:`G G^\top` (their :data:`Coefficients`), and :func:`manipulation_weighting`, a
  transformation as a :class:`~yoto_jax.Weighting`;
* the Gram matrix without G (the methods' ``gramian="products"``, :func:`gram_products`):
  :func:`linearized_losses` linearises the loss vector once, and column i of
  :math:`G G^\top` is :math:`G (G^\top e_i)`, a VJP and a JVP, the columns in sequence.

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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.baselines._common import NumLosses, selected_leaves
from yoto_jax.representation import (
    RepresentationLosses,
    representation_gradients,
    representation_products,
)
from yoto_jax.weighting import (
    LossesFn,
    Params,
    Weighting,
    WeightingStep,
    transformed_losses,
)

Combine = Callable[[jax.Array, Any], tuple[jax.Array, Any]]
"""``combine((T, n) matrix G of the shared per-loss gradients, state) -> ((n,) update, state)``."""

Coefficients = Callable[[jax.Array, Any], tuple[jax.Array, Any]]
r"""``coefficients((T, T) Gram matrix G Gᵀ, state) -> ((T,) α, state)``: a method whose
shared update is :math:`α^\top G`, α a function of the Gram matrix alone."""

GRAMIANS = ("jacobian", "products")
"""The values of the gradient methods' ``gramian``: how the Gram matrix G Gᵀ is formed
(:func:`gram_products`)."""

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

    differentiated = transformed_losses(losses_fn, num_losses, transform)
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


def stateless(weights_fn: Callable[[jax.Array], jax.Array]) -> Coefficients:
    """The :data:`Coefficients` of a method without state: α = ``weights_fn(G Gᵀ)``."""
    return lambda matrix, state: (weights_fn(matrix), state)


def gram_transformation(
    name: str,
    shared: Any,
    coefficients: Coefficients,
    init_state: Callable[[], Any] = optax.EmptyState,
) -> optax.GradientTransformationExtraArgs:
    r"""The transformation whose shared update is :math:`α^\top G`, (α, state) =
    ``coefficients(G Gᵀ, state)`` (:data:`Coefficients`): MGDA, Aligned-MTL, UPGrad,
    PCGrad."""

    def combine(grads: jax.Array, state: Any):
        alpha, state = coefficients(gram(grads), state)
        return dot(alpha, grads), state

    return manipulation_transformation(name, shared, init_state, combine)


class GramProducts(NamedTuple):
    """A method's form for ``gramian="products"`` (:func:`gram_products`).

    Attributes:
      shared: the method's selection of the shared leaves.
      coefficients: its :data:`Coefficients`, α from the Gram matrix.
    """

    shared: Any
    coefficients: Coefficients


def gram_products(gramian: str, shared: Any, coefficients: Coefficients) -> GramProducts | None:
    r"""The checked ``gramian`` of a method whose update is :math:`α^\top G`, α a function
    of :math:`G G^\top` (``coefficients``): None for ``"jacobian"``, else its
    :class:`GramProducts`.

    * ``"jacobian"`` (every method's default): the (T, n) matrix G of the shared
      parameters' per-loss gradients is formed, T backward passes vmapped
      (``jax.jacrev``), then :math:`G G^\top` and :math:`α^\top G` from it. Peak memory
      grows with T n (and T copies of the backward pass's temporaries).
    * ``"products"``: G is never stored. With the loss vector linearised once
      (:func:`jax.linearize`; its transpose is the VJP), column i of the Gram matrix is

      .. math::
          G G^\top e_i = G\,(G^\top e_i),

      one VJP (:math:`G^\top e_i`, zeroed outside the shared leaves) and one JVP, the T
      columns in sequence (``jax.lax.map``), so only one n-vector lives at a time; the
      matrix is symmetrised, :math:`(M + M^\top) / 2`. The update is one more VJP with
      cotangent α, :math:`G^\top α`, on the shared leaves, and one with cotangent
      :math:`\mathbf 1` for the others (their sum of the task gradients, as with
      ``"jacobian"``). In representation mode the same products are taken with the
      per-loss gradients of z (:func:`yoto_jax.representation.representation_products`).
      Cost: T VJPs and T JVPs in sequence instead of T vmapped VJPs, so more time and
      less memory (``benchmarks/OVERHEAD.md`` says when it pays).

    Args:
      gramian: ``"jacobian"`` or ``"products"``.
      shared: the method's selection of the shared leaves.
      coefficients: ``(gram, state) -> (α, state)``.

    Returns:
      None, or the :class:`GramProducts` for :func:`manipulated_gradients`.
    """
    if not isinstance(gramian, str):
        raise TypeError(f"gramian must be a string, one of {GRAMIANS}, got {gramian!r}.")
    if gramian not in GRAMIANS:
        raise ValueError(
            f"gramian must be one of {GRAMIANS}: 'jacobian' forms the (T, n) per-loss "
            f"gradients, 'products' only their Gram matrix; got {gramian!r}."
        )
    if gramian == "jacobian":
        return None
    require_shared(shared)
    return GramProducts(shared, coefficients)


class LinearizedLosses(NamedTuple):
    r"""The loss vector linearised once: products with G (or Z) without forming it.

    Attributes:
      losses: the (T,) losses (no gradient).
      vjp: ``vjp(u) -> Gᵀu`` for a (T,) vector u, a tree like the params (like z in
        representation mode).
      jvp: ``jvp(v) -> G v``, shape (T,), only the shared leaves of v (all of z) read.
      apply: ``apply(alpha, others) -> model gradients``: :math:`G^\top α` on the shared
        leaves (through the trunk in representation mode), the gradient of
        :math:`\sum_i o_i l_i` on the others (the heads), o = ``others`` (None: α).
    """

    losses: jax.Array
    vjp: Callable[[jax.Array], Any]
    jvp: Callable[[Any], jax.Array]
    apply: Callable[[jax.Array, jax.Array | None], Params]

    def gram(self) -> jax.Array:
        """G Gᵀ by products: column i is ``jvp(vjp(e_i))``, in sequence, symmetrised."""
        eye = jnp.eye(self.losses.shape[0], dtype=self.losses.dtype)
        columns = jax.lax.map(lambda unit: self.jvp(self.vjp(unit)), eye)
        columns = columns.astype(_checks.compute_dtype(columns))
        return 0.5 * (columns + columns.T)


def linearized_losses(
    losses_fn: LossesFn,
    model_params: Params,
    num_losses: int,
    shared: Any,
    transform: Callable[[jax.Array], jax.Array] | None = None,
) -> LinearizedLosses:
    """One forward pass of ``losses_fn`` (of ``transform(losses)`` if given), linearised
    (:func:`jax.linearize`, its transpose the VJP); in representation mode, the heads
    linearised in z. ``gramian="products"``'s products (:func:`gram_products`)."""
    if isinstance(losses_fn, RepresentationLosses):
        rep = representation_products(losses_fn, model_params, num_losses, transform)

        def rep_apply(alpha: jax.Array, others: jax.Array | None = None) -> Params:
            return rep.pullback(rep.vjp(alpha), alpha if others is None else others)

        return LinearizedLosses(rep.losses, rep.vjp, rep.jvp, rep_apply)
    flags = selected_leaves(shared, model_params)
    treedef = jax.tree.structure(model_params)
    differentiated = transformed_losses(losses_fn, num_losses, transform)
    _, jvp_fn, losses = jax.linearize(differentiated, model_params, has_aux=True)
    transposed = jax.linear_transpose(jvp_fn, model_params)

    def vjp(u: jax.Array) -> Params:
        (grads,) = transposed(u.astype(losses.dtype))
        return grads

    def jvp(v: Params) -> jax.Array:
        leaves = jax.tree.leaves(v)
        on_shared = [leaf if flag else jnp.zeros_like(leaf) for leaf, flag in zip(leaves, flags)]
        return jvp_fn(jax.tree.unflatten(treedef, on_shared))

    def apply(alpha: jax.Array, others: jax.Array | None = None) -> Params:
        combined = jax.tree.leaves(vjp(alpha))
        if others is not None and not all(flags):
            rest = jax.tree.leaves(vjp(others))
            combined = [c if flag else r for c, r, flag in zip(combined, rest, flags)]
        return jax.tree.unflatten(treedef, combined)

    return LinearizedLosses(jax.lax.stop_gradient(losses), vjp, jvp, apply)


def manipulated_gradients(
    transformation: optax.GradientTransformationExtraArgs,
    transformation_state: Any,
    losses_fn: LossesFn,
    model_params: Params,
    num_losses: int,
    transform: Callable[[jax.Array], jax.Array] | None = None,
    products: GramProducts | None = None,
) -> tuple[jax.Array, Params]:
    r"""The (T,) losses (no gradient) and ``transformation``'s update of the model from
    the per-loss gradients of ``losses_fn`` (of ``transform(losses)`` if given): one
    forward and T backward passes. In representation mode, ``transformation`` combines
    the per-loss gradients of z, and the update is one VJP through the trunk with that
    combination plus the sum of the heads' own gradients. With ``products``
    (``gramian="products"``, :func:`gram_products`) the per-loss gradients are not
    formed: α comes from the Gram matrix by products, the update is
    :math:`G^\top α` on the shared leaves (or the trunk) and the sum elsewhere."""
    if products is not None:
        linear = linearized_losses(losses_fn, model_params, num_losses, products.shared, transform)
        alpha, _ = products.coefficients(linear.gram(), transformation_state)
        return linear.losses, linear.apply(alpha, jnp.ones_like(linear.losses))
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
    products: GramProducts | None = None,
) -> Weighting:
    """The :class:`~yoto_jax.Weighting` that applies ``transformation`` to the per-loss
    gradients of each step, its state built by ``transformation_state(key)``; no params,
    weights of ones (the method combines gradients, not losses). With ``products``
    (:func:`gram_products`), the Gram matrix by products instead of the per-loss
    gradients."""

    def init(num_losses: int) -> tuple[dict[str, jax.Array], NumLosses]:
        return {}, NumLosses(_checks.positive_int(num_losses, "num_losses"))

    def step(losses_fn, model_params, params, state: NumLosses, *, key=None) -> WeightingStep:
        losses, model_grads = manipulated_gradients(
            transformation,
            transformation_state(key),
            losses_fn,
            model_params,
            state.num_losses,
            products=products,
        )
        return WeightingStep(losses, jnp.ones_like(losses), model_grads, {}, state)

    def weights(params: dict[str, jax.Array], state: NumLosses) -> jax.Array:
        return jnp.ones((state.num_losses,), jnp.float32)

    return Weighting(init, step, weights=weights)
