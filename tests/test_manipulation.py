"""PCGrad and MGDA as Optax transformations, against NumPy references of the published
algorithms."""

import contextlib
import itertools
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from yoto_jax import baselines as bl


@pytest.fixture
def rng(request):
    """A NumPy generator seeded by the test's id: the same draws in any order or worker."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def combine(tx, per_loss, params=None):
    """The update of one step of ``tx`` from fresh state."""
    return tx.update(per_loss, tx.init(params))[0]


def pcgrad_reference(grads, orders):
    """Yu et al. (2020), Alg. 1: each g_i projected off the conflicting g_j, j in `orders[i]`."""
    projected = []
    for i, order in enumerate(orders):
        g = grads[i].copy()
        for j in order:
            if g @ grads[j] < 0:
                g = g - (g @ grads[j]) / (grads[j] @ grads[j]) * grads[j]
        projected.append(g)
    return np.sum(projected, axis=0)


def all_pcgrad_outcomes(grads):
    """PCGrad's update for every combination of the tasks' orders."""
    num_tasks = len(grads)
    orders_per_task = [
        list(itertools.permutations([j for j in range(num_tasks) if j != i]))
        for i in range(num_tasks)
    ]
    return [pcgrad_reference(grads, orders) for orders in itertools.product(*orders_per_task)]


def test_pcgrad_two_tasks_in_closed_form():
    g1, g2 = np.array([2.0, 1.0, -1.0]), np.array([-1.0, 0.5, 1.0])
    expected = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g1 @ g2) / (g1 @ g1) * g1)
    got = combine(bl.pcgrad(shared=True), jnp.asarray(np.stack([g1, g2]), jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    aligned = np.stack([g1, g1 + 0.1])
    np.testing.assert_allclose(combine(bl.pcgrad(True), aligned), aligned.sum(0), rtol=1e-6)


def test_pcgrad_three_tasks_is_one_of_the_reference_orders_and_the_orders_vary():
    grads = np.array([[1.0, 0.0, 0.2], [-0.8, 1.0, 0.0], [-0.5, -0.9, 0.3]])
    outcomes = all_pcgrad_outcomes(grads)
    assert len({tuple(np.round(o, 6)) for o in outcomes}) > 1  # the order matters here
    tx = jax.jit(bl.pcgrad(shared=True, seed=3).update)
    state, seen = bl.pcgrad(shared=True, seed=3).init(None), set()
    for _ in range(12):
        update, state = tx(jnp.asarray(grads, jnp.float32), state)
        distances = [np.abs(np.asarray(update) - o).max() for o in outcomes]
        assert min(distances) < 1e-5
        seen.add(int(np.argmin(distances)))
    assert len(seen) > 1


def test_pcgrad_sums_task_specific_leaves_and_trains_under_a_chain():
    per_loss = {
        "trunk": jnp.array([[[1.0, 0.0]], [[-1.0, 1.0]]]),  # (T=2, 1, 2)
        "heads": jnp.array([[0.5, 0.0], [0.0, -2.0]]),
    }
    params = {"trunk": jnp.zeros((1, 2)), "heads": jnp.zeros(2)}
    tx = optax.chain(bl.pcgrad(shared={"trunk": True, "heads": False}), optax.sgd(0.1))
    updates, _ = tx.update(per_loss, tx.init(params), params)
    np.testing.assert_allclose(updates["trunk"], -0.1 * np.array([[0.5, 1.5]]), rtol=1e-6)
    np.testing.assert_allclose(updates["heads"], -0.1 * np.array([0.5, -2.0]), rtol=1e-6)


def min_norm_reference(grads):
    """argmin over the simplex of ‖Σ α_i g_i‖², exactly: the best KKT point over all faces."""
    num_tasks = len(grads)
    gram = grads @ grads.T
    best, best_value = None, np.inf
    for size in range(1, num_tasks + 1):
        for face in itertools.combinations(range(num_tasks), size):
            face = list(face)
            system = np.zeros((size + 1, size + 1))
            system[:size, :size] = 2 * gram[np.ix_(face, face)]
            system[:size, size] = system[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            solution = np.linalg.lstsq(system, rhs, rcond=None)[0][:size]
            if np.any(solution < -1e-12):
                continue
            alpha = np.zeros(num_tasks)
            alpha[face] = solution
            value = alpha @ gram @ alpha
            if value < best_value:
                best, best_value = alpha, value
    return best @ grads


def test_mgda_two_tasks_in_closed_form():
    for g1, g2 in [([1.0, 0.0], [-1.0, 1.0]), ([1.0, 0.0], [3.0, 0.1]), ([0.0, 2.0], [1.0, -1.5])]:
        g1, g2 = np.array(g1), np.array(g2)
        alpha = np.clip((g2 - g1) @ g2 / np.sum((g1 - g2) ** 2), 0.0, 1.0)
        got = combine(bl.mgda(shared=True), jnp.asarray(np.stack([g1, g2]), jnp.float32))
        np.testing.assert_allclose(got, alpha * g1 + (1 - alpha) * g2, atol=1e-5)


@pytest.mark.parametrize("num_tasks, dim", [(3, 2), (3, 10), (5, 4), (4, 50), (8, 20)])
def test_mgda_matches_the_exact_min_norm_point(num_tasks, dim, rng):
    tx = jax.jit(bl.mgda(shared=True).update)
    for _ in range(3):
        grads = rng.normal(size=(num_tasks, dim)) + rng.normal(size=dim)
        expected = min_norm_reference(grads)
        got, _ = tx(jnp.asarray(grads, jnp.float32), optax.EmptyState())
        scale = np.abs(grads).max()
        np.testing.assert_allclose(got, expected, atol=1e-5 * scale)
        for g in grads:  # a common descent direction: no task's loss goes up
            assert g @ expected >= -1e-9


def test_mgda_is_zero_at_a_pareto_stationary_point():
    g = np.array([1.0, -2.0, 0.5])
    got = combine(bl.mgda(shared=True), jnp.asarray(np.stack([g, -0.5 * g, 2 * g]), jnp.float32))
    np.testing.assert_allclose(got, 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: bl.pcgrad(None), TypeError, "shared must select"),
        (lambda: bl.pcgrad(True, seed=1.5), TypeError, "seed must be an int or a PRNG key"),
        (lambda: bl.mgda(True, iterations=0), ValueError, "iterations must be an int >= 1"),
        (lambda: bl.cagrad(True, c=-0.1), ValueError, "c must be a finite number >= 0"),
        (
            lambda: combine(bl.mgda(True), {"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))}),
            ValueError,
            "same leading axis",
        ),
        (lambda: combine(bl.mgda(True), {"a": jnp.array(1.0)}), ValueError, "same leading axis"),
        (lambda: combine(bl.pcgrad({"a": False}), {"a": jnp.ones((2, 3))}), ValueError, "no para"),
        (lambda: combine(bl.pcgrad(True), {"a": jnp.ones((2, 3), int)}), TypeError, "floating"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


DOT = re.compile(r"stablehlo\.dot_general .*?precision = \[(\w+), (\w+)\]")


@pytest.mark.parametrize("scope", [None, "tensorfloat32", "bfloat16", "BF16_BF16_F32"])
@pytest.mark.parametrize(
    "update, minimum_dots",
    [
        pytest.param(lambda g: combine(bl.pcgrad(True), g), 1, id="pcgrad"),
        pytest.param(lambda g: combine(bl.mgda(True), g), 10, id="mgda"),
        pytest.param(lambda g: combine(bl.cagrad(True), g), 10, id="cagrad"),
        pytest.param(lambda g: bl.min_norm_weights(g[:, :4] + 1.0), 5, id="min_norm_weights"),
    ],
)
def test_every_product_in_the_solvers_is_at_highest_precision(update, minimum_dots, scope):
    """On GPUs float32 matmuls default to TF32, which put 3e-4 errors into the min-norm
    point (the reference tests above failed so on an H100). XLA:CPU computes every dot
    in full float32 whatever the precision says, so the numbers cannot show it here; the
    lowered program can: every dot of the solvers, the Gram matrix included, must ask
    for HIGHEST, also where the caller lowered the default (``jax.default_matmul_precision``)."""
    grads = jnp.ones((4, 10), jnp.float32)
    with jax.default_matmul_precision(scope) if scope else contextlib.nullcontext():
        text = jax.jit(update).lower(grads).as_text()
    precisions = DOT.findall(text)
    assert len(precisions) == text.count("stablehlo.dot_general") >= minimum_dots
    assert set(precisions) == {("HIGHEST", "HIGHEST")}


def cagrad_objective(grads, c):
    """CAGrad's w-objective of the reference code, w ↦ g_wᵀg_0 + √φ‖g_w‖, and √φ."""
    gram = grads @ grads.T
    radius = c * np.sqrt(gram.mean() + 1e-8) + 1e-8
    uniform = np.full(len(grads), 1 / len(grads))

    def objective(w):  # w: (..., T)
        quadratic = np.einsum("...i,ij,...j->...", w, gram, w)
        return w @ gram @ uniform + radius * np.sqrt(quadratic + 1e-8)

    return objective, radius


