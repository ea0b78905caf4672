"""Established loss-weighting baselines, in the functional style of the core library.

* :func:`equal_weighting` (EW), :func:`dwa` (DWA), :func:`rlw` (RLW) and :func:`famo`
  (FAMO) set constant weights λ from loss statistics: each is a :class:`LossWeighting`
  of ``init``, ``weights`` and ``update``, and the model minimises
  ``weighted_loss(λ, losses)``.
* Uncertainty weighting learns log-variances s with the model's optimizer:
  :func:`init_log_vars` and :func:`uncertainty_loss`.
* GradNorm learns logits s from gradient norms of the shared parameters:
  :func:`gradnorm` returns the model's and the logits' gradients in one call.
* Gradient manipulation, :func:`pcgrad`, :func:`mgda` and :func:`cagrad`: Optax
  transformations from per-loss gradients (``jax.jacrev`` of the loss vector) to one
  update.

Losses are a vector of shape (T,), one reduced scalar per task (``jnp.stack`` them in
a fixed order).
"""

from yoto_jax.baselines._common import LossWeighting, weighted_loss
from yoto_jax.baselines.dwa import DEFAULT_DWA_TEMPERATURE, DWAState, dwa
from yoto_jax.baselines.ew import equal_weighting
from yoto_jax.baselines.famo import (
    DEFAULT_FAMO_LEARNING_RATE,
    DEFAULT_FAMO_WEIGHT_DECAY,
    FAMOState,
    famo,
)
from yoto_jax.baselines.gradnorm import (
    DEFAULT_GRADNORM_ALPHA,
    GRADNORM_KEY,
    GradNorm,
    GradNormState,
    gradnorm,
    gradnorm_balance_loss,
    gradnorm_weights,
)
from yoto_jax.baselines.manipulation import (
    DEFAULT_CAGRAD_C,
    DEFAULT_SOLVER_ITERATIONS,
    PCGradState,
    cagrad,
    mgda,
    min_norm_weights,
    pcgrad,
)
from yoto_jax.baselines.rlw import RLWState, rlw
from yoto_jax.baselines.uncertainty import (
    DEFAULT_LOG_VAR_INIT,
    UNCERTAINTY_KEY,
    init_log_vars,
    uncertainty_loss,
    uncertainty_weights,
)

__all__ = [
    "DEFAULT_CAGRAD_C",
    "DEFAULT_DWA_TEMPERATURE",
    "DEFAULT_FAMO_LEARNING_RATE",
    "DEFAULT_FAMO_WEIGHT_DECAY",
    "DEFAULT_GRADNORM_ALPHA",
    "DEFAULT_LOG_VAR_INIT",
    "DEFAULT_SOLVER_ITERATIONS",
    "GRADNORM_KEY",
    "UNCERTAINTY_KEY",
    "DWAState",
    "FAMOState",
    "GradNorm",
    "GradNormState",
    "LossWeighting",
    "PCGradState",
    "RLWState",
    "cagrad",
    "dwa",
    "equal_weighting",
    "famo",
    "gradnorm",
    "gradnorm_balance_loss",
    "gradnorm_weights",
    "init_log_vars",
    "mgda",
    "min_norm_weights",
    "pcgrad",
    "rlw",
    "uncertainty_loss",
    "uncertainty_weights",
    "weighted_loss",
]
