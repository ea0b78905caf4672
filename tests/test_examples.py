"""The end-to-end NNX example: it runs, learns, and its NNX loop equals the functional one."""

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("sklearn")
from _load import load_script

STEPS = 150


@pytest.fixture(scope="module")
def example():
    return load_script("examples/nnx_digits.py")


def test_every_method_learns_the_digits(example):
    results = example.main(["--steps", str(STEPS)])
    assert set(results) == {"yoto", "uncertainty", "grid_best"}
    for result in results.values():
        assert result["test_accuracy"] > 0.85  # chance is 0.1
    assert list(results["yoto"]["weights"]) == list(example.LOSS_NAMES)
    assert sum(results["yoto"]["weights"].values()) == pytest.approx(1.0, abs=1e-5)
    assert results["grid_best"]["weights"][0] == 1.0


def test_the_nnx_loop_equals_the_vmapped_functional_grid(example):
    """A grid row trained by ``yoto_jax.nnx.train_step`` on the NNX model gives the test
    accuracy that the same row gets inside the vmapped ``yoto_jax.trainer`` program (same
    initialisation, batches and Adam): at most one of 360 test digits differs."""
    data = example.digits()
    grid = example.grid_search(data, STEPS)
    row = 5
    weighting = example.yoto_jax.fixed_weights(jnp.asarray(example.GRID_ROWS[row]))
    accuracy, weights = example.train_nnx(weighting, data, STEPS)
    np.testing.assert_allclose(list(weights.values()), example.GRID_ROWS[row])
    assert abs(accuracy - grid["test"][row]) <= 1.0 / data["test"]["y"].shape[0] + 1e-6
    assert len(set(np.round(grid["test"], 4))) > 1  # the rows differ: the check can fail
