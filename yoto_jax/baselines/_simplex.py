r"""The simplex solvers of MGDA and CAGrad: accelerated projected gradient on {α >= 0, Σα = 1}.

:func:`minimise_on_simplex` minimises a convex function of a T x T Gram matrix over the
simplex; :func:`min_norm_solve` is MGDA's min-norm problem on it, started from the best
pair of gradients (:func:`best_pair`). Every product runs at full precision
(:func:`yoto_jax.baselines._gradients.dot`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from yoto_jax.baselines._gradients import dot


def project_to_simplex(x: jax.Array) -> jax.Array:
    """The Euclidean projection onto {α >= 0, Σα = 1} (sort-based, Held et al. 1974)."""
    x = x - jnp.max(x)  # the projection is invariant to shifts along 1; this keeps precision
    sorted_x = jnp.sort(x)[::-1]
    cumulative = jnp.cumsum(sorted_x) - 1.0
    index = jnp.arange(1, x.shape[0] + 1, dtype=x.dtype)
    count = jnp.sum(sorted_x - cumulative / index > 0)
    threshold = cumulative[count - 1] / count.astype(x.dtype)
    return jnp.maximum(x - threshold, 0.0)


class SimplexSolution(NamedTuple):
    """What :func:`minimise_on_simplex` returns: the minimiser and the work it took."""

    alpha: jax.Array  # shape=(T,): the minimiser on the simplex
    steps: jax.Array  # shape=(), int32: accepted steps
    trips: jax.Array  # shape=(), int32: trips of the while loop (steps and doublings)


def minimise_on_simplex(
    value_fn: Callable[[jax.Array], jax.Array],
    grad_fn: Callable[[jax.Array], jax.Array],
    curvature: jax.Array,
    scale: jax.Array,
    start: jax.Array,
    iterations: int,
) -> SimplexSolution:
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
        new = project_to_simplex(point - grad / curvature)
        step = new - point
        bound = value + dot(grad, step) + 0.5 * curvature * dot(step, step)
        accept = (value_fn(new) <= bound + slack) | (doublings >= 40)
        new_t = (1.0 + jnp.sqrt(1.0 + 4.0 * t**2)) / 2.0
        restart = dot(point - new, new - alpha) > 0
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
    return SimplexSolution(alpha, steps, trips)


def tangent_curvature(gram: jax.Array) -> jax.Array:
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


def best_pair(gram: jax.Array) -> jax.Array:
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


def min_norm_solve(gram: jax.Array, iterations: int) -> SimplexSolution:
    """MGDA's min-norm point on the simplex (:func:`yoto_jax.baselines.min_norm_weights`),
    with the solver's step and trip counts."""
    return minimise_on_simplex(
        lambda a: dot(a, dot(gram, a)),
        lambda a: 2.0 * dot(gram, a),
        2.0 * tangent_curvature(gram),
        2.0 * jnp.trace(gram),
        best_pair(gram),
        iterations,
    )
