"""The learned rate's ``horizon``, chosen by leave-one-task-out on the three tasks.

Per task (the 3×3 grid's best fixed loss weights), in one vmapped program per
optimizer: Adam's 5-point grid (the harness's cosine decay, the rate with the best
validation metric per seed), and for each horizon H of ``HORIZONS`` the learned rate
from 0.1× the full-scale oracle rate (no ramp) and from 10× with
``ramp_from=RAMP_FROM``. A cell's *shortfall* is its seed-mean test metric's relative
distance behind the grid's (negative: ahead). For each held-out task, the H whose worst
shortfall over the other two tasks is least, by two criteria: over the starts from
below only, and over both starts; then that H's shortfall on the held-out task.

Run: ``python -m benchmarks.learning_rate --horizons [--scale full] [--seeds 5] [--out DIR]``
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import yoto_jax
from benchmarks import record
from benchmarks import tasks as task_suite
from benchmarks.harness import evaluate, in_chunks, seed_key
from benchmarks.learning_rate_tasks import (
    ADAM_RATES,
    FULL_ORACLE,
    GRID,
    one_of,
    states_of,
    trained,
    weightings,
)
from benchmarks.tasks.base import Task
from yoto_jax.learning_rate import RAMP_FROM

HORIZONS = (1.0, 10.0, 33.0, 100.0)
STARTS = {"0.1×": (0.1, False), "10× + ramp": (10.0, True)}
"""The learned rate's starts, × the full-scale oracle rate, and whether with the ramp."""

GRID_WEIGHTS = "grid-best weights"
"""The name, in ``benchmarks.learning_rate_tasks.weightings``, of the 3×3 grid's best
fixed loss weights."""

MakeOptimizer = Callable[[jax.Array, jax.Array, int], optax.GradientTransformation]


def program(
    task: Task, weighting: yoto_jax.Weighting, make: MakeOptimizer, validation: bool = False
):
    """``(rate, which, key, data) -> (test, val, α, val loss)``: a run with ``make(rate,
    which, steps)`` and ``weighting`` (``validation``: its hypergradient from held-out
    batches, ``benchmarks.learning_rate_tasks.training_step``); the final test and
    validation metrics, the learned α (nan without one) and the primary loss on the
    validation split. Vmapped over the leading three."""

    def one(rate, which, key, data):
        tx = make(rate, which, task.training.steps)
        state = trained(task, weighting, tx, key, data, validation)
        learned = states_of(state.opt_state, yoto_jax.LearnedLearningRateState)
        alphas = [yoto_jax.learning_rate_of(s) for s in learned] or [jnp.asarray(jnp.nan)]
        alpha = jnp.stack(alphas)[jnp.minimum(which, len(alphas) - 1)]
        model = state.params["model"]
        test = evaluate(task, model, data.test)[task.metric]
        val = evaluate(task, model, data.val)[task.metric]
        return test, val, alpha, primary_loss(task, model, data.val)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)))


def primary_loss(task: Task, model: Any, split: Any) -> jax.Array:
    """The mean primary loss over ``split``, in chunks of ``eval_chunk`` examples."""
    chunks = in_chunks(task, split)
    losses = jax.lax.map(lambda batch: task.losses(model, batch, jax.random.key(0))[0], chunks)
    return jnp.mean(losses)


def adam(rate: jax.Array, which: jax.Array, steps: int) -> optax.GradientTransformation:
    """The harness's Adam: ``rate`` with a cosine decay to 0 (``which`` unused)."""
    del which
    return optax.adam(optax.cosine_decay_schedule(rate, steps))


def learned(horizon: float) -> MakeOptimizer:
    """The learned rate with ``horizon``, without (``which`` 0) or with the ramp (1)."""
    return lambda rate, which, steps: one_of(
        [
            yoto_jax.learned_learning_rate(optax.scale_by_adam(), rate, horizon=horizon),
            yoto_jax.learned_learning_rate(
                optax.scale_by_adam(), rate, horizon=horizon, ramp_from=RAMP_FROM
            ),
        ],
        which,
    )


def shortfall(value: float, grid: float, higher_is_better: bool) -> float:
    """How far ``value`` is behind ``grid``, relative to it (negative: ahead)."""
    return (grid - value) / grid if higher_is_better else (value - grid) / grid


def leave_one_task_out(shortfalls: dict[str, dict[float, dict[str, float]]]) -> dict[str, Any]:
    """Per criterion (the starts it looks at) and held-out task: the H with the least
    worst shortfall over the other tasks, and that H's worst shortfall on the held-out
    one."""
    criteria = {"from below": ["0.1×"], "both starts": list(STARTS)}
    folds: dict[str, Any] = {}
    for criterion, starts in criteria.items():

        def worst(name: str, horizon: float, starts=starts) -> float:
            return max(shortfalls[name][horizon][s] for s in starts)

        folds[criterion] = {}
        for held_out in shortfalls:
            others = [name for name in shortfalls if name != held_out]
            chosen = min(HORIZONS, key=lambda h: max(worst(name, h) for name in others))
            folds[criterion][held_out] = {
                "horizon": chosen,
                "held_out_shortfall": worst(held_out, chosen),
            }
    return folds


