r"""UPGrad (Quinton and Rey, 2024): each task gradient projected onto the dual cone, then averaged.

The dual cone of the task gradients :math:`g_1, \dots, g_T` (the rows of the Jacobian
J) is the set of directions that conflict with none of them,
:math:`\{x : J x \ge 0\}`. UPGrad projects each :math:`u_i g_i` onto it and sums the
projections, so the update never conflicts with a task (to first order) and equals the
weighted mean :math:`\sum_i u_i g_i` where that does not conflict. Each projection is a
small quadratic program on the T x T Gram matrix, solved here by an exact active-set
method that jits. As an Optax transformation, :func:`upgrad_transformation`, with the
``per_loss_grads=`` convention of :mod:`yoto_jax.baselines.manipulation`, and as a
:class:`~yoto_jax.Weighting`, :func:`upgrad`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.baselines._gradients import (
    Coefficients,
    checked_gram,
    dot,
    gram_products,
    gram_transformation,
    manipulation_weighting,
    stateless,
    task_vector,
    task_vector_for,
)
from yoto_jax.weighting import Weighting

DEFAULT_NORM_EPS = 1e-4
"""TorchJD's ``norm_eps``: below this squared Frobenius norm of J, the Gram matrix is
taken as zero (and UPGrad is the weighted mean)."""

DEFAULT_REG_EPS = 1e-4
"""TorchJD's ``reg_eps``: added to the diagonal of the normalised Gram matrix."""


def _solve_positive_definite(matrix: jax.Array, rhs: jax.Array) -> jax.Array:
    """``matrix⁻¹ rhs`` by Gaussian elimination without pivoting (stable for symmetric
    positive definite matrices), in elementwise operations only: full precision on
    every backend, no solver library call inside the active-set loop. The loops over
    the static size T are Python loops, unrolled when traced: a loop nested in the
    active-set ``while_loop`` would cost a device-to-host copy of its predicate per
    trip on GPUs."""
    size = rhs.shape[0]
    upper, b = matrix, rhs
    for k in range(size - 1):
        factors = upper[k + 1 :, k] / upper[k, k]
        upper = upper.at[k + 1 :].add(-factors[:, None] * upper[k][None, :])
        b = b.at[k + 1 :].add(-factors * b[k])
    x = jnp.zeros_like(b)
    for k in reversed(range(size)):
        known = jnp.sum(upper[k, k + 1 :] * x[k + 1 :])
        x = x.at[k].set((b[k] - known) / upper[k, k])
    return x


def _max_iterations(size: int) -> int:
    """The active-set method's cap on iterations (one linear solve each). It takes about
    one per variable that ends up free, plus one to confirm (at most T + 2 on random,
    badly scaled and nearly parallel problems up to T = 16; the tests check 2T + 1); the
    cap only bounds a pathological case, which then returns its last, feasible, point."""
    return 4 * size + 16


