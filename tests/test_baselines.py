"""The loss-weighting baselines against their published definitions, recomputed in NumPy.

Every reference below is written from the paper's (or the reference code's) formula
in plain NumPy, in float64, without the library's code paths. Each method is a
``yoto_jax.Weighting``; the training loops are ``yoto_jax.trainer``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import yoto_jax
from yoto_jax import baselines as bl
from yoto_jax.baselines.gradnorm import GRADNORM_KEY
from yoto_jax.baselines.uncertainty import UNCERTAINTY_KEY
from yoto_jax.weighting import weighted_loss


def softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def run_weighting(method, losses_seq, after_seq=None, jit=True, key=None):
    """The weights applied at each step and the state after each, over a sequence of losses.

    Each step is ``step`` then ``after_update`` on a dummy model the losses do not
    depend on: ``losses_seq[t]`` are the step's losses and ``after_seq[t]`` (default:
    the same) those ``after_update`` sees after the model's step.
    """
    after_seq = losses_seq if after_seq is None else after_seq
    params, state = method.init(len(losses_seq[0]))
    model = jnp.float32(0.0)

    def one_step(state, losses, after, key):
        result = method.step(lambda m: losses + 0 * m, model, params, state, key=key)
        return result.weights, method.after_update(lambda m: after + 0 * m, model, result)

    one_step = jax.jit(one_step) if jit else one_step
    key = jax.random.key(0) if key is None else key
    weights, states = [], []
    for step, (losses, after) in enumerate(zip(losses_seq, after_seq)):
        losses, after = jnp.asarray(losses, jnp.float32), jnp.asarray(after, jnp.float32)
        step_weights, state = one_step(state, losses, after, jax.random.fold_in(key, step))
        weights.append(np.asarray(step_weights))
        states.append(state)
    return np.stack(weights), states


METHODS = {
    "ew": bl.equal_weighting,
    "uncertainty": bl.uncertainty,
    "dwa": lambda: bl.dwa(1),
    "rlw": bl.rlw,
    "famo": lambda: bl.famo(meta_learning_rate=0.5),
    "gradnorm": lambda: bl.gradnorm(True),
}


# The weighting contract (for every method, shapes, jit, vmap and more: test_contract.py) --


@pytest.mark.parametrize("name", list(METHODS))
def test_one_jitted_trainer_step_takes_the_weighted_gradient_step(name):
    """θ' = θ - lr Σ λ_i ∇l_i, ∇l_i by hand, λ the weights the step reports."""
    x, y, lr = np.array([[1.0, 0.5], [-0.5, 2.0], [0.3, 0.3]]), np.array([1.0, -1.0, 2.0]), 0.05

    def losses_fn(theta):
        return (jnp.asarray(x, jnp.float32) @ theta - y) ** 2

    train = yoto_jax.trainer(METHODS[name](), optax.sgd(lr))
    step = jax.jit(lambda state, key: train.step(state, losses_fn, key))
    state = train.init(jnp.array([0.2, -0.1]), 3)
    for i in range(4):
        theta = state.params["model"]
        state, log = step(state, jax.random.key(i))
        residuals = x @ np.asarray(theta, np.float64) - y
        np.testing.assert_allclose(log.losses, residuals**2, rtol=1e-5, atol=1e-6)
        expected = theta - lr * (2 * residuals * np.asarray(log.weights)) @ x
        np.testing.assert_allclose(state.params["model"], expected, rtol=1e-5, atol=1e-6)


def test_the_exported_api():
    exported = {
        "equal_weighting",
        "uncertainty",
        "dwa",
        "rlw",
        "famo",
        "gradnorm",
        "uncertainty_loss",
        "gradnorm_balance_loss",
        "DWAState",
        "FAMOState",
        "GradNormState",
    }
    assert exported <= set(bl.__all__)
    removed = {
        "LossWeighting",
        "weighted_loss",
        "init_log_vars",
        "uncertainty_weights",
        "gradnorm_weights",
        "GradNorm",
        "RLWState",
        "UNCERTAINTY_KEY",
        "GRADNORM_KEY",
        "DEFAULT_DWA_TEMPERATURE",
        "DEFAULT_FAMO_LEARNING_RATE",
        "DEFAULT_FAMO_WEIGHT_DECAY",
        "DEFAULT_GRADNORM_ALPHA",
        "DEFAULT_LOG_VAR_INIT",
    }
    assert not removed & set(bl.__all__)
    for name in exported:
        assert hasattr(bl, name)


