"""Paired comparisons over seeds and the leave-one-task-out choice of a default.

A method's score on a task is the mean over seeds of its paired difference to a
reference (``equal`` or ``grid_best``), signed so that positive is better, in units of
its standard error: ``z = mean / se``. The default is chosen **worst case first**: the
candidate whose smallest z against ``equal`` over the tasks is largest, the mean z
(clipped to ±``Z_CLIP``, so that one task with a tiny standard error cannot decide)
breaking ties.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

Z_CLIP = 10.0
"""|z| beyond which a paired difference counts as decided (the mean's clip)."""

RESOLUTION = 1e-3
"""Relative to the reference's mean: a per-seed difference this small is a tie, and the
standard error is floored at it."""

TIE = 2.0
"""|z| below which a paired difference is a tie."""


class Paired(NamedTuple):
    mean: float  # mean paired difference, positive = better than the reference
    se: float  # its standard error over seeds
    z: float  # mean / se, clipped to ±Z_CLIP (0 when both are 0)
    wins: int
    ties: int
    losses: int

    @property
    def verdict(self) -> str:
        return "win" if self.z >= TIE else "loss" if self.z <= -TIE else "tie"


def paired(values: np.ndarray, reference: np.ndarray, higher_is_better: bool) -> Paired:
    """The paired comparison of per-seed ``values`` against ``reference``."""
    diff = (np.asarray(values, float) - np.asarray(reference, float)) * (
        1.0 if higher_is_better else -1.0
    )
    mean = float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
    # Differences below RESOLUTION of the reference's size are ties, whatever their
    # spread: the standard error is floored there, so that z cannot blow up on a
    # difference of one test example repeated over seeds.
    resolution = RESOLUTION * max(float(np.abs(reference).mean()), 1e-12)
    z = mean / max(se, resolution)
    tie = np.abs(diff) <= resolution
    return Paired(
        mean,
        se,
        float(np.clip(z, -Z_CLIP, Z_CLIP)),
        int(np.sum(~tie & (diff > 0))),
        int(np.sum(tie)),
        int(np.sum(~tie & (diff < 0))),
    )


def grid_best(val: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], higher: bool):
    """Per seed, the test metric of the grid row best on validation (rows ``grid_*``)."""
    names = [name for name in val if name.startswith("grid_")]
    val_matrix = np.stack([val[name] for name in names])
    test_matrix = np.stack([test[name] for name in names])
    best = np.argmax(val_matrix, 0) if higher else np.argmin(val_matrix, 0)
    return test_matrix[best, np.arange(val_matrix.shape[1])]


def choose(z_by_task: Mapping[str, Mapping[str, float]], tasks: Sequence[str]) -> str:
    """The candidate with the largest worst z over ``tasks`` (then the largest mean z)."""

    def key(candidate: str) -> tuple[float, float]:
        scores = [z_by_task[task][candidate] for task in tasks]
        return min(scores), float(np.mean(scores))

    candidates = list(next(iter(z_by_task.values())))
    return max(candidates, key=key)


def leave_one_task_out(z_by_task: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """For each task, the candidate :func:`choose` picks from the *other* tasks."""
    tasks = list(z_by_task)
    return {task: choose(z_by_task, [t for t in tasks if t != task]) for task in tasks}
