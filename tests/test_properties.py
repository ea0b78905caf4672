"""Property-based tests over random µ, losses and K: the identities of method.md hold
for every input, not only for the hand-picked ones of test_composite.py.

The oracles are closed forms in float64 NumPy; the library runs in float32 on the
same (float32-rounded) inputs. Tolerances: float32 rounds at 2^-24 ≈ 6e-8 relative,
and softmax, a sum over K + 1 ≤ 65 terms and a logarithm compound a few dozen of
those, so we allow 1e-5 relative, and an absolute 1e-5 times the losses' scale where
a difference of losses (Eq. 6) can cancel.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import yoto_jax

K_VALUES = [1, 2, 5, 16, 64]  # few distinct shapes, so few compilations
RTOL = 1e-5
SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """(µ of shape (K,), losses of shape (K+1,)) in float32, K drawn from K_VALUES."""
    k = draw(st.sampled_from(K_VALUES))
    mu = draw(st.lists(st.floats(-20, 20, width=32), min_size=k, max_size=k))
    losses = draw(st.lists(st.floats(-10, 100, width=32), min_size=k + 1, max_size=k + 1))
    return np.array(mu, np.float32), np.array(losses, np.float32)


def oracle_weights(mu: np.ndarray) -> np.ndarray:
    """λ = softmax([0, µ]) in float64."""
    logits = np.concatenate([[0.0], mu.astype(np.float64)])
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def loss_scale(losses: np.ndarray) -> float:
    """The absolute tolerance of quantities built from differences of losses."""
    return 1e-5 * (1.0 + np.max(np.abs(losses)))


@SETTINGS
@given(problems())
def test_weights_lie_on_the_simplex(problem):
    mu, _ = problem
    weights = np.asarray(yoto_jax.loss_weights(mu))
    assert weights.dtype == np.float32 and weights.shape == (mu.size + 1,)
    assert np.all(weights >= 0)
    assert abs(weights.astype(np.float64).sum() - 1.0) <= (mu.size + 1) * 2.0**-23
    np.testing.assert_allclose(weights, oracle_weights(mu), rtol=RTOL, atol=1e-6)


@SETTINGS
@given(problems())
def test_composite_gradients_are_eq6(problem):
    mu, losses = problem
    weights = oracle_weights(mu)
    total = weights @ losses.astype(np.float64)
    value, (grad_mu, grad_losses) = jax.value_and_grad(yoto_jax.yoto_composite, argnums=(0, 1))(
        jnp.asarray(mu), jnp.asarray(losses)
    )
    atol = loss_scale(losses)
    np.testing.assert_allclose(value, total, rtol=RTOL, atol=atol)
    np.testing.assert_allclose(grad_mu, weights[1:] * (losses[1:] - total), rtol=RTOL, atol=atol)
    np.testing.assert_allclose(grad_losses, weights, rtol=RTOL, atol=1e-6)


@SETTINGS
@given(problems(), st.floats(0, 10))
def test_regularizer_gradient_is_its_closed_form(problem, rho):
    mu, _ = problem
    weights = oracle_weights(mu)
    entropy = -np.sum(weights * np.log(weights))
    closed_form = weights[1:] * (np.log(weights[1:]) + entropy) + 1 / (1 + np.exp(-mu))
    np.testing.assert_allclose(yoto_jax.regularizer_grad(mu), closed_form, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(
        jax.grad(yoto_jax.regularizer)(mu), closed_form, rtol=RTOL, atol=1e-6
    )
    params = {yoto_jax.MU_KEY: jnp.asarray(mu)}
    decay = yoto_jax.hyperparameter_decay(rho)
    updates, _ = decay.update(jax.tree.map(jnp.zeros_like, params), decay.init(params), params)
    np.testing.assert_allclose(updates[yoto_jax.MU_KEY], rho * closed_form, rtol=RTOL, atol=1e-5)


@SETTINGS
@given(problems(), st.randoms(use_true_random=False))
def test_dict_and_array_forms_agree(problem, random):
    mu, losses = problem
    names = [f"aux{i:02d}" for i in range(mu.size)]
    order = random.sample(range(mu.size), mu.size)  # the dict's insertion order is irrelevant
    named_mu = {names[i]: mu[i] for i in order}
    named_losses = {"primary": losses[0], **{names[i]: losses[i + 1] for i in order}}

    weights = yoto_jax.loss_weights(named_mu)
    array_weights = yoto_jax.loss_weights(mu)
    np.testing.assert_allclose([weights[n] for n in ["primary", *names]], array_weights, rtol=1e-6)
    atol = loss_scale(losses)
    composite = yoto_jax.yoto_composite
    np.testing.assert_allclose(
        composite(named_mu, named_losses), composite(mu, losses), rtol=1e-6, atol=atol
    )
    grads = jax.grad(composite)(named_mu, named_losses)
    array_grads = jax.grad(composite)(jnp.asarray(mu), losses)
    np.testing.assert_allclose([grads[n] for n in names], array_grads, rtol=1e-6, atol=atol)
    np.testing.assert_allclose(
        yoto_jax.regularizer(named_mu), yoto_jax.regularizer(mu), rtol=1e-6, atol=1e-6
    )


@jax.jit
def quantities(mu: jax.Array, losses: jax.Array) -> list[jax.Array]:
    """λ, L_e, ∂L_e/∂µ, R and ∇R, in the inputs' dtype."""
    value, grad = jax.value_and_grad(yoto_jax.yoto_composite)(mu, losses)
    results = [yoto_jax.loss_weights(mu), value, grad, yoto_jax.regularizer(mu)]
    return [*results, yoto_jax.regularizer_grad(mu)]


@SETTINGS
@given(problems())
def test_float32_agrees_with_float64(problem):
    mu, losses = problem
    single = quantities(jnp.asarray(mu), jnp.asarray(losses))
    with jax.enable_x64(True):
        double = [
            np.asarray(x)
            for x in quantities(jnp.asarray(mu, jnp.float64), jnp.asarray(losses, jnp.float64))
        ]
    assert all(x.dtype == np.float32 for x in single)
    assert all(x.dtype == np.float64 for x in double)
    atol = loss_scale(losses)
    for x32, x64 in zip(single, double, strict=True):
        np.testing.assert_allclose(x32, x64, rtol=RTOL, atol=atol)
