"""The benchmark tasks, by name: each module's ``build(scale, data_seed) -> Task``.

Scales: ``full`` (the reported runs), ``quick`` (reduced sizes for a few-minute run)
and ``tiny`` (the smoke test).
"""

from __future__ import annotations

import importlib

from benchmarks.tasks.base import Task

TASKS = ("depth", "segmentation", "multidigits")
SCALES = ("tiny", "quick", "full")


def build(name: str, scale: str, data_seed: int = 0) -> Task:
    """The task `name` at `scale`, with its data drawn from `data_seed`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}.")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; the scales are {', '.join(SCALES)}.")
    return importlib.import_module(f"benchmarks.tasks.{name}").build(scale, data_seed)
