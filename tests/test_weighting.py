"""The Weighting NamedTuple's defaults and fixed_weights' checks of its weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import yoto_jax
from yoto_jax.weighting import Weighting, WeightingStep, keep_state, same_optimizer


def test_weighting_defaults_keep_the_state_and_the_optimizer():
    def init(num_losses):
        return {}, jnp.zeros(num_losses)

    def step(losses_fn, model_params, params, state, *, key=None):
        losses = losses_fn(model_params)
        return WeightingStep(losses, jnp.ones_like(losses), model_params, {}, state + 1.0)

    def weights(params, state):
        return jnp.ones_like(state)

    weighting = Weighting(init, step, weights=weights)
    assert weighting == (init, step, keep_state, weights, same_optimizer)
    assert weighting._fields == ("init", "step", "after_update", "weights", "optimizer")
    tx = optax.sgd(0.1)
    assert weighting.optimizer(tx) is tx
    result = weighting.step(lambda w: jnp.stack([w, 2.0 * w]), jnp.float32(1.0), *init(2))
    np.testing.assert_array_equal(weighting.after_update(None, None, result), [1.0, 1.0])
    # Positional construction and _replace still work as for any NamedTuple.
    assert Weighting(init, step, keep_state, weights, same_optimizer) == weighting
    assert weighting._replace(optimizer=optax.adam).optimizer is optax.adam
    with pytest.raises(TypeError, match="Weighting needs weights"):
        Weighting(init, step)


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0, float("nan")], r"weights must hold finite numbers >= 0, got \[1.0, nan\]"),
        ([1.0, float("inf")], r"weights must hold finite numbers >= 0, got \[1.0, inf\]"),
        ([1.0, -0.5], r"weights must hold finite numbers >= 0, got \[1.0, -0.5\]"),
    ],
)
def test_fixed_weights_rejects_non_finite_or_negative_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        yoto_jax.fixed_weights(jnp.array(weights))


def test_fixed_weights_accepts_zero_and_traced_weights():
    losses_fn = lambda w: jnp.stack([w**2, (w - 1.0) ** 2])
    weighting = yoto_jax.fixed_weights(jnp.array([1.0, 0.0]))
    result = weighting.step(losses_fn, jnp.float32(0.5), *weighting.init(2))
    np.testing.assert_allclose(result.model_grads, 1.0, rtol=1e-6)  # d/dw w² at 0.5

    def grad_at(weights):  # traced weights are not inspected
        weighting = yoto_jax.fixed_weights(weights)
        return weighting.step(losses_fn, jnp.float32(0.5), *weighting.init(2)).model_grads

    grads = jax.vmap(grad_at)(jnp.array([[1.0, 0.0], [1.0, 2.0]]))
    np.testing.assert_allclose(grads, [1.0, 1.0 + 2.0 * 2.0 * (0.5 - 1.0)], rtol=1e-6)
