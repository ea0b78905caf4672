"""The regime map: where one YOTO run wins, ties or loses against the grid, and why.

YOTO's result depends on things the paper's setting differs in from a small benchmark:
how much data the model sees (µ follows the *training* losses, which a model that
memorises a small split drives towards 0), the units of the losses (at equilibrium
λ ∝ exp(−l/ρ), so a loss in small units takes the weight), how far µ can travel (its
summed learning rate over training, in nats), ε and ρ. The map varies one factor at a
time around a reference YOTO, on every task, with the same seeds, against the grid's
best, equal weights and the primary loss alone at the same data level:

* **data**: the task's training split (x1), 8x and 64x as many examples (the first ones
  and every validation and test example unchanged), and ``fresh``: steps x batch
  examples walked through once, so no batch repeats an example;
* **µ budget**: µ's own Adam at a constant learning rate (the budget in nats is that
  rate times the steps), against the paper's setting, µ on the model's Adam;
* **ε**, **ρ**;
* **units**: the last auxiliary loss multiplied by c ∈ {0.01, 1, 100}. The grid's
  weights rescaled by 1/c see exactly the same objective, so grid_best and primary-only
  are those of c = 1; equal weights are weights 1 on the rescaled losses;
* **primary floor**: the weights mixed with the primary's one-hot vector,
  λ' = m e_0 + (1 − m) λ with m = 1/(K+1), to test whether bounding the primary's
  weight from below helps where YOTO collapses.

Every variant of one data level is one vmapped program (the configurations are arrays:
µ's initial logits, ρ, µ's learning rate, the loss scale, m), and so is every fixed
weighting of that level.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import yoto_jax
from benchmarks import harness, tasks
from benchmarks.methods import (
    GRID_VALUES,
    PREVIOUS_EPS,
    PREVIOUS_MU_LEARNING_RATE,
    Config,
    Method,
    Setting,
    grid_configs,
    yoto,
    yoto_config,
)
from benchmarks.methods import fixed as fixed_weighting

REFERENCE_MU_LEARNING_RATE = PREVIOUS_MU_LEARNING_RATE
"""The reference YOTO's constant µ learning rate (20 nats over 400 steps). The map was
measured around it, at ε = 0.1; its ``primary floor`` variant was the library's default
until the task suite chose another."""

MU_LEARNING_RATES = (0.005, 0.0125, 0.05, 0.2)
EPS_VALUES = (0.01, 1.0)  # besides the reference's PREVIOUS_EPS
RHO_VALUES = (0.01, 1.0)  # besides the reference's DEFAULT_RHO
UNIT_SCALES = (0.01, 100.0)  # besides c = 1
DATA_LEVELS = (("x1", None), ("x8", 8), ("x64", 64), ("fresh", tasks.FRESH))


def regime_yoto(config: Config, setting: Setting) -> yoto_jax.Weighting:
    """``benchmarks.methods.yoto`` seeing the losses times ``config["loss_scale"]`` (K+1,)."""
    return scaled_losses(yoto(config, setting), config["loss_scale"])


def scaled_losses(weighting: yoto_jax.Weighting, scale: jax.Array) -> yoto_jax.Weighting:
    """``weighting`` seeing the losses multiplied by ``scale`` (K+1,); the losses it
    reports stay the task's."""

    def step(losses_fn, model_params, params, state, *, key=None) -> yoto_jax.WeightingStep:
        result = weighting.step(
            lambda p: scale * losses_fn(p), model_params, params, state, key=key
        )
        return result._replace(losses=result.losses / scale)

    return weighting._replace(step=step)


class Variant(NamedTuple):
    """One YOTO configuration of the map, relative to the reference."""

    name: str
    factor: str  # the factor it varies: "reference", "budget", "eps", "rho", "units", "floor"
    eps: float = PREVIOUS_EPS
    rho: float = yoto_jax.DEFAULT_RHO
    mu_lr: float = REFERENCE_MU_LEARNING_RATE
    paper: bool = False  # µ on the model's Adam instead of its own
    scale: float = 1.0  # the last auxiliary loss is multiplied by this
    floor: bool = False  # m = 1/(K+1)

    def config(self, num_aux: int) -> Config:
        loss_scale = np.ones(num_aux + 1, np.float32)
        loss_scale[-1] = self.scale
        config = yoto_config(
            num_aux,
            self.eps,
            self.rho,
            mu_lr=0.0 if self.paper else self.mu_lr,
            mu_lr_factor=1.0 if self.paper else 0.0,
            floor=None if self.floor else 0.0,
            loss_floor=0.0,
        )
        return {**config, "loss_scale": jnp.asarray(loss_scale)}


REFERENCE = Variant("reference", "reference")
PAPER = Variant("paper: µ on the model's Adam", "budget", paper=True)
FLOOR = Variant("primary floor", "floor", floor=True)


def variants(data_level: str) -> list[Variant]:
    """The YOTO variants run at a data level: every factor at x1, three elsewhere."""
    if data_level != "x1":
        return [REFERENCE, PAPER, FLOOR]
    budget = [
        Variant(f"µ lr {lr:g}", "budget", mu_lr=lr)
        for lr in MU_LEARNING_RATES
        if lr != REFERENCE_MU_LEARNING_RATE
    ]
    eps = [Variant(f"ε {eps:g}", "eps", eps=eps) for eps in EPS_VALUES]
    rho = [Variant(f"ρ {rho:g}", "rho", rho=rho) for rho in RHO_VALUES]
    units = [
        variant._replace(name=f"c {c:g}, {variant.name}", factor="units", scale=c)
        for c in UNIT_SCALES
        for variant in (REFERENCE, PAPER, FLOOR)
    ]
    return [REFERENCE, PAPER, FLOOR, *budget, *eps, *rho, *units]


