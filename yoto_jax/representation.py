r"""Representation mode: the per-loss gradients of a shared representation z, not of the trunk.

The gradient-combination methods (PCGrad, MGDA, CAGrad, Aligned-MTL, UPGrad, IMTL-G,
GradNorm) act on the T per-loss gradients of the shared parameters: T backward passes
through the whole model and a (T, n) matrix. Given the model split as

.. math::
    z = f(θ), \qquad l = h(θ, z) \in \mathbb R^T

(``features_fn`` the trunk f, ``heads_fn`` the heads h), representation mode takes the
per-loss gradients with respect to z instead, the rows of the (T, m) matrix

.. math::
    Z_{i\cdot} = \operatorname{vec}\Big(\frac{\partial l_i}{\partial z}\Big), \qquad
    m = \text{the size of } z \text{ (batch} \times \text{features)},

T cheap backward passes through the heads; the method's combination acts on Z exactly
as it acts on G in parameter mode (its Gram matrix is :math:`Z Z^\top`, whose entries
:math:`\sum_{b, f} \partial_{z_{bf}} l_i\, \partial_{z_{bf}} l_j` sum over the batch's
samples b and the features f: Sener and Koltun's MGDA-UB, which takes the Frobenius
product of the gradients with respect to the batch's representation), giving a
cotangent :math:`c \in \mathbb R^m`; the model's gradient is then **one** VJP through
the trunk plus the heads' own gradients,

.. math::
    \nabla = \Big(\frac{\partial z}{\partial θ}\Big)^\top c
        + \sum_i w_i \frac{\partial h_i}{\partial θ}\Big|_{z\ \text{fixed}},

with w = 1 for the gradient-manipulation methods (the heads keep the sum of their
losses' gradients, as the non-shared leaves do in parameter mode). The leaves a method's
``shared`` mask selects do not enter the combination here: the trunk is what
``features_fn`` reads.

It is exact (equal to parameter mode) when the trunk's Jacobian has orthonormal rows
(the identity); otherwise it is the approximation of MGDA-UB and Aligned-MTL-UB:
:math:`G = Z J_f`, so :math:`G G^\top = Z J_f J_f^\top Z^\top`, and Sener and Koltun
bound the min-norm problem on G by that on Z (times :math:`\lVert J_f \rVert^2`).
LibMTL's ``rep_grad=True`` differs in one point: its Gram matrix is that of the
gradients first summed over the batch, :math:`\sum_b \partial_{z_b} l_i`, shape
(T, features), which discards the samples' disagreement.

Use :func:`representation_losses` in place of ``losses_fn``: it is a ``losses_fn``
(``losses_fn(model_params) -> (T,)``), so every other method (YOTO, the loss weightings)
uses it unchanged, and the gradient methods detect it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from yoto_jax import _checks
from yoto_jax.weighting import Params, transformed_losses

FeaturesFn = Callable[[Params], Any]
"""``features_fn(model_params) -> z``: the shared representation, an array or a tree of them."""

HIGHEST = jax.lax.Precision.HIGHEST

HeadsFn = Callable[[Params, Any], jax.Array]
"""``heads_fn(model_params, z) -> (T,)``: the losses computed from z, primary first."""


class RepresentationLosses:
    """A ``losses_fn`` split at the shared representation z (see the module docstring).

    Calling it returns ``heads_fn(model_params, features_fn(model_params))``, the (T,)
    losses, so it stands wherever a ``losses_fn`` does; the gradient methods read
    ``features_fn`` and ``heads_fn`` to take the per-loss gradients of z.

    Attributes:
      features_fn: ``model_params -> z``.
      heads_fn: ``(model_params, z) -> (T,)`` losses.
    """

    def __init__(self, features_fn: FeaturesFn, heads_fn: HeadsFn):
        _checks.functions(features_fn=features_fn, heads_fn=heads_fn)
        self.features_fn = features_fn
        self.heads_fn = heads_fn

    def __call__(self, model_params: Params) -> jax.Array:
        return self.heads_fn(model_params, self.features_fn(model_params))

    def on_model(
        self, model_of: Callable[[Params], Any], to_vector: Callable[[Any], jax.Array]
    ) -> RepresentationLosses:
        """This split for functions of a model: ``features_fn(model_of(params))`` and
        ``to_vector(heads_fn(model_of(params), z))`` (how :func:`yoto_jax.nnx.train_step`
        takes an NNX model's split, whose heads return a dict of losses)."""
        return RepresentationLosses(
            lambda params: self.features_fn(model_of(params)),
            lambda params, z: to_vector(self.heads_fn(model_of(params), z)),
        )

    def __repr__(self) -> str:
        return f"representation_losses({self.features_fn!r}, {self.heads_fn!r})"


def representation_losses(features_fn: FeaturesFn, heads_fn: HeadsFn) -> RepresentationLosses:
    r"""A ``losses_fn`` whose gradient methods work on the representation z (one trunk pass).

    Args:
      features_fn: ``features_fn(model_params) -> z``, the shared representation on this
        step's batch (a floating array, e.g. (batch, features), or a tree of them).
      heads_fn: ``heads_fn(model_params, z) -> (T,)``, the losses from z (primary first;
        stack the scalar losses with ``jnp.stack``). It may read any of the params (the
        heads'); every loss must depend on z.

    Returns:
      A :class:`RepresentationLosses`, usable as the ``losses_fn`` of any weighting's
      step and of :func:`yoto_jax.trainer`'s step.

    Example:
      >>> import jax.numpy as jnp, yoto_jax
      >>> from yoto_jax.baselines import mgda
      >>> params = {"trunk": jnp.eye(2), "heads": jnp.array([[1.0, 0.0], [0.0, 3.0]])}
      >>> x = jnp.array([[1.0, 1.0]])
      >>> losses_fn = yoto_jax.representation_losses(
      ...     lambda p: x @ p["trunk"],  # z, shape (1, 2)
      ...     lambda p, z: jnp.sum(z * p["heads"], axis=1),  # l_i = z · heads_i
      ... )
      >>> losses_fn(params)
      Array([1., 3.], dtype=float32)
      >>> weighting = mgda(shared={"trunk": True, "heads": False})
      >>> state = weighting.init(2)[1]
      >>> result = weighting.step(losses_fn, params, {}, state)
      >>> result.model_grads["trunk"].round(6)  # xᵀ times the min-norm point (0.9, 0.3) of e₀ and 3e₁
      Array([[0.9, 0.3],
             [0.9, 0.3]], dtype=float32)

    References:
      Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization",
      NeurIPS 2018 (MGDA-UB); Senushkin et al., "Independent Component Alignment for
      Multi-Task Learning", CVPR 2023 (Aligned-MTL-UB); LibMTL's ``rep_grad``.
    """
    return RepresentationLosses(features_fn, heads_fn)


class RepresentationGradients(NamedTuple):
    """The per-loss gradients of z and the one pass back through the model.

    Attributes:
      losses: the (T,) losses (no gradient).
      per_loss: the gradients of the (transformed) losses with respect to z, a tree like
        z whose leaves carry a leading axis of size T.
      pullback: ``pullback(z_cotangent, head_weights) -> model gradients``: one VJP
        through the trunk with ``z_cotangent`` (a tree like z) plus the heads' own
        gradient of :math:`\\sum_i w_i l_i` at fixed z, w = ``head_weights`` (T,).
    """

    losses: jax.Array
    per_loss: Any
    pullback: Callable[[Any, jax.Array], Params]

    def weighted_gradient(self, weights: jax.Array) -> Params:
        r"""The model's gradient of :math:`\sum_i w_i l_i`: the pullback of
        :math:`\sum_i w_i \partial l_i / \partial z` with head weights w."""
        weights = weights.astype(self.losses.dtype)
        cotangent = jax.tree.map(
            lambda g: jnp.tensordot(weights.astype(g.dtype), g, 1, precision=HIGHEST),
            self.per_loss,
        )
        return self.pullback(cotangent, weights)


def representation_gradients(
    losses_fn: RepresentationLosses,
    model_params: Params,
    num_losses: int,
    transform: Callable[[jax.Array], jax.Array] | None = None,
) -> RepresentationGradients:
    """One trunk forward pass, T backward passes through the heads, and the pullback of
    :class:`RepresentationGradients`; the losses differentiated are ``transform(losses)``
    if given (IMTL's scaled losses). Where ``heads_fn`` stacks scalar losses
    (``jnp.stack``, or ``jnp.concatenate`` of such stacks) and there is no ``transform``,
    the pass of each loss runs through the part of the heads that loss reads only
    (:func:`_separate_gradients`); otherwise the T passes are one pass vmapped over the T
    unit cotangents, through all of the heads."""
    z, trunk_vjp = jax.vjp(losses_fn.features_fn, model_params)
    z = _checked_representation(z)
    heads = transformed_losses(losses_fn.heads_fn, num_losses, transform)
    traced, sources = _traced_heads(losses_fn.heads_fn, model_params, z)
    _, params_vjp, losses = jax.vjp(lambda params: heads(params, z), model_params, has_aux=True)
    if transform is None and sources is not None:
        per_loss = _separate_gradients(traced, sources, z)
    else:
        _, z_vjp, _ = jax.vjp(lambda z: heads(model_params, z), z, has_aux=True)
        (per_loss,) = jax.vmap(z_vjp)(jnp.eye(num_losses, dtype=losses.dtype))
    pullback = _pullback(trunk_vjp, params_vjp, losses.dtype)
    return RepresentationGradients(jax.lax.stop_gradient(losses), per_loss, pullback)


def _separate_gradients(traced: jex_core.ClosedJaxpr, sources: list[Any], z: Any) -> Any:
    r"""The per-loss gradients of z, each by its own backward pass from the scalar the
    loss vector stacks: the heads' jaxpr with those scalars as its outputs, so the pass
    from :math:`l_i` runs only through the computation :math:`l_i` reads (a vmapped
    pass with the unit cotangent :math:`e_i` would run through every head, its zeros
    included). A tree like z whose leaves carry a leading axis of size T."""
    scalars = jex_core.jaxpr_as_fun(
        jex_core.ClosedJaxpr(traced.jaxpr.replace(outvars=sources), traced.consts)
    )
    leaves, treedef = jax.tree.flatten(z)

    def loss(index: int, leaves: list[jax.Array]) -> jax.Array:
        return jnp.reshape(scalars(*leaves)[index], ())

    rows = [jax.grad(functools.partial(loss, index))(leaves) for index in range(len(sources))]
    return jax.tree.unflatten(treedef, [jnp.stack(column) for column in zip(*rows)])


class RepresentationProducts(NamedTuple):
    """The products with Z, the (T, m) matrix of the per-loss gradients of z, without Z.

    Attributes:
      losses: the (T,) losses (no gradient).
      vjp: ``vjp(u) -> Zᵀu``, a tree like z, for a (T,) vector u: one backward pass
        through the heads.
      jvp: ``jvp(v) -> Z v``, shape (T,), for a tree v like z: one forward-mode pass
        through the heads.
      pullback: as :attr:`RepresentationGradients.pullback`.
    """

    losses: jax.Array
    vjp: Callable[[jax.Array], Any]
    jvp: Callable[[Any], jax.Array]
    pullback: Callable[[Any, jax.Array], Params]


def representation_products(
    losses_fn: RepresentationLosses,
    model_params: Params,
    num_losses: int,
    transform: Callable[[jax.Array], jax.Array] | None = None,
) -> RepresentationProducts:
    r"""One trunk forward pass and the heads linearised in z (:func:`jax.linearize`, its
    transpose the VJP): the products :math:`Z^\top u` and :math:`Z v` one at a time, so
    the T rows of Z are never held together (``gramian="products"`` of the gradient
    methods); the losses differentiated are ``transform(losses)`` if given."""
    z, trunk_vjp = jax.vjp(losses_fn.features_fn, model_params)
    z = _checked_representation(z)
    heads = transformed_losses(losses_fn.heads_fn, num_losses, transform)
    _traced_heads(losses_fn.heads_fn, model_params, z)
    _, z_jvp, losses = jax.linearize(lambda z: heads(model_params, z), z, has_aux=True)
    z_transposed = jax.linear_transpose(z_jvp, z)
    _, params_vjp, _ = jax.vjp(lambda params: heads(params, z), model_params, has_aux=True)

    def vjp(u: jax.Array) -> Any:
        (cotangent,) = z_transposed(u.astype(losses.dtype))
        return cotangent

    return RepresentationProducts(
        jax.lax.stop_gradient(losses), vjp, z_jvp, _pullback(trunk_vjp, params_vjp, losses.dtype)
    )


def _pullback(
    trunk_vjp: Callable[[Any], tuple[Params]],
    params_vjp: Callable[[jax.Array], tuple[Params]],
    dtype: Any,
) -> Callable[[Any, jax.Array], Params]:
    """``(z_cotangent, head_weights) -> `` the trunk's VJP plus the heads' own gradient."""

    def pullback(z_cotangent: Any, head_weights: jax.Array) -> Params:
        (trunk_grads,) = trunk_vjp(z_cotangent)
        (head_grads,) = params_vjp(head_weights.astype(dtype))
        return jax.tree.map(jnp.add, trunk_grads, head_grads)

    return pullback


def _checked_representation(z: Any) -> Any:
    leaves = jax.tree.leaves(z)
    if not leaves:
        raise ValueError("features_fn must return the representation z, got no array.")
    for leaf in leaves:
        _checks.floating_array(leaf, "features_fn's representation z")
    return z


def _traced_heads(
    heads_fn: HeadsFn, model_params: Params, z: Any
) -> tuple[jex_core.ClosedJaxpr, list[Any] | None]:
    """``heads_fn`` traced in z, and the scalars its loss vector stacks
    (:func:`_loss_sources`); raises unless every loss depends on z
    (:func:`_require_dependence`)."""
    traced = jax.make_jaxpr(lambda z: heads_fn(model_params, z))(z)
    sources = _loss_sources(traced.jaxpr)
    _require_dependence(traced.jaxpr, sources)
    return traced, sources


def _loss_sources(jaxpr: jex_core.Jaxpr) -> list[Any] | None:
    """The T atoms (variables or literals of size 1) the loss vector stacks, through nested
    ``stack`` and ``concatenate`` along its axis; None when the vector is computed some
    other way (then its losses can only be told apart by differentiating the whole)."""
    if len(jaxpr.outvars) != 1:
        return None  # not one vector: loss_vector reports the shape
    producers = {out: eqn for eqn in jaxpr.eqns for out in eqn.outvars}

    def sources(atom: Any) -> list[Any] | None:
        eqn = producers.get(atom) if _is_var(atom) else None
        joined = eqn is not None and atom.aval.ndim == 1
        if joined and eqn.primitive.name == "concatenate" and eqn.params["dimension"] == 0:
            parts = [sources(v) for v in eqn.invars]
            return None if any(p is None for p in parts) else [a for p in parts for a in p]
        if joined and eqn.primitive.name == "stack":
            return list(eqn.invars)  # scalars: their stack is the 1-d vector
        return [atom] if getattr(atom.aval, "size", 0) == 1 else None

    return sources(jaxpr.outvars[0])


def _require_dependence(jaxpr: jex_core.Jaxpr, sources: list[Any] | None) -> None:
    """Raises unless every loss of the heads' ``jaxpr`` depends on z (its inputs): per
    loss where the vector stacks scalars (``sources``), else as a whole."""
    if len(jaxpr.outvars) != 1:
        return  # not one vector: loss_vector reports the shape
    dependent: set = set(jaxpr.invars)
    for eqn in jaxpr.eqns:
        if any(_is_var(v) and v in dependent for v in eqn.invars):
            dependent.update(eqn.outvars)
    atoms = jaxpr.outvars if sources is None else sources
    missing = [i for i, atom in enumerate(atoms) if not (_is_var(atom) and atom in dependent)]
    if missing:
        which = "the losses" if sources is None else f"losses {missing} (0 is the primary)"
        raise ValueError(
            f"heads_fn's {which} do not depend on the representation z: their gradients "
            "with respect to z are zero, so representation mode cannot weigh them. Compute "
            "every loss from z (a loss of the heads' params alone, e.g. a regulariser, "
            "belongs in parameter mode or in the optimizer)."
        )


def _is_var(v: Any) -> bool:
    return isinstance(v, jex_core.Var) and not isinstance(v, jex_core.Literal)
