"""Representation mode (yoto_jax.representation): the gradient methods on the per-loss
gradients of the shared representation z, one backward pass through the trunk.

* an identity trunk (z is the shared parameters themselves): representation mode equals
  parameter mode for every gradient method that supports it;
* a linear trunk z = x W: MGDA-UB and Aligned-MTL-UB against NumPy float64 references
  (the min-norm point by enumerating the simplex's faces, the Procrustes alignment by an
  SVD of the (T, batch·features) matrix);
* ``jax.vmap`` over a traced hyperparameter, the trainer under ``jit``, and 8 simulated
  devices (a subprocess: this file run as a script);
* bad inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _ulps import assert_close_at_scale
from test_manipulation import min_norm_reference_weights

import yoto_jax
from yoto_jax import baselines as bl
from yoto_jax import representation
from yoto_jax.representation import representation_gradients

SHARED = {"trunk": True, "heads": False}
BATCH, FEATURES, INPUTS, T = 6, 3, 4, 3


def _heads(params, z, y):
    """Loss i: the mean squared error of the nonlinear head i on target i, (T,)."""
    predictions = jnp.tanh(z @ params["heads"])  # (batch, T)
    return jnp.mean((predictions - y) ** 2, axis=0)


def _stacked_heads(params, z, y):
    """`_heads` with each loss its own scalar, stacked in two parts: each loss's gradient
    of z then takes its own backward pass (representation._separate_gradients)."""

    def loss(i):
        return jnp.mean((jnp.tanh(z @ params["heads"][:, i]) - y[:, i]) ** 2)

    return jnp.concatenate(
        [jnp.stack([loss(0), loss(1)]), jnp.stack([loss(i) for i in range(2, T)])]
    )


def _problem(rng):
    params = {
        "trunk": jnp.asarray(rng.normal(size=(BATCH, FEATURES)), jnp.float32),
        "heads": jnp.asarray(rng.normal(size=(FEATURES, T)), jnp.float32),
    }
    y = jnp.asarray(rng.normal(size=(BATCH, T)), jnp.float32)
    return params, y


METHODS = {
    "pcgrad": lambda: bl.pcgrad(SHARED),
    "mgda": lambda: bl.mgda(SHARED),
    "cagrad": lambda: bl.cagrad(SHARED, c=0.4),
    "upgrad": lambda: bl.upgrad(SHARED),
    "aligned_mtl": lambda: bl.aligned_mtl(SHARED),
    "imtl_gradient": lambda: bl.imtl(SHARED, mode="gradient"),
    "imtl_hybrid": lambda: bl.imtl(SHARED, log_scale_init=0.3),
    "gradnorm": lambda: bl.gradnorm(SHARED),
    "nash_mtl": lambda: bl.nash_mtl(SHARED),
    "nash_mtl_every_2": lambda: bl.nash_mtl(SHARED, update_every=2, max_norm=0.0),
}


@pytest.mark.parametrize("heads", [_heads, _stacked_heads], ids=["vector", "stacked"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_identity_trunk_equals_parameter_mode(rng, name, heads):
    """z = the trunk's params: ∂z/∂θ is the identity, so the per-loss gradients of z are
    those of the shared params, and the two modes compute the same update; with the
    losses one vector (the T passes vmapped) and stacked scalars (a pass per loss)."""
    params, y = _problem(rng)
    weighting = METHODS[name]()
    weighting_params, state = weighting.init(T)
    parameter_mode = lambda p: _heads(p, p["trunk"], y)
    representation_mode = yoto_jax.representation_losses(
        lambda p: p["trunk"], lambda p, z: heads(p, z, y)
    )
    key = jax.random.key(3)

    @jax.jit
    def both(params):
        return [
            weighting.step(fn, params, weighting_params, state, key=key)
            for fn in (parameter_mode, representation_mode)
        ]

    expected, actual = both(params)
    assert_close_at_scale(actual.losses, expected.losses)
    for part in ("trunk", "heads"):
        assert_close_at_scale(actual.model_grads[part], expected.model_grads[part])
    for param in expected.grads:  # IMTL's log-scales, GradNorm's logits
        assert_close_at_scale(actual.grads[param], expected.grads[param])
    assert np.max(np.abs(np.asarray(expected.model_grads["trunk"]))) > 1e-3


def _linear_problem(rng):
    x = rng.normal(size=(BATCH, INPUTS))
    y = rng.normal(size=(BATCH, T))
    params = {"trunk": rng.normal(size=(INPUTS, FEATURES)), "heads": rng.normal(size=(FEATURES, T))}
    return x, y, params


def _linear_losses(x, y):
    """z = x W, loss i = mean_b (z_b · h_i − y_bi)²: a linear trunk and linear heads."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    return yoto_jax.representation_losses(
        lambda p: x @ p["trunk"],
        lambda p, z: jnp.mean((z @ p["heads"] - y) ** 2, axis=0),
    )


