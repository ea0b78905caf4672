r"""Nash-MTL (Navon et al., ICML 2022): the tasks' gradients combined by a bargaining solution."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from yoto_jax import _checks
from yoto_jax.baselines._common import selected_leaves
from yoto_jax.baselines._gradients import (
    checked_gram,
    clip_shared_leaves,
    dot,
    gram,
    gram_products,
    linearized_losses,
    losses_vjp,
    per_loss_gradients,
    per_loss_leaves,
    require_shared,
    shared_matrix,
    weighted_leaves,
)
from yoto_jax.representation import RepresentationLosses, representation_gradients
from yoto_jax.weighting import Weighting, WeightingStep

DEFAULT_NASH_MTL_ITERATIONS = 20
"""The most Newton iterations of the solver per update (the reference's ``optim_niter``)."""

DEFAULT_NASH_MTL_MAX_NORM = 1.0
"""The global norm the shared parameters' gradient is clipped to (the reference's ``max_norm``)."""

_TOLERANCE = 1e-3  # accepted residual max_i |α_i (Mα)_i - 1| (the reference stops at 1e-3)


class NashMTLState(NamedTuple):
    """The weights α of the last update (applied until the next) and the steps taken."""

    alpha: jax.Array  # shape=(T,): α, ones before the first update
    count: jax.Array  # shape=(), int32: steps taken


def _split(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Dekker's split x = hi + lo, hi holding the upper half of the mantissa's bits."""
    bits = jnp.finfo(x.dtype).nmant + 1
    scaled = (2.0 ** ((bits + 1) // 2) + 1.0) * x
    hi = scaled - (scaled - x)
    return hi, x - hi


def _accurate_matvec(matrix: jax.Array, vector: jax.Array) -> jax.Array:
    """``matrix @ vector`` as if computed in twice the working precision, then rounded
    (Ogita, Rump and Oishi's Dot2: error-free products and sums, elementwise, so no
    backend may lower their precision). Nearly opposite gradients make Cβ a difference
    of close terms; computed plainly, its rounding alone left residuals of 3e-3 at the
    float32 solution."""
    products = matrix * vector[None, :]
    (m_hi, m_lo), (v_hi, v_lo) = _split(matrix), _split(vector[None, :])
    errors = m_lo * v_lo - (((products - m_hi * v_hi) - m_lo * v_hi) - m_hi * v_lo)
    total, error = products[:, 0], errors[:, 0]
    for j in range(1, matrix.shape[1]):
        new_total = total + products[:, j]
        part = new_total - total
        error = error + (total - (new_total - part)) + (products[:, j] - part) + errors[:, j]
        total = new_total
    return total + error


@functools.partial(jax.jit, static_argnames="iterations")  # eager calls reuse the program
def _solve(gram: jax.Array, iterations: int) -> tuple[jax.Array, jax.Array]:
    r"""α > 0 with :math:`α_i (Mα)_i = 1`, and whether the iteration converged to it.

    Damped Newton on :math:`f(β) = \frac12 β^\top C β - \sum_i \log β_i` with the
    correlation matrix :math:`C = D^{-1} M D^{-1}`, :math:`D = \operatorname{diag}
    \sqrt{M_{ii}}`, and α = D⁻¹β; see :func:`nash_mtl_weights`.
    """
    dtype = gram.dtype
    num_losses = gram.shape[0]
    tiny = jnp.finfo(dtype).tiny
    scale = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), tiny))
    corr = gram / scale[:, None] / scale[None, :]
    ones = jnp.ones((num_losses,), dtype)
    start = ones * jnp.sqrt(num_losses / jnp.maximum(dot(ones, dot(corr, ones)), tiny))
    # Stop once the Newton decrement is at rounding level: later steps would only jitter.
    stop = (16 * jnp.finfo(dtype).eps) ** 2 * num_losses

    def newton(carry: tuple[jax.Array, jax.Array, jax.Array]):
        beta, k, _ = carry
        grad = _accurate_matvec(corr, beta) - 1.0 / beta
        hessian = corr + jnp.diag(1.0 / beta**2)
        direction = jnp.linalg.solve(hessian, grad)
        decrement = dot(grad, direction)  # λ², the squared Newton decrement
        # The damped step (Nesterov): its Hessian norm is λ/(1+λ) < 1, so β stays > 0.
        beta = beta - direction / (1.0 + jnp.sqrt(jnp.maximum(decrement, 0.0)))
        return beta, k + 1, decrement

    def more(carry: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        _, k, decrement = carry
        return (k < iterations) & (decrement > stop)

    beta, _, _ = jax.lax.while_loop(
        more, newton, (start, jnp.zeros([], jnp.int32), jnp.full((), jnp.inf, dtype))
    )
    residual = jnp.max(jnp.abs(beta * _accurate_matvec(corr, beta) - 1.0))
    converged = jnp.all(jnp.isfinite(beta)) & jnp.all(beta > 0) & (residual <= _TOLERANCE)
    return beta / scale, converged


def nash_mtl_weights(
    gram: jax.Array,
    iterations: int = DEFAULT_NASH_MTL_ITERATIONS,
    fallback: jax.Array | None = None,
) -> jax.Array:
    r"""The Nash bargaining weights: the α > 0 with :math:`M α = 1/α`, :math:`M = G G^\top`.

    With the T task gradients :math:`g_i` (the rows of G) and :math:`d = \sum_i α_i
    g_i`, the equations say :math:`α_i\, g_i^\top d = 1` for every task: each task's
    share of the improvement :math:`\sum_i α_i g_i^\top d` is the same, and
    :math:`\lVert d \rVert^2 = T`. They are the stationarity conditions of

    .. math::
        f(α) = \tfrac12 α^\top M α - \sum_i \log α_i,

    strictly convex on α > 0, with a unique minimiser whenever one exists (it does
    not when no positive α balances the tasks: a task with a zero gradient, or
    gradients whose convex hull holds 0, a Pareto-stationary point). f is a convex
    quadratic plus a logarithmic barrier, so it is self-concordant: *damped Newton*,
    :math:`α \leftarrow α - H^{-1}\nabla f / (1 + λ)` with the Hessian
    :math:`H = M + \operatorname{diag}(1/α^2)` and the Newton decrement
    :math:`λ = \sqrt{\nabla f^\top H^{-1} \nabla f}`, stays in α > 0 without a line
    search, converges from any start and quadratically near the solution (Nesterov,
    *Introductory Lectures on Convex Optimization*, §4.1.5). Newton's method is
    affine invariant, so it runs on the correlation matrix
    :math:`C = D^{-1} M D^{-1}`, :math:`D = \operatorname{diag}\sqrt{M_{ii}}`, for
    β = Dα: the same iterates in exact arithmetic, and in floating point the scale of
    the gradients drops out (norms from 1e-2 to 1e3 solve like unit norms). The start
    is :math:`β = s \mathbf{1}` with :math:`s^2 = T / \mathbf{1}^\top C \mathbf{1}`,
    exact for orthogonal and for parallel gradients; each iteration is one T x T
    solve, stopping when λ reaches rounding level or after ``iterations``. In float32,
    random problems with T <= 12, their norms spread over 1e-2..1e3 or not, reached
    1e-5 relative accuracy within 8 iterations and nearly parallel gradients within 2
    (the tests compare with SciPy in float64), and nearly opposite gradients (two at
    an angle of π − 0.01) are within 1e-4 of float64, the gradient :math:`Cβ - 1/β`
    and the residual being computed with compensated products, as if in twice the
    precision (plainly rounded, Cβ left residuals of 3e-3 at the float32 solution,
    which then failed the residual test of ``fallback``); gradients that nearly cancel put the
    solution far away (a damped step at most doubles β) and may need more.

    The reference code reaches the same point by a sequence of convex programs
    (a convex-concave procedure, each solved by cvxpy's ECOS, at most
    ``optim_niter`` = 20 of them) on the Gram matrix normalised by its Frobenius
    norm. Where ECOS converges the two agree (to 1e-8 on random problems, checked
    with cvxpy 1.9); with norms spread over 1e-2..1e3 ECOS reported inaccurate
    solutions and the reference stopped far from the solution (residuals of 4).

    Args:
      gram: M, shape (T, T), symmetric positive semi-definite.
      iterations: the most Newton iterations, an int >= 1.
      fallback: returned, instead of the iterate, where the iteration did not
        converge: an iterate that is not finite and positive, or whose residual
        :math:`\max_i |α_i (Mα)_i - 1|` (computed with compensated products) exceeds
        :math:`10^{-3}`, which is the case wherever no positive solution exists.
        Default: ones (the reference's initial α). The reference has no such test:
        it returns the last iterate of its convex programs whatever its residual,
        and its previous α only where the first program fails.

    Returns:
      α, shape (T,).

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import nash_mtl_weights
      >>> grads = jnp.array([[2.0, 0.0], [0.0, 0.5]])  # orthogonal: α_i = 1/‖g_i‖
      >>> nash_mtl_weights(grads @ grads.T)
      Array([0.5, 2. ], dtype=float32)

    References:
      Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik and Fetaya, "Multi-Task
      Learning as a Bargaining Game", ICML 2022, Sec. 3;
      https://github.com/AvivNavon/nash-mtl (``methods/weight_methods.py``).
    """
    _checks.positive_int(iterations, "iterations")
    gram = checked_gram(gram)
    num_losses = gram.shape[0]
    if fallback is None:
        fallback = jnp.ones((num_losses,), gram.dtype)
    fallback = _checks.floating_array(fallback, "fallback")
    if fallback.shape != (num_losses,):
        raise ValueError(f"fallback must have shape ({num_losses},), got {fallback.shape}.")
    alpha, converged = _solve(gram, iterations)
    return jnp.where(converged, alpha, fallback.astype(gram.dtype))


def _next_alpha(matrix: jax.Array, previous: jax.Array, iterations: int) -> jax.Array:
    """The new α from the Gram matrix, or ``previous`` where the solver failed."""
    alpha, converged = _solve(matrix, iterations)
    return jnp.where(converged, alpha.astype(previous.dtype), previous)


def _hyperparameters(
    update_every: int, iterations: int, max_norm: Any, update_weights_every: Any, optim_niter: Any
) -> tuple[int, int]:
    """The checked (update_every, iterations), or their deprecated aliases if given."""
    update_every = _checks.renamed(
        update_every, 1, "update_every", update_weights_every, "update_weights_every"
    )
    iterations = _checks.renamed(
        iterations, DEFAULT_NASH_MTL_ITERATIONS, "iterations", optim_niter, "optim_niter"
    )
    _checks.non_negative(max_norm, "max_norm")
    return (
        _checks.positive_int(update_every, "update_every"),
        _checks.positive_int(iterations, "iterations"),
    )


def _init_state(num_losses: int) -> NashMTLState:
    return NashMTLState(alpha=jnp.ones((num_losses,), jnp.float32), count=jnp.zeros([], jnp.int32))


def nash_mtl_transformation(
    shared: Any,
    num_losses: int,
    *,
    update_every: int = 1,
    iterations: int = DEFAULT_NASH_MTL_ITERATIONS,
    max_norm: float = DEFAULT_NASH_MTL_MAX_NORM,
    update_weights_every: int | None = None,
    optim_niter: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Nash-MTL as an Optax transformation of the per-loss gradients.

    Every ``update_every`` steps (from the first), α is solved from the
    Gram matrix of the shared parameters' per-loss gradients
    (:func:`nash_mtl_weights`; where it fails, α keeps its previous value, ones at
    first); in between, the last α is reused. The update is
    :math:`\sum_i α_i g_i` on *every* leaf, the gradient of :math:`\sum_i α_i l_i`
    as the reference back-propagates it: the task-specific leaves get their task's
    gradient scaled by α_i (unlike :func:`pcgrad_transformation` and the other
    manipulation transformations, which keep ``updates``, the plain sum, there).
    Then, if ``max_norm`` > 0, the shared leaves are clipped to global norm
    ``max_norm`` as by torch's ``clip_grad_norm_`` (the task-specific ones are not).

    ``updates`` (the gradient of the summed loss) is only checked against
    ``per_loss_grads``; the caller computes the per-loss gradients at every step,
    also between updates (the :func:`nash_mtl` weighting skips them there).

    Args:
      shared: which leaves are shared: a bool tree like the params (or a prefix), or
        a callable returning one from a tree with the params' structure.
      num_losses: T, the number of losses (the state holds α).
      update_every: solve for α every this many steps, an int >= 1 (the reference's
        ``update_weights_every``, accepted as a deprecated alias).
      iterations: the most Newton iterations per solve, an int >= 1 (the reference's
        ``optim_niter``, accepted as a deprecated alias).
      max_norm: the shared leaves' clipping norm, >= 0 (0: no clipping; may be
        traced).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a :class:`NashMTLState`,
      whose ``update(updates, state, params=None, *, per_loss_grads)`` takes the
      per-loss gradients (leading axis T on every leaf).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from yoto_jax.baselines import nash_mtl_transformation
      >>> per_loss_grads = {"w": jnp.array([[2.0, 0.0], [0.0, 0.5]])}  # α = (1/2, 2)
      >>> grads = jax.tree.map(lambda g: g.sum(0), per_loss_grads)
      >>> tx = nash_mtl_transformation(shared=True, num_losses=2, max_norm=0.0)
      >>> updates, state = tx.update(grads, tx.init(None), per_loss_grads=per_loss_grads)
      >>> updates["w"], state.alpha
      (Array([1., 1.], dtype=float32), Array([0.5, 2. ], dtype=float32))

    References:
      Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022;
      https://github.com/AvivNavon/nash-mtl.
    """
    require_shared(shared)
    num_losses = _checks.positive_int(num_losses, "num_losses")
    update_every, iterations = _hyperparameters(
        update_every, iterations, max_norm, update_weights_every, optim_niter
    )

    def init_fn(params: optax.Params) -> NashMTLState:
        del params
        return _init_state(num_losses)

    def update_fn(updates, state: NashMTLState, params=None, *, per_loss_grads=None, **extra_args):
        del params, extra_args
        leaves, per_loss, treedef = per_loss_leaves(
            "nash_mtl_transformation", updates, per_loss_grads
        )
        if per_loss[0].shape[0] != num_losses:
            raise ValueError(
                f"per_loss_grads has {per_loss[0].shape[0]} gradients per leaf, expected "
                f"num_losses={num_losses}."
            )
        flags = selected_leaves(shared, updates)
        alpha = jax.lax.cond(
            state.count % update_every == 0,
            lambda: _next_alpha(gram(shared_matrix(per_loss, flags)), state.alpha, iterations),
            lambda: state.alpha,
        )
        out = [g.astype(leaf.dtype) for g, leaf in zip(weighted_leaves(alpha, per_loss), leaves)]
        out = clip_shared_leaves(out, flags, max_norm)
        new_state = NashMTLState(alpha=alpha, count=optax.safe_increment(state.count))
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def nash_mtl(
    shared: Any,
    *,
    update_every: int = 1,
    iterations: int = DEFAULT_NASH_MTL_ITERATIONS,
    max_norm: float = DEFAULT_NASH_MTL_MAX_NORM,
    update_weights_every: int | None = None,
    optim_niter: int | None = None,
    gramian: str = "jacobian",
) -> Weighting:
    r"""Nash-MTL: the update the tasks agree on as the Nash bargaining solution.

    With :math:`g_i` the gradient of loss i over the shared parameters (selected by
    ``shared``) and :math:`M = G G^\top` their Gram matrix, α > 0 solves
    :math:`M α = 1/α` (:func:`nash_mtl_weights`): the direction
    :math:`d = \sum_i α_i g_i` gives every task the same share,
    :math:`α_i g_i^\top d = 1`, the Nash bargaining solution among the directions
    of a small ball. The model's gradient is that of :math:`\sum_i α_i l_i` over all
    parameters, as in the reference (the task-specific heads get their task's
    gradient scaled by α_i); then, with ``max_norm`` > 0, the shared parameters'
    part is clipped to global norm ``max_norm`` (torch's ``clip_grad_norm_``,
    :math:`\times \min(1, \text{max\_norm} / (\lVert d \rVert + 10^{-6}))`), the
    heads' is not. Since :math:`\lVert d \rVert^2 = \sum_i α_i g_i^\top d = T`, with
    the default ``max_norm`` = 1 the shared update always has norm (about) 1 for
    T >= 2: Nash-MTL sets the direction, the clipping its length.

    α is solved every ``update_every`` steps, from the first; the steps in
    between reuse it (:class:`NashMTLState`). Where the solver fails (no finite
    positive iterate with residual :math:`\max_i |α_i (Mα)_i - 1| \le 10^{-3}`, as
    wherever no positive solution exists: a task whose shared gradient is zero, or
    gradients that cancel), α keeps its previous value, ones before the first
    success. The reference differs there: it keeps its previous α only where its
    first convex program fails, and otherwise takes the last iterate whatever its
    residual. ``result.weights`` and ``weights(params, state)`` are α, the
    weights of the losses (on the scale of :math:`1/\lVert g_i \rVert`).

    Cost: on an update step one forward and T backward passes (``jax.vjp`` of the
    loss vector, vmapped over the T unit cotangents, as ``jax.jacrev``) plus a
    T x T solve;
    between updates one forward and one backward pass (the weighted loss), the
    per-loss gradients skipped by a ``jax.lax.cond`` (under ``jax.vmap`` both
    branches run). With a ``losses_fn`` from :func:`yoto_jax.representation_losses`,
    α comes from the Gram matrix of the gradients with respect to the representation
    z (:mod:`yoto_jax.representation`), the model's gradient of :math:`\sum_i α_i l_i`
    one backward pass (clipped on the ``shared`` leaves).

    Defaults: ``update_every=1``, ``iterations=20``, ``max_norm=1.0``, as in
    both the authors' code and LibMTL (which agree here). Here ``iterations`` caps
    Newton iterations; in the reference it caps the convex programs of its
    convex-concave procedure, each a full ECOS solve (the same number, a different
    unit: 20 Newton iterations reach float32 accuracy on the problems above).

    Args:
      shared: which leaves of the model's params are shared: a bool tree like them
        (or a prefix), or a callable returning one from a tree of their structure.
      update_every: solve for α every this many steps, an int >= 1 (the reference's
        ``update_weights_every``, accepted as a deprecated alias).
      iterations: the most Newton iterations per solve, an int >= 1 (the reference's
        ``optim_niter``, accepted as a deprecated alias).
      max_norm: the shared gradient's clipping norm, >= 0 (0: no clipping; may be
        traced).
      gramian: ``"jacobian"`` (default) forms the T per-loss gradients;
        ``"products"`` forms only their Gram matrix, by a VJP and a JVP per loss in
        sequence, and the update by one VJP (less memory, more time;
        ``docs/representation.md``, "Gramians without the Jacobian").

    Returns:
      A :class:`~yoto_jax.Weighting` with no params and a :class:`NashMTLState`.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import nash_mtl
      >>> weighting = nash_mtl(shared=True, max_norm=0.0)
      >>> params, state = weighting.init(2)
      >>> losses_fn = lambda w: jnp.stack([2.0 * w[0], 0.5 * w[1]])  # orthogonal gradients
      >>> result = weighting.step(losses_fn, jnp.zeros(2), params, state)
      >>> result.weights, result.model_grads  # α_i = 1/‖g_i‖: d = (1, 1), ‖d‖² = T
      (Array([0.5, 2. ], dtype=float32), Array([1., 1.], dtype=float32))

    References:
      Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik and Fetaya, "Multi-Task
      Learning as a Bargaining Game", ICML 2022; https://github.com/AvivNavon/nash-mtl;
      LibMTL's ``Nash_MTL``.
    """
    require_shared(shared)
    update_every, iterations = _hyperparameters(
        update_every, iterations, max_norm, update_weights_every, optim_niter
    )

    def coefficients(matrix: jax.Array, previous: jax.Array) -> tuple[jax.Array, jax.Array]:
        alpha = _next_alpha(matrix, previous, iterations)
        return alpha, alpha

    products = gram_products(gramian, shared, coefficients)

    def init(num_losses: int) -> tuple[dict[str, jax.Array], NashMTLState]:
        return {}, _init_state(_checks.positive_int(num_losses, "num_losses"))

    def weights(params: dict[str, jax.Array], state: NashMTLState) -> jax.Array:
        return state.alpha

    def step(losses_fn, model_params, params, state: NashMTLState, *, key=None) -> WeightingStep:
        num_losses = state.alpha.shape[0]
        treedef = jax.tree.structure(model_params)
        flags = selected_leaves(shared, model_params)
        if products is not None:  # α from the Gram matrix by products
            linear = linearized_losses(losses_fn, model_params, num_losses, shared)
            losses = linear.losses

            def reuse(previous: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
                return previous, jax.tree.leaves(linear.apply(previous))

            def solve(previous: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
                return reuse(products.coefficients(linear.gram(), previous)[0])

        elif isinstance(losses_fn, RepresentationLosses):  # α from the gradients of z
            rep = representation_gradients(losses_fn, model_params, num_losses)
            losses, rows = rep.losses, jax.tree.leaves(rep.per_loss)

            def reuse(previous: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
                return previous, jax.tree.leaves(rep.weighted_gradient(previous))

            def solve(previous: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
                matrix = gram(shared_matrix(rows, [True] * len(rows)))
                return reuse(_next_alpha(matrix, previous, iterations))

        else:
            losses, vjp_fn = losses_vjp(losses_fn, model_params, num_losses)

            def solve(previous: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
                per_loss = jax.tree.leaves(per_loss_gradients(vjp_fn, losses))
                alpha = _next_alpha(gram(shared_matrix(per_loss, flags)), previous, iterations)
                return alpha, weighted_leaves(alpha, per_loss)

            def reuse(previous: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
                (grads,) = vjp_fn(previous.astype(losses.dtype))
                return previous, jax.tree.leaves(grads)

        if update_every == 1:
            alpha, grads = solve(state.alpha)
        else:
            alpha, grads = jax.lax.cond(state.count % update_every == 0, solve, reuse, state.alpha)
        model_grads = jax.tree.unflatten(treedef, clip_shared_leaves(grads, flags, max_norm))
        new_state = NashMTLState(alpha=alpha, count=optax.safe_increment(state.count))
        return WeightingStep(jax.lax.stop_gradient(losses), alpha, model_grads, {}, new_state)

    return Weighting(init, step, weights=weights)
