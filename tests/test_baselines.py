"""The loss-weighting baselines against their published definitions, recomputed in NumPy.

Every reference below is written from the paper's (or the reference code's) formula
in plain NumPy, in float64, without the library's code paths.
"""

import math
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


def softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def run_loss_weighting(method, losses_seq, jit=True, **extra_seqs):
    """The weights each step, then update, over a sequence of losses (T,) per step."""
    weights_fn = jax.jit(method.weights) if jit else method.weights
    update_fn = jax.jit(method.update) if jit else method.update
    state = method.init(len(losses_seq[0]))
    weights = []
    for step, losses in enumerate(losses_seq):
        losses = jnp.asarray(losses, jnp.float32)
        weights.append(np.asarray(weights_fn(state, losses)))
        extras = {name: jnp.asarray(seq[step], jnp.float32) for name, seq in extra_seqs.items()}
        state = update_fn(state, losses, **extras)
    return np.stack(weights), state


# The LossWeighting shape ---------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [bl.equal_weighting(), bl.dwa(1), bl.rlw(0), bl.famo(learning_rate=0.5)],
    ids=["ew", "dwa", "rlw", "famo"],
)
def test_loss_weighting_in_one_jitted_training_step_takes_the_weighted_gradient_step(method):
    """θ' = θ - lr Σ λ_i ∇l_i, ∇l_i by hand; extra update arguments are ignored, as in optax."""
    x, y, lr = np.array([[1.0, 0.5], [-0.5, 2.0], [0.3, 0.3]]), np.array([1.0, -1.0, 2.0]), 0.05

    def losses_fn(theta):
        return (jnp.asarray(x, jnp.float32) @ theta - y) ** 2

    @jax.jit
    def train_step(theta, state):
        def loss_fn(theta):
            losses = losses_fn(theta)
            return bl.weighted_loss(method.weights(state, losses), losses), losses

        grads, losses = jax.grad(loss_fn, has_aux=True)(theta)
        new_theta = theta - lr * grads
        weights = method.weights(state, losses)
        return new_theta, method.update(state, losses, losses_after=losses_fn(new_theta)), weights

    theta, state = jnp.array([0.2, -0.1]), method.init(3)
    for _ in range(4):
        new_theta, state, weights = train_step(theta, state)
        residuals = x @ np.asarray(theta, np.float64) - y
        expected = theta - lr * (2 * residuals * np.asarray(weights)) @ x
        np.testing.assert_allclose(new_theta, expected, rtol=1e-5, atol=1e-6)
        theta = new_theta


# Equal weights ------------------------------------------------------------------------


def test_equal_weights_are_ones_and_the_loss_is_the_sum():
    losses = jnp.array([0.3, 2.0, 5.5])
    weights, _ = run_loss_weighting(bl.equal_weighting(), [losses, 2 * losses])
    np.testing.assert_array_equal(weights, np.ones((2, 3)))
    assert float(bl.weighted_loss(weights[0], losses)) == pytest.approx(7.8)


def test_weighted_loss_gradient_flows_into_the_losses_only():
    weights, losses = jnp.array([0.2, 0.8]), jnp.array([3.0, 5.0])
    grad_w, grad_l = jax.grad(bl.weighted_loss, argnums=(0, 1))(weights, losses)
    np.testing.assert_array_equal(grad_w, [0.0, 0.0])
    np.testing.assert_allclose(grad_l, [0.2, 0.8])
    assert float(bl.weighted_loss(weights, losses)) == pytest.approx(0.2 * 3 + 0.8 * 5)


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
    np.testing.assert_allclose(bl.uncertainty_weights(s), 1 / (2 * np.exp(s)), rtol=1e-6)


