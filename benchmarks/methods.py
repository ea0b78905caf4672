"""Loss-weighting methods and the registry of the methods the benchmark compares.

Two layers.

**A `Weighting`** is the rule one training run follows to turn the per-loss vector
into gradients. The harness calls it inside the jitted, vmapped training step, so
every function below is pure and jittable, and ``config`` (one configuration: loss
weights, ρ, ...) is a pytree of arrays that the harness vmaps over. Subclass
`Weighting` and override what differs:

``init(config, num_losses) -> (params, state)``
    ``params``: the method's learnable parameters (YOTO's µ, uncertainty weighting's
    log-variances, GradNorm's logits; ``{}`` if none). They are trained by the
    optimizer of ``optimizer`` together with the model. ``state``: anything else the
    method carries between steps (loss statistics, FAMO's logits and their own Adam
    state, a step counter); ``()`` if none.

``optimizer(config, tx, learning_rate) -> optax.GradientTransformation``
    The optimizer over the tree ``{"model": model params, "weighting": params}``,
    given the model's optimizer ``tx`` (Adam) and its learning-rate schedule
    ``learning_rate(count)``. Default: ``tx`` for everything.

``step(ctx: StepContext) -> StepOutput``
    One training step's gradients. ``ctx.losses_fn(model_params)`` evaluates the
    (K+1,) loss vector on this step's batch (primary first) and can be called,
    differentiated (``jax.jacrev`` for per-loss gradients) or re-evaluated freely;
    ``ctx.shared_mask`` marks the shared (trunk) parameters of the model, for
    GradNorm-style methods. Return the losses at ``ctx.model_params``, the weights λ
    applied (for the logs), the gradients for the model and for ``params``, and the
    new state. Default: the gradient of ``objective`` with respect to both.

``objective(config, params, state, losses) -> scalar``
    The scalar the default ``step`` differentiates (default: ``weights · losses``).

``weights(config, params, state) -> (K+1,)``
    The current weights λ, primary first, for the logs and results.

``after_update(ctx, new_model_params, output) -> state``
    Called after the optimizer step with the updated model; for methods that look
    at the losses after the step (FAMO: ``ctx.losses_fn(new_model_params)`` on the
    same batch). Default: ``output.state``.

**A `Method`** is what the reports show: a weighting, the configurations it trains
per seed (one for YOTO and equal weights, nine for the searches) and, implicitly,
the selection rule: the configuration with the best validation metric is reported
on the test split. `register` adds one to `METHODS`; ``benchmarks/run.py`` runs
every registered method (or those named by ``--methods``). A new baseline is a
`Weighting` subclass plus one `register` call, and nothing in the harness changes;
``benchmarks/baseline_methods.py`` does this for uncertainty weighting, DWA, RLW,
GradNorm and FAMO, e.g.::

    register(Method("uncertainty", Uncertainty(), single_config(...), "Kendall et al. 2018"))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import yoto_jax
from yoto_jax.grid import loss_weight_grid, random_loss_weights

Config = Any
Params = Any


class StepContext(NamedTuple):
    """What a weighting sees at one training step."""

    config: Config  # this run's configuration
    model_params: Params  # the model's parameters before the step
    params: Params  # the weighting's learnable parameters before the step
    state: Any  # the weighting's state before the step
    losses_fn: Callable[[Params], jax.Array]  # model params -> (K+1,) losses on this batch
    shared_mask: Any  # bool tree over model_params: True for the shared trunk
    step: jax.Array  # the step index, int32
    key: jax.Array  # a PRNG key for this step (e.g. RLW's random weights)


class StepOutput(NamedTuple):
    """A weighting's result for one step."""

    losses: jax.Array  # (K+1,) losses at ctx.model_params
    weights: jax.Array  # (K+1,) the weights applied, for the logs
    model_grads: Params  # gradients for the model's parameters
    grads: Params  # gradients for the weighting's learnable parameters
    state: Any  # the new state


@dataclass(frozen=True)
class Weighting:
    """Fixed loss weights: the model minimises ``config["weights"] · losses``.

    ``config = {"weights": (K+1,)}``, primary first. The base class of every weighting;
    see the module docstring for the interface. Weightings are frozen dataclasses:
    equal weightings share compiled programs.
    """

    def init(self, config: Config, num_losses: int) -> tuple[Params, Any]:
        return {}, ()

    def optimizer(
        self, config: Config, tx: optax.GradientTransformation, learning_rate: optax.Schedule
    ) -> optax.GradientTransformation:
        return tx

    def objective(self, config: Config, params: Params, state: Any, losses: jax.Array):
        return jnp.dot(self.weights(config, params, state), losses)

    def weights(self, config: Config, params: Params, state: Any) -> jax.Array:
        return config["weights"]

    def step(self, ctx: StepContext) -> StepOutput:
        def total(model_params: Params, params: Params) -> tuple[jax.Array, jax.Array]:
            losses = ctx.losses_fn(model_params)
            return self.objective(ctx.config, params, ctx.state, losses), losses

        grad_fn = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)
        (_, losses), (model_grads, grads) = grad_fn(ctx.model_params, ctx.params)
        weights = self.weights(ctx.config, ctx.params, ctx.state)
        return StepOutput(losses, weights, model_grads, grads, ctx.state)

    def after_update(self, ctx: StepContext, new_model_params: Params, output: StepOutput):
        return output.state