# Equal weights ------------------------------------------------------------------------


def test_equal_weights_are_ones_and_the_loss_is_the_sum():
    losses = jnp.array([0.3, 2.0, 5.5])
    weights, _ = run_weighting(bl.equal_weighting(), [losses, 2 * losses])
    np.testing.assert_array_equal(weights, np.ones((2, 3)))
    method = bl.equal_weighting()
    result = method.step(lambda m: m * losses, jnp.float32(1.0), *method.init(3))
    assert float(result.model_grads) == pytest.approx(7.8)  # d/dm Σ m l_i = Σ l_i
    assert result.grads == {}


def test_weighted_loss_gradient_flows_into_the_losses_only():
    weights, losses = jnp.array([0.2, 0.8]), jnp.array([3.0, 5.0])
    grad_w, grad_l = jax.grad(weighted_loss, argnums=(0, 1))(weights, losses)
    np.testing.assert_array_equal(grad_w, [0.0, 0.0])
    np.testing.assert_allclose(grad_l, [0.2, 0.8])
    assert float(weighted_loss(weights, losses)) == pytest.approx(0.2 * 3 + 0.8 * 5)


# Uncertainty weighting -----------------------------------------------------------------


def test_uncertainty_loss_and_gradients_in_closed_form():
    s = np.array([-0.5, 0.0, 1.3])
    l = np.array([0.7, 2.0, 0.1])
    loss, (grad_s, grad_l) = jax.value_and_grad(bl.uncertainty_loss, argnums=(0, 1))(
        jnp.asarray(s, jnp.float32), jnp.asarray(l, jnp.float32)
    )
    assert float(loss) == pytest.approx(np.sum(l / (2 * np.exp(s)) + s / 2), rel=1e-6)
    np.testing.assert_allclose(grad_s, 0.5 - l / (2 * np.exp(s)), rtol=1e-5)
    np.testing.assert_allclose(grad_l, 1 / (2 * np.exp(s)), rtol=1e-6)
    weights = bl.uncertainty().weights({UNCERTAINTY_KEY: jnp.asarray(s, jnp.float32)}, ())
    np.testing.assert_allclose(weights, 1 / (2 * np.exp(s)), rtol=1e-6)


