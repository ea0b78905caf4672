"""A NaN or inf in one loss, guarded by ``optax.apply_if_finite``: the step is skipped,
µ and the optimizer state are untouched, and training goes on exactly as if the bad
batch had never been seen. Without the guard, the same batch poisons µ for good."""

from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _toy import Batch, assert_trees_equal, linen_state, linen_train_step, make_batch

import yoto_jax

STEPS, BAD_STEP = 8, 3
UNGUARDED = yoto_jax.yoto_optimizer(optax.adam(1e-2), rho=0.1, mu_tx=optax.adam(5e-2))
GUARDED = optax.apply_if_finite(UNGUARDED, max_consecutive_errors=5)
"""The recommended guard: skip up to 5 consecutive non-finite steps. (One optimizer
object for every run, so that the jitted step is compiled once.)"""


def poisoned(batch: Batch, value: float, column: int) -> Batch:
    """The batch with one target of one example set to ``value``: the loss on that
    target (column 0: primary, 1: auxiliary) becomes non-finite."""
    x, y = batch
    return x, y.at[0, column].set(value)


def train(state: Any, batches: list[Batch]) -> tuple[Any, list[Any]]:
    """The final state and the state after every step."""
    history = []
    for batch in batches:
        state, _ = linen_train_step(state, batch)
        history.append(state)
    return state, history


@pytest.mark.parametrize("value", [jnp.nan, jnp.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("column", [0, 1], ids=["primary", "auxiliary"])
def test_apply_if_finite_skips_the_bad_step_and_training_continues_identically(value, column):
    good = [make_batch(step) for step in range(STEPS)]
    bad = poisoned(good[BAD_STEP], value, column)
    with_bad = good[:BAD_STEP] + [bad] + good[BAD_STEP + 1 :]
    without_bad = good[:BAD_STEP] + good[BAD_STEP + 1 :]

    _, history = train(linen_state(GUARDED), with_bad)
    before, after = history[BAD_STEP - 1], history[BAD_STEP]
    assert not np.isfinite(linen_train_step(before, bad)[1]), "the bad batch must be bad"
    assert_trees_equal(after.params, before.params)  # µ and weights untouched
    assert_trees_equal(after.opt_state.inner_state, before.opt_state.inner_state)
    assert int(after.opt_state.total_notfinite) == 1
    assert int(after.opt_state.notfinite_count) == 1

    final = history[-1]
    reference, _ = train(linen_state(GUARDED), without_bad)
    assert_trees_equal(final.params, reference.params)
    assert_trees_equal(final.opt_state.inner_state, reference.opt_state.inner_state)
    assert int(final.opt_state.notfinite_count) == 0  # reset by the next good step


def test_without_the_guard_one_bad_loss_poisons_mu():
    batches = [make_batch(step) for step in range(BAD_STEP + 2)]
    batches[BAD_STEP] = poisoned(batches[BAD_STEP], jnp.nan, column=1)
    final, _ = train(linen_state(UNGUARDED), batches)
    assert np.all(np.isnan(final.params["loss_weights"][yoto_jax.MU_KEY]))