def _reference_gradients(x, y, params):
    """Float64: the (T, batch, features) gradients of the losses w.r.t. z, and the heads'
    summed gradient."""
    z = x @ params["trunk"]
    residuals = z @ params["heads"] - y  # (batch, T)
    per_loss = np.stack(
        [2 / BATCH * np.outer(residuals[:, i], params["heads"][:, i]) for i in range(T)]
    )
    head_sum = 2 / BATCH * z.T @ residuals  # column i: ∂l_i/∂h_i
    return per_loss, head_sum


def test_mgda_ub_matches_numpy_reference(rng):
    x, y, params = _linear_problem(rng)
    per_loss, head_sum = _reference_gradients(x, y, params)
    alpha = min_norm_reference_weights(per_loss.reshape(T, -1))
    assert np.sum(alpha > 1e-6) >= 2  # not a vertex: the solver's interior matters
    expected_trunk = x.T @ np.tensordot(alpha, per_loss, 1)
    weighting = bl.mgda(SHARED)
    state = weighting.init(T)[1]
    result = jax.jit(lambda p: weighting.step(_linear_losses(x, y), p, {}, state))(
        jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    )
    assert_close_at_scale(result.model_grads["trunk"], expected_trunk, ulps=64)
    assert_close_at_scale(result.model_grads["heads"], head_sum, ulps=64)


def test_aligned_mtl_ub_matches_numpy_reference(rng):
    """Aligned-MTL-UB: the (T, m) matrix Z = U S Vᵀ of the gradients w.r.t. z becomes
    σ_min U Vᵀ (orthogonal rows of equal norm); the cotangent is their sum."""
    x, y, params = _linear_problem(rng)
    per_loss, head_sum = _reference_gradients(x, y, params)
    u, s, vt = np.linalg.svd(per_loss.reshape(T, -1), full_matrices=False)
    aligned = s.min() * u @ vt
    expected_trunk = x.T @ aligned.sum(0).reshape(BATCH, FEATURES)
    weighting = bl.aligned_mtl(SHARED)
    state = weighting.init(T)[1]
    result = jax.jit(lambda p: weighting.step(_linear_losses(x, y), p, {}, state))(
        jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    )
    assert_close_at_scale(
        result.model_grads["trunk"], expected_trunk, ulps=256
    )  # eigh of a T x T Gram
    assert_close_at_scale(result.model_grads["heads"], head_sum, ulps=64)


@pytest.mark.parametrize("heads", ["vector", "stacked"])
def test_vmap_over_a_traced_hyperparameter_in_the_trainer(rng, full_matmul_precision, heads):
    """CAGrad's radius c vmapped over three values equals three separate jitted runs, with
    the losses one vector (the T passes vmapped) and stacked (a pass per loss)."""
    x, y, params = _linear_problem(rng)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    losses_fn = _linear_losses(x, y)
    if heads == "stacked":
        x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
        losses_fn = yoto_jax.representation_losses(
            lambda p: x @ p["trunk"],
            lambda p, z: _stacked_heads(p, z, y),
        )

    def run(c):
        train = yoto_jax.trainer(bl.cagrad(SHARED, c=c), optax.sgd(0.05))
        state = train.init(params, T)
        for _ in range(3):
            state, log = train.step(state, losses_fn)
        return state.params["model"], log.losses

    radii = jnp.array([0.0, 0.4, 1.0])
    vmapped = jax.jit(jax.vmap(run))(radii)
    one_run = jax.jit(run)  # c traced: one compilation
    for i, c in enumerate(radii):
        single = one_run(c)
        for a, b in zip(jax.tree.leaves(vmapped), jax.tree.leaves(single)):
            assert_close_at_scale(a[i], b)
    assert not np.allclose(vmapped[0]["trunk"][0], vmapped[0]["trunk"][2])  # c matters


