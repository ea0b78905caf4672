"""The baselines' functions of the model's params under NNX, against the functional trainer
on the same parameters as a plain dict: yoto_jax.nnx.shared_params (a gradient method's
shared parameters by filter, path predicate or module-name prefix) and
yoto_jax.nnx.module_fn (Auto-λ's validation loss written on the module)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import yoto_jax
from yoto_jax import baselines
from yoto_jax.nnx import LossWeights, module_fn, shared_params, train_step

X = jax.random.normal(jax.random.key(0), (8, 3))
PREFIX = {"trunk": True, "heads": False}
SELECTIONS = {
    "filter": nnx.PathContains("trunk"),
    "predicate": lambda path, variable: path[0] == "trunk",
    "prefix": PREFIX,
}


def losses_of(params):
    """The two losses of the trunk + heads net, written on a plain dict of params."""
    hidden = jnp.tanh(X @ params["trunk"]["kernel"] + params["trunk"]["bias"])
    out = hidden @ params["heads"]["kernel"] + params["heads"]["bias"]
    return {"a": jnp.mean((out[:, 0] - 1) ** 2), "b": jnp.mean((out[:, 1] + hidden[:, 0]) ** 2)}


def val_loss_of(params, key):
    """The primary's loss on a noisy copy of the inputs drawn from ``key``."""
    noisy = {**params, "trunk": {**params["trunk"]}}
    noisy["trunk"]["bias"] = params["trunk"]["bias"] + 0.1 * jax.random.normal(key, (4,))
    return losses_of(noisy)["a"]


class Net(nnx.Module):
    def __init__(self, weighting):
        self.trunk = nnx.Linear(3, 4, rngs=nnx.Rngs(1))
        self.heads = nnx.Linear(4, 2, rngs=nnx.Rngs(2))
        self.loss_weights = LossWeights("a", ["b"], weighting=weighting)

    def losses(self):
        return losses_of(nnx.to_pure_dict(nnx.state(self, nnx.Param)))


def assert_trained_alike(model, state):
    trained = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for name in PREFIX:
        for leaf in ("kernel", "bias"):
            expected = np.asarray(state.params["model"][name][leaf])
            np.testing.assert_allclose(
                trained[name][leaf],
                expected,
                rtol=0,
                atol=8 * np.finfo(np.float32).eps * max(1.0, float(np.abs(expected).max())),
            )


@pytest.mark.parametrize("method", [baselines.mgda, baselines.gradnorm])
@pytest.mark.parametrize("selection", list(SELECTIONS))
def test_an_nnx_selection_trains_as_the_functional_bool_mask(method, selection):
    model = Net(method(shared=shared_params(SELECTIONS[selection])))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    params.pop("loss_weights", None)
    optimizer = nnx.Optimizer(model, model.loss_weights.optimizer(optax.sgd(0.3)), wrt=nnx.Param)
    train = yoto_jax.trainer(method(shared=PREFIX), optax.sgd(0.3))
    state = train.init(params, 2)
    for _ in range(2):
        train_step(model, optimizer, model.loss_weights, Net.losses)
        state, _ = train.step(state, lambda p: jnp.stack(list(losses_of(p).values())))
    assert_trained_alike(model, state)
    assert not np.allclose(model.trunk.kernel[...], params["trunk"]["kernel"])


def test_auto_lambda_on_the_module_trains_as_on_the_params():
    def method(val_loss_fn):
        return baselines.auto_lambda(
            val_loss_fn, learning_rate=0.3, meta_learning_rate=0.1, val_takes_key=True
        )

    on_module = lambda model, key: val_loss_of(nnx.to_pure_dict(nnx.state(model, nnx.Param)), key)
    model = Net(method(module_fn(on_module)))
    optimizer = nnx.Optimizer(model, model.loss_weights.optimizer(optax.sgd(0.3)), wrt=nnx.Param)
    train = yoto_jax.trainer(method(val_loss_of), optax.sgd(0.3))
    state = train.init(nnx.to_pure_dict(nnx.state(model, nnx.Param)), 2)
    for key in jax.random.split(jax.random.key(3), 2):
        _, weights = train_step(model, optimizer, model.loss_weights, Net.losses, key=key)
        state, log = train.step(state, lambda p: jnp.stack(list(losses_of(p).values())), key)
        np.testing.assert_allclose(list(weights.values()), log.weights, rtol=1e-6)
    assert_trained_alike(model, state)
    assert not np.allclose(log.weights, 0.1)  # λ moved from its initial 0.1
    with pytest.raises(RuntimeError, match="module_fn.*not outside train_step"):
        module_fn(on_module)(nnx.state(model, nnx.Param), jax.random.key(0))


def test_a_prefix_without_a_module_names_the_parameter_and_the_keys():
    model = Net(baselines.mgda(shared=shared_params({"trunk": True})))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    with pytest.raises(
        ValueError,
        match=r"no bool for the parameter 'heads/bias' \(where it ends, it holds \['trunk'\]\)",
    ):
        train_step(model, optimizer, model.loss_weights, Net.losses)


def test_a_plain_pytree_is_refused_with_a_pointer_to_bool_trees():
    with pytest.raises(TypeError, match="nnx.State.*got dict.*bool tree"):
        shared_params(PREFIX)({"trunk": jnp.ones(2)})
