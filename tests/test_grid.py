"""The vmapped grid search against sequential runs and the closed-form weighted least squares."""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yoto_jax.grid import loss_weight_grid, random_loss_weights, vmapped_training

RNG = np.random.default_rng(0)
# Two least-squares losses on one parameter vector θ ∈ R^3: l_i(θ) = mean((X_i θ − y_i)²).
XS = RNG.normal(size=(2, 16, 3)).astype(np.float32)
YS = RNG.normal(size=(2, 16)).astype(np.float32)
STEPS = 400


def closed_form(weights: np.ndarray) -> np.ndarray:
    """argmin_θ Σ_i w_i mean((X_i θ − y_i)²) = (Σ w_i X_iᵀX_i/n)⁻¹ Σ w_i X_iᵀy_i/n, in float64."""
    xs, ys = XS.astype(np.float64), YS.astype(np.float64)
    gram = sum(w * x.T @ x / len(x) for w, x in zip(weights, xs))
    moment = sum(w * x.T @ y / len(x) for w, x, y in zip(weights, xs, ys))
    return np.linalg.solve(gram, moment)


def train_one(weights: jax.Array, key: jax.Array, xs: jax.Array, ys: jax.Array) -> dict:
    """Gradient descent on Σ_i w_i l_i from a random start; returns θ and the losses."""

    def losses(theta: jax.Array) -> jax.Array:
        return jnp.mean((jnp.einsum("knd,d->kn", xs, theta) - ys) ** 2, axis=1)

    def step(theta: jax.Array, _) -> tuple[jax.Array, None]:
        grad = jax.grad(lambda t: jnp.dot(weights, losses(t)))(theta)
        return theta - 0.1 / jnp.sum(weights) * grad, None

    theta, _ = jax.lax.scan(step, jax.random.normal(key, (3,)), None, length=STEPS)
    return {"theta": theta, "losses": losses(theta)}


WEIGHTS = loss_weight_grid([0.1, 1.0, 3.0], num_aux=1)  # (3, 2)
KEYS = jax.random.split(jax.random.key(1), len(WEIGHTS))


