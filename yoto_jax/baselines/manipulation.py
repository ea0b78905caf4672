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
  the per-loss gradients (one forward and T backward passes, as ``jax.jacrev``) and applies the
  transformation. The weights they report are ones: there are no loss weights.
  Given a ``losses_fn`` from :func:`yoto_jax.representation_losses`, they combine the
  per-loss gradients of the shared representation instead (representation mode, one
  backward pass through the trunk; :mod:`yoto_jax.representation`).

Every product of gradients (the Gram matrix, PCGrad's dot products, the solvers'
products and the combinations Σ αᵢ gᵢ) runs at ``jax.lax.Precision.HIGHEST``, not in the
TF32 that GPUs default to for float32 matmuls (see
:mod:`yoto_jax.baselines._gradients`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from yoto_jax import _checks
from yoto_jax.baselines import _simplex
from yoto_jax.baselines._common import prng_key
from yoto_jax.baselines._gradients import (
    Coefficients,
    Combine,
    dot,
    gram,
    gram_products,
    gram_transformation,
    manipulation_transformation,
    manipulation_weighting,
    stateless,
)
from yoto_jax.weighting import Weighting, require_key

DEFAULT_SOLVER_ITERATIONS = 250
"""The most steps of the simplex solvers of MGDA and CAGrad (MGDA's reference MAX_ITER);
they stop earlier once converged."""

DEFAULT_CAGRAD_C = 0.5
"""CAGrad's conflict-averse radius c (LibMTL's default ``calpha``)."""


class PCGradState(NamedTuple):
    """The PRNG key of the next step's random task orders."""

    key: jax.Array


def _pcgrad_coefficients(matrix: jax.Array, state: PCGradState) -> tuple[jax.Array, PCGradState]:
    """PCGrad on the Gram matrix M: each projected gradient is a combination Σ_k c_k g_k
    of the rows, so its products with the rows are c·M[:, j]; the update is Σ_i g_i', the
    rows combined by the sum of the final coefficients, returned. No (T, n) temporaries
    besides G and its Gram matrix."""
    num_losses = matrix.shape[0]
    next_key, order_key = jax.random.split(state.key)
    squared_norms = jnp.diagonal(matrix)
    eye = jnp.eye(num_losses, dtype=matrix.dtype)

    def project(i: jax.Array, key: jax.Array) -> jax.Array:
        def against(c: jax.Array, j: jax.Array) -> tuple[jax.Array, None]:
            product = dot(c, matrix[:, j])  # g_i' · g_j
            conflict = (j != i) & (product < 0) & (squared_norms[j] > 0)
            scale = jnp.where(conflict, product / jnp.where(conflict, squared_norms[j], 1.0), 0.0)
            return c - scale * eye[j], None

        return jax.lax.scan(against, eye[i], jax.random.permutation(key, num_losses))[0]

    keys = jax.random.split(order_key, num_losses)
    coefficients = jax.vmap(project)(jnp.arange(num_losses), keys)
    return jnp.sum(coefficients, axis=0), PCGradState(next_key)


def pcgrad_transformation(
    shared: Any, seed: int | jax.Array = 0
) -> optax.GradientTransformationExtraArgs:
    r"""PCGrad: project each task's gradient off the gradients it conflicts with, then sum.

    For each task i, starting from :math:`g_i' = g_i`, for every other task j in a
    random order: if :math:`g_i' \cdot g_j < 0`, then
    :math:`g_i' \leftarrow g_i' - \frac{g_i' \cdot g_j}{\lVert g_j \rVert^2} g_j`.
    The update of the shared parameters is :math:`\sum_i g_i'`; the other leaves keep
    ``updates``, the sum :math:`\sum_i g_i`.

    Every :math:`g_i'` is a combination of the rows of G, so the projections are
    computed on the coefficients and the T x T Gram matrix (:math:`g_i' \cdot g_j`
    from it), and G meets only the final sum: no T copies of the gradients in memory.
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
    return gram_transformation(
        "pcgrad_transformation", shared, _pcgrad_coefficients, lambda: PCGradState(key)
    )


def pcgrad(shared: Any, *, gramian: str = "jacobian") -> Weighting:
    r"""PCGrad as a :class:`~yoto_jax.Weighting`: :func:`pcgrad_transformation` on
    each step's per-loss gradients.

    The random task orders come from the step's ``key`` (required: one new key per
    step). The weighting has no params and no arrays in its state; its weights are
    ones (PCGrad combines gradients, not losses).

    Args:
      shared: which leaves of the model's params are shared: a bool tree like them
        (or a prefix), or a callable returning one from a tree of their structure.
      gramian: ``"jacobian"`` (default) forms the T per-loss gradients;
        ``"products"`` forms only their Gram matrix, by a VJP and a JVP per loss in
        sequence, and the update by one VJP (less memory, more time;
        ``docs/representation.md``, "Gramians without the Jacobian").

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
    return manipulation_weighting(
        pcgrad_transformation(shared),
        lambda key: PCGradState(require_key(key, "PCGrad")),
        gram_products(gramian, shared, _pcgrad_coefficients),
    )


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
    return _min_norm_alpha(gram, _checks.positive_int(iterations, "iterations"))


@functools.partial(jax.jit, static_argnames="iterations")  # eager calls reuse the program
def _min_norm_alpha(gram: jax.Array, iterations: int) -> jax.Array:
    return _simplex.min_norm_solve(gram, iterations).alpha


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
      An ``optax.GradientTransformationExtraArgs`` with the ``update`` of
      :func:`~yoto_jax.baselines.pcgrad_transformation`.

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
    return gram_transformation("mgda_transformation", shared, _mgda_coefficients(iterations))


