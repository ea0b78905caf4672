"""The validation-driven learned rate: the hypergradient of a held-out loss against the
training one, on the three tasks.

Per task (the 3×3 grid's best fixed loss weights), in one vmapped program per row:
Adam's 5-point grid (as in ``benchmarks.learning_rate_horizon``), and the learned rate
at ``horizon`` 1 and ``HORIZON`` whose hypergradient reads either the training
gradient or, through the trainer's ``validation_fn``, the gradient of the primary loss
on a batch of the validation split (one more gradient a step), each from 0.1× the
full-scale oracle rate and from 10× with ``ramp_from=RAMP_FROM``. Per cell: the
seed-mean test metric, whether it is within the grid's seed std of the grid's, the
final α, and the primary loss on the validation split (what the held-out
hypergradient descends; the test metric is not that loss).

Run: ``python -m benchmarks.learning_rate --validation [--scale full] [--seeds 5] [--out DIR]``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks import record
from benchmarks import tasks as task_suite
from benchmarks.learning_rate_horizon import STARTS, adam_grid, learned, run
from benchmarks.learning_rate_tasks import FULL_ORACLE
from yoto_jax.learning_rate import HORIZON

HORIZONS = (1.0, HORIZON)
SOURCES = {"training": False, "held-out": True}
"""Where the hypergradient's gradient comes from, and whether that is the validation
batch."""


def within_noise(cell: list[float], grid: list[float], higher_is_better: bool) -> bool:
    """Whether ``cell``'s seed mean is behind ``grid``'s by no more than the grid's
    seed std (ahead counts as within)."""
    behind = np.mean(grid) - np.mean(cell) if higher_is_better else np.mean(cell) - np.mean(grid)
    return bool(behind <= np.std(grid))


def counts(stored: dict[str, Any]) -> dict[str, int]:
    """Per cell name (H, source, start): on how many tasks it is within the grid's noise."""
    found: dict[str, int] = {}
    for name in task_suite.TASKS:
        for label, cell in stored[name]["cells"].items():
            found[label] = found.get(label, 0) + int(cell["within_noise"])
    return found


def main(scale: str, seeds: int, out: str | None) -> dict[str, Any]:
    """Runs the study, prints a table and the counts, and with ``out`` writes
    ``out/validation_{scale}.json`` (per-seed metrics, α and validation losses)."""
    stored: dict[str, Any] = {
        "config": {**record.provenance("benchmarks.learning_rate"), "scale": scale, "seeds": seeds}
    }
    print(stored["config"]["machine"], stored["config"]["command"])
    names = list(task_suite.TASKS)
    bar = tqdm(total=len(names) * (1 + len(HORIZONS) * len(SOURCES)), desc="programs")
    for name in names:
        task = task_suite.build(name, scale)
        grid = adam_grid(task, seeds)
        bar.update()
        starts = [FULL_ORACLE[name] * factor for factor, _ in STARTS.values()]
        ramps = [int(ramp) for _, ramp in STARTS.values()]
        cells = {}
        for horizon in HORIZONS:
            for source, validation in SOURCES.items():
                test, _, alpha, val_loss = run(
                    task, learned(horizon), starts, ramps, seeds, validation
                )
                bar.update()
                for start, t, a, v in zip(STARTS, test, alpha, val_loss):
                    label = f"H={horizon:g}, {source}, from {start}"
                    cells[label] = {
                        "test": t.tolist(),
                        "final_rate": a.tolist(),
                        "val_loss": v.tolist(),
                        "within_noise": within_noise(t, grid["picked"], task.higher_is_better),
                    }
                    print(
                        f"  {label}: {t.mean():.4f} ± {t.std():.4f}"
                        f"{' (within)' if cells[label]['within_noise'] else ''}"
                        f"  final α {np.exp(np.log(a).mean()):.2g}  val loss {v.mean():.4f}"
                    )
        stored[name] = {"grid": grid, "cells": cells}
    bar.close()
    stored["within_noise_tasks"] = counts(stored)
    for label, count in stored["within_noise_tasks"].items():
        print(f"{label}: within the grid's noise on {count} of {len(names)} tasks")
    if out is not None:
        print("wrote", record.write_json(Path(out) / f"validation_{scale}.json", stored))
    return stored
