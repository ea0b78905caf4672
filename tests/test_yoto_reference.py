"""``yoto_jax.trainer(yoto_jax.yoto(...), tx)`` against an independent reference: 20
steps of a hand-written loop (the weights, the composite loss and the regulariser
written out here from the paper's formulas, differentiated by JAX, and plain Optax
optimizers) end where the library's trainer ends, to float32 rounding.

It pins the results of YOTO's optimised gradient path (benchmarks/OVERHEAD.md): any
rewrite of the composite, the regulariser's gradient or µ's optimizer must keep them.
The composite's closed-form derivative is also checked against autodiff of the formula
(first and second order, forward mode, the floor's derivative).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import yoto_jax

STEPS = 20
MODEL_LR = 1e-2
RHO = 0.3
EPS = 0.2


def model_init() -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(jax.random.key(3))
    return {"w1": 0.5 * jax.random.normal(k1, (4, 8)), "w2": 0.5 * jax.random.normal(k2, (8, 3))}


def losses_fn(params: dict[str, jax.Array], step: int) -> jax.Array:
    """Three losses of a two-layer net on the batch of ``step``, primary first."""
    x = jax.random.normal(jax.random.fold_in(jax.random.key(5), step), (16, 4))
    out = jnp.tanh(x @ params["w1"]) @ params["w2"]
    target = jnp.sin(x[:, :1]) + x[:, 1:2]
    return jnp.stack(
        [
            jnp.mean((out[:, 0:1] - target) ** 2),
            2.0 * jnp.mean((out[:, 1:2] + target) ** 2),
            0.5 * jnp.mean((out[:, 2:3] - out[:, 0:1]) ** 2),
        ]
    )


def reference_weights(mu: jax.Array, floor: float) -> jax.Array:
    """λ' = m e_0 + (1 − m) softmax([0, µ]), written out."""
    logits = jnp.concatenate([jnp.zeros(1), mu])
    weights = jnp.exp(logits - jax.scipy.special.logsumexp(logits))
    return floor * jnp.eye(mu.shape[0] + 1)[0] + (1.0 - floor) * weights


def reference_regularizer(mu: jax.Array) -> jax.Array:
    """R(µ) = Σ λ log λ + Σ softplus(µ), written out."""
    logits = jnp.concatenate([jnp.zeros(1), mu])
    log_weights = logits - jax.scipy.special.logsumexp(logits)
    return jnp.sum(jnp.exp(log_weights) * log_weights) + jnp.sum(jnp.logaddexp(0.0, mu))


def reference_run(floor: float, mu_tx: optax.GradientTransformation | None, rho):
    """The hand-written loop: µ's gradient of Σ λ'_i l_i plus ρ∇R(µ) (ρ a float or a
    schedule of the step), the model on Adam, µ on ``mu_tx`` (None: on the model's
    Adam, one optimizer over both)."""
    model = model_init()
    mu = jnp.full((2,), jnp.log(EPS), jnp.float32)
    model_tx = optax.adam(MODEL_LR)
    joint = mu_tx is None
    state = model_tx.init({"model": model, "mu": mu}) if joint else model_tx.init(model)
    mu_state = None if joint else mu_tx.init(mu)

    @jax.jit
    def step(model, mu, state, mu_state, step):
        def total(model, mu):
            losses = losses_fn(model, step)
            return jnp.dot(reference_weights(mu, floor), losses), losses

        (_, losses), (g_model, g_mu) = jax.value_and_grad(total, (0, 1), has_aux=True)(model, mu)
        strength = rho(step) if callable(rho) else rho
        g_mu = g_mu + strength * jax.grad(reference_regularizer)(mu)
        if joint:
            grads, params = {"model": g_model, "mu": g_mu}, {"model": model, "mu": mu}
            updates, state = model_tx.update(grads, state, params)
            new = optax.apply_updates(params, updates)
            return new["model"], new["mu"], state, mu_state, losses
        updates, state = model_tx.update(g_model, state, model)
        mu_updates, mu_state = mu_tx.update(g_mu, mu_state, mu)
        model = optax.apply_updates(model, updates)
        return model, optax.apply_updates(mu, mu_updates), state, mu_state, losses

    logs = []
    for i in range(STEPS):
        logs.append(reference_weights(mu, floor))
        model, mu, state, mu_state, _ = step(model, mu, state, mu_state, i)
    return model, mu, jnp.stack(logs)


