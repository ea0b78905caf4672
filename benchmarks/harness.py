"""Evaluation, and running configurations as one vmapped program.

One run: `benchmarks.training.fit` trains the task's model with a method's weighting,
logging λ and the train/val losses every ``log_every`` steps; then `evaluate` measures
the model on the validation and test splits. Every run of a
method, over its configurations and seeds, is one ``yoto_jax.grid.vmapped_training``
program. Within a seed every configuration and method gets the same key: the same
initialisation and the same batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import yoto_jax
from benchmarks.methods import Config, MakeWeighting, Method
from benchmarks.tasks.base import Batch, Params, Splits, Task
from benchmarks.training import fit, split_key
from yoto_jax.grid import stack_trees, vmapped_training


def seed_key(seed: int) -> jax.Array:
    """The training key of a seed: initialisation and batches."""
    return jax.random.key(seed)


def in_chunks(task: Task, split: Batch) -> Batch:
    """``split`` with a leading axis of chunks of ``eval_chunk`` examples, for ``lax.map``."""
    chunk = task.training.eval_chunk
    size = jax.tree.leaves(split)[0].shape[0]
    if size % chunk:
        raise ValueError(f"{task.name}: split size {size} is not a multiple of eval_chunk {chunk}.")
    return jax.tree.map(lambda x: x.reshape(size // chunk, chunk, *x.shape[1:]), split)


def evaluate(task: Task, model_params: Params, split: Batch) -> dict[str, jax.Array]:
    """The task's metrics on a whole split, summed over chunks of ``eval_chunk`` examples."""
    stats = jax.lax.map(lambda batch: task.statistics(model_params, batch), in_chunks(task, split))
    return task.metrics(jax.tree.map(lambda x: jnp.sum(x, axis=0), stats))


def train_fn(task: Task, weighting: MakeWeighting) -> Callable[[dict, jax.Array, Splits], dict]:
    """``train_one(run, key, data)`` for ``vmapped_training``: ``run`` is
    ``{"config": ..., "init": initial model params}``; returns the trained params, λ, curves."""

    def train_one(run: dict[str, Any], key: jax.Array, data: Splits) -> dict[str, Any]:
        params, weights, curves = fit(task, weighting, run["config"], run["init"], key, data)
        return {"params": params, "weights": weights, "curves": curves._asdict()}

    return train_one


class Timed(NamedTuple):
    """Results of a program (NumPy, leading axis one per run) and its seconds.

    ``results`` holds ``val`` and ``test`` (dicts of metrics), ``weights`` and ``curves``.
    """

    results: dict[str, Any]
    compile_s: float  # compiling the training program (0 when it was already compiled)
    run_s: float  # running the training program
    eval_s: float  # evaluating the trained models on the val and test splits


class Programs:
    """Compiles each (weighting, number of runs) training program of a task once; runs them.

    Initialisation and evaluation are programs of their own, compiled once per task
    and shared by every method: that keeps them out of every training program's
    compile time.
    """

    def __init__(self, task: Task):
        self.task = task
        self._compiled: dict[tuple, Any] = {}
        self._init = jax.jit(task.init)
        self.evaluate = jax.jit(lambda params, split: evaluate(task, params, split))

    def run(self, weighting: MakeWeighting, configs: Sequence[Config], keys: jax.Array) -> Timed:
        """Trains every (configuration, key) pair as one vmapped program, then evaluates."""
        init = stack_trees([self._init(split_key(key)[0]) for key in keys])
        runs = {"config": stack_trees(list(configs)), "init": init}
        signature = (weighting, len(configs), jax.tree.structure(runs["config"]))
        compile_s = 0.0
        if signature not in self._compiled:
            start = time.perf_counter()
            program = vmapped_training(train_fn(self.task, weighting))
            self._compiled[signature] = program.lower(runs, keys, self.task.data).compile()
            compile_s = time.perf_counter() - start
        start = time.perf_counter()
        out = jax.block_until_ready(self._compiled[signature](runs, keys, self.task.data))
        run_s = time.perf_counter() - start
        start = time.perf_counter()
        params = [jax.tree.map(lambda x, i=i: x[i], out["params"]) for i in range(len(configs))]
        splits = {"val": self.task.data.val, "test": self.task.data.test}
        metrics = {
            name: stack_trees([self.evaluate(p, split) for p in params])
            for name, split in splits.items()
        }
        results = {**metrics, "weights": out["weights"], "curves": out["curves"]}
        results = jax.tree.map(np.asarray, jax.block_until_ready(results))
        return Timed(results, compile_s, run_s, time.perf_counter() - start)

    def run_sequentially(self, weighting: MakeWeighting, configs: Sequence[Config], key: jax.Array):
        """Trains the configurations one after another (one-run program), for timing."""
        runs = [self.run(weighting, [config], key[None]) for config in configs]
        results = jax.tree.map(lambda *xs: np.concatenate(xs), *(run.results for run in runs))
        seconds = [
            sum(getattr(run, field) for run in runs) for field in ("compile_s", "run_s", "eval_s")
        ]
        return Timed(results, *seconds)


