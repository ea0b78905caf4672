"""IMTL (IMTL-G, IMTL-L and the hybrid) against NumPy references of the published update."""

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
from yoto_jax.baselines.imtl import IMTL_KEY
from yoto_jax.weighting import objective_weighting


def imtl_g_reference(grads):
    """The paper's Alg. 1 (and LibMTL's code): α₂..T = g₁Uᵀ(DUᵀ)⁻¹, α₁ = 1 − Σα₂..T, float64."""
    grads = np.asarray(grads, np.float64)
    units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    differences = grads[0] - grads[1:]
    unit_differences = units[0] - units[1:]
    rest = grads[0] @ unit_differences.T @ np.linalg.inv(differences @ unit_differences.T)
    return np.concatenate([[1.0 - rest.sum()], rest])


def random_gradients(rng, num_tasks, dim, spread=0.0):
    """Gaussian gradients with a common component and norms spread over e^±3·spread."""
    grads = rng.normal(size=(num_tasks, dim)) + rng.normal(size=dim)
    return grads * np.exp(spread * rng.uniform(-3, 3, size=(num_tasks, 1)))


PROBLEMS = [(2, 5, 0.0), (3, 10, 0.0), (4, 8, 1.0), (6, 30, 1.0), (8, 50, 2.0)]


def check_against_reference(weights_fn, rng, dtype=np.float32, rtol=2e-4):
    """``weights_fn(gram)`` matches the paper's α and gives its update on random problems."""
    for num_tasks, dim, spread in PROBLEMS:
        for _ in range(2):
            grads = random_gradients(rng, num_tasks, dim, spread)
            expected = imtl_g_reference(grads)
            alpha = np.asarray(weights_fn(jnp.asarray(grads @ grads.T, dtype)), np.float64)
            scale = np.abs(expected).max()
            np.testing.assert_allclose(alpha, expected, rtol=rtol, atol=rtol * scale)


def test_weights_match_the_paper_closed_form(rng):
    check_against_reference(jax.jit(bl.imtl_g_weights), rng)


def test_weights_match_the_paper_closed_form_in_float64(rng, x64):
    check_against_reference(jax.jit(bl.imtl_g_weights), rng, dtype=np.float64, rtol=1e-9)


def broken_without_unit_gradients(gram):
    """IMTL-G with the unit gradients' normalisation dropped (D used for U): equal raw
    inner products gᵢ·d instead of equal projections."""
    v = jnp.linalg.solve(gram, jnp.ones(gram.shape[0], gram.dtype))
    return v / jnp.sum(v)


def broken_sign(gram):
    """IMTL-G with α₁ = 1 + Σα₂..T, a sign slip in the normalisation."""
    alpha = bl.imtl_g_weights(gram)
    return alpha.at[0].set(2.0 - alpha[0])


@pytest.mark.parametrize("broken", [broken_without_unit_gradients, broken_sign])
def test_a_broken_copy_fails_the_reference_comparison(broken, rng):
    with pytest.raises(AssertionError):
        check_against_reference(broken, rng)


def test_the_update_has_equal_projections_on_every_unit_gradient(rng):
    tx = bl.imtl_transformation(shared=True)
    for num_tasks, dim, spread in PROBLEMS:
        grads = random_gradients(rng, num_tasks, dim, spread)
        update = apply(tx, grads).astype(np.float64)
        projections = grads @ update / np.linalg.norm(grads, axis=1)
        np.testing.assert_allclose(projections, projections.mean(), rtol=1e-4)
        np.testing.assert_allclose(update, imtl_g_reference(grads) @ grads, rtol=2e-4, atol=1e-5)


def test_two_tasks_in_closed_form_bisect_the_gradients():
    tx = bl.imtl_transformation(shared=True)
    for g1, g2 in [([2.0, 0.0], [0.0, 0.5]), ([1.0, 1.0], [-3.0, 1.0]), ([1.0, 2.0], [2.0, 1.0])]:
        g1, g2 = np.array(g1), np.array(g2)
        n1, n2 = np.linalg.norm(g1), np.linalg.norm(g2)
        alpha = np.array([n2, n1]) / (n1 + n2)
        grads = np.stack([g1, g2])
        np.testing.assert_allclose(bl.imtl_g_weights(grads @ grads.T), alpha, rtol=1e-6)
        expected = n1 * n2 / (n1 + n2) * (g1 / n1 + g2 / n2)
        np.testing.assert_allclose(apply(tx, grads), expected, rtol=1e-6, atol=1e-6)