def test_uncertainty_log_vars_trained_by_the_model_optimizer_match_numpy_sgd():
    """One optimizer updates model and s; s follows SGD on the closed-form gradient."""
    x, y, lr, steps = np.array([1.0, -2.0, 0.5]), np.array([0.5, 3.0]), 0.1, 8
    params = {"model": jnp.ones(3), bl.UNCERTAINTY_KEY: bl.init_log_vars(2)}

    def loss_fn(params):
        pred = jnp.dot(params["model"], x)
        losses = jnp.stack([(pred - y[0]) ** 2, (2 * pred - y[1]) ** 2])
        return bl.uncertainty_loss(params[bl.UNCERTAINTY_KEY], losses)

    tx = optax.sgd(lr)
    opt_state = tx.init(params)
    w, s = np.ones(3), np.zeros(2)
    for _ in range(steps):
        updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state)
        params = optax.apply_updates(params, updates)
        pred = w @ x
        residuals = np.array([pred - y[0], 2 * pred - y[1]])
        losses = residuals**2
        grad_w = np.sum(np.exp(-s) * residuals * np.array([1.0, 2.0])) * x
        w, s = w - lr * grad_w, s - lr * (0.5 - losses / (2 * np.exp(s)))
    np.testing.assert_allclose(params[bl.UNCERTAINTY_KEY], s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params["model"], w, rtol=1e-5, atol=1e-6)


def test_uncertainty_log_vars_converge_to_log_of_constant_losses():
    losses = jnp.array([0.25, 4.0])
    s = bl.init_log_vars(2)
    for _ in range(300):
        s = s - 0.5 * jax.grad(bl.uncertainty_loss)(s, losses)
    np.testing.assert_allclose(s, np.log([0.25, 4.0]), atol=1e-4)


def test_init_log_vars_default_and_libmtl_init():
    np.testing.assert_array_equal(bl.init_log_vars(3), np.zeros(3))
    np.testing.assert_array_equal(bl.init_log_vars(2, init=-0.5), [-0.5, -0.5])


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
    weights, state = run_loss_weighting(bl.dwa(steps_per_epoch, temperature), losses_seq)
    expected = dwa_reference(losses_seq, steps_per_epoch, temperature)
    np.testing.assert_allclose(weights, expected, rtol=2e-5)
    assert int(state.epochs) == num_epochs
    assert not np.allclose(expected[-1], 1.0)


def test_dwa_state_carries_a_partial_epoch(rng):
    method = bl.dwa(steps_per_epoch=3)
    losses_seq = rng.uniform(0.5, 1.5, size=(8, 2))
    _, state = run_loss_weighting(method, losses_seq)
    assert (int(state.epochs), int(state.step)) == (2, 2)
    np.testing.assert_allclose(state.loss_sum, losses_seq[6:].sum(0), rtol=1e-6)
    np.testing.assert_allclose(
        state.means, [losses_seq[3:6].mean(0), losses_seq[:3].mean(0)], rtol=1e-6
    )


# RLW -----------------------------------------------------------------------------------


def rlw_draws(seed, num_losses, steps):
    """λ of `steps` consecutive steps, as one jitted scan."""
    method = bl.rlw(seed)
    losses = jnp.ones(num_losses)

    def step(state, _):
        return method.update(state, losses), method.weights(state, losses)

    return np.asarray(jax.lax.scan(step, method.init(num_losses), length=steps)[1], np.float64)


def normal_cdf(x, variance):
    return 0.5 * (1 + np.vectorize(math.erf)(x / np.sqrt(2 * variance)))


def test_rlw_weights_are_a_softmax_of_standard_normal_draws(rng):
    """log(λ_i/λ_j) = z_i - z_j ~ N(0, 2): Kolmogorov-Smirnov against the normal CDF."""
    draws = rlw_draws(seed=1, num_losses=3, steps=4000)
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


def test_rlw_draws_are_a_pure_function_of_the_key():
    np.testing.assert_array_equal(rlw_draws(5, 2, 10), rlw_draws(5, 2, 10))
    np.testing.assert_array_equal(rlw_draws(jax.random.key(5), 2, 10), rlw_draws(5, 2, 10))
    other = rlw_draws(6, 2, 10)
    assert not np.allclose(other, rlw_draws(5, 2, 10))
    consecutive = rlw_draws(5, 2, 10)
    assert len(np.unique(consecutive[:, 0])) == 10
    method, losses = bl.rlw(3), jnp.ones(2)
    state = method.init(2)
    np.testing.assert_array_equal(method.weights(state, losses), method.weights(state, losses))


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
    weights, state = run_loss_weighting(bl.famo(), before, losses_after=after)
    ref_weights, ref_logits = famo_reference(list(zip(before, after)), lr=0.025, gamma=1e-3)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5)
    np.testing.assert_allclose(state.logits, ref_logits[-1], rtol=1e-4, atol=1e-7)
    assert np.abs(ref_logits[-1]).max() > 0.01  # the logits moved

    states = [bl.famo(0.1, 0.0).init(3)]
    for b, a in zip(before, after):
        states.append(bl.famo(0.1, 0.0).update(states[-1], jnp.asarray(b), losses_after=a))
    _, ref_logits = famo_reference(list(zip(before, after)), lr=0.1, gamma=0.0)
    np.testing.assert_allclose([s.logits for s in states[1:]], ref_logits, rtol=1e-4, atol=1e-7)


