"""Benchmark: one YOTO run against the best of a 9-run grid search and random search.

    python -m benchmarks.run [--quick [--all]] [--tasks a,b] [--seeds N] [--out DIR]
                             [--methods a,b] [--scale tiny|quick|full] [--no-studies]
                             [--no-sequential]

``--quick`` runs `QUICK_METHODS`, one or two methods of each kind (``make demo``);
``--quick --all`` and the full mode run every default row.

Writes ``results.json``, ``results.md`` and PNG plots to ``--out`` (see
benchmarks/README.md for the tasks, methods, studies and how to read the results).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

import jax
import numpy as np
from tqdm import tqdm

import yoto_jax
from benchmarks import harness, record, regimes, report, search_methods, studies, tasks
from benchmarks.methods import GRADIENT_METHODS, GRID_VALUES, METHODS, REPRESENTATION_METHODS

ALL_METHODS = (*METHODS, *search_methods.SEARCHES)
"""The default rows; ``--methods`` may also name the extra searches, PCGrad, MGDA and
CAGrad, and the representation-mode rows (``<name>_rep``)."""
TRAINED = {**METHODS, **GRADIENT_METHODS, **REPRESENTATION_METHODS}
QUICK_METHODS = (
    *("yoto", "yoto_paper", "yoto_previous", "grid_best", "random_best", "equal"),
    *("uncertainty", "dwa", "auto_lambda", "aligned_mtl", "upgrad", "halving_best"),
)
"""The quick mode's rows: YOTO's three settings and the grid, random search and equal
weights (two shared programs), two loss-weighting methods, Auto-λ's lookahead, two
gradient-combination methods and successive halving; keeps ``make demo`` near 2 min."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, quick scale, reduced studies")
    parser.add_argument("--tasks", default=",".join(tasks.TASKS), help="comma-separated tasks")
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods, or 'none' (default: every default row; with --quick, "
        "QUICK_METHODS unless --all)",
    )
    parser.add_argument(
        "--all", action="store_true", help="with --quick: every default row, not QUICK_METHODS"
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 5, or 1 quick)")
    parser.add_argument("--scale", choices=tasks.SCALES, default=None, help="task sizes")
    parser.add_argument("--out", type=Path, default=Path("results"), help="output directory")
    parser.add_argument("--no-studies", action="store_true", help="skip the ρ/ε/µ-lr studies")
    parser.add_argument(
        "--no-sequential",
        action="store_true",
        help="skip timing the grid run one by one (always skipped with --quick)",
    )
    parser.add_argument(
        "--regimes", action="store_true", help="also run the regime map (benchmarks/regimes.py)"
    )
    parser.add_argument(
        "--fast-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="XLA:CPU flags that compile ~2.5x faster for about the same step time "
        "(default: on with --quick; see FAST_COMPILE_FLAGS)",
    )
    parser.add_argument(
        "--compilation-cache",
        type=Path,
        default=ROOT / ".jax_cache",
        help="JAX's persistent compilation cache: a later run reuses the compiled programs "
        "(default: .jax_cache in the repository; 'none' turns it off)",
    )
    args = parser.parse_args(argv)
    args.fast_compile = args.quick if args.fast_compile is None else args.fast_compile
    args.no_sequential = args.no_sequential or args.quick
    args.tasks = _names(args.tasks, tasks.TASKS, "task", parser)
    if args.methods is None:
        args.methods = ",".join(QUICK_METHODS if args.quick and not args.all else ALL_METHODS)
    args.methods = (
        []
        if args.methods == "none"
        else search_methods.available(
            _names(
                args.methods,
                (
                    *ALL_METHODS,
                    *search_methods.EXTRA_SEARCHES,
                    *GRADIENT_METHODS,
                    *REPRESENTATION_METHODS,
                ),
                "method",
                parser,
            )
        )
    )
    args.scale = args.scale or ("quick" if args.quick else "full")
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 5)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}.")
    return args


FAST_COMPILE_FLAGS = (
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_backend_optimization_level=2",
    "--xla_llvm_disable_expensive_passes=true",
)
"""XLA:CPU compiler flags for the quick mode. A quick run compiles one training program
per method and task (about 50), each in 3-5 s with XLA's defaults, which is most of
its time; with these flags a program compiles about 2.5x faster (measured on the depth
task: 1.95 s against 5.07 s) and trains at the same speed (2.45 s against 2.50 s)."""