def test_uncertainty_log_vars_trained_by_the_model_optimizer_match_numpy_sgd():
    """One optimizer updates model and s; s follows SGD on the closed-form gradient."""
    x, y, lr, steps = np.array([1.0, -2.0, 0.5]), np.array([0.5, 3.0]), 0.1, 8

    def losses_fn(model):
        pred = jnp.dot(model, x)
        return jnp.stack([(pred - y[0]) ** 2, (2 * pred - y[1]) ** 2])

    train = yoto_jax.trainer(bl.uncertainty(), optax.sgd(lr))
    state = train.init(jnp.ones(3), 2)
    w, s = np.ones(3), np.zeros(2)
    for _ in range(steps):
        state, _ = train.step(state, losses_fn)
        pred = w @ x
        residuals = np.array([pred - y[0], 2 * pred - y[1]])
        losses = residuals**2
        grad_w = np.sum(np.exp(-s) * residuals * np.array([1.0, 2.0])) * x
        w, s = w - lr * grad_w, s - lr * (0.5 - losses / (2 * np.exp(s)))
    np.testing.assert_allclose(state.params["weighting"][UNCERTAINTY_KEY], s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.params["model"], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(train.weights(state), 1 / (2 * np.exp(s)), rtol=1e-5)


def test_uncertainty_log_vars_converge_to_log_of_constant_losses():
    losses = jnp.array([0.25, 4.0])
    train = yoto_jax.trainer(bl.uncertainty(), optax.sgd(0.5))
    step = jax.jit(lambda state: train.step(state, lambda model: losses + 0 * model)[0])
    state = train.init(jnp.float32(0.0), 2)
    for _ in range(300):
        state = step(state)
    np.testing.assert_allclose(
        state.params["weighting"][UNCERTAINTY_KEY], np.log([0.25, 4.0]), atol=1e-4
    )


def test_uncertainty_default_and_libmtl_init():
    params, state = bl.uncertainty().init(3)
    np.testing.assert_array_equal(params[UNCERTAINTY_KEY], np.zeros(3))
    assert state == ()
    params, _ = bl.uncertainty(log_var_init=-0.5).init(2)
    np.testing.assert_array_equal(params[UNCERTAINTY_KEY], [-0.5, -0.5])
    assert params[UNCERTAINTY_KEY].dtype == jnp.float32


# DWA -----------------------------------------------------------------------------------


def dwa_reference(losses_seq, steps_per_epoch, temperature):
    """Liu et al. (2019), Eq. (7), as in the mtan code: λ from epoch-mean training losses."""
    losses_seq = np.asarray(losses_seq, np.float64)
    num_tasks = losses_seq.shape[1]
    epoch_means = losses_seq.reshape(-1, steps_per_epoch, num_tasks).mean(axis=1)
    weights = []
    for step in range(len(losses_seq)):
        epoch = step // steps_per_epoch
        if epoch < 2:
            weights.append(np.ones(num_tasks))
        else:
            w = epoch_means[epoch - 1] / epoch_means[epoch - 2]
            weights.append(num_tasks * np.exp(w / temperature) / np.sum(np.exp(w / temperature)))
    return np.stack(weights)


@pytest.mark.parametrize("steps_per_epoch, temperature", [(3, 2.0), (1, 2.0), (4, 0.5)])
def test_dwa_weights_over_epochs_match_the_reference(steps_per_epoch, temperature, rng):
    num_epochs = 6
    decay = np.exp(-0.3 * np.arange(num_epochs * steps_per_epoch))[:, None] * np.array(
        [1.0, 3.0, 0.5]
    )
    losses_seq = decay * rng.uniform(0.5, 1.5, size=decay.shape)
    method = bl.dwa(steps_per_epoch, temperature)
    weights, states = run_weighting(method, losses_seq)
    expected = dwa_reference(losses_seq, steps_per_epoch, temperature)
    np.testing.assert_allclose(weights, expected, rtol=2e-5)
    assert int(states[-1].epochs) == num_epochs
    assert not np.allclose(expected[-1], 1.0)
    # weights(params, state) reads the state: the λ the next step applies.
    for state, applied_next in zip(states[:-1], weights[1:]):
        np.testing.assert_allclose(method.weights({}, state), applied_next, rtol=1e-6)


def test_dwa_state_carries_a_partial_epoch(rng):
    method = bl.dwa(steps_per_epoch=3)
    losses_seq = rng.uniform(0.5, 1.5, size=(8, 2))
    _, states = run_weighting(method, losses_seq)
    state = states[-1]
    assert (int(state.epochs), int(state.step)) == (2, 2)
    np.testing.assert_allclose(state.loss_sum, losses_seq[6:].sum(0), rtol=1e-6)
    np.testing.assert_allclose(
        state.means, [losses_seq[3:6].mean(0), losses_seq[:3].mean(0)], rtol=1e-6
    )


# RLW -----------------------------------------------------------------------------------


def rlw_draws(key, num_losses, steps):
    """λ of `steps` consecutive steps, keys fold_in(key, step), as one jitted scan."""
    key = jax.random.key(key) if isinstance(key, int) else key
    method = bl.rlw()
    params, state = method.init(num_losses)

    def step(carry, i):
        losses_fn = lambda m: m * jnp.ones(num_losses)
        result = method.step(losses_fn, 1.0, params, state, key=jax.random.fold_in(key, i))
        return carry, result.weights

    return np.asarray(jax.lax.scan(step, None, jnp.arange(steps))[1], np.float64)


def normal_cdf(x, variance):
    return 0.5 * (1 + np.vectorize(math.erf)(x / np.sqrt(2 * variance)))


def test_rlw_weights_are_a_softmax_of_standard_normal_draws(rng):
    """log(λ_i/λ_j) = z_i - z_j ~ N(0, 2): Kolmogorov-Smirnov against the normal CDF."""
    draws = rlw_draws(0, num_losses=3, steps=4000)
    assert np.all(draws > 0)
    np.testing.assert_allclose(draws.sum(1), 1.0, rtol=1e-6)
    for i, j in [(0, 1), (1, 2)]:
        differences = np.sort(np.log(draws[:, i] / draws[:, j]))
        empirical = np.arange(1, len(differences) + 1) / len(differences)
        ks = np.max(np.abs(empirical - normal_cdf(differences, 2.0)))
        assert ks < 1.63 / np.sqrt(len(differences))  # 1% level
    # E[λ_i] = 1/3 by symmetry; its spread follows from z ~ N(0, I) (NumPy draws).
    numpy_draws = softmax(rng.standard_normal((200_000, 3)))
    np.testing.assert_allclose(draws.mean(0), 1 / 3, atol=0.01)
    np.testing.assert_allclose(draws.std(0), numpy_draws.std(0), rtol=0.05)
    # weights(params, state), which has no key, is that expectation.
    np.testing.assert_allclose(bl.rlw().weights(*bl.rlw().init(3)), np.full(3, 1 / 3))


def test_rlw_draws_are_a_pure_function_of_the_key():
    consecutive = rlw_draws(5, 2, 10)
    np.testing.assert_array_equal(rlw_draws(5, 2, 10), consecutive)
    np.testing.assert_array_equal(rlw_draws(jax.random.PRNGKey(5), 2, 10), consecutive)
    other = rlw_draws(6, 2, 10)
    assert not np.allclose(other, consecutive)
    assert len(np.unique(consecutive[:, 0])) == 10
    method, losses = bl.rlw(), jnp.array([2.0, 3.0])
    params, state = method.init(2)
    first, second = (
        method.step(lambda m: m * losses, 1.0, params, state, key=jax.random.key(3))
        for _ in range(2)
    )
    np.testing.assert_array_equal(first.weights, second.weights)
    # The model's gradient uses the same draw as the reported weights: Σ λ_i l_i.
    assert float(first.model_grads) == pytest.approx(float(first.weights @ losses), rel=1e-6)


def test_rlw_without_a_key_raises_a_clear_error():
    method = bl.rlw()
    params, state = method.init(2)
    with pytest.raises(ValueError, match=r"rlw is random: pass a PRNG key"):
        method.step(lambda m: m * jnp.ones(2), 1.0, params, state)
    train = yoto_jax.trainer(method, optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"step\(\.\.\., key=key\)"):
        jax.jit(lambda state: train.step(state, lambda m: m * jnp.ones(2)))(
            train.init(jnp.float32(1.0), 2)
        )


# FAMO ----------------------------------------------------------------------------------


def famo_reference(pairs, lr, gamma, b1=0.9, b2=0.999, eps=1e-8):
    """FAMO (Liu et al., 2023), Alg. 1 with the reference's torch Adam(weight_decay=γ).

    Returns the model weights λ and the logits ξ of every step.
    """
    num_tasks = len(pairs[0][0])
    xi, m, v = np.zeros(num_tasks), np.zeros(num_tasks), np.zeros(num_tasks)
    weights, logits = [], []
    for t, (before, after) in enumerate(pairs, start=1):
        z = softmax(xi)
        d_before, d_after = before + 1e-8, after + 1e-8
        c = np.sum(z / d_before)
        # ∂/∂l_i of Σ_j z_j log D_j / c with c held constant:
        weights.append(z / d_before / c)
        delta = np.log(d_before) - np.log(d_after)
        jacobian = np.diag(z) - np.outer(z, z)  # ∂z/∂ξ
        grad = jacobian.T @ delta + gamma * xi
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        xi = xi - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        logits.append(xi)
    return np.stack(weights), np.stack(logits)


def test_famo_logit_trajectory_and_weights_match_the_reference(rng):
    steps = 8
    before = rng.uniform(0.2, 2.0, size=(steps, 3))
    after = before * rng.uniform(0.8, 1.05, size=(steps, 3))
    weights, states = run_weighting(bl.famo(), before, after)
    ref_weights, ref_logits = famo_reference(list(zip(before, after)), lr=0.025, gamma=1e-3)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5)
    np.testing.assert_allclose(states[-1].logits, ref_logits[-1], rtol=1e-4, atol=1e-7)
    assert np.abs(ref_logits[-1]).max() > 0.01  # the logits moved

    _, states = run_weighting(bl.famo(0.1, 0.0), before, after, jit=False)
    _, ref_logits = famo_reference(list(zip(before, after)), lr=0.1, gamma=0.0)
    np.testing.assert_allclose([s.logits for s in states], ref_logits, rtol=1e-4, atol=1e-7)
    method = bl.famo(0.1, 0.0)
    np.testing.assert_allclose(
        method.weights({}, states[-1]), softmax(ref_logits[-1]), rtol=1e-4, atol=1e-7
    )


