"""Flax Linen integration: µ as a parameter named ``yoto_mu`` in the model's params."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.composite import (
    DEFAULT_EPS,
    DEFAULT_LOSS_FLOOR,
    DEFAULT_PRIMARY_FLOOR,
    init_mu,
    named_composite,
    named_loss_weights,
    resolve_floor,
)
from yoto_jax.diagnostics import (
    NamedReport,
    WeightReport,
    check_loss_names,
    ordered_losses,
    report_names,
    weight_report,
)
from yoto_jax.selection import MU_KEY


class LossWeights(nn.Module):
    """Learnable YOTO loss weights for one composite loss inside a Linen model.

    The logits live in ``params[...]["yoto_mu"]`` and are updated with the rest of
    the params by the ``TrainState``'s optimizer; :func:`yoto_jax.mu_mask` selects them.

    Attributes:
      primary: the name of the primary loss.
      auxiliary: the names of the K >= 1 auxiliary losses.
      eps: the initial weight of each auxiliary relative to the primary.
      primary_floor: the least weight of the primary loss, m in [0, 1) (0, the default
        and the paper's formulation), or ``"uniform"`` (1/(K+1)).
      loss_floor: the least weight of every loss, as a fraction m in [0, 1] of uniform
        (0.8 by default, see :func:`yoto_jax.yoto`; 0 is the paper's formulation).

    Example:
      >>> import jax, yoto_jax
      >>> from yoto_jax.linen import LossWeights
      >>> module = LossWeights("depth", ("segmentation", "consistency"))
      >>> losses = {"depth": 1.0, "segmentation": 0.7, "consistency": 0.2}
      >>> variables = module.init(jax.random.key(0), losses)
      >>> weights = module.apply(variables, method=LossWeights.weights)
    """

    primary: str
    auxiliary: Sequence[str]
    eps: float = DEFAULT_EPS
    primary_floor: float | str = DEFAULT_PRIMARY_FLOOR
    loss_floor: float = DEFAULT_LOSS_FLOOR

    def setup(self):
        check_loss_names(self.primary, self.auxiliary)
        _checks.positive(self.eps, "eps")
        self.floor = resolve_floor(self.primary_floor, len(self.auxiliary))
        self.mu = self.param(MU_KEY, lambda _key: init_mu(len(self.auxiliary), self.eps))

    def __call__(self, losses: Mapping[str, ArrayLike]) -> jax.Array:
        """The composite loss Σ λ_i l_i of a dict of scalar losses."""
        return named_composite(
            self.mu,
            losses,
            self.primary,
            tuple(self.auxiliary),
            primary_floor=self.floor,
            loss_floor=self.loss_floor,
        )

    def weights(self) -> dict[str, jax.Array]:
        """The current λ by loss name, for logging."""
        return named_loss_weights(
            self.mu,
            self.primary,
            tuple(self.auxiliary),
            primary_floor=self.floor,
            loss_floor=self.loss_floor,
        )

    def report(
        self,
        losses: Mapping[str, ArrayLike],
        previous: WeightReport | None = None,
        **options: Any,
    ) -> WeightReport:
        """:func:`yoto_jax.weight_report` of the current weights and a dict of losses, for
        logging; its arrays follow the order ``(primary, *auxiliary)``. ``previous`` and
        ``options`` (``primary_threshold``, ``off_fraction``, ``sustain``) as there."""
        return weight_report(
            self.mu,
            ordered_losses(losses, self.primary, tuple(self.auxiliary)),
            previous=previous,
            primary_floor=self.floor,
            loss_floor=self.loss_floor,
            **options,
        )

    def report_names(self, report: WeightReport) -> NamedReport:
        """:func:`yoto_jax.report_names` with the names ``(primary, *auxiliary)``; needs no
        variables (call it on the unbound module, after the jitted step)."""
        return report_names(report, (self.primary, *self.auxiliary))
