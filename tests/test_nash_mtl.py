"""Nash-MTL against its published update, recomputed in NumPy with SciPy's solver.

The NumPy reference follows the authors' code (``NashMTL`` in AvivNavon/nash-mtl's
``methods/weight_methods.py``) with the convex programs replaced by the equations they
solve, Gᵀ G α = 1/α, solved here by SciPy in float64: α from the shared parameters'
per-task gradients every ``update_every`` steps (kept when there is no
solution), the gradient of Σ α_i l_i on every parameter, the shared part clipped as by
``torch.nn.utils.clip_grad_norm_``.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _per_loss import assert_every_dot_is_highest
from scipy.optimize import minimize

import yoto_jax
from yoto_jax import baselines as bl

nash_module = importlib.import_module("yoto_jax.baselines.nash_mtl")


def scipy_nash(gram):
    """α > 0 with α_i (Mα)_i = 1, by SciPy in float64: trust-region Newton on
    ½ αᵀMα - Σ log α_i in log-coordinates α = α₀ e^u, α₀ = 1/√diag M. Returns α and the
    residual max_i |α_i (Mα)_i - 1|."""
    start = 1 / np.sqrt(np.diag(gram))

    def alpha(u):
        return start * np.exp(u)

    def value(u):
        a = alpha(u)
        return 0.5 * a @ gram @ a - u.sum()

    def jacobian(u):
        a = alpha(u)
        return a * (gram @ a) - 1

    def hessian(u):
        a = alpha(u)
        return np.diag(a * (gram @ a)) + np.outer(a, a) * gram

    zero = np.zeros(len(gram))
    result = minimize(value, zero, jac=jacobian, hess=hessian, method="trust-exact", tol=1e-14)
    a = alpha(result.x)
    return a, np.abs(a * (gram @ a) - 1).max()


def gradients(kind, num_tasks, rng, dim=20):
    """Task gradients (T, dim): random, badly scaled, nearly parallel, or both."""
    if kind in ("parallel", "parallel_scaled"):
        grads = rng.normal(size=dim) + 1e-2 * rng.normal(size=(num_tasks, dim))
    else:
        grads = rng.normal(size=(num_tasks, dim))
    if kind in ("scaled", "parallel_scaled"):  # norms spanning 1e-2..1e3
        grads = (
            grads
            * np.logspace(-2, 3, num_tasks)[:, None]
            / np.linalg.norm(grads, axis=1)[:, None]
            * rng.uniform(0.5, 1.5, size=(num_tasks, 1))
        )
    return grads


# The solver ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "scaled", "parallel", "parallel_scaled"])
@pytest.mark.parametrize("num_tasks", [2, 3, 5, 8])
def test_the_solver_matches_scipy_in_float64(kind, num_tasks, rng):
    solve = jax.jit(bl.nash_mtl_weights)
    for _ in range(5):
        grads = gradients(kind, num_tasks, rng)
        gram = grads @ grads.T
        expected, residual = scipy_nash(gram)
        assert residual < 1e-6  # SciPy solved it
        got = np.asarray(solve(jnp.asarray(gram, jnp.float32)), np.float64)
        np.testing.assert_allclose(got, expected, rtol=2e-5)
        # The defining equations, checked in float64 on the float32 answer, and ‖d‖² = T.
        np.testing.assert_allclose(got * (gram @ got), 1.0, rtol=5e-5)
        np.testing.assert_allclose(np.sum((got @ grads) ** 2), num_tasks, rtol=1e-4)


def test_the_solver_in_closed_form():
    orthogonal = np.diag([1e-2, 1.0, 1e3])  # α_i = 1/‖g_i‖
    np.testing.assert_allclose(bl.nash_mtl_weights(orthogonal**2), [1e2, 1.0, 1e-3], rtol=1e-6)
    g, c = np.array([3.0, -4.0]), 20.0  # parallel g and c g: α = (1, 1/c) / (√2 ‖g‖)
    gram = np.stack([g, c * g]) @ np.stack([g, c * g]).T
    np.testing.assert_allclose(
        bl.nash_mtl_weights(jnp.asarray(gram, jnp.float32)),
        np.array([1.0, 1.0 / c]) / (np.sqrt(2) * 5.0),
        rtol=1e-6,
    )
    np.testing.assert_allclose(bl.nash_mtl_weights(jnp.array([[4.0]])), [0.5])  # T = 1


def test_nearly_opposite_gradients_solve_in_float32():
    """J = [[1, 0], [2 cos a, 2 sin a]], a = π − 1e-2: for T = 2, β_i = 1/√(1 + cos a) on
    the correlation matrix, so α = (1, 1/2) / √(1 + cos a) ≈ (141.4, 70.7). In float32
    within 1e-4 of that float64 truth (the float32 Gram matrix itself moves it by 9e-5);
    with Cβ rounded plainly, the residual test rejected the solution and returned ones."""
    a = np.pi - 1e-2
    jacobian = np.array([[1.0, 0.0], [2 * np.cos(a), 2 * np.sin(a)]])
    expected = np.array([1.0, 0.5]) / np.sqrt(1 + np.cos(a))
    np.testing.assert_allclose(scipy_nash(jacobian @ jacobian.T)[0], expected, rtol=1e-9)
    jacobian32 = jnp.asarray(jacobian, jnp.float32)
    gram = jnp.matmul(jacobian32, jacobian32.T, precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(bl.nash_mtl_weights(gram), expected, rtol=1e-4)


def test_the_solver_in_float64_is_exact(x64, rng):
    grads = gradients("parallel_scaled", 5, rng)
    gram = grads @ grads.T
    got = bl.nash_mtl_weights(jnp.asarray(gram, jnp.float64))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, scipy_nash(gram)[0], rtol=1e-8)


@pytest.mark.parametrize(
    "grads",
    [
        pytest.param([[1.0, 2.0], [0.0, 0.0], [1.0, -1.0]], id="a_zero_gradient"),
        pytest.param([[1.0, 2.0], [-2.0, -4.0]], id="opposite_gradients"),
        pytest.param([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], id="zero_in_the_hull"),
    ],
)
def test_the_solver_falls_back_where_no_positive_solution_exists(grads):
    """No α > 0 solves the equations (the reference's convex programs are infeasible and
    it keeps its previous α): the fallback comes back, ones by default."""
    grads = jnp.asarray(grads)
    gram = grads @ grads.T
    np.testing.assert_array_equal(bl.nash_mtl_weights(gram), np.ones(len(grads)))
    fallback = jnp.arange(1.0, len(grads) + 1)
    np.testing.assert_array_equal(bl.nash_mtl_weights(gram, fallback=fallback), fallback)


def test_too_few_iterations_fall_back_and_enough_converge(rng):
    grads = gradients("random", 8, rng)
    gram = jnp.asarray(grads @ grads.T, jnp.float32)
    np.testing.assert_array_equal(bl.nash_mtl_weights(gram, iterations=1), np.ones(8))
    np.testing.assert_allclose(
        bl.nash_mtl_weights(gram, iterations=20), scipy_nash(np.asarray(gram, float))[0], rtol=2e-5
    )


@pytest.mark.parametrize("scope", [None, "tensorfloat32", "bfloat16"])
def test_every_product_is_at_highest_precision(scope):
    """As for MGDA and CAGrad: on GPUs float32 matmuls default to TF32 unless asked. The
    losses here have no matmul of their own, so every dot of the step is the method's."""
    weighting = bl.nash_mtl(shared={"W": True, "h": False})
    params, state = weighting.init(2)
    model = {"W": jnp.ones((3, 4)), "h": jnp.ones((2, 3, 4))}

    def losses_fn(p):
        return jnp.sum(jnp.tanh(p["W"]) * p["h"], axis=(1, 2))

    def step(model):
        return weighting.step(losses_fn, model, params, state).model_grads

    # Cβ is an elementwise compensated product (no dot): two dots fewer than plain matvecs.
    for fn, arg, minimum in [(step, model, 6), (bl.nash_mtl_weights, jnp.eye(3), 2)]:
        assert_every_dot_is_highest(fn, arg, scope, minimum)


