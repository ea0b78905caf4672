"""YOTO's sensitivity studies: ρ, ε and µ's learning rate, trained as one vmapped program.

Every study point is a YOTO run of the paper's weights (no floor) whose µ has its own
Adam at ``factor x`` the model's learning-rate schedule (``benchmarks.methods.yoto``).
Adam acts elementwise, so factor 1 is the paper's setting (µ on the model's optimizer).

* ``eps``: ε x µ-lr factor, at ρ = DEFAULT_RHO. The factor-1 row is the ε
  sensitivity study; the other rows are the µ-learning-rate study.
* ``rho``: ρ x µ-lr factor, at ε = DEFAULT_EPS. ρ is in loss units: the range spans
  from well below the tasks' loss differences (ρ ≤ 0.01: the data decides) to well
  above them (ρ = 10: the prior decides, λ near its minimiser of R).
"""

from __future__ import annotations

from typing import NamedTuple

import yoto_jax
from benchmarks.methods import Config, Method, yoto, yoto_config

EPS_VALUES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
RHO_VALUES = (0.0, 0.01, 0.1, 1.0, 10.0)
MU_LR_FACTORS = (1.0, 10.0, 100.0)

QUICK_EPS_VALUES = (1e-3, 1e-1, 1.0)
QUICK_RHO_VALUES = (0.0, 0.1, 10.0)
QUICK_MU_LR_FACTORS = (1.0, 100.0)


class Point(NamedTuple):
    """One study configuration."""

    eps: float
    rho: float
    mu_lr_factor: float


class Grid(NamedTuple):
    """The values a study sweeps."""

    eps: tuple[float, ...]
    rho: tuple[float, ...]
    mu_lr_factors: tuple[float, ...]


def grid(quick: bool) -> Grid:
    """The full study grid, or the reduced one of ``--quick``."""
    if quick:
        return Grid(QUICK_EPS_VALUES, QUICK_RHO_VALUES, QUICK_MU_LR_FACTORS)
    return Grid(EPS_VALUES, RHO_VALUES, MU_LR_FACTORS)


def points(study: Grid) -> list[Point]:
    """The distinct points of both studies (their default-ε-and-ρ points coincide)."""
    eps_points = [
        Point(eps, yoto_jax.DEFAULT_RHO, f) for f in study.mu_lr_factors for eps in study.eps
    ]
    rho_points = [
        Point(yoto_jax.DEFAULT_EPS, rho, f) for f in study.mu_lr_factors for rho in study.rho
    ]
    return list(dict.fromkeys(eps_points + rho_points))


def config(point: Point, num_aux: int) -> Config:
    """The YOTO configuration of a study point."""
    return yoto_config(
        num_aux,
        point.eps,
        point.rho,
        mu_lr=0.0,
        mu_lr_factor=point.mu_lr_factor,
        floor=0.0,
        loss_floor=0.0,
    )


def method(study: Grid) -> Method:
    """Every point of `study` as one method (not registered): one run per point and seed."""

    def configs(num_aux: int, seed: int) -> list[Config]:
        return [config(point, num_aux) for point in points(study)]

    return Method("yoto_studies", yoto, configs, "YOTO's ε, ρ and µ-lr studies")
