"""yoto_optimizer's partition labels: one label per subtree without µ, the same updates
as one label per leaf, and a much smaller optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import yoto_jax
from yoto_jax.decay import hyperparameter_decay
from yoto_jax.selection import mu_labels, partition_labels


def masked_nodes(state) -> int:
    """How many placeholders for masked-out subtrees an optimizer state holds."""
    leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    return sum(isinstance(leaf, optax.MaskedNode) for leaf in leaves)


def partitioned(labels) -> optax.GradientTransformation:
    mu_tx = optax.chain(hyperparameter_decay(0.3), optax.adam(0.05))
    return optax.partition({"model": optax.adam(1e-2), "mu": mu_tx}, labels)


def test_labels_are_the_smallest_prefix_with_every_mu_leaf():
    params = {
        "model": {"dense": {"w": 1.0, "b": 2.0}, "heads": [3.0, None]},
        "weighting": {"yoto_mu": jnp.zeros(2)},
        "nested": [4.0, {"yoto_mu": jnp.zeros(1), "c": 5.0}],
        "empty": {},
    }
    assert partition_labels(params) == {
        "model": "model",
        "weighting": {"yoto_mu": "mu"},
        "nested": ["model", {"yoto_mu": "mu", "c": "model"}],
        "empty": "model",
    }
    # Without µ, the whole tree is one label; a bare µ leaf is labelled µ.
    assert partition_labels({"a": {"b": 1.0}}) == "model"
    assert partition_labels({"yoto_mu": 1.0}) == {"yoto_mu": "mu"}


def test_same_updates_as_per_leaf_labels_with_one_masked_node_per_subtree(rng):
    params = {
        "model": {f"layer{i}": {"w": jnp.asarray(rng.normal(size=(3, 2)))} for i in range(6)},
        "weighting": {"yoto_mu": yoto_jax.init_mu(2, eps=0.1)},
    }
    per_leaf, prefix = partitioned(mu_labels), partitioned(partition_labels)
    states = per_leaf.init(params), prefix.init(params)
    for _ in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        (want, state_a), (got, state_b) = (
            tx.update(grads, state, params) for tx, state in zip((per_leaf, prefix), states)
        )
        states = state_a, state_b
        for leaf, expected in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(leaf, expected)
        params = optax.apply_updates(params, got)
    # Adam's two moments in each partition: per leaf, µ's masks the 6 model leaves and
    # the model's masks µ; with prefix labels, µ's masks the model's subtree once.
    assert [masked_nodes(state) for state in states] == [2 * (6 + 1), 2 * (1 + 1)]


def test_yoto_optimizer_keeps_one_masked_node_per_model_subtree_in_nnx():
    class Model(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.first = nnx.Linear(3, 4, rngs=rngs)
            self.second = nnx.Linear(4, 2, rngs=rngs)
            self.loss_weights = yoto_jax.nnx.LossWeights("a", ["b", "c"])

    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, model.loss_weights.optimizer(optax.adam(1e-3)), wrt=nnx.Param)
    # Adam's two moments in each partition: µ's masks the two layers, the model's µ
    # (per leaf, µ's would mask the layers' four arrays).
    assert masked_nodes(optimizer.opt_state) == 2 * (2 + 1)
