"""yoto_jax: learn loss weights with the model, in one training run (YOTO).

Reference: C. Sakaridis, "You Only Train Once", arXiv:2506.04349.
"""

from yoto_jax import baselines
from yoto_jax.composite import (
    DEFAULT_EPS,
    init_mu,
    loss_weights,
    named_composite,
    named_loss_weights,
    regularizer,
    regularizer_grad,
    yoto_composite,
)
from yoto_jax.decay import DEFAULT_RHO, HyperparameterDecayState, hyperparameter_decay
from yoto_jax.diagnostics import WeightReport, weight_report
from yoto_jax.grid import grid_search, loss_weight_grid, random_loss_weights, vmapped_training
from yoto_jax.optimizer import DEFAULT_MU_LEARNING_RATE, yoto_optimizer
from yoto_jax.search import (
    HalvingResult,
    PBTHistory,
    PBTResult,
    Rung,
    member_keys,
    population_based_training,
    successive_halving,
)
from yoto_jax.selection import MU_KEY, is_mu_path, model_mask, mu_labels, mu_mask
from yoto_jax.trainer import StepLog, Trainer, TrainerState, trainer
from yoto_jax.weighting import Weighting, WeightingStep, fixed_weights, relative_weights
from yoto_jax.yoto_weighting import yoto

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_MU_LEARNING_RATE",
    "DEFAULT_RHO",
    "MU_KEY",
    "HalvingResult",
    "HyperparameterDecayState",
    "PBTHistory",
    "PBTResult",
    "Rung",
    "StepLog",
    "Trainer",
    "TrainerState",
    "WeightReport",
    "Weighting",
    "WeightingStep",
    "baselines",
    "fixed_weights",
    "grid_search",
    "hyperparameter_decay",
    "init_mu",
    "is_mu_path",
    "loss_weight_grid",
    "loss_weights",
    "member_keys",
    "model_mask",
    "mu_labels",
    "mu_mask",
    "named_composite",
    "named_loss_weights",
    "population_based_training",
    "random_loss_weights",
    "regularizer",
    "relative_weights",
    "regularizer_grad",
    "successive_halving",
    "trainer",
    "vmapped_training",
    "weight_report",
    "yoto",
    "yoto_composite",
    "yoto_optimizer",
]
