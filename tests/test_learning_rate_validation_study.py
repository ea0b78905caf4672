"""benchmarks/learning_rate_validation.py and the held-out batches of the task runs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _toy import assert_trees_equal

import yoto_jax
from benchmarks import tasks as task_suite
from benchmarks.harness import seed_key
from benchmarks.learning_rate_tasks import GRID_BEST_WEIGHTS, trained, within_noise
from benchmarks.learning_rate_validation import counts


def test_within_noise_is_behind_the_grid_by_at_most_its_seed_std():
    grid = [0.80, 0.84]  # mean 0.82, std 0.02
    assert within_noise([0.805, 0.805], grid, higher_is_better=True)  # 0.015 behind
    assert not within_noise([0.79, 0.80], grid, higher_is_better=True)  # 0.025 behind
    assert within_noise([0.90, 0.90], grid, higher_is_better=True)  # ahead
    assert within_noise([0.835, 0.835], grid, higher_is_better=False)  # an error 0.015 higher
    assert not within_noise([0.85, 0.84], grid, higher_is_better=False)


def test_counts_add_each_cells_tasks_within_noise():
    cell = lambda within: {"within_noise": within}
    stored = {
        name: {"YOTO": {"cells": {"a": cell(i < 2), "b": cell(False)}}}
        for i, name in enumerate(task_suite.TASKS)
    }
    assert counts(stored, "YOTO") == {"a": 2, "b": 0}


@pytest.fixture(scope="module")
def task():
    return task_suite.build("multidigits", "tiny")


def final_models(task, validation: bool):
    """The final model and α from β = 0 and β = 0.05, as one vmapped program."""
    weighting = yoto_jax.fixed_weights(jnp.asarray(GRID_BEST_WEIGHTS[task.name], jnp.float32))

    def one(meta):
        tx = yoto_jax.learned_learning_rate(optax.scale_by_adam(), 1e-3, meta_learning_rate=meta)
        state = trained(task, weighting, tx, seed_key(0), task.data, validation)
        return state.params["model"], yoto_jax.learning_rate_of(state.opt_state)

    return jax.jit(jax.vmap(one))(jnp.asarray([0.0, 0.05]))


def test_held_out_batches_change_only_the_learned_rate(task):
    """At β = 0 the held-out gradient has nothing to move: the run is the training-only
    run, bitwise (same batches, same keys); at β > 0 α ends elsewhere."""
    models, alphas = final_models(task, validation=False)
    held_out_models, held_out_alphas = final_models(task, validation=True)
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)
    assert_trees_equal(first(held_out_models), first(models))
    assert float(alphas[0]) == float(held_out_alphas[0]) == pytest.approx(1e-3)
    assert abs(np.log(float(held_out_alphas[1]) / float(alphas[1]))) > 0.05