def _mgda_coefficients(iterations: int) -> Coefficients:
    return stateless(lambda matrix: min_norm_weights(matrix, iterations))


def mgda(
    shared: Any, iterations: int = DEFAULT_SOLVER_ITERATIONS, *, gramian: str = "jacobian"
) -> Weighting:
    r"""MGDA as a :class:`~yoto_jax.Weighting`: :func:`mgda_transformation` on each
    step's per-loss gradients.

    Deterministic (the step's key is ignored); no params, no arrays in the state; the
    weights are ones (MGDA combines gradients, not losses).

    Args:
      shared: which leaves of the model's params are shared: a bool tree like them
        (or a prefix), or a callable returning one from a tree of their structure.
      iterations: the most solver steps, an int >= 1.
      gramian: ``"jacobian"`` (default) forms the T per-loss gradients;
        ``"products"`` forms only their Gram matrix, by a VJP and a JVP per loss in
        sequence, and the update by one VJP (less memory, more time;
        ``docs/representation.md``, "Gramians without the Jacobian").

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
    return manipulation_weighting(
        mgda_transformation(shared, iterations),
        products=gram_products(gramian, shared, _mgda_coefficients(iterations)),
    )


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
      An ``optax.GradientTransformationExtraArgs`` with the ``update`` of
      :func:`~yoto_jax.baselines.pcgrad_transformation`.

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
    combine, _ = _cagrad_forms(c, rescale, iterations, scale_to_sum)
    return manipulation_transformation("cagrad_transformation", shared, optax.EmptyState, combine)


def _cagrad_forms(
    c: Any, rescale: bool, iterations: int, scale_to_sum: bool
) -> tuple[Combine, Coefficients]:
    r"""CAGrad's combination of G, and its α from the Gram matrix alone
    (``gramian="products"``): both give :math:`d = G^\top α` with
    :math:`α = \mathbf 1 / T + \sqrt{φ}\, w / \lVert g_w \rVert`, scaled alike; the
    combination takes :math:`\lVert g_w \rVert` from :math:`g_w = G^\top w`, the
    products form from :math:`\lVert g_w \rVert^2 = w^\top A w`."""

    def weights(matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
        radius = c * jnp.sqrt(jnp.mean(matrix) + 1e-8) + 1e-8
        return radius, _cagrad_solve(matrix, radius, iterations).alpha

    def scaled(direction: jax.Array, num_losses: int) -> jax.Array:
        if rescale:
            direction = direction / (1.0 + c**2)
        if scale_to_sum:
            direction = direction * num_losses
        return direction

    def alpha(w: jax.Array, radius: jax.Array, norm: jax.Array) -> jax.Array:
        return scaled(1.0 / w.shape[0] + radius / (norm + 1e-8) * w, w.shape[0])

    def combine(grads: jax.Array, state: optax.EmptyState):
        # d = αᵀG as one product: a mean over G's rows (axis 0) is an order of magnitude
        # slower than a product on XLA:CPU for wide G (T = 10, n = 65 536: 3 ms against 0.1)
        radius, w = weights(gram(grads))
        return dot(alpha(w, radius, jnp.linalg.norm(dot(w, grads))), grads), state

    def coefficients(matrix: jax.Array, state: optax.EmptyState):
        radius, w = weights(matrix)
        return alpha(w, radius, jnp.sqrt(jnp.maximum(dot(w, dot(matrix, w)), 0.0))), state

    return combine, coefficients


def _cagrad_solve(
    matrix: jax.Array, radius: jax.Array, iterations: int
) -> _simplex.SimplexSolution:
    r"""CAGrad's w: the minimiser over the simplex of :math:`g_w^\top g_0 + \sqrt{φ}\,
    \sqrt{w^\top A w + 10^{-8}}` (:math:`g_w^\top g_0 = w^\top A \mathbf 1 / T`, A =
    ``matrix``), from uniform weights, with the solver's step and trip counts."""
    num_losses = matrix.shape[0]
    uniform = jnp.full((num_losses,), 1.0 / num_losses, matrix.dtype)
    pull = dot(matrix, uniform)  # A 1/T, the gradient of g_wᵀg_0 in w

    def value(w: jax.Array) -> jax.Array:
        return dot(w, pull) + radius * jnp.sqrt(dot(w, dot(matrix, w)) + 1e-8)

    def grad(w: jax.Array) -> jax.Array:
        matrix_w = dot(matrix, w)
        return pull + radius * matrix_w / jnp.sqrt(dot(w, matrix_w) + 1e-8)

    scale = jnp.maximum(jnp.trace(matrix), jnp.finfo(matrix.dtype).tiny)
    curvature = _simplex.tangent_curvature(matrix)
    return _simplex.minimise_on_simplex(value, grad, curvature, scale, uniform, iterations)


def cagrad(
    shared: Any,
    c: float = DEFAULT_CAGRAD_C,
    rescale: bool = True,
    iterations: int = DEFAULT_SOLVER_ITERATIONS,
    scale_to_sum: bool = False,
    *,
    gramian: str = "jacobian",
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
      gramian: ``"jacobian"`` (default) forms the T per-loss gradients;
        ``"products"`` forms only their Gram matrix, by a VJP and a JVP per loss in
        sequence, and the update by one VJP (less memory, more time;
        ``docs/representation.md``, "Gramians without the Jacobian").

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
    _, coefficients = _cagrad_forms(c, rescale, iterations, scale_to_sum)
    return manipulation_weighting(
        transformation, products=gram_products(gramian, shared, coefficients)
    )
