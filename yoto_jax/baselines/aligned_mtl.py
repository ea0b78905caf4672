r"""Aligned-MTL (Senushkin et al., CVPR 2023): task gradients aligned to condition number 1.

The T per-loss gradients of the shared parameters, the rows of G, are replaced by the
closest matrix (in Frobenius norm) whose rows are orthogonal and of equal norm, a
Procrustes problem solved through the eigendecomposition of the T x T Gram matrix;
the update is their weighted sum. As an Optax transformation,
:func:`aligned_mtl_transformation`, with the ``per_loss_grads=`` convention of
:mod:`yoto_jax.baselines.manipulation`, and as a :class:`~yoto_jax.Weighting`,
:func:`aligned_mtl`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

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

SCALE_MODES = ("min", "median", "rmse")
"""How Aligned-MTL scales the aligned gradients: by the smallest, the (lower) median or
the root-mean-square singular value of G (the reference's ``scale_mode``)."""

_EPS = float(np.finfo(np.float32).eps)  # the reference's torch.finfo().eps, whatever the dtype


def _check_scale_mode(scale_mode: str) -> None:
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}.")


def aligned_mtl_weights(
    gram: ArrayLike, task_weights: ArrayLike | None = None, scale_mode: str = "min"
) -> jax.Array:
    r"""Aligned-MTL's α = B w from the Gram matrix :math:`M = G G^\top`: the update is
    :math:`α^\top G`.

    With :math:`M = V Λ V^\top` (eigenvalues :math:`λ_1 \ge \dots \ge λ_T`), R the
    number of eigenvalues above :math:`λ_1 \cdot T \cdot ε` (ε that of float32, as in
    the reference whatever the dtype) and σ the scale (:math:`\sqrt{λ_R}`, the smallest
    nonzero singular value of G, for ``"min"``),

    .. math::
        B = σ\, V_R Λ_R^{-1/2} V_R^\top, \qquad α = B w.

    The aligned gradients are the rows of :math:`\hat G = B G`, with
    :math:`\hat G \hat G^\top = σ^2 V_R V_R^\top`: for linearly independent gradients,
    orthogonal rows of norm σ (condition number 1). If every gradient is zero (R = 0),
    B = I as in TorchJD (the references fail there).

    Args:
      gram: M, shape (T, T), symmetric positive semi-definite.
      task_weights: w, shape (T,) (default: ones).
      scale_mode: ``"min"``, ``"median"`` or ``"rmse"`` (:data:`SCALE_MODES`).

    Returns:
      α, shape (T,).

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import aligned_mtl_weights
      >>> grads = jnp.array([[2.0, 0.0], [0.0, 1.0]])  # orthogonal: both scaled to norm 1
      >>> aligned_mtl_weights(grads @ grads.T)
      Array([0.5, 1. ], dtype=float32)

    References:
      Senushkin, Patakin, Kuznetsov and Konushin, "Independent Component Alignment for
      Multi-Task Learning", CVPR 2023, Alg. 1; https://github.com/SamsungLabs/MTL
      (``ProcrustesSolver``).
    """
    _check_scale_mode(scale_mode)
    gram = checked_gram(gram)
    num_losses = gram.shape[0]
    weights = task_vector_for(
        task_vector(task_weights, "task_weights"), num_losses, 1.0, "task_weights", gram.dtype
    )
    eigenvalues, eigenvectors = jnp.linalg.eigh(gram)  # ascending
    keep = eigenvalues > jnp.max(eigenvalues) * num_losses * _EPS  # a suffix: the top R
    rank = jnp.sum(keep)
    if scale_mode == "min":
        squared_scale = jnp.min(jnp.where(keep, eigenvalues, jnp.inf))
    elif scale_mode == "median":  # torch.median: the lower median of the R kept values
        squared_scale = eigenvalues[num_losses - rank + (rank - 1) // 2]
    else:
        squared_scale = jnp.sum(jnp.where(keep, eigenvalues, 0.0)) / jnp.maximum(rank, 1)
    inverse_roots = jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, eigenvalues, 1.0)), 0.0)
    scale = jnp.sqrt(jnp.where(rank > 0, squared_scale, 1.0))
    aligned = scale * dot(eigenvectors, inverse_roots * dot(weights, eigenvectors))  # B w
    return jnp.where(rank > 0, aligned, weights)


