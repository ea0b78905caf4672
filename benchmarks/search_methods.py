"""The searches: ``halving_best``, ``pbt_best``, ``select_best`` and the Optuna rows.

``halving_best`` and ``pbt_best`` search over the 9 configurations of ``grid_best``
(successive halving) or start a population of the same 9 (PBT), train with the
benchmark's one training loop (`benchmarks.training.training`: the same model,
initialisation, batches and schedule as every other method of a seed, so halving's
winner is trained exactly as the grid's run of the same configuration), score members
on the whole validation split, and report the winner's test metric.

* ``halving_best``: ``yoto_jax.successive_halving`` with eta = 3: 9 members for a third
  of the steps, the best 3 for another third, the best one to the end; (9 + 3 + 1) / 3 =
  4.3 runs of compute against the grid's 9.
* ``pbt_best``: ``yoto_jax.population_based_training`` every tenth of the steps: the two
  worst members copy a random one of the two best (model and Adam state) and multiply
  each auxiliary weight by 1.25 or 1/1.25 (clipped to [1e-3, 10]); 9 runs of compute.

Run only when named with ``--methods`` (not in the default runs):

* ``select_best``: ``yoto_jax.search_methods`` over 14 members of 6 families: the
  benchmark's rows of YOTO, uncertainty weighting, UPGrad, Aligned-MTL and DWA (one
  member each, trained exactly as those rows are) and the 9 fixed rows of
  ``grid_best`` (equal weights among them); eta = 3, 14 -> 4 -> 1, with rungs of s,
  2s and the rest of the steps, s the largest that keeps the member-steps within
  halving_best's (``select_rung_steps``): 4.3 runs.
* ``optuna_tpe`` and ``optuna_hyperband``: Optuna (an optional dependency: the rows are
  skipped with a message without it) over the grid's space made continuous, each
  auxiliary weight log-uniform in [0.01, 1], with halving's member-step budget, trials
  one after another in this process with the same training as every other row (one
  compiled program per chunk length, reused by every trial). ``optuna_tpe``: the TPE
  sampler (Optuna's defaults: its first 10 trials are random), whole trials; a trial
  that would overrun the budget is not started. ``optuna_hyperband``: TPE with the
  Hyperband pruner (min resource 1, max 9, reduction factor 3) on the validation metric
  reported after each ninth of the steps; the trial the budget runs out in is stopped
  there. The best finished trial by validation is reported.

The search's own key is unused: every member trains with its seed's key, which its
configuration carries (``"seed"``), so one compiled program serves every seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import yoto_jax
from benchmarks.harness import Programs, evaluate
from benchmarks.methods import GRID_VALUES, METHODS, MakeWeighting, fixed
from benchmarks.tasks.base import Task
from benchmarks.training import split_key, training
from yoto_jax._population import rung_lengths, rung_sizes
from yoto_jax.grid import loss_weight_grid, stack_trees

ETA = 3
PBT_ROUNDS = 10
PBT_PERTURBATION = 1.25
PBT_WEIGHT_RANGE = (1e-3, 10.0)
OPTUNA_CHUNKS = 9
"""Optuna's trials train in 9 chunks; with Hyperband they report after each."""
SELECT_METHODS = ("yoto", "uncertainty", "upgrad", "aligned_mtl", "dwa")
"""``select_best``'s one-member families, next to the grid's fixed rows."""
SEARCHES = ("halving_best", "pbt_best")
"""The searches of the default runs."""
OPTUNA_SEARCHES = ("optuna_tpe", "optuna_hyperband")
EXTRA_SEARCHES = ("select_best", *OPTUNA_SEARCHES)
"""Searches run only when named (``--methods``)."""
ALL_SEARCHES = (*SEARCHES, *EXTRA_SEARCHES)
SUMMARIES = {
    "halving_best": "successive halving over the 3x3 grid, eta 3 (9 -> 3 -> 1); best by validation",
    "pbt_best": "PBT from the 3x3 grid's 9 configurations, exploit/explore every tenth of the steps",
    "select_best": "search_methods over YOTO, uncertainty, UPGrad, Aligned-MTL, DWA and the 3x3 "
    "grid's 9 fixed rows (14 members), eta 3, rungs s, 2s, rest within halving's member-steps; "
    "best by validation",
    "optuna_tpe": "Optuna TPE over log-uniform auxiliary weights in [0.01, 1], whole trials one "
    "after another, halving's member-step budget",
    "optuna_hyperband": "Optuna TPE + Hyperband pruning (reports every ninth of the steps), same "
    "space and budget",
}


def _functions(task: Task, weighting: MakeWeighting = fixed) -> tuple[Callable, Callable, Callable]:
    """``init_fn``, ``train_fn`` and ``eval_fn`` of one member trained with ``weighting``;
    ``config`` is the method's configuration (``{"weights": (K+1,)}`` for ``fixed``) with
    a ``"seed": ()``; the state is the harness's training carry and the step."""

    def run_of(config: dict[str, jax.Array]) -> tuple[Any, jax.Array]:
        key = jax.random.key(config["seed"].astype(jnp.uint32))
        return training(task, weighting, config, key, task.data), key

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


