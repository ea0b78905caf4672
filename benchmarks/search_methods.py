"""``halving_best`` and ``pbt_best``: the library's searches over the grid's loss weights.

Both search over the 9 configurations of ``grid_best`` (successive halving) or start a
population of the same 9 (PBT), train with the harness's training (`harness.training`:
the same model, initialisation, batches and schedule as every other method of a seed,
so halving's winner is trained exactly as the grid's run of the same configuration),
score members on the whole validation split, and report the winner's test metric.

* ``halving_best``: ``yoto_jax.successive_halving`` with eta = 3: 9 members for a third
  of the steps, the best 3 for another third, the best one to the end; (9 + 3 + 1) / 3 =
  4.3 runs of compute against the grid's 9.
* ``pbt_best``: ``yoto_jax.population_based_training`` every tenth of the steps: the two
  worst members copy a random one of the two best (model and Adam state) and multiply
  each auxiliary weight by 1.25 or 1/1.25 (clipped to [1e-3, 10]); 9 runs of compute.

The search's own key is unused: every member trains with its seed's key, which its
configuration carries (``"seed"``), so one compiled program serves every seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import yoto_jax
from benchmarks.harness import Programs, evaluate, split_key, training
from benchmarks.methods import GRID_VALUES, fixed
from benchmarks.tasks.base import Task
from yoto_jax.grid import loss_weight_grid

ETA = 3
PBT_ROUNDS = 10
PBT_PERTURBATION = 1.25
PBT_WEIGHT_RANGE = (1e-3, 10.0)
SEARCHES = ("halving_best", "pbt_best")
SUMMARIES = {
    "halving_best": "successive halving over the 3x3 grid, eta 3 (9 -> 3 -> 1); best by validation",
    "pbt_best": "PBT from the 3x3 grid's 9 configurations, exploit/explore every tenth of the steps",
}


def _functions(task: Task) -> tuple[Callable, Callable, Callable]:
    """``init_fn``, ``train_fn`` and ``eval_fn`` of one member; ``config = {"weights":
    (K+1,), "seed": ()}``; the state is the harness's training carry and the step."""

    def run_of(config: dict[str, jax.Array]) -> tuple[Any, jax.Array]:
        key = jax.random.key(config["seed"].astype(jnp.uint32))
        return training(task, fixed, {"weights": config["weights"]}, key, task.data), key

    def init_fn(config: dict[str, jax.Array], _: jax.Array) -> dict[str, Any]:
        run, key = run_of(config)
        return {"carry": run.init(task.init(split_key(key)[0])), "step": jnp.int32(0)}

    def train_fn(state: dict, config: dict, _: jax.Array, num_steps: int) -> dict[str, Any]:
        run, _ = run_of(config)
        steps = state["step"] + jnp.arange(num_steps)
        carry, _ = jax.lax.scan(run.step, state["carry"], steps)
        return {"carry": carry, "step": state["step"] + num_steps}

    def eval_fn(state: dict[str, Any], config: dict[str, jax.Array]) -> jax.Array:
        return evaluate(task, state["carry"].params["model"], task.data.val)[task.metric]

    return init_fn, train_fn, eval_fn


def _explore(config: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
    """Each auxiliary weight times 1.25 or 1/1.25; the primary's 1 and the seed unchanged."""
    factors = jnp.where(jax.random.bernoulli(key, 0.5, config["weights"].shape), 1.0, -1.0)
    scaled = config["weights"] * PBT_PERTURBATION**factors
    weights = config["weights"].at[1:].set(jnp.clip(scaled[1:], *PBT_WEIGHT_RANGE))
    return {**config, "weights": weights}


def _history(result: yoto_jax.HalvingResult | yoto_jax.PBTResult) -> Any:
    """Halving's rungs (surviving indices, best first, and their scores), or PBT's parents."""
    if isinstance(result, yoto_jax.HalvingResult):
        return [
            {"indices": r.indices.tolist(), "scores": r.scores.tolist()} for r in result.history
        ]
    return {"parents": np.asarray(result.history.parents).tolist()}


def run(name: str, programs: Programs, seeds: list[int]) -> dict[str, Any]:
    """The results.json entry of the search `name` over `seeds`."""
    task = programs.task
    init_fn, train_fn, eval_fn = _functions(task)
    grid = loss_weight_grid(GRID_VALUES, task.num_aux)
    steps = task.training.steps
    results: dict[str, list] = {"test": [], "val": [], "weights": [], "seconds": [], "selected": []}
    test_metrics, member_steps, histories = [], [], []
    search, options = {
        "halving_best": (yoto_jax.successive_halving, {"eta": ETA}),
        "pbt_best": (
            yoto_jax.population_based_training,
            {"interval": max(1, steps // PBT_ROUNDS), "explore_fn": _explore},
        ),
    }[name]
    for seed in seeds:
        configs = {"weights": grid, "seed": jnp.full((len(grid),), float(seed), jnp.float32)}
        start = time.perf_counter()
        result = search(
            init_fn,
            train_fn,
            eval_fn,
            configs,
            jax.random.key(seed),
            total_steps=steps,
            maximize=task.higher_is_better,
            **options,
        )
        histories.append(_history(result))
        model = jax.block_until_ready(result.best_state["carry"][0]["model"])
        results["seconds"].append(time.perf_counter() - start)
        metrics = {s: programs.evaluate(model, getattr(task.data, s)) for s in ("val", "test")}
        results["test"].append(float(metrics["test"][task.metric]))
        results["val"].append(float(metrics["val"][task.metric]))
        results["weights"].append(np.asarray(result.best_config["weights"]).tolist())
        results["selected"].append(result.best_index)
        test_metrics.append({k: float(v) for k, v in metrics["test"].items()})
        member_steps.append(result.member_steps)
    return {
        "test": results["test"],
        "val": results["val"],
        "runs_per_seed": member_steps[0] / steps,
        "member_steps": member_steps,
        # the first seed also compiles the programs; the median seed does not
        "wall_s": float(np.median(results["seconds"]) * len(seeds)),
        "seconds_per_seed": results["seconds"],
        "weights": results["weights"],
        "relative_weights": np.asarray(yoto_jax.relative_weights(results["weights"])).tolist(),
        "test_metrics": {k: [m[k] for m in test_metrics] for k in test_metrics[0]},
        "selected": results["selected"],
        "history": histories,
        "summary": SUMMARIES[name],
    }
