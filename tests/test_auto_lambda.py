"""Auto-λ against its published update, recomputed in NumPy, and against the unrolled grad.

The NumPy reference follows the reference code (``auto_lambda.py``, ``trainer_dense.py``
of lorenmt/auto-lambda): the virtual SGD step with the current weights, the validation
gradient there, the hypergradient -α ∇l_j(θ)·d, one step of torch's Adam on the
weights, and then the model's step with the *new* weights.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import yoto_jax
from yoto_jax import baselines as bl

auto_lambda_module = importlib.import_module("yoto_jax.baselines.auto_lambda")


def recording_tx():
    """A λ optimizer that leaves λ alone and keeps the gradient it got in its state."""
    return optax.GradientTransformation(
        lambda params: jnp.zeros_like(params), lambda g, state, params=None: (0 * g, g)
    )


# A small nonlinear model with a tree of params: a shared layer and one head per loss. ----


def mlp_problem(rng, num_losses=3, dtype=np.float32):
    x, x_val = rng.normal(size=(8, 3)), rng.normal(size=(6, 3))
    y, y_val = rng.normal(size=(8, num_losses)), rng.normal(size=(6, num_losses))
    params = {"W": rng.normal(size=(3, 4)), "heads": rng.normal(size=(4, num_losses))}
    params = jax.tree.map(lambda p: jnp.asarray(p, dtype), params)
    x, y, x_val, y_val = (jnp.asarray(a, dtype) for a in (x, y, x_val, y_val))
    scales = jnp.asarray([1.0, 3.0, 0.3][:num_losses], dtype)

    def losses(p, x, y):
        pred = jnp.tanh(x @ p["W"]) @ p["heads"]
        return scales * jnp.mean((pred - y) ** 2, axis=0)

    return params, (lambda p: losses(p, x, y)), (lambda p: losses(p, x_val, y_val)[0])


def unrolled_hypergradient(losses_fn, val_loss_fn, params, weights, alpha, weight_decay=0.0):
    """d/dλ L_val(θ - α (∇_θ Σ λ_j l_j(θ) + w θ)), by differentiating the unrolled step."""

    def unrolled(weights):
        grads = jax.grad(lambda p: jnp.dot(weights, losses_fn(p)))(params)
        virtual = jax.tree.map(lambda p, g: p - alpha * (g + weight_decay * p), params, grads)
        return val_loss_fn(virtual)

    return jax.grad(unrolled)(weights)


def step_hypergradient(method, losses_fn, params, key=None):
    """The gradient the step hands λ's optimizer (recorded by ``recording_tx``)."""
    _, state = method.init(3)
    result = jax.jit(lambda p: method.step(losses_fn, p, {}, state, key=key))(params)
    return result.state.opt_state


@pytest.mark.parametrize("alpha, weight_decay", [(0.1, 0.0), (0.5, 1e-2), (2.0, 0.0)])
def test_the_step_hypergradient_equals_the_unrolled_grad(alpha, weight_decay, rng):
    """The cheap form, -α jvp(losses, d), is the exact gradient of the unrolled step."""
    params, losses_fn, val_loss_fn = mlp_problem(rng)
    method = bl.auto_lambda(
        val_loss_fn,
        learning_rate=alpha,
        weight_init=0.3,
        weight_decay=weight_decay,
        meta_tx=recording_tx(),
    )
    got = step_hypergradient(method, losses_fn, params)
    weights = jnp.full((3,), 0.3)
    expected = unrolled_hypergradient(losses_fn, val_loss_fn, params, weights, alpha, weight_decay)
    assert np.abs(expected).min() > 1e-3  # every weight gets a real gradient
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


def test_the_hypergradient_is_exact_in_float64(x64, rng):
    """On a float64 model the two agree to the final rounding of the hypergradient to λ's
    float32: no approximation is left (the float32 model above gives 2e-5). λ is float32:
    0.3 is float32(0.3) in both."""
    params, losses_fn, val_loss_fn = mlp_problem(rng, dtype=np.float64)
    method = bl.auto_lambda(val_loss_fn, learning_rate=0.7, weight_init=0.3, meta_tx=recording_tx())
    got = step_hypergradient(method, losses_fn, params)
    expected = unrolled_hypergradient(
        losses_fn, val_loss_fn, params, jnp.full((3,), np.float32(0.3), jnp.float64), 0.7
    )
    assert expected.dtype == jnp.float64
    np.testing.assert_allclose(got, expected, rtol=np.finfo(np.float32).eps / 2, atol=0)


