"""The families of yoto_jax.method_families, run as docs/search.md's "Choosing the
weighting method" section shows them, against members trained alone by hand: the NNX
loop of tests/test_nnx_search.py (split once, merge and train_step per step; the docs'
``Model`` takes the weighting where that test's takes the config) and a trainer loop, with the keys
the search gives them (``member_keys(family_key(key, name), i, R)``)."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_nnx_search import assert_close, train_directly  # the hand-written NNX loop

import yoto_jax
from yoto_jax.method_families import (
    WeightingChoice,
    fixed_rows,
    nnx_families,
    trainer_families,
    weighting_choices,
)
from yoto_jax.method_search import family_key

DOC = pathlib.Path(__file__).parent.parent / "docs" / "search.md"
SECTION = "## Choosing the weighting method"


@pytest.fixture(scope="module")
def example():
    """The namespace left by the section's code blocks."""
    section = DOC.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    namespace = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.DOTALL):
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


def member_keys_of(key, family, index, num_rungs):
    return yoto_jax.member_keys(family_key(key, family), index, num_rungs)


def test_the_nnx_winner_is_its_member_trained_alone(example):
    result, choices = example["result"], example["choices"]
    assert [len(rung.indices) for rung in result.history] == [7, 2, 1]
    assert set(result.history[0].families) == set(example["methods"])
    assert result.member_steps == (7 + 2 + 1) * 30
    # scores best first, and the winner is the last rung's only member
    for rung in result.history:
        assert np.all(np.diff(rung.scores) <= 0)
    assert (result.history[-1].families[0], result.history[-1].indices[0]) == (
        result.best_family,
        result.best_index,
    )
    weighting = choices[result.best_family].make(result.best_config)
    init_key, rung_keys = member_keys_of(
        jax.random.key(1), result.best_family, result.best_index, 3
    )
    model = train_directly(example, weighting, init_key, rung_keys, [30, 30, 30])
    assert_close(result.best_state[0], nnx.state(model), ulps=64)
    assert_close(example["model"].trunk.kernel[...], model.trunk.kernel[...], ulps=64)
    np.testing.assert_allclose(result.history[-1].scores[0], example["metric_fn"](model), rtol=1e-4)


def test_the_docs_halving_over_one_family(example):
    halving, rows = example["halving"], example["choices"]["fixed"].configs
    np.testing.assert_array_equal(rows, fixed_rows(2, [0.01, 0.1, 0.3]))
    assert [len(r.indices) for r in halving.history] == [3, 1]
    init_key, rung_keys = yoto_jax.member_keys(jax.random.key(1), halving.best_index, 2)
    weighting = yoto_jax.fixed_weights(rows[halving.best_index])
    model = train_directly(example, weighting, init_key, rung_keys, [30, 30])
    np.testing.assert_allclose(
        halving.history[-1].scores[0], example["metric_fn"](model), rtol=1e-4
    )


def test_the_functional_winner_is_its_member_trained_alone_by_the_trainer(example):
    linear, choices = example["linear"], example["linear_choices"]
    assert [len(r.indices) for r in linear.history] == [4, 1]
    assert linear.member_steps == (4 + 1) * 30
    # every member of the first rung, and the winner, as trained alone by the trainer
    members = list(zip(*linear.history[0][:3], strict=True))
    for family, index, score in members + [(linear.best_family, linear.best_index, None)]:
        config = jax.tree.map(lambda c, i=index: c[i], choices[family].configs)
        train = yoto_jax.trainer(choices[family].make(config), optax.adam(1e-2))
        init_key, rung_keys = member_keys_of(jax.random.key(1), family, int(index), 2)
        state = train.init(example["init_params"](init_key), 2)
        for rung_key in rung_keys[: 1 if score is not None else 2]:
            state = trained_by_hand(train, example["linear_losses"], state, rung_key)
        if score is None:
            assert_close(linear.best_state.params, state.params, ulps=64)
        else:
            np.testing.assert_allclose(
                score, example["linear_metric"](state.params["model"]), rtol=1e-4
            )


def trained_by_hand(train, losses_fn, state, rung_key, num_steps=30):
    """``num_steps`` trainer steps, a Python loop over one jitted step."""
    step = jax.jit(lambda state, b, w: train.step(state, lambda p: losses_fn(p, b), w)[0])
    for key in jax.random.split(rung_key, num_steps):
        state = step(state, *jax.random.split(key))
    return state


def test_fixed_rows_and_the_choices():
    np.testing.assert_allclose(
        fixed_rows(3, [0.1, 2.0]), [[1.0, 0.1, 0.1], [1.0, 2.0, 2.0]], rtol=1e-7
    )
    choices = weighting_choices(3, methods=["fixed", "rlw"], fixed_values=[0.5])
    assert list(choices) == ["fixed", "rlw"]
    weights = choices["fixed"].make(choices["fixed"].configs[0])
    params, state = weights.init(3)
    np.testing.assert_allclose(weights.weights(params, state), [1.0, 0.5, 0.5], rtol=1e-7)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_losses": 1}, ValueError, "num_losses"),
        ({"methods": ["equal", "gradnorm"]}, ValueError, r"unknown \['gradnorm'\]"),
        ({"methods": []}, ValueError, "methods is empty"),
        ({"methods": "yoto"}, TypeError, "sequence of names"),
        ({"fixed_values": [0.1, 0.0]}, ValueError, "fixed_values must be positive"),
        ({"dwa_steps_per_epoch": 0}, ValueError, "dwa_steps_per_epoch"),
    ],
)
def test_weighting_choices_refuses_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        weighting_choices(**{"num_losses": 2, **kwargs})


def test_the_families_refuse_bad_input():
    choices = weighting_choices(2, methods=["equal"])
    ok = (lambda key: jnp.zeros(2), lambda p, k: jnp.zeros(2), lambda p: 0.0, optax.sgd(0.1))
    with pytest.raises(TypeError, match="losses_fn must be a function"):
        trainer_families(choices, ok[0], None, *ok[2:], num_losses=2)
    with pytest.raises(TypeError, match="choices must be a non-empty mapping"):
        trainer_families({}, *ok, num_losses=2)
    with pytest.raises(TypeError, match="choice 'x' must be a WeightingChoice"):
        trainer_families({"x": (None, None)}, *ok, num_losses=2)
    with pytest.raises(TypeError, match="make_model must be a function"):
        nnx_families(choices, None, optax.sgd(0.1), lambda m, k: {}, lambda m: 0.0)
    assert isinstance(choices["equal"], WeightingChoice)


def test_dwa_with_sgd_passes_the_step_counter_check():
    """Plain SGD has no step count; DWA's state counts steps within its epoch (10), so
    after a rung of 12 steps it reads 2: it is not taken for the step counter."""
    families = trainer_families(
        weighting_choices(2, methods=["dwa"]),
        lambda key: jnp.zeros(()),
        lambda theta, key: jnp.stack([(theta - 1.0) ** 2, (theta + 1.0) ** 2]),
        lambda theta: -(theta**2),
        optax.sgd(0.1),
        num_losses=2,
    )
    result = yoto_jax.search_methods(families, jax.random.key(0), total_steps=12)
    assert int(result.best_state.weighting_state.step) == 2
    np.testing.assert_allclose(result.best_state.params["model"], 0.0, atol=1e-5)