def test_the_direction_ignores_the_losses_scales(rng):
    """Scaling gᵢ by cᵢ > 0 leaves the unit gradients, hence d's direction, unchanged."""
    tx = bl.imtl_transformation(shared=True)
    grads = random_gradients(rng, 4, 12)
    update = apply(tx, grads)
    scaled = apply(tx, grads * np.array([[0.1], [5.0], [1.0], [30.0]]))
    cosine = update @ scaled / np.linalg.norm(update) / np.linalg.norm(scaled)
    assert cosine == pytest.approx(1.0, abs=1e-6)


def test_degenerate_gradients_give_the_balanced_update_without_nans():
    tx = bl.imtl_transformation(shared=True)
    # A zero gradient: weight 0, the others balanced among themselves (the paper divides by 0).
    grads = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    alpha = np.asarray(bl.imtl_g_weights(jnp.asarray(grads @ grads.T)))
    assert alpha[1] == 0.0
    np.testing.assert_allclose(alpha[[0, 2]], imtl_g_reference(grads[[0, 2]]), rtol=1e-5)
    # Opposite parallel gradients, and three gradients in a plane (T > n): the paper's
    # formula is defined and gives d = 0, the only update with equal projections.
    rng = np.random.default_rng(0)
    for grads in [np.array([[1.0, 2.0], [-2.0, -4.0]]), rng.normal(size=(3, 2))]:
        np.testing.assert_allclose(imtl_g_reference(grads) @ grads, 0.0, atol=1e-12)
        np.testing.assert_allclose(apply(tx, grads), 0.0, atol=1e-6)
    # Same-direction parallel gradients: every combination balances; the limit of the
    # two-task closed form as the angle closes, α ∝ 1/‖gᵢ‖, d = 2 n₁n₂/(n₁ + n₂) u.
    grads = np.array([[1.0, 2.0], [2.0, 4.0]])
    np.testing.assert_allclose(apply(tx, grads), 4.0 / 3.0 * grads[0], rtol=1e-5)
    np.testing.assert_array_equal(apply(tx, np.zeros((3, 4))), 0.0)


@pytest.mark.parametrize("angle", [np.pi - 5e-4, np.pi - 1e-2, 5e-4])
def test_nearly_opposite_or_parallel_pairs_keep_the_closed_form(angle):
    """g₂ = 2(cos a, sin a) against g₁ = e₁: α = (2/3, 1/3) for every a. The cosine
    matrix's 1 + cos a (or 1 - cos a) is below float32's resolution here; an
    eigendecomposition of it returned α = 0 for a = π − 5e-4."""
    grads = np.array([[1.0, 0.0], [2.0 * np.cos(angle), 2.0 * np.sin(angle)]], np.float32)
    expected = imtl_g_reference(grads)
    np.testing.assert_allclose(expected, [2.0 / 3.0, 1.0 / 3.0], rtol=1e-6)  # float32 rows
    np.testing.assert_allclose(bl.imtl_g_weights_from_gradients(grads), expected, rtol=1e-6)
    np.testing.assert_allclose(bl.imtl_g_weights(grads @ grads.T), expected, rtol=1e-6)


@pytest.mark.parametrize("num_tasks", [3, 5, 10])
def test_clustered_gradients_with_spread_norms_match_float64(num_tasks, rng):
    """Rows within 1 % of one direction (either sign), norms over 1e-2 … 1e3: α within
    1e-4 of the float64 reference on the same float32 gradients, relative to its largest
    entry (perturbing the rows by one float32 ulp moves the reference by ~1e-5 here).
    The paper's formula evaluated in float32 is off by up to 8e-2 (T = 5) and 3.6 (T = 10)."""
    solve = jax.jit(bl.imtl_g_weights_from_gradients)
    for _ in range(10):
        base = rng.normal(size=40)
        grads = (base + 1e-2 * rng.normal(size=(num_tasks, 40))) * 10 ** rng.uniform(
            -2, 3, size=(num_tasks, 1)
        )
        grads = (grads * rng.choice([-1.0, 1.0], size=(num_tasks, 1))).astype(np.float32)
        expected = imtl_g_reference(grads)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(solve(grads), expected, rtol=0, atol=1e-4 * scale)


