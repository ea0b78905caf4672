"""Mixed precision: the model computes in bfloat16 (float32 params), µ stays float32.

Tolerance. bfloat16 keeps 8 significant bits, so one rounding has relative error at
most u = 2^-8 ≈ 3.9e-3. A loss here passes through a few roundings of that size (the
inputs and weights cast to bfloat16, the two layers' outputs, the loss itself), and
its residuals are of the order of the predictions (no cancellation), so each loss is
within a few u of its float32 value: we allow 4u. λ is a function of the float32 µ
alone, so at equal µ it is bitwise the float32 λ; L_e = Σ λ_i l_i, a convex
combination of positive losses, inherits the losses' 4u; Eq. 6's λ_i (l_i − L_e) is
off by at most λ_i (|δl_i| + |δL_e|) ≤ 2 λ_i · 4u · max l. Over T Adam steps of
size about lr each, a relative gradient error of 4u moves µ by at most about
T · lr · 4u from the float32 run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _toy import NnxNet, make_batch, nnx_train_step
from flax import nnx

import yoto_jax
from yoto_jax.nnx import YotoMu

U = 2.0**-8
TOL = 4 * U
STEPS, MU_LR = 30, 5e-2


def models() -> tuple[NnxNet, NnxNet]:
    """The same initial params, computing in float32 and in bfloat16."""
    return NnxNet(nnx.Rngs(0)), NnxNet(nnx.Rngs(0), dtype=jnp.bfloat16)


@nnx.jit
def evaluate(model: NnxNet, batch) -> tuple[dict, jax.Array, dict, jax.Array]:
    """The losses, L_e, λ and ∂L_e/∂µ for one batch."""
    loss, grads = nnx.value_and_grad(lambda m: m(batch), argnums=nnx.DiffState(0, YotoMu))(model)
    return model.losses(batch), loss, model.loss_weights.weights(), jax.tree.leaves(grads)[0]


def test_bfloat16_losses_give_float32_weights_loss_and_mu_gradient():
    full, half = models()
    for step in range(4):
        batch = make_batch(step)
        losses, loss, weights, grad = evaluate(full, batch)
        half_losses, half_loss, half_weights, half_grad = evaluate(half, batch)
        assert {value.dtype for value in half_losses.values()} == {jnp.dtype(jnp.bfloat16)}
        for name, value in losses.items():
            np.testing.assert_allclose(float(half_losses[name]), value, rtol=TOL)

        assert half_loss.dtype == jnp.float32 and np.isfinite(half_loss)
        np.testing.assert_allclose(half_loss, loss, rtol=TOL)

        assert all(w.dtype == jnp.float32 for w in half_weights.values())
        jax.tree.map(np.testing.assert_array_equal, half_weights, weights)

        aux_weights = np.array([weights[name] for name in half.loss_weights.auxiliary])
        bound = 2 * aux_weights * TOL * max(float(v) for v in losses.values())
        assert np.all(np.abs(half_grad - grad) <= bound)


def test_bfloat16_training_keeps_mu_float32_and_tracks_float32():
    full, half = models()
    tx = yoto_jax.yoto_optimizer(optax.adam(1e-2), rho=0.1, mu_tx=optax.adam(MU_LR))
    full_opt, half_opt = (
        nnx.Optimizer(full, tx, wrt=nnx.Param),
        nnx.Optimizer(half, tx, wrt=nnx.Param),
    )
    start = half.loss_weights.mu
    for step in range(STEPS):
        loss = nnx_train_step(full, full_opt, make_batch(step))
        half_loss = nnx_train_step(half, half_opt, make_batch(step))
        assert half_loss.dtype == jnp.float32 and np.isfinite(half_loss)
        np.testing.assert_allclose(half_loss, loss, rtol=TOL)

    mu, half_mu = full.loss_weights.mu, half.loss_weights.mu
    assert half_mu.dtype == jnp.float32
    assert all(
        leaf.dtype == jnp.float32
        for leaf in jax.tree.leaves(nnx.state(half_opt))
        if leaf.dtype.kind == "f"
    )
    drift = STEPS * MU_LR * TOL
    np.testing.assert_allclose(half_mu, mu, atol=drift)
    assert np.max(np.abs(half_mu - start)) > 10 * drift, "µ must move well beyond the tolerance"
    weights = yoto_jax.loss_weights(half_mu)
    assert np.all(np.isfinite(weights)) and abs(float(weights.sum()) - 1.0) < 1e-6
