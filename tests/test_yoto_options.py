"""``yoto(loss_floor=..., normalize=...)`` against closed forms in NumPy, and the checks of
its arguments (the options the task suite compares for the default)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import yoto_jax

LOSSES = np.array([0.8, 2.5, 0.1], np.float32)


def softmax0(mu: np.ndarray) -> np.ndarray:
    logits = np.concatenate([[0.0], mu])
    return np.exp(logits) / np.exp(logits).sum()


def losses_fn(w: jax.Array) -> jax.Array:
    """Three losses of a parameter vector, each with its own gradient."""
    return jnp.asarray(LOSSES) * jnp.array([1.0 + w[0] ** 2, 1.0 + w[1] ** 2, 1.0 + w[0] * w[1]])


W = jnp.array([0.3, -0.7])


def step(weighting, state=None):
    params, initial = weighting.init(3)
    params = {"yoto_mu": jnp.array([0.4, -1.1])}
    return weighting.step(losses_fn, W, params, initial if state is None else state)


def per_loss_grads(w: np.ndarray) -> np.ndarray:
    """d l_i / d w by hand, shape (3, 2)."""
    return LOSSES[:, None] * np.array([[2 * w[0], 0.0], [0.0, 2 * w[1]], [w[1], w[0]]])


@pytest.mark.parametrize("loss_floor", [0.0, 0.5, 1.0])
def test_loss_floor_mixes_the_weights_with_uniform(loss_floor):
    mu = np.array([0.4, -1.1])
    result = step(yoto_jax.yoto(primary_floor=0.0, loss_floor=loss_floor))
    free = softmax0(mu)
    expected = loss_floor / 3 + (1 - loss_floor) * free
    np.testing.assert_allclose(result.weights, expected, rtol=1e-5)
    assert np.all(np.asarray(result.weights) >= loss_floor / 3 - 1e-7)
    # the model descends Σ λ''_i l_i; µ the composite scaled by 1 − m (Eq. 6)
    w = np.asarray(W, np.float64)
    losses = np.asarray(losses_fn(W))
    np.testing.assert_allclose(result.model_grads, expected @ per_loss_grads(w), rtol=1e-5)
    mean = free @ losses
    np.testing.assert_allclose(
        result.grads["yoto_mu"], (1 - loss_floor) * free[1:] * (losses[1:] - mean), rtol=1e-5
    )


def test_primary_and_loss_floors_compose():
    result = step(yoto_jax.yoto(primary_floor=0.25, loss_floor=0.4))
    primary = 0.25 * np.eye(3)[0] + 0.75 * softmax0(np.array([0.4, -1.1]))
    np.testing.assert_allclose(result.weights, 0.4 / 3 + 0.6 * primary, rtol=1e-5)


@pytest.mark.parametrize("normalize", ["mean", "each"])
def test_normalize_shows_mu_the_losses_over_their_running_mean(normalize):
    """Over three steps: the state is the biased EMA with its count; µ's gradient is the
    composite's at l / c, c the bias-corrected EMA (including this step's losses); the
    model's gradient is the composite's on the raw losses."""
    decay = 0.9
    weighting = yoto_jax.yoto(loss_floor=0.0, normalize=normalize, normalize_decay=decay)
    _, state = weighting.init(3)
    ema = np.zeros(3)
    mu = np.array([0.4, -1.1])
    free = softmax0(mu)
    w = np.asarray(W, np.float64)
    for count in (1, 2, 3):
        result = step(weighting, state)
        losses = np.asarray(losses_fn(W))
        ema = decay * ema + (1 - decay) * losses
        scale = ema / (1 - decay**count)
        if normalize == "mean":
            scale = np.full(3, scale.mean())
        seen = losses / scale
        np.testing.assert_allclose(
            result.grads["yoto_mu"], free[1:] * (seen[1:] - free @ seen), rtol=1e-5, atol=1e-7
        )
        np.testing.assert_allclose(result.model_grads, free @ per_loss_grads(w), rtol=1e-5)
        state = result.state
        np.testing.assert_allclose(state.mean, ema, rtol=1e-5)
        assert int(state.count) == count


def test_normalize_mean_is_rho_relative_to_the_losses_scale():
    """Scaling every loss by c leaves µ's gradient under ``"mean"`` unchanged."""
    weighting = yoto_jax.yoto(loss_floor=0.0, normalize="mean")
    params, state = weighting.init(3)

    def grads(scale):
        result = weighting.step(lambda w: scale * losses_fn(w), W, params, state)
        return np.asarray(result.grads["yoto_mu"])

    np.testing.assert_allclose(grads(100.0), grads(1.0), rtol=1e-5)