def test_the_finite_difference_option_is_the_references_central_difference(x64, rng):
    """finite_difference=0.01: (l(θ + εd) - l(θ - εd)) / 2ε, ε = 0.01/‖d‖, computed here
    in NumPy on the same model; it differs from the exact product by O(ε²)."""
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
    x_val, y_val = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    heads = rng.normal(size=(3, 3))  # fixed read-outs c_j: pred_j = tanh(x θ) c_j
    theta = rng.normal(size=(3, 3))
    alpha, lam = 0.5, np.full(3, np.float32(0.3), np.float64)

    def np_losses(t, x, y):
        return np.mean((np.tanh(x @ t) @ heads.T - y) ** 2, axis=0)

    def np_grads(t, x, y):  # ∇_t l_j for each j, shape (3, 3, 3)
        h = np.tanh(x @ t)
        residuals = h @ heads.T - y
        return np.stack(
            [
                x.T @ ((2 / len(x)) * np.outer(residuals[:, j], heads[j]) * (1 - h**2))
                for j in range(3)
            ]
        )

    virtual = theta - alpha * np.tensordot(lam, np_grads(theta, x, y), axes=1)
    d = np_grads(virtual, x_val, y_val)[0]  # the validation loss: the primary's
    eps = 0.01 / np.linalg.norm(d)
    central = (np_losses(theta + eps * d, x, y) - np_losses(theta - eps * d, x, y)) / (2 * eps)
    exact = np.tensordot(np_grads(theta, x, y), d, axes=((1, 2), (0, 1)))

    def jax_losses(t, x, y):
        return jnp.mean((jnp.tanh(jnp.asarray(x) @ t) @ heads.T - jnp.asarray(y)) ** 2, axis=0)

    def losses_fn(t):
        return jax_losses(t, x, y)

    def val_loss_fn(t):
        return jax_losses(t, x_val, y_val)[0]

    def hypergradient(**options):
        method = bl.auto_lambda(
            val_loss_fn, learning_rate=alpha, weight_init=0.3, meta_tx=recording_tx(), **options
        )
        return step_hypergradient(method, losses_fn, jnp.asarray(theta))

    assert np.abs(exact).min() > 1e-2  # every loss is coupled to the validation loss
    # float32 λ: the hypergradient is rounded to float32 at the end.
    np.testing.assert_allclose(hypergradient(finite_difference=0.01), -alpha * central, rtol=1e-7)
    np.testing.assert_allclose(hypergradient(), -alpha * exact, rtol=1e-7)
    assert 1e-7 < np.abs(central - exact).max() < 1e-3  # the central difference's error


# The published update over several steps, in NumPy ------------------------------------


class Regression:
    """T = 3 linear-regression losses of one parameter vector, and validation batches."""

    def __init__(self, rng, num_val_batches=4):
        self.xs = rng.normal(size=(3, 10, 4))
        self.ys = rng.normal(size=(3, 10)) + np.array([[1.0], [-1.0], [0.5]])
        self.x_val = rng.normal(size=(num_val_batches, 7, 4))
        self.y_val = rng.normal(size=(num_val_batches, 7)) + 1.0

    def losses(self, theta):
        return np.mean((np.einsum("tni,i->tn", self.xs, theta) - self.ys) ** 2, axis=1)

    def grads(self, theta):  # (3, 4)
        residuals = np.einsum("tni,i->tn", self.xs, theta) - self.ys
        return 2 * np.einsum("tn,tni->ti", residuals, self.xs) / self.xs.shape[1]

    def val_grad(self, theta, batch):
        x, y = self.x_val[batch], self.y_val[batch]
        return 2 * x.T @ (x @ theta - y) / len(y)

    def jax_losses(self, theta):
        xs, ys = jnp.asarray(self.xs, jnp.float32), jnp.asarray(self.ys, jnp.float32)
        return jnp.mean((jnp.einsum("tni,i->tn", xs, theta) - ys) ** 2, axis=1)

    def jax_val_loss(self, theta, batch):
        x = jnp.asarray(self.x_val, jnp.float32)[batch]
        y = jnp.asarray(self.y_val, jnp.float32)[batch]
        return jnp.mean((x @ theta - y) ** 2)


