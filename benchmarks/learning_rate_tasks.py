"""Issue 21's benchmark: a learned learning rate against an Adam grid and optax.contrib.

On the three benchmark tasks (``benchmarks.tasks``), each with the 3×3 grid's best
fixed loss weights and with YOTO, rows of one optimizer each:

* Adam (the harness's cosine decay to 0) at a 5-point grid of initial rates
  3e-4 … 3e-2, the run with the best validation metric per seed (5 runs of compute);
* Adam at the grid's best rate, chosen in hindsight on the seed-mean test metric
  (the oracle, 1 run), and at 10× below and above it;
* ``optax.contrib``'s prodigy, dadapt_adamw, mechanize (around Adam at rate 1), dog and
  schedule_free_adamw at their defaults (schedule-free evaluated at its averaged
  iterate);
* ``yoto_jax.learned_learning_rate(optax.scale_by_adam(), α₀)`` from α₀ 10× below and
  10× above the oracle rate (no schedule: α is all it has), as each of
  ``LEARNED_KINDS`` (the default, the ramp, ``horizon=HORIZON``, both).

Batches, initialisations and evaluation are the harness's (``benchmarks.harness``):
within a seed every row sees the same initial model and batches. Each optimizer is
one program vmapped over its rates and seeds. The test metric is measured every
``log_every`` steps (for the plots against compute), α as well.

Run: ``python -m benchmarks.learning_rate --tasks [--scale quick] [--seeds 3] [--out DIR]``
(``--shrink-ratio R`` overrides ``yoto_jax.learning_rate.SHRINK_RATIO``; the files then
end in ``_shrinkR``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import yoto_jax
from benchmarks import record
from benchmarks import tasks as task_suite
from benchmarks.harness import evaluate, seed_key
from benchmarks.tasks.base import Task
from benchmarks.training import split_key
from yoto_jax import learning_rate
from yoto_jax.learning_rate import SHRINK_RATIO as DEFAULT_SHRINK_RATIO

ADAM_RATES = tuple(float(f"{3e-3 * 10.0 ** (k / 2):.2g}") for k in range(-4, 5))
"""Adam's sweep, 3e-3 (the tasks' rate) × 10^(k/2), k = -4 … 4. The 5-point grid is
the middle five (3e-4 … 3e-2); the outer ones make 10× either side of the grid's best
a run of the same program."""

GRID = slice(2, 7)

GRID_BEST_WEIGHTS = {
    "depth": (1.0, 0.1, 0.01),
    "segmentation": (1.0, 1.0, 0.1),
    "multidigits": (1.0, 0.01, 0.1),
}
"""The 3×3 grid's best loss weights (seed-mean test metric) in the full-scale benchmark
of docs/benchmark-2026-12-04/results.md, primary first."""

CONTRIB: dict[str, Callable[[], optax.GradientTransformation]] = {
    "prodigy": lambda: optax.contrib.prodigy(),
    "dadapt_adamw": lambda: optax.contrib.dadapt_adamw(),
    "mechanize(adam)": lambda: optax.contrib.mechanize(optax.adam(1.0)),
    "dog": lambda: optax.contrib.dog(),
    "schedule_free_adamw": lambda: optax.contrib.schedule_free_adamw(),
}
"""optax.contrib's learning-rate-free optimizers at their defaults (Mechanic around Adam
at rate 1, as its docstring asks)."""


class Row(NamedTuple):
    """A member of the task's one program: ``optimizer`` indexes ``LEARNED_KINDS`` (Adam
    or the learned rate first) and then ``CONTRIB``; ``rate`` is Adam's initial rate or the learned
    α₀; ``meta`` is β (0 for a fixed rate); ``decay`` turns on the cosine decay to 0 (the
    harness's Adam)."""

    optimizer: int
    rate: float
    meta: float
    decay: bool


LEARNED_KINDS = {
    "learned from": {},
    "ramped from": {"ramp_from": learning_rate.RAMP_FROM},
    "horizon from": {"horizon": learning_rate.HORIZON},
    "horizon, ramped from": {
        "horizon": learning_rate.HORIZON,
        "ramp_from": learning_rate.RAMP_FROM,
    },
}
"""The learned rate's settings the benchmark sweeps (keyword arguments of
``learned_learning_rate``), by the prefix of their members' names; the first is also
Adam's (β = 0)."""


def members() -> dict[str, Row]:
    """Adam and each kind of learned rate (``LEARNED_KINDS``) at every rate of
    ``ADAM_RATES``, and each contrib optimizer: the runs of one seed."""
    beta = yoto_jax.DEFAULT_META_LEARNING_RATE
    adam = {f"Adam {r:g}": Row(0, r, 0.0, True) for r in ADAM_RATES}
    learned = {
        f"{kind} {r:g}": Row(i, r, beta, False)
        for i, kind in enumerate(LEARNED_KINDS)
        for r in ADAM_RATES
    }
    contrib = {name: Row(i + len(LEARNED_KINDS), 1.0, 0.0, False) for i, name in enumerate(CONTRIB)}
    return adam | learned | contrib


def one_of(txs: list[optax.GradientTransformation], index: jax.Array):
    """The transformation ``txs[index]``, ``index`` traced: the state holds every one's
    state and a step updates only the chosen one's (under ``vmap`` every member
    computes all the updates and keeps its own: one program for all optimizers)."""
    txs = [optax.with_extra_args_support(tx) for tx in txs]

    def init_fn(params):
        return tuple(tx.init(params) for tx in txs)

    def update_fn(updates, state, params=None, **extra_args):
        def branch(i: int):
            def chosen(updates, state, params):
                new_updates, inner = txs[i].update(updates, state[i], params, **extra_args)
                return new_updates, (*state[:i], inner, *state[i + 1 :])

            return chosen

        branches = [branch(i) for i in range(len(txs))]
        return jax.lax.switch(index, branches, updates, state, params)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def optimizer(row: dict[str, jax.Array], steps: int) -> optax.GradientTransformation:
    """The row's optimizer from its traced fields (see `Row`)."""
    shape = optax.cosine_decay_schedule(1.0, steps)
    adam_or_learned, *others = (
        yoto_jax.learned_learning_rate(
            optax.scale_by_adam(), row["rate"], meta_learning_rate=row["meta"], **settings
        )
        for settings in LEARNED_KINDS.values()
    )
    adam_or_learned = optax.chain(
        adam_or_learned,
        optax.scale_by_schedule(lambda count: jnp.where(row["decay"], shape(count), 1.0)),
    )
    contrib = [make() for make in CONTRIB.values()]
    return one_of([adam_or_learned, *others, *contrib], row["optimizer"])


def weightings(task: Task) -> dict[str, Callable[[], yoto_jax.Weighting]]:
    weights = jnp.asarray(GRID_BEST_WEIGHTS[task.name], jnp.float32)
    return {"grid-best weights": lambda: yoto_jax.fixed_weights(weights), "YOTO": yoto_jax.yoto}


def states_of(tree: Any, kind: type) -> list[Any]:
    """The states of type ``kind`` inside an optimizer state."""
    leaves = jax.tree.leaves(tree, is_leaf=lambda s: isinstance(s, kind))
    return [s for s in leaves if isinstance(s, kind)]


def evaluated_model(state: yoto_jax.TrainerState, row: dict[str, jax.Array]) -> Any:
    """The model's params, or for schedule-free Adam its averaged iterate x, where it is
    evaluated (not the gradient point y)."""
    (free,) = states_of(state.opt_state, optax.contrib.ScheduleFreeState)
    is_free = row["optimizer"] == len(LEARNED_KINDS) + list(CONTRIB).index("schedule_free_adamw")
    y, z = state.params["model"], free.z["model"]
    return jax.tree.map(
        lambda y, z: jnp.where(is_free, (y - (1.0 - free.b1) * z) / free.b1, y), y, z
    )


def step_size(opt_state: optax.OptState, row: dict[str, jax.Array], count, steps: int):
    """Adam's or the learned α the next step applies (nan for the contrib optimizers)."""
    learned = states_of(opt_state, yoto_jax.LearnedLearningRateState)
    shape = jnp.where(row["decay"], optax.cosine_decay_schedule(1.0, steps)(count), 1.0)
    alphas = jnp.stack([yoto_jax.learning_rate_of(state) for state in learned])
    alpha = alphas[jnp.minimum(row["optimizer"], len(learned) - 1)]
    alpha = jnp.where(row["optimizer"] == 0, alpha * shape, alpha)
    return jnp.where(row["optimizer"] < len(learned), alpha, jnp.nan)


def training_step(task: Task, train: yoto_jax.Trainer, key: jax.Array, data, validation=False):
    """``(state, index) -> state``: the harness's training step ``index`` of a run from
    ``key`` (its batch drawn with replacement from ``data.train``). With ``validation``
    the step also passes the primary loss on a batch of ``data.val`` (drawn the same
    way, from its own key) as the trainer's ``validation_fn``."""
    loop_key = jax.random.split(split_key(key)[1])[0]
    num_train = jax.tree.leaves(data.train)[0].shape[0]
    num_val = jax.tree.leaves(data.val)[0].shape[0]
    size = task.training.batch_size

    def step(state, index):
        keys = jax.random.split(jax.random.fold_in(loop_key, index), 3)
        chosen = jax.random.randint(keys[0], (size,), 0, num_train)
        batch = jax.tree.map(lambda x: x[chosen], data.train)

        def losses(params):
            return task.losses(params, batch, keys[1])

        state, _ = train.step(state, losses, keys[2], validation_fn=held_out(keys[0]))
        return state

    def held_out(key: jax.Array):
        """The primary loss on a batch of ``data.val`` drawn from ``key``'s own stream
        (the training keys stay as they are), or None without ``validation``."""
        if not validation:
            return None
        val_keys = jax.random.split(jax.random.fold_in(key, 1))
        chosen = jax.random.randint(val_keys[0], (size,), 0, num_val)
        val_batch = jax.tree.map(lambda x: x[chosen], data.val)
        return lambda params: task.losses(params, val_batch, val_keys[1])[0]

    return step


def trained(
    task: Task,
    weighting: yoto_jax.Weighting,
    tx: optax.GradientTransformation,
    key: jax.Array,
    data,
    validation: bool = False,
) -> yoto_jax.TrainerState:
    """The state after the task's steps with ``tx`` and ``weighting``, from ``key`` (the
    harness's initialisation and batches; ``validation`` as in `training_step`)."""
    train = yoto_jax.trainer(weighting, tx)
    one_step = training_step(task, train, key, data, validation)
    state = train.init(task.init(split_key(key)[0]), len(task.loss_names))
    return jax.lax.fori_loop(0, task.training.steps, lambda i, state: one_step(state, i), state)


def program(task: Task, weighting: Callable[[], yoto_jax.Weighting]):
    """``(rows, keys, data) -> results`` as one vmapped program: each member trains with
    its row's optimizer from its key (the harness's initialisation and batches); the
    results hold the test metric and α every ``log_every`` steps, and the final
    validation metric."""
    steps, _, _, log_every, _, fresh = task.training
    if fresh or steps % log_every:
        raise ValueError(f"{task.name}: needs batches with replacement and log_every | steps.")

    def one(row: dict[str, jax.Array], key: jax.Array, data) -> dict[str, jax.Array]:
        train = yoto_jax.trainer(weighting(), optimizer(row, steps))
        init_key = split_key(key)[0]
        one_step = training_step(task, train, key, data)

        def step(state, index):
            return one_step(state, index), None

        def interval(state, start):
            state, _ = jax.lax.scan(step, state, start + jnp.arange(log_every))
            test = evaluate(task, evaluated_model(state, row), data.test)[task.metric]
            return state, (test, step_size(state.opt_state, row, start + log_every, steps))

        state = train.init(task.init(init_key), len(task.loss_names))
        state, (curve, rates) = jax.lax.scan(interval, state, jnp.arange(0, steps, log_every))
        val = evaluate(task, evaluated_model(state, row), data.val)[task.metric]
        return {"curve": curve, "rates": rates, "val": val, "test": curve[-1]}

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))


