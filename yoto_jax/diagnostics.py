"""``weight_report``: the state of YOTO's loss weights, for logging, with two alarms (an
auxiliary switched off, the primary collapsed) and a finiteness flag."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from yoto_jax import _checks
from yoto_jax.composite import (
    Logits,
    Losses,
    aligned_losses,
    logit_vector_of,
    loss_weights,
    resolve_floor,
)

DEFAULT_PRIMARY_THRESHOLD = 0.2
"""The primary's free weight s_0 below which a run whose largest free weight sits on the
auxiliary with the smallest loss is flagged as collapsed."""

DEFAULT_OFF_FRACTION = 0.05
"""An auxiliary whose free weight s_i stays below this fraction of uniform, 0.05 / T,
is counted as switched off."""

DEFAULT_SUSTAIN = 100
"""The number of consecutive reports an auxiliary must stay below the threshold before
it is flagged as switched off."""


class WeightReport(NamedTuple):
    """What :func:`weight_report` returns; every field is a JAX array (jit-friendly).

    Indices follow the order of the weights: 0 is the primary, then the auxiliaries (for
    a dict µ: sorted by name). :func:`report_names` turns them into names.
    """

    weights: jax.Array  # λ applied (with the floors), shape (K+1,), primary first
    free_weights: jax.Array  # s = softmax([0, µ]), shape (K+1,): before any floor
    primary_weight: jax.Array  # λ_0, applied
    entropy: jax.Array  # H(λ) = −Σ λ_i log λ_i, in nats
    normalized_entropy: jax.Array  # H(λ) / log(K+1): 1 for uniform weights, 0 for one-hot
    heaviest: jax.Array  # int32: argmax_i s_i (0 is the primary); -1 when µ is not finite
    smallest_loss: jax.Array  # int32: the auxiliary with the smallest loss; -1: see below
    collapsed: jax.Array  # bool: see weight_report
    off_steps: jax.Array  # int32 (K,): consecutive reports with s_i < off_fraction / T
    switched_off: jax.Array  # bool (K,): off_steps >= sustain, one per auxiliary
    any_switched_off: jax.Array  # bool: any(switched_off)
    finite: jax.Array  # bool: µ and the losses given are all finite


def _fraction(x: Any, name: str) -> None:
    value = _checks.concrete_float(x)
    if value is not None and not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}.")


def weight_report(
    mu: Logits,
    losses: Losses | None = None,
    *,
    previous: WeightReport | None = None,
    primary_threshold: ArrayLike = DEFAULT_PRIMARY_THRESHOLD,
    off_fraction: ArrayLike = DEFAULT_OFF_FRACTION,
    sustain: int = DEFAULT_SUSTAIN,
    primary_floor: ArrayLike | str = 0.0,
    loss_floor: ArrayLike = 0.0,
) -> WeightReport:
    r"""Summarises YOTO's weights and raises two alarms, for logging.

    Both alarms read the **free** weights :math:`s = \mathrm{softmax}([0, µ])`, before
    any floor, so they mean the same whatever floors the weights applied have; the
    ``weights`` field is the applied weights (``primary_floor`` m_0 and ``loss_floor`` m:
    :math:`λ = m/T + (1 - m)(m_0 e_0 + (1 - m_0) s)`, :func:`yoto_jax.loss_weights`).

    At its equilibrium YOTO weights the losses like :math:`s_i \propto e^{-(1-m) l_i/ρ}`
    (tempered by the regulariser): µ_i's gradient is
    :math:`(1 - m)\, s_i (l_i - \bar L) + ρ\, \partial R/\partial µ_i`, with
    :math:`\bar L = \sum_j s_j l_j`. It judges the losses on the training batch only.

    **Switched off.** An auxiliary whose loss stays above the weighted mean
    :math:`\bar L` is turned down until the regulariser holds it. Counting the
    consecutive reports chained through ``previous``,

    .. math::
        \mathrm{off\_steps}_i = \big[s_i < φ / T\big]\,
        (\mathrm{off\_steps}^{\mathrm{previous}}_i + 1), \qquad
        \mathrm{switched\_off}_i = \big[\mathrm{off\_steps}_i \ge N\big],

    with φ = ``off_fraction``, T = K+1 and N = ``sustain`` (i = 1..K; a report without
    ``previous`` starts from 0). This is typical of regularising auxiliaries
    (consistency, invariance, distillation, Dice): their losses stay large by
    construction, and YOTO turns them down whatever they do for the primary's
    generalisation. If the auxiliary is meant to help: a floor on every loss
    (``yoto(loss_floor=...)``), a larger ε or ρ, equal weights, or a search over fixed weights
    (:func:`yoto_jax.successive_halving`). If it is meant to be turned down, the flag
    says that it was.

    **Collapsed.** A loss that is small by construction (a consistency term near
    zero, a loss in small units) takes the weight from the primary:

    .. math::
        \mathrm{collapsed} = \big[s_0 < τ\big] \wedge
        \big[\arg\max_i s_i = \arg\min_{i \ge 1} l_i\big],

    with τ = ``primary_threshold``; without ``losses`` the second condition is "an
    auxiliary holds the largest free weight". It reads s, not λ, so it fires under a
    primary floor too (the floor bounds the damage; µ is still heading there). Rescale
    the losses to comparable sizes, raise the primary floor, or raise ρ.

    **Not finite.** ``finite`` is False when µ or a loss given is NaN or ±inf; then
    ``heaviest`` is -1 if µ is not finite, ``smallest_loss`` is -1 if a loss is not
    finite (it is -1 without losses too), ``collapsed`` is False, and an auxiliary with
    a NaN weight counts as not switched off. Check ``finite`` first.

    Pure and jittable: inside a jitted step or a ``jax.lax.scan``, carry the report and
    pass it back as ``previous`` (each call is one step of ``off_steps``; call it every
    step, or scale ``sustain`` to how often you call it).

    Args:
      mu: auxiliary logits, shape (K,), or a dict of K auxiliary names to scalars.
      losses: optional recent losses (e.g. this step's or a running mean), in the form
        :func:`yoto_jax.yoto_composite` takes: shape (K+1,) primary first, or a dict.
      previous: the previous report of the same run, or None at the first.
      primary_threshold: τ in (0, 1).
      off_fraction: φ in (0, 1): the fraction of uniform 1/T below which an auxiliary
        counts as off.
      sustain: N >= 1, the reports in a row below φ/T before ``switched_off``.
      primary_floor: the primary floor m_0 of the weights applied (see
        :func:`yoto_jax.loss_weights`), or ``"uniform"`` (1/T); it changes ``weights``
        and the entropy only.
      loss_floor: the floor m on every weight applied (:func:`yoto_jax.yoto`'s default
        is 0.8); it changes ``weights`` and the entropy only.

    Returns:
      A :class:`WeightReport`.

    Example:
      >>> import jax.numpy as jnp
      >>> report = weight_report(jnp.array([4.0, -3.0]), jnp.array([0.5, 0.01, 0.9]))
      >>> round(float(report.free_weights[0]), 3), bool(report.collapsed)
      (0.018, True)
      >>> floored = weight_report(jnp.array([4.0, -3.0]), primary_floor=1 / 3)
      >>> round(float(floored.primary_weight), 3), bool(floored.collapsed)
      (0.345, True)
      >>> report = None
      >>> for step in range(3):  # the second auxiliary at s_2 = 0.0012 < 0.05 / 3
      ...     report = weight_report(jnp.array([0.0, -6.0]), previous=report, sustain=3)
      >>> report.off_steps.tolist(), report.switched_off.tolist(), bool(report.any_switched_off)
      ([0, 3], [False, True], True)
    """
    if losses is None:
        vector, loss_values = logit_vector_of(mu), None
    else:
        vector, loss_values = aligned_losses(mu, losses)
    return build_report(
        vector,
        loss_values,
        loss_weights(
            vector,
            primary_floor=resolve_floor(primary_floor, vector.shape[0]),
            loss_floor=loss_floor,
        ),
        previous=previous,
        primary_threshold=primary_threshold,
        off_fraction=off_fraction,
        sustain=sustain,
    )


def build_report(
    mu: jax.Array,
    losses: jax.Array | None,
    weights: jax.Array,
    *,
    previous: WeightReport | None = None,
    primary_threshold: ArrayLike = DEFAULT_PRIMARY_THRESHOLD,
    off_fraction: ArrayLike = DEFAULT_OFF_FRACTION,
    sustain: int = DEFAULT_SUSTAIN,
) -> WeightReport:
    """:func:`weight_report` of logits µ (K,), losses (K+1,) or None, and the weights
    (K+1,) applied (a :class:`~yoto_jax.Weighting`'s, e.g. with a floor on every loss).

    Example:
      >>> import jax.numpy as jnp
      >>> build_report(jnp.zeros(1), None, jnp.array([0.75, 0.25])).free_weights
      Array([0.5, 0.5], dtype=float32)
    """
    _fraction(primary_threshold, "primary_threshold")
    _fraction(off_fraction, "off_fraction")
    sustain = _checks.positive_int(sustain, "sustain")
    num_aux = mu.shape[0]
    free = jax.nn.softmax(
        jnp.concatenate([jnp.zeros((1,), weights.dtype), mu.astype(weights.dtype)])
    )
    mu_finite = jnp.all(jnp.isfinite(mu))
    heaviest = jnp.where(mu_finite, jnp.argmax(free), -1).astype(jnp.int32)
    if losses is None:
        finite, smallest = mu_finite, jnp.int32(-1)
        on_smallest = heaviest > 0
    else:
        finite = mu_finite & jnp.all(jnp.isfinite(losses))
        smallest = jnp.where(finite, 1 + jnp.argmin(losses[1:]), -1).astype(jnp.int32)
        on_smallest = heaviest == smallest
    below = free[1:] < jnp.asarray(off_fraction, free.dtype) / (num_aux + 1)
    if previous is None:
        counted = jnp.zeros((num_aux,), jnp.int32)
    elif not isinstance(previous, WeightReport):
        raise TypeError(f"previous must be a WeightReport or None, got {type(previous).__name__}.")
    else:
        counted = jnp.asarray(previous.off_steps)
        if counted.shape != (num_aux,):
            raise ValueError(
                f"previous.off_steps must have shape (K,) = ({num_aux},), one per auxiliary; "
                f"got shape {counted.shape}: pass the previous report of the same weights."
            )
    off_steps = jnp.where(below, counted + 1, 0).astype(jnp.int32)
    switched_off = off_steps >= sustain
    entropy = -jnp.sum(jnp.where(weights > 0, weights * jnp.log(weights), 0.0))
    return WeightReport(
        weights=weights,
        free_weights=free,
        primary_weight=weights[0],
        entropy=entropy,
        normalized_entropy=entropy / math.log(num_aux + 1),
        heaviest=heaviest,
        smallest_loss=smallest,
        collapsed=finite & (free[0] < primary_threshold) & on_smallest,
        off_steps=off_steps,
        switched_off=switched_off,
        any_switched_off=jnp.any(switched_off),
        finite=finite,
    )


class NamedReport(NamedTuple):
    """A :class:`WeightReport`'s alarms with loss names, on the host (see
    :func:`report_names`)."""

    weights: dict[str, float]  # λ applied, by name, in the report's order
    heaviest: str | None  # the name of the largest free weight; None when µ is not finite
    smallest_loss: str | None  # the auxiliary with the smallest loss, or None
    switched_off: tuple[str, ...]  # the auxiliaries flagged as switched off
    collapsed: bool
    finite: bool


def report_names(report: WeightReport, names: Sequence[str]) -> NamedReport:
    """A report's indices and flags as loss names, on the host (after the jitted step).

    Args:
      report: one :class:`WeightReport` (not a batch of them: index a vmapped one first).
      names: the T loss names in the report's order: ``(primary, *auxiliary)``; for a
        dict µ, ``(primary, *sorted(mu))``. The Flax ``LossWeights`` modules' method
        ``report_names(report)`` passes their names.

    Returns:
      A :class:`NamedReport` of Python values.

    Example:
      >>> import jax.numpy as jnp
      >>> report = weight_report(jnp.array([4.0, -3.0]), jnp.array([0.5, 0.01, 0.9]))
      >>> named = report_names(report, ["depth", "consistency", "segmentation"])
      >>> named.heaviest, named.smallest_loss, named.collapsed
      ('consistency', 'consistency', True)
    """
    names = tuple(names)
    weights = np.asarray(report.weights)
    if weights.shape != (len(names),):
        raise ValueError(
            f"report.weights has shape {weights.shape} but {len(names)} names were given "
            f"({list(names)}): pass one report (index a batch of them) and T = K+1 names."
        )

    def name(index: Any) -> str | None:
        return None if int(index) < 0 else names[int(index)]

    return NamedReport(
        weights=dict(zip(names, weights.tolist())),
        heaviest=name(report.heaviest),
        smallest_loss=name(report.smallest_loss),
        switched_off=tuple(n for n, off in zip(names[1:], np.asarray(report.switched_off)) if off),
        collapsed=bool(report.collapsed),
        finite=bool(report.finite),
    )


def check_loss_names(primary: str, auxiliary: Sequence[str]) -> tuple[str, ...]:
    """``(primary, *auxiliary)`` after checking: strings, K >= 1 auxiliaries, unique, and
    ``auxiliary`` a sequence of names rather than one string.

    Example:
      >>> check_loss_names("depth", "seg")
      Traceback (most recent call last):
      TypeError: auxiliary must be a sequence of loss names, e.g. ['seg'], not the string 'seg'.
    """
    if isinstance(auxiliary, str):
        raise TypeError(
            f"auxiliary must be a sequence of loss names, e.g. [{auxiliary!r}], "
            f"not the string {auxiliary!r}."
        )
    names = (primary, *auxiliary)
    if not auxiliary or not all(isinstance(name, str) for name in names):
        raise ValueError(f"expected a primary name and >= 1 auxiliary names, got {list(names)!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"loss names must be unique, got {list(names)!r}.")
    return names


def ordered_losses(
    losses: Mapping[str, ArrayLike], primary: str, auxiliary: Sequence[str]
) -> jax.Array:
    """The dict ``losses`` as a (K+1,) vector in the order ``(primary, *auxiliary)``;
    ``losses`` must hold exactly those names.

    Example:
      >>> ordered_losses({"aux": 0.5, "main": 1.0}, "main", ["aux"])
      Array([1. , 0.5], dtype=float32)
    """
    names = [primary, *auxiliary]
    missing = sorted(set(names) - set(losses))
    extra = sorted(set(losses) - set(names))
    if missing or extra:
        raise KeyError(
            f"losses must hold exactly the names {names}; missing {missing}, not weighted {extra}."
        )
    values = [_checks.scalar(losses[name], f"losses[{name!r}]") for name in names]
    return jnp.stack(values).astype(_checks.compute_dtype(*values))
