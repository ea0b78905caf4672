"""The default YOTO path lets µ learn: with ``yoto_optimizer(tx)`` and no further
arguments µ reaches the K = 1 stationary point of method's closed form within a few
hundred steps, whatever the model's learning rate; on the model's optimizer (the
paper's setting, ``mu_learning_rate=None``) it does not."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import yoto_jax

# (l_0, l_1, ρ) -> µ* = (l_0 − l_1)/ρ − 1/λ_0*, the unique stationary point for K = 1
STATIONARY = [
    ((1.0, 0.5, 1.0), -0.904674),
    ((2.0, 0.1, 0.5), 0.728347),
    ((0.3, 0.9, 2.0), -1.518943),
]
STEPS = 300


def train_mu(model_lr: float, losses: tuple[float, float], rho: float, **kwargs) -> np.ndarray:
    """µ over STEPS steps of one optimizer over a model and µ (ε = 0.1); the losses are
    constants plus a small model term, so µ's target is the closed form."""
    params = {"w": jnp.array([0.5, -0.3]), "yoto_mu": yoto_jax.init_mu(1, eps=0.1)}
    tx = yoto_jax.yoto_optimizer(optax.adam(model_lr), rho, **kwargs)

    def loss(params):
        model_term = 1e-3 * jnp.sum(params["w"] ** 2)
        return yoto_jax.yoto_composite(params["yoto_mu"], jnp.asarray(losses) + model_term)

    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), params["yoto_mu"][0]

    _, trajectory = jax.lax.scan(step, (params, tx.init(params)), None, length=STEPS)
    return np.asarray(trajectory)


def closed_form(l0: float, l1: float, rho: float, mu: float) -> float:
    """The residual of λ_0 λ_1 (l_1 − l_0) + ρ(λ_0 λ_1 µ + λ_1) = 0 at µ."""
    lam1 = 1.0 / (1.0 + np.exp(-mu))
    lam0 = 1.0 - lam1
    return lam0 * lam1 * (l1 - l0) + rho * (lam0 * lam1 * mu + lam1)


@pytest.mark.parametrize("model_lr", [1e-4, 1e-3, 1e-2])
@pytest.mark.parametrize("point", STATIONARY)
def test_default_moves_mu_to_its_stationary_point(model_lr, point):
    (l0, l1, rho), mu_star = point
    assert abs(closed_form(l0, l1, rho, mu_star)) < 1e-6  # the oracle itself
    trajectory = train_mu(model_lr, (l0, l1), rho)
    np.testing.assert_allclose(trajectory[-50:], mu_star, atol=1e-4)
    # and it gets there early: within 0.05 nats after 100 steps
    assert np.max(np.abs(trajectory[100:] - mu_star)) < 0.05


@pytest.mark.parametrize("model_lr", [1e-4, 1e-3])
def test_paper_setting_leaves_mu_near_log_eps(model_lr):
    """µ on the model's Adam moves about model_lr per step: it stays near log ε."""
    (l0, l1, rho), mu_star = STATIONARY[1]
    trajectory = train_mu(model_lr, (l0, l1), rho, mu_learning_rate=None)
    assert np.max(np.abs(trajectory - np.log(0.1))) <= 1.05 * model_lr * STEPS
    assert abs(trajectory[-1] - mu_star) > 2.0


def test_mu_learning_rate_is_the_step_size_in_nats():
    """Far from equilibrium Adam's step is its learning rate: µ moves lr per step."""
    for lr in (0.01, 0.05):
        trajectory = train_mu(1e-3, (2.0, 0.1), 0.5, mu_learning_rate=lr)
        np.testing.assert_allclose(np.diff(trajectory[:20]), lr, rtol=0.1)


def test_mu_tx_overrides_the_default_and_bad_rates_are_rejected():
    trajectory = train_mu(1e-3, (2.0, 0.1), 0.5, mu_tx=optax.sgd(0.0))
    np.testing.assert_array_equal(trajectory, np.log(np.float32(0.1)))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="mu_learning_rate must be a finite number > 0"):
            yoto_jax.yoto_optimizer(optax.adam(1e-3), mu_learning_rate=bad)