def use_compilation_cache(directory: Path) -> None:
    """Every compiled program goes to (and comes from) ``directory``: a second run of
    the same programs skips most of their compilation, which is most of a quick run."""
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def use_fast_compile() -> bool:
    """Adds ``FAST_COMPILE_FLAGS`` to ``XLA_FLAGS`` (before JAX starts its backend) if this
    JAX's XLA knows them: XLA aborts on an unknown flag, and flags come and go between
    versions, so a subprocess tries them first. Returns whether they were added."""
    flags = " ".join([*os.environ.get("XLA_FLAGS", "").split(), *FAST_COMPILE_FLAGS])
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices('cpu')"],
        env={**os.environ, "XLA_FLAGS": flags},
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        print("this XLA does not know the fast-compile flags: compiling with its defaults")
        return False
    os.environ["XLA_FLAGS"] = flags
    return True


def _names(text: str, known: tuple[str, ...], what: str, parser) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        parser.error(f"unknown {what}(s) {unknown or text!r}; choose from {', '.join(known)}.")
    return names


def _method_entry(task: tasks.Task, run: harness.MethodRun, with_curves: bool) -> dict[str, Any]:
    """A method's results.json entry: the selected configuration's numbers per seed."""
    results, selected = run.results, run.selected
    weights = harness.pick(results["weights"], selected)
    entry = {
        "test": harness.pick(results["test"][task.metric], selected).tolist(),
        "val": harness.pick(results["val"][task.metric], selected).tolist(),
        "runs_per_seed": int(results["weights"].shape[1]),
        "wall_s": run.timed.run_s,
        "compile_s": run.timed.compile_s,
        "eval_s": run.timed.eval_s,
        "weights": weights.tolist(),
        "relative_weights": np.asarray(yoto_jax.relative_weights(weights)).tolist(),
        "test_metrics": {k: harness.pick(v, selected).tolist() for k, v in results["test"].items()},
        "selected": selected.tolist(),
        "summary": run.method.summary,
    }
    if with_curves:
        curves = {k: harness.pick(v, selected) for k, v in results["curves"].items()}
        entry["curves"] = {k: v.tolist() for k, v in curves.items()}
        # yoto_jax.weight_report's flag on the final λ and the last logged training losses
        entry["collapsed"] = harness.collapse_flags(weights, curves["train"][:, -1]).tolist()
    return entry


def _configs_entry(task: tasks.Task, run: harness.MethodRun) -> dict[str, Any]:
    """Every configuration's weights and metrics: [configuration][seed]."""
    configs = [[c["weights"] for c in group] for group in run.configs]
    return {
        "weights": np.asarray(configs[0]).tolist(),
        "weights_per_seed": np.asarray(configs).tolist(),
        "test": run.results["test"][task.metric].T.tolist(),
        "val": run.results["val"][task.metric].T.tolist(),
    }


def _timing(task: tasks.Task, grid: harness.MethodRun, sequential: harness.Timed) -> dict:
    """The grid's vmapped program against its seed-0 configurations one by one. The
    vmapped program is the one the grid shares with random search and equal weights
    (every run in it costs the same), so its per-run time is its share of that program."""
    vmapped_runs = grid.results["weights"].shape[0] * grid.results["weights"].shape[1]
    per_run_vmapped = grid.timed.run_s / vmapped_runs
    per_run_sequential = sequential.run_s / len(sequential.results["weights"])
    difference = sequential.results["test"][task.metric] - grid.results["test"][task.metric][0]
    return {
        "vmapped_s": grid.timed.run_s,
        "vmapped_runs": vmapped_runs,
        "vmapped_compile_s": grid.timed.compile_s,
        "sequential_s": sequential.run_s,
        "sequential_runs": len(sequential.results["weights"]),
        "sequential_compile_s": sequential.compile_s,
        "per_run_vmapped_s": per_run_vmapped,
        "per_run_sequential_s": per_run_sequential,
        "speedup": per_run_sequential / per_run_vmapped,
        "max_abs_test_difference": float(np.max(np.abs(difference))),
    }


def _study_entries(task: tasks.Task, grid: studies.Grid, run: harness.MethodRun) -> dict:
    """Per study, [µ-lr factor][value][seed] tables of the test/val metric and final λ."""
    points, results = studies.points(grid), run.results

    def table(point_of, values: tuple[float, ...]) -> dict[str, Any]:
        def gather(x: np.ndarray) -> list:
            index = [[points.index(point_of(v, f)) for v in values] for f in grid.mu_lr_factors]
            return np.moveaxis(x[:, np.asarray(index)], 0, 2).tolist()

        return {
            "test": gather(results["test"][task.metric]),
            "val": gather(results["val"][task.metric]),
            "weights": gather(results["weights"]),
            "curves_weights": gather(results["curves"]["weights"]),
        }

    eps = table(lambda v, f: studies.Point(v, yoto_jax.DEFAULT_RHO, f), grid.eps)
    rho = table(lambda v, f: studies.Point(yoto_jax.DEFAULT_EPS, v, f), grid.rho)
    return {"eps": eps, "rho": rho, "wall_s": run.timed.run_s, "compile_s": run.timed.compile_s}