@pytest.mark.usefixtures("x64")
def test_famo_after_update_in_the_trainer_equals_the_reference_from_the_model_losses(rng):
    """after_update takes ξ's step from losses_fn before and after the model's step.

    The model is in float64: δ is a difference of the logs of nearly equal losses, and
    Adam divides ξ's gradient by its running RMS, so the float32 model's rounding alone
    moved ξ by up to 3e-6 from the float64 reference (2.9e-6 on a CPU, 2.7e-6 on an
    H100), as much as the tolerance. In float64 the gap is 4e-8 (ξ stays float32).
    """
    x = rng.normal(size=(3, 3))
    lr, gamma = 0.1, 1e-2

    def losses_fn(theta):
        return (jnp.asarray(x, jnp.float64) @ theta) ** 2 + 0.1

    def numpy_losses(theta):
        return (x @ np.asarray(theta, np.float64)) ** 2 + 0.1

    train = yoto_jax.trainer(bl.famo(lr, gamma), optax.sgd(0.05))
    step = jax.jit(lambda state: train.step(state, losses_fn))
    state = train.init(jnp.array([0.3, -1.2, 0.8], jnp.float64), 3)
    pairs, weights, logits = [], [], []
    for _ in range(4):
        theta = state.params["model"]
        state, log = step(state)
        pairs.append((numpy_losses(theta), numpy_losses(state.params["model"])))
        weights.append(log.weights)
        logits.append(state.weighting_state.logits)
    ref_weights, ref_logits = famo_reference(pairs, lr=lr, gamma=gamma)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-4)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-6)
    assert np.abs(ref_logits[-1]).max() > 0.05  # the logits moved
    np.testing.assert_allclose(train.weights(state), softmax(ref_logits[-1]), rtol=1e-4)


