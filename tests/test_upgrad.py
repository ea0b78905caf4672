"""UPGrad and its quadratic-program solver against independent float64 references."""

import doctest
import importlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _per_loss import apply, apply_traced, assert_every_dot_is_highest

import yoto_jax
from yoto_jax import baselines as bl
from yoto_jax.baselines.upgrad import _max_iterations, _nonnegative_qp


def qp_by_enumeration(a, lower):
    """argmin_{v >= lower} vᵀAv, exactly: the one active set whose KKT conditions hold."""
    size = len(lower)
    for count in range(size + 1):
        for active in itertools.combinations(range(size), count):
            active = list(active)
            free = [i for i in range(size) if i not in active]
            v = lower.astype(np.float64).copy()
            if free:
                rhs = -a[np.ix_(free, active)] @ lower[active]
                v[free] = np.linalg.solve(a[np.ix_(free, free)], rhs)
            multipliers = a @ v
            scale = np.abs(a).max() * np.abs(v).max() + 1e-300
            if np.all(v[free] >= lower[free] - 1e-12) and np.all(
                multipliers[active] >= -1e-12 * scale
            ):
                return v
    raise AssertionError("no KKT point: A is not positive definite")


def upgrad_reference(jacobian, pref=None, norm_eps=1e-4, reg_eps=1e-4):
    """TorchJD's UPGrad in float64: normalise and regularise JJᵀ, project each uᵢeᵢ, sum."""
    jacobian = np.asarray(jacobian, np.float64)
    num_tasks = len(jacobian)
    pref = np.full(num_tasks, 1 / num_tasks) if pref is None else np.asarray(pref, np.float64)
    gram = jacobian @ jacobian.T
    trace = np.trace(gram)
    gram = np.zeros_like(gram) if trace < norm_eps else gram / trace
    gram = gram + reg_eps * np.eye(num_tasks)
    weights = sum(qp_by_enumeration(gram, pref[i] * np.eye(num_tasks)[i]) for i in range(num_tasks))
    return weights, weights @ jacobian


def random_jacobian(rng, num_tasks, dim, kind):
    if kind == "random":
        return rng.normal(size=(num_tasks, dim)) + 0.3 * rng.normal(size=dim)
    if kind == "scaled":  # norms over eight orders of magnitude
        scales = 10.0 ** rng.uniform(-3, 5, size=(num_tasks, 1))
        return rng.normal(size=(num_tasks, dim)) * scales
    # nearly parallel rows, some of them opposed: an ill-conditioned Gram matrix
    direction = rng.normal(size=dim)
    signs = rng.choice([-1.0, 1.0], size=(num_tasks, 1))
    return signs * direction + 1e-3 * rng.normal(size=(num_tasks, dim))


KINDS = ["random", "scaled", "parallel"]
SIZES = [(2, 3), (3, 10), (5, 8), (8, 30)]


@pytest.mark.parametrize("kind", KINDS)
def test_the_qp_solver_is_exact_against_enumeration_in_float64(kind, rng, x64):
    solve = jax.jit(_nonnegative_qp)
    for num_tasks, dim in SIZES:
        for _ in range(3):
            jacobian = random_jacobian(rng, num_tasks, dim, kind)
            gram = jacobian @ jacobian.T
            a = gram / np.trace(gram) + 1e-4 * np.eye(num_tasks)
            for i in range(num_tasks):
                lower = np.eye(num_tasks)[i] / num_tasks
                x, iterations = solve(jnp.asarray(a), jnp.asarray(a @ lower))
                expected = qp_by_enumeration(a, lower)
                np.testing.assert_allclose(np.asarray(x) + lower, expected, rtol=1e-9, atol=1e-12)
                assert iterations <= 2 * num_tasks + 1 < _max_iterations(num_tasks)


def test_the_qp_solver_does_at_least_as_well_as_scipy_in_float32(rng):
    """scipy's L-BFGS-B with bounds (an independent, inexact solver): the float32 solution
    is feasible and its objective (in float64) is no worse, to float32 rounding."""
    optimize = pytest.importorskip("scipy.optimize")
    solve = jax.jit(_nonnegative_qp)
    for kind in KINDS:
        for num_tasks, dim in SIZES:
            jacobian = random_jacobian(rng, num_tasks, dim, kind)
            gram = jacobian @ jacobian.T
            a = gram / np.trace(gram) + 1e-4 * np.eye(num_tasks)
            lower = np.eye(num_tasks)[0] / num_tasks
            x, _ = solve(jnp.asarray(a, jnp.float32), jnp.asarray(a @ lower, jnp.float32))
            v = np.asarray(x, np.float64) + lower
            assert np.all(v >= lower)
            scipy_v = optimize.minimize(
                lambda v, a=a: v @ a @ v,
                lower,
                jac=lambda v, a=a: 2 * a @ v,
                bounds=[(low, None) for low in lower],
                method="L-BFGS-B",
                options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
            ).x
            assert v @ a @ v <= scipy_v @ a @ scipy_v + 1e-6 * lower @ a @ lower


