"""Run the task suite and choose YOTO's default by leave-one-task-out.

    python -m benchmarks.suite [--quick] [--tasks a,b] [--candidates a,b] [--seeds N]
                               [--out DIR]

For every task: the fixed rows (grid, ``equal``, ``primary_only``) and every YOTO
candidate, paired over seeds. Writes ``suite.json`` (every run's metrics and weights, the
paired comparisons and the choice), ``suite.md`` (the tables) and ``suite.png`` to
``--out``. Each task's raw results are kept in ``--out/raw`` and reused by a rerun with
the same budget and seeds, which trains only the rows they lack: an interrupted run
continues where it stopped, and a new candidate costs only its own program.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from benchmarks import record
from benchmarks.suite import report
from benchmarks.suite.candidates import CANDIDATES, fixed_rows
from benchmarks.suite.tasks import TASKS
from benchmarks.suite.train import (
    FULL,
    QUICK,
    fixed_weighting,
    run_rows,
    yoto_config,
    yoto_weighting,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 300 steps: a smoke run")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--seeds", type=int, default=None, help="default: 5 (quick: 2)")
    parser.add_argument("--steps", type=int, default=None, help="override the budget's steps")
    parser.add_argument("--out", default="results/suite")
    args = parser.parse_args(argv)
    for name in args.tasks.split(","):
        if name not in TASKS:
            parser.error(f"unknown task {name!r}; the tasks: {', '.join(TASKS)}")
    for name in args.candidates.split(","):
        if name not in CANDIDATES:
            parser.error(f"unknown candidate {name!r}; the candidates: {', '.join(CANDIDATES)}")
    return args


def describe(task) -> dict[str, Any]:
    """What the reports need to know of a task."""
    fields = ("description", "loss_names", "roles", "metric_name", "higher_is_better")
    return {field: getattr(task, field) for field in fields}


def run_task(name: str, candidates: list[str], seeds: int, budget, stored: dict) -> dict:
    """The rows of one task that ``stored["rows"]`` lacks, added to it: the fixed rows
    as one program, the missing YOTO candidates as one program per ``normalize``."""
    task = TASKS[name]()
    num_losses = len(task.loss_names)
    rows = stored.setdefault("rows", {})
    if "equal" not in rows:
        fixed = {k: {"weights": v} for k, v in fixed_rows(num_losses).items()}
        rows.update(run_rows(task, fixed_weighting, fixed, seeds, budget))
    missing = [c for c in candidates if c not in rows]
    for kind in dict.fromkeys((CANDIDATES[c].normalize, CANDIDATES[c].validation) for c in missing):
        group = {
            c: yoto_config(CANDIDATES[c], num_losses, budget)
            for c in missing
            if (CANDIDATES[c].normalize, CANDIDATES[c].validation) == kind
        }
        rows.update(run_rows(task, yoto_weighting(*kind), group, seeds, budget))
    stored["task"] = describe(task)
    return stored


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    budget = QUICK if args.quick else FULL
    if args.steps is not None:
        budget = budget._replace(steps=args.steps)
    seeds = args.seeds or (2 if args.quick else 5)
    candidates = args.candidates.split(",")
    out = Path(args.out)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    settings = {"budget": budget._asdict(), "seeds": seeds}
    raw: dict[str, dict[str, Any]] = {}
    described: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for name in tqdm(args.tasks.split(","), desc="suite tasks"):
        path = out / "raw" / f"{name}.json"
        stored = json.loads(path.read_text()) if path.exists() else {}
        if {k: stored.get("settings", {}).get(k) for k in settings} != settings:
            stored = {}
        if "equal" not in stored.get("rows", {}) or any(
            c not in stored["rows"] for c in candidates
        ):
            start = time.perf_counter()
            stored = jax.tree.map(np.asarray, stored, is_leaf=lambda x: isinstance(x, list))
            stored = run_task(name, candidates, seeds, budget, stored)
            stored["settings"] = settings
            stored["seconds"] = stored.get("seconds", 0.0) + time.perf_counter() - start
            stored = jax.tree.map(lambda x: np.asarray(x).tolist(), stored)
            record.write_json(path, stored, indent=None)
        rows = stored["rows"]
        raw[name] = {
            row: jax.tree.map(np.asarray, rows[row], is_leaf=lambda x: isinstance(x, list))
            for row in rows
            if row in candidates or row in fixed_rows(len(stored["task"]["loss_names"]))
        }
        described[name] = stored["task"]
        seconds[name] = stored["seconds"]

    summary = report.summarise(raw, described, candidates)
    meta = {
        **record.provenance("benchmarks.suite", argv),
        "settings": settings,
        "seconds": seconds,
    }
    record.write_json(out / "suite.json", {"meta": meta, **summary})
    (out / "suite.md").write_text(report.markdown(summary, meta))
    report.plot(summary, out / "suite.png")
    print((out / "suite.md").read_text())


if __name__ == "__main__":
    main()
