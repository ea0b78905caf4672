"""PCGrad, MGDA and CAGrad as Optax transformations, against NumPy references of the
published algorithms, and as weightings of the contract."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _per_loss import assert_every_dot_is_highest

import yoto_jax
from yoto_jax import baselines as bl
from yoto_jax.baselines import _simplex, manipulation


def summed(per_loss):
    """The gradient of the summed loss from the per-loss gradients: the ``updates``."""
    return jax.tree.map(lambda g: jnp.sum(jnp.asarray(g), 0), per_loss)


def combine(tx, per_loss, params=None):
    """The update of one step of ``tx`` from fresh state."""
    return tx.update(summed(per_loss), tx.init(params), params, per_loss_grads=per_loss)[0]


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
    tx = bl.pcgrad_transformation(shared=True)
    got = combine(tx, jnp.asarray(np.stack([g1, g2]), jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    aligned = np.stack([g1, g1 + 0.1])
    got = combine(bl.pcgrad_transformation(True), aligned)
    np.testing.assert_allclose(got, aligned.sum(0), rtol=1e-6)


def test_pcgrad_three_tasks_is_one_of_the_reference_orders_and_the_orders_vary():
    grads = np.array([[1.0, 0.0, 0.2], [-0.8, 1.0, 0.0], [-0.5, -0.9, 0.3]])
    outcomes = all_pcgrad_outcomes(grads)
    assert len({tuple(np.round(o, 6)) for o in outcomes}) > 1  # the order matters here
    tx = bl.pcgrad_transformation(shared=True, seed=3)
    update_fn = jax.jit(tx.update)
    per_loss = jnp.asarray(grads, jnp.float32)
    state, seen = tx.init(None), set()
    for _ in range(12):
        update, state = update_fn(summed(per_loss), state, per_loss_grads=per_loss)
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
    shared = {"trunk": True, "heads": False}
    tx = optax.chain(bl.pcgrad_transformation(shared=shared), optax.sgd(0.1))
    updates, _ = tx.update(summed(per_loss), tx.init(params), params, per_loss_grads=per_loss)
    np.testing.assert_allclose(updates["trunk"], -0.1 * np.array([[0.5, 1.5]]), rtol=1e-6)
    np.testing.assert_allclose(updates["heads"], -0.1 * np.array([0.5, -2.0]), rtol=1e-6)


def test_other_leaves_keep_the_updates_unchanged():
    """The leaves that are not shared get ``updates`` itself, whatever it is."""
    per_loss = {"trunk": jnp.array([[1.0, 0.0], [-1.0, 1.0]]), "heads": jnp.ones((2, 3))}
    updates = {"trunk": jnp.zeros(2), "heads": jnp.array([7.0, -1.0, 0.5])}
    for tx in [
        bl.pcgrad_transformation({"trunk": True, "heads": False}),
        bl.mgda_transformation({"trunk": True, "heads": False}),
        bl.cagrad_transformation({"trunk": True, "heads": False}),
    ]:
        out, _ = tx.update(updates, tx.init(None), per_loss_grads=per_loss)
        np.testing.assert_array_equal(out["heads"], updates["heads"])


def test_the_transformations_give_params_shaped_updates_in_a_chain_with_adam(rng):
    params = {
        "trunk": {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)},
        "heads": jnp.zeros((2, 4)),
    }
    shared = {"trunk": True, "heads": False}
    per_loss = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=(2, *p.shape)), jnp.float32), params
    )
    for transformation in [
        bl.pcgrad_transformation(shared),
        bl.mgda_transformation(shared),
        bl.cagrad_transformation(shared),
    ]:
        tx = optax.chain(transformation, optax.adam(1e-3))
        updates, state = tx.update(
            summed(per_loss), tx.init(params), params, per_loss_grads=per_loss
        )
        assert jax.tree.structure(updates) == jax.tree.structure(params)
        for update, param in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
            assert update.shape == param.shape and update.dtype == param.dtype
        # The same as Adam on the transformation's output.
        combined = combine(transformation, per_loss, params)
        adam = optax.adam(1e-3)
        expected, _ = adam.update(combined, adam.init(params), params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, expected)
        # A second step from the chain's state, the same way.
        updates, _ = tx.update(summed(per_loss), state, params, per_loss_grads=per_loss)
        assert jax.tree.structure(updates) == jax.tree.structure(params)


def min_norm_reference(grads):
    """argmin over the simplex of ‖Σ α_i g_i‖², exactly: the best KKT point over all faces."""
    return min_norm_reference_weights(grads) @ grads


def min_norm_reference_weights(grads):
    """The α of :func:`min_norm_reference`."""
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
    return best


def test_mgda_two_tasks_in_closed_form():
    for g1, g2 in [([1.0, 0.0], [-1.0, 1.0]), ([1.0, 0.0], [3.0, 0.1]), ([0.0, 2.0], [1.0, -1.5])]:
        g1, g2 = np.array(g1), np.array(g2)
        alpha = np.clip((g2 - g1) @ g2 / np.sum((g1 - g2) ** 2), 0.0, 1.0)
        got = combine(bl.mgda_transformation(True), jnp.asarray(np.stack([g1, g2]), jnp.float32))
        np.testing.assert_allclose(got, alpha * g1 + (1 - alpha) * g2, atol=1e-5)


@pytest.mark.parametrize("num_tasks, dim", [(3, 2), (3, 10), (5, 4), (4, 50), (8, 20)])
def test_mgda_matches_the_exact_min_norm_point(num_tasks, dim, rng):
    tx = bl.mgda_transformation(shared=True)
    update_fn = jax.jit(tx.update)
    for _ in range(3):
        grads = rng.normal(size=(num_tasks, dim)) + rng.normal(size=dim)
        expected = min_norm_reference(grads)
        per_loss = jnp.asarray(grads, jnp.float32)
        got, _ = update_fn(summed(per_loss), optax.EmptyState(), per_loss_grads=per_loss)
        scale = np.abs(grads).max()
        np.testing.assert_allclose(got, expected, atol=1e-5 * scale)
        got = np.asarray(got, np.float64)
        for g in grads:  # a common descent direction: no task's loss goes up
            assert g @ got >= -1e-9


def test_mgda_is_zero_at_a_pareto_stationary_point():
    g = np.array([1.0, -2.0, 0.5])
    per_loss = jnp.asarray(np.stack([g, -0.5 * g, 2 * g]), jnp.float32)
    got = combine(bl.mgda_transformation(shared=True), per_loss)
    np.testing.assert_allclose(got, 0.0, atol=1e-6)


def badly_scaled(kind):
    """Gradients of norms 1e3, 1e-2 and 1, nearly parallel (up to sign): projected
    gradient steps of size 1/L, L set by the largest, barely move the small ones'
    weights, so a solver started from uniform weights stays near (0, ½, ½)."""
    rng = np.random.default_rng(1)
    u, v, w1, w3 = np.linalg.qr(rng.normal(size=(10, 10)))[0][:, :4].T
    small = {"edge": -1e-2, "vertex": 1e-2}[kind]  # against, or along, the others
    return np.stack([1e3 * (u + 0.01 * w1), small * (u + 0.13 * v), u + 0.01 * w3])


@pytest.mark.parametrize("kind", ["edge", "vertex"])
def test_mgda_solves_badly_scaled_gradients_exactly(kind):
    """The exact min-norm point is on the edge [g₂, g₃] (norm 1.3e-3) or at g₂ (1e-2);
    from uniform weights, even in float64 over 2000 iterations, the solver ended 0.38
    to 0.49 away, not a descent direction for every task. From the best pair's
    closed-form solution (Sener and Koltun's start) it is exact.

    The reference is certified by the KKT conditions, sufficient for this convex
    problem: x* = Σ α_i g_i with α on the simplex, g_iᵀx* >= ‖x*‖² for every i, with
    equality where α_i > 0: no SciPy (a newer SciPy's SLSQP returned a point far from
    the optimum on the edge problem)."""
    grads = badly_scaled(kind)
    weights = min_norm_reference_weights(grads)
    expected = weights @ grads
    gram = grads @ grads.T
    assert np.all(weights >= 0.0) and abs(weights.sum() - 1.0) <= 1e-15
    dots, squared_norm = grads @ expected, expected @ expected
    tolerance = 1e-12 * np.linalg.norm(grads, axis=1) * np.linalg.norm(expected)
    assert np.all(dots >= squared_norm - tolerance)
    support = weights > 0
    assert np.all(np.abs(dots - squared_norm)[support] <= tolerance[support])
    assert np.linalg.norm(expected) == pytest.approx(
        {"edge": 1.29e-3, "vertex": 1.01e-2}[kind], rel=0.01
    )

    per_loss = jnp.asarray(grads, jnp.float32)
    got = np.asarray(combine(bl.mgda_transformation(True), per_loss), np.float64)
    assert np.linalg.norm(got - expected) <= 1e-3 * np.linalg.norm(expected)
    assert np.min(grads @ got) >= 0.0  # a common descent direction
    alpha = bl.min_norm_weights(per_loss @ per_loss.T)
    np.testing.assert_allclose(np.asarray(alpha, np.float64) @ grads, expected, atol=1e-6)
    with jax.enable_x64(True):
        alpha = bl.min_norm_weights(jnp.asarray(gram))
        np.testing.assert_allclose(np.asarray(alpha) @ grads, expected, atol=1e-12)


def project_to_simplex(x):
    """The Euclidean projection onto the simplex (Held et al. 1974)."""
    descending = np.sort(x)[::-1]
    cumulative = np.cumsum(descending) - 1.0
    count = np.nonzero(descending - cumulative / np.arange(1, len(x) + 1) > 0)[0][-1] + 1
    return np.maximum(x - cumulative[count - 1] / count, 0.0)


def min_norm_fista(gram, start, steps):
    """``steps`` steps of FISTA with adaptive restart on αᵀMα over the simplex, step 1/L
    with L = 2 tr(PMP), P the projection onto 1⊥ (an upper bound on the curvature
    along the simplex: no step backtracks)."""
    curvature = 2 * (np.trace(gram) - gram.sum() / len(gram))
    alpha = point = start
    t = 1.0
    for _ in range(steps):
        new = project_to_simplex(point - 2 * gram @ point / curvature)
        next_t = (1 + np.sqrt(1 + 4 * t**2)) / 2
        restart = (point - new) @ (new - alpha) > 0
        momentum = 0.0 if restart else (t - 1) / next_t
        t = 1.0 if restart else next_t
        alpha, point = new, new + momentum * (new - alpha)
    return alpha


def test_the_simplex_solver_takes_at_most_iterations_steps_and_stops_at_convergence(rng):
    """In float64, against FISTA in NumPy: capped at 10 steps, the solver returns the
    10-step iterate, not yet the optimum; uncapped, it stops by itself well before 250
    steps at the iterate of that many steps, which is the optimum to 1e-12."""
    grads = rng.normal(size=(8, 100))
    expected = min_norm_reference(grads)
    with jax.enable_x64(True):
        gram = jnp.asarray(grads @ grads.T)
        start = np.asarray(_simplex.best_pair(gram))
        capped = _simplex.min_norm_solve(gram, 10)
        solution = _simplex.min_norm_solve(gram, 250)
        weights = bl.min_norm_weights(gram, iterations=10)
    assert int(capped.steps) == int(capped.trips) == 10
    np.testing.assert_allclose(capped.alpha, min_norm_fista(grads @ grads.T, start, 10), atol=1e-12)
    np.testing.assert_array_equal(weights, capped.alpha)
    assert np.linalg.norm(np.asarray(capped.alpha) @ grads - expected) > 1e-3
    steps = int(solution.steps)
    assert steps == int(solution.trips) < 250
    reference = min_norm_fista(grads @ grads.T, start, steps)
    np.testing.assert_allclose(solution.alpha, reference, atol=1e-12)
    np.testing.assert_allclose(np.asarray(solution.alpha) @ grads, expected, atol=1e-12)


@pytest.mark.parametrize(
    "kind, num_tasks, most_trips",
    [("random", 3, 40), ("nearly parallel", 3, 30), ("random", 8, 150)],
)
def test_the_simplex_solvers_stop_after_few_trips_at_full_accuracy(
    kind, num_tasks, most_trips, rng
):
    """On GPUs every trip of the solvers' while loop costs tens of µs (a device-to-host
    copy of the predicate, kernel launches of its own): the fixed 250 steps, each with a
    nested backtracking loop, made MGDA and CAGrad 15 ms a step on an H100. Converged
    at rounding level, they stop: about 20 to 30 trips for T = 3 (250 to 253 before),
    50 to 80 for T = 8, and MGDA stays within float32 precision of the exact point."""
    c = 0.4
    min_norm_solve = jax.jit(_simplex.min_norm_solve, static_argnums=1)
    cagrad_solve = jax.jit(manipulation._cagrad_solve, static_argnums=2)
    for _ in range(3):
        grads = rng.normal(size=(num_tasks, 1000))
        if kind == "nearly parallel":
            grads = rng.normal(size=1000) + 0.05 * grads
        gram = jnp.asarray(grads @ grads.T, jnp.float32)
        mgda = min_norm_solve(gram, 250)
        assert int(mgda.trips) < most_trips
        got = np.asarray(mgda.alpha, np.float64) @ grads
        np.testing.assert_allclose(got, min_norm_reference(grads), atol=1e-5 * np.abs(grads).max())
        radius = c * jnp.sqrt(jnp.mean(gram) + 1e-8) + 1e-8
        assert int(cagrad_solve(gram, radius, 250).trips) < most_trips


@pytest.mark.parametrize("kind", ["edge", "vertex"])
def test_cagrad_solves_badly_scaled_gradients(kind):
    """Norms 1e3, 1e-2 and 1: the w-objective's optimum is the vertex of the small
    gradient (KKT: its partial derivative is the smallest). Step sizes from tr(A)
    (set by the largest gradient) left the solver far from it after 250 steps (the
    objective 26 to 61 times too large); from the curvature along the simplex it
    reaches the vertex and stops."""
    grads = badly_scaled(kind)
    c = 0.4
    gram = jnp.asarray(grads @ grads.T, jnp.float32)
    radius = c * jnp.sqrt(jnp.mean(gram) + 1e-8) + 1e-8
    solution = manipulation._cagrad_solve(gram, radius, 250)
    assert int(solution.steps) < 250
    np.testing.assert_array_equal(solution.alpha, [0.0, 1.0, 0.0])
    _, radius = cagrad_objective(grads, c)
    gram = grads @ grads.T
    partial = gram.mean(1) + radius * gram[1] / np.sqrt(gram[1, 1] + 1e-8)
    assert np.argmin(partial) == 1


def test_a_single_loss_is_its_own_gradient():
    per_loss = jnp.array([[1.0, -2.0, 0.5]])
    for tx in [bl.pcgrad_transformation(True), bl.mgda_transformation(True)]:
        np.testing.assert_allclose(combine(tx, per_loss), per_loss[0], rtol=1e-6)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: bl.pcgrad_transformation(None), TypeError, "shared must select"),
        (lambda: bl.pcgrad(None), TypeError, "shared must select"),
        (
            lambda: bl.pcgrad_transformation(True, seed=1.5),
            TypeError,
            "seed must be an int or a PRNG key",
        ),
        (
            lambda: bl.mgda_transformation(True, iterations=0),
            ValueError,
            "iterations must be an int >= 1",
        ),
        (lambda: bl.mgda(True, iterations=0), ValueError, "iterations must be an int >= 1"),
        (lambda: bl.cagrad_transformation(True, c=-0.1), ValueError, "c must be a finite number"),
        (lambda: bl.cagrad(True, c=-0.1), ValueError, "c must be a finite number >= 0"),
        (lambda: bl.mgda(True).init(0), ValueError, "num_losses must be an int >= 1"),
        (lambda: bl.pcgrad(True).init(2.0), ValueError, "num_losses must be an int >= 1"),
        (
            lambda: combine(
                bl.mgda_transformation(True), {"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))}
            ),
            ValueError,
            "same leading axis",
        ),
        (
            lambda: bl.mgda_transformation(True).update(
                {"a": jnp.array(1.0)}, optax.EmptyState(), per_loss_grads={"a": jnp.array(1.0)}
            ),
            ValueError,
            "same leading axis",
        ),
        (
            lambda: bl.mgda_transformation(True).update(
                {"a": jnp.ones(3)}, optax.EmptyState(), per_loss_grads={"a": jnp.ones((2, 4))}
            ),
            ValueError,
            r"per_loss_grads\['a'\] has shape \(2, 4\) for an update of shape \(3,\)",
        ),
        (
            lambda: bl.cagrad_transformation(True).update(
                {"a": jnp.ones(3)}, optax.EmptyState(), per_loss_grads={"b": jnp.ones((2, 3))}
            ),
            ValueError,
            "must have the structure of updates",
        ),
        (
            lambda: bl.mgda_transformation(True).update({"a": jnp.ones(3)}, optax.EmptyState()),
            TypeError,
            r"mgda_transformation's update needs the per-loss gradients.*per_loss_grads=",
        ),
        (
            lambda: combine(bl.pcgrad_transformation({"a": False}), {"a": jnp.ones((2, 3))}),
            ValueError,
            "no para",
        ),
        (
            lambda: combine(bl.pcgrad_transformation(True), {"a": jnp.ones((2, 3), int)}),
            TypeError,
            "floating",
        ),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_chain_without_the_per_loss_gradients_fails_at_trace_time():
    params = {"w": jnp.zeros(2)}
    tx = optax.chain(bl.pcgrad_transformation(True), optax.adam(1e-3))
    with pytest.raises(TypeError, match="per_loss_grads="):
        jax.jit(tx.update)(params, tx.init(params), params)


@pytest.mark.parametrize("scope", [None, "tensorfloat32", "bfloat16", "BF16_BF16_F32"])
@pytest.mark.parametrize(
    "update, minimum_dots",
    [
        pytest.param(lambda g: combine(bl.pcgrad_transformation(True), g), 1, id="pcgrad"),
        pytest.param(lambda g: combine(bl.mgda_transformation(True), g), 10, id="mgda"),
        pytest.param(lambda g: combine(bl.cagrad_transformation(True), g), 10, id="cagrad"),
        pytest.param(lambda g: bl.min_norm_weights(g[:, :4] + 1.0), 5, id="min_norm_weights"),
    ],
)
def test_every_product_in_the_solvers_is_at_highest_precision(update, minimum_dots, scope):
    """On GPUs float32 matmuls default to TF32, which put 3e-4 errors into the min-norm
    point (the reference tests above failed so on an H100). XLA:CPU computes every dot
    in full float32 whatever the precision says, so the numbers cannot show it here; the
    lowered program can: every dot of the solvers, the Gram matrix included, must ask
    for HIGHEST, also where the caller lowered the default (``jax.default_matmul_precision``)."""
    assert_every_dot_is_highest(update, jnp.ones((4, 10), jnp.float32), scope, minimum_dots)


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
        got = combine(bl.cagrad_transformation(shared=True, c=c), jnp.asarray(grads, jnp.float32))
        expected = cagrad_direction(grads, w, radius, c)
        np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(grads).max())


@pytest.mark.parametrize("num_tasks, dim", [(3, 10), (4, 3), (8, 30)])
def test_cagrad_solves_the_reference_problem_at_least_as_well_as_slsqp(num_tasks, dim, rng):
    """The reference minimises the w-objective with SciPy's SLSQP; ours must do as well."""
    optimize = pytest.importorskip("scipy.optimize")
    c = 0.4
    tx = bl.cagrad_transformation(shared=True, c=c)
    update_fn = jax.jit(tx.update)
    for _ in range(3):
        grads = rng.normal(size=(num_tasks, dim)) + rng.normal(size=dim) * rng.uniform(0, 2)
        objective, radius = cagrad_objective(grads, c)
        start = np.full(num_tasks, 1 / num_tasks)
        constraint = {"type": "eq", "fun": lambda x: 1 - x.sum()}
        w_ref = optimize.minimize(
            objective, start, bounds=[(0, 1)] * num_tasks, constraints=constraint
        ).x
        per_loss = jnp.asarray(grads, jnp.float32)
        got, _ = update_fn(summed(per_loss), optax.EmptyState(), per_loss_grads=per_loss)
        got = np.asarray(got, np.float64) * (1 + c**2)
        # Recover w's objective value from d: d - g_0 = √φ g_w / ‖g_w‖, so the direction
        # is optimal iff min_i g_iᵀd reaches the reference's worst-case improvement.
        reference = cagrad_direction(grads, w_ref, radius, c) * (1 + c**2)
        assert np.min(grads @ got) >= np.min(grads @ reference) - 1e-5 * np.abs(grads).max() ** 2
        assert np.linalg.norm(got - grads.mean(0)) == pytest.approx(radius, rel=1e-4)