def val_batch(key, num_batches):
    """The validation batch a step's key draws (used by the JAX and the NumPy runs alike)."""
    return jax.random.randint(key, (), 0, num_batches)


def auto_lambda_reference(
    problem, theta, keys, lr_at, meta_lr, init=0.1, update_every=1, weight_decay=0.0
):
    """Auto-λ (lorenmt/auto-lambda) with plain SGD: per step, if an update is due, the
    virtual step, the validation gradient, the hypergradient and torch's Adam on λ; then
    the model's SGD step on Σ λ_j l_j with the new λ. Returns θ and λ after each step."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    lam = np.full(3, init)
    m, v, t = np.zeros(3), np.zeros(3), 0
    thetas, weights = [], []
    for step, key in enumerate(keys):
        alpha = lr_at(step)
        grads = problem.grads(theta)
        if step % update_every == 0:
            virtual = theta - alpha * (lam @ grads + weight_decay * theta)
            d = problem.val_grad(virtual, int(val_batch(key, len(problem.x_val))))
            g = -alpha * (grads @ d)
            t += 1
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            lam = lam - meta_lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        theta = theta - alpha * (lam @ grads)
        thetas.append(theta)
        weights.append(lam)
    return np.stack(thetas), np.stack(weights)


def run_auto_lambda(problem, theta, keys, schedule, meta_lr, **options):
    """The same run through yoto_jax.trainer, its step jitted; θ and λ after each step."""
    method = bl.auto_lambda(
        lambda p, key: problem.jax_val_loss(p, val_batch(key, len(problem.x_val))),
        learning_rate=schedule,
        meta_learning_rate=meta_lr,
        val_takes_key=True,
        **options,
    )
    train = yoto_jax.trainer(method, optax.sgd(schedule))
    step = jax.jit(lambda state, key: train.step(state, problem.jax_losses, key))
    state = train.init(jnp.asarray(theta, jnp.float32), 3)
    thetas, weights = [], []
    for key in keys:
        state, log = step(state, key)
        thetas.append(state.params["model"])
        weights.append(log.weights)
        np.testing.assert_array_equal(train.weights(state), log.weights)
    return np.stack(thetas), np.stack(weights)


REFERENCE_CASES = {
    "defaults": {"lr": 0.05, "meta_lr": 1e-4, "options": {}},
    "fast_meta": {"lr": 0.05, "meta_lr": 0.05, "options": {}},
    "every_2_with_decay": {
        "lr": 0.2,
        "meta_lr": 0.05,
        "options": {"update_every": 2, "weight_decay": 0.01, "weight_init": 0.5},
    },
}


TOLERANCE = 1e-4  # relative, on θ and λ


def compare_with_reference(case, rng):
    """Max relative errors of θ and λ against the NumPy reference over 8 steps."""
    problem = Regression(rng)
    theta = rng.normal(size=4)
    keys = [jax.random.key(i) for i in range(8)]
    spec = REFERENCE_CASES[case]
    schedule = optax.cosine_decay_schedule(spec["lr"], 8)  # the reference's cosine-annealed lr
    options = spec["options"]
    got_thetas, got_weights = run_auto_lambda(
        problem, theta, keys, schedule, spec["meta_lr"], **options
    )
    ref_thetas, ref_weights = auto_lambda_reference(
        problem,
        theta,
        keys,
        lambda i: float(schedule(i)),
        spec["meta_lr"],
        init=options.get("weight_init", 0.1),
        update_every=options.get("update_every", 1),
        weight_decay=options.get("weight_decay", 0.0),
    )
    assert len({int(val_batch(key, 4)) for key in keys}) > 1  # the validation batch changes
    theta_error = np.max(np.abs(got_thetas - ref_thetas) / (np.abs(ref_thetas) + 1e-3))
    weight_error = np.max(np.abs(got_weights - ref_weights) / np.abs(ref_weights))
    moved = np.abs(ref_weights[-1] - ref_weights[0]).max() / np.abs(ref_weights[0]).max()
    return theta_error, weight_error, moved


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_weights_and_model_over_steps_match_the_reference_in_the_trainer(case, rng):
    theta_error, weight_error, moved = compare_with_reference(case, rng)
    assert theta_error < TOLERANCE
    assert weight_error < TOLERANCE
    if case != "defaults":
        assert moved > 0.05  # λ moved: the comparison says something about its update


def sign_flipped(original):
    return lambda *args: -original(*args)


def without_lookahead(original):
    """The validation gradient taken at θ instead of θ' = θ - α Σ λ_j ∇l_j(θ)."""

    def hypergradient(losses_fn, params, train_grad, val_grad_fn, lr, weight_decay, fd):
        zero = jax.tree.map(jnp.zeros_like, train_grad)
        return original(losses_fn, params, zero, val_grad_fn, lr, 0.0, fd)

    return hypergradient