def test_heads_without_z_raise(rng):
    params, y = _problem(rng)

    def heads(p, z):  # the auxiliary loss 2 reads the heads only
        losses = _heads(p, z, y)
        return jnp.stack([losses[0], losses[1], jnp.sum(p["heads"] ** 2)])

    losses_fn = yoto_jax.representation_losses(lambda p: p["trunk"], heads)
    weighting = bl.mgda(SHARED)
    state = weighting.init(T)[1]
    with pytest.raises(ValueError, match=r"losses \[2\].*do not depend on the representation z"):
        weighting.step(losses_fn, params, {}, state)

    def nested(p, z):  # the same, stacked in two parts
        losses = _heads(p, z, y)
        regulariser = jnp.sum(p["heads"] ** 2)
        return jnp.concatenate([jnp.stack([losses[0], losses[1]]), jnp.stack([regulariser])])

    nested_fn = yoto_jax.representation_losses(lambda p: p["trunk"], nested)
    with pytest.raises(ValueError, match=r"losses \[2\].*do not depend on the representation z"):
        weighting.step(nested_fn, params, {}, state)
    constant = yoto_jax.representation_losses(
        lambda p: p["trunk"], lambda p, z: jnp.sum(p["heads"], axis=0)
    )
    with pytest.raises(ValueError, match="the losses do not depend"):
        jax.jit(lambda p: weighting.step(constant, p, {}, state))(params)


def test_each_stacked_loss_takes_its_own_backward_pass():
    """Loss 1 = ‖z[:, 1]‖ at z[:, 1] = 0: its local derivative is infinite (√ at 0), so a
    backward pass through it with a zero cotangent gives 0·∞ = nan. Stacked losses give
    loss 0's gradient of z exactly (2 z[:, 0] in column 0); a vector computed as a whole
    runs the vmapped pass of loss 0 through loss 1's computation too."""
    z = jnp.array([[1.0, 0.0], [2.0, 0.0]])
    stacked = lambda p, z: jnp.stack([jnp.sum(z[:, 0] ** 2), jnp.sqrt(jnp.sum(z[:, 1] ** 2))])
    vector = lambda p, z: stacked(p, z) * jnp.ones(2)
    rows = {
        name: representation_gradients(
            yoto_jax.representation_losses(lambda p: p, heads), z, 2
        ).per_loss[0]
        for name, heads in (("stacked", stacked), ("vector", vector))
    }
    np.testing.assert_array_equal(rows["stacked"], [[2.0, 0.0], [4.0, 0.0]])
    assert np.isnan(np.asarray(rows["vector"])[:, 1]).all()


def _inner_jit_loss(z):
    return jax.jit(lambda z: jnp.sum(jnp.tanh(z) * z))(z)


HEADS_WITH_TRANSFORMS = {
    "custom_jvp": lambda z: jnp.stack([jnp.sum(jax.nn.relu(z)), jnp.sum(jax.nn.softplus(z))]),
    "cond": lambda z: jnp.stack(
        [jax.lax.cond(z[0, 0] > 0, jnp.sum, jnp.prod, z), jnp.sum(jax.nn.log_softmax(z))]
    ),
    "checkpoint": lambda z: jnp.stack(
        [jax.checkpoint(lambda z: jnp.sum(jnp.sin(z) ** 2))(z), _inner_jit_loss(z)]
    ),
    "scan": lambda z: jnp.stack(
        [jax.lax.scan(lambda c, row: (c + jnp.dot(row, row), None), 0.0, z)[0], jnp.max(z)]
    ),
}


@pytest.mark.parametrize("name", sorted(HEADS_WITH_TRANSFORMS))
def test_separate_passes_through_transformed_heads_equal_the_jacobian(name):
    """Heads built with custom derivatives, control flow, rematerialisation and inner jits
    still stack their losses; their per-loss gradients of z are ``jax.jacrev``'s rows."""
    heads = HEADS_WITH_TRANSFORMS[name]
    z = jnp.array([[0.7, -1.3, 0.2], [1.1, 0.4, -0.6]])
    assert len(representation._loss_sources(jax.make_jaxpr(heads)(z).jaxpr)) == 2
    found = representation_gradients(
        yoto_jax.representation_losses(lambda p: p, lambda p, z: heads(z)), z, 2
    ).per_loss
    assert_close_at_scale(found, jax.jacrev(heads)(z))


