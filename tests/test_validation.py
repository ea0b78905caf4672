"""Bad input gets a clear Python error at trace time, naming what was expected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yoto_jax
from yoto_jax.composite import named_loss_weights

MU = jnp.zeros(2)
LOSSES = jnp.ones(3)


@pytest.mark.parametrize(
    "mu, losses, error, message",
    [
        (MU, jnp.ones(2), ValueError, r"losses must have shape \(K\+1,\) = \(3,\)"),
        (MU, jnp.ones((3, 4)), ValueError, r"got shape \(3, 4\)"),
        (jnp.zeros((2, 1)), LOSSES, ValueError, r"mu must have shape \(K,\)"),
        (jnp.zeros(0), jnp.ones(1), ValueError, "K >= 1"),
        (jnp.zeros(2, jnp.int32), LOSSES, TypeError, "mu must have a floating dtype"),
        (MU, jnp.array([1, 2, 3]), TypeError, "losses must have a floating dtype"),
        (MU, {"a": 1.0}, TypeError, "losses must be an array"),
        ({"a": 0.0}, LOSSES, TypeError, "losses must be a dict"),
        ({"a": 0.0}, {"a": 1.0}, KeyError, r"plus exactly one primary loss; got 0"),
        ({"a": 0.0}, {"a": 1.0, "p": 1.0, "q": 1.0}, KeyError, r"got 2 other keys: \['p', 'q'\]"),
        ({"a": 0.0, "b": 0.0}, {"a": 1.0, "p": 1.0}, KeyError, r"missing .* \['b'\]"),
        ({"a": 0.0}, {"a": jnp.ones(4), "p": 1.0}, ValueError, r"losses\['a'\] must be a scalar"),
        ({"a": 0.0}, {"a": 1, "p": 1.0}, TypeError, r"losses\['a'\] must have a floating dtype"),
        ({"a": jnp.zeros(2)}, {"a": 1.0, "p": 1.0}, ValueError, r"mu\['a'\] must be a scalar"),
        ({}, {"p": 1.0}, ValueError, "empty dict"),
    ],
)
def test_composite_rejects_bad_input(mu, losses, error, message):
    with pytest.raises(error, match=message):
        yoto_jax.yoto_composite(mu, losses)


def test_errors_are_raised_at_trace_time_under_jit():
    with pytest.raises(ValueError, match=r"losses must have shape \(K\+1,\)"):
        jax.jit(yoto_jax.yoto_composite)(MU, jnp.ones(4))


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((2, 0.0), ValueError, "eps must be a finite number > 0, got 0.0"),
        ((2, -1.0), ValueError, "eps must be a finite number > 0"),
        ((2, float("nan")), ValueError, "eps must be a finite number > 0"),
        ((0, 0.1), ValueError, "must be >= 1"),
        ((2.0, 0.1), TypeError, "int or a sequence of names"),
        (("ab", 0.1), TypeError, "not one string"),
        ((["a", "a"], 0.1), ValueError, "unique"),
        (([], 0.1), ValueError, "non-empty"),
        ((2, jnp.ones(2)), ValueError, "scalar hyperparameter"),
    ],
)
def test_init_mu_rejects_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        yoto_jax.init_mu(*args)


def test_init_mu_rejects_integer_dtype():
    with pytest.raises(TypeError, match="floating dtype"):
        yoto_jax.init_mu(2, 0.1, dtype=jnp.int32)


def test_loss_weights_rejects_primary_name_clash():
    with pytest.raises(KeyError, match="also an auxiliary name"):
        yoto_jax.loss_weights({"primary": 0.0})


def test_named_helpers_check_the_number_of_names():
    with pytest.raises(ValueError, match="mu has 2 logits but 1 auxiliary names"):
        named_loss_weights(MU, "p", ["a"])


def test_traced_hyperparameters_are_not_validated():
    """Under jit ρ is a tracer: validation must not try to read its value."""

    @jax.jit
    def decayed(rho):
        tx = yoto_jax.hyperparameter_decay(rho)
        params = {"yoto_mu": MU}
        return tx.update(params, tx.init(params), params)[0]["yoto_mu"]

    np.testing.assert_allclose(decayed(2.0), 2.0 * yoto_jax.regularizer_grad(MU), rtol=1e-6)
