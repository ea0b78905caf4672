"""The established loss-weighting baselines (``yoto_jax.baselines``) as benchmark methods.

Importing this module registers them in ``benchmarks.methods.METHODS``, after the
methods defined there: uncertainty weighting, DWA, RLW, GradNorm and FAMO. Equal
weights is ``methods``' own ``equal`` method. Every baseline trains one
configuration per seed, with the task's model, batches, steps and Adam learning
rate, like YOTO; its hyperparameters are the references' and sit in the config, so
they are vmapped arrays like YOTO's ρ.

Choices for this harness (see the library's docstrings for the methods' own notes):

* the harness draws batches with replacement, so there are no epochs: DWA's "epoch"
  is a window of ``DWA_WINDOW`` steps;
* RLW draws its weights from the step's key (``StepContext.key``), so each seed has
  its own draws; its reported final weights are their expectation, 1/T each;
* GradNorm's W is the whole shared trunk (the task's ``shared_mask``), as in LibMTL;
* FAMO's reported final weights are z = softmax(ξ); the weights it applies at a step
  (logged in the curves) are z_i / l_i, normalised to sum to 1.

PCGrad, MGDA and CAGrad (`GradientManipulation`) are defined here for
``benchmarks/method_overhead.py`` but not registered, to keep the quick mode short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from benchmarks.methods import (
    Config,
    Method,
    Params,
    StepContext,
    StepOutput,
    Weighting,
    register,
    single_config,
)
from yoto_jax import baselines as bl

DWA_WINDOW = 10
"""Steps per DWA "epoch" (the harness has no epochs; see the module docstring)."""


@dataclass(frozen=True)
class Uncertainty(Weighting):
    """Kendall et al.'s log-variances s, trained by the model's Adam.

    ``config = {"log_var_init": ()}``: the initial s (0, see ``init_log_vars``).
    """

    def init(self, config: Config, num_losses: int) -> tuple[Params, Any]:
        return {bl.UNCERTAINTY_KEY: bl.init_log_vars(num_losses, config["log_var_init"])}, ()

    def objective(self, config: Config, params: Params, state: Any, losses: jax.Array):
        return bl.uncertainty_loss(params[bl.UNCERTAINTY_KEY], losses)

    def weights(self, config: Config, params: Params, state: Any) -> jax.Array:
        return bl.uncertainty_weights(params[bl.UNCERTAINTY_KEY])


@dataclass(frozen=True)
class LossStatistics(Weighting):
    """A library ``LossWeighting``: the model minimises ``weighted_loss(λ, losses)``.

    Subclasses say which one (``method``) and may override ``after_update``.
    """

    def method(self, config: Config) -> bl.LossWeighting:
        raise NotImplementedError

    def init(self, config: Config, num_losses: int) -> tuple[Params, Any]:
        return {}, self.method(config).init(num_losses)

    def step(self, ctx: StepContext) -> StepOutput:
        method = self.method(ctx.config)

        def total(model_params: Params) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
            losses = ctx.losses_fn(model_params)
            weights = method.weights(ctx.state, losses)
            return bl.weighted_loss(weights, losses), (losses, weights)

        (_, (losses, weights)), model_grads = jax.value_and_grad(total, has_aux=True)(
            ctx.model_params
        )
        return StepOutput(losses, weights, model_grads, {}, ctx.state)

    def after_update(self, ctx: StepContext, new_model_params: Params, output: StepOutput):
        return self.method(ctx.config).update(output.state, output.losses)


@dataclass(frozen=True)
class DWA(LossStatistics):
    """Dynamic Weight Average over windows of ``DWA_WINDOW`` steps.

    ``config = {"temperature": ()}``.
    """

    def method(self, config: Config) -> bl.LossWeighting:
        return bl.dwa(DWA_WINDOW, config["temperature"])

    def weights(self, config: Config, params: Params, state: Any) -> jax.Array:
        return self.method(config).weights(state, jnp.ones_like(state.loss_sum))


@dataclass(frozen=True)
class RLW(LossStatistics):
    """Random Loss Weighting from the step's key; ``config = {"weights": 1/T each}``."""

    def init(self, config: Config, num_losses: int) -> tuple[Params, Any]:
        return {}, ()

    def step(self, ctx: StepContext) -> StepOutput:
        return super().step(ctx._replace(state=bl.RLWState(ctx.key)))

    def method(self, config: Config) -> bl.LossWeighting:
        return bl.rlw()

    def after_update(self, ctx: StepContext, new_model_params: Params, output: StepOutput):
        return ()


@dataclass(frozen=True)
class FAMO(LossStatistics):
    """FAMO with its own Adam on ξ; the losses are re-evaluated after the model's step.

    ``config = {"learning_rate": (), "weight_decay": ()}``.
    """

    def method(self, config: Config) -> bl.LossWeighting:
        return bl.famo(config["learning_rate"], config["weight_decay"])

    def weights(self, config: Config, params: Params, state: Any) -> jax.Array:
        return jax.nn.softmax(state.logits)

    def after_update(self, ctx: StepContext, new_model_params: Params, output: StepOutput):
        losses_after = ctx.losses_fn(new_model_params)
        return self.method(ctx.config).update(
            output.state, output.losses, losses_after=losses_after
        )


