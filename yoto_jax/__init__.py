"""yoto_jax: learn loss weights with the model, in one training run (YOTO).

Every loss-weighting method, YOTO (:func:`yoto`) and the baselines
(:mod:`yoto_jax.baselines`), is a :class:`Weighting`; :func:`trainer` is the one
multi-loss training step; :mod:`yoto_jax.nnx` and :mod:`yoto_jax.linen` hold the
weights inside Flax models.

Reference: C. Sakaridis, "You Only Train Once", arXiv:2506.04349.
"""

import importlib

from yoto_jax import baselines
from yoto_jax.composite import DEFAULT_EPS as DEFAULT_EPS
from yoto_jax.composite import DEFAULT_LOSS_FLOOR as DEFAULT_LOSS_FLOOR
from yoto_jax.composite import DEFAULT_PRIMARY_FLOOR as DEFAULT_PRIMARY_FLOOR
from yoto_jax.composite import (
    init_mu,
    loss_weights,
    regularizer,
    regularizer_grad,
    yoto_composite,
)
from yoto_jax.decay import DEFAULT_RHO as DEFAULT_RHO
from yoto_jax.decay import HyperparameterDecayState, hyperparameter_decay
from yoto_jax.diagnostics import NamedReport, WeightReport, report_names, weight_report
from yoto_jax.grid import loss_weight_grid, random_loss_weights, stack_trees, vmapped_training
from yoto_jax.learning_rate import DEFAULT_META_LEARNING_RATE as DEFAULT_META_LEARNING_RATE
from yoto_jax.learning_rate import (
    LearnedLearningRateState,
    learned_learning_rate,
    learning_rate_of,
)
from yoto_jax.method_search import MethodRung, MethodSearchResult, search_methods
from yoto_jax.optimizer import DEFAULT_MU_LEARNING_RATE as DEFAULT_MU_LEARNING_RATE
from yoto_jax.optimizer import yoto_optimizer
from yoto_jax.representation import RepresentationLosses, representation_losses
from yoto_jax.search import (
    HalvingResult,
    PBTHistory,
    PBTResult,
    Rung,
    member_keys,
    population_based_training,
    successive_halving,
)
from yoto_jax.selection import MU_KEY as MU_KEY
from yoto_jax.selection import is_mu_path, model_mask, mu_labels, mu_mask
from yoto_jax.trainer import NonfiniteSkipState, StepLog, Trainer, TrainerState, trainer
from yoto_jax.weighting import Weighting, WeightingStep, fixed_weights, relative_weights
from yoto_jax.yoto_weighting import yoto

__version__ = "0.1.0"

__all__ = [
    "HalvingResult",
    "HyperparameterDecayState",
    "LearnedLearningRateState",
    "MethodRung",
    "MethodSearchResult",
    "NamedReport",
    "NonfiniteSkipState",
    "PBTHistory",
    "PBTResult",
    "RepresentationLosses",
    "Rung",
    "StepLog",
    "Trainer",
    "TrainerState",
    "WeightReport",
    "Weighting",
    "WeightingStep",
    "baselines",
    "fixed_weights",
    "hyperparameter_decay",
    "init_mu",
    "is_mu_path",
    "learned_learning_rate",
    "learning_rate_of",
    "loss_weight_grid",
    "loss_weights",
    "member_keys",
    "model_mask",
    "mu_labels",
    "mu_mask",
    "population_based_training",
    "random_loss_weights",
    "regularizer",
    "regularizer_grad",
    "relative_weights",
    "report_names",
    "representation_losses",
    "search_methods",
    "stack_trees",
    "successive_halving",
    "trainer",
    "vmapped_training",
    "weight_report",
    "yoto",
    "yoto_composite",
    "yoto_optimizer",
]

_FLAX_MODULES = ("nnx", "linen")


def __getattr__(name: str):
    """``yoto_jax.nnx`` and ``yoto_jax.linen`` on first use (each imports its Flax API)."""
    if name in _FLAX_MODULES:
        return importlib.import_module(f"yoto_jax.{name}")
    raise AttributeError(f"module 'yoto_jax' has no attribute {name!r}")
