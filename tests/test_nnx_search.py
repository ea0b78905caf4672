"""The NNX example of docs/search.md (yoto_jax.nnx_search.search_functions) against a hand-written
NNX training loop of the same members."""

import pathlib
import re

import jax
import numpy as np
import pytest
from flax import nnx

import yoto_jax
from yoto_jax.nnx import train_step
from yoto_jax.nnx_search import search_functions

DOC = pathlib.Path(__file__).parent.parent / "docs" / "search.md"


@pytest.fixture(scope="module")
def example():
    """The namespace left by the code blocks of search.md's "NNX models" section."""
    section = DOC.read_text().split("## NNX models", 1)[1].split("\n## ", 1)[0]
    namespace = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.DOTALL):
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


def train_directly(ns, config, init_key, rung_keys, rung_steps):
    """One member trained by hand: split once, then a jitted merge, train_step and split
    per step, with the keys the search gives it (each step key split into the batch's
    and the weighting's). Returns the trained model."""
    model = ns["Model"](config, nnx.Rngs(init_key))
    optimizer = nnx.Optimizer(model, model.loss_weights.optimizer(ns["tx"]), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def step(state, key):
        model, optimizer = nnx.merge(graphdef, state)
        batch_key, weighting_key = jax.random.split(key)
        losses = lambda model: ns["losses_fn"](model, batch_key)
        train_step(model, optimizer, model.loss_weights, losses, key=weighting_key)
        return nnx.state((model, optimizer))

    for rung_key, num_steps in zip(rung_keys, rung_steps, strict=True):
        for key in jax.random.split(rung_key, num_steps):
            state = step(state, key)
    return nnx.merge(graphdef, state)[0]


def assert_close(actual, expected, ulps=8):
    """Leaf by leaf within ``ulps`` float32 ulps of max(1, the leaf's largest entry): a
    trained leaf's rounding error follows its steps, not its value (a bias of 0.019
    differed by 14 of its own ulps between the search's program and this loop when XLA
    compiled without its LLVM optimisations)."""
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a), np.asarray(e)
        np.testing.assert_allclose(
            a, e, rtol=0, atol=ulps * np.finfo(np.float32).eps * max(np.abs(e).max(), 1.0)
        )


def test_halving_winner_equals_the_winner_trained_by_hand(example):
    result = example["result"]
    assert result.best_index == 1  # the weight 0.3 the validation mix asks for
    init_key, rung_keys = yoto_jax.member_keys(jax.random.key(1), 1, len(result.history))
    steps = [rung.num_steps for rung in result.history]
    model = train_directly(example, result.best_config, init_key, rung_keys, steps)
    assert_close(result.best_state[0], nnx.state(model))
    assert_close(example["model"].linear.kernel[...], model.linear.kernel[...])
    assert_close(result.history[-1].scores[0], example["metric_fn"](model))


def test_pbt_and_the_grid_score_members_as_trained_by_hand(example):
    """PBT's first round and the vmapped grid: a member's score as trained alone."""
    configs, total = example["configs"], example["TOTAL_STEPS"]
    member_root = jax.random.split(jax.random.key(1))[0]
    init_key, round_keys = yoto_jax.member_keys(member_root, 2, 3)
    alone = train_directly(example, configs[2], init_key, round_keys[:1], [20])
    assert_close(example["pbt"].history.scores[0, 2], example["metric_fn"](alone))
    init_key, train_key = jax.random.split(jax.random.split(jax.random.key(2), 3)[0])
    alone = train_directly(example, configs[0], init_key, [train_key], [total])
    assert_close(example["grid_scores"][0], example["metric_fn"](alone))


def test_a_model_without_exactly_one_loss_weights_is_refused():
    functions = search_functions(
        lambda config, rngs: nnx.Linear(1, 1, rngs=rngs),
        lambda config: None,
        lambda model, key: {},
        lambda model: 0.0,
    )
    with pytest.raises(ValueError, match="exactly one LossWeights.*Linear holding 0"):
        functions.init_fn(np.ones(2), jax.random.key(0))
    with pytest.raises(TypeError, match="tx must be an optax.GradientTransformation"):
        search_functions(lambda c, r: None, 0.1, lambda m, k: {}, lambda m: 0.0)