# IMTL-L and the hybrid, several steps of SGD through yoto_jax.trainer, against a NumPy
# reimplementation of the paper's Alg. 1 on a model with a shared trunk and one head per task.


def toy_problem(rng, num_tasks=3, dim=4, samples=6):
    inputs = rng.normal(size=(num_tasks, samples, dim))
    targets = rng.normal(size=(num_tasks, samples)) * np.array([[1.0], [3.0], [0.3]])[:num_tasks]
    params = {"trunk": rng.normal(size=dim) * 0.5, "heads": rng.normal(size=num_tasks) + 1.0}
    return inputs, targets, params


def toy_losses_fn(inputs, targets):
    inputs, targets = jnp.asarray(inputs, jnp.float32), jnp.asarray(targets, jnp.float32)

    def losses_fn(params):
        predictions = jnp.einsum("tsd,d->ts", inputs, params["trunk"]) * params["heads"][:, None]
        return 0.5 * jnp.mean((predictions - targets) ** 2, axis=1) + 0.1

    return losses_fn


def toy_reference(inputs, targets, params, mode, steps, lr, broken=False):
    """Alg. 1 of the paper (SGD): scaled losses e^s l − s; IMTL-G on the shared trunk."""
    trunk, heads = params["trunk"].astype(np.float64), params["heads"].astype(np.float64)
    log_scales = np.zeros(len(heads))
    history = []
    for _ in range(steps):
        features = inputs @ trunk  # (T, S)
        residuals = features * heads[:, None] - targets
        losses = 0.5 * np.mean(residuals**2, axis=1) + 0.1
        trunk_grads = np.einsum("ts,tsd->td", residuals * heads[:, None], inputs) / inputs.shape[1]
        head_grads = np.mean(residuals * features, axis=1)
        scales = np.exp(log_scales) if mode != "gradient" else np.ones(len(heads))
        scaled_grads = scales[:, None] * trunk_grads
        if mode == "loss":
            shared = scaled_grads.sum(0)
        else:
            shared = imtl_g_reference(scaled_grads) @ scaled_grads
        trunk = trunk - lr * shared
        heads = heads - lr * scales * head_grads
        if mode != "gradient":
            log_scales = log_scales - lr * (scales * losses - (0.0 if broken else 1.0))
        history.append((trunk.copy(), heads.copy(), log_scales.copy(), scales))
    return history


@pytest.mark.usefixtures("full_matmul_precision")
@pytest.mark.parametrize("mode", ["hybrid", "loss", "gradient"])
def test_several_sgd_steps_in_the_trainer_match_the_papers_algorithm(mode, rng):
    inputs, targets, params = toy_problem(rng)
    lr, steps = 0.05, 6
    expected = toy_reference(inputs, targets, params, mode, steps, lr)
    train = yoto_jax.trainer(bl.imtl({"trunk": True, "heads": False}, mode=mode), optax.sgd(lr))
    state = train.init(jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params), num_losses=3)
    losses_fn = toy_losses_fn(inputs, targets)
    step = jax.jit(lambda state: train.step(state, losses_fn))
    for trunk, heads, log_scales, scales in expected:
        state, log = step(state)
        np.testing.assert_allclose(log.weights, scales, rtol=1e-5)
    model = state.params["model"]
    np.testing.assert_allclose(model["trunk"], trunk, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model["heads"], heads, rtol=1e-4, atol=1e-5)
    if mode != "gradient":
        weighting = state.params["weighting"][IMTL_KEY]
        np.testing.assert_allclose(weighting, log_scales, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(train.weights(state), np.exp(log_scales), rtol=1e-4)
    else:
        assert state.params["weighting"] == {}
        np.testing.assert_array_equal(train.weights(state), np.ones(3))


def test_a_broken_loss_balance_fails_the_several_step_comparison(rng):
    """IMTL-L with the −s term dropped (s's gradient e^s l instead of e^s l − 1)."""
    inputs, targets, params = toy_problem(rng)
    lr, steps = 0.05, 6
    reference = toy_reference(inputs, targets, params, "loss", steps, lr)[-1]
    broken = toy_reference(inputs, targets, params, "loss", steps, lr, broken=True)[-1]
    assert not np.allclose(reference[2], broken[2], rtol=1e-3)  # the reference can tell

    def objective(params, state, losses, key):
        return jnp.sum(jnp.exp(params[IMTL_KEY]) * losses)  # the −s dropped

    good = bl.imtl(None, mode="loss")
    weighting = objective_weighting(good.init, objective, lambda *a: jnp.ones(3), good.weights)
    train = yoto_jax.trainer(weighting, optax.sgd(lr))
    state = train.init(jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params), num_losses=3)
    losses_fn = toy_losses_fn(inputs, targets)
    for _ in range(steps):
        state, _ = train.step(state, losses_fn)
    got = state.params["weighting"][IMTL_KEY]
    np.testing.assert_allclose(got, broken[2], rtol=1e-4, atol=1e-5)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(got, reference[2], rtol=1e-4, atol=1e-5)