def test_famo_model_gradient_equals_the_reference_loss_gradient(rng):
    """∇θ of Σ sg(λ) l equals ∇θ of the reference Σ z log D / sg(c) on a small model."""
    theta, x = jnp.array([0.3, -1.2, 0.8]), jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)
    logits = jnp.array([0.4, -0.2, 0.1])
    method = bl.famo()
    state = method.init(3)._replace(logits=logits)

    def losses_fn(theta):
        return (x @ theta) ** 2 + 0.1

    def reference(theta):
        losses, z = losses_fn(theta), jax.nn.softmax(logits)
        c = jax.lax.stop_gradient(jnp.sum(z / (losses + 1e-8)))
        return jnp.sum(z * jnp.log(losses + 1e-8) / c)

    def library(theta):
        losses = losses_fn(theta)
        return bl.weighted_loss(method.weights(state, losses), losses)

    np.testing.assert_allclose(
        jax.grad(library)(theta), jax.grad(reference)(theta), rtol=1e-5, atol=1e-6
    )


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
    method = bl.gradnorm(shared, alpha)
    tx = optax.sgd(lr)
    params = {"W": jnp.asarray(w0, jnp.float32), "h": jnp.asarray(h0, jnp.float32)}
    logits, state = jnp.zeros(2), method.init(2)
    opt_state = tx.init((params, logits))
    grads_fn = jax.jit(
        lambda p, s, st: method.grads(lambda q: linear_model_losses(q, x, y), p, s, st)
    )
    for expected in gradnorm_reference(x, y, w0, h0, lr, alpha, steps):
        param_grads, logit_grad, state, _ = grads_fn(params, logits, state)
        updates, opt_state = tx.update((param_grads, logit_grad), opt_state)
        params, logits = optax.apply_updates((params, logits), updates)
        for got, want in zip((params["W"], params["h"], logits), expected):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(logits)).max() > 0.01  # the weights moved
    assert int(state.count) == steps


def test_gradnorm_norms_cover_exactly_the_selected_parameters():
    """With alpha = 0 and two tasks, sign(∂L_grad/∂s_0) = sign(n_1 - n_0): norms over W."""
    params = {"trunk": {"a": jnp.array([1.0, 2.0]), "b": jnp.array(0.5)}, "head": jnp.ones(2)}

    def loss_fn(p):
        feature = jnp.sum(p["trunk"]["a"]) * p["trunk"]["b"]
        return jnp.stack([(p["head"][0] * feature) ** 2, 10 * p["head"][1] * feature])

    feature, h = 1.5, np.ones(2)
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
        _, logit_grad, _, losses = method.grads(loss_fn, params, jnp.zeros(2), method.init(2))
        expected = jax.grad(bl.gradnorm_balance_loss)(
            jnp.zeros(2), jnp.asarray(norms, jnp.float32), losses, losses, 0.0
        )
        np.testing.assert_allclose(logit_grad, expected, rtol=1e-5)
        z, u = np.full(2, 0.5), np.sign(norms - norms.mean()) * norms
        np.testing.assert_allclose(logit_grad, 2 * z * (u - z @ u), rtol=1e-5)