# The published update over several steps, in NumPy ------------------------------------


class Model:
    """A shared layer W and one linear head per task: l_i = s_i mean((tanh(x W) h_i - y_i)²)."""

    def __init__(self, rng, num_tasks=3):
        self.x = rng.normal(size=(12, 4))
        self.y = rng.normal(size=(12, num_tasks))
        self.scales = np.array([1.0, 30.0, 0.05, 3.0][:num_tasks])  # unbalanced tasks
        self.params = {"W": rng.normal(size=(4, 5)) * 0.5, "h": rng.normal(size=(num_tasks, 5))}

    def grads(self, params):
        """Per-task gradients: W (T, 4, 5), h (T, T, 5)."""
        features = np.tanh(self.x @ params["W"])
        residuals = features @ params["h"].T - self.y  # (n, T)
        num_tasks, n = self.y.shape[1], len(self.x)
        grad_w = np.zeros((num_tasks,) + params["W"].shape)
        grad_h = np.zeros((num_tasks,) + params["h"].shape)
        for i in range(num_tasks):
            coefficient = 2 * self.scales[i] * residuals[:, i] / n
            grad_h[i, i] = features.T @ coefficient
            grad_w[i] = self.x.T @ (np.outer(coefficient, params["h"][i]) * (1 - features**2))
        return grad_w, grad_h

    def jax_losses(self, params):
        x, y = jnp.asarray(self.x, jnp.float32), jnp.asarray(self.y, jnp.float32)
        residuals = jnp.tanh(x @ params["W"]) @ params["h"].T - y
        return jnp.asarray(self.scales, jnp.float32) * jnp.mean(residuals**2, axis=0)


