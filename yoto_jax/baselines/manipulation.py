r"""Gradient-manipulation baselines (PCGrad, MGDA, CAGrad): Optax transformations and weightings.

These methods combine the T per-loss gradients of the shared parameters rather than
weighting the losses. Each comes twice:

* as an Optax transformation, ``pcgrad_transformation``, ``mgda_transformation`` and
  ``cagrad_transformation``, with params-shaped updates as Optax expects: ``updates``
  is the gradient of the summed loss, and the per-loss gradients
  ``jax.jacrev(losses_fn)(params)`` (a tree like the params whose leaves carry a
  leading axis of size T) come as the extra argument ``per_loss_grads``. On the
  shared parameters (selected by ``shared``) the T gradients are combined as the
  method says; every other leaf (task-specific parameters, which get a gradient from
  their own loss only) keeps ``updates``, the plain sum over the T gradients, as in
  LibMTL. The transformation goes first in an ``optax.chain``, which forwards the
  extra argument::

      tx = optax.chain(pcgrad_transformation(shared=mask), optax.adam(1e-3))
      per_loss_grads = jax.jacrev(losses_fn)(params)
      grads = jax.tree.map(lambda g: g.sum(0), per_loss_grads)
      updates, state = tx.update(grads, state, params, per_loss_grads=per_loss_grads)

* as a :class:`~yoto_jax.Weighting` of the library's contract, :func:`pcgrad`,
  :func:`mgda` and :func:`cagrad`, for :func:`yoto_jax.trainer`: its ``step`` takes
  the per-loss gradients with one ``jax.jacrev`` (T backward passes) and applies the
  transformation. The weights they report are ones: there are no loss weights.

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
import numpy as np
import optax

from yoto_jax import _checks
from yoto_jax.baselines._common import NumLosses, prng_key, selected_leaves
from yoto_jax.weighting import (
    LossesFn,
    Params,
    Weighting,
    WeightingStep,
    keep_state,
    loss_vector,
    require_key,
    same_optimizer,
)

DEFAULT_SOLVER_ITERATIONS = 250
"""The most steps of the simplex solvers of MGDA and CAGrad (MGDA's reference MAX_ITER);
they stop earlier once converged."""

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


def _per_loss_leaves(
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


def _manipulation(
    name: str, shared: Any, init_state: Callable[[], Any], combine: Combine
) -> optax.GradientTransformationExtraArgs:
    """The transformation that applies ``combine((T, n) matrix of the shared per-loss
    gradients, state) -> ((n,) update, state)`` over the shared leaves."""
    if shared is None:
        raise TypeError("shared must select the shared parameters (a bool tree or a callable).")

    def init_fn(params: optax.Params) -> Any:
        del params
        return init_state()

    def update_fn(
        updates: optax.Updates,
        state: Any,
        params: optax.Params | None = None,
        *,
        per_loss_grads: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, Any]:
        del params, extra_args
        leaves, per_loss, treedef = _per_loss_leaves(name, updates, per_loss_grads)
        flags = selected_leaves(shared, updates)
        num_losses = per_loss[0].shape[0]
        shared_grads = [grads for grads, flag in zip(per_loss, flags) if flag]
        dtype = _checks.compute_dtype(*shared_grads)
        matrix = jnp.concatenate(
            [grads.reshape(num_losses, -1).astype(dtype) for grads in shared_grads], axis=1
        )
        combined, state = combine(matrix, state)
        sizes = [math.prod(grads.shape[1:]) for grads in shared_grads]
        parts = iter(jnp.split(combined, list(itertools.accumulate(sizes))[:-1]))
        out = [
            next(parts).reshape(leaf.shape).astype(leaf.dtype) if flag else leaf
            for leaf, flag in zip(leaves, flags)
        ]
        return jax.tree.unflatten(treedef, out), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _manipulation_weighting(
    transformation: optax.GradientTransformationExtraArgs,
    transformation_state: Callable[[jax.Array | None], Any],
) -> Weighting:
    """The :class:`~yoto_jax.Weighting` that applies ``transformation`` to the per-loss
    gradients of each step, its state built by ``transformation_state(key)``."""

    def init(num_losses: int) -> tuple[dict[str, jax.Array], NumLosses]:
        return {}, NumLosses(_checks.positive_int(num_losses, "num_losses"))

    def step(
        losses_fn: LossesFn,
        model_params: Params,
        params: dict[str, jax.Array],
        state: NumLosses,
        *,
        key: jax.Array | None = None,
    ) -> WeightingStep:
        tx_state = transformation_state(key)

        def with_losses(model_params: Params) -> tuple[jax.Array, jax.Array]:
            losses = loss_vector(losses_fn(model_params), state.num_losses)
            return losses, losses

        per_loss_grads, losses = jax.jacrev(with_losses, has_aux=True)(model_params)
        updates = jax.tree.map(lambda g: jnp.sum(g, 0), per_loss_grads)
        model_grads, _ = transformation.update(
            updates, tx_state, model_params, per_loss_grads=per_loss_grads
        )
        losses = jax.lax.stop_gradient(losses)
        return WeightingStep(losses, jnp.ones_like(losses), model_grads, {}, state)

    def weights(params: dict[str, jax.Array], state: NumLosses) -> jax.Array:
        return jnp.ones((state.num_losses,), jnp.float32)

    return Weighting(init, step, keep_state, weights, same_optimizer)


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


def pcgrad_transformation(
    shared: Any, seed: int | jax.Array = 0
) -> optax.GradientTransformationExtraArgs:
    r"""PCGrad: project each task's gradient off the gradients it conflicts with, then sum.

    For each task i, starting from :math:`g_i' = g_i`, for every other task j in a
    random order: if :math:`g_i' \cdot g_j < 0`, then
    :math:`g_i' \leftarrow g_i' - \frac{g_i' \cdot g_j}{\lVert g_j \rVert^2} g_j`.
    The update of the shared parameters is :math:`\sum_i g_i'`; the other leaves keep
    ``updates``, the sum :math:`\sum_i g_i`.

    The order is drawn anew for every task and step from the state's key. As in the
    paper's Algorithm 1, j runs over the other tasks; the reference codes also
    project against i itself, which changes nothing unless :math:`g_i'` has turned
    against :math:`g_i`.

    Args:
      shared: which leaves are shared: a bool tree like the params (or a prefix), or
        a callable returning one from a tree with the params' structure.
      seed: an int seed or a PRNG key for the random orders.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose
      ``update(updates, state, params=None, *, per_loss_grads)`` maps the summed
      loss's gradient ``updates`` and the per-loss gradients (leading axis T) to an
      update of the params' shapes.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from yoto_jax.baselines import pcgrad_transformation
      >>> per_loss_grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # T = 2
      >>> grads = jax.tree.map(lambda g: g.sum(0), per_loss_grads)
      >>> tx = pcgrad_transformation(shared=True)
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> tx.update(grads, state, per_loss_grads=per_loss_grads)[0]["w"]
      Array([0.5, 1.5], dtype=float32)

    References:
      Yu, Kumar, Gupta, Levine, Hausman and Finn, "Gradient Surgery for Multi-Task
      Learning", NeurIPS 2020, Alg. 1.
    """
    key = prng_key(seed)
    return _manipulation("pcgrad_transformation", shared, lambda: PCGradState(key), _pcgrad_combine)


def pcgrad(shared: Any) -> Weighting:
    r"""PCGrad as a :class:`~yoto_jax.Weighting`: :func:`pcgrad_transformation` on
    each step's per-loss gradients.

    The random task orders come from the step's ``key`` (required: one new key per
    step). The weighting has no params and no arrays in its state; its weights are
    ones (PCGrad combines gradients, not losses).

    Args:
      shared: which leaves of the model's params are shared: a bool tree like them
        (or a prefix), or a callable returning one from a tree of their structure.

    Returns:
      A :class:`~yoto_jax.Weighting`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from yoto_jax.baselines import pcgrad
      >>> weighting = pcgrad(shared=True)
      >>> params, state = weighting.init(2)
      >>> losses_fn = lambda w: jnp.stack([w @ jnp.array([1.0, 0.0]), w @ jnp.array([-1.0, 1.0])])
      >>> result = weighting.step(losses_fn, jnp.zeros(2), params, state, key=jax.random.key(0))
      >>> result.model_grads, result.weights
      (Array([0.5, 1.5], dtype=float32), Array([1., 1.], dtype=float32))

    References:
      Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
    """
    transformation = pcgrad_transformation(shared)
    return _manipulation_weighting(
        transformation, lambda key: PCGradState(require_key(key, "PCGrad"))
    )


def _project_to_simplex(x: jax.Array) -> jax.Array:
    """The Euclidean projection onto {α >= 0, Σα = 1} (sort-based, Held et al. 1974)."""
    x = x - jnp.max(x)  # the projection is invariant to shifts along 1; this keeps precision
    sorted_x = jnp.sort(x)[::-1]
    cumulative = jnp.cumsum(sorted_x) - 1.0
    index = jnp.arange(1, x.shape[0] + 1, dtype=x.dtype)
    count = jnp.sum(sorted_x - cumulative / index > 0)
    threshold = cumulative[count - 1] / count.astype(x.dtype)
    return jnp.maximum(x - threshold, 0.0)


class _SimplexSolution(NamedTuple):
    """What :func:`_minimise_on_simplex` returns: the minimiser and the work it took."""

    alpha: jax.Array  # shape=(T,): the minimiser on the simplex
    steps: jax.Array  # shape=(), int32: accepted steps
    trips: jax.Array  # shape=(), int32: trips of the while loop (steps and doublings)


def _minimise_on_simplex(
    value_fn: Callable[[jax.Array], jax.Array],
    grad_fn: Callable[[jax.Array], jax.Array],
    curvature: jax.Array,
    scale: jax.Array,
    start: jax.Array,
    iterations: int,
) -> _SimplexSolution:
    r"""Minimises a convex function f of Gram-matrix scale over the simplex from ``start``.

    Accelerated projected gradient (FISTA, Beck and Teboulle 2009): from the
    extrapolated point y, the step :math:`α^+ = Π(y - \nabla f(y) / L)`, Π the
    projection onto the simplex; accepted if f satisfies the quadratic upper bound
    :math:`f(α^+) \le f(y) + \nabla f(y)^\top (α^+ - y) + \frac L2 \lVert α^+ - y
    \rVert^2` (up to a slack of 64 eps x ``scale``, the rounding error of the values,
    so that rounding alone never shrinks the step), else L doubles (backtracking: L
    starts at ``curvature`` and never decreases; after 40 doublings the step is taken
    anyway). The momentum restarts when it points against the step (adaptive restart,
    O'Donoghue and Candès 2015).

    One ``jax.lax.while_loop`` whose every trip either doubles L or takes a step: on
    GPUs each trip of a while loop costs a device-to-host copy of its predicate and
    kernel launches of its own (tens of µs, against nothing for the T x T
    arithmetic), so the solver's cost is its trips. It stops after ``iterations``
    steps, or earlier once a step falls below its own rounding error, i.e. once
    :math:`\max_i |α^+_i - α_i|` and :math:`\max_i |α^+_i - y_i|` are both at most
    :math:`ε (\max_i |α^+_i| + \max_i |\nabla f(y)_i| / L)`, ε the dtype's epsilon,
    the error of rounding :math:`y - \nabla f(y) / L` and projecting it: the iterate
    has reached the fixed point of the floating-point iteration, up to its rounding
    noise, and later steps would only jitter. Stopping when the steps are merely
    small (a few ulps of 1) lost an order of accuracy on random problems with
    T = 8, whose restarted iteration converges linearly through steps of about one
    ulp of 1 before it settles.
    """
    dtype = scale.dtype
    eps = jnp.finfo(dtype).eps
    slack = 64 * eps * scale

    def body(carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        alpha, point, t, curvature, doublings, steps, trips, _ = carry
        value, grad = value_fn(point), grad_fn(point)
        new = _project_to_simplex(point - grad / curvature)
        step = new - point
        bound = value + _dot(grad, step) + 0.5 * curvature * _dot(step, step)
        accept = (value_fn(new) <= bound + slack) | (doublings >= 40)
        new_t = (1.0 + jnp.sqrt(1.0 + 4.0 * t**2)) / 2.0
        restart = _dot(point - new, new - alpha) > 0
        momentum = jnp.where(restart, 0.0, (t - 1.0) / new_t)
        noise = eps * (jnp.max(jnp.abs(new)) + jnp.max(jnp.abs(grad)) / curvature)
        settled = (jnp.max(jnp.abs(new - alpha)) <= noise) & (jnp.max(jnp.abs(step)) <= noise)
        return (
            jnp.where(accept, new, alpha),
            jnp.where(accept, new + momentum * (new - alpha), point),
            jnp.where(accept, jnp.where(restart, 1.0, new_t), t),
            jnp.where(accept, curvature, 2.0 * curvature),
            jnp.where(accept, 0, doublings + 1),
            steps + accept,
            trips + 1,
            accept & settled,
        )

    def cond(carry: tuple[jax.Array, ...]) -> jax.Array:
        return ~carry[7] & (carry[5] < iterations)

    start = start.astype(dtype)
    count = jnp.zeros((), jnp.int32)
    carry = (start, start, jnp.ones((), dtype), curvature.astype(dtype), count, count, count)
    alpha, *_, steps, trips, _ = jax.lax.while_loop(cond, body, (*carry, jnp.zeros((), bool)))
    return _SimplexSolution(alpha, steps, trips)


def _tangent_curvature(gram: jax.Array) -> jax.Array:
    r""":math:`\operatorname{tr}(P M P) = \operatorname{tr} M - \mathbf 1^\top M \mathbf 1 / T`,
    P the projection onto :math:`\mathbf 1^\perp`: a bound on the largest eigenvalue of M
    along the simplex, where the solvers' steps lie (:math:`\sum_i α_i` stays 1). At most
    tr M, and far smaller for nearly parallel gradients, whose differences are small:
    steps of 1/tr M barely moved their weights (CAGrad took all 250 steps). Floored at
    eps tr M, its rounding error, and at the dtype's tiny."""
    trace = jnp.trace(gram)
    tangent = trace - jnp.sum(gram) / gram.shape[0]
    return jnp.maximum(
        tangent, jnp.maximum(jnp.finfo(gram.dtype).eps * trace, jnp.finfo(gram.dtype).tiny)
    )


def _best_pair(gram: jax.Array) -> jax.Array:
    r"""The min-norm point of the best pair of gradients, as weights on the simplex.

    For each pair (i, j), the closed-form minimiser of
    :math:`\lVert γ g_i + (1 - γ) g_j \rVert^2` over γ in [0, 1] (Sener and Koltun's
    ``_min_norm_2d``, with the vertices exactly 1 and 0 instead of 0.999 and 0.001);
    the pair of the smallest norm gives α. One gradient alone: α = 1.
    """
    num_losses = gram.shape[0]
    if num_losses == 1:
        return jnp.ones((1,), gram.dtype)
    first, second = (jnp.asarray(index) for index in np.triu_indices(num_losses, 1))
    ii, jj, ij = gram[first, first], gram[second, second], gram[first, second]
    at_i, at_j = ij >= ii, ij >= jj  # the segment's min-norm point is a vertex
    interior = ~at_i & ~at_j  # then ii + jj - 2 ij > 0
    gamma = (jj - ij) / jnp.where(interior, ii + jj - 2.0 * ij, 1.0)
    gamma = jnp.where(at_i, 1.0, jnp.where(at_j, 0.0, gamma))
    cost = jnp.where(at_i, ii, jnp.where(at_j, jj, jj + gamma * (ij - jj)))
    best = jnp.argmin(cost)
    alpha = jnp.zeros((num_losses,), gram.dtype).at[first[best]].add(gamma[best])
    return alpha.at[second[best]].add(1.0 - gamma[best])


def min_norm_weights(gram: jax.Array, iterations: int = DEFAULT_SOLVER_ITERATIONS) -> jax.Array:
    r"""The α on the simplex minimising :math:`\lVert \sum_i α_i g_i \rVert^2 = α^\top M α`.

    Solved on the Gram matrix :math:`M = G G^\top` by accelerated projected gradient
    with backtracking, at most ``iterations`` steps, from the best pair's closed-form
    solution (as Sener and Koltun's solver starts): for each pair (i, j) the min-norm
    point of the segment :math:`[g_i, g_j]`, and of those the smallest. The start
    makes badly scaled gradients (norms 1e3, 1e-2 and 1, nearly parallel) exact,
    where projected gradient steps of size 1/L, L set by the largest gradient, barely
    move the weights of the small ones. The step size is 1/L with
    :math:`L = 2 \operatorname{tr}(P M P)`, P the projection onto
    :math:`\mathbf 1^\perp` (the steps stay on the simplex), at least the Hessian's
    largest eigenvalue along it, so no step backtracks. The solver stops once a step
    is at rounding level: about 20 steps for T = 3 and 50 for T = 8 on random
    problems, fewer for nearly parallel gradients, at float32 precision (the tests
    check both).

    Args:
      gram: M, shape (T, T), symmetric positive semi-definite.
      iterations: the most steps, an int >= 1.

    Returns:
      α, shape (T,).

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import min_norm_weights
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> min_norm_weights(grads @ grads.T)
      Array([0.5, 0.5], dtype=float32)

    References:
      Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization",
      NeurIPS 2018 (``MinNormSolver._min_norm_2d``).
    """
    _checks.positive_int(iterations, "iterations")
    return _min_norm_solve(gram, iterations).alpha


def _min_norm_solve(gram: jax.Array, iterations: int) -> _SimplexSolution:
    """:func:`min_norm_weights` with the solver's step and trip counts."""
    return _minimise_on_simplex(
        lambda a: _dot(a, _dot(gram, a)),
        lambda a: 2.0 * _dot(gram, a),
        2.0 * _tangent_curvature(gram),
        2.0 * jnp.trace(gram),
        _best_pair(gram),
        iterations,
    )


def mgda_transformation(
    shared: Any, iterations: int = DEFAULT_SOLVER_ITERATIONS
) -> optax.GradientTransformationExtraArgs:
    r"""MGDA: the minimum-norm point of the convex hull of the task gradients.

    .. math::
        d = \sum_i α_i g_i, \qquad
        α = \operatorname*{argmin}_{α \ge 0,\ \sum α = 1} \Big\lVert \sum_i α_i g_i \Big\rVert^2,

    a common descent direction of every task (zero at a Pareto-stationary point), on
    the shared parameters; the other leaves keep ``updates``, the sum of the task
    gradients. Solved on the T x T Gram matrix by :func:`min_norm_weights`; the
    reference's Frank-Wolfe/projection solver differs in the iteration, not in the
    optimum. No gradient normalisation (LibMTL's default ``mgda_gn='none'``).

    Args:
      shared: which leaves are shared: a bool tree like the params (or a prefix), or
        a callable returning one from a tree with the params' structure.
      iterations: the most solver steps, an int >= 1.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose
      ``update(updates, state, params=None, *, per_loss_grads)`` maps the summed
      loss's gradient ``updates`` and the per-loss gradients (leading axis T) to an
      update of the params' shapes.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from yoto_jax.baselines import mgda_transformation
      >>> params = {"w": jnp.zeros(2)}
      >>> per_loss_grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
      >>> grads = jax.tree.map(lambda g: g.sum(0), per_loss_grads)
      >>> tx = optax.chain(mgda_transformation(shared=True), optax.sgd(1.0))
      >>> updates, _ = tx.update(grads, tx.init(params), params, per_loss_grads=per_loss_grads)
      >>> updates["w"]  # -(the min-norm point of the two gradients)
      Array([-0.5, -0.5], dtype=float32)

    References:
      Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization",
      NeurIPS 2018; Désidéri, "Multiple-gradient descent algorithm (MGDA)", 2012.
    """
    _checks.positive_int(iterations, "iterations")

    def combine(grads: jax.Array, state: optax.EmptyState):
        alpha = min_norm_weights(_gram(grads), iterations)
        return _dot(alpha, grads), state

    return _manipulation("mgda_transformation", shared, optax.EmptyState, combine)


def mgda(shared: Any, iterations: int = DEFAULT_SOLVER_ITERATIONS) -> Weighting:
    r"""MGDA as a :class:`~yoto_jax.Weighting`: :func:`mgda_transformation` on each
    step's per-loss gradients.

    Deterministic (the step's key is ignored); no params, no arrays in the state; the
    weights are ones (MGDA combines gradients, not losses).

    Args:
      shared: which leaves of the model's params are shared: a bool tree like them
        (or a prefix), or a callable returning one from a tree of their structure.
      iterations: the most solver steps, an int >= 1.

    Returns:
      A :class:`~yoto_jax.Weighting`.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import mgda
      >>> weighting = mgda(shared=True)
      >>> params, state = weighting.init(2)
      >>> losses_fn = lambda w: jnp.stack([w[0], w[1]])  # gradients e₀ and e₁
      >>> weighting.step(losses_fn, jnp.zeros(2), params, state).model_grads
      Array([0.5, 0.5], dtype=float32)

    References:
      Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization",
      NeurIPS 2018.
    """
    transformation = mgda_transformation(shared, iterations)
    return _manipulation_weighting(transformation, lambda key: optax.EmptyState())


def cagrad_transformation(
    shared: Any,
    c: float = DEFAULT_CAGRAD_C,
    rescale: bool = True,
    iterations: int = DEFAULT_SOLVER_ITERATIONS,
    scale_to_sum: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""CAGrad: the average gradient, bent towards the worst-served task.

    With the average :math:`g_0 = \frac{1}{T}\sum_i g_i`, :math:`A = G G^\top` and
    :math:`\sqrt{φ} = c \lVert g_0 \rVert`,

    .. math::
        w = \operatorname*{argmin}_{w \ge 0,\ \sum w = 1}
            g_w^\top g_0 + \sqrt{φ}\, \lVert g_w \rVert, \qquad
        d = g_0 + \frac{\sqrt{φ}}{\lVert g_w \rVert}\, g_w, \qquad g_w = \sum_i w_i g_i,

    the direction within the ball :math:`\lVert d - g_0 \rVert \le \sqrt{φ}` that
    maximises the smallest task improvement :math:`\min_i g_i^\top d`, on the shared
    parameters; the other leaves keep ``updates``, the sum of the task gradients.
    With ``rescale``, d is divided by :math:`1 + c^2` (the reference's default
    ``rescale=1``); with ``scale_to_sum``, it is then multiplied by T, the reference
    codes' scale (the official code's ``newgrad * 3`` for 3 tasks, Nash-MTL's
    ``* n_tasks``): the direction on the scale of the sum of the gradients, as the
    other leaves are, rather than of their mean. As in the reference,
    :math:`10^{-8}` is added under the square roots and to the denominators. The
    reference solves for w with SciPy's SLSQP; here the same objective is minimised
    by accelerated projected gradient from uniform weights, at most ``iterations``
    steps, stopping once a step is at rounding level (about 25 steps for T = 3 and
    70 for T = 8 on random problems; the tests compare with SLSQP). c = 0 gives the
    average gradient.

    Args:
      shared: which leaves are shared: a bool tree like the params (or a prefix), or
        a callable returning one from a tree with the params' structure.
      c: the radius c >= 0 (0.5, LibMTL's default; the CAGrad paper uses 0.4 on
        NYUv2 and CityScapes).
      rescale: divide the direction by :math:`1 + c^2`.
      iterations: the most solver steps, an int >= 1.
      scale_to_sum: multiply the direction by T (the reference codes' scale).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose
      ``update(updates, state, params=None, *, per_loss_grads)`` maps the summed
      loss's gradient ``updates`` and the per-loss gradients (leading axis T) to an
      update of the params' shapes.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from yoto_jax.baselines import cagrad_transformation
      >>> per_loss_grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
      >>> grads = jax.tree.map(lambda g: g.sum(0), per_loss_grads)
      >>> tx = cagrad_transformation(shared=True, c=0.0, scale_to_sum=True)  # c = 0: Σ g_i
      >>> tx.update(grads, tx.init(None), per_loss_grads=per_loss_grads)[0]["w"]
      Array([1., 1.], dtype=float32)

    References:
      Liu, Liu, Jin, Stone and Liu, "Conflict-Averse Gradient Descent for Multi-task
      Learning", NeurIPS 2021, Alg. 1; https://github.com/Cranial-XIX/CAGrad.
    """
    _checks.non_negative(c, "c")
    _checks.positive_int(iterations, "iterations")

    def combine(grads: jax.Array, state: optax.EmptyState):
        num_losses = grads.shape[0]
        gram = _gram(grads)
        radius = c * jnp.sqrt(jnp.mean(gram) + 1e-8) + 1e-8
        w = _cagrad_solve(gram, radius, iterations).alpha
        g_w = _dot(w, grads)
        direction = jnp.mean(grads, axis=0) + radius / (jnp.linalg.norm(g_w) + 1e-8) * g_w
        if rescale:
            direction = direction / (1.0 + c**2)
        if scale_to_sum:
            direction = direction * num_losses
        return direction, state

    return _manipulation("cagrad_transformation", shared, optax.EmptyState, combine)


def _cagrad_solve(gram: jax.Array, radius: jax.Array, iterations: int) -> _SimplexSolution:
    r"""CAGrad's w: the minimiser over the simplex of :math:`g_w^\top g_0 + \sqrt{φ}\,
    \sqrt{w^\top A w + 10^{-8}}` (:math:`g_w^\top g_0 = w^\top A \mathbf 1 / T`), from
    uniform weights, with the solver's step and trip counts."""
    num_losses = gram.shape[0]
    uniform = jnp.full((num_losses,), 1.0 / num_losses, gram.dtype)
    pull = _dot(gram, uniform)  # A 1/T, the gradient of g_wᵀg_0 in w

    def value(w: jax.Array) -> jax.Array:
        return _dot(w, pull) + radius * jnp.sqrt(_dot(w, _dot(gram, w)) + 1e-8)

    def grad(w: jax.Array) -> jax.Array:
        gram_w = _dot(gram, w)
        return pull + radius * gram_w / jnp.sqrt(_dot(w, gram_w) + 1e-8)

    scale = jnp.maximum(jnp.trace(gram), jnp.finfo(gram.dtype).tiny)
    return _minimise_on_simplex(value, grad, _tangent_curvature(gram), scale, uniform, iterations)


def cagrad(
    shared: Any,
    c: float = DEFAULT_CAGRAD_C,
    rescale: bool = True,
    iterations: int = DEFAULT_SOLVER_ITERATIONS,
    scale_to_sum: bool = False,
) -> Weighting:
    r"""CAGrad as a :class:`~yoto_jax.Weighting`: :func:`cagrad_transformation` on
    each step's per-loss gradients.

    Deterministic (the step's key is ignored); no params, no arrays in the state; the
    weights are ones (CAGrad combines gradients, not losses). ``c`` may be traced
    (vmapped over a grid of radii).

    Args:
      shared: which leaves of the model's params are shared: a bool tree like them
        (or a prefix), or a callable returning one from a tree of their structure.
      c: the radius c >= 0.
      rescale: divide the direction by :math:`1 + c^2`.
      iterations: the most solver steps, an int >= 1.
      scale_to_sum: multiply the direction by T: the reference codes' scale, the
        direction on the scale of the sum of the gradients rather than their mean.

    Returns:
      A :class:`~yoto_jax.Weighting`.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import cagrad
      >>> weighting = cagrad(shared=True, c=0.0)  # c = 0: the average gradient
      >>> params, state = weighting.init(2)
      >>> losses_fn = lambda w: jnp.stack([w[0], 3.0 * w[1]])
      >>> weighting.step(losses_fn, jnp.zeros(2), params, state).model_grads
      Array([0.5, 1.5], dtype=float32)

    References:
      Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
      NeurIPS 2021.
    """
    transformation = cagrad_transformation(shared, c, rescale, iterations, scale_to_sum)
    return _manipulation_weighting(transformation, lambda key: optax.EmptyState())
