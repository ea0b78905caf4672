"""A small three-loss regression problem, in Flax NNX and Linen, shared by the tests of
checkpointing, faults and mixed precision.

A two-layer MLP predicts two targets of one teacher; the losses are the primary
target's error, the auxiliary target's error, and a consistency loss between the
two outputs. Batches are a pure function of the step, so a resumed run sees the
same data as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.training import train_state
from jax.typing import DTypeLike

from yoto_jax.linen import LossWeights as LinenLossWeights
from yoto_jax.nnx import LossWeights

PRIMARY = "primary"
AUXILIARY = ("auxiliary", "consistency")
EPS = 0.5
FEATURES, HIDDEN = 4, 16

Batch = tuple[jax.Array, jax.Array]


def make_batch(step: int, size: int = 32) -> Batch:
    """The batch of a step: inputs (size, 4) and two noisy targets (size, 2)."""
    k_x, k_noise = jax.random.split(jax.random.fold_in(jax.random.key(7), step))
    x = jax.random.normal(k_x, (size, FEATURES))
    teacher = jnp.sin(x[:, :1] - x[:, 1:2]) + 0.5 * x[:, 2:3]
    return x, teacher + jnp.array([0.05, 0.4]) * jax.random.normal(k_noise, (size, 2))


def task_losses(pred: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
    """The three scalar losses of predictions (batch, 2), in the predictions' dtype."""
    y = y.astype(pred.dtype)
    return {
        PRIMARY: jnp.mean((pred[:, 0] - y[:, 0]) ** 2),
        AUXILIARY[0]: jnp.mean((pred[:, 1] - y[:, 1]) ** 2),
        AUXILIARY[1]: jnp.mean((pred[:, 0] - pred[:, 1]) ** 2),
    }


class NnxNet(nnx.Module):
    """The MLP with its ``LossWeights``; ``dtype`` is the compute dtype, params are float32."""

    def __init__(self, rngs: nnx.Rngs, dtype: DTypeLike = jnp.float32):
        self.hidden = nnx.Linear(FEATURES, HIDDEN, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, 2, dtype=dtype, rngs=rngs)
        self.loss_weights = LossWeights(PRIMARY, AUXILIARY, eps=EPS)

    def losses(self, batch: Batch) -> dict[str, jax.Array]:
        """The three losses of a batch, in the compute dtype."""
        x, y = batch
        return task_losses(self.out(jnp.tanh(self.hidden(x))), y)

    def __call__(self, batch: Batch) -> jax.Array:
        """The YOTO composite loss of a batch (float32)."""
        return self.loss_weights(self.losses(batch))


@nnx.jit
def nnx_train_step(model: NnxNet, optimizer: nnx.Optimizer, batch: Batch) -> jax.Array:
    """One update of the model and µ; returns the composite loss before it."""
    loss, grads = nnx.value_and_grad(lambda m: m(batch))(model)
    optimizer.update(model, grads)
    return loss


class LinenNet(nn.Module):
    """The same MLP in Linen; its params hold µ under ``loss_weights/yoto_mu``."""

    @nn.compact
    def __call__(self, batch: Batch) -> jax.Array:
        x, y = batch
        pred = nn.Dense(2)(jnp.tanh(nn.Dense(HIDDEN)(x)))
        return LinenLossWeights(PRIMARY, AUXILIARY, eps=EPS, name="loss_weights")(
            task_losses(pred, y)
        )


LINEN_NET = LinenNet()
"""One module for every ``TrainState``: its ``apply`` is part of the state's pytree
structure, so a new module per state would recompile the jitted step."""


def linen_state(tx: optax.GradientTransformation, seed: int = 0) -> train_state.TrainState:
    """A fresh ``TrainState`` of :data:`LINEN_NET` (pass the same ``tx`` object to share
    the jitted step's compilation)."""
    params = LINEN_NET.init(jax.random.key(seed), make_batch(0))["params"]
    return train_state.TrainState.create(apply_fn=LINEN_NET.apply, params=params, tx=tx)


@jax.jit
def linen_train_step(
    state: train_state.TrainState, batch: Batch
) -> tuple[train_state.TrainState, jax.Array]:
    """One update of the model and µ; returns the new state and the loss before it."""
    loss, grads = jax.value_and_grad(lambda p: state.apply_fn({"params": p}, batch))(state.params)
    return state.apply_gradients(grads=grads), loss


def assert_trees_equal(actual: Any, expected: Any) -> None:
    """Same structure and bitwise-equal leaves."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, actual, expected)