def nash_reference(model, steps, lr, update_every=1, max_norm=1.0):
    """The authors' NashMTL step (α from SciPy) then SGD; params and α after each step."""
    params = {k: v.astype(np.float64) for k, v in model.params.items()}
    alpha = np.ones(model.y.shape[1])
    trajectory, alphas = [], []
    for step in range(steps):
        grad_w, grad_h = model.grads(params)
        if step % update_every == 0:
            shared = grad_w.reshape(len(grad_w), -1)
            solution, residual = scipy_nash(shared @ shared.T)
            if residual < 1e-6:
                alpha = solution
        d_w = np.tensordot(alpha, grad_w, axes=1)
        d_h = np.tensordot(alpha, grad_h, axes=1)  # the heads: α_i ∇l_i, not clipped
        if max_norm > 0:
            d_w = d_w * min(1.0, max_norm / (np.linalg.norm(d_w) + 1e-6))
        params = {"W": params["W"] - lr * d_w, "h": params["h"] - lr * d_h}
        trajectory.append(params)
        alphas.append(alpha)
    return trajectory, np.stack(alphas)


SHARED = {"W": True, "h": False}


def run_trainer(model, steps, lr, **options):
    train = yoto_jax.trainer(bl.nash_mtl(SHARED, **options), optax.sgd(lr))
    step = jax.jit(lambda state: train.step(state, model.jax_losses))
    state = train.init(jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), model.params), 3)
    trajectory, alphas = [], []
    for _ in range(steps):
        state, log = step(state)
        trajectory.append(state.params["model"])
        alphas.append(log.weights)
        np.testing.assert_array_equal(train.weights(state), log.weights)
    return trajectory, np.stack(alphas)


def errors(got, expected):
    """Max relative errors of the params' trajectories and of the α's."""
    (got_params, got_alphas), (ref_params, ref_alphas) = got, expected
    param_error = max(
        np.max(np.abs(np.asarray(g[k]) - r[k]) / (np.abs(r[k]) + 1e-2))
        for g, r in zip(got_params, ref_params)
        for k in r
    )
    return param_error, np.max(np.abs(got_alphas - ref_alphas) / ref_alphas)


CASES = {
    "defaults": {},
    "every_2": {"update_every": 2},
    "unclipped_every_3": {"update_every": 3, "max_norm": 0.0},
}
TOLERANCE = 1e-4


@pytest.mark.usefixtures("full_matmul_precision")
@pytest.mark.parametrize("case", list(CASES))
def test_the_trainer_matches_the_reference_over_steps(case, rng):
    model = Model(rng)
    options = CASES[case]
    got = run_trainer(model, 6, 0.05, **options)
    expected = nash_reference(model, 6, 0.05, **options)
    param_error, alpha_error = errors(got, expected)
    assert param_error < TOLERANCE
    assert alpha_error < TOLERANCE
    alphas = expected[1]
    assert alphas.max() / alphas.min() > 10  # the tasks are unbalanced: α matters
    assert not np.allclose(alphas[0], alphas[-1], rtol=1e-3)  # α changed over the run


def orthogonal_solution(original):
    """α_i = 1/‖g_i‖: the equations with the cross terms gᵢ·gⱼ dropped."""
    return lambda gram, iterations: (1 / jnp.sqrt(jnp.diagonal(gram)), jnp.array(True))