def trainer_run(weighting: yoto_jax.Weighting):
    train = yoto_jax.trainer(weighting, optax.adam(MODEL_LR))
    state = train.init(model_init(), num_losses=3)
    step = jax.jit(lambda state, i: train.step(state, lambda p: losses_fn(p, i)))
    logs = []
    for i in range(STEPS):
        state, log = step(state, i)
        logs.append(log.weights)
    return state.params["model"], state.params["weighting"][yoto_jax.MU_KEY], jnp.stack(logs)


SCHEDULE = optax.linear_schedule(0.0, 2 * RHO, 10)
# The hand-written reference has the primary floor only (the loss floor: test_yoto_options)
OWN_RATE = {"primary_floor": "uniform", "loss_floor": 0.0}  # the previous default's path
PAPER = {"mu_learning_rate": None, "loss_floor": 0.0}

CASES = {
    # name: (yoto() keyword arguments, the reference's floor, µ's optimizer, ρ)
    "own_rate": (OWN_RATE, 1 / 3, optax.adam(0.05), RHO),
    "paper": (PAPER, 0.0, None, RHO),
    "mu_tx": (
        {"mu_tx": optax.sgd(0.5), "primary_floor": 0.25, "loss_floor": 0.0},
        0.25,
        optax.sgd(0.5),
        RHO,
    ),
    "own_rate_schedule": (OWN_RATE, 1 / 3, optax.adam(0.05), SCHEDULE),
    "paper_schedule": (PAPER, 0.0, None, SCHEDULE),
}


@pytest.mark.usefixtures("full_matmul_precision")
@pytest.mark.parametrize("case", list(CASES))
def test_trainer_matches_the_hand_written_loop(case):
    kwargs, floor, mu_tx, rho = CASES[case]
    model, mu, weights = trainer_run(yoto_jax.yoto(EPS, rho, **kwargs))
    ref_model, ref_mu, ref_weights = reference_run(floor, mu_tx, rho)
    assert np.max(np.abs(mu - np.log(EPS))) > 0.05  # µ moved: the comparison is not vacuous
    np.testing.assert_allclose(mu, ref_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-6)
    for name in model:
        np.testing.assert_allclose(model[name], ref_model[name], rtol=1e-5, atol=1e-6)


def test_composite_derivatives_match_autodiff_of_the_formula():
    """``yoto_composite``'s closed-form derivative (a ``custom_jvp``) is autodiff of the
    written-out Σ λ'_i l_i: gradients in µ, the losses and the floor, forward mode,
    second order, and under vmap over the floor."""
    mu, losses, floor = jnp.array([0.3, -1.2]), jnp.array([1.0, 0.4, 2.5]), 0.2

    def library(mu, losses, floor):
        return yoto_jax.yoto_composite(mu, losses, primary_floor=floor)

    def reference(mu, losses, floor):
        return jnp.dot(reference_weights(mu, floor), losses)

    for fn in (jax.grad, jax.hessian, jax.jacfwd):
        got = jax.jit(fn(library, argnums=(0, 1, 2)))(mu, losses, floor)
        want = jax.jit(fn(reference, argnums=(0, 1, 2)))(mu, losses, floor)
        jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), got, want)
    floors = jnp.array([0.0, 0.25, 0.5])
    got = jax.vmap(jax.grad(library), (None, None, 0))(mu, losses, floors)
    want = jax.vmap(jax.grad(reference), (None, None, 0))(mu, losses, floors)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    only_losses = jax.grad(library, argnums=1)(mu, losses, floor)  # µ's tangent is zero
    np.testing.assert_allclose(only_losses, reference_weights(mu, floor), rtol=1e-6)