def run_task(task: Task, weighting, seeds: list[int]) -> dict[str, dict[str, np.ndarray]]:
    """Every member of `members` for every seed, as one program; per member arrays with
    a leading seed axis, and the program's seconds."""
    rows = members()
    fields = {
        name: jnp.repeat(jnp.asarray([getattr(r, name) for r in rows.values()]), len(seeds))
        for name in Row._fields
    }
    keys = jnp.stack([seed_key(seed) for seed in seeds] * len(rows))
    start = time.perf_counter()
    out = jax.block_until_ready(program(task, weighting)(fields, keys, task.data))
    seconds = time.perf_counter() - start
    shape = (len(rows), len(seeds))
    out = {k: np.asarray(v).reshape(*shape, *v.shape[1:]) for k, v in out.items()}
    found = {name: {k: v[i] for k, v in out.items()} for i, name in enumerate(rows)}
    return found | {"seconds": seconds}


def task_rows(task: Task, weighting, seeds: list[int]) -> dict[str, dict[str, Any]]:
    """Issue 21's rows on one task with one weighting: per row the per-seed final test
    and validation metrics, the per-seed curves and α, and the runs it costs; and the
    final test metric of Adam and of the learned rate from every rate of the sweep."""
    runs = run_task(task, weighting, seeds)
    score = 1.0 if task.higher_is_better else -1.0
    grid = [f"Adam {r:g}" for r in ADAM_RATES[GRID]]
    val = np.stack([runs[name]["val"] for name in grid])  # (5, seeds)
    test = np.stack([runs[name]["test"] for name in grid])
    pick = np.argmax(score * val, axis=0)
    oracle = GRID.start + int(np.argmax(score * test.mean(axis=1)))
    best = ADAM_RATES[oracle]
    seeds_ = np.arange(len(seeds))

    def row(name: str, **extra) -> dict[str, Any]:
        return {k: runs[name][k] for k in ("test", "val", "curve", "rates")} | {"runs": 1} | extra

    grid_row = {
        k: np.stack([runs[name][k] for name in grid])[pick, seeds_]
        for k in ("test", "val", "curve", "rates")
    }
    rows = {
        GRID_ROW: grid_row | {"runs": 5, "chosen": [ADAM_RATES[GRID][i] for i in pick]},
        "Adam at the grid's best (oracle)": row(f"Adam {best:g}", rate=best),
        "Adam 10× too small": row(f"Adam {ADAM_RATES[oracle - 2]:g}", rate=ADAM_RATES[oracle - 2]),
        "Adam 10× too large": row(f"Adam {ADAM_RATES[oracle + 2]:g}", rate=ADAM_RATES[oracle + 2]),
        **{name: row(name) for name in CONTRIB},
        **{
            LEARNED[2 * i + j]: row(f"{kind} {ADAM_RATES[at]:g}", rate=ADAM_RATES[at])
            for i, kind in enumerate(LEARNED_KINDS)
            for j, at in enumerate((oracle - 2, oracle + 2))
        },
    }
    sweep = {
        kind: [runs[f"{kind} {r:g}"]["test"] for r in ADAM_RATES]
        for kind in ("Adam", *LEARNED_KINDS)
    }
    return {"rows": rows, "sweep": sweep, "seconds": runs["seconds"]}