def check_against_reference(weights_fn, rng, dtype=np.float32, rtol=1e-4, **options):
    """``weights_fn(gram, **options)`` gives the reference's update wᵀJ (and w where it is
    well conditioned)."""
    for kind in KINDS:
        for num_tasks, dim in SIZES:
            jacobian = random_jacobian(rng, num_tasks, dim, kind)
            expected_w, expected = upgrad_reference(jacobian, **options)
            gram = jnp.asarray(jacobian @ jacobian.T, dtype)
            w = np.asarray(weights_fn(gram, **options), np.float64)
            np.testing.assert_allclose(
                w @ jacobian, expected, atol=rtol * np.linalg.norm(jacobian, axis=1).max()
            )
            if kind == "random":
                np.testing.assert_allclose(w, expected_w, rtol=rtol, atol=rtol * expected_w.max())


WEIGHTS = jax.jit(bl.upgrad_weights)  # norm_eps and reg_eps traced: one compilation per shape


def test_weights_match_the_reference(rng):
    check_against_reference(WEIGHTS, rng)


def test_weights_match_the_reference_in_float64(rng, x64):
    check_against_reference(WEIGHTS, rng, dtype=np.float64, rtol=1e-9)


def test_weights_are_accurate_in_float32_with_norms_spread_over_five_orders(rng):
    """T = 10 gradients with norms from 1e-2 to 1e3: the float32 weights within 1e-4 of
    the float64 reference's, relative to the largest (eliminating on the unscaled A was
    off by 12%)."""
    for _ in range(3):
        jacobian = rng.normal(size=(10, 20)) * np.logspace(-2, 3, 10)[:, None]
        expected_w, _ = upgrad_reference(jacobian)
        w = np.asarray(WEIGHTS(jnp.asarray(jacobian @ jacobian.T, jnp.float32)), np.float64)
        np.testing.assert_allclose(w, expected_w, rtol=0, atol=1e-4 * np.abs(expected_w).max())


@pytest.mark.parametrize(
    "options",
    [{"pref_vector": [1.0, 0.1, 0.2]}, {"reg_eps": 0.0}, {"reg_eps": 1e-2}, {"norm_eps": 1e6}],
)
def test_weights_match_the_reference_with_options(options, rng):
    jacobian = random_jacobian(rng, 3, 6, "random")
    epsilons = {k: v for k, v in options.items() if k != "pref_vector"}
    pref = options.get("pref_vector")
    expected_w, _ = upgrad_reference(jacobian, pref=pref, **epsilons)
    pref = None if pref is None else jnp.asarray(pref, jnp.float32)
    gram = jnp.asarray(jacobian @ jacobian.T, jnp.float32)
    got = WEIGHTS(gram, pref_vector=pref, **epsilons)
    np.testing.assert_allclose(got, expected_w, rtol=1e-4, atol=1e-6)


def broken_linear_term(gram, norm_eps=1e-4, reg_eps=1e-4):
    """UPGrad with the QP's linear term sign-flipped: minimises (x − b)ᵀA(x − b), x >= 0."""
    num_tasks = gram.shape[0]
    trace = jnp.trace(gram)
    a = gram / trace + reg_eps * jnp.eye(num_tasks)
    lower = jnp.eye(num_tasks) / num_tasks
    solutions = jax.vmap(lambda b: b + _nonnegative_qp(a, -(a @ b))[0])(lower)
    return jnp.sum(solutions, axis=0)


def broken_unprojected(gram, norm_eps=1e-4, reg_eps=1e-4):
    """UPGrad with the projections dropped: the plain mean."""
    return jnp.full(gram.shape[0], 1.0 / gram.shape[0])


@pytest.mark.parametrize("broken", [broken_linear_term, broken_unprojected])
def test_a_broken_copy_fails_the_reference_comparison(broken, rng):
    with pytest.raises(AssertionError):
        check_against_reference(broken, rng)


def test_the_update_conflicts_with_no_task(rng):
    """The paper's Prop.: Jd >= 0; with reg_eps > 0, up to −reg_eps·tr(JJᵀ)·wⱼ."""
    for kind in KINDS:
        for num_tasks, dim in SIZES[1:]:
            jacobian = random_jacobian(rng, num_tasks, dim, kind)
            gram = jacobian @ jacobian.T
            w = np.asarray(WEIGHTS(jnp.asarray(gram, jnp.float32)), np.float64)
            slack = 1e-4 * np.trace(gram) * w + 1e-5 * np.trace(gram)
            assert np.all(jacobian @ (w @ jacobian) >= -slack)
            if kind == "random":
                exact = WEIGHTS(jnp.asarray(gram, jnp.float32), reg_eps=0.0)
                update = np.asarray(exact, np.float64) @ jacobian
                assert np.all(jacobian @ update >= -1e-5 * np.trace(gram))
    jacobian = random_jacobian(rng, 5, 8, "random")  # and through the transformation
    update = jax.jit(apply_traced, static_argnums=0)(
        bl.upgrad_transformation(True, reg_eps=0.0), jnp.asarray(jacobian, jnp.float32)
    )
    assert np.all(jacobian @ np.asarray(update, np.float64) >= -1e-5 * np.sum(jacobian**2))