def test_cagrad_with_c_zero_is_the_average_gradient_and_rescale_divides(rng):
    grads = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    average = combine(bl.cagrad_transformation(True, c=0.0), grads)
    np.testing.assert_allclose(average, np.asarray(grads).mean(0), rtol=1e-5, atol=1e-6)
    scaled = combine(bl.cagrad_transformation(True, c=0.5), grads)
    unscaled = combine(bl.cagrad_transformation(True, c=0.5, rescale=False), grads)
    np.testing.assert_allclose(scaled, np.asarray(unscaled) / 1.25, rtol=1e-6)


@pytest.mark.parametrize("rescale", [True, False])
def test_cagrad_scale_to_sum_multiplies_by_the_number_of_losses(rescale, rng):
    """The reference codes' scale (``newgrad * 3`` for 3 tasks, Nash-MTL's ``* n_tasks``):
    c = 0 gives the sum of the gradients, as the other leaves get."""
    grads = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    total = combine(bl.cagrad_transformation(True, c=0.0, scale_to_sum=True), grads)
    np.testing.assert_allclose(total, np.asarray(grads).sum(0), rtol=1e-5, atol=1e-6)
    mean_scale = combine(bl.cagrad_transformation(True, c=0.4, rescale=rescale), grads)
    sum_scale = combine(
        bl.cagrad_transformation(True, c=0.4, rescale=rescale, scale_to_sum=True), grads
    )
    np.testing.assert_allclose(sum_scale, 3 * np.asarray(mean_scale), rtol=1e-6, atol=4e-6)