def test_the_defaults():
    """ε = 1, no primary floor, every weight >= 0.8/T, µ's own Adam; no state."""
    weighting = yoto_jax.yoto()
    params, state = weighting.init(3)
    assert state == () and params["yoto_mu"].tolist() == [0.0, 0.0]
    mu = {"yoto_mu": jnp.array([-30.0, 4.0])}
    free = softmax0(np.array([-30.0, 4.0]))
    np.testing.assert_allclose(weighting.weights(mu, state), 0.8 / 3 + 0.2 * free, rtol=1e-5)
    assert isinstance(weighting.optimizer(optax.sgd(0.1)), optax.GradientTransformation)
    assert (yoto_jax.DEFAULT_EPS, yoto_jax.DEFAULT_LOSS_FLOOR) == (1.0, 0.8)
    assert (yoto_jax.DEFAULT_PRIMARY_FLOOR, yoto_jax.DEFAULT_MU_LEARNING_RATE) == (0.0, 0.05)


def test_loss_floor_of_the_composite_and_the_weights_agree():
    """``yoto_composite(..., loss_floor=m)`` is Σ λ''_i l_i with ``loss_weights``' λ''."""
    mu, losses = jnp.array([0.4, -1.1]), jnp.asarray(LOSSES)
    for floors in ({"loss_floor": 0.8}, {"loss_floor": 0.3, "primary_floor": 0.25}):
        weights = yoto_jax.loss_weights(mu, **floors)
        np.testing.assert_allclose(
            yoto_jax.yoto_composite(mu, losses, **floors), weights @ LOSSES, rtol=1e-6
        )


def test_eps_per_auxiliary():
    params, _ = yoto_jax.yoto(eps=jnp.array([0.5, 2.0])).init(3)
    np.testing.assert_allclose(params["yoto_mu"], np.log([0.5, 2.0]), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"eps": jnp.array([0.1, 0.0])}, ValueError, "eps must hold finite numbers > 0"),
        ({"eps": np.array([0.1, -1.0])}, ValueError, "eps must hold finite numbers > 0"),
        ({"eps": np.array([0.1, np.nan])}, ValueError, "eps must hold finite numbers > 0"),
        ({"loss_floor": 1.5}, ValueError, r"loss_floor must be a finite number in \[0, 1\]"),
        ({"loss_floor": -0.1}, ValueError, "loss_floor"),
        ({"normalize": "max"}, ValueError, "normalize must be None or one of"),
        ({"normalize_decay": 1.0}, ValueError, "normalize_decay"),
        ({"rho": lambda count: -5.0}, ValueError, r"rho \(a schedule, at step 0\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        yoto_jax.yoto(**kwargs)


def test_eps_of_the_wrong_length_is_named():
    with pytest.raises(ValueError, match=r"eps must be a scalar or have shape \(K,\) = \(2,\)"):
        yoto_jax.yoto(eps=jnp.array([0.5, 1.0, 2.0])).init(3)


def test_traced_options_are_not_checked():
    """Hyperparameters may be traced (vmapped over a grid of candidates)."""

    def weights(eps, loss_floor):
        weighting = yoto_jax.yoto(eps=eps, loss_floor=loss_floor, primary_floor=0.0)
        return weighting.weights(*weighting.init(2))

    out = jax.vmap(weights)(jnp.array([1.0, 1.0]), jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(out, [[0.5, 0.5], [0.5, 0.5]], rtol=1e-6)