def unweighted_heads(original):
    """The heads' gradients summed unweighted (the PCGrad/MGDA convention here)."""

    def weigh(alpha, per_loss):
        out = original(alpha, per_loss)
        return [out[0], jnp.sum(per_loss[1], axis=0)]  # the leaves: W, then h

    return weigh


def clip_everything(original):
    """The heads clipped with the shared parameters."""
    return lambda leaves, flags, max_norm: original(leaves, [True] * len(flags), max_norm)


@pytest.mark.parametrize(
    "name, broken",
    [
        ("_solve", orthogonal_solution),
        ("weighted_leaves", unweighted_heads),
        ("clip_shared_leaves", clip_everything),
    ],
)
def test_a_broken_update_fails_the_reference_comparison(name, broken, rng, monkeypatch):
    model = Model(rng)
    expected = nash_reference(model, 6, 0.05)
    monkeypatch.setattr(nash_module, name, broken(getattr(nash_module, name)))
    param_error, alpha_error = errors(run_trainer(model, 6, 0.05), expected)
    assert max(param_error, alpha_error) > 100 * TOLERANCE


def test_the_weighting_keeps_alpha_where_the_solver_fails(rng):
    """A task whose loss ignores the shared parameters has no shared gradient: no α solves
    the equations, so α stays as it was (ones at first); the heads still get α_i ∇l_i."""
    weighting = bl.nash_mtl(SHARED, max_norm=0.0)
    params, state = weighting.init(2)
    model = {"W": jnp.ones(3), "h": jnp.array([2.0, 3.0])}

    def losses_fn(p):
        return jnp.stack([p["h"][0] * jnp.sum(p["W"]), p["h"][1] ** 2])

    state = state._replace(alpha=jnp.array([0.5, 4.0]))
    result = jax.jit(weighting.step, static_argnums=0)(losses_fn, model, params, state)
    np.testing.assert_array_equal(result.weights, [0.5, 4.0])
    np.testing.assert_allclose(result.model_grads["W"], 0.5 * 2.0 * np.ones(3))
    np.testing.assert_allclose(result.model_grads["h"], [0.5 * 3.0, 4.0 * 6.0])


# The Optax transformation ------------------------------------------------------------


@pytest.mark.usefixtures("full_matmul_precision")
def test_the_transformation_equals_the_weighting_over_steps(rng):
    model = Model(rng)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), model.params)
    tx = optax.chain(bl.nash_mtl_transformation(SHARED, 3, update_every=2), optax.sgd(0.05))

    @jax.jit
    def step(params, opt_state):
        per_loss_grads = jax.jacrev(model.jax_losses)(params)
        grads = jax.tree.map(lambda g: g.sum(0), per_loss_grads)
        updates, opt_state = tx.update(grads, opt_state, params, per_loss_grads=per_loss_grads)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    trajectory, alphas = [], []
    for _ in range(5):
        params, opt_state = step(params, opt_state)
        trajectory.append(params)
        alphas.append(opt_state[0].alpha)
    expected = nash_reference(model, 5, 0.05, update_every=2)
    param_error, alpha_error = errors((trajectory, np.stack(alphas)), expected)
    assert param_error < TOLERANCE and alpha_error < TOLERANCE
    assert int(opt_state[0].count) == 5


