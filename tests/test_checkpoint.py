"""Checkpointing with orbax: a run interrupted at step N and resumed from its checkpoint
ends bitwise where an uninterrupted run ends (CPU), for the NNX and Linen integrations.

The checkpoint holds the model weights, µ and the optimizer state (Adam's moments
for both, and ``hyperparameter_decay``'s step count). Resuming restores into freshly
built objects initialised from another seed, so nothing carries over but the files.
"""

from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from _toy import (
    EPS,
    NnxNet,
    assert_trees_equal,
    linen_state,
    linen_train_step,
    make_batch,
    nnx_train_step,
)
from flax import nnx

import yoto_jax

INTERRUPT, TOTAL = 6, 12


OPTIMIZER = yoto_jax.yoto_optimizer(optax.adam(1e-2), rho=0.1, mu_tx=optax.adam(5e-2))
"""Adam for the model, a faster Adam for µ, both with state to restore."""


def save_and_restore(directory: Path, step: int, state: Any, target: Any) -> Any:
    """Saves ``state`` as checkpoint ``step`` and reads it back into the structure,
    dtypes and shardings of ``target`` (a tree of arrays or of ``ShapeDtypeStruct``)."""
    with ocp.CheckpointManager(directory) as manager:
        manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
    with ocp.CheckpointManager(directory) as manager:
        assert manager.latest_step() == step
        return manager.restore(step, args=ocp.args.StandardRestore(target))


def assert_trained(mu: jax.Array) -> None:
    """µ has left its initial value log ε, so comparing it is not vacuous."""
    assert np.max(np.abs(mu - np.log(EPS))) > 0.05


def nnx_run(seed: int) -> tuple[NnxNet, nnx.Optimizer]:
    """A fresh NNX model and optimizer."""
    model = NnxNet(nnx.Rngs(seed))
    return model, nnx.Optimizer(model, OPTIMIZER, wrt=nnx.Param)


def nnx_train(model: NnxNet, opt: nnx.Optimizer, until: int) -> None:
    """Trains from the optimizer's step count up to step ``until``."""
    for step in range(int(opt.step[...]), until):
        nnx_train_step(model, opt, make_batch(step))


def test_nnx_resume_is_bitwise_identical(tmp_path: Path):
    model, opt = nnx_run(seed=0)
    nnx_train(model, opt, TOTAL)
    expected = nnx.state((model, opt))

    model, opt = nnx_run(seed=0)
    nnx_train(model, opt, INTERRUPT)
    saved = nnx.state((model, opt))
    model, opt = nnx_run(seed=1)  # the "new process": other weights, step 0
    restored = save_and_restore(tmp_path, INTERRUPT, saved, nnx.state((model, opt)))
    nnx.update((model, opt), restored)
    assert int(opt.step[...]) == INTERRUPT
    nnx_train(model, opt, TOTAL)

    assert_trees_equal(nnx.state((model, opt)), expected)
    assert_trained(model.loss_weights.mu)


def linen_train(state: Any, until: int) -> Any:
    """Trains a ``TrainState`` from its step count up to step ``until``."""
    for step in range(int(state.step), until):
        state, _ = linen_train_step(state, make_batch(step))
    return state


def test_linen_train_state_resume_is_bitwise_identical(tmp_path: Path):
    expected = linen_train(linen_state(OPTIMIZER), TOTAL)

    interrupted = linen_train(linen_state(OPTIMIZER), INTERRUPT)
    fresh = linen_state(OPTIMIZER, seed=1)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh)
    resumed = linen_train(save_and_restore(tmp_path, INTERRUPT, interrupted, abstract), TOTAL)

    assert int(resumed.step) == TOTAL
    assert_trees_equal(resumed.params, expected.params)
    assert_trees_equal(resumed.opt_state, expected.opt_state)
    assert_trained(resumed.params["loss_weights"][yoto_jax.MU_KEY])