def test_two_tasks_in_closed_form_is_half_pcgrad():
    tx = bl.upgrad_transformation(True, reg_eps=0.0)
    g1, g2 = np.array([2.0, 1.0, -1.0]), np.array([-1.0, 0.5, 1.0])  # conflicting
    dot = g1 @ g2
    pcgrad = (g1 - dot / (g2 @ g2) * g2) + (g2 - dot / (g1 @ g1) * g1)
    np.testing.assert_allclose(apply(tx, np.stack([g1, g2])), pcgrad / 2, rtol=1e-6, atol=1e-6)


def test_without_conflict_it_is_the_weighted_mean(rng):
    jacobian = np.abs(rng.normal(size=(4, 6)))  # nonnegative: no two rows conflict
    gram = jnp.asarray(jacobian @ jacobian.T, jnp.float32)
    np.testing.assert_allclose(WEIGHTS(gram), np.full(4, 0.25), rtol=1e-6)
    np.testing.assert_allclose(WEIGHTS(gram, pref_vector=jnp.ones(4)), np.ones(4), rtol=1e-6)
    # Below norm_eps (on the trace of JJᵀ) the Gram matrix counts as zero: the mean too.
    conflicting = 1e-3 * np.array([[1.0, 0.0], [-1.0, 0.5]])
    np.testing.assert_allclose(
        apply(bl.upgrad_transformation(True), conflicting), conflicting.mean(0), rtol=1e-6
    )


def test_weighting_in_the_trainer_under_jit(rng):
    inputs = jnp.asarray(rng.normal(size=(3, 8, 3)), jnp.float32)
    targets = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)

    def losses_fn(params):
        features = jnp.einsum("tsd,d->ts", inputs, params["trunk"])
        return jnp.mean((features * params["heads"][:, None] - targets) ** 2, axis=1)

    params = {"trunk": jnp.full(3, 0.1), "heads": jnp.ones(3)}
    train = yoto_jax.trainer(bl.upgrad({"trunk": True, "heads": False}), optax.sgd(0.05))
    step = jax.jit(lambda state: train.step(state, losses_fn))
    state = train.init(params, num_losses=3)
    per_loss = jax.jacrev(losses_fn)(params)
    _, expected = upgrad_reference(np.asarray(per_loss["trunk"]))
    new_state, log = step(state)
    np.testing.assert_allclose(
        new_state.params["model"]["trunk"], params["trunk"] - 0.05 * expected, rtol=1e-5
    )
    np.testing.assert_allclose(
        new_state.params["model"]["heads"],
        params["heads"] - 0.05 * per_loss["heads"].sum(0),
        rtol=1e-5,
    )
    np.testing.assert_array_equal(log.weights, np.ones(3))
    first = log.losses
    for _ in range(30):
        state, log = step(state)
    assert np.all(np.isfinite(log.losses)) and log.losses.sum() < first.sum()


def test_traced_hyperparameters_under_vmap():
    """pref_vector and the epsilons may be traced (a grid of them under vmap)."""
    jacobian = jnp.array([[1.0, 0.0], [-1.0, 1.0]])

    def update(pref, reg_eps):
        return apply_traced(
            bl.upgrad_transformation(True, pref_vector=pref, reg_eps=reg_eps), jacobian
        )

    prefs = jnp.array([[0.5, 0.5], [1.0, 1.0]])
    got = jax.vmap(update)(prefs, jnp.zeros(2))
    np.testing.assert_allclose(got, [[0.25, 0.75], [0.5, 1.5]], rtol=1e-6)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: bl.upgrad(None), TypeError, "shared must select"),
        (lambda: bl.upgrad(True, norm_eps=-1.0), ValueError, "norm_eps must be a finite"),
        (lambda: bl.upgrad(True, reg_eps=float("nan")), ValueError, "reg_eps must be a finite"),
        (lambda: bl.upgrad(True, pref_vector=jnp.ones((2, 1))), ValueError, "shape"),
        (lambda: bl.upgrad(True, pref_vector=[1.0, np.inf]), ValueError, "finite"),
        (
            lambda: apply(bl.upgrad_transformation(True, pref_vector=[0.5, 0.5]), np.ones((3, 2))),
            ValueError,
            "pref_vector has 2 entries but the per-loss gradients have T = 3",
        ),
        (lambda: bl.upgrad_weights(jnp.ones((2, 3))), ValueError, "square"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("scope", [None, "tensorfloat32", "bfloat16"])
def test_every_product_is_at_highest_precision(scope):
    """Only the lowered program shows it on CPU: every dot (Gram matrix, the solver's
    products, the combination) must ask for HIGHEST, also under a lowered default. The
    solver's linear solves are elementwise eliminations, with no dot at all."""
    tx = bl.upgrad_transformation(True)
    assert_every_dot_is_highest(lambda g: apply_traced(tx, g), jnp.ones((4, 10)), scope, 3)


def test_the_docstring_examples_run():
    module = importlib.import_module("yoto_jax.baselines.upgrad")  # not the factory of that name
    results = doctest.testmod(module)
    assert results.attempted >= 6 and results.failed == 0
