"""The suite's summary (paired comparisons, the leave-one-task-out choice), its tables and
its figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import yoto_jax
from benchmarks.suite import analysis
from benchmarks.suite.candidates import CANDIDATES
from yoto_jax.diagnostics import DEFAULT_OFF_FRACTION

REFERENCES = ("equal", "grid_best")

SWITCHED_OFF = DEFAULT_OFF_FRACTION
"""An auxiliary whose free weight softmax([0, µ])_i ends below this fraction of uniform
(0.05/T) counts as switched off (``weight_report``'s default threshold)."""


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1))}


def summarise(
    raw: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
    described: Mapping[str, Mapping[str, Any]],
    candidates: Sequence[str],
) -> dict[str, Any]:
    """Per task: the references' metrics and every candidate's paired comparison against
    ``equal`` and ``grid_best``; then the leave-one-task-out picks and the overall pick."""
    tasks: dict[str, Any] = {}
    for name, rows in raw.items():
        higher = described[name]["higher_is_better"]
        val = {row: values["val"] for row, values in rows.items()}
        test = {row: values["test"] for row, values in rows.items()}
        test["grid_best"] = analysis.grid_best(val, test, higher)
        methods = {}
        for method in ("equal", "primary_only", "grid_best", *candidates):
            entry: dict[str, Any] = {
                "test": _stats(test[method]),
                "per_seed": test[method].tolist(),
            }
            for reference in REFERENCES:
                if method != reference:
                    entry[f"vs_{reference}"] = analysis.paired(
                        test[method], test[reference], higher
                    )._asdict()
            if method in rows:
                entry["weights"] = np.mean(rows[method]["weights"], 0).tolist()
                entry["train_losses"] = np.mean(rows[method]["train_losses"], 0).tolist()
                entry["val_losses"] = np.mean(rows[method]["val_losses"], 0).tolist()
                free = np.asarray(jax.vmap(yoto_jax.loss_weights)(jnp.asarray(rows[method]["mu"])))
                entry["switched_off_seeds"] = int(
                    np.sum(np.min(free[:, 1:], axis=1) < SWITCHED_OFF / free.shape[1])
                )
            methods[method] = entry
        tasks[name] = {**described[name], "methods": methods}

    z_equal = {
        task: {c: tasks[task]["methods"][c]["vs_equal"]["z"] for c in candidates} for task in tasks
    }
    picks = analysis.leave_one_task_out(z_equal) if len(tasks) > 1 else {}
    held_out = {
        task: {
            "pick": pick,
            "vs_equal": tasks[task]["methods"][pick]["vs_equal"],
            "vs_grid_best": tasks[task]["methods"][pick]["vs_grid_best"],
        }
        for task, pick in picks.items()
    }
    ranking = sorted(
        candidates,
        key=lambda c: (
            min(z_equal[t][c] for t in tasks),
            float(np.mean([z_equal[t][c] for t in tasks])),
        ),
        reverse=True,
    )
    return {
        "tasks": tasks,
        "held_out": held_out,
        "choice": analysis.choose(z_equal, list(tasks)),
        "ranking": ranking,
    }


def _cell(paired: Mapping[str, Any], digits: int = 3) -> str:
    verdict = analysis.Paired(**paired).verdict
    text = f"{paired['mean']:+.{digits}f} ({paired['z']:+.1f}σ)"
    return f"**{text}**" if verdict == "loss" else text