LEARNED = (
    "learned, 10× too small",
    "learned, 10× too large",
    "learned + ramp, 10× too small",
    "learned + ramp, 10× too large",
    "learned, horizon 33, 10× too small",
    "learned, horizon 33, 10× too large",
    "learned, horizon 33 + ramp, 10× too small",
    "learned, horizon 33 + ramp, 10× too large",
)
GRID_ROW = "Adam, 5-point grid by validation"


def within_noise(cell: Any, grid: Any, higher_is_better: bool) -> bool:
    """Whether ``cell``'s seed mean is behind ``grid``'s by no more than the grid's
    seed std (ahead counts as within): issue 21's "within seed noise"."""
    behind = np.mean(grid) - np.mean(cell) if higher_is_better else np.mean(cell) - np.mean(grid)
    return bool(behind <= np.std(grid))


def summary(results: dict, higher: dict[str, bool]) -> dict[str, Any]:
    """Ranks (1 = best seed-mean test metric) per task and weighting, average ranks, and
    the done-when checks: each learned row's paired difference to the grid (+ favours
    the learned rate) and whether its shortfall is within the grid's seed std."""
    ranks: dict[str, dict[str, float]] = {}
    noise: dict[str, dict[str, Any]] = {}
    for task, by_weighting in results.items():
        score = 1.0 if higher[task] else -1.0
        for weighting, rows in by_weighting.items():
            means = {name: score * np.mean(row["test"]) for name, row in rows.items()}
            ranks[f"{task} / {weighting}"] = {  # ties share their mean rank
                name: 1.0
                + sum(other > mine for other in means.values())
                + (sum(other == mine for other in means.values()) - 1) / 2
                for name, mine in means.items()
            }
            grid = np.asarray(rows[GRID_ROW]["test"])
            for name in LEARNED:
                diff = score * (np.asarray(rows[name]["test"]) - grid)
                noise.setdefault(f"{task} / {weighting}", {})[name] = {
                    "paired_mean": float(diff.mean()),
                    "paired_se": float(diff.std(ddof=1) / np.sqrt(len(diff)))
                    if len(diff) > 1
                    else float("nan"),
                    "grid_seed_std": float(grid.std()),
                    "within_noise": within_noise(rows[name]["test"], grid, higher[task]),
                }
    names = list(next(iter(ranks.values())))
    average = {
        scope: {
            name: float(
                np.mean(
                    [r[name] for key, r in ranks.items() if scope in ("all", key.split(" / ")[1])]
                )
            )
            for name in names
        }
        for scope in ("all", "grid-best weights", "YOTO")
    }
    return {"ranks": ranks, "average_ranks": average, "learned_vs_grid": noise}


