"""hyperparameter_decay: closed-form updates, the K=1 stationary point, optax composition."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import yoto_jax


def constant_loss_objective(losses):
    """µ ↦ L_e(µ) for fixed losses: the data part of the µ gradient."""
    return lambda params: yoto_jax.yoto_composite(params["yoto_mu"], losses)


def train(tx, loss_fn, params, steps):
    """`steps` of `tx` on `loss_fn`, jitted as one scan; returns the final params."""

    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(loss_fn)(params), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
    return params


def test_update_adds_rho_times_closed_form_gradient_to_mu_only():
    params = {"w": jnp.ones((2, 3)), "yoto_mu": jnp.array([0.5, -1.0])}
    grads = {"w": jnp.full((2, 3), 0.25), "yoto_mu": jnp.array([0.1, 0.2])}
    for mask in [yoto_jax.mu_mask, {"w": False, "yoto_mu": True}]:
        tx = yoto_jax.hyperparameter_decay(0.3, mask=mask)
        updates, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_array_equal(updates["w"], grads["w"])
        expected = grads["yoto_mu"] + 0.3 * yoto_jax.regularizer_grad(params["yoto_mu"])
        np.testing.assert_allclose(updates["yoto_mu"], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "primary, auxiliary, rho, mu_star",
    [(1.0, 0.5, 1.0, -0.904674), (2.0, 0.1, 0.5, 0.728347), (0.3, 0.9, 2.0, -1.518943)],
)
def test_sgd_converges_to_the_k1_stationary_point(primary, auxiliary, rho, mu_star):
    """Fact 1: µ* = (l_0 − l_1)/ρ − 1/λ_0*, reached by plain gradient descent."""
    losses = jnp.array([primary, auxiliary])
    tx = optax.chain(yoto_jax.hyperparameter_decay(rho), optax.sgd(0.5))
    final = train(tx, constant_loss_objective(losses), {"yoto_mu": yoto_jax.init_mu(1, 0.1)}, 3000)
    mu = final["yoto_mu"][0]
    np.testing.assert_allclose(mu, mu_star, atol=1e-4)
    primary_weight = yoto_jax.loss_weights(final["yoto_mu"])[0]
    np.testing.assert_allclose(mu, (primary - auxiliary) / rho - 1 / primary_weight, atol=1e-4)


def test_first_in_chain_equals_adding_rho_r_to_the_loss():
    losses = jnp.array([1.0, 0.3, 2.0])
    rho = 0.4
    data_loss = constant_loss_objective(losses)
    params = {"yoto_mu": yoto_jax.init_mu(2, 0.1)}
    coupled = train(
        optax.chain(yoto_jax.hyperparameter_decay(rho), optax.adam(0.05)), data_loss, params, 50
    )
    in_loss = train(
        optax.adam(0.05),
        lambda p: data_loss(p) + rho * yoto_jax.regularizer(p["yoto_mu"]),
        params,
        50,
    )
    np.testing.assert_allclose(coupled["yoto_mu"], in_loss["yoto_mu"], rtol=1e-5)


def test_jit_and_eager_updates_agree():
    params = {"yoto_mu": jnp.array([0.2, -0.7])}
    grads = {"yoto_mu": jnp.array([0.05, -0.02])}
    tx = yoto_jax.hyperparameter_decay(0.2)
    eager = tx.update(grads, tx.init(params), params)
    jitted = jax.jit(tx.update)(grads, tx.init(params), params)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-6)
    np.testing.assert_allclose(
        eager[0]["yoto_mu"],
        grads["yoto_mu"] + 0.2 * yoto_jax.regularizer_grad(params["yoto_mu"]),
        rtol=1e-6,
    )


def test_named_mu_is_one_group_and_groups_are_independent():
    named = {"seg": jnp.array(0.4), "cons": jnp.array(-0.9)}
    params = {"head_a": {"yoto_mu": named}, "head_b": {"yoto_mu": jnp.array([1.5])}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = yoto_jax.hyperparameter_decay(1.0, mask=yoto_jax.mu_mask)
    updates, _ = tx.update(zeros, tx.init(params), params)
    named_grad = jax.grad(yoto_jax.regularizer)(named)
    for name in named:
        np.testing.assert_allclose(updates["head_a"]["yoto_mu"][name], named_grad[name], rtol=1e-5)
    np.testing.assert_allclose(
        updates["head_b"]["yoto_mu"], yoto_jax.regularizer_grad(jnp.array([1.5])), rtol=1e-6
    )


def test_rho_schedule_uses_the_step_count():
    params = {"yoto_mu": jnp.array([0.3])}
    zeros = {"yoto_mu": jnp.zeros(1)}
    tx = yoto_jax.hyperparameter_decay(optax.linear_schedule(0.0, 1.0, 4))
    state = tx.init(params)
    grad_r = yoto_jax.regularizer_grad(params["yoto_mu"])
    for step in range(6):
        updates, state = tx.update(zeros, state, params)
        np.testing.assert_allclose(updates["yoto_mu"], min(step / 4, 1.0) * grad_r, rtol=1e-6)


def test_inject_hyperparams_changes_rho_without_retracing():
    params = {"w": jnp.ones(3), "yoto_mu": jnp.array([0.3, -0.4])}
    grads = jax.tree.map(jnp.zeros_like, params)
    tx = optax.inject_hyperparams(yoto_jax.hyperparameter_decay, static_args=("mask",))(
        rho=0.1, mask=yoto_jax.mu_mask
    )
    traces = []

    @jax.jit
    def update(state):
        traces.append(None)
        return tx.update(grads, state, params)

    state = tx.init(params)
    for rho in [0.1, 2.0]:
        state.hyperparams["rho"] = jnp.asarray(rho)
        updates, state = update(state)
        expected = rho * yoto_jax.regularizer_grad(params["yoto_mu"])
        np.testing.assert_allclose(updates["yoto_mu"], expected, rtol=1e-6)
        np.testing.assert_array_equal(updates["w"], 0.0)
    assert len(traces) == 1


def test_partition_gives_mu_its_own_optimizer():
    params = {"w": jnp.array([1.0, 2.0]), "yoto_mu": jnp.array([0.0])}
    grads = {"w": jnp.array([1.0, 1.0]), "yoto_mu": jnp.array([0.5])}
    tx = yoto_jax.yoto_optimizer(optax.sgd(0.1), rho=0.2, mu_tx=optax.sgd(1.0))
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.1, -0.1], rtol=1e-6)
    expected_mu = -(0.5 + 0.2 * yoto_jax.regularizer_grad(params["yoto_mu"]))
    np.testing.assert_allclose(updates["yoto_mu"], expected_mu, rtol=1e-6)
    shared = yoto_jax.yoto_optimizer(optax.sgd(0.1), rho=0.2, mu_learning_rate=None)
    updates, _ = shared.update(grads, shared.init(params), params)
    np.testing.assert_allclose(updates["yoto_mu"], 0.1 * expected_mu, rtol=1e-6)


def test_multisteps_accumulates_then_applies_the_mean_with_decay():
    params = {"yoto_mu": jnp.array([0.2])}
    tx = optax.MultiSteps(
        optax.chain(yoto_jax.hyperparameter_decay(0.5), optax.sgd(1.0)), every_k_schedule=2
    )
    state = tx.init(params)
    first, state = tx.update({"yoto_mu": jnp.array([0.1])}, state, params)
    np.testing.assert_array_equal(first["yoto_mu"], 0.0)
    second, state = tx.update({"yoto_mu": jnp.array([0.3])}, state, params)
    expected = -(0.2 + 0.5 * yoto_jax.regularizer_grad(params["yoto_mu"]))
    np.testing.assert_allclose(second["yoto_mu"], expected, rtol=1e-6)


def test_apply_if_finite_skips_a_non_finite_step():
    params = {"yoto_mu": jnp.array([0.2, -0.3])}
    tx = optax.apply_if_finite(
        optax.chain(yoto_jax.hyperparameter_decay(0.5), optax.adam(0.1)), max_consecutive_errors=3
    )
    state = tx.init(params)
    bad_losses = jnp.array([1.0, jnp.nan, 0.5])
    grads = jax.grad(yoto_jax.yoto_composite)(params["yoto_mu"], bad_losses)
    updates, new_state = tx.update({"yoto_mu": grads}, state, params)
    np.testing.assert_array_equal(updates["yoto_mu"], 0.0)
    assert int(new_state.notfinite_count) == 1
    jax.tree.map(np.testing.assert_array_equal, new_state.inner_state, state.inner_state)


def test_non_mu_leaves_without_a_mask_are_rejected():
    params = {"kernel": jnp.ones((3, 4)), "yoto_mu": jnp.zeros(2)}
    tx = yoto_jax.hyperparameter_decay(0.1)
    with pytest.raises(ValueError, match=r"shape \(3, 4\).*mask=yoto_jax.mu_mask"):
        tx.init(params)


def test_update_without_params_is_an_error():
    tx = yoto_jax.hyperparameter_decay(0.1)
    params = {"yoto_mu": jnp.zeros(2)}
    with pytest.raises(ValueError, match="needs the current"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize("rho", [-0.1, float("nan"), float("inf")])
def test_bad_concrete_rho_is_rejected(rho):
    with pytest.raises(ValueError, match="rho must be a finite number >= 0"):
        yoto_jax.hyperparameter_decay(rho)


def test_a_constant_schedule_keeps_the_count_and_the_updates_of_a_constant_rho():
    """A constant ρ keeps no state; ``optax.constant_schedule(ρ)`` keeps the step count
    that checkpoints written before that change hold, and gives the same updates."""
    params = {"w": jnp.ones(2), "yoto_mu": jnp.array([0.3, -1.0])}
    grads = {"w": jnp.array([0.1, -0.2]), "yoto_mu": jnp.array([0.5, 0.0])}
    constant = yoto_jax.hyperparameter_decay(0.1, mask=yoto_jax.mu_mask)
    scheduled = yoto_jax.hyperparameter_decay(optax.constant_schedule(0.1), mask=yoto_jax.mu_mask)
    constant_state, scheduled_state = constant.init(params), scheduled.init(params)
    assert jax.tree.leaves(constant_state) == []
    (count,) = jax.tree.leaves(scheduled_state)
    assert count.dtype == jnp.int32 and int(count) == 0
    for _ in range(2):
        got, scheduled_state = scheduled.update(grads, scheduled_state, params)
        expected, constant_state = constant.update(grads, constant_state, params)
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_allclose(x, y, rtol=1e-6)