class Outcome(NamedTuple):
    """One seed's search: the winner's model params and weights λ, which member it was,
    the member-steps spent and the search's history."""

    model: Any
    weights: list[float]
    selected: Any
    member_steps: int
    history: Any


def available(methods: list[str]) -> list[str]:
    """``methods`` without the Optuna rows when Optuna is not installed (with a message)."""
    missing = [m for m in methods if m in OPTUNA_SEARCHES]
    if not missing:
        return methods
    try:
        import optuna  # noqa: F401
    except ImportError:
        print(f"skipping {', '.join(missing)}: optuna is not installed (pip install optuna).")
        return [m for m in methods if m not in OPTUNA_SEARCHES]
    return methods


def run(name: str, programs: Programs, seeds: list[int]) -> dict[str, Any]:
    """The results.json entry of the search `name` over `seeds`."""
    task = programs.task
    search = {
        "halving_best": _library_search,
        "pbt_best": _library_search,
        "select_best": _select_best,
        "optuna_tpe": _optuna_search,
        "optuna_hyperband": _optuna_search,
    }[name](name, task)
    outcomes, seconds = [], []
    for seed in seeds:
        start = time.perf_counter()
        outcome = search(seed)
        jax.block_until_ready(outcome.model)
        seconds.append(time.perf_counter() - start)
        outcomes.append(outcome)
    return _entry(name, programs, outcomes, seconds)


def _entry(
    name: str, programs: Programs, outcomes: list[Outcome], seconds: list[float]
) -> dict[str, Any]:
    """The results.json entry of one search's outcomes (one per seed)."""
    task = programs.task
    metrics = [
        {s: programs.evaluate(o.model, getattr(task.data, s)) for s in ("val", "test")}
        for o in outcomes
    ]
    test_metrics = [{k: float(v) for k, v in m["test"].items()} for m in metrics]
    member_steps = [o.member_steps for o in outcomes]
    weights = [o.weights for o in outcomes]
    return {
        "test": [float(m["test"][task.metric]) for m in metrics],
        "val": [float(m["val"][task.metric]) for m in metrics],
        "runs_per_seed": float(np.mean(member_steps)) / task.training.steps,
        "member_steps": member_steps,
        # the first seed also compiles the programs; the median seed does not
        "wall_s": float(np.median(seconds) * len(seconds)),
        "seconds_per_seed": seconds,
        "weights": weights,
        "relative_weights": np.asarray(yoto_jax.relative_weights(weights)).tolist(),
        "test_metrics": {k: [m[k] for m in test_metrics] for k in test_metrics[0]},
        "selected": [o.selected for o in outcomes],
        "history": [o.history for o in outcomes],
        "summary": SUMMARIES[name],
    }


def _seeded(configs: list[dict], seed: int) -> dict[str, Any]:
    """Configurations stacked along a leading axis, each with the seed's ``"seed"``."""
    return stack_trees([{**c, "seed": jnp.float32(seed)} for c in configs])


