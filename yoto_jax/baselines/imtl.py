r"""Impartial Multi-task Learning (IMTL, Liu et al., ICLR 2021): gradient and loss balance.

IMTL has two parts, usable alone or together (the paper's full method, the hybrid):

* **IMTL-G** (gradient balance) combines the T per-loss gradients of the shared
  parameters as :math:`d = \sum_i α_i g_i` with :math:`\sum_i α_i = 1`, α chosen in
  closed form so that d has the same projection onto every task's unit gradient
  :math:`u_i = g_i / \lVert g_i \rVert`: no task is favoured by the direction of the
  update. It is :func:`imtl_transformation`, an Optax transformation with the
  ``per_loss_grads=`` convention of :mod:`yoto_jax.baselines.manipulation`.
* **IMTL-L** (loss balance) learns one scale :math:`s_i` per loss and trains on the
  scaled losses :math:`e^{s_i} l_i - s_i` (:func:`imtl_scaled_losses`), with s
  trained by the model's optimizer: at the optimum :math:`e^{s_i} l_i = 1`, so every
  scaled loss stays near 1.

:func:`imtl` is the :class:`~yoto_jax.Weighting` of either part or of both.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.baselines._gradients import (
    checked_gram,
    dot,
    gram_products,
    manipulated_gradients,
    manipulation_transformation,
    manipulation_weighting,
    stateless,
)
from yoto_jax.weighting import Weighting, WeightingStep, loss_vector, objective_weighting

IMTL_KEY = "imtl_log_scale"
"""The name of IMTL-L's log-scales s in the weighting's params."""

MODES = ("hybrid", "gradient", "loss")
"""The modes of :func:`imtl`: both parts (the paper's IMTL), IMTL-G alone, IMTL-L alone."""


def imtl_g_weights(gram: ArrayLike) -> jax.Array:
    r"""IMTL-G's α from the Gram matrix :math:`M = G G^\top` of the task gradients.

    IMTL-G asks for :math:`d = G^\top α` with :math:`\sum_i α_i = 1` and the same
    projection :math:`p = d \cdot u_i` on every unit gradient
    :math:`u_i = g_i / \lVert g_i \rVert`; the paper's closed form is
    :math:`α_{2:T} = g_1 U^\top (D U^\top)^{-1}`, :math:`α_1 = 1 - \sum_{t \ge 2} α_t`
    (D the differences :math:`g_1 - g_t`, U those of the unit gradients). With
    :math:`β_i = α_i \lVert g_i \rVert` (rescaled to sum to 1) and the halved squared
    distances :math:`E_{ij} = \tfrac12 \lVert u_i - u_j \rVert^2 = 1 - \cos(g_i, g_j)`,
    the conditions read

    .. math::
        E β = q \mathbf 1, \qquad \mathbf 1^\top β = 1, \qquad
        α = \frac{N^{-1} β}{\mathbf 1^\top N^{-1} β},

    a (T + 1)-square linear system in (β, q), solved through its SVD with the
    singular values below :math:`(T + 1) ε σ_{\max}` dropped (E scaled to a largest
    entry of 1 first). This is the paper's α wherever its formula is defined, and it
    stays well conditioned where the paper's and the cosine matrix's inverse are not:
    nearly opposite gradients (:math:`1 + \cos` vanishes, E does not) and, given the
    gradients themselves (:func:`imtl_g_weights_from_gradients`, which computes E from
    the differences of the unit vectors), nearly parallel ones. From the Gram matrix,
    E's entries near 0 carry the cancellation of :math:`1 - \cos`: prefer the
    gradients when you have them. Where the formula is not defined:

    * a task whose gradient is zero gets α = 0 and the others are balanced among
      themselves (the paper's formula divides by its zero norm);
    * where no update has equal nonzero projections (opposite parallel gradients,
      T > the number of shared parameters) the solution is the limit of nearby
      problems, whose update is d = 0;
    * parallel gradients of one direction share their part: for T = 2,
      :math:`α \propto 1 / n`, the limit of the closed form as the angle closes;
    * if :math:`\mathbf 1^\top N^{-1} β` vanishes (to rounding), α = 0 (as TorchJD).

    α may have negative entries, and p may be negative (then d raises every loss to
    first order): the paper's closed form, kept as published.

    Args:
      gram: M, shape (T, T), symmetric positive semi-definite.

    Returns:
      α, shape (T,), summing to 1 (or zeros, see above).

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines.imtl import imtl_g_weights
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 3.0]])  # orthogonal: α = (n₂, n₁) / (n₁ + n₂)
      >>> imtl_g_weights(grads @ grads.T).round(6)
      Array([0.75, 0.25], dtype=float32)

    References:
      Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, "Towards Impartial Multi-task
      Learning", ICLR 2021, Alg. 1; Quinton and Rey, "Jacobian Descent for
      Multi-Objective Optimization", 2024 (TorchJD's ``IMTLG``, a pseudo-inverse).
    """
    gram = checked_gram(gram)
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    inverse_norms = _inverse(norms)
    cosines = gram * inverse_norms[:, None] * inverse_norms[None, :]
    signs = _signs(cosines[jnp.argmax(norms > 0)])
    aligned = cosines * signs[:, None] * signs[None, :]
    return _balanced_weights(jnp.clip(1.0 - aligned, 0.0, 2.0), norms, signs)


def imtl_g_weights_from_gradients(grads: ArrayLike) -> jax.Array:
    r"""IMTL-G's α (:func:`imtl_g_weights`) from the task gradients themselves.

    The same α, with the distances :math:`E_{ij} = \tfrac12 \lVert u_i - u_j \rVert^2`
    computed from the differences of the unit gradients (one row at a time, so memory
    stays T x n) rather than as :math:`1 - \cos`: exact to rounding for nearly parallel
    gradients too. :func:`imtl_transformation` uses it.

    Args:
      grads: G, shape (T, n), one gradient per row.

    Returns:
      α, shape (T,), summing to 1 (or zeros, see :func:`imtl_g_weights`).

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines.imtl import imtl_g_weights_from_gradients
      >>> imtl_g_weights_from_gradients(jnp.array([[1.0, 0.0], [0.0, 3.0]])).round(6)
      Array([0.75, 0.25], dtype=float32)
    """
    grads = _checks.floating_array(grads, "grads")
    if grads.ndim != 2 or grads.shape[0] < 1:
        raise ValueError(f"grads must be a (T, n) matrix, one row per task, got {grads.shape}.")
    grads = grads.astype(_checks.compute_dtype(grads))
    norms = jnp.sqrt(jnp.sum(grads * grads, axis=1))
    units = grads * _inverse(norms)[:, None]
    signs = _signs(dot(units, units[jnp.argmax(norms > 0)]))
    units = units * signs[:, None]
    distances = jax.lax.map(lambda unit: 0.5 * jnp.sum((units - unit) ** 2, axis=1), units)
    return _balanced_weights(distances, norms, signs)


def _inverse(norms: jax.Array) -> jax.Array:
    """1 / n where n > 0, else 0."""
    nonzero = norms > 0
    return jnp.where(nonzero, 1.0 / jnp.where(nonzero, norms, 1.0), 0.0)


def _balanced_weights(distances: jax.Array, norms: jax.Array, signs: jax.Array) -> jax.Array:
    """α from the halved squared distances E of the sign-aligned unit gradients
    :math:`s_i u_i`, the norms and the signs s (each ±1)."""
    num_losses = norms.shape[0]
    dtype = distances.dtype
    eps = jnp.finfo(dtype).eps
    nonzero = norms > 0
    both = nonzero[:, None] & nonzero[None, :]
    largest = jnp.max(jnp.where(both, distances, 0.0))
    scale = jnp.where(largest > 0, largest, 1.0)
    scaled = jnp.where(both, distances / scale, 0.0)
    # A task with a zero gradient gets the equation γ_i = 0 and leaves the others.
    block = jnp.where(jnp.eye(num_losses, dtype=bool) & ~nonzero[:, None], 1.0, scaled)
    signs = jnp.where(nonzero, signs, 0.0).astype(dtype)
    plus, minus = (signs > 0).astype(dtype), (signs < 0).astype(dtype)
    # With γ = Sβ, a = 1ᵀγ and E scaled to a largest entry of 1: Eγ = q₊ on the tasks of
    # sign +1 and q₋ on those of sign -1 (q± = (a ∓ p) / scale), a = scale (q₊ + q₋) / 2
    # (q₋ = 0 when every sign is +1) and sᵀγ = 1 (Σβ = 1).
    zero = jnp.zeros((1, 1), dtype)
    if_minus = jnp.any(minus > 0)
    half = jnp.where(if_minus, -0.5 * scale, 0.0)[None, None]
    relation = jnp.where(if_minus, nonzero.astype(dtype), 0.0)[None, :]
    system = jnp.block(
        [
            [block, -plus[:, None], -minus[:, None]],
            [relation, half, jnp.where(if_minus, half, 1.0)],
            [signs[None, :], zero, zero],
        ]
    )
    left, singular_values, right = jnp.linalg.svd(system)
    keep = singular_values > (num_losses + 2) * eps * singular_values[0]
    inverse = jnp.where(keep, 1.0 / jnp.where(keep, singular_values, 1.0), 0.0)
    solution = dot(right.T, inverse * left[-1])  # the system's pseudo-inverse times e_{T+2}
    v = _inverse(norms) * signs * solution[:num_losses]
    total = jnp.sum(v)
    vanishing = jnp.abs(total) <= num_losses * eps * jnp.sum(jnp.abs(v))
    return jnp.where(vanishing, 0.0, v / jnp.where(vanishing, 1.0, total))


def _signs(cosines_to_first: jax.Array) -> jax.Array:
    """s_i = ±1 so that s_i u_i leans toward the first nonzero gradient."""
    return jnp.where(cosines_to_first < 0, -1.0, 1.0)


def imtl_transformation(shared: Any) -> optax.GradientTransformationExtraArgs:
    r"""IMTL-G: the combination of the task gradients with equal projections on every task.

    .. math::
        d = \sum_i α_i g_i, \qquad \sum_i α_i = 1, \qquad
        d \cdot \frac{g_i}{\lVert g_i \rVert} = d \cdot \frac{g_j}{\lVert g_j \rVert}
        \ \ \forall i, j,

    on the shared parameters, with α in closed form (:func:`imtl_g_weights_from_gradients`); the
    other leaves keep ``updates``, the sum of the task gradients (LibMTL's task heads
    get their own loss's gradient). For T = 2, :math:`α = (n_2, n_1) / (n_1 + n_2)`
    and d bisects the two gradients. The direction does not depend on the losses'
    scales (scaling :math:`g_i` by :math:`c_i > 0` leaves the unit gradients, hence
    d's direction, unchanged; only its length moves with the normalisation
    :math:`\sum α = 1`).

    The gradients are those of the shared *parameters*, as in LibMTL (its default
    ``rep_grad=False``) and the Aligned-MTL authors' code; the paper takes them with
    respect to the shared feature z, a cheaper approximation.

    Args:
      shared: which leaves are shared: a bool tree like the params (or a prefix), or
        a callable returning one from a tree with the params' structure.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with the ``update`` of
      :func:`~yoto_jax.baselines.pcgrad_transformation`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from yoto_jax.baselines import imtl_transformation
      >>> per_loss_grads = {"w": jnp.array([[1.0, 0.0], [0.0, 3.0]])}
      >>> grads = jax.tree.map(lambda g: g.sum(0), per_loss_grads)
      >>> tx = imtl_transformation(shared=True)
      >>> tx.update(grads, tx.init(None), per_loss_grads=per_loss_grads)[0]["w"].round(6)
      Array([0.75, 0.75], dtype=float32)

    References:
      Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, Sec. 3.2 and
      Alg. 1; LibMTL's ``IMTL``.
    """

    def combine(grads: jax.Array, state: optax.EmptyState):
        return dot(imtl_g_weights_from_gradients(grads), grads), state

    return manipulation_transformation("imtl_transformation", shared, optax.EmptyState, combine)


def imtl_scaled_losses(log_scales: ArrayLike, losses: ArrayLike) -> jax.Array:
    r"""IMTL-L's scaled losses :math:`e^{s_i} l_i - s_i`, one per task.

    .. math::
        \frac{\partial}{\partial s_i}\big(e^{s_i} l_i - s_i\big) = e^{s_i} l_i - 1,

    so s descends to :math:`s_i = -\log l_i`, where the scaled loss's task term is 1.
    Differentiate their sum for the model's and s's gradients (IMTL-L alone), or take
    their per-loss gradients for :func:`imtl_transformation` (the hybrid). A loss
    must be positive for its optimum to exist.

    Args:
      log_scales: s, shape (T,).
      losses: the scalar losses, shape (T,).

    Returns:
      The (T,) scaled losses, float32 or wider.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import imtl_scaled_losses
      >>> imtl_scaled_losses(jnp.array([0.0, -1.0]), jnp.array([2.0, 1.0])).round(5)  # (2, e⁻¹ + 1)
      Array([2.     , 1.36788], dtype=float32)

    References:
      Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, Sec. 3.3 (the
      base e, as in LibMTL).
    """
    losses = loss_vector(losses)
    log_scales = loss_vector(log_scales, losses.shape[0], what="log_scales")
    dtype = _checks.compute_dtype(log_scales, losses)
    log_scales, losses = log_scales.astype(dtype), losses.astype(dtype)
    return jnp.exp(log_scales) * losses - log_scales


def imtl(
    shared: Any, *, mode: str = "hybrid", log_scale_init: float = 0.0, gramian: str = "jacobian"
) -> Weighting:
    r"""IMTL as a :class:`~yoto_jax.Weighting`: gradient balance, loss balance, or both.

    ``mode`` picks the part (the paper's Alg. 1 is the hybrid):

    * ``"hybrid"`` (default; the paper's IMTL and LibMTL's ``IMTL``): the losses are
      scaled, :math:`L_i = e^{s_i} l_i - s_i`; the shared parameters get IMTL-G's
      combination of the scaled losses' gradients :math:`e^{s_i} g_i`
      (:func:`imtl_transformation`), every other leaf the sum
      :math:`\sum_i e^{s_i} \nabla l_i` (each task head its own scaled loss's
      gradient), and s the gradient :math:`e^{s_i} l_i - 1`. Since IMTL-G's direction
      ignores the losses' scales, the learnt scales set the shared update's length and
      the heads' gradients, and IMTL-G the shared update's direction. Cost: one
      forward and T backward passes (``jax.jacrev``).
    * ``"gradient"`` (IMTL-G alone): the raw losses' gradients combined by
      :func:`imtl_transformation`; no params. Cost: as the hybrid.
    * ``"loss"`` (IMTL-L alone): the model and s descend :math:`\sum_i e^{s_i} l_i - s_i`
      (:func:`imtl_scaled_losses`). Cost: one forward and one backward pass; ``shared``
      is not used (pass None).

    s is a param, ``{"imtl_log_scale": s}`` from ``log_scale_init`` (0, as LibMTL and
    the paper: the scaled losses start as the raw ones), trained by the model's
    optimizer from ``result.grads`` (``weighting.optimizer(tx)`` is ``tx``). Keep it
    out of weight decay. The weights (``result.weights`` and ``weights(params,
    state)``) are the loss weights :math:`e^{s}` in the hybrid and loss modes, and
    ones for IMTL-G alone (it combines gradients, not losses; α is not reported).

    Args:
      shared: which leaves of the model's params are shared: a bool tree like them
        (or a prefix), or a callable returning one from a tree of their structure.
        Not used (may be None) with ``mode="loss"``.
      mode: ``"hybrid"``, ``"gradient"`` or ``"loss"``.
      log_scale_init: the initial value of every s_i, a finite number (may be traced).
      gramian: ``"jacobian"`` (default) forms the T per-loss gradients;
        ``"products"`` forms only their Gram matrix, by a VJP and a JVP per loss in
        sequence, α by :func:`imtl_g_weights`, and the update by one VJP (less memory, more
        time; ``docs/representation.md``, "Gramians without the Jacobian").
        Only for the modes with IMTL-G.

    Returns:
      A :class:`~yoto_jax.Weighting`; with params ``{"imtl_log_scale": s}`` unless
      ``mode="gradient"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import imtl
      >>> weighting = imtl(shared=True)
      >>> params, state = weighting.init(2)
      >>> losses_fn = lambda w: jnp.stack([w[0] + 1.0, 3.0 * w[1] + 2.0])
      >>> result = weighting.step(losses_fn, jnp.zeros(2), params, state)
      >>> result.model_grads.round(6)  # gradients e₀ and 3e₁: α = (3/4, 1/4)
      Array([0.75, 0.75], dtype=float32)
      >>> result.grads  # e^s l − 1 at s = 0
      {'imtl_log_scale': Array([0., 1.], dtype=float32)}

    References:
      Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, "Towards Impartial Multi-task
      Learning", ICLR 2021, Alg. 1; LibMTL's ``IMTL``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    value = _checks.concrete_float(log_scale_init)
    if value is not None and not math.isfinite(value):
        raise ValueError(f"log_scale_init must be a finite number, got {value}.")
    if mode != "loss" and shared is None:
        raise TypeError(
            f"shared must select the shared parameters (a bool tree or a callable) for "
            f"mode={mode!r}; only mode='loss' goes without."
        )
    if mode == "loss" and gramian != "jacobian":
        raise ValueError(
            f"gramian={gramian!r} is for IMTL-G's combination of the per-loss gradients; "
            "mode='loss' (IMTL-L) takes none: leave gramian at 'jacobian'."
        )
    products = gram_products(gramian, shared, stateless(imtl_g_weights))
    if mode == "gradient":
        return manipulation_weighting(imtl_transformation(shared), products=products)

    def init(num_losses: int) -> tuple[dict[str, jax.Array], tuple]:
        num_losses = _checks.positive_int(num_losses, "num_losses")
        return {IMTL_KEY: jnp.full((num_losses,), log_scale_init, jnp.float32)}, ()

    def weights(params: dict[str, jax.Array], state: tuple) -> jax.Array:
        return jnp.exp(loss_vector(params[IMTL_KEY], what="log_scales"))

    if mode == "loss":

        def applied(params, state, losses, key) -> jax.Array:
            return weights(params, state)

        def objective(params, state, losses, key) -> jax.Array:
            return jnp.sum(imtl_scaled_losses(params[IMTL_KEY], losses))

        return objective_weighting(init, objective, applied, weights)

    transformation = imtl_transformation(shared)

    def step(losses_fn, model_params, params, state: tuple, *, key=None) -> WeightingStep:
        log_scales = loss_vector(params[IMTL_KEY], what="log_scales")
        fixed_scales = jax.lax.stop_gradient(log_scales)
        losses, model_grads = manipulated_gradients(
            transformation,
            optax.EmptyState(),
            losses_fn,
            model_params,
            log_scales.shape[0],
            lambda losses: imtl_scaled_losses(fixed_scales, losses),
            products,
        )
        scale_grads = jax.grad(lambda s: jnp.sum(imtl_scaled_losses(s, losses)))(log_scales)
        return WeightingStep(
            losses, weights(params, state), model_grads, {IMTL_KEY: scale_grads}, state
        )

    return Weighting(init, step, weights=weights)