def run_task(name: str, args: argparse.Namespace, bar: tqdm) -> tuple[dict, dict | None]:
    """Every method (and the timing and studies) on one task: its results.json entries."""
    bar.set_description(f"{name}: data")
    start = time.perf_counter()
    task = tasks.build(name, args.scale)
    programs = harness.Programs(task)
    seeds = list(range(args.seeds))
    entry = {
        "description": task.description,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "loss_names": list(task.loss_names),
        "training": task.training._asdict(),
        "split_sizes": {
            s: int(jax.tree.leaves(getattr(task.data, s))[0].shape[0])
            for s in ("train", "val", "test")
        },
        "build_s": time.perf_counter() - start,
        "methods": {},
    }
    bar.update()
    grid = studies.grid(args.scale != "full")
    trained = [TRAINED[m] for m in args.methods if m not in search_methods.ALL_SEARCHES]
    study_method = None if args.no_studies else studies.method(grid)
    runs = harness.run_methods(
        programs, trained + ([] if study_method is None else [study_method]), seeds, bar
    )
    for method in args.methods:
        if method in search_methods.ALL_SEARCHES:
            bar.set_description(f"{name}: {method}")
            entry["methods"][method] = search_methods.run(method, programs, seeds)
            bar.update()
        else:
            entry["methods"][method] = _method_entry(
                task, runs[method], with_curves=method.startswith("yoto")
            )
    for method, key in (("grid_best", "grid"), ("random_best", "random")):
        if method in runs:
            entry[key] = _configs_entry(task, runs[method])
    if "grid_best" in runs and not args.no_sequential:
        bar.set_description(f"{name}: grid one by one")
        grid_run = runs["grid_best"]
        sequential = programs.run_sequentially(
            grid_run.method.weighting, grid_run.configs[0], harness.seed_key(seeds[0])
        )
        entry["timing"] = _timing(task, grid_run, sequential)
        bar.update()
    study = None if args.no_studies else _study_entries(task, grid, runs[study_method.name])
    entry["total_s"] = time.perf_counter() - start
    return entry, study


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fast_compile:
        args.fast_compile = use_fast_compile()
    if str(args.compilation_cache) != "none":
        use_compilation_cache(args.compilation_cache)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    grid = studies.grid(args.scale != "full")
    results = {
        "config": {
            "scale": args.scale,
            "seeds": args.seeds,
            "tasks": args.tasks,
            "methods": args.methods,
            "default_eps": yoto_jax.DEFAULT_EPS,
            "default_rho": yoto_jax.DEFAULT_RHO,
            "grid_values": list(GRID_VALUES),
            **record.provenance("benchmarks.run", argv),
            "compilation_cache": str(args.compilation_cache),
        },
        "tasks": {},
        "studies": {
            "eps": {
                "values": list(grid.eps),
                "mu_lr_factors": list(grid.mu_lr_factors),
                "tasks": {},
            },
            "rho": {
                "values": list(grid.rho),
                "mu_lr_factors": list(grid.mu_lr_factors),
                "tasks": {},
            },
        },
    }
    stages = 1 + len(args.methods) + (not args.no_sequential) + (not args.no_studies)
    stages += len(regimes.DATA_LEVELS) if args.regimes else 0
    if args.regimes:
        results["regimes"] = {}
    with tqdm(total=stages * len(args.tasks), unit="stage") as bar:
        for name in args.tasks:
            if args.regimes:
                seeds = list(range(args.seeds))
                results["regimes"][name] = regimes.run_task(name, args.scale, seeds, bar)
            results["tasks"][name], study = run_task(name, args, bar)
            if study is not None:
                for which in ("eps", "rho"):
                    results["studies"][which]["tasks"][name] = study[which]
                results["tasks"][name]["studies_s"] = study["wall_s"]
                results["tasks"][name]["studies_compile_s"] = study["compile_s"]
    results["config"]["wall_s"] = time.perf_counter() - start
    record.write_json(args.out / "results.json", results)
    report.write(results, args.out)
    for line in report.summary_lines(results):
        print(line)
    print(
        f"wrote {args.out}/results.json, results.md and plots in {results['config']['wall_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