def aligned_mtl_transformation(
    shared: Any, task_weights: ArrayLike | None = None, scale_mode: str = "min"
) -> optax.GradientTransformationExtraArgs:
    r"""Aligned-MTL: the task gradients aligned to orthogonal ones of equal norm, then summed.

    With G the (T, n) matrix of the shared per-loss gradients and its SVD
    :math:`G = V Σ U^\top`, the closest matrix with orthogonal rows of one norm is
    :math:`V U^\top` (a Procrustes problem), rescaled by σ, the smallest nonzero
    singular value :math:`σ_R`:

    .. math::
        \hat G = σ_R V U^\top = B G, \quad B = σ_R V Σ^{-1} V^\top, \qquad
        d = \hat G^\top w = \sum_i (B w)_i g_i,

    computed from the T x T Gram matrix :math:`G G^\top = V Σ^2 V^\top`
    (:func:`aligned_mtl_weights`; eigenvalues below :math:`λ_\max T ε_{32}` are dropped,
    as in the reference). No component dominates (each has norm σ_R) and none
    conflicts (they are orthogonal); with pre-defined task weights w the method
    converges to a point of that trade-off (the paper's Sec. 4). On the shared
    parameters; the other leaves keep ``updates``, the sum of the task gradients (the
    reference's default ``scale_decoder_grad=False``).

    The references disagree on w's default: the authors' code and LibMTL sum the
    aligned gradients (w = 1, the default here), TorchJD averages them (its
    ``pref_vector`` 1/T): ``task_weights=jnp.full(T, 1 / T)``. With a primary loss
    and auxiliaries, ``task_weights`` puts the trade-off on them, e.g.
    ``jnp.array([1.0, 0.1, 0.1])``. The paper's Aligned-MTL-UB, which aligns the
    gradients of the shared *representation* instead (cheaper: one backward pass
    through the encoder), is :func:`aligned_mtl` with a ``losses_fn`` from
    :func:`yoto_jax.representation_losses`.

    Args:
      shared: which leaves are shared: a bool tree like the params (or a prefix), or
        a callable returning one from a tree with the params' structure.
      task_weights: w, shape (T,), primary first (default: ones; may be traced).
      scale_mode: σ: ``"min"`` (the paper's and the reference's default: the smallest
        singular value), ``"median"`` (their lower median) or ``"rmse"`` (their root
        mean square), the reference's options.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with the ``update`` of
      :func:`~yoto_jax.baselines.pcgrad_transformation`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from yoto_jax.baselines import aligned_mtl_transformation
      >>> per_loss_grads = {"w": jnp.array([[2.0, 0.0], [0.0, 1.0]])}
      >>> grads = jax.tree.map(lambda g: g.sum(0), per_loss_grads)
      >>> tx = aligned_mtl_transformation(shared=True)
      >>> tx.update(grads, tx.init(None), per_loss_grads=per_loss_grads)[0]["w"]
      Array([1., 1.], dtype=float32)

    References:
      Senushkin, Patakin, Kuznetsov and Konushin, "Independent Component Alignment for
      Multi-Task Learning", CVPR 2023, Alg. 1; https://github.com/SamsungLabs/MTL;
      LibMTL's ``Aligned_MTL``; TorchJD's ``AlignedMTL``.
    """
    return gram_transformation(
        "aligned_mtl_transformation", shared, _coefficients(task_weights, scale_mode)
    )


def _coefficients(task_weights: ArrayLike | None, scale_mode: str) -> Coefficients:
    """Aligned-MTL's checked α from the Gram matrix."""
    _check_scale_mode(scale_mode)
    task_weights = task_vector(task_weights, "task_weights")
    return stateless(lambda matrix: aligned_mtl_weights(matrix, task_weights, scale_mode))


def aligned_mtl(
    shared: Any,
    task_weights: ArrayLike | None = None,
    scale_mode: str = "min",
    *,
    gramian: str = "jacobian",
) -> Weighting:
    r"""Aligned-MTL as a :class:`~yoto_jax.Weighting`: :func:`aligned_mtl_transformation`
    on each step's per-loss gradients.

    Deterministic (the step's key is ignored); no params, no arrays in the state; the
    weights are ones (Aligned-MTL combines gradients, not losses; B w is not
    reported). With a ``losses_fn`` from :func:`yoto_jax.representation_losses` it
    is Aligned-MTL-UB: G is the (T, m) matrix of the gradients with respect to the
    representation z (:mod:`yoto_jax.representation`), one backward pass through the
    trunk. Cost: one forward and T backward passes (``jax.jacrev``), the Gram
    matrix (T² n) and a T x T eigendecomposition.

    Args:
      shared: which leaves of the model's params are shared: a bool tree like them
        (or a prefix), or a callable returning one from a tree of their structure.
      task_weights: the pre-defined task weights w, shape (T,), primary first
        (default: ones, the authors' code; may be traced).
      scale_mode: ``"min"``, ``"median"`` or ``"rmse"`` (see
        :func:`aligned_mtl_transformation`).
      gramian: ``"jacobian"`` (default) forms the T per-loss gradients;
        ``"products"`` forms only their Gram matrix, by a VJP and a JVP per loss in
        sequence, and the update by one VJP (less memory, more time;
        ``docs/representation.md``, "Gramians without the Jacobian").

    Returns:
      A :class:`~yoto_jax.Weighting`.

    Example:
      >>> import jax.numpy as jnp
      >>> from yoto_jax.baselines import aligned_mtl
      >>> weighting = aligned_mtl(shared=True)
      >>> params, state = weighting.init(2)
      >>> losses_fn = lambda w: jnp.stack([2.0 * w[0], w[1]])  # gradients 2e₀ and e₁
      >>> weighting.step(losses_fn, jnp.zeros(2), params, state).model_grads
      Array([1., 1.], dtype=float32)

    References:
      Senushkin et al., "Independent Component Alignment for Multi-Task Learning",
      CVPR 2023.
    """
    return manipulation_weighting(
        aligned_mtl_transformation(shared, task_weights, scale_mode),
        products=gram_products(gramian, shared, _coefficients(task_weights, scale_mode)),
    )
