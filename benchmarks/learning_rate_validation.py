"""The validation-driven learned rate: the hypergradient of a held-out loss against the
training one, on the three tasks.

Per task, with the 3×3 grid's best fixed loss weights and with YOTO, in one vmapped
program per row: Adam's 5-point grid (as in ``benchmarks.learning_rate_horizon``; with
YOTO, Adam's rate grid for YOTO), and the learned rate
at ``horizon`` 1 and ``HORIZON`` whose hypergradient reads either the training
gradient or, through the trainer's ``validation_fn``, the gradient of the primary loss
on a batch of the validation split (one more gradient a step), each from 0.1× the
full-scale oracle rate (of the grid's weights, for both weightings) and from 10× with
``ramp_from=RAMP_FROM``. Per cell: the
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
from benchmarks.learning_rate_tasks import FULL_ORACLE, weightings, within_noise
from yoto_jax.learning_rate import HORIZON

HORIZONS = (1.0, HORIZON)
SOURCES = {"training": False, "held-out": True}
"""Where the hypergradient's gradient comes from, and whether that is the validation
batch."""


def counts(stored: dict[str, Any], weighting: str) -> dict[str, int]:
    """Per cell name (H, source, start): on how many tasks it is within the grid's noise
    with ``weighting``."""
    found: dict[str, int] = {}
    for name in task_suite.TASKS:
        for label, cell in stored[name][weighting]["cells"].items():
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
    kinds = list(weightings(task_suite.build(names[0], scale)))
    bar = tqdm(total=len(names) * len(kinds) * (1 + len(HORIZONS) * len(SOURCES)), desc="programs")
    for name in names:
        task = task_suite.build(name, scale)
        starts = [FULL_ORACLE[name] * factor for factor, _ in STARTS.values()]
        ramps = [int(ramp) for _, ramp in STARTS.values()]
        stored[name] = {}
        for weighting in kinds:
            grid = adam_grid(task, seeds, weighting)
            bar.update()
            cells = {}
            for horizon in HORIZONS:
                for source, validation in SOURCES.items():
                    test, _, alpha, val_loss = run(
                        task, learned(horizon), starts, ramps, seeds, validation, weighting
                    )
                    bar.update()
                    for start, t, a, v in zip(STARTS, test, alpha, val_loss):
                        label = f"H={horizon:g}, {source}, from {start}"
                        within = within_noise(t, grid["picked"], task.higher_is_better)
                        cells[label] = {
                            "test": t.tolist(),
                            "final_rate": a.tolist(),
                            "val_loss": v.tolist(),
                            "within_noise": within,
                        }
                        print(
                            f"  {label}: {t.mean():.4f} ± {t.std():.4f}"
                            f"{' (within)' if within else ''}"
                            f"  final α {np.exp(np.log(a).mean()):.2g}  val loss {v.mean():.4f}"
                        )
            stored[name][weighting] = {"grid": grid, "cells": cells}
    bar.close()
    stored["within_noise_tasks"] = {kind: counts(stored, kind) for kind in kinds}
    for kind, found in stored["within_noise_tasks"].items():
        for label, count in found.items():
            print(f"{kind}, {label}: within the grid's noise on {count} of {len(names)} tasks")
    if out is not None:
        print("wrote", record.write_json(Path(out) / f"validation_{scale}.json", stored))
    return stored