def markdown(results: dict, info: dict, higher: dict[str, bool], verdict: dict) -> str:
    lines = []
    for task, by_weighting in results.items():
        metric = info[task]["metric"]
        better = "higher" if higher[task] else "lower"
        lines += [
            f"**{task}** (test {metric}, {better} is better; {info[task]['steps']} steps):",
            "",
            "| row | grid-best weights | YOTO | runs |",
            "|---|---|---|---|",
        ]
        for name, row in by_weighting["grid-best weights"].items():
            cells = []
            for weighting in by_weighting:
                r = by_weighting[weighting][name]
                rank = f"{verdict['ranks'][f'{task} / {weighting}'][name]:g}"
                rate = f" @ {r['rate']:.2g}" if "rate" in r else ""
                cells.append(f"{np.mean(r['test']):.4f} ± {np.std(r['test']):.4f} (#{rank}){rate}")
            lines.append(f"| {name} | {' | '.join(cells)} | {row['runs']} |")
        lines.append("")
    lines += ["| row | average rank (all) | grid-best weights | YOTO |", "|---|---|---|---|"]
    for name, value in verdict["average_ranks"]["all"].items():
        per = [verdict["average_ranks"][w][name] for w in ("grid-best weights", "YOTO")]
        lines.append(f"| {name} | {value:.2f} | {per[0]:.2f} | {per[1]:.2f} |")
    return "\n".join(lines)


