"""One run's training: the loop every benchmark program is made of.

`training` builds one run of a task with a method's weighting (Adam on a cosine from
``task.training.learning_rate`` to 0 over ``task.training.steps``; batches drawn with
replacement from the training split, or, for ``training.fresh``, one shuffled pass
through it), `fit` runs it with the curves logged every ``log_every`` steps. This module
sits under the method table (`benchmarks.methods`) and the programs
(`benchmarks.harness`): the tasks may train with it (the segmentation task's teacher)
without depending on either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import yoto_jax
from benchmarks.tasks.base import Params, Splits, Task

Config = Any


class Setting(NamedTuple):
    """What the task fixes for every run's weighting."""

    shared_mask: Callable[[Params], Any]  # model params -> bool tree, True on the trunk
    learning_rate: optax.Schedule  # the model's learning-rate schedule
    primary_val_loss: Callable[[Params, jax.Array], jax.Array]  # (model params, key) ->
    # the primary loss on a random validation batch of the training batch's size


MakeWeighting = Callable[[Config, Setting], yoto_jax.Weighting]


class Curves(NamedTuple):
    """Logged every ``log_every`` steps; each field has shape (steps / log_every, K+1)."""

    weights: jax.Array  # λ applied at the interval's last step
    train: jax.Array  # mean training losses over the interval
    val: jax.Array  # losses on the first ``eval_chunk`` validation examples, at its end


def split_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A run's key, split into the initialisation key and the training-loop key."""
    init_key, loop_key = jax.random.split(key)
    return init_key, loop_key


class Run(NamedTuple):
    """One run's training, in pieces that can be continued: ``init(model_params)`` is the
    carry before step 0 (a ``yoto_jax.TrainerState``), ``step(carry, step)`` one training
    step (returning the losses and the weights applied), ``weights(carry)`` the current λ."""

    init: Callable[[Params], yoto_jax.TrainerState]
    step: Callable[
        [yoto_jax.TrainerState, jax.Array],
        tuple[yoto_jax.TrainerState, tuple[jax.Array, jax.Array]],
    ]
    weights: Callable[[yoto_jax.TrainerState], jax.Array]


def training(
    task: Task,
    weighting: MakeWeighting,
    config: Config,
    key: jax.Array,
    data: Splits,
    optimizer: Callable[[optax.Schedule], optax.GradientTransformation] = optax.adam,
) -> Run:
    """The training of one run with ``yoto_jax.trainer``: Adam on a cosine from
    ``task.training.learning_rate`` to 0 over ``task.training.steps``; the step's batch,
    augmentations and randomness come from ``key`` and the step index alone, so a run
    continued in pieces equals one in a piece.

    Args:
      task: the task.
      weighting: the method's ``weighting(config, setting)``.
      config: its configuration.
      key: the run's key (``split_key(key)[0]`` initialises the model).
      data: ``task.data`` (passed as an argument, so that it is not a compiled constant).
      optimizer: the model's optimizer from its learning-rate schedule (Adam; the
        learning-rate benchmark passes others).
    """
    steps, batch_size, learning_rate, _, _, fresh = task.training
    loop_key = jax.random.split(split_key(key)[1])[0]
    schedule = optax.cosine_decay_schedule(learning_rate, steps)
    num_train = jax.tree.leaves(data.train)[0].shape[0]
    num_val = jax.tree.leaves(data.val)[0].shape[0]

    def primary_val_loss(model_params: Params, key: jax.Array) -> jax.Array:
        batch_key, loss_key = jax.random.split(key)
        index = jax.random.randint(batch_key, (batch_size,), 0, num_val)
        batch = jax.tree.map(lambda x: x[index], data.val)
        return task.losses(model_params, batch, loss_key)[0]

    setting = Setting(task.shared_mask, schedule, primary_val_loss)
    train = yoto_jax.trainer(weighting(config, setting), optimizer(schedule))

    def init(model_params: Params) -> yoto_jax.TrainerState:
        return train.init(model_params, len(task.loss_names))

    def batch_index(batch_key: jax.Array, step: jax.Array) -> jax.Array:
        """With replacement from the split, or the step's slice of one shuffled pass
        (the pass's order comes from key index ``steps``, which no step uses)."""
        if fresh:
            order = jax.random.permutation(jax.random.fold_in(loop_key, steps), num_train)
            return jax.lax.dynamic_slice_in_dim(order, step * batch_size, batch_size)
        return jax.random.randint(batch_key, (batch_size,), 0, num_train)

    def train_step(
        carry: yoto_jax.TrainerState, step: jax.Array
    ) -> tuple[yoto_jax.TrainerState, tuple[jax.Array, jax.Array]]:
        batch_key, loss_key, method_key = jax.random.split(jax.random.fold_in(loop_key, step), 3)
        index = batch_index(batch_key, step)
        batch = jax.tree.map(lambda x: x[index], data.train)
        carry, log = train.step(
            carry, lambda model_params: task.losses(model_params, batch, loss_key), method_key
        )
        return carry, (log.losses, log.weights)

    return Run(init, train_step, train.weights)


def fit(
    task: Task,
    weighting: MakeWeighting,
    config: Config,
    model_params: Params,
    key: jax.Array,
    data: Splits,
) -> tuple[Params, jax.Array, Curves]:
    """Trains the task's model from `model_params` with `weighting` (see `training`),
    logging every ``task.training.log_every`` steps.

    Returns:
      The trained model's parameters, the final weights λ (K+1,), and the `Curves`.
    """
    steps, _, _, log_every, eval_chunk, _ = task.training
    if steps % log_every:
        raise ValueError(f"{task.name}: steps {steps} is not a multiple of log_every {log_every}.")
    val_key = jax.random.split(split_key(key)[1])[1]
    val_batch = jax.tree.map(lambda x: x[:eval_chunk], data.val)
    run = training(task, weighting, config, key, data)

    def interval(carry: tuple, start: jax.Array) -> tuple[tuple, Curves]:
        carry, (losses, weights) = jax.lax.scan(run.step, carry, start + jnp.arange(log_every))
        val_losses = task.losses(carry.params["model"], val_batch, val_key)
        return carry, Curves(weights[-1], jnp.mean(losses, axis=0), val_losses)

    carry, curves = jax.lax.scan(interval, run.init(model_params), jnp.arange(0, steps, log_every))
    return carry.params["model"], run.weights(carry), curves