def test_the_transformation_in_closed_form():
    per_loss_grads = {"W": jnp.array([[3.0, 0.0], [0.0, 0.1]]), "h": jnp.array([1.0, -2.0])}
    grads = jax.tree.map(lambda g: g.sum(0), per_loss_grads)
    tx = bl.nash_mtl_transformation(SHARED, 2, max_norm=1.0)
    updates, state = tx.update(grads, tx.init(None), per_loss_grads=per_loss_grads)
    np.testing.assert_allclose(state.alpha, [1 / 3.0, 10.0], rtol=1e-6)
    # d = (1, 1), ‖d‖ = √2 > 1: clipped to norm 1 (torch's 1e-6 in the denominator).
    np.testing.assert_allclose(updates["W"], np.ones(2) / (np.sqrt(2) + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(updates["h"], 1 / 3.0 * 1.0 + 10.0 * -2.0, rtol=1e-6)


# Hyperparameters, costs and bad inputs -----------------------------------------------


def test_steps_between_updates_skip_the_per_loss_gradients(rng):
    """update_every=3: the branch with the per-loss gradients and the solver runs
    at steps 0 and 3 only (the solver's debug callback fires there)."""
    model = Model(rng)
    calls = []
    original = nash_module._solve

    def counting(gram, iterations):
        jax.debug.callback(lambda: calls.append(1))
        return original(gram, iterations)

    weighting_every_3 = bl.nash_mtl(SHARED, update_every=3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nash_module, "_solve", counting)
        train = yoto_jax.trainer(weighting_every_3, optax.sgd(0.05))
        step = jax.jit(lambda state: train.step(state, model.jax_losses))
        state = train.init(jax.tree.map(jnp.asarray, model.params), 3)
        for _ in range(6):
            state, _ = step(state)
        jax.effects_barrier()
    assert len(calls) == 2


def test_traced_max_norm_matches_the_concrete_one(rng):
    model = Model(rng)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), model.params)

    def grads(max_norm):
        weighting = bl.nash_mtl(SHARED, max_norm=max_norm)
        return weighting.step(model.jax_losses, params, *weighting.init(3)).model_grads

    batched = jax.jit(jax.vmap(grads))(jnp.array([0.0, 0.1]))
    for i, value in enumerate([0.0, 0.1]):
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(grads(value))):
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(batched["W"][1]) == pytest.approx(0.1, rel=1e-4)


@pytest.mark.parametrize("num_losses", [1, 4])
def test_init_and_weights_have_one_entry_per_loss(num_losses):
    weighting = bl.nash_mtl(True)
    params, state = weighting.init(num_losses)
    assert params == {}
    np.testing.assert_array_equal(weighting.weights(params, state), np.ones(num_losses))
    result = weighting.step(
        lambda w: w * jnp.arange(1.0, num_losses + 1), jnp.float32(1.0), params, state
    )
    assert result.weights.shape == result.losses.shape == (num_losses,)


def first_step(weighting, losses_fn, model=None, jit=True):
    params, state = weighting.init(2)
    model = jnp.ones(3) if model is None else model
    step = lambda m: weighting.step(losses_fn, m, params, state)
    return (jax.jit(step) if jit else step)(model)


def transformation_update(tx, per_loss_grads, updates=None):
    updates = jax.tree.map(lambda g: g.sum(0), per_loss_grads) if updates is None else updates
    return tx.update(updates, tx.init(None), per_loss_grads=per_loss_grads)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: bl.nash_mtl(None), TypeError, "shared must select"),
        (lambda: bl.nash_mtl(True, iterations=0), ValueError, "iterations must be an int >= 1"),
        (
            lambda: bl.nash_mtl(True, update_every=1.0),
            ValueError,
            "update_every must be an int >= 1",
        ),
        (lambda: bl.nash_mtl(True, max_norm=-1.0), ValueError, "max_norm must be a finite"),
        (
            lambda: first_step(bl.nash_mtl(True), lambda w: w),
            ValueError,
            "expected 2",
        ),
        (
            lambda: first_step(
                bl.nash_mtl({"a": False, "b": True}),
                lambda p: jnp.stack([p["a"], 2 * p["a"]]),
                {"a": 1.0},
            ),
            ValueError,
            r"got a dict with keys \['a', 'b'\] where the params are a dict with keys \['a'\]",
        ),
        (
            lambda: first_step(
                bl.nash_mtl({"a": False, "b": False}),
                lambda p: jnp.stack([p["a"], p["b"]]),
                {"a": 1.0, "b": 2.0},
            ),
            ValueError,
            "selects no parameter",
        ),
        (lambda: bl.nash_mtl_weights(jnp.ones((2, 3))), ValueError, "square"),
        (lambda: bl.nash_mtl_weights(jnp.eye(2, dtype=int)), TypeError, "floating"),
        (
            lambda: bl.nash_mtl_weights(jnp.eye(2), fallback=jnp.ones(3)),
            ValueError,
            r"fallback must have shape \(2,\)",
        ),
        (lambda: bl.nash_mtl_weights(jnp.eye(2), iterations=0), ValueError, "iterations"),
        (lambda: bl.nash_mtl_transformation(True, 0), ValueError, "num_losses must be an int"),
        (
            lambda: bl.nash_mtl_transformation(True, 2).update(jnp.ones(2), None),
            TypeError,
            "needs the per-loss gradients",
        ),
        (
            lambda: transformation_update(bl.nash_mtl_transformation(True, 2), jnp.ones((3, 4))),
            ValueError,
            "expected num_losses=2",
        ),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