def test_loss_sources_follow_stacks_and_concatenations():
    def nested(z):
        return jnp.concatenate([jnp.stack([z[0], z[1] ** 2]), z[2:3] * 2.0, jnp.stack([z[3]])])

    jaxpr = jax.make_jaxpr(nested)(jnp.ones(4)).jaxpr
    sources = representation._loss_sources(jaxpr)
    assert [s.aval.size for s in sources] == [1, 1, 1, 1]
    scalars = jax.extend.core.jaxpr_as_fun(
        jax.extend.core.ClosedJaxpr(jaxpr.replace(outvars=sources), [])
    )
    z = jnp.array([1.5, -2.0, 3.0, 0.25])
    values = [float(jnp.reshape(s, ())) for s in scalars(z)]
    assert values == [1.5, 4.0, 6.0, 0.25]
    assert (
        representation._loss_sources(jax.make_jaxpr(lambda z: z * 2.0)(jnp.ones(3)).jaxpr) is None
    )


def test_bad_shapes_and_types_raise(rng):
    params, y = _problem(rng)
    weighting = bl.upgrad(SHARED)
    state = weighting.init(T)[1]
    two_losses = yoto_jax.representation_losses(
        lambda p: p["trunk"], lambda p, z: _heads(p, z, y)[:2]
    )
    with pytest.raises(ValueError, match="has 2 entries, expected 3"):
        weighting.step(two_losses, params, {}, state)
    integer_z = yoto_jax.representation_losses(
        lambda p: jnp.zeros((BATCH, FEATURES), jnp.int32), lambda p, z: _heads(p, z, y)
    )
    with pytest.raises(TypeError, match="representation z must have a floating dtype"):
        weighting.step(integer_z, params, {}, state)
    with pytest.raises(TypeError, match="heads_fn must be a function"):
        yoto_jax.representation_losses(lambda p: p["trunk"], "heads")


def test_loss_weighting_methods_use_it_unchanged(rng):
    """A representation losses_fn is a losses_fn: YOTO's step is that of the plain one."""
    params, y = _problem(rng)
    weighting = yoto_jax.yoto()
    weighting_params, state = weighting.init(T)
    key = jax.random.key(0)
    split = yoto_jax.representation_losses(lambda p: p["trunk"], lambda p, z: _heads(p, z, y))
    plain = lambda p: _heads(p, p["trunk"], y)
    a, b = jax.jit(
        lambda p: [weighting.step(fn, p, weighting_params, state, key=key) for fn in (split, plain)]
    )(params)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert_close_at_scale(u, v, ulps=4)