def _nonnegative_qp(a: jax.Array, q: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""The x >= 0 minimising :math:`\frac12 x^\top A x + q^\top x`, A positive definite.

    Lawson and Hanson's active-set method (the NNLS algorithm, written on A and q rather
    than on a least-squares factor): from x = 0, free the variable whose partial
    derivative is most negative, solve for the free variables with the others at 0,
    and step back to the boundary while a free one would turn negative. Exact after a
    finite number of steps (no step size, no conditioning-dependent convergence rate);
    every iterate is feasible. One ``while_loop``; returns x and the iterations taken.
    """
    size = q.shape[0]
    dtype = a.dtype
    eye = jnp.eye(size, dtype=dtype)
    eps = jnp.finfo(dtype).eps
    scale = jnp.max(jnp.abs(a))

    def free_solution(free: jax.Array) -> jax.Array:
        system = jnp.where(free[:, None] & free[None, :], a, eye)
        return jnp.where(free, _solve_positive_definite(system, jnp.where(free, -q, 0.0)), 0.0)

    def body(carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        x, free, inner, iteration, _ = carry
        descent = -(dot(a, x) + q)
        tolerance = 16 * size * eps * (scale * jnp.max(jnp.abs(x)) + jnp.max(jnp.abs(q)))
        candidates = ~free & (descent > tolerance)
        finished = ~inner & ~jnp.any(candidates)
        entering = jnp.argmax(jnp.where(candidates, descent, -jnp.inf))
        free = jnp.where(~inner & ~finished, free.at[entering].set(True), free)
        solution = free_solution(free)
        feasible = jnp.all(jnp.where(free, solution > 0, True))
        blocking = free & (solution <= 0)
        gap = x - solution  # > 0 where blocking, unless x = solution = 0
        ratios = jnp.where(blocking, x / jnp.where(blocking & (gap > 0), gap, 1.0), jnp.inf)
        ratios = jnp.where(blocking & (gap <= 0), 0.0, ratios)
        leaving = jnp.argmin(ratios)
        moved = x + jnp.min(ratios) * (solution - x)
        moved = jnp.where(free & (moved > 0), moved, 0.0).at[leaving].set(0.0)
        new_x = jnp.where(finished, x, jnp.where(feasible, solution, moved))
        new_free = jnp.where(finished | feasible, free, free & (moved > 0))
        return new_x, new_free, ~finished & ~feasible, iteration + 1, finished

    def cond(carry: tuple[jax.Array, ...]) -> jax.Array:
        return ~carry[4] & (carry[3] < _max_iterations(size))

    start = (
        jnp.zeros((size,), dtype),
        jnp.zeros((size,), bool),
        jnp.zeros((), bool),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), bool),
    )
    x, _, _, iterations, _ = jax.lax.while_loop(cond, body, start)
    return x, iterations


def upgrad_weights(
    gram: ArrayLike,
    pref_vector: ArrayLike | None = None,
    norm_eps: float = DEFAULT_NORM_EPS,
    reg_eps: float = DEFAULT_REG_EPS,
) -> jax.Array:
    r"""UPGrad's weights w from the Gram matrix :math:`M = J J^\top`: the update is
    :math:`w^\top J`.

    With :math:`A = M / \operatorname{tr} M + ε_\text{reg} I` (:math:`A = ε_\text{reg} I`
    if :math:`\operatorname{tr} M < ε_\text{norm}`) and the preference vector u,

    .. math::
        w = \sum_i v^{(i)}, \qquad
        v^{(i)} = \operatorname*{argmin}_{v \ge u_i e_i} v^\top A v,

    :math:`J^\top v^{(i)}` being the projection of :math:`u_i g_i` onto the dual cone
    of the rows of J (the paper's Prop. 1). Each quadratic program is solved exactly by
    an active-set method (Lawson and Hanson) in :math:`x = v - u_i e_i \ge 0`, rescaled
    to :math:`y = D x` on :math:`D^{-1} A D^{-1}`, :math:`D = \operatorname{diag}
    \sqrt{A_{ii}}` (unit diagonal; the constraint :math:`y \ge 0` is unchanged): in
    float32 with T = 10 gradient norms spread from 1e-2 to 1e3, w is within 1e-5 of the
    float64 solution (relative to its largest entry), where eliminating on A itself was
    off by 12%.

    Args:
      gram: M, shape (T, T), symmetric positive semi-definite.
      pref_vector: u, shape (T,) (default: 1/T everywhere, the mean).
      norm_eps: :math:`ε_\text{norm} \ge 0`.
      reg_eps: :math:`ε_\text{reg} \ge 0`; with 0, the gradients must be linearly
        independent.

    Returns:
      w, shape (T,), nonnegative where u is.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import upgrad_weights
      >>> jacobian = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting
      >>> upgrad_weights(jacobian @ jacobian.T, reg_eps=0.0)
      Array([1.  , 0.75], dtype=float32)

    References:
      Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization", 2024,
      Prop. 1; TorchJD's ``UPGradWeighting``; Lawson and Hanson, "Solving Least
      Squares Problems", 1974, Ch. 23.
    """
    _checks.non_negative(norm_eps, "norm_eps")
    _checks.non_negative(reg_eps, "reg_eps")
    gram = checked_gram(gram)
    num_losses = gram.shape[0]
    pref = task_vector_for(
        task_vector(pref_vector, "pref_vector"),
        num_losses,
        1.0 / num_losses,
        "pref_vector",
        gram.dtype,
    )
    return _upgrad_solve(gram, pref, norm_eps, reg_eps)


@jax.jit  # one compiled program per shape, so eager calls do not retrace the active-set loop
def _upgrad_solve(gram: jax.Array, pref: jax.Array, norm_eps: Any, reg_eps: Any) -> jax.Array:
    """:func:`upgrad_weights` on a checked Gram matrix and preference vector."""
    num_losses = gram.shape[0]
    trace = jnp.trace(gram)
    small = trace < norm_eps
    normalized = jnp.where(small, 0.0, gram / jnp.where(small, 1.0, trace))
    a = normalized + reg_eps * jnp.eye(num_losses, dtype=gram.dtype)
    # Each program is solved for y = D x on D⁻¹AD⁻¹, D = diag(√A_ii): y >= 0 iff x >= 0, and
    # the unit diagonal takes the spread of the gradients' norms out of the conditioning.
    root = jnp.sqrt(jnp.diagonal(a))
    root = jnp.where(root > 0, root, 1.0)
    unit_diagonal = a / root[:, None] / root[None, :]

    def project(lower: jax.Array) -> jax.Array:
        return lower + _nonnegative_qp(unit_diagonal, dot(a, lower) / root)[0] / root

    return jnp.sum(jax.vmap(project)(jnp.diag(pref)), axis=0)


def upgrad_transformation(
    shared: Any,
    pref_vector: ArrayLike | None = None,
    norm_eps: float = DEFAULT_NORM_EPS,
    reg_eps: float = DEFAULT_REG_EPS,
) -> optax.GradientTransformationExtraArgs:
    r"""UPGrad: the sum of the projections of :math:`u_i g_i` onto the dual cone of the gradients.

    With J the (T, n) matrix of the shared per-loss gradients and
    :math:`π(x) = \operatorname*{argmin}_{y : J y \ge 0} \lVert y - x \rVert`,

    .. math::
        d = \sum_i π(u_i g_i) = J^\top w,

    w from the T x T Gram matrix (:func:`upgrad_weights`), on the shared parameters;
    the other leaves keep ``updates``, the sum of the task gradients. Since every
    :math:`π(u_i g_i)` lies in the dual cone, :math:`g_j \cdot d \ge 0` for every task
    (with ``reg_eps`` > 0, up to :math:`-ε_\text{reg} \operatorname{tr}(J J^\top) w_j`);
    where the weighted gradients conflict with no task, d is their sum
    :math:`\sum_i u_i g_i`. For T = 2 conflicting gradients and ``reg_eps=0``, d is
    half PCGrad's update.

    TorchJD's defaults: u = 1/T (the mean; LibMTL's ``UPGrad`` too), ``norm_eps`` =
    ``reg_eps`` = 1e-4, applied to :math:`J J^\top` normalised by its trace (so
    ``reg_eps`` is relative; ``norm_eps`` compares the trace itself: below it, d is the
    weighted mean). TorchJD solves each program with ``quadprog`` in float64 on the
    CPU; here an active-set method that jits solves it exactly (to the compute dtype's
    rounding), in float32 by default, on the device. The update is on the scale of the
    mean; ``pref_vector=jnp.ones(T)`` puts it on the scale of the sum (the other
    leaves'), and a primary-weighted u, e.g. ``[1.0, 0.1, 0.1]``, favours the primary.

    Args:
      shared: which leaves are shared: a bool tree like the params (or a prefix), or
        a callable returning one from a tree with the params' structure.
      pref_vector: u, shape (T,), primary first (default: 1/T; may be traced).
      norm_eps: the trace below which the Gram matrix counts as zero, >= 0.
      reg_eps: the ridge added to the normalised Gram matrix, >= 0 (0 requires
        linearly independent gradients).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with the ``update`` of
      :func:`~yoto_jax.baselines.pcgrad_transformation`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from yoto_jax.baselines import upgrad_transformation
      >>> per_loss_grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
      >>> grads = jax.tree.map(lambda g: g.sum(0), per_loss_grads)
      >>> tx = upgrad_transformation(shared=True, reg_eps=0.0)
      >>> tx.update(grads, tx.init(None), per_loss_grads=per_loss_grads)[0]["w"]
      Array([0.25, 0.75], dtype=float32)

    References:
      Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization", 2024;
      https://github.com/TorchJD/torchjd (``UPGrad``).
    """
    return gram_transformation(
        "upgrad_transformation", shared, _coefficients(pref_vector, norm_eps, reg_eps)
    )


def _coefficients(pref_vector: ArrayLike | None, norm_eps: float, reg_eps: float) -> Coefficients:
    """UPGrad's checked α from the Gram matrix."""
    _checks.non_negative(norm_eps, "norm_eps")
    _checks.non_negative(reg_eps, "reg_eps")
    pref_vector = task_vector(pref_vector, "pref_vector")
    return stateless(lambda matrix: upgrad_weights(matrix, pref_vector, norm_eps, reg_eps))


def upgrad(
    shared: Any,
    pref_vector: ArrayLike | None = None,
    norm_eps: float = DEFAULT_NORM_EPS,
    reg_eps: float = DEFAULT_REG_EPS,
    *,
    gramian: str = "jacobian",
) -> Weighting:
    r"""UPGrad as a :class:`~yoto_jax.Weighting`: :func:`upgrad_transformation` on each
    step's per-loss gradients.

    Deterministic (the step's key is ignored); no params, no arrays in the state; the
    weights are ones (UPGrad combines gradients, not losses; w is not reported).
    With a ``losses_fn`` from :func:`yoto_jax.representation_losses`, J is the
    Jacobian of the losses with respect to the representation z
    (:mod:`yoto_jax.representation`; TorchJD's ``mtl_backward(losses, features)``).
    Cost: one forward and T backward passes (``jax.jacrev``), the Gram matrix (T² n)
    and T quadratic programs of size T, vmapped: each takes about T + 2 active-set
    iterations of one T x T elimination, O(T⁴) flops per program, and a sequential
    depth of O(T²) small operations (latency, not work, for T up to a few dozen).

    Args:
      shared: which leaves of the model's params are shared: a bool tree like them
        (or a prefix), or a callable returning one from a tree of their structure.
      pref_vector: u, shape (T,), primary first (default: 1/T; may be traced).
      norm_eps: the trace below which the Gram matrix counts as zero, >= 0.
      reg_eps: the ridge added to the normalised Gram matrix, >= 0.
      gramian: ``"jacobian"`` (default) forms the T per-loss gradients;
        ``"products"`` forms only their Gram matrix, by a VJP and a JVP per loss in
        sequence, and the update by one VJP (less memory, more time;
        ``docs/representation.md``, "Gramians without the Jacobian").

    Returns:
      A :class:`~yoto_jax.Weighting`.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import upgrad
      >>> weighting = upgrad(shared=True)
      >>> params, state = weighting.init(2)
      >>> losses_fn = lambda w: jnp.stack([w[0], 3.0 * w[1]])  # no conflict: the mean
      >>> weighting.step(losses_fn, jnp.zeros(2), params, state).model_grads
      Array([0.5, 1.5], dtype=float32)

    References:
      Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization", 2024.
    """
    return manipulation_weighting(
        upgrad_transformation(shared, pref_vector, norm_eps, reg_eps),
        products=gram_products(gramian, shared, _coefficients(pref_vector, norm_eps, reg_eps)),
    )
