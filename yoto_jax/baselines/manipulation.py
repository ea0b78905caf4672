"""Gradient-manipulation baselines (PCGrad, MGDA, CAGrad) as Optax transformations.

Their input is the per-loss gradients: a tree like the params whose leaves carry a
leading axis of size T, e.g. ``jax.jacrev(losses_fn)(params)`` for ``losses_fn``
returning shape (T,). On the shared parameters (selected by ``shared``) the T
gradients are combined as the method says; every other leaf (task-specific
parameters, which get a gradient from their own loss only) gets the plain sum
over the T gradients, as in LibMTL. The output has the params' shapes, so the
transformation goes first in an ``optax.chain`` before the model's optimizer::

    tx = optax.chain(pcgrad(shared=mask), optax.adam(1e-3))
    updates, state = tx.update(jax.jacrev(losses_fn)(params), state, params)

Every product of gradients inside the solvers (the Gram matrix gᵢ·gⱼ, PCGrad's dot
products, the solvers' T-vector products and the combinations Σ αᵢ gᵢ) runs at
``jax.lax.Precision.HIGHEST``: on GPUs float32 matmuls default to TF32 (10-bit
mantissa), which put errors of 3e-4 (3e-2 relative) into MGDA's min-norm point on an
H100. The products are T x n or T x T, so full precision costs nothing measurable.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from yoto_jax import _checks
from yoto_jax.baselines._common import prng_key, selected_leaves

DEFAULT_SOLVER_ITERATIONS = 250
"""Iterations of the simplex solvers of MGDA and CAGrad (MGDA's reference MAX_ITER)."""

DEFAULT_CAGRAD_C = 0.5
"""CAGrad's conflict-averse radius c (LibMTL's default ``calpha``)."""

Combine = Callable[[jax.Array, Any], tuple[jax.Array, Any]]

_HIGHEST = jax.lax.Precision.HIGHEST


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` at full float32 precision, whatever the backend's or the scope's default
    (no TF32 or bfloat16 passes on GPUs and TPUs)."""
    return jnp.matmul(a, b, precision=_HIGHEST)


def _gram(grads: jax.Array) -> jax.Array:
    """G Gᵀ, the (T, T) matrix of gᵢ·gⱼ, at full precision."""
    return _dot(grads, grads.T)


def _per_loss_transformation(
    shared: Any, init_state: Callable[[], Any], combine: Combine
) -> optax.GradientTransformation:
    """Applies ``combine((T, n) matrix of shared gradients, state)`` over the shared leaves."""
    if shared is None:
        raise TypeError("shared must select the shared parameters (a bool tree or a callable).")

    def init_fn(params: optax.Params) -> Any:
        del params
        return init_state()

    def update_fn(updates: optax.Updates, state: Any, params: optax.Params | None = None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        flags = selected_leaves(shared, updates)
        leaves = [_checks.floating_array(leaf, "per-loss gradient") for leaf in leaves]
        shapes = {leaf.shape[:1] for leaf in leaves}
        if len(shapes) != 1 or () in shapes:
            raise ValueError(
                "expected per-loss gradients, every leaf with the same leading axis of size T "
                f"(e.g. jax.jacrev of the loss vector); got leading shapes {sorted(shapes)}."
            )
        num_losses = leaves[0].shape[0]
        shared_leaves = [leaf for leaf, flag in zip(leaves, flags) if flag]
        dtype = _checks.compute_dtype(*shared_leaves)
        matrix = jnp.concatenate(
            [leaf.reshape(num_losses, -1).astype(dtype) for leaf in shared_leaves], axis=1
        )
        combined, state = combine(matrix, state)
        sizes = [math.prod(leaf.shape[1:]) for leaf in shared_leaves]
        parts = iter(jnp.split(combined, list(itertools.accumulate(sizes))[:-1]))
        out = [
            next(parts).reshape(leaf.shape[1:]).astype(leaf.dtype) if flag else jnp.sum(leaf, 0)
            for leaf, flag in zip(leaves, flags)
        ]
        return jax.tree.unflatten(treedef, out), state

    return optax.GradientTransformation(init_fn, update_fn)


class PCGradState(NamedTuple):
    """The PRNG key of the next step's random task orders."""

    key: jax.Array


def _pcgrad_combine(grads: jax.Array, state: PCGradState) -> tuple[jax.Array, PCGradState]:
    num_losses = grads.shape[0]
    next_key, order_key = jax.random.split(state.key)
    squared_norms = jnp.sum(grads**2, axis=1)

    def project(i: jax.Array, key: jax.Array) -> jax.Array:
        def against(g: jax.Array, j: jax.Array) -> tuple[jax.Array, None]:
            dot = _dot(g, grads[j])
            conflict = (j != i) & (dot < 0) & (squared_norms[j] > 0)
            scale = jnp.where(conflict, dot / jnp.where(conflict, squared_norms[j], 1.0), 0.0)
            return g - scale * grads[j], None

        return jax.lax.scan(against, grads[i], jax.random.permutation(key, num_losses))[0]

    keys = jax.random.split(order_key, num_losses)
    projected = jax.vmap(project)(jnp.arange(num_losses), keys)
    return jnp.sum(projected, axis=0), PCGradState(next_key)


def pcgrad(shared: Any, seed: int | jax.Array = 0) -> optax.GradientTransformation:
    r"""PCGrad: project each task's gradient off the gradients it conflicts with, then sum.

    For each task i, starting from :math:`g_i' = g_i`, for every other task j in a
    random order: if :math:`g_i' \cdot g_j < 0`, then
    :math:`g_i' \leftarrow g_i' - \frac{g_i' \cdot g_j}{\lVert g_j \rVert^2} g_j`.
    The update of the shared parameters is :math:`\sum_i g_i'`.

    The order is drawn anew for every task and step from the state's key. As in the
    paper's Algorithm 1, j runs over the other tasks; the reference codes also
    project against i itself, which changes nothing unless :math:`g_i'` has turned
    against :math:`g_i`.

    Args:
      shared: which leaves are shared: a bool tree like the params (or a prefix), or
        a callable returning one from the per-loss gradient tree.
      seed: an int seed or a PRNG key for the random orders.

    Returns:
      An ``optax.GradientTransformation`` from per-loss gradients (leading axis T)
      to one update of the params' shapes.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from yoto_jax.baselines import pcgrad
      >>> per_loss = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # T = 2
      >>> tx = pcgrad(shared=True)
      >>> tx.update(per_loss, tx.init({"w": jnp.zeros(2)}))[0]["w"]
      Array([0.5, 1.5], dtype=float32)

    References:
      Yu, Kumar, Gupta, Levine, Hausman and Finn, "Gradient Surgery for Multi-Task
      Learning", NeurIPS 2020, Alg. 1.
    """
    key = prng_key(seed)
    return _per_loss_transformation(shared, lambda: PCGradState(key), _pcgrad_combine)


def _project_to_simplex(x: jax.Array) -> jax.Array:
    """The Euclidean projection onto {α >= 0, Σα = 1} (sort-based, Held et al. 1974)."""
    x = x - jnp.max(x)  # the projection is invariant to shifts along 1; this keeps precision
    sorted_x = jnp.sort(x)[::-1]
    cumulative = jnp.cumsum(sorted_x) - 1.0
    index = jnp.arange(1, x.shape[0] + 1, dtype=x.dtype)
    count = jnp.sum(sorted_x - cumulative / index > 0)
    threshold = cumulative[count - 1] / count.astype(x.dtype)
    return jnp.maximum(x - threshold, 0.0)


def _minimise_on_simplex(
    value_fn: Callable[[jax.Array], jax.Array],
    grad_fn: Callable[[jax.Array], jax.Array],
    lipschitz: jax.Array,
    num_losses: int,
    iterations: int,
) -> jax.Array:
    """Minimises a convex function of Gram-matrix scale over the simplex from uniform weights.

    Accelerated projected gradient (FISTA, Beck and Teboulle 2009) with backtracking
    (the step's curvature L, from ``lipschitz``, is doubled until the quadratic upper
    bound holds, at most 40 times per step; it never decreases) and adaptive restart
    (O'Donoghue and Candès 2015: the momentum is dropped when it points against the
    step).
    """
    dtype = lipschitz.dtype
    start = jnp.full((num_losses,), 1.0 / num_losses, dtype)
    # Float error in the values is about eps x the Gram matrix's scale (∝ lipschitz):
    # tolerated, so that rounding alone never shrinks the step.
    slack = 64 * jnp.finfo(dtype).eps * lipschitz

    def body(_, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        alpha, point, t, curvature = carry
        value, grad = value_fn(point), grad_fn(point)

        def candidate(curvature: jax.Array) -> tuple[jax.Array, jax.Array]:
            new = _project_to_simplex(point - grad / curvature)
            step = new - point
            bound = value + _dot(grad, step) + 0.5 * curvature * _dot(step, step)
            return new, value_fn(new) <= bound + slack

        def double(search: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            new, fits = candidate(2.0 * search[2])
            return new, fits, 2.0 * search[2], search[3] + 1

        new, fits = candidate(curvature)
        new, _, curvature, _ = jax.lax.while_loop(
            lambda search: ~search[1] & (search[3] < 40), double, (new, fits, curvature, 0)
        )
        new_t = (1.0 + jnp.sqrt(1.0 + 4.0 * t**2)) / 2.0
        restart = _dot(point - new, new - alpha) > 0
        momentum = jnp.where(restart, 0.0, (t - 1.0) / new_t)
        t = jnp.where(restart, 1.0, new_t)
        return new, new + momentum * (new - alpha), t, curvature

    carry = (start, start, jnp.ones((), dtype), lipschitz)
    return jax.lax.fori_loop(0, iterations, body, carry)[0]


def min_norm_weights(gram: jax.Array, iterations: int = DEFAULT_SOLVER_ITERATIONS) -> jax.Array:
    r"""The α on the simplex minimising :math:`\lVert \sum_i α_i g_i \rVert^2 = α^\top M α`.

    Solved on the Gram matrix :math:`M = G G^\top` by accelerated projected gradient
    with backtracking, from uniform weights, a fixed number of iterations: 250 reach
    float32 precision on random problems with T <= 8 (the tests check it).

    Args:
      gram: M, shape (T, T), symmetric positive semi-definite.
      iterations: the number of iterations, an int >= 1.

    Returns:
      α, shape (T,).
    """
    _checks.positive_int(iterations, "iterations")
    lipschitz = 2.0 * jnp.maximum(jnp.trace(gram), jnp.finfo(gram.dtype).tiny)
    return _minimise_on_simplex(
        lambda a: _dot(a, _dot(gram, a)),
        lambda a: 2.0 * _dot(gram, a),
        lipschitz,
        gram.shape[0],
        iterations,
    )


def mgda(shared: Any, iterations: int = DEFAULT_SOLVER_ITERATIONS) -> optax.GradientTransformation:
    r"""MGDA: the minimum-norm point of the convex hull of the task gradients.

    .. math::
        d = \sum_i α_i g_i, \qquad
        α = \operatorname*{argmin}_{α \ge 0,\ \sum α = 1} \Big\lVert \sum_i α_i g_i \Big\rVert^2,

    a common descent direction of every task (zero at a Pareto-stationary point).
    Solved on the T x T Gram matrix by :func:`min_norm_weights`; the reference's
    Frank-Wolfe/projection solver differs in the iteration, not in the optimum.
    No gradient normalisation (LibMTL's default ``mgda_gn='none'``).

    Args:
      shared: which leaves are shared: a bool tree like the params (or a prefix), or
        a callable returning one from the per-loss gradient tree.
      iterations: solver iterations, an int >= 1.

    Returns:
      An ``optax.GradientTransformation`` from per-loss gradients (leading axis T)
      to one update of the params' shapes.

    References:
      Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization",
      NeurIPS 2018; Désidéri, "Multiple-gradient descent algorithm (MGDA)", 2012.
    """
    _checks.positive_int(iterations, "iterations")

    def combine(grads: jax.Array, state: optax.EmptyState):
        alpha = min_norm_weights(_gram(grads), iterations)
        return _dot(alpha, grads), state

    return _per_loss_transformation(shared, optax.EmptyState, combine)


def cagrad(
    shared: Any,
    c: float = DEFAULT_CAGRAD_C,
    rescale: bool = True,
    iterations: int = DEFAULT_SOLVER_ITERATIONS,
) -> optax.GradientTransformation:
    r"""CAGrad: the average gradient, bent towards the worst-served task.

    With the average :math:`g_0 = \frac{1}{T}\sum_i g_i`, :math:`A = G G^\top` and
    :math:`\sqrt{φ} = c \lVert g_0 \rVert`,

    .. math::
        w = \operatorname*{argmin}_{w \ge 0,\ \sum w = 1}
            g_w^\top g_0 + \sqrt{φ}\, \lVert g_w \rVert, \qquad
        d = g_0 + \frac{\sqrt{φ}}{\lVert g_w \rVert}\, g_w, \qquad g_w = \sum_i w_i g_i,

    the direction within the ball :math:`\lVert d - g_0 \rVert \le \sqrt{φ}` that
    maximises the smallest task improvement :math:`\min_i g_i^\top d`. With
    ``rescale``, d is divided by :math:`1 + c^2` (the reference's default
    ``rescale=1``). As in the reference, :math:`10^{-8}` is added under the square
    roots and to the denominators. The reference solves for w with SciPy's SLSQP;
    here the same objective is minimised by accelerated projected gradient (the tests
    compare the two). c = 0 gives the average gradient.

    Args:
      shared: which leaves are shared: a bool tree like the params (or a prefix), or
        a callable returning one from the per-loss gradient tree.
      c: the radius c >= 0 (0.5, LibMTL's default; the CAGrad paper uses 0.4 on
        NYUv2 and CityScapes).
      rescale: divide the direction by :math:`1 + c^2`.
      iterations: solver iterations, an int >= 1.

    Returns:
      An ``optax.GradientTransformation`` from per-loss gradients (leading axis T)
      to one update of the params' shapes.

    References:
      Liu, Liu, Jin, Stone and Liu, "Conflict-Averse Gradient Descent for Multi-task
      Learning", NeurIPS 2021, Alg. 1; https://github.com/Cranial-XIX/CAGrad.
    """
    _checks.non_negative(c, "c")
    _checks.positive_int(iterations, "iterations")

    def combine(grads: jax.Array, state: optax.EmptyState):
        num_losses = grads.shape[0]
        gram = _gram(grads)
        uniform = jnp.full((num_losses,), 1.0 / num_losses, gram.dtype)
        radius = c * jnp.sqrt(jnp.mean(gram) + 1e-8) + 1e-8

        pull = _dot(gram, uniform)  # A 1/T, the gradient of g_wᵀg_0 in w

        def value(w: jax.Array) -> jax.Array:
            gram_w = _dot(gram, w)
            return _dot(w, pull) + radius * jnp.sqrt(_dot(w, gram_w) + 1e-8)

        def grad(w: jax.Array) -> jax.Array:
            gram_w = _dot(gram, w)
            return pull + radius * gram_w / jnp.sqrt(_dot(w, gram_w) + 1e-8)

        lipschitz = jnp.maximum(jnp.trace(gram), jnp.finfo(gram.dtype).tiny)
        w = _minimise_on_simplex(value, grad, lipschitz, num_losses, iterations)
        g_w = _dot(w, grads)
        direction = jnp.mean(grads, axis=0) + radius / (jnp.linalg.norm(g_w) + 1e-8) * g_w
        return (direction / (1.0 + c**2) if rescale else direction), state

    return _per_loss_transformation(shared, optax.EmptyState, combine)