def cagrad_direction(grads, w, radius, c):
    """d = g_0 + √φ g_w / ‖g_w‖, rescaled by 1/(1 + c²) (the reference's rescale=1)."""
    g_w = w @ grads
    return (grads.mean(0) + radius / (np.linalg.norm(g_w) + 1e-8) * g_w) / (1 + c**2)


def test_cagrad_two_tasks_matches_a_dense_search_of_the_reference_objective(rng):
    c, t = 0.5, np.linspace(0.0, 1.0, 200_001)
    for _ in range(4):
        grads = rng.normal(size=(2, 6)) + rng.normal(size=6)
        objective, radius = cagrad_objective(grads, c)
        best = t[np.argmin(objective(np.stack([t, 1 - t], axis=1)))]
        w = np.array([best, 1 - best])
        got = combine(bl.cagrad(shared=True, c=c), jnp.asarray(grads, jnp.float32))
        expected = cagrad_direction(grads, w, radius, c)
        np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(grads).max())


@pytest.mark.parametrize("num_tasks, dim", [(3, 10), (4, 3), (8, 30)])
def test_cagrad_solves_the_reference_problem_at_least_as_well_as_slsqp(num_tasks, dim, rng):
    """The reference minimises the w-objective with SciPy's SLSQP; ours must do as well."""
    optimize = pytest.importorskip("scipy.optimize")
    c = 0.4
    tx = jax.jit(bl.cagrad(shared=True, c=c).update)
    for _ in range(3):
        grads = rng.normal(size=(num_tasks, dim)) + rng.normal(size=dim) * rng.uniform(0, 2)
        objective, radius = cagrad_objective(grads, c)
        start = np.full(num_tasks, 1 / num_tasks)
        constraint = {"type": "eq", "fun": lambda x: 1 - x.sum()}
        w_ref = optimize.minimize(
            objective, start, bounds=[(0, 1)] * num_tasks, constraints=constraint
        ).x
        got, _ = tx(jnp.asarray(grads, jnp.float32), optax.EmptyState())
        got = np.asarray(got, np.float64) * (1 + c**2)
        # Recover w's objective value from d: d - g_0 = √φ g_w / ‖g_w‖, so the direction
        # is optimal iff min_i g_iᵀd reaches the reference's worst-case improvement.
        reference = cagrad_direction(grads, w_ref, radius, c) * (1 + c**2)
        assert np.min(grads @ got) >= np.min(grads @ reference) - 1e-5 * np.abs(grads).max() ** 2
        assert np.linalg.norm(got - grads.mean(0)) == pytest.approx(radius, rel=1e-4)


def test_cagrad_with_c_zero_is_the_average_gradient_and_rescale_divides(rng):
    grads = rng.normal(size=(3, 5))
    average = combine(bl.cagrad(True, c=0.0), jnp.asarray(grads, jnp.float32))
    np.testing.assert_allclose(average, grads.mean(0), rtol=1e-5, atol=1e-6)
    scaled = combine(bl.cagrad(True, c=0.5), jnp.asarray(grads, jnp.float32))
    unscaled = combine(bl.cagrad(True, c=0.5, rescale=False), jnp.asarray(grads, jnp.float32))
    np.testing.assert_allclose(scaled, np.asarray(unscaled) / 1.25, rtol=1e-6)
