r"""Adaptive search over loss weights: successive halving and population-based training.

A grid search (:mod:`yoto_jax.grid`) trains every configuration for the whole budget.
Both searches here spend less on the configurations that are visibly losing:

* :func:`successive_halving` (:mod:`yoto_jax.halving`) trains all N members for a
  short rung, keeps the best :math:`\lfloor n / \eta \rfloor`, trains those further,
  and so on until one member is left; each rung is one jitted, vmapped program over the
  survivors.
* :func:`population_based_training` (:mod:`yoto_jax.pbt`) trains all N members for the
  whole budget in one jitted program, and every ``interval`` steps the worst members
  take over the state and the (perturbed) configuration of the best ones.

* :func:`search_methods` (:mod:`yoto_jax.method_search`) runs successive halving over
  members of several families (weighting methods, each with its own functions and
  state structure), ranked together; :mod:`yoto_jax.method_families` builds the
  families for a model, an optimizer and a choice of weightings.

All take the same three pure functions: ``init_fn(config, key) -> state``,
``train_fn(state, config, key, num_steps) -> state`` and ``eval_fn(state, config) ->
score``, and a pytree of configurations whose leaves have a leading axis N, e.g. the
(N, K+1) loss-weight rows of :func:`yoto_jax.loss_weight_grid`. Every member's keys
come from :func:`member_keys`.
"""

from yoto_jax._population import member_keys
from yoto_jax.halving import HalvingResult, Rung, successive_halving
from yoto_jax.method_search import MethodRung, MethodSearchResult, search_methods
from yoto_jax.pbt import PBTHistory, PBTResult, population_based_training

__all__ = [
    "HalvingResult",
    "MethodRung",
    "MethodSearchResult",
    "PBTHistory",
    "PBTResult",
    "Rung",
    "member_keys",
    "population_based_training",
    "search_methods",
    "successive_halving",
]