def plot(results: dict, sweeps: dict, info: dict, path: Path, title: str) -> None:
    """Per task (columns) and weighting: the seed-mean test metric against compute, the
    learned α's trajectory, and the final test metric against the initial rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results)
    names = list(next(iter(results.values())))
    figure, axes = plt.subplots(
        3 * len(names), len(tasks), figsize=(5.5 * len(tasks), 4 * 3 * len(names)), squeeze=False
    )
    for column, task in enumerate(tasks):
        log_every, metric = info[task]["log_every"], info[task]["metric"]
        for w, weighting in enumerate(names):
            curves, rates, sweep = (axes[3 * w + i, column] for i in range(3))
            rows = results[task][weighting]
            curves.set_prop_cycle(color=plt.cm.tab20(np.linspace(0, 1, len(rows))))
            for name, row in rows.items():
                curve = np.mean(row["curve"], axis=0)
                compute = row["runs"] * log_every * np.arange(1, len(curve) + 1)
                style = "-" if name in LEARNED else ("--" if name.startswith("Adam") else ":")
                curves.plot(compute, curve, style, marker=".", label=name)
            for name in (*LEARNED, "Adam at the grid's best (oracle)"):
                with np.errstate(divide="ignore"):  # Adam's rate ends at 0
                    alpha = np.exp(np.mean(np.log(rows[name]["rates"]), axis=0))
                steps = log_every * np.arange(1, len(alpha) + 1)
                rates.plot(steps, alpha, "-" if name in LEARNED else "k--", label=name)
            for kind, values in sweeps[task][weighting].items():
                values = np.asarray(values)
                sweep.errorbar(
                    ADAM_RATES, values.mean(axis=1), values.std(axis=1), marker="o", label=kind
                )
            sweep.axvspan(ADAM_RATES[GRID][0], ADAM_RATES[GRID][-1], color="0.9")
            sweep.set_xscale("log")
            rates.set_yscale("log")
            curves.set(xlabel="gradient steps (all runs of the row)", title=f"{task}, {weighting}")
            curves.set_ylabel(f"test {metric} (seed mean)")
            rates.set(xlabel="step", ylabel="α (geometric seed mean)")
            rates.set_title(f"{task}, {weighting}: the step size")
            sweep.set(xlabel="initial rate (shaded: the 5-point grid)", ylabel=f"test {metric}")
            sweep.set_title(f"{task}, {weighting}: Adam and learned α from each rate")
            for axis in (curves, rates, sweep):
                axis.legend(fontsize=6)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.99))
    figure.savefig(path, dpi=80)
    plt.close(figure)


def to_json(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: to_json(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [to_json(v) for v in tree]
    if isinstance(tree, (np.ndarray, np.generic)):
        return tree.tolist()
    return tree


def main(scale: str, seeds: int, out: str | None) -> None:
    start = time.perf_counter()
    source = record.provenance("benchmarks.learning_rate")
    header = (
        f"{source['machine']} ({source['cpu_count']} CPUs, {source['backend']}), "
        f"jax {source['jax']}, {source['date'][:10]}; `{source['command']}`"
    )
    print(header)
    built = {name: task_suite.build(name, scale) for name in task_suite.TASKS}
    seed_list = list(range(seeds))
    bar = tqdm(total=len(built) * 2, desc="programs")
    results: dict[str, dict[str, Any]] = {}
    sweeps: dict[str, dict[str, Any]] = {}
    seconds: dict[str, dict[str, float]] = {}
    info, higher = {}, {}
    for name, task in built.items():
        higher[name] = task.higher_is_better
        info[name] = {
            "metric": task.metric,
            "steps": task.training.steps,
            "log_every": task.training.log_every,
        }
        results[name], sweeps[name], seconds[name] = {}, {}, {}
        for weighting, make in weightings(task).items():
            bar.set_description(f"{name}, {weighting}")
            found = task_rows(task, make, seed_list)
            results[name][weighting] = found["rows"]
            sweeps[name][weighting] = found["sweep"]
            seconds[name][weighting] = found["seconds"]
            bar.update(1)
    bar.close()
    verdict = summary(results, higher)
    table = markdown(results, info, higher, verdict)
    print(table)
    print(json.dumps(verdict["learned_vs_grid"], indent=1))
    wall = time.perf_counter() - start
    print(f"wall {wall:.0f} s")
    if out is not None:
        folder = Path(out)
        stored = {
            "config": {
                **source,
                "scale": scale,
                "shrink_ratio": learning_rate.SHRINK_RATIO,
                "seeds": seeds,
                "optax": optax.__version__,
                "adam_rates": ADAM_RATES,
                "grid": ADAM_RATES[GRID],
                "grid_best_weights": GRID_BEST_WEIGHTS,
                "wall_s": wall,
            },
            "tasks": info,
            "program_seconds": seconds,
            "results": results,
            "sweeps": sweeps,
            "summary": verdict,
        }
        name = scale
        if learning_rate.SHRINK_RATIO != DEFAULT_SHRINK_RATIO:
            name += f"_shrink{learning_rate.SHRINK_RATIO:g}"
        record.write_json(folder / f"results_{name}.json", to_json(stored))
        plot(results, sweeps, info, folder / f"curves_{name}.png", header)


QUICK_ORACLE = {"depth": 0.0095, "segmentation": 0.03, "multidigits": 0.003}
"""The Adam grid's best rate at the quick scale with the grid-best weights
(docs/learning_rate.md): the diagnostics' 1×."""

