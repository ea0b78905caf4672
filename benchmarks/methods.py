"""The methods the benchmark compares: an explicit table of library weightings.

Every method is a library :class:`yoto_jax.Weighting` (YOTO, fixed weights, the
baselines of ``yoto_jax.baselines``) plus what only the benchmark decides:

* ``weighting(config, setting) -> yoto_jax.Weighting`` builds the weighting of one run
  inside the jitted, vmapped training program; ``config`` (loss weights, ρ, ...) is a
  pytree of arrays the harness vmaps over, so a method's configurations share one
  compiled program; ``setting`` gives what the task fixes (its shared trunk, the
  model's learning-rate schedule);
* ``configs(K, seed)``: the configurations trained per seed (one for YOTO and the
  baselines, nine for the grid searches);
* the selection rule: the configuration with the best validation metric is reported
  on the test split.

``METHODS`` lists the methods ``benchmarks/run.py`` runs, in the order they are
reported; ``GRADIENT_METHODS`` (PCGrad, MGDA, CAGrad) are timed by
``benchmarks/method_overhead.py`` but not benchmarked, to keep the quick mode short.
``REPRESENTATION_METHODS`` are the gradient-combination methods in representation mode
(``<name>_rep``: the per-loss gradients of the trunk's output, one backward pass through
the trunk; :func:`trunk_split`), paired with their parameter-mode rows and run only
when named. A new method is one row here.

Choices for this harness (see the library's docstrings for the methods' own notes):

* the harness draws batches with replacement, so there are no epochs: DWA's "epoch"
  is a window of ``DWA_WINDOW`` steps;
* RLW and PCGrad draw from the step's key, so each seed has its own draws;
* GradNorm's W and the gradient-combination methods' shared parameters are the whole
  shared trunk (the task's ``shared_mask``), as in LibMTL;
* Auto-λ's held-out objective is the primary loss on a random batch of the validation
  split (the split the grid searches select on), drawn from the step's key, and its
  lookahead step is the model's learning rate;
* the baselines' hyperparameters are the references' (the library's defaults); they sit
  in the configuration, as arrays, so a sweep over them is one vmapped program.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import yoto_jax
from benchmarks.training import Config, MakeWeighting, Setting
from yoto_jax import baselines
from yoto_jax.baselines.dwa import DEFAULT_DWA_TEMPERATURE
from yoto_jax.baselines.famo import DEFAULT_FAMO_LEARNING_RATE, DEFAULT_FAMO_WEIGHT_DECAY
from yoto_jax.baselines.gradnorm import DEFAULT_GRADNORM_ALPHA
from yoto_jax.grid import loss_weight_grid, random_loss_weights

Params = Any


ConfigsFn = Callable[[int, int], list[Config]]
"""(K auxiliary losses, seed) -> the configurations a method trains for that seed."""


@dataclass(frozen=True)
class Method:
    """A benchmarked method: a weighting and the configurations it trains per seed.

    The reported result of a seed is the configuration with the best validation
    metric; its test metric and its final weights. Methods with the same
    ``weighting`` function share compiled programs.
    """

    name: str
    weighting: MakeWeighting
    configs: ConfigsFn
    summary: str


def fixed(config: Config, setting: Setting) -> yoto_jax.Weighting:
    """``config = {"weights": (K+1,)}``, primary first."""
    return yoto_jax.fixed_weights(config["weights"])


def yoto(config: Config, setting: Setting) -> yoto_jax.Weighting:
    """YOTO with every knob an array of the configuration, so that every variant (the
    library's default, the paper's setting, the studies' and the regime map's points)
    shares one program: ``eps``, ``rho``, µ's own Adam at ``mu_lr + mu_lr_factor`` x the
    model's schedule, the primary ``floor`` and the ``loss_floor``. ``mu_lr = 0,
    mu_lr_factor = 1`` is µ on the model's Adam (Adam acts elementwise: the same updates
    as the paper's setting)."""

    def mu_learning_rate(count: jax.Array) -> jax.Array:
        return config["mu_lr"] + config["mu_lr_factor"] * setting.learning_rate(count)

    return yoto_jax.yoto(
        config["eps"],
        config["rho"],
        mu_tx=optax.adam(mu_learning_rate),
        primary_floor=config["floor"],
        loss_floor=config["loss_floor"],
    )