def best_index(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Index of the best value along the last axis."""
    return np.argmax(values, -1) if higher_is_better else np.argmin(values, -1)


class MethodRun(NamedTuple):
    """A method's runs over seeds, results shaped (seeds, configurations, ...)."""

    method: Method
    configs: list[list[Config]]  # [seed][configuration]
    results: dict[str, Any]
    timed: Timed
    selected: np.ndarray  # (seeds,) the configuration picked by validation


def run_methods(
    programs: Programs, methods: Sequence[Method], seeds: Sequence[int], bar: Any = None
) -> dict[str, MethodRun]:
    """Trains every configuration of every method for every seed. Methods with the same
    weighting function share one program: their configurations are stacked, so that
    it compiles once (a task's fixed weightings; its YOTO variants).

    A shared program's seconds are split over its methods in proportion to their
    runs (compiling is charged to the first). ``bar`` (a tqdm progress bar) advances
    by one per method.
    """
    task = programs.task
    groups: dict[MakeWeighting, list[Method]] = {}
    for method in methods:
        groups.setdefault(method.weighting, []).append(method)
    found = {}
    for weighting, group in groups.items():
        if bar is not None:
            bar.set_description(f"{task.name}: {' + '.join(m.name for m in group)}")
        configs = {m.name: [m.configs(task.num_aux, seed) for seed in seeds] for m in group}
        flat = [c for m in group for per_seed in configs[m.name] for c in per_seed]
        keys = jnp.stack(
            [
                seed_key(seed)
                for m in group
                for seed, per_seed in zip(seeds, configs[m.name])
                for _ in per_seed
            ]
        )
        timed = programs.run(weighting, flat, keys)
        start = 0
        for position, method in enumerate(group):
            per_seed = len(configs[method.name][0])
            size = len(seeds) * per_seed
            results = jax.tree.map(
                lambda x, start=start, size=size, per_seed=per_seed: x[
                    start : start + size
                ].reshape(len(seeds), per_seed, *x.shape[1:]),
                timed.results,
            )
            share = size / len(flat)
            own = Timed(
                results,
                timed.compile_s if position == 0 else 0.0,
                timed.run_s * share,
                timed.eval_s * share,
            )
            selected = best_index(results["val"][task.metric], task.higher_is_better)
            found[method.name] = MethodRun(method, configs[method.name], results, own, selected)
            start += size
        if bar is not None:
            bar.update(len(group))
    return {method.name: found[method.name] for method in methods}


def run_method(programs: Programs, method: Method, seeds: Sequence[int]) -> MethodRun:
    """Trains every configuration of `method` for every seed, as one program."""
    return run_methods(programs, [method], seeds)[method.name]


def pick(values: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """values[s, selected[s]] for every seed s."""
    return values[np.arange(len(selected)), selected]


def collapse_flags(weights: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """``yoto_jax.weight_report``'s collapse flag for the weights λ (..., K+1) a run applied
    and the training losses it saw (the logits log(λ_i/λ_0) reproduce λ exactly)."""
    logits = np.log(weights[..., 1:] / weights[..., :1]).reshape(-1, weights.shape[-1] - 1)
    report = jax.vmap(yoto_jax.weight_report)(
        jnp.asarray(logits), jnp.asarray(losses.reshape(-1, weights.shape[-1]))
    )
    return np.asarray(report.collapsed).reshape(weights.shape[:-1])