def test_cagrad_accepts_a_traced_radius(rng):
    """c may be traced (a grid vmapped over radii); c = 0 must give the average, c > 0
    the untraced direction: the value is used, not only accepted."""
    grads = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    directions = jax.vmap(lambda c: combine(bl.cagrad_transformation(True, c=c), grads))(
        jnp.array([0.0, 0.4])
    )
    np.testing.assert_allclose(directions[0], np.asarray(grads).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        directions[1], combine(bl.cagrad_transformation(True, c=0.4), grads), rtol=1e-5
    )
    assert np.abs(directions[1] - directions[0]).max() > 1e-2


# The weighting contract: pcgrad, mgda and cagrad as yoto_jax.Weighting.

SHARED = {"trunk": True, "heads": False}


def small_model(rng, num_losses=3):
    """A shared tanh trunk and one linear head per loss; the losses, primary first."""
    x = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(num_losses, 6)), jnp.float32)
    params = {
        "trunk": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
        "heads": jnp.asarray(rng.normal(size=(num_losses, 4)), jnp.float32),
    }

    def losses_fn(params):
        hidden = jnp.tanh(x @ params["trunk"])
        return jnp.mean((params["heads"] @ hidden.T - y) ** 2, axis=1)

    return params, losses_fn


def empty_state(key):
    return optax.EmptyState()