@dataclass(frozen=True)
class Yoto(Weighting):
    """YOTO through the library: ``yoto_composite`` and ``yoto_optimizer``.

    ``config = {"mu": (K,) initial logits, "rho": ()}``; by default YOTO is what the
    library's defaults give (µ on its own Adam at ``DEFAULT_MU_LEARNING_RATE``, the
    weights floored at 1/(K+1) for the primary as ``LossWeights`` does). ``paper=True``:
    µ on the model's optimizer (``mu_learning_rate=None``, the paper's setting). With
    ``mu_learning_rate=True`` the config also holds ``"mu_lr_factor": ()``, and µ gets
    its own Adam whose learning rate is that factor times the model's schedule; Adam
    acts elementwise, so factor 1 is the same optimizer as the paper's setting.
    ``primary_floor``: as in ``yoto_jax.loss_weights`` (0: the paper's weights).
    """

    mu_learning_rate: bool = False
    paper: bool = False
    primary_floor: float | str = yoto_jax.composite.UNIFORM

    def init(self, config: Config, num_losses: int) -> tuple[Params, Any]:
        return {yoto_jax.MU_KEY: config["mu"]}, ()

    def optimizer(
        self, config: Config, tx: optax.GradientTransformation, learning_rate: optax.Schedule
    ) -> optax.GradientTransformation:
        if self.mu_learning_rate:
            mu_tx = optax.adam(lambda count: config["mu_lr_factor"] * learning_rate(count))
            return yoto_jax.yoto_optimizer(tx, config["rho"], mu_tx=mu_tx)
        if self.paper:
            return yoto_jax.yoto_optimizer(tx, config["rho"], mu_learning_rate=None)
        return yoto_jax.yoto_optimizer(tx, config["rho"])

    def _floor(self, mu: jax.Array) -> float:
        return yoto_jax.composite.resolve_floor(self.primary_floor, mu.shape[0])

    def objective(self, config: Config, params: Params, state: Any, losses: jax.Array):
        mu = params[yoto_jax.MU_KEY]
        return yoto_jax.yoto_composite(mu, losses, primary_floor=self._floor(mu))

    def weights(self, config: Config, params: Params, state: Any) -> jax.Array:
        mu = params[yoto_jax.MU_KEY]
        return yoto_jax.loss_weights(mu, primary_floor=self._floor(mu))


def yoto_config(
    num_aux: int,
    eps: float = yoto_jax.DEFAULT_EPS,
    rho: float = yoto_jax.DEFAULT_RHO,
    mu_lr_factor: float | None = None,
) -> Config:
    """One YOTO configuration: µ = log ε (``init_mu``), ρ, and optionally µ's lr factor."""
    config = {"mu": yoto_jax.init_mu(num_aux, eps), "rho": jnp.float32(rho)}
    if mu_lr_factor is not None:
        config["mu_lr_factor"] = jnp.float32(mu_lr_factor)
    return config


ConfigsFn = Callable[[int, int], list[Config]]
"""(K auxiliary losses, seed) -> the configurations a method trains for that seed."""


@dataclass(frozen=True)
class Method:
    """A benchmarked method: a weighting and the configurations it trains per seed.

    The reported result of a seed is the configuration with the best validation
    metric; its test metric and its final weights.
    """

    name: str
    weighting: Weighting
    configs: ConfigsFn
    summary: str


METHODS: dict[str, Method] = {}
"""The registered methods, in the order they are reported."""


def register(method: Method) -> Method:
    """Adds `method` to `METHODS` (its name must be new) and returns it."""
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered.")
    METHODS[method.name] = method
    return method


def single_config(make: Callable[[int], Config]) -> ConfigsFn:
    """One configuration per seed, ``make(K)``, the same for every seed."""
    return lambda num_aux, seed: [make(num_aux)]


GRID_VALUES = (0.01, 0.1, 1.0)
"""The auxiliary weights of the 3x3 grid, relative to the primary's 1 (as in the paper)."""


def _weights_configs(weights: jax.Array) -> list[Config]:
    return [{"weights": row} for row in weights]


def _grid_configs(num_aux: int, seed: int) -> list[Config]:
    return _weights_configs(loss_weight_grid(GRID_VALUES, num_aux))


def _random_configs(num_aux: int, seed: int) -> list[Config]:
    key = jax.random.fold_in(jax.random.key(seed), 1)  # not the training key of the seed
    size = len(GRID_VALUES) ** num_aux
    return _weights_configs(
        random_loss_weights(key, size, num_aux, min(GRID_VALUES), max(GRID_VALUES))
    )


register(
    Method(
        "yoto",
        Yoto(),
        single_config(yoto_config),
        "one YOTO run, library defaults (ε = DEFAULT_EPS, ρ = DEFAULT_RHO, "
        "µ on its own Adam at DEFAULT_MU_LEARNING_RATE, primary floor 1/(K+1))",
    )
)
register(
    Method(
        "yoto_paper",
        Yoto(paper=True, primary_floor=0.0),
        single_config(yoto_config),
        "one YOTO run as in the paper: µ on the model's Adam, no floor (the earlier default)",
    )
)
register(
    Method(
        "grid_best",
        Weighting(),
        _grid_configs,
        "3x3 grid of auxiliary weights {0.01, 0.1, 1} x primary; best by validation",
    )
)
register(
    Method(
        "random_best",
        Weighting(),
        _random_configs,
        "9 log-uniform auxiliary weights in [0.01, 1] x primary; best by validation",
    )
)
register(
    Method(
        "equal",
        Weighting(),
        single_config(lambda num_aux: {"weights": jnp.ones(num_aux + 1)}),
        "all weights 1",
    )
)


def stack_trees(trees: Sequence[Any]) -> Any:
    """Pytrees of one structure (configurations, parameters) stacked along a new leading axis."""
    return jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(x) for x in leaves]), *trees)


def relative_weights(weights: np.ndarray) -> np.ndarray:
    """Weights divided by the primary's, λ_i / λ_0 (the grid's parametrisation)."""
    return weights / weights[..., :1]
