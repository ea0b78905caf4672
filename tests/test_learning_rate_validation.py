"""learned_learning_rate's validation-driven variant: the hypergradient of a held-out
loss (``validation_grads``), and the trainer's ``validation_fn`` that computes it.

The held-out loss is the tests' quadratic around another point, ``HELD_OUT``: the
training steps head for 0 and pass it, so the held-out derivative in α changes sign
where the training one does not."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _toy import assert_trees_equal
from _ulps import assert_close_at_scale
from test_learning_rate import CURVATURES, X0, hypergradient_cosine, quadratic, run

import yoto_jax
from yoto_jax import learning_rate as L

HELD_OUT = 0.8 * X0


def held_out_loss(x: jax.Array) -> jax.Array:
    return 0.5 * jnp.sum(CURVATURES * (x - HELD_OUT) ** 2)


def held_out_run(tx: optax.GradientTransformation, steps: int, x=X0, state=None, held_out=True):
    """SGD-style steps on the quadratic, passing the held-out gradient (or with
    ``held_out=False`` the training gradient itself) as ``validation_grads``."""

    def body(carry, _):
        x, state = carry
        grads = jax.grad(quadratic)(x)
        validation = jax.grad(held_out_loss)(x) if held_out else grads
        updates, state = tx.update(grads, state, x, validation_grads=validation)
        return (optax.apply_updates(x, updates), state), None

    state = tx.init(x) if state is None else state
    return jax.lax.scan(body, (x, state), None, steps)[0]


@pytest.mark.parametrize("kwargs", [{}, {"horizon": L.HORIZON, "ramp_from": L.RAMP_FROM}])
def test_the_training_gradient_as_validation_grads_is_the_default_rule(kwargs):
    tx = yoto_jax.learned_learning_rate(optax.scale_by_adam(), 1e-3, **kwargs)
    assert_trees_equal(held_out_run(tx, 60, held_out=False), run(tx, 60))


def test_the_moments_are_those_of_the_held_out_hypergradients_cosine():
    """Three SGD steps: the moments hold the cosines of −∂f_val(x_t − α d_t)/∂α (central
    differences of the held-out loss) with d_t = ∇f(x_t), the training gradient, and ν's
    step is β·m̂/√v̂ of those plus the fast shrink of the held-out cosine below −τ."""
    alpha, beta = 0.02, 0.05
    b1, b2 = L.COSINE_DECAY, L.SQUARE_DECAY
    tx = yoto_jax.learned_learning_rate(optax.identity(), alpha, meta_learning_rate=beta)
    x1, state1 = held_out_run(tx, 1)
    x2, state2 = held_out_run(tx, 1, x=x1, state=state1)
    _, state3 = held_out_run(tx, 1, x=x2, state=state2)

    alpha2 = float(jnp.exp(state2.log_learning_rate))
    d0, d1 = jax.grad(quadratic)(X0), jax.grad(quadratic)(x1)
    c1 = float(hypergradient_cosine(X0, d0, alpha, held_out_loss))
    c2 = float(hypergradient_cosine(x1, d1, alpha2, held_out_loss))
    training_c2 = float(hypergradient_cosine(x1, d1, alpha2))
    np.testing.assert_allclose(float(state2.cosine_mean), (1 - b1) * c1, rtol=1e-4)
    mean = b1 * (1 - b1) * c1 + (1 - b1) * c2
    square = b2 * (1 - b2) * c1**2 + (1 - b2) * c2**2
    np.testing.assert_allclose(float(state3.cosine_mean), mean, rtol=1e-4)
    np.testing.assert_allclose(float(state3.cosine_square), square, rtol=1e-4)
    ratio = (mean / (1 - b1**2)) / np.sqrt(square / (1 - b2**2))
    tau = L.SHRINK_THRESHOLD
    assert c2 < -tau < 0 < training_c2  # the held-out loss says overshoot, the training one not
    shrink = L.SHRINK_RATIO * (c2 + tau) / (1 - tau)
    step = float(state3.log_learning_rate - state2.log_learning_rate)
    np.testing.assert_allclose(step, beta * (ratio + shrink), rtol=1e-4)


@pytest.mark.parametrize("direction", ["sgd", "adam"])
def test_past_the_held_out_optimum_the_rate_shrinks_where_the_training_one_grows(direction):
    """From 1e-3 (100× below the tuned rate): on the training gradient α grows; on the
    held-out one it grows while the steps approach HELD_OUT and then falls below where it
    started, and the run ends nearer HELD_OUT."""
    tx = yoto_jax.learned_learning_rate(
        {"sgd": optax.identity(), "adam": optax.scale_by_adam()}[direction], 1e-3
    )
    trained, trained_state = held_out_run(tx, 300, held_out=False)
    validated, validated_state = held_out_run(tx, 300)
    assert float(yoto_jax.learning_rate_of(trained_state)) > 1e-2
    assert float(yoto_jax.learning_rate_of(validated_state)) < 1e-3
    assert float(held_out_loss(validated)) < 0.5 * float(held_out_loss(trained))


def test_validation_grads_of_another_structure_or_shape_raise():
    tx = yoto_jax.learned_learning_rate(optax.identity(), 1e-3)
    params = {"w": jnp.ones(3), "b": jnp.zeros(())}
    state = tx.init(params)
    with pytest.raises(ValueError, match="validation_grads must be a tree like the updates"):
        tx.update(params, state, params, validation_grads={"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"got a leaf of shape \(2,\) where the updates have"):
        tx.update(params, state, params, validation_grads={"w": jnp.ones(2), "b": jnp.ones(())})


W_TRUE = jnp.array([1.0, -2.0, 0.5])
FEATURES = jax.random.normal(jax.random.key(0), (16, 3))
HELD_OUT_FEATURES = jax.random.normal(jax.random.key(1), (16, 3))


def two_losses(w: jax.Array, x: jax.Array = FEATURES) -> jax.Array:
    return jnp.stack([jnp.mean((x @ (w - W_TRUE)) ** 2), jnp.mean(w**2)])


def primary_held_out(w: jax.Array) -> jax.Array:
    return two_losses(w, HELD_OUT_FEATURES)[0]


@pytest.mark.parametrize(
    "weighting", [lambda: yoto_jax.fixed_weights(jnp.array([1.0, 0.1])), yoto_jax.yoto]
)
def test_the_trainer_passes_the_held_out_gradient_of_the_model_params(weighting):
    """Two SGD steps through the trainer with ``validation_fn``: the learned rate (on
    the model's params; µ has its own Adam in YOTO's partition) holds the cosine of
    ∇f_val(w₁) with the first direction d₀ = ∇_w Σ λᵢ lᵢ(w₀), from gradients taken here."""
    alpha = 0.05
    train = yoto_jax.trainer(weighting(), yoto_jax.learned_learning_rate(optax.identity(), alpha))
    state0 = train.init(jnp.zeros(3), num_losses=2)
    step = jax.jit(lambda s: train.step(s, two_losses, validation_fn=primary_held_out))
    state1, log0 = step(state0)
    state2, _ = step(state1)

    d0 = jax.grad(lambda w: jnp.dot(log0.weights, two_losses(w)))(jnp.zeros(3))
    w1 = -alpha * d0
    assert_close_at_scale(state1.params["model"], w1)
    h1 = jax.grad(primary_held_out)(w1)
    cosine = jnp.dot(h1, d0) / (jnp.linalg.norm(h1) * jnp.linalg.norm(d0))
    (learned,) = [
        s
        for s in jax.tree.leaves(
            state2.opt_state, is_leaf=lambda s: isinstance(s, yoto_jax.LearnedLearningRateState)
        )
        if isinstance(s, yoto_jax.LearnedLearningRateState)
    ]
    np.testing.assert_allclose(
        float(learned.cosine_mean), (1 - L.COSINE_DECAY) * float(cosine), rtol=1e-5
    )


def test_a_non_finite_held_out_loss_skips_the_step():
    train = yoto_jax.trainer(
        yoto_jax.yoto(),
        yoto_jax.learned_learning_rate(optax.scale_by_adam(), 1e-3),
        skip_nonfinite=True,
    )
    state = train.init(jnp.zeros(3), num_losses=2)
    bad = lambda w: primary_held_out(w) * jnp.nan
    new_state, log = train.step(state, two_losses, validation_fn=bad)
    assert bool(log.skipped) and int(new_state.opt_state.total_notfinite) == 1
    assert_trees_equal(new_state.params, state.params)


@pytest.mark.parametrize(
    ("tx", "validation_fn", "message"),
    [
        (optax.adam(1e-3), primary_held_out, "validation_fn is read only by yoto_jax.learned"),
        (
            yoto_jax.learned_learning_rate(optax.scale_by_adam(), 1e-3),
            lambda w: two_losses(w, HELD_OUT_FEATURES),
            r"must return a floating scalar \(a held-out loss\), got ShapeDtypeStruct\(shape=\(2,\)",
        ),
        (
            yoto_jax.learned_learning_rate(optax.scale_by_adam(), 1e-3),
            lambda w: jnp.int32(1),
            "must return a floating scalar",
        ),
    ],
)
def test_bad_validation_fns_raise_clear_errors(tx, validation_fn, message):
    train = yoto_jax.trainer(yoto_jax.yoto(), tx)
    state = train.init(jnp.zeros(3), num_losses=2)
    with pytest.raises(ValueError, match=message):
        jax.jit(lambda s: train.step(s, two_losses, validation_fn=validation_fn))(state)


def test_flax_nnx_optimizer_forwards_validation_grads():
    """``nnx.Optimizer.update(model, grads, validation_grads=...)`` reaches the learned
    rate: three steps equal the same steps of the optax transformation on the params."""
    from flax import nnx

    def loss(model, x):
        return jnp.mean((model(x) - 1.0) ** 2)

    tx = yoto_jax.learned_learning_rate(optax.scale_by_adam(), 1e-2)
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    params = jax.tree.map(jnp.asarray, nnx.state(model, nnx.Param))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    state = tx.init(params)
    graph = nnx.graphdef(model)

    def params_loss(params, x):
        return loss(nnx.merge(graph, params), x)

    for _ in range(3):
        optimizer.update(
            model,
            nnx.grad(loss)(model, FEATURES),
            validation_grads=nnx.grad(loss)(model, HELD_OUT_FEATURES),
        )
        grads = jax.grad(params_loss)(params, FEATURES)
        held_out = jax.grad(params_loss)(params, HELD_OUT_FEATURES)
        updates, state = tx.update(grads, state, params, validation_grads=held_out)
        params = optax.apply_updates(params, updates)
    assert_close_at_scale(nnx.state(model, nnx.Param)["kernel"][...], params["kernel"][...])
    np.testing.assert_allclose(
        float(yoto_jax.learning_rate_of(optimizer.opt_state)),
        float(yoto_jax.learning_rate_of(state)),
        rtol=1e-6,
    )
    assert float(yoto_jax.learning_rate_of(state)) != pytest.approx(1e-2, rel=1e-3)  # α moved