FACTORIES = [
    pytest.param(
        lambda: bl.pcgrad(SHARED),
        lambda: bl.pcgrad_transformation(SHARED),
        bl.PCGradState,
        id="pcgrad",
    ),
    pytest.param(
        lambda: bl.mgda(SHARED), lambda: bl.mgda_transformation(SHARED), empty_state, id="mgda"
    ),
    pytest.param(
        lambda: bl.cagrad(SHARED),
        lambda: bl.cagrad_transformation(SHARED),
        empty_state,
        id="cagrad",
    ),
    pytest.param(
        lambda: bl.cagrad(SHARED, c=0.4, rescale=False, scale_to_sum=True),
        lambda: bl.cagrad_transformation(SHARED, c=0.4, rescale=False, scale_to_sum=True),
        empty_state,
        id="cagrad-scale_to_sum",
    ),
    pytest.param(
        lambda: bl.mgda(lambda tree: {"trunk": True, "heads": False}, iterations=100),
        lambda: bl.mgda_transformation(SHARED, iterations=100),
        empty_state,
        id="mgda-callable-shared",
    ),
]


@pytest.mark.parametrize("factory, transformation, tx_state", FACTORIES)
def test_the_weighting_step_is_the_transformation_on_the_per_loss_gradients(
    factory, transformation, tx_state, rng
):
    params, losses_fn = small_model(rng)
    weighting = factory()
    weighting_params, state = weighting.init(3)
    assert weighting_params == {} and jax.tree.leaves(state) == []
    key = jax.random.key(7)
    result = weighting.step(losses_fn, params, weighting_params, state, key=key)

    # By hand: the transformation on jax.jacrev of the losses and their sum.
    per_loss = jax.jacrev(losses_fn)(params)
    expected, _ = transformation().update(
        summed(per_loss), tx_state(key), params, per_loss_grads=per_loss
    )
    # float32 gradients of order 1, summed in different orders: a few ulps.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-6),
        result.model_grads,
        expected,
    )
    # The heads get their own loss's gradient: the plain sum.
    np.testing.assert_allclose(
        result.model_grads["heads"],
        jax.grad(lambda p: losses_fn(p).sum())(params)["heads"],
        rtol=2e-6,
        atol=2e-6,
    )
    np.testing.assert_allclose(result.losses, losses_fn(params), rtol=1e-6)
    np.testing.assert_array_equal(result.weights, np.ones(3))
    np.testing.assert_array_equal(weighting.weights(weighting_params, state), np.ones(3))
    assert result.grads == {} and result.state == state
    assert weighting.after_update(losses_fn, params, result) == state
    tx = optax.adam(1e-3)
    assert weighting.optimizer(tx) is tx

    jitted = jax.jit(weighting.step, static_argnums=0)(
        losses_fn, params, weighting_params, state, key=key
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        jitted.model_grads,
        result.model_grads,
    )
    np.testing.assert_allclose(jitted.losses, result.losses, rtol=1e-6)