DAMAGED_STEPS = (0, 1, 3, 10, 30)


def diagnostic_program(task: Task, weights: jax.Array):
    """``(rate, beta, first, key, data) -> (cosines, test)``: Adam with the learned rate
    from ``rate`` (β = ``beta``; 0 keeps it fixed), its first ``first`` steps at 10× the
    rate, with fixed loss ``weights``; each step's raw cosine c_t and the final test
    metric. Vmapped over the leading four."""
    steps = task.training.steps

    def one(rate, beta, first, key, data):
        shape = lambda count: jnp.where(count < first, 10.0, 1.0)
        tx = optax.chain(
            yoto_jax.learned_learning_rate(optax.scale_by_adam(), rate, meta_learning_rate=beta),
            optax.scale_by_schedule(shape),
        )
        train = yoto_jax.trainer(yoto_jax.fixed_weights(weights), tx)
        init_key = split_key(key)[0]
        one_step = training_step(task, train, key, data)

        def step(state, index):
            before = states_of(state.opt_state, yoto_jax.LearnedLearningRateState)[0]
            state = one_step(state, index)
            after = states_of(state.opt_state, yoto_jax.LearnedLearningRateState)[0]
            b1 = learning_rate.COSINE_DECAY  # c_t from the running mean's update
            cosine = (after.cosine_mean - b1 * before.cosine_mean) / (1 - b1)
            return state, cosine

        state = train.init(task.init(init_key), len(task.loss_names))
        state, cosines = jax.lax.scan(step, state, jnp.arange(steps))
        return cosines[1:], evaluate(task, state.params["model"], data.test)[task.metric]

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None)))


