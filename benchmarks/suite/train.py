"""Training a suite task's rows as one jitted program per kind of row (vmapped over
configurations and seeds)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import yoto_jax
from benchmarks.suite.candidates import Candidate
from benchmarks.suite.tasks import Splits, SuiteTask
from benchmarks.suite.validation import validation_yoto


class Budget(NamedTuple):
    steps: int
    batch_size: int
    learning_rate: float  # the model's Adam, constant


FULL = Budget(1500, 64, 1e-3)
QUICK = Budget(300, 64, 3e-3)


class Context(NamedTuple):
    """What a run offers a weighting besides its configuration."""

    val_loss: Callable[[Any, jax.Array], jax.Array]  # the primary loss on a validation batch
    learning_rate: float  # the model's


MakeWeighting = Callable[[dict[str, jax.Array], Context], yoto_jax.Weighting]


def fixed_weighting(config: dict[str, jax.Array], context: Context) -> yoto_jax.Weighting:
    return yoto_jax.fixed_weights(config["weights"])


def yoto_weighting(normalize: str | None, validation: bool = False) -> MakeWeighting:
    """A YOTO factory over traced hyperparameters (one program per ``normalize`` and
    ``validation``)."""

    def make(config: dict[str, jax.Array], context: Context) -> yoto_jax.Weighting:
        if validation:
            return validation_yoto(config, context.val_loss, context.learning_rate)
        return yoto_jax.yoto(
            eps=config["eps"],
            rho=config["rho"],
            mu_learning_rate=config["mu_learning_rate"],
            primary_floor=config["primary_floor"],
            loss_floor=config["loss_floor"],
            normalize=normalize,
        )

    return make


def yoto_config(candidate: Candidate, num_losses: int, budget: Budget) -> dict[str, np.ndarray]:
    """The candidate's traced hyperparameters (see :class:`Candidate` for the None's)."""
    mu_rate = (
        budget.learning_rate if candidate.mu_learning_rate is None else candidate.mu_learning_rate
    )
    floor = 1.0 / num_losses if candidate.primary_floor is None else candidate.primary_floor
    values = {
        "eps": candidate.eps,
        "rho": candidate.rho,
        "mu_learning_rate": mu_rate,
        "primary_floor": floor,
        "loss_floor": candidate.loss_floor,
    }
    return {name: np.float32(value) for name, value in values.items()}


def program(task: SuiteTask, make_weighting: MakeWeighting, budget: Budget) -> Callable:
    """``run(configs, keys, data) -> dict`` of per-run results, one run per (config, key)
    pair along their common leading axis, jitted."""
    num_losses = len(task.loss_names)

    def run_one(config: dict[str, jax.Array], key: jax.Array, data: Splits) -> dict[str, Any]:
        init_key, loop_key = jax.random.split(key)
        num_train = jax.tree.leaves(data.train)[0].shape[0]
        num_val = jax.tree.leaves(data.val)[0].shape[0]

        def val_loss(model: Any, key: jax.Array) -> jax.Array:
            batch_key, loss_key = jax.random.split(key)
            rows = jax.random.randint(batch_key, (budget.batch_size,), 0, num_val)
            return task.losses(model, jax.tree.map(lambda x: x[rows], data.val), loss_key)[0]

        context = Context(val_loss, budget.learning_rate)
        train = yoto_jax.trainer(make_weighting(config, context), optax.adam(budget.learning_rate))
        state = train.init(task.init(init_key), num_losses)

        def step(state, index):
            batch_key, loss_key, method_key = jax.random.split(
                jax.random.fold_in(loop_key, index), 3
            )
            rows = jax.random.randint(batch_key, (budget.batch_size,), 0, num_train)
            batch = jax.tree.map(lambda x: x[rows], data.train)
            state, log = train.step(state, lambda p: task.losses(p, batch, loss_key), method_key)
            return state, log.losses

        state, losses = jax.lax.scan(step, state, jnp.arange(budget.steps))
        model = state.params["model"]
        mu = state.params["weighting"].get(yoto_jax.MU_KEY, jnp.zeros(num_losses - 1))
        return {
            "val": task.metric(model, data.val),
            "test": task.metric(model, data.test),
            "weights": train.weights(state),
            "mu": mu,
            "train_losses": jnp.mean(losses[-100:], axis=0),
            "val_losses": task.losses(model, data.val, jax.random.key(0)),
        }

    return jax.jit(jax.vmap(run_one, in_axes=(0, 0, None)))


def run_rows(
    task: SuiteTask,
    make_weighting: MakeWeighting,
    rows: dict[str, dict[str, np.ndarray]],
    seeds: int,
    budget: Budget,
) -> dict[str, dict[str, np.ndarray]]:
    """Every row × every seed as one program; results per row, with a leading seed axis.

    Within a seed every row gets the same key: the same initialisation and batches.
    """
    names = list(rows)
    configs = jax.tree.map(
        lambda *leaves: np.repeat(np.stack(leaves), seeds, axis=0), *rows.values()
    )
    keys = jnp.tile(jax.random.split(jax.random.key(0), seeds), len(names))
    out = jax.device_get(program(task, make_weighting, budget)(configs, keys, task.data))
    return {
        name: {field: value[i * seeds : (i + 1) * seeds] for field, value in out.items()}
        for i, name in enumerate(names)
    }