def test_pcgrad_draws_its_orders_from_the_step_key(rng):
    params, losses_fn = small_model(rng)
    weighting = bl.pcgrad(SHARED)
    weighting_params, state = weighting.init(3)
    with pytest.raises(ValueError, match="PCGrad is random: pass a PRNG key"):
        weighting.step(losses_fn, params, weighting_params, state)
    with pytest.raises(ValueError, match="PCGrad is random"):
        jax.jit(lambda p: weighting.step(losses_fn, p, weighting_params, state))(params)
    step = jax.jit(lambda key: weighting.step(losses_fn, params, {}, state, key=key).model_grads)
    first, again = step(jax.random.key(0)), step(jax.random.key(0))
    np.testing.assert_array_equal(first["trunk"], again["trunk"])


def test_the_weightings_reject_a_wrong_number_of_losses(rng):
    params, losses_fn = small_model(rng)
    weighting = bl.mgda(SHARED)
    with pytest.raises(ValueError, match="expected 2"):
        weighting.step(losses_fn, params, *weighting.init(2))


@pytest.mark.parametrize("factory", [bl.pcgrad, bl.mgda, bl.cagrad])
def test_the_weightings_train_under_the_trainer(factory, rng):
    params, losses_fn = small_model(rng)
    train = yoto_jax.trainer(factory(SHARED), optax.sgd(0.05))
    state = train.init(params, num_losses=3)
    step = jax.jit(lambda state, key: train.step(state, losses_fn, key))
    first = losses_fn(params)
    for i in range(30):
        state, log = step(state, jax.random.key(i))
    assert log.losses.shape == (3,) and jnp.all(log.weights == 1.0)
    np.testing.assert_array_equal(train.weights(state), np.ones(3))
    assert float(jnp.sum(losses_fn(state.params["model"]))) < float(jnp.sum(first))