def test_scaled_losses_and_their_gradient():
    log_scales, losses = jnp.array([0.0, -1.0, 0.5]), jnp.array([2.0, 1.0, 0.5])
    expected = np.exp(log_scales) * losses - log_scales
    np.testing.assert_allclose(bl.imtl_scaled_losses(log_scales, losses), expected, rtol=1e-6)
    grad = jax.grad(lambda s: jnp.sum(bl.imtl_scaled_losses(s, losses)))(log_scales)
    np.testing.assert_allclose(grad, np.exp(log_scales) * losses - 1.0, rtol=1e-6)


def test_the_transformation_trains_under_jit_in_a_chain():
    params = {"trunk": jnp.zeros(2), "heads": jnp.zeros(2)}
    per_loss = {
        "trunk": jnp.array([[1.0, 0.0], [0.0, 3.0]]),
        "heads": jnp.array([[0.5, 0.0], [0.0, -2.0]]),
    }
    tx = optax.chain(bl.imtl_transformation({"trunk": True, "heads": False}), optax.sgd(0.1))
    grads = jax.tree.map(lambda g: g.sum(0), per_loss)

    @jax.jit
    def update(grads, state, params, per_loss):
        return tx.update(grads, state, params, per_loss_grads=per_loss)

    updates, _ = update(grads, tx.init(params), params, per_loss)
    np.testing.assert_allclose(updates["trunk"], -0.1 * np.array([0.75, 0.75]), rtol=1e-6)
    np.testing.assert_allclose(updates["heads"], -0.1 * np.array([0.5, -2.0]), rtol=1e-6)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: bl.imtl(True, mode="both"), ValueError, "mode must be one of"),
        (lambda: bl.imtl(None), TypeError, "shared must select"),
        (lambda: bl.imtl(None, mode="gradient"), TypeError, "shared must select"),
        (lambda: bl.imtl(True, log_scale_init=float("inf")), ValueError, "finite"),
        (lambda: bl.imtl_transformation(None), TypeError, "shared must select"),
        (lambda: bl.imtl_g_weights(jnp.ones((2, 3))), ValueError, "square"),
        (lambda: bl.imtl_g_weights(jnp.ones((2, 2), int)), TypeError, "floating"),
        (lambda: bl.imtl_scaled_losses(jnp.zeros(3), jnp.ones(2)), ValueError, "expected 2"),
        (
            lambda: bl.imtl_transformation(True).update({"w": jnp.ones(2)}, optax.EmptyState()),
            TypeError,
            "per_loss_grads",
        ),
        (
            lambda: bl.imtl(True).step(
                lambda w: jnp.stack([w, w, w]), jnp.float32(1.0), *bl.imtl(True).init(2)
            ),
            ValueError,
            "expected 2",
        ),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("scope", [None, "tensorfloat32", "bfloat16"])
def test_every_product_is_at_highest_precision(scope):
    """XLA:CPU computes float32 dots fully whatever they ask, so only the lowered program
    shows it: every dot (the cosines to the first gradient, the solve, the combination) must
    ask for HIGHEST, also under a lowered default (on GPUs float32 matmuls otherwise run in
    TF32). The distances are sums of squares, not dots."""
    tx = bl.imtl_transformation(True)

    assert_every_dot_is_highest(lambda g: apply_traced(tx, g), jnp.ones((4, 10)), scope, 3)


def test_the_docstring_examples_run():
    module = importlib.import_module("yoto_jax.baselines.imtl")  # not the factory of that name
    results = doctest.testmod(module)
    assert results.attempted >= 6 and results.failed == 0