VARIANT_DRIFTS = (0.0, 0.3, 0.6)
"""The constant upward push on ν of :func:`variants`, in units of β (0: the module's rule)."""

VARIANT_STARTS = (0.1, 0.001, 10.0)
"""The initial rates of :func:`variants`, × the grid's best rate at the full scale."""

FULL_ORACLE = {"depth": 0.0095, "segmentation": 0.03, "multidigits": 0.00095}
"""The Adam grid's best rate at the full scale with the grid-best weights (the full-mode
table in docs/learning_rate.md)."""


def drifted(tx: optax.GradientTransformation, drift: jax.Array) -> optax.GradientTransformation:
    """``tx`` (a :func:`yoto_jax.learned_learning_rate`) whose ν also rises by β·``drift``
    every step after the first: the rule's rest point moved from a zero mean cosine to a
    negative one (a larger α)."""
    tx = optax.with_extra_args_support(tx)

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, new_state = tx.update(updates, state, params, **extra_args)
        shift = jnp.where(state.count > 0, yoto_jax.DEFAULT_META_LEARNING_RATE * drift, 0.0)
        new_updates = jax.tree.map(lambda u: u * jnp.exp(shift).astype(u.dtype), new_updates)
        return new_updates, new_state._replace(
            log_learning_rate=new_state.log_learning_rate + shift
        )

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def variant_program(task: Task, weights: jax.Array):
    """``(rate, drift, decay, key, data) -> (test, α)``: Adam with the learned rate from
    ``rate``, ν drifting by β·``drift`` a step (:func:`drifted`), times the harness's
    cosine decay to 0 where ``decay``; fixed loss ``weights``; the final test metric and
    α. Vmapped over the leading four."""
    steps = task.training.steps
    shape = optax.cosine_decay_schedule(1.0, steps)

    def one(rate, drift, decay, key, data):
        learned = yoto_jax.learned_learning_rate(optax.scale_by_adam(), rate)
        tx = optax.chain(
            drifted(learned, drift),
            optax.scale_by_schedule(lambda count: jnp.where(decay, shape(count), 1.0)),
        )
        state = trained(task, yoto_jax.fixed_weights(weights), tx, key, data)
        (learned_state,) = states_of(state.opt_state, yoto_jax.LearnedLearningRateState)
        test = evaluate(task, state.params["model"], data.test)[task.metric]
        return test, yoto_jax.learning_rate_of(learned_state)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None)))