@pytest.mark.parametrize("broken", [sign_flipped, without_lookahead])
def test_a_broken_update_fails_the_reference_comparison(broken, rng, monkeypatch):
    """The reference comparison catches a flipped hypergradient and a dropped lookahead."""
    original = auto_lambda_module._hypergradient
    monkeypatch.setattr(auto_lambda_module, "_hypergradient", broken(original))
    _, weight_error, _ = compare_with_reference("every_2_with_decay", rng)
    assert weight_error > 100 * TOLERANCE


# The validation batch per step, without a key -------------------------------------------


def test_a_weighting_rebuilt_inside_the_jitted_step_equals_the_keyed_validation(rng):
    """Closing over each step's validation batch and rebuilding the weighting inside the
    jitted step gives the run of ``val_takes_key``."""
    problem = Regression(rng)
    theta = jnp.asarray(rng.normal(size=4), jnp.float32)
    keys = [jax.random.key(i) for i in range(6)]
    lr, meta_lr = 0.05, 0.05

    @jax.jit
    def step(state, batch):
        weighting = bl.auto_lambda(
            lambda p: problem.jax_val_loss(p, batch), learning_rate=lr, meta_learning_rate=meta_lr
        )
        return yoto_jax.trainer(weighting, optax.sgd(lr)).step(state, problem.jax_losses)

    placeholder = bl.auto_lambda(lambda p: 0.0, learning_rate=lr, meta_learning_rate=meta_lr)
    state = yoto_jax.trainer(placeholder, optax.sgd(lr)).init(theta, 3)
    weights = []
    for key in keys:
        state, log = step(state, val_batch(key, 4))
        weights.append(log.weights)
    _, keyed = run_auto_lambda(problem, theta, keys, lr, meta_lr)
    np.testing.assert_allclose(weights, keyed, rtol=1e-6)
    assert step._cache_size() == 1  # one compilation for all the batches


# Hyperparameters, costs and bad inputs -----------------------------------------------


@pytest.mark.usefixtures("full_matmul_precision")
def test_traced_hyperparameters_match_the_concrete_ones(rng):
    problem = Regression(rng)
    theta = jnp.asarray(rng.normal(size=4), jnp.float32)

    def run(lr, meta_lr, decay):
        method = bl.auto_lambda(
            lambda p: problem.jax_val_loss(p, 0),
            learning_rate=lr,
            meta_learning_rate=meta_lr,
            weight_decay=decay,
            weight_init=0.2,
        )
        train = yoto_jax.trainer(method, optax.sgd(0.05))
        state = train.init(theta, 3)
        for _ in range(3):
            state, _ = train.step(state, problem.jax_losses)
        return train.weights(state)

    values = (jnp.array([0.05, 0.2]), jnp.array([0.01, 0.05]), jnp.array([0.0, 0.1]))
    batched = jax.jit(jax.vmap(run))(*values)
    for i in range(2):
        np.testing.assert_allclose(batched[i], run(*(float(v[i]) for v in values)), rtol=1e-5)
    assert not np.allclose(batched[0], batched[1])