def test_gradnorm_model_gradient_is_the_weighted_sum_and_l0_is_the_first_step(rng):
    params = {"W": jnp.array([0.5, -0.5, 1.0]), "h": jnp.array([1.0, 2.0])}
    x, y = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), jnp.zeros((8, 2))
    logits = jnp.array([0.3, -0.3])
    method = bl.gradnorm({"W": True, "h": False})
    state = method.init(2)
    param_grads, _, state, losses = method.grads(
        lambda p: linear_model_losses(p, x, y), params, logits, state
    )
    w = 2 * softmax(np.array([0.3, -0.3]))
    np.testing.assert_allclose(bl.gradnorm_weights(logits), w, rtol=1e-6)
    expected = jax.grad(lambda p: jnp.dot(w, linear_model_losses(p, x, y)))(params)
    for leaf, want in zip(jax.tree.leaves(param_grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(leaf, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.initial_losses, losses)
    _, _, state, _ = method.grads(lambda p: 2 * linear_model_losses(p, x, y), params, logits, state)
    np.testing.assert_allclose(state.initial_losses, losses)


# Validation ----------------------------------------------------------------------------

LOSSES = jnp.ones(2)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: bl.weighted_loss(jnp.ones(3), LOSSES), ValueError, "shape of losses"),
        (lambda: bl.weighted_loss(jnp.ones(2), jnp.ones((2, 1))), ValueError, r"shape \(T,\)"),
        (lambda: bl.weighted_loss(jnp.ones(2), jnp.array([1, 2])), TypeError, "floating dtype"),
        (lambda: bl.weighted_loss(jnp.ones(1), jnp.array(1.0)), ValueError, r"got shape \(\)"),
        (lambda: bl.weighted_loss(jnp.ones(0), jnp.ones(0)), ValueError, r"shape \(T,\)"),
        (lambda: bl.dwa(0), ValueError, "steps_per_epoch must be >= 1"),
        (lambda: bl.dwa(2.0), TypeError, "steps_per_epoch must be an int"),
        (lambda: bl.dwa(2, temperature=0.0), ValueError, "temperature must be a finite"),
        (lambda: bl.dwa(2).init(0), ValueError, "num_losses must be an int >= 1"),
        (lambda: bl.equal_weighting().init(2.0), ValueError, "num_losses must be an int"),
        (lambda: bl.rlw("a"), TypeError, "seed must be an int or a PRNG key"),
        (lambda: bl.famo(learning_rate=0.0), ValueError, "learning_rate must be a finite"),
        (lambda: bl.famo(weight_decay=-1e-3), ValueError, "weight_decay must be a finite"),
        (lambda: bl.famo().update(bl.famo().init(2), LOSSES), ValueError, "needs losses_after"),
        (
            lambda: bl.famo().update(bl.famo().init(2), LOSSES, losses_after=jnp.ones(3)),
            ValueError,
            "losses_after has 3 entries, expected 2",
        ),
        (lambda: bl.dwa(2).weights(bl.dwa(2).init(3), LOSSES), ValueError, "expected 3"),
        (lambda: bl.init_log_vars(2, init=float("nan")), ValueError, "init must be a finite"),
        (lambda: bl.init_log_vars(2, dtype=jnp.int32), TypeError, "floating dtype"),
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
    params = {"W": jnp.ones(3), "h": jnp.ones(2)}
    method = bl.gradnorm(shared)
    with pytest.raises(error, match=message):
        method.grads(lambda p: p["h"] * jnp.sum(p["W"]), params, jnp.zeros(2), method.init(2))


def test_errors_are_raised_at_trace_time_under_jit():
    method = bl.dwa(2)
    with pytest.raises(ValueError, match="expected 2"):
        jax.jit(method.update)(method.init(2), jnp.ones(3))
    with pytest.raises(TypeError, match="floating dtype"):
        jax.jit(bl.uncertainty_loss)(jnp.zeros(2), jnp.array([1, 2]))
    gradnorm = bl.gradnorm(True)
    with pytest.raises(ValueError, match=r"shape \(T,\)"):
        jax.jit(gradnorm.grads, static_argnums=0)(
            lambda p: jnp.sum(p), jnp.ones(2), jnp.zeros(2), gradnorm.init(2)
        )


def test_traced_hyperparameters_are_accepted():
    value = jax.jit(lambda a: bl.gradnorm_balance_loss(jnp.zeros(2), LOSSES, LOSSES, LOSSES, a))
    assert float(value(1.5)) == pytest.approx(0.0)