def markdown(summary: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    tasks = summary["tasks"]
    candidates = [m for m in next(iter(tasks.values()))["methods"] if m in CANDIDATES]
    lines = [
        "# YOTO's defaults, chosen on the task suite",
        "",
        (
            f"`{meta['command']}` — {meta['date']}, {meta['machine']} ({meta['cpu_count']} cores), "
            f"jax {meta['jax']} on {meta['backend']}; {meta['settings']['seeds']} seeds, "
            f"{meta['settings']['budget']['steps']} Adam steps at "
            f"{meta['settings']['budget']['learning_rate']:g}, batch "
            f"{meta['settings']['budget']['batch_size']}; {sum(meta['seconds'].values()):.0f} s."
        ),
        "",
        (
            "Test metric (mean ± std over seeds) of the references; for every YOTO candidate the "
            "mean paired difference against `equal` (positive = better; in parentheses the "
            "difference over its standard error; **bold**: more than 2 standard errors worse)."
        ),
        "",
    ]
    header = ["task (metric)", "equal", "primary only", "grid_best", *candidates]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, task in tasks.items():
        methods = task["methods"]
        arrow = "↑" if task["higher_is_better"] else "↓"
        row = [f"{name} ({task['metric_name']} {arrow})"]
        row += [
            f"{methods[r]['test']['mean']:.4f} ± {methods[r]['test']['std']:.4f}"
            for r in ("equal", "primary_only", "grid_best")
        ]
        row += [_cell(methods[c]["vs_equal"]) for c in candidates]
        lines.append("| " + " | ".join(row) + " |")

    lines += ["", "## Every candidate over the suite", ""]
    lines += [
        (
            "| candidate | what | worst z vs equal | mean z vs equal | W/T/L vs equal | "
            "W/T/L vs grid_best |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for c in summary["ranking"]:
        z = [tasks[t]["methods"][c]["vs_equal"]["z"] for t in tasks]
        lines.append(
            f"| `{c}` | {CANDIDATES[c].description} | {min(z):+.1f} | {np.mean(z):+.1f} | "
            f"{_verdicts(tasks, c, 'vs_equal')} | {_verdicts(tasks, c, 'vs_grid_best')} |"
        )

    if summary["held_out"]:
        lines += ["", "## Leave one task out", ""]
        lines += [
            "Each task's pick is the candidate with the best worst case on the *other* tasks.",
            "",
            "| held-out task | pick | vs equal | vs grid_best |",
            "|---|---|---|---|",
        ]
        for task, entry in summary["held_out"].items():
            lines.append(
                f"| {task} | `{entry['pick']}` | {_cell(entry['vs_equal'])} "
                f"{analysis.Paired(**entry['vs_equal']).verdict} | "
                f"{_cell(entry['vs_grid_best'])} "
                f"{analysis.Paired(**entry['vs_grid_best']).verdict} |"
            )
        lines += ["", f"Chosen on every task: `{summary['choice']}`.", ""]

    lines += [
        "## The weights each candidate ends with",
        "",
        (
            "Mean over seeds, primary first; in brackets the seeds whose smallest auxiliary "
            f"free weight softmax([0, µ])_i ended below {SWITCHED_OFF}/T (switched off)."
        ),
        "",
    ]
    lines += ["| task | " + " | ".join(candidates) + " |", "|" + "---|" * (len(candidates) + 1)]
    for name, task in tasks.items():
        cells = []
        for c in candidates:
            method = task["methods"][c]
            off = method["switched_off_seeds"]
            weights = " / ".join(f"{w:.2f}" for w in method["weights"])
            cells.append(weights + (f" [{off}]" if off else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _verdicts(tasks: Mapping[str, Any], candidate: str, field: str) -> str:
    verdicts = [analysis.Paired(**tasks[t]["methods"][candidate][field]).verdict for t in tasks]
    return "/".join(str(verdicts.count(v)) for v in ("win", "tie", "loss"))


def plot(summary: Mapping[str, Any], path: Path) -> None:
    """A heat map of every candidate's z against ``equal`` on every task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = summary["tasks"]
    candidates = summary["ranking"]
    z = np.array([[tasks[t]["methods"][c]["vs_equal"]["z"] for t in tasks] for c in candidates])
    figure, axes = plt.subplots(figsize=(1.0 + 0.8 * len(tasks), 1.0 + 0.45 * len(candidates)))
    image = axes.imshow(z, cmap="RdBu", vmin=-analysis.Z_CLIP, vmax=analysis.Z_CLIP)
    axes.set_xticks(range(len(tasks)), list(tasks), rotation=45, ha="right")
    axes.set_yticks(range(len(candidates)), candidates)
    for (i, j), value in np.ndenumerate(z):
        axes.text(j, i, f"{value:+.0f}", ha="center", va="center", fontsize=7)
    figure.colorbar(image, label="paired difference to equal / its standard error")
    axes.set_title("YOTO candidates against equal weights (blue: better)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