def yoto_config(
    num_aux: int,
    eps: float = yoto_jax.DEFAULT_EPS,
    rho: float = yoto_jax.DEFAULT_RHO,
    *,
    mu_lr: float = yoto_jax.DEFAULT_MU_LEARNING_RATE,
    mu_lr_factor: float = 0.0,
    floor: float | None = yoto_jax.DEFAULT_PRIMARY_FLOOR,
    loss_floor: float = yoto_jax.DEFAULT_LOSS_FLOOR,
) -> Config:
    """A configuration of `yoto`; the defaults are the library's (``yoto_jax.yoto()``:
    ε = 1, µ's own Adam at 0.05, no primary floor, every weight >= 0.8/T);
    ``floor=None`` is the primary floor 1/(K+1)."""
    floor = 1.0 / (num_aux + 1) if floor is None else floor
    values = {
        "eps": eps,
        "rho": rho,
        "mu_lr": mu_lr,
        "mu_lr_factor": mu_lr_factor,
        "loss_floor": loss_floor,
    }
    return {**{k: jnp.float32(v) for k, v in values.items()}, "floor": jnp.float32(floor)}


PREVIOUS_EPS = 0.1
"""ε of the paper's example and of the library's previous default."""

PREVIOUS_MU_LEARNING_RATE = 0.05
"""µ's own Adam rate of the library's previous default (and the regime map's reference)."""


def yoto_paper_config(num_aux: int) -> Config:
    """The paper's setting: µ on the model's Adam from ε = 0.1, no floor."""
    return yoto_config(num_aux, PREVIOUS_EPS, mu_lr=0.0, mu_lr_factor=1.0, loss_floor=0.0)


def yoto_previous_config(num_aux: int) -> Config:
    """The previous default: µ's own Adam at 0.05 from ε = 0.1, the primary floor 1/(K+1)."""
    return yoto_config(
        num_aux, PREVIOUS_EPS, mu_lr=PREVIOUS_MU_LEARNING_RATE, floor=None, loss_floor=0.0
    )


def single_config(make: Callable[[int], Config]) -> ConfigsFn:
    """One configuration per seed, ``make(K)``, the same for every seed."""
    return lambda num_aux, seed: [make(num_aux)]


def no_config(num_aux: int) -> Config:
    """The configuration of a method with none (a placeholder leaf to vmap over)."""
    return {"unused": jnp.zeros(())}


GRID_VALUES = (0.01, 0.1, 1.0)
"""The auxiliary weights of the 3x3 grid, relative to the primary's 1 (as in the paper)."""

DWA_WINDOW = 10
"""Steps per DWA "epoch" (the harness has no epochs; see the module docstring)."""


def _weights_configs(weights: jax.Array) -> list[Config]:
    return [{"weights": row} for row in weights]


def grid_configs(num_aux: int, seed: int) -> list[Config]:
    """The 3x3 grid's rows, the same for every seed."""
    return _weights_configs(loss_weight_grid(GRID_VALUES, num_aux))


def _random_configs(num_aux: int, seed: int) -> list[Config]:
    key = jax.random.fold_in(jax.random.key(seed), 1)  # not the training key of the seed
    size = len(GRID_VALUES) ** num_aux
    return _weights_configs(
        random_loss_weights(key, size, num_aux, min(GRID_VALUES), max(GRID_VALUES))
    )


