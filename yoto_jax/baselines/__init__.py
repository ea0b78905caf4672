"""Established loss-weighting baselines, each behind the one weighting contract.

Every method is a factory returning a :class:`yoto_jax.Weighting` (see
:mod:`yoto_jax.weighting`): ``init(num_losses) -> (params, state)``,
``step(losses_fn, model_params, params, state, *, key=None)``, ``after_update``,
``weights(params, state)`` and ``optimizer(tx)``, so :func:`yoto_jax.trainer` runs
any of them, and YOTO, with the same training step::

    train = yoto_jax.trainer(baselines.dwa(steps_per_epoch=100), optax.adam(1e-3))

* From loss statistics, no learnable params: :func:`equal_weighting` (EW),
  :func:`dwa` (DWA, its loss statistics in :class:`DWAState`), :func:`rlw` (RLW, its
  weights drawn from the step's key) and :func:`famo` (FAMO, its logits and their
  Adam in :class:`FAMOState`, updated in ``after_update`` from the losses after the
  model's step).
* With learnable params trained by the model's optimizer: :func:`uncertainty`
  (log-variances; the objective is :func:`uncertainty_loss`) and :func:`gradnorm`
  (logits learnt on :func:`gradnorm_balance_loss` over the shared parameters; the
  first losses in :class:`GradNormState`).
* With weights learnt by a lookahead on a validation loss: :func:`auto_lambda`
  (Auto-λ, its weights and their optimizer in :class:`AutoLambdaState`).
* Gradient manipulation from the per-loss gradients of the shared parameters:
  :func:`pcgrad`, :func:`mgda` (its solver :func:`min_norm_weights`), :func:`cagrad`,
  :func:`aligned_mtl` (:func:`aligned_mtl_weights`), :func:`upgrad`
  (:func:`upgrad_weights`), :func:`imtl` (IMTL-G's :func:`imtl_g_weights`, IMTL-L's
  :func:`imtl_scaled_losses`, or both) and :func:`nash_mtl` (:func:`nash_mtl_weights`,
  its α in :class:`NashMTLState`), also available as Optax transformations
  (``pcgrad_transformation`` etc.) whose ``update`` takes the per-loss gradients as
  the extra argument ``per_loss_grads=``.

``losses_fn(model_params)`` returns the losses as a vector of shape (T,), one reduced
scalar per task (``jnp.stack`` them in a fixed order, the primary first).
"""

from yoto_jax.baselines.aligned_mtl import (
    aligned_mtl,
    aligned_mtl_transformation,
    aligned_mtl_weights,
)
from yoto_jax.baselines.auto_lambda import AutoLambdaState, auto_lambda
from yoto_jax.baselines.dwa import DWAState, dwa
from yoto_jax.baselines.ew import equal_weighting
from yoto_jax.baselines.famo import FAMOState, famo
from yoto_jax.baselines.gradnorm import GradNormState, gradnorm, gradnorm_balance_loss
from yoto_jax.baselines.imtl import (
    imtl,
    imtl_g_weights,
    imtl_g_weights_from_gradients,
    imtl_scaled_losses,
    imtl_transformation,
)
from yoto_jax.baselines.manipulation import (
    PCGradState,
    cagrad,
    cagrad_transformation,
    mgda,
    mgda_transformation,
    min_norm_weights,
    pcgrad,
    pcgrad_transformation,
)
from yoto_jax.baselines.nash_mtl import (
    NashMTLState,
    nash_mtl,
    nash_mtl_transformation,
    nash_mtl_weights,
)
from yoto_jax.baselines.rlw import rlw
from yoto_jax.baselines.uncertainty import uncertainty, uncertainty_loss
from yoto_jax.baselines.upgrad import upgrad, upgrad_transformation, upgrad_weights

__all__ = [
    "AutoLambdaState",
    "DWAState",
    "FAMOState",
    "GradNormState",
    "NashMTLState",
    "PCGradState",
    "aligned_mtl",
    "aligned_mtl_transformation",
    "aligned_mtl_weights",
    "auto_lambda",
    "cagrad",
    "cagrad_transformation",
    "dwa",
    "equal_weighting",
    "famo",
    "gradnorm",
    "gradnorm_balance_loss",
    "imtl",
    "imtl_g_weights",
    "imtl_g_weights_from_gradients",
    "imtl_scaled_losses",
    "imtl_transformation",
    "mgda",
    "mgda_transformation",
    "min_norm_weights",
    "nash_mtl",
    "nash_mtl_transformation",
    "nash_mtl_weights",
    "pcgrad",
    "pcgrad_transformation",
    "rlw",
    "uncertainty",
    "uncertainty_loss",
    "upgrad",
    "upgrad_transformation",
    "upgrad_weights",
]
