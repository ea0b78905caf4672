"""Flax NNX integration: µ as a parameter of the model, trained by the model's optimizer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
from flax import nnx
from jax.typing import ArrayLike

from yoto_jax.composite import (
    DEFAULT_EPS,
    UNIFORM,
    init_mu,
    named_composite,
    named_loss_weights,
    resolve_floor,
)
from yoto_jax.diagnostics import WeightReport, ordered_losses, weight_report
from yoto_jax.selection import MU_KEY


class YotoMu(nnx.Param):
    """An ``nnx.Param`` holding YOTO logits µ, so filters can tell it from weights.

    ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` includes it; ``nnx.state(model, YotoMu)``
    selects it alone.
    """


class LossWeights(nnx.Module):
    """Learnable YOTO loss weights for one composite loss, kept inside an NNX model.

    Example:
      >>> from flax import nnx
      >>> import optax, yoto_jax
      >>> from yoto_jax.nnx import LossWeights
      >>> weights = LossWeights("depth", ["segmentation", "consistency"], eps=0.1)
      >>> loss = weights({"depth": 1.0, "segmentation": 0.7, "consistency": 0.2})
      >>> tx = yoto_jax.yoto_optimizer(optax.adam(1e-3), rho=0.1)
      >>> optimizer = nnx.Optimizer(weights, tx, wrt=nnx.Param)

    A model can hold several ``LossWeights`` (several independent composite losses);
    each stores its logits under the attribute ``yoto_mu``, which
    :func:`yoto_jax.mu_mask` selects.
    """

    def __init__(
        self,
        primary: str,
        auxiliary: Sequence[str],
        *,
        eps: float = DEFAULT_EPS,
        primary_floor: float | str = UNIFORM,
    ):
        """Args:
        primary: the name of the primary loss.
        auxiliary: the names of the K >= 1 auxiliary losses.
        eps: the initial weight of each auxiliary relative to the primary.
        primary_floor: the least weight of the primary loss, m in [0, 1) (the weights
          are m e_0 + (1 − m) softmax([0, µ])); ``"uniform"``, the default, is 1/(K+1);
          0 is the paper's formulation.
        """
        init_mu([primary, *auxiliary], eps)  # validates the names and eps
        self.primary = primary
        self.auxiliary = tuple(auxiliary)
        self.primary_floor = resolve_floor(primary_floor, len(self.auxiliary))
        setattr(self, MU_KEY, YotoMu(init_mu(len(self.auxiliary), eps)))

    @property
    def mu(self) -> jax.Array:
        """The current logits, shape (K,), in the order of ``auxiliary``."""
        return getattr(self, MU_KEY)[...]

    def __call__(self, losses: Mapping[str, ArrayLike]) -> jax.Array:
        """The composite loss Σ λ_i l_i of a dict of scalar losses."""
        return named_composite(
            self.mu, losses, self.primary, self.auxiliary, primary_floor=self.primary_floor
        )

    def weights(self) -> dict[str, jax.Array]:
        """The current λ by loss name, for logging."""
        return named_loss_weights(
            self.mu, self.primary, self.auxiliary, primary_floor=self.primary_floor
        )

    def report(self, losses: Mapping[str, ArrayLike]) -> WeightReport:
        """:func:`yoto_jax.weight_report` of the current weights and a dict of losses, for
        logging; its arrays follow the order (primary, *auxiliary)."""
        return weight_report(
            self.mu,
            ordered_losses(losses, self.primary, self.auxiliary),
            primary_floor=self.primary_floor,
        )