def test_famo_model_gradient_equals_the_reference_loss_gradient(rng):
    """The step's model gradient equals ∇θ of the reference Σ z log D / sg(c) on a small model."""
    theta, x = jnp.array([0.3, -1.2, 0.8]), jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)
    logits = jnp.array([0.4, -0.2, 0.1])
    method = bl.famo()
    params, state = method.init(3)
    state = state._replace(logits=logits)

    def losses_fn(theta):
        return (x @ theta) ** 2 + 0.1

    def reference(theta):
        losses, z = losses_fn(theta), jax.nn.softmax(logits)
        c = jax.lax.stop_gradient(jnp.sum(z / (losses + 1e-8)))
        return jnp.sum(z * jnp.log(losses + 1e-8) / c)

    result = method.step(losses_fn, theta, params, state)
    np.testing.assert_allclose(result.model_grads, jax.grad(reference)(theta), rtol=1e-5, atol=1e-6)
    assert result.grads == {}


# GradNorm ------------------------------------------------------------------------------


def test_gradnorm_balance_loss_gradient_in_closed_form(rng):
    num_tasks = 4
    s, norms = rng.normal(size=num_tasks), rng.uniform(0.5, 3.0, size=num_tasks)
    losses, initial = rng.uniform(0.5, 2.0, num_tasks), rng.uniform(1.0, 3.0, num_tasks)
    for alpha in [0.0, 1.5]:
        args = [jnp.asarray(a, jnp.float32) for a in (s, norms, losses, initial)]
        value, grad = jax.value_and_grad(bl.gradnorm_balance_loss)(*args, alpha)
        z = softmax(s)
        g = num_tasks * z * norms
        rates = losses / initial
        target = g.mean() * (rates / rates.mean()) ** alpha
        assert float(value) == pytest.approx(np.abs(g - target).sum(), rel=1e-5)
        u = np.sign(g - target) * norms
        np.testing.assert_allclose(grad, num_tasks * z * (u - z @ u), rtol=1e-5, atol=1e-6)


def linear_model_losses(params, x, y):
    """l_i = mean_n (h_i · (x_n · W) - y_{n,i})² / 2: a shared linear feature, scalar heads."""
    feature = x @ params["W"]
    return jnp.mean((feature[:, None] * params["h"][None, :] - y) ** 2, axis=0) / 2


def gradnorm_reference(x, y, w0, h0, lr, alpha, steps):
    """GradNorm (Chen et al., 2018) with w = T softmax(s), W the shared vector, by hand.

    All parameters, s included, take plain SGD steps; returns (W, h, s) after each step.
    """
    num_tasks = len(h0)
    w, h, s = w0.astype(np.float64), h0.astype(np.float64), np.zeros(num_tasks)
    trajectory, initial = [], None
    for _ in range(steps):
        feature = x @ w
        residual = feature[:, None] * h[None, :] - y  # (n, T)
        losses = np.mean(residual**2, axis=0) / 2
        initial = losses if initial is None else initial
        grad_w_per_task = (x.T @ (residual * h[None, :])) / len(x)  # (d, T)
        grad_h = np.mean(residual * feature[:, None], axis=0)
        z = softmax(s)
        weights = num_tasks * z
        norms = np.linalg.norm(grad_w_per_task, axis=0)
        g = weights * norms
        rates = losses / initial
        target = g.mean() * (rates / rates.mean()) ** alpha
        u = np.sign(g - target) * norms
        grad_s = num_tasks * z * (u - z @ u)
        w = w - lr * grad_w_per_task @ weights
        h = h - lr * weights * grad_h
        s = s - lr * grad_s
        trajectory.append((w, h, s))
    return trajectory


