"""The benchmark tasks, by name: each module's ``build(scale, data_seed) -> Task``.

Scales: ``full`` (the reported runs), ``quick`` (reduced sizes for a few-minute run)
and ``tiny`` (the smoke test).
"""

from __future__ import annotations

import importlib

from benchmarks.tasks.base import FRESH, Task

__all__ = ["FRESH", "SCALES", "TASKS", "Task", "build"]

TASKS = ("depth", "segmentation", "multidigits")
SCALES = ("tiny", "quick", "full")


def build(name: str, scale: str, data_seed: int = 0, train_size: int | str | None = None) -> Task:
    """The task `name` at `scale`, with its data drawn from `data_seed`.

    ``train_size``: None for the scale's training split; a larger int for that many
    training examples (the first ones, validation and test unchanged); ``"fresh"`` for
    steps x batch examples that the batches walk through once, in a shuffled order:
    every batch holds new examples, as in a large-data regime.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}.")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; the scales are {', '.join(SCALES)}.")
    return importlib.import_module(f"benchmarks.tasks.{name}").build(scale, data_seed, train_size)