def test_steps_between_updates_keep_the_weights_and_skip_the_validation_pass(rng):
    """update_every=3: λ changes at steps 0 and 3 only; between them the validation loss
    is not evaluated (its debug callback fires on the update steps only)."""
    problem = Regression(rng)
    calls = []

    def val_loss_fn(p):
        jax.debug.callback(lambda: calls.append(1))
        return problem.jax_val_loss(p, 0)

    method = bl.auto_lambda(
        val_loss_fn, learning_rate=0.05, meta_learning_rate=0.05, update_every=3
    )
    train = yoto_jax.trainer(method, optax.sgd(0.05))
    step = jax.jit(lambda state: train.step(state, problem.jax_losses))
    state = train.init(jnp.asarray(rng.normal(size=4), jnp.float32), 3)
    weights = []
    for _ in range(6):
        state, log = step(state)
        weights.append(np.asarray(log.weights))
    jax.effects_barrier()
    changed = [
        not np.array_equal(a, b) for a, b in zip([np.full(3, np.float32(0.1))] + weights, weights)
    ]
    assert changed == [True, False, False, True, False, False]
    assert len(calls) == 2
    assert int(state.weighting_state.count) == 6
    assert int(state.weighting_state.opt_state[0].count) == 2  # Adam stepped twice


@pytest.mark.parametrize("num_losses", [1, 4])
def test_init_and_weights_have_one_entry_per_loss(num_losses):
    method = bl.auto_lambda(lambda p: jnp.sum(p**2), learning_rate=0.1)
    params, state = method.init(num_losses)
    assert params == {}
    np.testing.assert_array_equal(
        method.weights(params, state), np.full(num_losses, np.float32(0.1))
    )
    result = method.step(
        lambda p: p * jnp.arange(1.0, num_losses + 1), jnp.float32(1.0), params, state
    )
    assert result.weights.shape == result.losses.shape == (num_losses,)


def first_step(method, losses_fn=lambda p: jnp.stack([p, p**2]), key=None, jit=False):
    params, state = method.init(2)
    step = lambda p: method.step(losses_fn, p, params, state, key=key)
    return (jax.jit(step) if jit else step)(jnp.float32(1.0))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: bl.auto_lambda(None, learning_rate=0.1), TypeError, "val_loss_fn must be a fun"),
        (lambda: bl.auto_lambda(jnp.sum, learning_rate=0.0), ValueError, "learning_rate must be"),
        (
            lambda: bl.auto_lambda(jnp.sum, learning_rate=0.1, meta_learning_rate=-1.0),
            ValueError,
            "meta_learning_rate must be a finite number > 0",
        ),
        (
            lambda: bl.auto_lambda(jnp.sum, learning_rate=0.1, update_every=0),
            ValueError,
            "update_every must be an int >= 1",
        ),
        (
            lambda: bl.auto_lambda(jnp.sum, learning_rate=0.1, update_every=2.0),
            ValueError,
            "update_every must be an int >= 1",
        ),
        (
            lambda: bl.auto_lambda(jnp.sum, learning_rate=0.1, weight_decay=-1e-4),
            ValueError,
            "weight_decay must be a finite number >= 0",
        ),
        (
            lambda: bl.auto_lambda(jnp.sum, learning_rate=0.1, finite_difference=0.0),
            ValueError,
            "finite_difference must be a finite number > 0",
        ),
        (
            lambda: bl.auto_lambda(jnp.sum, learning_rate=0.1, weight_init=float("nan")),
            ValueError,
            "weight_init must be a finite number",
        ),
        (
            lambda: first_step(
                bl.auto_lambda(lambda p: jnp.stack([p, p]), learning_rate=0.1), jit=True
            ),
            ValueError,
            r"val_loss_fn\(model_params\) must be a scalar",
        ),
        (
            lambda: first_step(
                bl.auto_lambda(lambda p: p, learning_rate=0.1), lambda p: p * jnp.ones(3), jit=True
            ),
            ValueError,
            "expected 2",
        ),
        (
            lambda: first_step(
                bl.auto_lambda(lambda p, key: p, learning_rate=0.1, val_takes_key=True), jit=True
            ),
            ValueError,
            r"pass a PRNG key to its step",
        ),
        (
            lambda: first_step(bl.auto_lambda(lambda p: jnp.int32(1), learning_rate=0.1)),
            TypeError,
            "floating dtype",
        ),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
