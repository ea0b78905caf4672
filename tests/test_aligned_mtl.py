"""Aligned-MTL against a NumPy reference of the authors' ``ProcrustesSolver``."""

import doctest
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _per_loss import apply, apply_traced, assert_every_dot_is_highest

import yoto_jax
from yoto_jax import baselines as bl

EPS32 = np.finfo(np.float32).eps


def aligned_reference(grads, weights=None, scale_mode="min"):
    """The authors' solver in float64: eigendecomposition of GGᵀ, the eigenvalues above
    λ_max·T·ε₃₂ in descending order, B = σ V Λ^{-1/2} Vᵀ, α = B w; returns (α, αᵀG)."""
    grads = np.asarray(grads, np.float64)
    num_tasks = len(grads)
    weights = np.ones(num_tasks) if weights is None else np.asarray(weights, np.float64)
    eigenvalues, basis = np.linalg.eigh(grads @ grads.T)
    rank = int(np.sum(eigenvalues > eigenvalues.max() * num_tasks * EPS32))
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, basis = eigenvalues[order][:rank], basis[:, order][:, :rank]
    if scale_mode == "min":
        scale = np.sqrt(eigenvalues[-1])
    elif scale_mode == "median":  # torch.median: the lower median
        scale = np.sqrt(np.sort(eigenvalues)[(rank - 1) // 2])
    else:
        scale = np.sqrt(eigenvalues.mean())
    balance = (basis * scale / np.sqrt(eigenvalues)) @ basis.T
    alpha = balance @ weights
    return alpha, alpha @ grads


def random_gradients(rng, num_tasks, dim, spread=0.0):
    grads = rng.normal(size=(num_tasks, dim)) + 0.5 * rng.normal(size=dim)
    return grads * np.exp(spread * rng.uniform(-1, 1, size=(num_tasks, 1)))


PROBLEMS = [(2, 5, 0.0), (3, 10, 1.0), (4, 8, 0.0), (6, 30, 1.0), (8, 50, 2.0)]


def check_against_reference(weights_fn, rng, dtype=np.float32, rtol=1e-4, **options):
    """``weights_fn(gram, task_weights, scale_mode)`` gives the reference's α."""
    for num_tasks, dim, spread in PROBLEMS:
        grads = random_gradients(rng, num_tasks, dim, spread)
        weights = rng.uniform(0.1, 2.0, size=num_tasks)
        for w in [None, weights]:
            expected, _ = aligned_reference(grads, w, **options)
            gram = jnp.asarray(grads @ grads.T, dtype)
            task_weights = None if w is None else jnp.asarray(w, dtype)
            got = np.asarray(weights_fn(gram, task_weights, **options), np.float64)
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_weights_match_the_reference(scale_mode, rng):
    check_against_reference(bl.aligned_mtl_weights, rng, scale_mode=scale_mode)


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_weights_match_the_reference_in_float64(scale_mode, rng, x64):
    check_against_reference(
        bl.aligned_mtl_weights, rng, dtype=np.float64, rtol=1e-9, scale_mode=scale_mode
    )


def broken_largest_scale(gram, task_weights=None, scale_mode="min"):
    """Aligned-MTL scaled by the largest singular value instead of the smallest."""
    eigenvalues = jnp.linalg.eigvalsh(gram)
    alpha = bl.aligned_mtl_weights(gram, task_weights, scale_mode)
    return alpha * jnp.sqrt(eigenvalues[-1] / eigenvalues[0])


def broken_unbalanced(gram, task_weights=None, scale_mode="min"):
    """Aligned-MTL without Λ^{-1/2}: B = σ_R V Vᵀ = σ_R I, the plain (scaled) weighted sum."""
    weights = jnp.ones(gram.shape[0]) if task_weights is None else task_weights
    return jnp.sqrt(jnp.linalg.eigvalsh(gram)[0]) * weights


@pytest.mark.parametrize("broken", [broken_largest_scale, broken_unbalanced])
def test_a_broken_copy_fails_the_reference_comparison(broken, rng):
    with pytest.raises(AssertionError):
        check_against_reference(broken, rng)


def test_the_update_is_the_reference_update_under_jit(rng):
    grads = random_gradients(rng, 5, 40, 1.0)
    weights = np.array([1.0, 0.1, 0.1, 0.3, 0.2])
    for w in [None, weights]:
        tx = bl.aligned_mtl_transformation(True, task_weights=w)
        update = jax.jit(apply_traced, static_argnums=0)(tx, jnp.asarray(grads, jnp.float32))
        _, expected = aligned_reference(grads, w)
        np.testing.assert_allclose(update, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def aligned_matrix(grads, dtype=jnp.float32):
    """Ĝ = B G, B's columns from unit task weights."""
    gram = jnp.asarray(grads @ grads.T, dtype)
    eye = np.eye(len(grads))
    balance = np.stack(
        [np.asarray(bl.aligned_mtl_weights(gram, jnp.asarray(e, dtype))) for e in eye]
    )
    return balance.T.astype(np.float64) @ grads


def test_aligned_gradients_are_orthogonal_of_the_smallest_singular_value(rng):
    """The paper's Theorem: condition number 1, each component of norm σ_min(G)."""
    for num_tasks, dim, spread in PROBLEMS:
        grads = random_gradients(rng, num_tasks, dim, spread)
        aligned = aligned_matrix(grads)
        smallest = np.linalg.svd(grads, compute_uv=False)[-1]
        np.testing.assert_allclose(
            aligned @ aligned.T, smallest**2 * np.eye(num_tasks), atol=1e-4 * smallest**2
        )
        assert np.linalg.cond(aligned) == pytest.approx(1.0, abs=1e-3)
        # Procrustes: no matrix with orthogonal rows of norm σ is closer to G.
        u, _, vt = np.linalg.svd(grads, full_matrices=False)
        np.testing.assert_allclose(aligned, smallest * u @ vt, atol=1e-4 * np.abs(grads).max())


def test_rank_deficient_gradients_are_aligned_on_their_span(rng):
    base = rng.normal(size=(2, 6))
    grads = np.stack([base[0], base[1], base[0] + 2.0 * base[1]])  # rank 2
    aligned = aligned_matrix(grads)
    _, expected = aligned_reference(grads)
    np.testing.assert_allclose(
        apply(bl.aligned_mtl_transformation(True), grads), expected, rtol=1e-4
    )
    eigenvalues, basis = np.linalg.eigh(grads @ grads.T)
    projector = basis[:, 1:] @ basis[:, 1:].T
    np.testing.assert_allclose(aligned @ aligned.T, eigenvalues[1] * projector, atol=1e-4)
    many = rng.normal(size=(4, 2))  # T > n
    _, expected = aligned_reference(many)
    np.testing.assert_allclose(
        apply(bl.aligned_mtl_transformation(True), many), expected, rtol=1e-4
    )


def test_two_tasks_in_closed_form():
    tx = bl.aligned_mtl_transformation(True)
    # Orthogonal: each gradient rescaled to the smaller norm.
    np.testing.assert_allclose(apply(tx, np.array([[3.0, 0.0], [0.0, 0.5]])), [0.5, 0.5], rtol=1e-6)
    # Parallel (rank 1): the one component kept at its own scale, d = g₁ + g₂.
    grads = np.array([[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_allclose(apply(tx, grads), grads.sum(0), rtol=1e-5)
    # All zero (rank 0): B = I, no NaN.
    np.testing.assert_array_equal(apply(tx, np.zeros((3, 4))), 0.0)
    np.testing.assert_array_equal(bl.aligned_mtl_weights(jnp.zeros((3, 3))), np.ones(3))


def test_weighting_in_the_trainer_under_jit(rng):
    inputs = jnp.asarray(rng.normal(size=(2, 8, 3)), jnp.float32)
    targets = jnp.asarray(rng.normal(size=(2, 8)), jnp.float32)

    def losses_fn(params):
        features = jnp.einsum("tsd,d->ts", inputs, params["trunk"])
        return jnp.mean((features * params["heads"][:, None] - targets) ** 2, axis=1)

    params = {"trunk": jnp.full(3, 0.1), "heads": jnp.ones(2)}
    weighting = bl.aligned_mtl({"trunk": True, "heads": False}, task_weights=jnp.array([1.0, 0.5]))
    train = yoto_jax.trainer(weighting, optax.sgd(0.05))
    state = train.init(params, num_losses=2)
    step = jax.jit(lambda state: train.step(state, losses_fn))
    first = None
    for _ in range(30):
        state, log = step(state)
        first = log.losses if first is None else first
    assert np.all(np.isfinite(log.losses)) and log.losses.sum() < first.sum()
    np.testing.assert_array_equal(log.weights, np.ones(2))
    # One step by hand: the reference's update on the trunk, the summed gradient on the heads.
    state = train.init(params, num_losses=2)
    per_loss = jax.jacrev(losses_fn)(params)
    _, expected = aligned_reference(np.asarray(per_loss["trunk"]), [1.0, 0.5])
    new_state, _ = step(state)
    np.testing.assert_allclose(
        new_state.params["model"]["trunk"], params["trunk"] - 0.05 * expected, rtol=1e-5
    )
    np.testing.assert_allclose(
        new_state.params["model"]["heads"],
        params["heads"] - 0.05 * per_loss["heads"].sum(0),
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: bl.aligned_mtl(None), TypeError, "shared must select"),
        (lambda: bl.aligned_mtl(True, scale_mode="max"), ValueError, "scale_mode must be one of"),
        (lambda: bl.aligned_mtl(True, task_weights=jnp.ones((2, 2))), ValueError, "shape"),
        (lambda: bl.aligned_mtl(True, task_weights=[1.0, np.nan]), ValueError, "finite"),
        (lambda: bl.aligned_mtl(True, task_weights=[1, 2]), TypeError, "floating"),
        (
            lambda: apply(
                bl.aligned_mtl_transformation(True, task_weights=[1.0, 1.0]), np.ones((3, 2))
            ),
            ValueError,
            "task_weights has 2 entries but the per-loss gradients have T = 3",
        ),
        (lambda: bl.aligned_mtl_weights(jnp.ones(3)), ValueError, "square"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("scope", [None, "tensorfloat32", "bfloat16"])
def test_every_product_is_at_highest_precision(scope):
    """Only the lowered program shows it on CPU: every dot (Gram matrix, B w, the
    combination) must ask for HIGHEST, also under a lowered default precision."""
    tx = bl.aligned_mtl_transformation(True, task_weights=jnp.array([1.0, 0.5, 0.5, 0.5]))
    assert_every_dot_is_highest(lambda g: apply_traced(tx, g), jnp.ones((4, 10)), scope, 4)


def test_the_docstring_examples_run():
    module = importlib.import_module(
        "yoto_jax.baselines.aligned_mtl"
    )  # not the factory of that name
    results = doctest.testmod(module)
    assert results.attempted >= 6 and results.failed == 0