@pytest.mark.parametrize("shared", [{"W": True, "h": False}, lambda p: {"W": True, "h": False}])
def test_gradnorm_trajectory_on_a_linear_model_matches_the_reference(shared, rng):
    x = rng.normal(size=(16, 3))
    y = np.stack([x @ [1.0, -1.0, 0.5], 3 * (x @ [0.2, 1.0, 0.0]) + 0.1], axis=1)
    w0, h0 = np.array([0.5, 0.5, 0.5]), np.array([1.0, 0.3])
    lr, alpha, steps = 0.05, 1.5, 6
    train = yoto_jax.trainer(bl.gradnorm(shared, alpha), optax.sgd(lr))
    model = {"W": jnp.asarray(w0, jnp.float32), "h": jnp.asarray(h0, jnp.float32)}
    state = train.init(model, 2)
    step = jax.jit(lambda state: train.step(state, lambda q: linear_model_losses(q, x, y)))
    for expected in gradnorm_reference(x, y, w0, h0, lr, alpha, steps):
        state, _ = step(state)
        params = state.params
        logits = params["weighting"][GRADNORM_KEY]
        for got, want in zip((params["model"]["W"], params["model"]["h"], logits), expected):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(logits)).max() > 0.01  # the weights moved
    assert int(state.weighting_state.count) == steps
    np.testing.assert_allclose(train.weights(state), 2 * softmax(expected[2]), rtol=1e-4)


def gradnorm_logit_grad(logits, norms, losses, initial, alpha):
    """∂L_grad/∂s from the definitions (Chen et al., 2018) with w = T softmax(s), in NumPy:
    G = w n, r = (l / l(0)) / mean(l / l(0)), u = sign(G - mean(G) r^α) n, T z (u - zᵀu)."""
    num_tasks = len(logits)
    z = softmax(np.asarray(logits, np.float64))
    g = num_tasks * z * norms
    rates = losses / initial
    u = np.sign(g - g.mean() * (rates / rates.mean()) ** alpha) * norms
    return num_tasks * z * (u - z @ u)


def test_gradnorm_norms_cover_exactly_the_selected_parameters():
    """With alpha = 0 and two tasks, sign(∂L_grad/∂s_0) = sign(n_1 - n_0): norms over W."""
    model = {"trunk": {"a": jnp.array([1.0, 2.0]), "b": jnp.array(0.5)}, "head": jnp.ones(2)}

    def losses_fn(p):
        feature = jnp.sum(p["trunk"]["a"]) * p["trunk"]["b"]
        return jnp.stack([(p["head"][0] * feature) ** 2, 10 * p["head"][1] * feature])

    feature, h = 1.5, np.ones(2)
    losses = np.array([(h[0] * feature) ** 2, 10 * h[1] * feature])
    grad_b = np.array([2 * h[0] ** 2 * feature * 3.0, 10 * h[1] * 3.0])
    grad_a = np.array([2 * h[0] ** 2 * feature * 0.5, 10 * h[1] * 0.5])
    grad_head = np.array([2 * h[0] * feature**2, 10 * feature])
    cases = {
        "prefix": ({"trunk": True, "head": False}, np.sqrt(2 * grad_a**2 + grad_b**2)),
        "last layer": ({"trunk": {"a": False, "b": True}, "head": False}, np.abs(grad_b)),
        "all": (True, np.sqrt(2 * grad_a**2 + grad_b**2 + grad_head**2)),
    }
    for mask, norms in cases.values():
        method = bl.gradnorm(mask, alpha=0.0)
        params, state = method.init(2)
        result = method.step(losses_fn, model, params, state)
        logit_grad = result.grads[GRADNORM_KEY]
        np.testing.assert_allclose(result.losses, losses, rtol=1e-6)
        expected = gradnorm_logit_grad(np.zeros(2), norms, losses, losses, 0.0)
        np.testing.assert_allclose(logit_grad, expected, rtol=1e-5)
        z, u = np.full(2, 0.5), np.sign(norms - norms.mean()) * norms
        np.testing.assert_allclose(logit_grad, 2 * z * (u - z @ u), rtol=1e-5)
        # Later steps: l(0) from the state, unequal weights, α > 0.
        method = bl.gradnorm(mask, alpha=1.5)
        logits, initial = np.array([0.4, -0.4]), np.array([1.0, 30.0])
        state = bl.GradNormState(jnp.asarray(initial, jnp.float32), jnp.array(1, jnp.int32))
        params = {GRADNORM_KEY: jnp.asarray(logits, jnp.float32)}
        result = method.step(losses_fn, model, params, state)
        expected = gradnorm_logit_grad(logits, norms, losses, initial, 1.5)
        np.testing.assert_allclose(result.grads[GRADNORM_KEY], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.state.initial_losses, initial)