def test_vmapped_runs_equal_sequential_runs_and_the_closed_form():
    # Full float32 matmuls: this compares the vmapped algorithm with the sequential one,
    # not the hardware's matmul rounding. Under the default precision an H100 computes
    # float32 matmuls in TF32, differently for the batched and the unbatched program,
    # and after 400 steps θ differed by 1.5e-4. XLA:CPU is full float32 either way.
    with jax.default_matmul_precision("highest"):
        batched = vmapped_training(train_one)(WEIGHTS, KEYS, XS, YS)
        single = jax.jit(train_one)
        for lowered in (
            vmapped_training(train_one).lower(WEIGHTS, KEYS, XS, YS).as_text(),
            single.lower(WEIGHTS[0], KEYS[0], XS, YS).as_text(),
        ):  # the scope reaches both programs' matmuls
            dots = re.findall(r"stablehlo\.dot_general .*?precision = \[(\w+), (\w+)\]", lowered)
            assert len(dots) >= 3 and set(dots) == {("HIGHEST", "HIGHEST")}
        sequential = [single(weights, KEYS[n], XS, YS) for n, weights in enumerate(WEIGHTS)]
    for n, weights in enumerate(WEIGHTS):
        np.testing.assert_allclose(
            batched["theta"][n], sequential[n]["theta"], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(batched["losses"][n], sequential[n]["losses"], rtol=1e-5)
        np.testing.assert_allclose(batched["theta"][n], closed_form(np.asarray(weights)), atol=1e-4)
    # The weights matter: the minimisers differ between configurations.
    assert np.ptp(np.asarray(batched["theta"]), axis=0).max() > 0.05


def test_one_shared_key_gives_every_run_the_same_start():
    run = vmapped_training(lambda w, key: jax.random.normal(key, (2,)))
    shared = np.asarray(run(WEIGHTS, jax.random.key(3)))
    np.testing.assert_array_equal(shared, np.broadcast_to(shared[0], shared.shape))
    per_run = np.asarray(run(WEIGHTS, KEYS))
    np.testing.assert_array_equal(per_run[1], jax.random.normal(KEYS[1], (2,)))
    assert len(np.unique(per_run[:, 0])) == len(WEIGHTS)


def test_pytree_hparams_and_raw_keys():
    def scaled_sum(h, key):
        return h["weights"].sum() * h["scale"]

    hparams = {"weights": WEIGHTS, "scale": jnp.array([1.0, 2.0, 3.0])}
    raw_keys = jax.random.split(jax.random.PRNGKey(0), 3)  # uint32 (3, 2)
    out = vmapped_training(scaled_sum)(hparams, raw_keys)
    np.testing.assert_allclose(out, np.asarray(WEIGHTS).sum(1) * [1.0, 2.0, 3.0], rtol=1e-6)


def test_the_compiled_program_is_reused():
    traces = []

    def counted(w, key):
        traces.append(1)
        return w.sum()

    run = vmapped_training(counted)
    run(WEIGHTS, KEYS)
    run(WEIGHTS * 2, KEYS)
    assert len(traces) == 1


@pytest.mark.parametrize(
    "hparams, keys, error, match",
    [
        (jnp.ones((3, 2), jnp.int32), KEYS, TypeError, "floating dtype"),
        ({"w": WEIGHTS, "lr": jnp.float32(0.1)}, KEYS, ValueError, "leading axis"),
        ({"w": WEIGHTS, "lr": jnp.ones(2)}, KEYS, ValueError, "same leading size"),
        ({}, KEYS, ValueError, "at least one array"),
        (WEIGHTS, KEYS[:2], ValueError, "one key per configuration"),
        (WEIGHTS, jnp.ones((3,)), TypeError, "PRNG keys"),
    ],
)
def test_bad_inputs_raise_clear_errors(hparams, keys, error, match):
    with pytest.raises(error, match=match):
        vmapped_training(lambda h, key: jnp.zeros(()))(hparams, keys)


def test_train_one_must_be_callable():
    with pytest.raises(TypeError, match="must be a function"):
        vmapped_training("not a function")


def test_loss_weight_grid_is_the_product_with_primary_one():
    values = [0.01, 0.1, 1.0]
    grid = np.asarray(loss_weight_grid(values, num_aux=2))
    expected = [(1.0, a, b) for a, b in itertools.product(values, repeat=2)]
    np.testing.assert_allclose(grid, expected, rtol=1e-7)
    assert grid.dtype == np.float32


@pytest.mark.parametrize(
    "values, num_aux, match",
    [([], 2, "at least one"), ([0.1, -1.0], 2, "> 0"), ([0.1], 0, ">= 1"), ([0.1], True, ">= 1")],
)
def test_loss_weight_grid_rejects_bad_input(values, num_aux, match):
    with pytest.raises(ValueError, match=match):
        loss_weight_grid(values, num_aux)


def test_random_loss_weights_are_log_uniform_in_range():
    weights = np.asarray(random_loss_weights(jax.random.key(0), 4000, 2, low=0.01, high=1.0))
    assert weights.shape == (4000, 3)
    np.testing.assert_array_equal(weights[:, 0], 1.0)
    logs = np.log(weights[:, 1:])
    assert logs.min() >= np.log(0.01) - 1e-6 and logs.max() <= 1e-6
    # log w ~ U[log 0.01, 0]: mean log(0.01)/2, std |log 0.01| / sqrt(12).
    np.testing.assert_allclose(logs.mean(), np.log(0.01) / 2, atol=0.05)
    np.testing.assert_allclose(logs.std(), -np.log(0.01) / np.sqrt(12), atol=0.05)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num": 0, "num_aux": 2}, "num must be"),
        ({"num": 3, "num_aux": 0}, "num_aux must be"),
        ({"num": 3, "num_aux": 2, "low": 0.0}, "low must be"),
        ({"num": 3, "num_aux": 2, "low": 1.0, "high": 0.1}, "high must be >= low"),
    ],
)
def test_random_loss_weights_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_loss_weights(jax.random.key(0), **kwargs)