def on_the_trunk(factory: Callable[[Any], yoto_jax.Weighting], summary: str) -> Method:
    """A method without configuration that acts on the trunk's per-loss gradients:
    ``factory(setting.shared_mask)``, named as the factory."""
    return Method(
        factory.__name__,
        lambda config, setting: factory(setting.shared_mask),
        single_config(no_config),
        summary,
    )


def _table(*methods: Method) -> dict[str, Method]:
    return {method.name: method for method in methods}


METHODS: dict[str, Method] = _table(
    Method(
        "yoto",
        yoto,
        single_config(yoto_config),
        "one YOTO run, library defaults (ε = 1, ρ = DEFAULT_RHO, µ's own Adam at 0.05, "
        "every weight >= 0.8/T; chosen on the task suite)",
    ),
    Method(
        "yoto_paper",
        yoto,
        single_config(yoto_paper_config),
        "one YOTO run as in the paper's example: ε = 0.1, µ on the model's Adam, no floor",
    ),
    Method(
        "yoto_previous",
        yoto,
        single_config(yoto_previous_config),
        "the previous default (2026-11-27): ε = 0.1, µ on its own Adam at 0.05, primary "
        "floor 1/(K+1)",
    ),
    Method(
        "grid_best",
        fixed,
        grid_configs,
        "3x3 grid of auxiliary weights {0.01, 0.1, 1} x primary; best by validation",
    ),
    Method(
        "random_best",
        fixed,
        _random_configs,
        "9 log-uniform auxiliary weights in [0.01, 1] x primary; best by validation",
    ),
    Method(
        "equal",
        fixed,
        single_config(lambda num_aux: {"weights": jnp.ones(num_aux + 1)}),
        "all weights 1",
    ),
    Method(
        "uncertainty",
        lambda config, setting: baselines.uncertainty(config["log_var_init"]),
        single_config(lambda num_aux: {"log_var_init": jnp.float32(0.0)}),
        "Kendall et al. 2018: Σ l_i/(2e^s_i) + s_i/2, s = 0 at init, s on the model's Adam",
    ),
    Method(
        "dwa",
        lambda config, setting: baselines.dwa(DWA_WINDOW, config["temperature"]),
        single_config(lambda num_aux: {"temperature": jnp.float32(DEFAULT_DWA_TEMPERATURE)}),
        f"Liu et al. 2019: T·softmax(L(t-1)/L(t-2)/2), 'epoch' = {DWA_WINDOW} steps",
    ),
    Method(
        "rlw",
        lambda config, setting: baselines.rlw(),
        single_config(no_config),
        "Lin et al. 2022: λ = softmax(z), z ~ N(0, I) every step",
    ),
    Method(
        "gradnorm",
        lambda config, setting: baselines.gradnorm(setting.shared_mask, config["alpha"]),
        single_config(lambda num_aux: {"alpha": jnp.float32(DEFAULT_GRADNORM_ALPHA)}),
        "Chen et al. 2018: α = 1.5, W = the shared trunk, w = T·softmax(s) on the model's Adam",
    ),
    Method(
        "famo",
        lambda config, setting: baselines.famo(
            config["meta_learning_rate"], config["weight_decay"]
        ),
        single_config(
            lambda num_aux: {
                "meta_learning_rate": jnp.float32(DEFAULT_FAMO_LEARNING_RATE),
                "weight_decay": jnp.float32(DEFAULT_FAMO_WEIGHT_DECAY),
            }
        ),
        "Liu et al. 2023: ξ on its own Adam (lr 0.025, decay 1e-3), losses re-evaluated",
    ),
    Method(
        "auto_lambda",
        lambda config, setting: baselines.auto_lambda(
            setting.primary_val_loss, learning_rate=setting.learning_rate, val_takes_key=True
        ),
        single_config(no_config),
        "Liu et al. 2022: λ (init 0.1) by the one-step-lookahead hypergradient of the "
        "primary validation loss, its own Adam (lr 1e-4)",
    ),
    on_the_trunk(
        baselines.nash_mtl,
        "Navon et al. 2022: the bargaining solution on the trunk's gradients, max_norm 1",
    ),
    on_the_trunk(
        baselines.imtl,
        "Liu et al. 2021: IMTL-G on the trunk with IMTL-L's learnt loss scales (hybrid)",
    ),
    on_the_trunk(
        baselines.aligned_mtl,
        "Senushkin et al. 2023: the trunk's gradients aligned to condition number 1",
    ),
    on_the_trunk(
        baselines.upgrad,
        "Quinton and Rey 2024: each gradient projected onto the dual cone, averaged",
    ),
)
"""The benchmarked methods, in the order they are reported."""