def test_a_callable_shared_mask_is_given_the_params_tree_by_every_method(rng):
    """``shared=callable`` sees a tree shaped like the model's params, in GradNorm as in
    MGDA: a mask on ``leaf.ndim`` selects the same leaves in both (GradNorm once gave it
    the per-loss gradients, whose leading T axis moved every leaf's ndim)."""
    x = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
    params = {
        "trunk": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
        "heads": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
    }

    def losses_fn(params):
        hidden = jnp.tanh(x @ params["trunk"] + params["bias"])
        return jnp.mean((params["heads"] @ hidden.T - y) ** 2, axis=1)

    def vectors(tree):  # the bias, the only vector among the params
        return jax.tree.map(lambda leaf: leaf.ndim == 1, tree)

    def step(weighting):
        result = weighting.step(losses_fn, params, *weighting.init(3))
        return result.model_grads, result.grads

    bias = {"trunk": False, "bias": True, "heads": False}
    for factory in (bl.gradnorm, bl.mgda):
        jax.tree.map(np.testing.assert_array_equal, step(factory(vectors)), step(factory(bias)))
    # The mask matters: GradNorm's logits move otherwise on the trunk's norms.
    on_bias = step(bl.gradnorm(bias))[1]["gradnorm_logits"]
    on_trunk = step(bl.gradnorm({"trunk": True, "bias": False, "heads": False}))[1]
    assert not np.allclose(on_trunk["gradnorm_logits"], on_bias)