def _library_search(name: str, task: Task) -> Callable[[int], Outcome]:
    """``seed -> Outcome`` of halving_best or pbt_best over the grid's 9 configurations."""
    functions = _functions(task)
    grid = loss_weight_grid(GRID_VALUES, task.num_aux)
    steps = task.training.steps
    search, options = {
        "halving_best": (yoto_jax.successive_halving, {"eta": ETA}),
        "pbt_best": (
            yoto_jax.population_based_training,
            {"interval": max(1, steps // PBT_ROUNDS), "explore_fn": _explore},
        ),
    }[name]

    def one_seed(seed: int) -> Outcome:
        configs = _seeded([{"weights": row} for row in grid], seed)
        result = search(
            *functions,
            configs,
            jax.random.key(seed),
            total_steps=steps,
            maximize=task.higher_is_better,
            **options,
        )
        return Outcome(
            result.best_state["carry"].params["model"],
            np.asarray(result.best_config["weights"]).tolist(),
            result.best_index,
            result.member_steps,
            _history(result),
        )

    return one_seed


def _select_best(name: str, task: Task) -> Callable[[int], Outcome]:
    """``seed -> Outcome`` of ``yoto_jax.search_methods`` over the benchmark's rows of
    ``SELECT_METHODS`` (one member each) and the grid's fixed rows."""
    weightings = {m: METHODS[m].weighting for m in SELECT_METHODS} | {"fixed": fixed}
    shared = {w: _functions(task, w) for w in set(weightings.values())}  # equal is fixed's
    functions = {m: shared[weighting] for m, weighting in weightings.items()}
    rows = loss_weight_grid(GRID_VALUES, task.num_aux)
    steps = task.training.steps
    rung_steps = select_rung_steps(steps, rung_sizes(len(SELECT_METHODS) + len(rows), ETA))

    def one_seed(seed: int) -> Outcome:
        configs = {m: [METHODS[m].configs(task.num_aux, seed)[0]] for m in SELECT_METHODS}
        configs["fixed"] = [{"weights": row} for row in rows]
        families = {m: (*functions[m], _seeded(configs[m], seed)) for m in weightings}
        result = yoto_jax.search_methods(
            families,
            jax.random.key(seed),
            total_steps=steps,
            eta=ETA,
            maximize=task.higher_is_better,
            rung_steps=rung_steps,
        )
        carry = result.best_state["carry"]
        key = jax.random.key(seed)
        run = training(task, weightings[result.best_family], result.best_config, key, task.data)
        history = [
            {
                "families": list(r.families),
                "indices": r.indices.tolist(),
                "scores": r.scores.tolist(),
            }
            for r in result.history
        ]
        return Outcome(
            carry.params["model"],
            np.asarray(run.weights(carry)).tolist(),
            f"{result.best_family}[{result.best_index}]",
            result.member_steps,
            history,
        )

    return one_seed


def halving_budget(steps: int, num: int = 9, eta: int = ETA) -> int:
    """The member-steps of successive halving over ``num`` members: the Optuna rows' budget."""
    sizes = rung_sizes(num, eta)
    return sum(n * s for n, s in zip(sizes, rung_lengths(steps, len(sizes), None, ""), strict=True))


def select_rung_steps(steps: int, sizes: list[int]) -> list[int]:
    """Rungs of s, 2s, 4s, ... and the rest of ``steps``, for populations of ``sizes``.

    s is the largest whose member-steps stay within ``halving_budget(steps)`` (halving
    over the grid's 9), and at most what the even split gives the early rungs together:
    a larger first population gets shorter first rungs rather than more compute, and
    the later rungs, which rank fewer and closer members, get more steps.
    """
    if len(sizes) == 1:
        return [steps]
    doublings = [2**i for i in range(len(sizes) - 1)]
    extra = sum((n - 1) * d for n, d in zip(sizes[:-1], doublings, strict=True))
    even = steps * (len(sizes) - 1) // len(sizes)
    first = max(1, min((halving_budget(steps) - steps) // extra, even // sum(doublings)))
    early = [first * d for d in doublings]
    return [*early, steps - sum(early)]


def _optuna_search(name: str, task: Task) -> Callable[[int], Outcome]:
    """``seed -> Outcome`` of Optuna's TPE (``optuna_tpe``: whole trials) or TPE with
    Hyperband pruning (``optuna_hyperband``: trials report the validation metric after
    each ninth of the steps) over log-uniform auxiliary weights in the grid's range,
    trials one after another, until halving's member-step budget is spent."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    init_fn, train_fn, eval_fn = _functions(task)
    init, train, score = jax.jit(init_fn), jax.jit(train_fn, static_argnums=3), jax.jit(eval_fn)
    steps, pruning = task.training.steps, name == "optuna_hyperband"
    num_chunks = min(OPTUNA_CHUNKS, steps)
    chunks = rung_lengths(steps, num_chunks, None, f"{num_chunks} chunks")
    budget = halving_budget(steps)
    low, high = min(GRID_VALUES), max(GRID_VALUES)
    better = np.greater if task.higher_is_better else np.less

    def one_seed(seed: int) -> Outcome:
        pruner = (
            optuna.pruners.HyperbandPruner(1, num_chunks, ETA)
            if pruning
            else optuna.pruners.NopPruner()
        )
        study = optuna.create_study(
            direction="maximize" if task.higher_is_better else "minimize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=pruner,
        )
        used, best, trials = 0, None, []
        while used + (chunks[0] if pruning else steps) <= budget:
            trial = study.ask()
            aux = [
                trial.suggest_float(f"w{k + 1}", low, high, log=True) for k in range(task.num_aux)
            ]
            config = {"weights": jnp.asarray([1.0, *aux], jnp.float32), "seed": jnp.float32(seed)}
            state, status, trained = init(config, None), "complete", 0
            for chunk, length in enumerate(chunks):
                if used + length > budget:
                    status = "out of budget"
                    break
                state = train(state, config, None, length)
                used, trained = used + length, trained + length
                if pruning and chunk + 1 < len(chunks):  # a trained trial is finished
                    trial.report(float(score(state, config)), chunk + 1)
                    if trial.should_prune():
                        status = "pruned"
                        break
            value = float(score(state, config))
            if status == "complete":
                study.tell(trial, value)
                if best is None or better(value, best[0]):
                    best = (value, state, [1.0, *aux], trial.number)
            else:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            trials.append(
                {"weights": [1.0, *aux], "steps": trained, "val": value, "status": status}
            )
        if best is None:
            raise RuntimeError(f"{name}: no trial finished within {budget} member-steps.")
        _, state, weights, number = best
        return Outcome(state["carry"].params["model"], weights, number, used, trials)

    return one_seed