def fixed_weightings(data_level: str, num_aux: int) -> list[tuple[str, Config]]:
    """The grid's cells, equal weights and the primary alone (and, at x1, equal weights
    on the rescaled losses: weights (1, ..., 1, c) on the original ones)."""
    grid = [(f"grid {_label(c['weights'])}", c) for c in grid_configs(num_aux, 0)]
    ones = np.ones(num_aux + 1, np.float32)
    primary = np.zeros(num_aux + 1, np.float32)
    primary[0] = 1.0
    fixed = [*grid, ("equal", {"weights": jnp.asarray(ones)})]
    fixed.append(("primary only", {"weights": jnp.asarray(primary)}))
    if data_level == "x1":
        for c in UNIT_SCALES:
            scaled = ones.copy()
            scaled[-1] = c
            fixed.append((f"equal, c {c:g}", {"weights": jnp.asarray(scaled)}))
    return fixed


def _label(weights: jax.Array) -> str:
    return "(" + ", ".join(f"{w:g}" for w in np.asarray(weights)[1:]) + ")"


def _train_size(task: tasks.Task, multiplier: int | str | None) -> int | str | None:
    if multiplier in (None, tasks.FRESH):
        return multiplier
    return multiplier * jax.tree.leaves(task.data.train)[0].shape[0]


def _per_seed(values: np.ndarray) -> list:
    return np.asarray(values).tolist()


def run_level(
    name: str, scale: str, level: str, multiplier: int | str | None, seeds: list[int], base=None
) -> tuple[dict[str, Any], tasks.Task]:
    """Every fixed weighting and YOTO variant of one data level, on every seed."""
    size = None if base is None else _train_size(base, multiplier)
    task = tasks.build(name, scale, train_size=size)
    programs = harness.Programs(task)
    fixed = fixed_weightings(level, task.num_aux)
    yoto_variants = variants(level)
    fixed_run = harness.run_method(
        programs,
        Method("regime_fixed", fixed_weighting, lambda k, seed: [c for _, c in fixed], ""),
        seeds,
    )
    yoto_run = harness.run_method(
        programs,
        Method("regime_yoto", regime_yoto, lambda k, s: [v.config(k) for v in yoto_variants], ""),
        seeds,
    )
    metric = task.metric
    fixed_test = fixed_run.results["test"][metric]  # (seeds, configs)
    fixed_val = fixed_run.results["val"][metric]
    grid_cells = [i for i, (label, _) in enumerate(fixed) if label.startswith("grid")]
    selected = harness.best_index(fixed_val[:, grid_cells], task.higher_is_better)
    entry = {
        "train_size": int(jax.tree.leaves(task.data.train)[0].shape[0]),
        "fresh": bool(task.training.fresh),
        "fixed": {
            label: {"test": _per_seed(fixed_test[:, i]), "val": _per_seed(fixed_val[:, i])}
            for i, (label, _) in enumerate(fixed)
        },
        "grid_best": {
            "test": _per_seed(harness.pick(fixed_test[:, grid_cells], selected)),
            "selected": [fixed[grid_cells[i]][0] for i in selected],
        },
        "yoto": {},
        "wall_s": fixed_run.timed.run_s + yoto_run.timed.run_s,
    }
    weights = yoto_run.results["weights"]  # (seeds, variants, K+1)
    last_train = yoto_run.results["curves"]["train"][:, :, -1]  # (seeds, variants, K+1)
    for i, variant in enumerate(yoto_variants):
        loss_scale = np.asarray(variant.config(task.num_aux)["loss_scale"])
        applied = weights[:, i]
        entry["yoto"][variant.name] = {
            "factor": variant.factor,
            "variant": variant._asdict(),
            "test": _per_seed(yoto_run.results["test"][metric][:, i]),
            "val": _per_seed(yoto_run.results["val"][metric][:, i]),
            "weights": _per_seed(applied),
            # λ_i c_i / λ_0: the weights on the original losses, comparable with the grid's
            "relative_weights": _per_seed(applied * loss_scale / applied[:, :1]),
            "collapsed": _per_seed(harness.collapse_flags(applied, last_train[:, i] * loss_scale)),
            "final_train_losses": _per_seed(last_train[:, i]),
        }
    return entry, task


def run_task(name: str, scale: str, seeds: list[int], bar) -> dict[str, Any]:
    """The regime map of one task: every data level."""
    entry = {"levels": {}, "grid_values": list(GRID_VALUES)}
    base = None
    for level, multiplier in DATA_LEVELS:
        bar.set_description(f"{name}: regimes {level}")
        entry["levels"][level], task = run_level(name, scale, level, multiplier, seeds, base)
        base = base or task
        bar.update()
    entry["metric"] = base.metric
    entry["higher_is_better"] = base.higher_is_better
    entry["steps"] = base.training.steps
    entry["learning_rate"] = base.training.learning_rate
    return entry