GRADIENT_METHODS: dict[str, Method] = _table(
    on_the_trunk(
        baselines.pcgrad,
        "Yu et al. 2020: conflicting gradients projected, random orders from the step's key",
    ),
    on_the_trunk(
        baselines.mgda,
        "Sener and Koltun 2018: the min-norm point of the gradients' convex hull",
    ),
    on_the_trunk(
        baselines.cagrad,
        "Liu et al. 2021: c = 0.5, rescaled by 1/(1 + c²)",
    ),
)
"""Timed by ``benchmarks/method_overhead.py``; per-loss gradients (T backward passes)."""


TRUNK_MODULES = ("encoder", "trunk")
"""The names of the tasks' shared Linen modules (those of ``models.encoder_mask``)."""


def trunk_split(losses_fn: Callable[[Params], jax.Array]) -> yoto_jax.RepresentationLosses:
    """``losses_fn`` split at the output z of its Linen trunk (the module named in
    :data:`TRUNK_MODULES`, called once per evaluation), by Flax's method interception:
    ``features_fn`` evaluates ``losses_fn`` and returns z (under ``jit`` XLA drops the
    heads); ``heads_fn(params, z)`` evaluates it with the trunk's call answered by z (the
    trunk is not run)."""

    def is_trunk(context: Any) -> bool:
        return context.method_name == "__call__" and context.module.name in TRUNK_MODULES

    def features_fn(params: Params) -> jax.Array:
        captured = []

        def capture(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if is_trunk(context):
                captured.append(out)
            return out

        with nn.intercept_methods(capture):
            losses_fn(params)
        if len(captured) != 1:
            raise ValueError(
                f"the losses call a module named one of {TRUNK_MODULES} {len(captured)} times; "
                "representation mode needs exactly one trunk call per evaluation."
            )
        return captured[0]

    def heads_fn(params: Params, z: jax.Array) -> jax.Array:
        def replace(next_fun, args, kwargs, context):
            return z if is_trunk(context) else next_fun(*args, **kwargs)

        with nn.intercept_methods(replace):
            return losses_fn(params)

    return yoto_jax.representation_losses(features_fn, heads_fn)


def in_representation(method: Method) -> Method:
    """``method`` in representation mode: its weighting's step gets :func:`trunk_split`
    of each step's losses, named ``<name>_rep``."""

    def weighting(config: Config, setting: Setting) -> yoto_jax.Weighting:
        inner = method.weighting(config, setting)

        def step(losses_fn, model_params, params, state, *, key=None):
            return inner.step(trunk_split(losses_fn), model_params, params, state, key=key)

        return inner._replace(step=step)

    summary = f"{method.summary}; on the trunk's output z (representation mode)"
    return Method(f"{method.name}_rep", weighting, method.configs, summary)


REPRESENTATION_METHODS: dict[str, Method] = _table(
    *(
        in_representation(table[name])
        for table, names in (
            (METHODS, ("gradnorm", "nash_mtl", "imtl", "aligned_mtl", "upgrad")),
            (GRADIENT_METHODS, ("pcgrad", "mgda", "cagrad")),
        )
        for name in names
    )
)
"""The gradient-combination methods in representation mode; selected by name, not run
by default."""