@dataclass(frozen=True)
class GradNorm(Weighting):
    """GradNorm over the task's shared trunk; its logits s are trained by the model's Adam.

    ``config = {"alpha": ()}``.
    """

    def init(self, config: Config, num_losses: int) -> tuple[Params, Any]:
        params = {bl.GRADNORM_KEY: jnp.zeros((num_losses,), jnp.float32)}
        return params, bl.gradnorm(True).init(num_losses)  # init does not depend on W

    def step(self, ctx: StepContext) -> StepOutput:
        logits = ctx.params[bl.GRADNORM_KEY]
        method = bl.gradnorm(ctx.shared_mask, ctx.config["alpha"])
        model_grads, logit_grad, state, losses = method.grads(
            ctx.losses_fn, ctx.model_params, logits, ctx.state
        )
        weights = bl.gradnorm_weights(logits)
        return StepOutput(losses, weights, model_grads, {bl.GRADNORM_KEY: logit_grad}, state)

    def weights(self, config: Config, params: Params, state: Any) -> jax.Array:
        return bl.gradnorm_weights(params[bl.GRADNORM_KEY])


@dataclass(frozen=True)
class GradientManipulation(Weighting):
    """A library gradient-manipulation transformation over the per-loss gradients.

    The per-loss gradients come from ``jax.jacrev`` (T backward passes); the shared
    trunk's are combined by the method, the heads' summed. There are no loss weights:
    the logged weights are ones. ``config = {"weights": ones}`` (unused but logged).
    """

    def transformation(self, ctx: StepContext) -> tuple[optax.GradientTransformation, Any]:
        raise NotImplementedError

    def step(self, ctx: StepContext) -> StepOutput:
        def with_losses(model_params: Params) -> tuple[jax.Array, jax.Array]:
            losses = ctx.losses_fn(model_params)
            return losses, losses

        per_loss, losses = jax.jacrev(with_losses, has_aux=True)(ctx.model_params)
        tx, state = self.transformation(ctx)
        model_grads, _ = tx.update(per_loss, state, ctx.model_params)
        return StepOutput(losses, jnp.ones_like(losses), model_grads, {}, ctx.state)


@dataclass(frozen=True)
class PCGrad(GradientManipulation):
    """PCGrad on the shared trunk, its random task orders drawn from the step's key."""

    def transformation(self, ctx: StepContext) -> tuple[optax.GradientTransformation, Any]:
        return bl.pcgrad(ctx.shared_mask), bl.PCGradState(ctx.key)


@dataclass(frozen=True)
class MGDA(GradientManipulation):
    """MGDA's min-norm direction on the shared trunk."""

    def transformation(self, ctx: StepContext) -> tuple[optax.GradientTransformation, Any]:
        return bl.mgda(ctx.shared_mask), optax.EmptyState()


@dataclass(frozen=True)
class CAGrad(GradientManipulation):
    """CAGrad on the shared trunk, c = 0.5 (LibMTL's default), rescaled by 1/(1 + c²)."""

    def transformation(self, ctx: StepContext) -> tuple[optax.GradientTransformation, Any]:
        return bl.cagrad(ctx.shared_mask), optax.EmptyState()


register(
    Method(
        "uncertainty",
        Uncertainty(),
        single_config(lambda num_aux: {"log_var_init": jnp.float32(bl.DEFAULT_LOG_VAR_INIT)}),
        "Kendall et al. 2018: Σ l_i/(2e^s_i) + s_i/2, s = 0 at init, s on the model's Adam",
    )
)
register(
    Method(
        "dwa",
        DWA(),
        single_config(lambda num_aux: {"temperature": jnp.float32(bl.DEFAULT_DWA_TEMPERATURE)}),
        f"Liu et al. 2019: T·softmax(L(t-1)/L(t-2)/2), 'epoch' = {DWA_WINDOW} steps",
    )
)
register(
    Method(
        "rlw",
        RLW(),
        single_config(lambda num_aux: {"weights": jnp.full(num_aux + 1, 1 / (num_aux + 1))}),
        "Lin et al. 2022: λ = softmax(z), z ~ N(0, I) every step",
    )
)
register(
    Method(
        "gradnorm",
        GradNorm(),
        single_config(lambda num_aux: {"alpha": jnp.float32(bl.DEFAULT_GRADNORM_ALPHA)}),
        "Chen et al. 2018: α = 1.5, W = the shared trunk, w = T·softmax(s) on the model's Adam",
    )
)
register(
    Method(
        "famo",
        FAMO(),
        single_config(
            lambda num_aux: {
                "learning_rate": jnp.float32(bl.DEFAULT_FAMO_LEARNING_RATE),
                "weight_decay": jnp.float32(bl.DEFAULT_FAMO_WEIGHT_DECAY),
            }
        ),
        "Liu et al. 2023: ξ on its own Adam (lr 0.025, decay 1e-3), losses re-evaluated",
    )
)