@pytest.mark.parametrize("gramian", ["jacobian", "products"])
def test_nnx_train_step_matches_the_functional_trainer(rng, gramian):
    """yoto_jax.nnx.train_step with a representation split of the NNX model trains as the
    functional trainer with the same split of the params (MGDA-UB, two SGD steps; the
    NNX model's Gramian from the Jacobian or from products, the trainer's from the
    Jacobian)."""
    from flax import nnx

    from yoto_jax.nnx import LossWeights, train_step

    x = jnp.asarray(rng.normal(size=(BATCH, INPUTS)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(BATCH, 2)), jnp.float32)

    def heads_of(kernel, bias, z):
        out = z @ kernel + bias
        return {
            "a": jnp.mean((out[:, 0] - y[:, 0]) ** 2),
            "b": jnp.mean(jnp.tanh(out[:, 1]) - y[:, 1]) ** 2,
        }

    class Net(nnx.Module):
        def __init__(self):
            self.trunk = nnx.Linear(INPUTS, FEATURES, rngs=nnx.Rngs(1))
            self.heads = nnx.Linear(FEATURES, 2, rngs=nnx.Rngs(2))
            self.loss_weights = LossWeights("a", ["b"], weighting=bl.mgda(True, gramian=gramian))

    model = Net()
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    params.pop("loss_weights", None)
    optimizer = nnx.Optimizer(model, model.loss_weights.optimizer(optax.sgd(0.3)), wrt=nnx.Param)
    split = yoto_jax.representation_losses(
        lambda m: jnp.tanh(m.trunk(x)),
        lambda m, z: heads_of(m.heads.kernel[...], m.heads.bias[...], z),
    )
    step = nnx.jit(lambda model, optimizer: train_step(model, optimizer, model.loss_weights, split))
    functional = yoto_jax.representation_losses(
        lambda p: jnp.tanh(x @ p["trunk"]["kernel"] + p["trunk"]["bias"]),
        lambda p, z: jnp.stack(
            list(heads_of(p["heads"]["kernel"], p["heads"]["bias"], z).values())
        ),
    )
    train = yoto_jax.trainer(bl.mgda(True), optax.sgd(0.3))
    state = train.init(params, 2)
    for _ in range(2):
        step(model, optimizer)
        state, _ = jax.jit(train.step, static_argnums=1)(state, functional)
    trained = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for part in ("trunk", "heads"):
        for leaf in ("kernel", "bias"):
            assert_close_at_scale(trained[part][leaf], state.params["model"][part][leaf])
    assert not np.allclose(trained["trunk"]["kernel"], params["trunk"]["kernel"])


def _sharded_worker() -> dict:
    """In a process with 8 CPU devices: three MGDA-UB trainer steps on a batch split over
    the devices, with the Gramian from the Jacobian and from products, and with stacked
    losses (a backward pass per loss), and the Jacobian path on one device; the final
    params of each."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, INPUTS)).astype(np.float32)
    y = rng.normal(size=(32, T)).astype(np.float32)
    params = {
        "trunk": rng.normal(size=(INPUTS, FEATURES)).astype(np.float32),
        "heads": rng.normal(size=(FEATURES, T)).astype(np.float32),
    }

    def vector(p, z, y):
        return jnp.mean((z @ p["heads"] - y) ** 2, axis=0)

    def stacked(p, z, y):
        return jnp.stack([jnp.mean((z @ p["heads"][:, i] - y[:, i]) ** 2) for i in range(T)])

    def run(params, x, y, gramian="jacobian", heads=vector):
        train = yoto_jax.trainer(bl.mgda(SHARED, gramian=gramian), optax.sgd(0.1))
        losses_fn = yoto_jax.representation_losses(
            lambda p: jnp.tanh(x @ p["trunk"]), lambda p, z: heads(p, z, y)
        )
        state = train.init(params, T)
        for _ in range(3):
            state, _ = train.step(state, losses_fn)
        return state.params["model"]

    mesh = jax.make_mesh((8,), ("batch",))
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sharded = jax.jit(run)(
        jax.device_put(params, replicated), jax.device_put(x, batch), jax.device_put(y, batch)
    )
    products = jax.jit(run, static_argnums=3)(
        jax.device_put(params, replicated),
        jax.device_put(x, batch),
        jax.device_put(y, batch),
        "products",
    )
    separate = jax.jit(run, static_argnums=(3, 4))(
        jax.device_put(params, replicated),
        jax.device_put(x, batch),
        jax.device_put(y, batch),
        "jacobian",
        stacked,
    )
    one = jax.devices()[0]
    single = jax.jit(run)(*jax.device_put((params, x, y), one))
    return {
        "devices": len(jax.devices()),
        "x_shards": len(jax.device_put(x, batch).addressable_shards),
        **{
            name: jax.tree.map(lambda a: np.asarray(a).tolist(), trained)
            for name, trained in (
                ("sharded", sharded),
                ("products", products),
                ("separate", separate),
                ("single", single),
            )
        },
    }


def test_eight_simulated_devices_match_one():
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    }
    out = subprocess.run(
        [sys.executable, __file__],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8 and report["x_shards"] == 8
    for part in ("trunk", "heads"):
        assert_close_at_scale(report["sharded"][part], report["single"][part], ulps=32)
        assert_close_at_scale(report["products"][part], report["single"][part], ulps=32)
        assert_close_at_scale(report["separate"][part], report["single"][part], ulps=32)


if __name__ == "__main__":
    print(json.dumps(_sharded_worker()))