def variants(scale: str, seeds: int, out: str | None) -> None:
    """Per task (the grid-best weights): the learned rate from each of ``VARIANT_STARTS``
    × the grid's best, with ν drifting up by each of ``VARIANT_DRIFTS`` × β a step, and
    (drift 0, the first two starts) times the harness's cosine decay to 0; the final test
    metric (mean ± std over seeds) and α, printed and, with ``out``, written to
    ``out/variants_{scale}.json`` with per-seed values."""
    source = record.provenance("benchmarks.learning_rate")
    stored: dict[str, Any] = {"config": {**source, "scale": scale, "seeds": seeds}}
    cases = [(d, f, False) for d in VARIANT_DRIFTS for f in VARIANT_STARTS]
    cases += [(0.0, f, True) for f in VARIANT_STARTS[:2]]
    drifts, starts, decays = (
        jnp.asarray([v for v in values for _ in range(seeds)]) for values in zip(*cases)
    )
    keys = jnp.stack([seed_key(s) for _ in cases for s in range(seeds)])
    for name in task_suite.TASKS:
        task = task_suite.build(name, scale)
        weights = jnp.asarray(GRID_BEST_WEIGHTS[name], jnp.float32)
        rates = starts * FULL_ORACLE[name]
        test, alpha = variant_program(task, weights)(rates, drifts, decays, keys, task.data)
        test = np.asarray(test).reshape(len(cases), seeds)
        alpha = np.asarray(alpha).reshape(len(cases), seeds)
        print(f"{name} ({task.training.steps} steps, test {task.metric}):")
        stored[name] = []
        for (drift, start, decay), t, a in zip(cases, test, alpha):
            label = f"drift {drift:g}β" + (", × cosine decay" if decay else "")
            print(
                f"  {label:26} from {start:g}× the best rate: {t.mean():.4f} ± {t.std():.4f}"
                f"  final α {np.exp(np.log(a).mean()):.2g}"
            )
            stored[name].append(
                {
                    "drift": drift,
                    "start": start,
                    "cosine_decay": decay,
                    "initial_rate": start * FULL_ORACLE[name],
                    "test": t.tolist(),
                    "final_rate": a.tolist(),
                }
            )
    if out is not None:
        print("wrote", record.write_json(Path(out) / f"variants_{scale}.json", stored))


def diagnose(scale: str, seeds: int) -> None:
    """Per task (the grid-best weights): the raw cosine's mean and std over each third
    of the run at fixed Adam rates 0.1×, 1× and 10× ``QUICK_ORACLE``; and the final test
    metric of fixed Adam at 1× whose first k steps ran at 10× (k in ``DAMAGED_STEPS``)."""
    for name in task_suite.TASKS:
        task = task_suite.build(name, scale)
        weights = jnp.asarray(GRID_BEST_WEIGHTS[name], jnp.float32)
        factors = (0.1, 1.0, 10.0)
        cases = [(f, 0) for f in factors] + [(1.0, k) for k in DAMAGED_STEPS if k]
        rates = jnp.asarray([QUICK_ORACLE[name] * f for f, _ in cases for _ in range(seeds)])
        firsts = jnp.asarray([k for _, k in cases for _ in range(seeds)])
        keys = jnp.stack([seed_key(s) for _ in cases for s in range(seeds)])
        zeros = jnp.zeros(len(cases) * seeds)
        cosines, test = diagnostic_program(task, weights)(rates, zeros, firsts, keys, task.data)
        cosines = np.asarray(cosines).reshape(len(cases), seeds, -1)
        test = np.asarray(test).reshape(len(cases), seeds)
        print(f"{name} ({task.training.steps} steps, test {task.metric}):")
        for i, f in enumerate(factors):
            thirds = np.array_split(cosines[i], 3, axis=1)
            stats = "  ".join(f"{t.mean():+.3f} ± {t.std():.3f}" for t in thirds)
            print(
                f"  fixed {f:g}× ({QUICK_ORACLE[name] * f:.2g}): cosine by thirds {stats}; "
                f"first {cosines[i, :, 0].mean():+.3f}; test {test[i].mean():.4f} ± {test[i].std():.4f}"
            )
        damaged = [test[factors.index(1.0)]] + [
            test[len(factors) + j] for j in range(len(cases) - 3)
        ]
        print(
            "  first k steps at 10×, then 1×: "
            + "  ".join(
                f"k={k}: {t.mean():.4f} ± {t.std():.4f}" for k, t in zip(DAMAGED_STEPS, damaged)
            )
        )