def run(
    task: Task,
    make: MakeOptimizer,
    rates: list[float],
    which: list[int],
    seeds: int,
    validation: bool = False,
    weighting: str = GRID_WEIGHTS,
) -> tuple[np.ndarray, ...]:
    """Test, validation, α and the validation loss of ``make`` from each of ``rates``
    (with its ``which``) for seeds 0 … ``seeds`` − 1, each shaped (rates, seeds), with
    the weighting named ``weighting`` (a key of ``weightings(task)``)."""
    keys = jnp.stack([seed_key(s) for s in range(seeds)] * len(rates))
    outputs = program(task, weightings(task)[weighting](), make, validation)(
        jnp.repeat(jnp.asarray(rates, jnp.float32), seeds),
        jnp.repeat(jnp.asarray(which), seeds),
        keys,
        task.data,
    )
    return tuple(np.asarray(v).reshape(len(rates), seeds) for v in outputs)


def adam_grid(task: Task, seeds: int, weighting: str = GRID_WEIGHTS) -> dict[str, Any]:
    """Adam's 5-point grid on ``task`` with ``weighting``: per rate and seed the test
    metric, and per seed the test metric and the validation loss of the rate picked by
    the validation metric; prints the picked test metric's mean."""
    rates = list(ADAM_RATES[GRID])
    test, val, _, val_loss = run(task, adam, rates, [0] * len(rates), seeds, False, weighting)
    sign = 1.0 if task.higher_is_better else -1.0
    pick = np.argmax(sign * val, axis=0), np.arange(seeds)
    print(
        f"{task.name}, {weighting} ({task.training.steps} steps, test {task.metric}): "
        f"grid {test[pick].mean():.4f} ± {test[pick].std():.4f}"
        f"  val loss {val_loss[pick].mean():.4f}"
    )
    return {
        "rates": rates,
        "test": test.tolist(),
        "picked": test[pick].tolist(),
        "picked_val_loss": val_loss[pick].tolist(),
    }


def main(scale: str, seeds: int, out: str | None) -> dict[str, Any]:
    """Runs the study, prints a table and the folds, and with ``out`` writes
    ``out/horizon_{scale}.json`` (per-seed metrics and α)."""
    stored: dict[str, Any] = {
        "config": {**record.provenance("benchmarks.learning_rate"), "scale": scale, "seeds": seeds}
    }
    print(stored["config"]["machine"], stored["config"]["command"])
    shortfalls: dict[str, dict[float, dict[str, float]]] = {}
    names = list(task_suite.TASKS)
    bar = tqdm(total=len(names) * (1 + len(HORIZONS)), desc="programs")
    for name in names:
        task = task_suite.build(name, scale)
        stored[name] = {"grid": adam_grid(task, seeds)}
        bar.update()
        grid = float(np.mean(stored[name]["grid"]["picked"]))
        shortfalls[name] = {}
        starts = [FULL_ORACLE[name] * factor for factor, _ in STARTS.values()]
        ramps = [int(ramp) for _, ramp in STARTS.values()]
        for horizon in HORIZONS:
            test, _, alpha, _ = run(task, learned(horizon), starts, ramps, seeds)
            bar.update()
            cells = {}
            for label, t, a in zip(STARTS, test, alpha):
                cells[label] = {"test": t.tolist(), "final_rate": a.tolist()}
                print(
                    f"  H={horizon:g}, from {label}: {t.mean():.4f} ± {t.std():.4f}"
                    f"  final α {np.exp(np.log(a).mean()):.2g}"
                )
            stored[name][f"horizon {horizon:g}"] = cells
            shortfalls[name][horizon] = {
                label: shortfall(float(np.mean(cell["test"])), grid, task.higher_is_better)
                for label, cell in cells.items()
            }
    bar.close()
    stored["shortfalls"] = {n: {f"{h:g}": s for h, s in v.items()} for n, v in shortfalls.items()}
    stored["leave_one_task_out"] = leave_one_task_out(shortfalls)
    for criterion, folds in stored["leave_one_task_out"].items():
        chosen = (
            f"held out {n}: H={f['horizon']:g} ({f['held_out_shortfall']:+.3f})"
            for n, f in folds.items()
        )
        print(f"leave-one-task-out, {criterion}: " + "; ".join(chosen))
    if out is not None:
        print("wrote", record.write_json(Path(out) / f"horizon_{scale}.json", stored))
    return stored
