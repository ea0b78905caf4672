"""What the suite trains on every task: fixed-weight rows and the YOTO candidates.

Every row of a kind is one configuration of one jitted, vmapped program: the fixed rows
(the grid, equal weights, the primary alone) share one, and the YOTO candidates one per
value of ``normalize`` (the only structural option), their hyperparameters traced.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

GRID_VALUES = (0.01, 0.1, 1.0)
"""The grid's weights of each auxiliary, relative to the primary's 1 (as the benchmark's)."""

RANDOM_ROWS = 27
"""Rows of the log-uniform random grid over [0.01, 1] that replaces 3^K for K >= 3."""


def fixed_rows(num_losses: int) -> dict[str, np.ndarray]:
    """``equal``, ``primary_only`` and the grid's rows ``grid_i``, each a (T,) weight vector."""
    num_aux = num_losses - 1
    if num_aux <= 2:
        grid = [np.array((1.0, *row)) for row in itertools.product(GRID_VALUES, repeat=num_aux)]
    else:
        rng = np.random.default_rng(0)
        grid = [
            np.concatenate([[1.0], 10.0 ** rng.uniform(-2.0, 0.0, num_aux)])
            for _ in range(RANDOM_ROWS)
        ]
    rows = {"equal": np.ones(num_losses), "primary_only": np.eye(num_losses)[0]}
    rows.update({f"grid_{i}": row for i, row in enumerate(grid)})
    return {name: row.astype(np.float32) for name, row in rows.items()}


class Candidate(NamedTuple):
    """A YOTO configuration: ``yoto_jax.yoto`` with these arguments.

    ``mu_learning_rate=None`` is µ on the model's optimizer (the paper's setting); the
    suite's model optimizer is Adam at a constant rate, so it runs as µ's own Adam at
    that rate, which is the same update. ``primary_floor=None`` is ``"uniform"``.
    """

    eps: float
    rho: float
    mu_learning_rate: float | None
    primary_floor: float | None
    loss_floor: float
    normalize: str | None
    description: str
    validation: bool = False  # µ's gradient from a validation batch, one step ahead


CANDIDATES: dict[str, Candidate] = {
    "paper": Candidate(0.1, 0.1, None, 0.0, 0.0, None, "the paper's: µ on the model's Adam"),
    "default_v1": Candidate(
        0.1, 0.1, 0.05, None, 0.0, None, "the previous default: µ's Adam 0.05, primary floor"
    ),
    "eps1": Candidate(1.0, 0.1, 0.05, None, 0.0, None, "the previous default from ε = 1"),
    "eps1_slow": Candidate(1.0, 0.1, 0.01, 0.0, 0.0, None, "ε = 1, µ's Adam 0.01, no floor"),
    "eps1_mid": Candidate(1.0, 0.1, 0.02, 0.0, 0.0, None, "ε = 1, µ's Adam 0.02, no floor"),
    "eps1_slow_rho1": Candidate(1.0, 1.0, 0.01, 0.0, 0.0, None, "ε = 1, µ's Adam 0.01, ρ = 1"),
    "eps1_slow_floor": Candidate(
        1.0, 0.1, 0.01, 0.0, 0.25, None, "ε = 1, µ's Adam 0.01, every λ_i >= 0.25/T"
    ),
    "eps1_paper": Candidate(1.0, 0.1, None, 0.0, 0.0, None, "the paper's from ε = 1"),
    "floor_half": Candidate(1.0, 0.1, 0.05, 0.0, 0.5, None, "ε = 1, every λ_i >= 0.5/T"),
    "floor_half_slow": Candidate(
        1.0, 0.1, 0.01, 0.0, 0.5, None, "ε = 1, every λ_i >= 0.5/T, µ's Adam 0.01"
    ),
    "floor_half_rho1": Candidate(1.0, 1.0, 0.05, 0.0, 0.5, None, "ε = 1, ρ = 1, λ_i >= 0.5/T"),
    "floor_most": Candidate(1.0, 0.1, 0.05, 0.0, 0.8, None, "ε = 1, every λ_i >= 0.8/T"),
    "rho_relative": Candidate(
        1.0, 1.0, 0.05, 0.0, 0.0, "mean", "ε = 1, ρ = 1 × the running mean loss"
    ),
    "rho_relative_floor": Candidate(
        1.0, 1.0, 0.05, 0.0, 0.5, "mean", "ρ = 1 × the running mean loss, λ_i >= 0.5/T"
    ),
    "normalized": Candidate(
        1.0, 0.1, 0.05, 0.0, 0.0, "each", "ε = 1, µ sees l_i / running mean of l_i"
    ),
    "normalized_floor": Candidate(
        1.0, 0.1, 0.05, 0.0, 0.5, "each", "µ sees l_i / its running mean, λ_i >= 0.5/T"
    ),
    "validation": Candidate(
        1.0,
        0.1,
        0.05,
        0.0,
        0.0,
        None,
        "ε = 1, µ descends a validation batch one step ahead",
        validation=True,
    ),
    "validation_floor": Candidate(
        1.0, 0.1, 0.05, 0.0, 0.8, None, "the same, every λ_i >= 0.8/T", validation=True
    ),
}
"""The YOTO configurations the suite compares; the library's default is chosen among them."""