def test_gradnorm_model_gradient_is_the_weighted_sum_and_l0_is_the_first_step(rng):
    model = {"W": jnp.array([0.5, -0.5, 1.0]), "h": jnp.array([1.0, 2.0])}
    x, y = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), jnp.zeros((8, 2))
    logits = jnp.array([0.3, -0.3])
    method = bl.gradnorm({"W": True, "h": False})
    _, state = method.init(2)
    params = {GRADNORM_KEY: logits}
    result = method.step(lambda p: linear_model_losses(p, x, y), model, params, state)
    w = 2 * softmax(np.array([0.3, -0.3]))
    np.testing.assert_allclose(method.weights(params, state), w, rtol=1e-6)
    np.testing.assert_allclose(result.weights, w, rtol=1e-6)
    expected = jax.grad(lambda p: jnp.dot(w, linear_model_losses(p, x, y)))(model)
    for leaf, want in zip(jax.tree.leaves(result.model_grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(leaf, want, rtol=1e-5, atol=1e-6)
    state = result.state
    np.testing.assert_allclose(state.initial_losses, result.losses)
    result = method.step(lambda p: 2 * linear_model_losses(p, x, y), model, params, state)
    np.testing.assert_allclose(result.state.initial_losses, state.initial_losses)


# Validation ----------------------------------------------------------------------------

LOSSES = jnp.ones(2)


def first_step(method, losses, num_losses=2):
    """``method.step`` at init, on ``losses_fn = lambda m: m * losses``."""
    params, state = method.init(num_losses)
    return method.step(lambda m: m * losses, 1.0, params, state, key=jax.random.key(0))


def famo_after_update(losses_after):
    method = bl.famo()
    result = first_step(method, LOSSES)
    return method.after_update(lambda m: m * losses_after, 1.0, result)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: weighted_loss(jnp.ones(3), LOSSES), ValueError, "shape of losses"),
        (lambda: weighted_loss(jnp.ones(2), jnp.ones((2, 1))), ValueError, r"shape \(T,\)"),
        (lambda: weighted_loss(jnp.ones(2), jnp.array([1, 2])), TypeError, "floating dtype"),
        (lambda: weighted_loss(jnp.ones(1), jnp.array(1.0)), ValueError, r"got shape \(\)"),
        (lambda: weighted_loss(jnp.ones(0), jnp.ones(0)), ValueError, r"shape \(T,\)"),
        (lambda: first_step(bl.dwa(2), jnp.ones((2, 1))), ValueError, r"shape \(T,\)"),
        (lambda: first_step(bl.rlw(), jnp.ones(3)), ValueError, "3 entries, expected 2"),
        (lambda: first_step(bl.famo(), jnp.ones(())), ValueError, r"got shape \(\)"),
        (lambda: first_step(bl.equal_weighting(), jnp.ones(3)), ValueError, "expected 2"),
        (
            lambda: first_step(bl.uncertainty(), jnp.ones(3)),
            ValueError,
            "losses has 3 entries, expected 2",
        ),
        (lambda: bl.dwa(0), ValueError, "steps_per_epoch must be >= 1"),
        (lambda: bl.dwa(2.0), TypeError, "steps_per_epoch must be an int"),
        (lambda: bl.dwa(2, temperature=0.0), ValueError, "temperature must be a finite"),
        (lambda: bl.dwa(2).init(0), ValueError, "num_losses must be an int >= 1"),
        (lambda: bl.equal_weighting().init(2.0), ValueError, "num_losses must be an int"),
        (lambda: bl.rlw().init(True), ValueError, "num_losses must be an int"),
        (lambda: bl.famo(meta_learning_rate=0.0), ValueError, "learning_rate must be a finite"),
        (lambda: bl.famo(weight_decay=-1e-3), ValueError, "weight_decay must be a finite"),
        (
            lambda: famo_after_update(jnp.ones(3)),
            ValueError,
            r"losses_fn\(new_model_params\) has 3 entries, expected 2",
        ),
        (lambda: first_step(bl.dwa(2), LOSSES, num_losses=3), ValueError, "expected 3"),
        (lambda: bl.uncertainty(float("nan")), ValueError, "log_var_init must be a finite"),
        (
            lambda: bl.uncertainty().step(
                lambda m: jnp.array([1, 2]), 1.0, {UNCERTAINTY_KEY: LOSSES}, ()
            ),
            TypeError,
            "floating dtype",
        ),
        (lambda: bl.uncertainty_loss(jnp.zeros(3), LOSSES), ValueError, "log_vars has 3"),
        (lambda: bl.gradnorm(None), TypeError, "shared must select"),
        (lambda: bl.gradnorm(True, alpha=-1.0), ValueError, "alpha must be a finite number >= 0"),
        (
            lambda: bl.gradnorm_balance_loss(LOSSES, jnp.ones(3), LOSSES, LOSSES),
            ValueError,
            "grad_norms",
        ),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    "shared, error, message",
    [
        ({"W": False, "h": False}, ValueError, "selects no parameter"),
        ({"W": jnp.array(True), "h": False}, TypeError, "Python bools"),
    ],
)
def test_gradnorm_rejects_bad_masks(shared, error, message):
    model = {"W": jnp.ones(3), "h": jnp.ones(2)}
    method = bl.gradnorm(shared)
    with pytest.raises(error, match=message):
        method.step(lambda p: p["h"] * jnp.sum(p["W"]), model, *method.init(2))


