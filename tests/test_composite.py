"""Values and gradients of the composite loss and the regulariser against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yoto_jax
from yoto_jax.composite import named_composite, named_loss_weights

MU = np.array([0.3, -1.2, 2.0])
LOSSES = np.array([1.5, 0.4, 2.2, 0.9])


def reference_weights(mu):
    """λ_0 = 1/(1 + Σ e^µ), λ_i = e^µ_i λ_0 — method.md, in plain NumPy."""
    primary = 1.0 / (1.0 + np.exp(mu).sum())
    return np.concatenate([[primary], np.exp(mu) * primary])


def reference_regularizer(mu):
    weights = reference_weights(mu)
    return np.sum(weights * np.log(weights)) + np.sum(np.log1p(np.exp(mu)))


def finite_difference(f, x, step=1e-6):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for i in range(x.size):
        delta = np.zeros_like(x)
        delta[i] = step
        grad[i] = (f(x + delta) - f(x - delta)) / (2 * step)
    return grad


def test_loss_weights_match_closed_form():
    weights = yoto_jax.loss_weights(MU)
    np.testing.assert_allclose(weights, reference_weights(MU), rtol=1e-6)
    np.testing.assert_allclose(weights[1:] / weights[0], np.exp(MU), rtol=1e-5)


def test_composite_value_and_eq6_gradient():
    weights = reference_weights(MU)
    total = weights @ LOSSES
    np.testing.assert_allclose(yoto_jax.yoto_composite(MU, LOSSES), total, rtol=1e-6)
    grad_mu, grad_losses = jax.grad(yoto_jax.yoto_composite, argnums=(0, 1))(
        jnp.asarray(MU, jnp.float32), jnp.asarray(LOSSES, jnp.float32)
    )
    np.testing.assert_allclose(grad_mu, weights[1:] * (LOSSES[1:] - total), rtol=1e-5)
    np.testing.assert_allclose(grad_losses, weights, rtol=1e-6)


def test_gradients_match_finite_differences_in_float64(x64):
    mu = jnp.asarray(MU, jnp.float64)
    losses = jnp.asarray(LOSSES, jnp.float64)
    grad_mu = jax.grad(yoto_jax.yoto_composite)(mu, losses)
    assert grad_mu.dtype == jnp.float64
    expected = finite_difference(lambda m: float(yoto_jax.yoto_composite(m, losses)), MU)
    np.testing.assert_allclose(grad_mu, expected, rtol=1e-8)
    grad_r = jax.grad(yoto_jax.regularizer)(mu)
    np.testing.assert_allclose(grad_r, finite_difference(reference_regularizer, MU), rtol=1e-8)


def test_regularizer_value_and_closed_form_gradient():
    np.testing.assert_allclose(yoto_jax.regularizer(MU), reference_regularizer(MU), rtol=1e-6)
    weights = reference_weights(MU)
    entropy = -np.sum(weights * np.log(weights))
    closed_form = weights[1:] * (np.log(weights[1:]) + entropy) + 1 / (1 + np.exp(-MU))
    np.testing.assert_allclose(yoto_jax.regularizer_grad(MU), closed_form, rtol=1e-5)
    np.testing.assert_allclose(
        jax.grad(yoto_jax.regularizer)(jnp.asarray(MU)), closed_form, rtol=1e-5
    )


def test_regularizer_alone_is_minimised_at_method_md_value(x64):
    """Fact 2: for K = 1, R alone is smallest at µ ≈ −1.2785, λ_1 ≈ 0.218."""
    grid = jnp.linspace(-3.0, 1.0, 400_001, dtype=jnp.float64)
    values = jax.vmap(lambda m: yoto_jax.regularizer(m[None]))(grid)
    minimiser = grid[jnp.argmin(values)]
    np.testing.assert_allclose(minimiser, -1.2785, atol=1e-4)
    np.testing.assert_allclose(yoto_jax.regularizer_grad(minimiser[None]), 0.0, atol=1e-4)
    np.testing.assert_allclose(yoto_jax.loss_weights(minimiser[None])[1], 0.218, atol=5e-4)


def test_entropy_only_optimum_is_a_boltzmann_distribution(x64):
    """Fact 4: without softplus, λ·l − ρH(λ) is minimised at λ ∝ exp(−l/ρ)."""
    rho = 0.7
    losses = jnp.asarray(LOSSES)

    def objective(mu):
        negated_entropy = yoto_jax.regularizer(mu) - jnp.sum(jax.nn.softplus(mu))
        return yoto_jax.yoto_composite(mu, losses) + rho * negated_entropy

    boltzmann_mu = -(losses[1:] - losses[0]) / rho
    np.testing.assert_allclose(jax.grad(objective)(boltzmann_mu), 0.0, atol=1e-12)
    np.testing.assert_allclose(
        yoto_jax.loss_weights(boltzmann_mu), jax.nn.softmax(-losses / rho), rtol=1e-12
    )


def test_named_and_array_forms_agree():
    names = ["segmentation", "consistency", "camera"]
    mu = dict(zip(names, MU))
    losses = {"depth": LOSSES[0], **dict(zip(names, LOSSES[1:]))}
    np.testing.assert_allclose(
        yoto_jax.yoto_composite(mu, losses), yoto_jax.yoto_composite(MU, LOSSES), rtol=1e-6
    )
    grads = jax.grad(yoto_jax.yoto_composite)(mu, losses)
    array_grads = jax.grad(yoto_jax.yoto_composite)(jnp.asarray(MU), LOSSES)
    np.testing.assert_allclose([grads[n] for n in names], array_grads, rtol=1e-5)
    weights = yoto_jax.loss_weights(mu, primary="depth")
    np.testing.assert_allclose(
        [weights[n] for n in ["depth", *names]], reference_weights(MU), rtol=1e-6
    )
    np.testing.assert_allclose(yoto_jax.regularizer(mu), reference_regularizer(MU), rtol=1e-6)
    by_name = named_loss_weights(MU, "depth", names)
    assert by_name.keys() == weights.keys()
    np.testing.assert_allclose(
        named_composite(MU, losses, "depth", names),
        yoto_jax.yoto_composite(MU, LOSSES),
        rtol=1e-6,
    )


def test_init_mu_starts_each_auxiliary_at_eps_times_the_primary():
    mu = yoto_jax.init_mu(3, eps=0.05)
    assert mu.shape == (3,) and mu.dtype == jnp.float32
    weights = yoto_jax.loss_weights(mu)
    np.testing.assert_allclose(weights[1:] / weights[0], 0.05, rtol=1e-5)
    named = yoto_jax.init_mu(["a", "b"], eps=2.0)
    assert set(named) == {"a", "b"}
    np.testing.assert_allclose(named["a"], np.log(2.0), rtol=1e-6)
    assert yoto_jax.init_mu(1, 0.1, dtype=jnp.bfloat16).dtype == jnp.bfloat16


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    mu = jnp.asarray(MU, dtype)
    losses = jnp.asarray(LOSSES, dtype)
    loss = yoto_jax.yoto_composite(mu, losses)
    assert loss.dtype == jnp.float32
    assert yoto_jax.loss_weights(mu).dtype == jnp.float32
    expected = reference_weights(np.asarray(mu, np.float64)) @ np.asarray(losses, np.float64)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_extreme_logits_give_finite_weights_loss_and_gradients():
    mu = jnp.array([1e4, -1e4, 0.0])
    losses = jnp.asarray(LOSSES, jnp.float32)
    np.testing.assert_allclose(yoto_jax.loss_weights(mu), [0.0, 1.0, 0.0, 0.0], atol=1e-30)
    np.testing.assert_allclose(yoto_jax.yoto_composite(mu, losses), LOSSES[1], rtol=1e-6)
    for value in [
        jax.grad(yoto_jax.yoto_composite)(mu, losses),
        yoto_jax.regularizer(mu),
        jax.grad(yoto_jax.regularizer)(mu),
        yoto_jax.regularizer_grad(mu),
    ]:
        assert jnp.all(jnp.isfinite(value))
    # softplus(1e4) = 1e4 dominates R; its gradient σ(1e4) = 1.
    np.testing.assert_allclose(yoto_jax.regularizer(mu), 1e4 + np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(yoto_jax.regularizer_grad(mu)[0], 1.0, rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_loss_propagates(bad):
    losses = jnp.asarray(LOSSES, jnp.float32).at[2].set(bad)
    loss = yoto_jax.yoto_composite(jnp.asarray(MU, jnp.float32), losses)
    assert not jnp.isfinite(loss)
    grad_mu = jax.grad(yoto_jax.yoto_composite)(jnp.asarray(MU, jnp.float32), losses)
    assert not jnp.all(jnp.isfinite(grad_mu))


def test_jit_gives_the_same_numbers():
    mu, losses = jnp.asarray(MU, jnp.float32), jnp.asarray(LOSSES, jnp.float32)
    for fn in [yoto_jax.loss_weights, yoto_jax.regularizer, yoto_jax.regularizer_grad]:
        np.testing.assert_allclose(jax.jit(fn)(mu), fn(mu), rtol=1e-6)
    np.testing.assert_allclose(
        jax.jit(yoto_jax.yoto_composite)(mu, losses), yoto_jax.yoto_composite(mu, losses), rtol=1e-6
    )


def test_primary_floor_mixes_in_the_primary_and_scales_the_logit_gradient():
    mu = jnp.array([0.4, -1.3, 2.1])
    losses = jnp.array([0.7, 0.2, 1.5, 0.05])
    floor = 0.3
    plain = np.asarray(yoto_jax.loss_weights(mu), np.float64)
    expected = (1 - floor) * plain + floor * np.eye(4)[0]
    np.testing.assert_allclose(yoto_jax.loss_weights(mu, primary_floor=floor), expected, rtol=1e-6)
    loss, grad = jax.value_and_grad(yoto_jax.yoto_composite)(mu, losses, primary_floor=floor)
    np.testing.assert_allclose(loss, expected @ np.asarray(losses, np.float64), rtol=1e-6)
    # ∂L'/∂µ_i = (1 − m) λ_i (l_i − L), L the unfloored composite (Eq. 6 scaled)
    unfloored = plain @ np.asarray(losses, np.float64)
    np.testing.assert_allclose(
        grad, (1 - floor) * plain[1:] * (np.asarray(losses[1:]) - unfloored), rtol=1e-5
    )
    assert float(yoto_jax.loss_weights(jnp.array([50.0, 50.0]), primary_floor=floor)[0]) >= floor
    named = yoto_jax.loss_weights({"a": 0.4, "b": -1.3, "c": 2.1}, "p", primary_floor=floor)
    np.testing.assert_allclose(named["p"], expected[0], rtol=1e-6)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"primary_floor must be a finite number in \[0, 1\)"):
            yoto_jax.yoto_composite(mu, losses, primary_floor=bad)
    with pytest.raises(ValueError, match="'uniform'"):
        from yoto_jax.nnx import LossWeights

        LossWeights("p", ["a"], primary_floor="flat")