def test_errors_are_raised_at_trace_time_under_jit():
    method = bl.dwa(2)
    params, state = method.init(2)
    with pytest.raises(ValueError, match="expected 2"):
        jax.jit(lambda m: method.step(lambda m: m * jnp.ones(3), m, params, state))(1.0)
    with pytest.raises(TypeError, match="floating dtype"):
        jax.jit(bl.uncertainty_loss)(jnp.zeros(2), jnp.array([1, 2]))
    gradnorm = bl.gradnorm(True)
    with pytest.raises(ValueError, match=r"shape \(T,\)"):
        jax.jit(lambda m, params, state: gradnorm.step(lambda p: jnp.sum(p), m, params, state))(
            jnp.ones(2), *gradnorm.init(2)
        )


def test_traced_hyperparameters_are_accepted():
    """α traced under jit gives the concrete α's result, on inputs where α matters."""
    norms, losses, initial = jnp.array([1.0, 2.0]), jnp.array([1.0, 2.0]), jnp.array([2.0, 1.0])

    def balance_loss(alpha):
        return bl.gradnorm_balance_loss(jnp.zeros(2), norms, losses, initial, alpha)

    traced = jax.jit(balance_loss)
    # w = 1: G = (1, 2), r = (0.5, 2) / 1.25, target = 1.5 r^α.
    rates = np.array([0.5, 2.0]) / 1.25
    for alpha in [0.0, 1.5]:
        expected = np.abs(np.array([1.0, 2.0]) - 1.5 * rates**alpha).sum()
        assert float(balance_loss(alpha)) == pytest.approx(expected, rel=1e-6)
        assert float(traced(alpha)) == pytest.approx(float(balance_loss(alpha)), rel=1e-6)
    assert float(traced(1.5)) != pytest.approx(float(traced(0.0)))

    # A factory's hyperparameter traced: DWA's temperature, two epochs into the run.
    losses_seq = jnp.array([[1.0, 1.0], [1.0, 0.5]])

    def dwa_weights(temperature):
        method = bl.dwa(1, temperature)
        params, state = method.init(2)
        for losses in losses_seq:
            result = method.step(lambda m, losses=losses: m * losses, 1.0, params, state)
            state = method.after_update(None, None, result)
        return method.weights(params, state)

    traced = jax.jit(dwa_weights)
    for temperature in [2.0, 0.5]:
        np.testing.assert_allclose(traced(temperature), dwa_weights(temperature), rtol=1e-6)
        np.testing.assert_allclose(
            dwa_weights(temperature), 2 * softmax(np.array([1.0, 0.5]) / temperature), rtol=1e-6
        )
