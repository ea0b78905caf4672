"""results.md, the plots and the one-line summaries, from the results.json dictionary.

python -m benchmarks.report DIR    # rewrites DIR/results.md and DIR/*.png from DIR/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

TIE = 1e-3
"""|YOTO − grid_best| below this (in metric units) counts as a tie."""


def _mean_std(values: Any) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    std = float(np.std(values, axis=-1, ddof=1)) if values.shape[-1] > 1 else float("nan")
    return float(np.mean(values)), std


def _fmt(values: Any) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.4f}" if np.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def comparison(task: dict[str, Any]) -> dict[str, Any]:
    """YOTO − grid_best per seed, oriented so that a positive number favours YOTO."""
    yoto = np.asarray(task["methods"]["yoto"]["test"])
    grid = np.asarray(task["methods"]["grid_best"]["test"])
    return {"difference": (yoto - grid).tolist(), **paired(yoto, grid, task["higher_is_better"])}


def spread(task: dict[str, Any]) -> tuple[float, float]:
    """(max − min over the grid of the seed-mean test metric, mean over configs of the seed std)."""
    test = np.asarray(task["grid"]["test"], np.float64)  # [config][seed]
    means = test.mean(axis=1)
    seed_std = float(np.mean(np.std(test, axis=1, ddof=1))) if test.shape[1] > 1 else float("nan")
    return float(means.max() - means.min()), seed_std


def summary_lines(results: dict[str, Any]) -> list[str]:
    """One line per task: YOTO against the grid's best, and whether the weights matter."""
    lines = []
    for name, task in results["tasks"].items():
        methods = task["methods"]
        parts = [f"{m} {_fmt(r['test'])}" for m, r in methods.items()]
        line = f"{name} ({task['metric']}, {'higher' if task['higher_is_better'] else 'lower'} is better): "
        line += ", ".join(parts)
        if {"yoto", "grid_best"} <= set(methods):
            c = comparison(task)
            line += f" | yoto vs grid_best W/T/L {c['wins']}/{c['ties']}/{c['losses']}"
        if "grid" in task:
            width, seed_std = spread(task)
            line += f" | grid spread {width:.4f} vs seed std {seed_std:.4f}"
        lines.append(line)
    return lines


def _task_markdown(name: str, task: dict[str, Any], seeds: int) -> list[str]:
    metric = task["metric"]
    better = "higher" if task["higher_is_better"] else "lower"
    lines = [
        f"## {name}",
        "",
        (
            f"{task['description']}. Losses: {', '.join(task['loss_names'])} (primary first). "
            f"Test metric: {metric}, {better} is better. Splits: {task['split_sizes']}; "
            f"{task['training']['steps']} Adam steps of batch {task['training']['batch_size']} "
            f"at lr {task['training']['learning_rate']}."
        ),
        "",
        (
            f"| method | test {metric} (mean ± std over {seeds} seeds) | runs per seed | wall s (all seeds) "
            "| final weights λ_i/λ_0 (seed mean) |"
        ),
        "|---|---|---|---|---|",
    ]
    for method, r in task["methods"].items():
        relative = np.mean(np.asarray(r["relative_weights"]), axis=0)
        weights = ", ".join(f"{w:.3g}" for w in relative[1:])
        lines.append(
            f"| {method} | {_fmt(r['test'])} | {r['runs_per_seed']:.3g} | {r['wall_s']:.1f} | {weights} |"
        )
    lines.append("")
    if {"yoto", "grid_best"} <= set(task["methods"]):
        diffs = ", ".join(f"{d:+.4f}" for d in comparison(task)["difference"])
        lines += [f"YOTO − grid_best per seed: {diffs} (tie: |difference| < {TIE}).", ""]
        for other in ("grid_best", "equal"):
            if other in task["methods"]:
                p = paired(
                    task["methods"]["yoto"]["test"],
                    task["methods"][other]["test"],
                    task["higher_is_better"],
                )
                lines += [
                    (
                        f"YOTO vs {other}, paired: {p['mean']:+.4f} ± {p['se']:.4f} (mean ± standard "
                        f"error, + favours YOTO), W/T/L {p['wins']}/{p['ties']}/{p['losses']}: "
                        f"{p['verdict']}."
                    ),
                    "",
                ]
    if "grid" in task:
        width, seed_std = spread(task)
        verdict = "the weights matter" if width > seed_std else "within seed noise"
        if np.isnan(seed_std):
            verdict = "one seed: no seed std"
        lines += [
            (
                f"Grid spread (max − min over the 9 configurations of the seed-mean test {metric}): "
                f"{width:.4f}; seed std (mean over configurations): {seed_std:.4f} → {verdict}."
            ),
            "",
            "| aux weights (relative) | "
            + " | ".join(_weights_label(w) for w in task["grid"]["weights"])
            + " |",
            "|---|" + "---|" * len(task["grid"]["weights"]),
            f"| test {metric} | " + " | ".join(_fmt(t) for t in task["grid"]["test"]) + " |",
            "",
        ]
    if "timing" in task:
        t = task["timing"]
        lines += [
            (
                f"Grid as one vmapped program: {t['vmapped_runs']} runs in {t['vmapped_s']:.1f} s "
                f"({t['per_run_vmapped_s']:.2f} s per run); one after another: {t['sequential_runs']} runs "
                f"in {t['sequential_s']:.1f} s ({t['per_run_sequential_s']:.2f} s per run); speed-up "
                f"{t['speedup']:.2f}x (compilation excluded: {t['vmapped_compile_s']:.1f} s and "
                f"{t['sequential_compile_s']:.1f} s). Largest test difference between the two: "
                f"{t['max_abs_test_difference']:.2g}."
            ),
            "",
        ]
    return lines


def _weights_label(weights: list[float]) -> str:
    return "(" + ", ".join(f"{w:g}" for w in weights[1:]) + ")"


def _study_markdown(results: dict[str, Any]) -> list[str]:
    lines = ["## Studies", ""]
    for which, symbol in (("eps", "ε"), ("rho", "ρ")):
        study = results["studies"][which]
        for name, table in study["tasks"].items():
            lines += [
                (
                    f"### {symbol} on {name} (test {results['tasks'][name]['metric']}, mean ± std; "
                    f"final λ_i/λ_0 in brackets)"
                ),
                "",
                "| µ lr / model lr | "
                + " | ".join(f"{symbol} = {v:g}" for v in study["values"])
                + " |",
                "|---|" + "---|" * len(study["values"]),
            ]
            for factor, row, weights in zip(
                study["mu_lr_factors"], table["test"], table["weights"]
            ):
                cells = []
                for test, w in zip(row, weights):
                    relative = np.mean(np.asarray(w), axis=0)
                    relative = relative[1:] / relative[0]
                    cells.append(f"{_fmt(test)} [{', '.join(f'{r:.2g}' for r in relative)}]")
                lines.append(f"| {factor:g} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def _machine(config: dict[str, Any]) -> str:
    """The machine, with its CPU count, backend and command where the run recorded them
    (`benchmarks.record.provenance`; older results have the machine only)."""
    if "cpu_count" not in config:
        return config["machine"]
    command = f"; `{config['command']}`" if "command" in config else ""
    return f"{config['machine']} ({config['cpu_count']} CPUs, {config['backend']}){command}"


def markdown(results: dict[str, Any]) -> str:
    """results.md."""
    config = results["config"]
    lines = [
        "# YOTO benchmark results",
        "",
        (
            f"{config['date']}, {_machine(config)}, jax {config['jax']}; scale {config['scale']}, "
            f"{config['seeds']} seed(s); defaults ε = {config['default_eps']}, ρ = {config['default_rho']}; "
            f"total wall time {config.get('wall_s', float('nan')):.0f} s."
        ),
        "",
    ]
    if config.get("notes"):
        lines += [config["notes"], ""]
    for name, task in results["tasks"].items():
        lines += _task_markdown(name, task, config["seeds"])
    if any(s["tasks"] for s in results["studies"].values()):
        lines += _study_markdown(results)
    if results.get("regimes"):
        lines += _regimes_markdown(results)
    return "\n".join(lines) + "\n"


def _steps(task: dict[str, Any], num_points: int) -> np.ndarray:
    return task["training"]["log_every"] * np.arange(1, num_points + 1)


def plot_dynamics(name: str, task: dict[str, Any], results: dict[str, Any], path: Path) -> None:
    """λ over training (YOTO default, and µ with the study's fastest learning rate) next to
    YOTO's training and validation losses; seed 0."""
    curves = task["methods"]["yoto"]["curves"]
    weights = np.asarray(curves["weights"][0])
    steps = _steps(task, len(weights))
    fig, (ax_w, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for i, loss in enumerate(task["loss_names"]):
        (line,) = ax_w.plot(steps, weights[:, i], label=f"λ {loss} (µ on model lr)")
        study = results["studies"]["eps"]["tasks"].get(name)
        if study is not None:
            values = results["studies"]["eps"]["values"]
            if results["config"]["default_eps"] in values:
                column = values.index(results["config"]["default_eps"])
                fast = np.asarray(study["curves_weights"][-1][column][0])
                factor = results["studies"]["eps"]["mu_lr_factors"][-1]
                ax_w.plot(
                    steps,
                    fast[:, i],
                    "--",
                    color=line.get_color(),
                    label=f"λ {loss} (µ lr x{factor:g})",
                )
    ax_w.set(xlabel="step", ylabel="λ", title=f"{name}: YOTO loss weights", ylim=(0, 1))
    ax_w.legend(fontsize=7)
    train, val = np.asarray(curves["train"][0]), np.asarray(curves["val"][0])
    for i, loss in enumerate(task["loss_names"]):
        (line,) = ax_l.plot(steps, train[:, i], label=f"{loss} train")
        ax_l.plot(steps, val[:, i], "--", color=line.get_color(), label=f"{loss} val")
    ax_l.set(xlabel="step", ylabel="loss", yscale="log", title=f"{name}: YOTO losses (default)")
    ax_l.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_grid(name: str, task: dict[str, Any], path: Path) -> None:
    """Each grid configuration's test metric (seed mean ± std) next to the single-run methods."""
    test = np.asarray(task["grid"]["test"], np.float64)
    labels = [_weights_label(w) for w in task["grid"]["weights"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    std = test.std(axis=1, ddof=1) if test.shape[1] > 1 else np.zeros(len(test))
    ax.errorbar(
        np.arange(len(test)),
        test.mean(axis=1),
        yerr=std,
        fmt="o",
        color="k",
        label="grid configuration",
    )
    for method, style in (
        ("yoto", "C0"),
        ("random_best", "C1"),
        ("equal", "C2"),
        ("grid_best", "C3"),
    ):
        if method in task["methods"]:
            mean, method_std = _mean_std(task["methods"][method]["test"])
            ax.axhline(mean, color=style, label=method)
            if not np.isnan(method_std):
                ax.axhspan(mean - method_std, mean + method_std, color=style, alpha=0.15)
    ax.set_xticks(np.arange(len(test)), labels, rotation=30, fontsize=8)
    ax.set(xlabel="auxiliary weights relative to the primary", ylabel=f"test {task['metric']}")
    ax.set_title(f"{name}: grid configurations vs one YOTO run")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_compute(name: str, task: dict[str, Any], path: Path) -> None:
    """Every method's test metric (mean ± std over seeds) against its compute per seed, in
    runs of the task's training budget (member-steps / steps)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, r in task["methods"].items():
        mean, std = _mean_std(r["test"])
        ax.errorbar(r["runs_per_seed"], mean, 0.0 if np.isnan(std) else std, marker="o", capsize=3)
        ax.annotate(
            method,
            (r["runs_per_seed"], mean),
            fontsize=7,
            xytext=(4, 2),
            textcoords="offset points",
        )
    better = "higher" if task["higher_is_better"] else "lower"
    ax.set(
        xlabel="compute per seed (runs of the training budget)",
        ylabel=f"test {task['metric']} ({better} is better)",
        title=f"{name}: quality against compute",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_studies(results: dict[str, Any], path: Path) -> None:
    """Test metric against ε and ρ, one line per µ learning-rate factor, per task."""
    names = list(results["studies"]["eps"]["tasks"])
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 3.2 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        task = results["tasks"][name]
        for ax, which, symbol in zip(row, ("eps", "rho"), ("ε", "ρ")):
            study = results["studies"][which]
            table = np.asarray(study["tasks"][name]["test"], np.float64)  # [factor][value][seed]
            for factor, values in zip(study["mu_lr_factors"], table):
                std = values.std(axis=1, ddof=1) if values.shape[1] > 1 else None
                ax.errorbar(
                    study["values"],
                    values.mean(axis=1),
                    yerr=std,
                    marker="o",
                    capsize=2,
                    label=f"µ lr x{factor:g}",
                )
            if "grid_best" in task["methods"]:
                ax.axhline(
                    np.mean(task["methods"]["grid_best"]["test"]),
                    color="k",
                    ls=":",
                    label="grid_best",
                )
            if which == "eps":
                ax.set_xscale("log")
            else:  # ρ = 0 is in the study: linear near 0, logarithmic above 0.01
                ax.set_xscale("symlog", linthresh=1e-2)
                ax.set_xlim(-2e-3, 2.0 * max(study["values"]))
            ax.set(xlabel=symbol, ylabel=f"test {task['metric']}", title=f"{name}: {symbol} study")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def paired(ours: Any, theirs: Any, higher_is_better: bool) -> dict[str, Any]:
    """Per-seed advantage of `ours` over `theirs` (positive favours ours): its mean, its
    standard error over seeds, wins/ties/losses (tie: |difference| < TIE) and the verdict
    "win"/"tie"/"loss" of the mean against twice its standard error (a tie within noise)."""
    sign = 1.0 if higher_is_better else -1.0
    advantage = sign * (np.asarray(ours, np.float64) - np.asarray(theirs, np.float64))
    mean = float(np.mean(advantage))
    se = float(np.std(advantage, ddof=1) / np.sqrt(len(advantage))) if len(advantage) > 1 else 0.0
    verdict = "tie" if abs(mean) <= 2 * se or abs(mean) < TIE else ("win" if mean > 0 else "loss")
    return {
        "mean": mean,
        "se": se,
        "wins": int(np.sum(advantage >= TIE)),
        "ties": int(np.sum(np.abs(advantage) < TIE)),
        "losses": int(np.sum(advantage <= -TIE)),
        "verdict": verdict,
    }


def _equal_label(variant: dict[str, Any]) -> str:
    return "equal" if variant["scale"] == 1.0 else f"equal, c {variant['scale']:g}"


def regime_rows(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (data level, YOTO variant): YOTO against grid_best, equal and primary only."""
    rows = []
    higher = entry["higher_is_better"]
    for level, data in entry["levels"].items():
        for name, run in data["yoto"].items():
            variant = run["variant"]
            equal = data["fixed"][_equal_label(variant)]["test"]
            budget = "model's" if variant["paper"] else f"{variant['mu_lr'] * entry['steps']:.3g}"
            rows.append(
                {
                    "level": level,
                    "train_size": data["train_size"],
                    "variant": name,
                    "factor": run["factor"],
                    "budget_nats": budget,
                    "test": run["test"],
                    "grid_best": data["grid_best"]["test"],
                    "equal": equal,
                    "primary": data["fixed"]["primary only"]["test"],
                    "vs_grid": paired(run["test"], data["grid_best"]["test"], higher),
                    "vs_equal": paired(run["test"], equal, higher),
                    "relative_weights": np.mean(run["relative_weights"], axis=0)[1:].tolist(),
                    "collapsed": int(np.sum(run["collapsed"])),
                }
            )
    return rows


def _regimes_markdown(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Regime map",
        "",
        (
            "YOTO variants against the grid's best (selected by validation), equal weights and "
            "the primary loss alone, at each training-set size; every row is mean ± std over "
            "seeds of the test metric. Δ columns: mean paired advantage of YOTO (positive "
            "favours YOTO) ± its standard error, the per-seed W/T/L, and the verdict of the "
            "mean against twice its standard error. Budget: µ's summed learning rate in nats "
            "(\"model's\": µ on the model's Adam, the paper's setting). λ_i/λ_0: final, on "
            "the original (unscaled) losses. Collapsed: runs that `weight_report` flags."
        ),
        "",
    ]
    for name, entry in results["regimes"].items():
        metric = entry["metric"]
        lines += [
            f"### {name} ({metric}, {'higher' if entry['higher_is_better'] else 'lower'} is better)",
            "",
            (
                "| data (train size) | variant | budget | YOTO | grid_best | equal | primary only "
                "| Δ vs grid_best | Δ vs equal | λ_i/λ_0 | collapsed |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in regime_rows(entry):
            g, e = row["vs_grid"], row["vs_equal"]
            weights = ", ".join(f"{w:.2g}" for w in row["relative_weights"])
            lines.append(
                f"| {row['level']} ({row['train_size']}) | {row['variant']} | {row['budget_nats']} "
                f"| {_fmt(row['test'])} | {_fmt(row['grid_best'])} | {_fmt(row['equal'])} "
                f"| {_fmt(row['primary'])} "
                f"| {g['mean']:+.4f} ± {g['se']:.4f} {g['wins']}/{g['ties']}/{g['losses']} {g['verdict']} "
                f"| {e['mean']:+.4f} ± {e['se']:.4f} {e['wins']}/{e['ties']}/{e['losses']} {e['verdict']} "
                f"| {weights} | {row['collapsed']}/{len(row['test'])} |"
            )
        lines.append("")
    return lines


def plot_regimes(results: dict[str, Any], path: Path) -> None:
    """YOTO − grid_best (positive favours YOTO, mean ± standard error over seeds) against
    each factor of the map, one row of panels per task."""
    names = list(results["regimes"])
    factors = ("data", "budget", "eps", "rho", "units")
    fig, axes = plt.subplots(len(names), len(factors), figsize=(4 * len(factors), 3 * len(names)))
    axes = np.atleast_2d(axes)
    for row_axes, name in zip(axes, names):
        entry = results["regimes"][name]
        rows = regime_rows(entry)
        x1 = [r for r in rows if r["level"] == "x1"]
        for ax, factor in zip(row_axes, factors):
            if factor == "data":
                levels = list(entry["levels"])
                for variant in ("reference", "paper: µ on the model's Adam", "primary floor"):
                    points = [r for r in rows if r["variant"] == variant]
                    ax.errorbar(
                        range(len(points)),
                        [r["vs_grid"]["mean"] for r in points],
                        [r["vs_grid"]["se"] for r in points],
                        marker="o",
                        capsize=3,
                        label=f"YOTO {variant}",
                    )
                for other in ("equal", "primary"):
                    points = [next(r for r in rows if r["level"] == lv) for lv in levels]
                    advantages = [
                        paired(r[other], r["grid_best"], entry["higher_is_better"])["mean"]
                        for r in points
                    ]
                    ax.plot(range(len(levels)), advantages, "--", label=other)
                ax.set_xticks(
                    range(len(levels)),
                    [f"{lv}\n({entry['levels'][lv]['train_size']})" for lv in levels],
                )
                ax.set_xlabel("training set")
            else:
                if factor == "units":
                    groups = {
                        v: [r for r in x1 if r["variant"] == v or r["variant"].endswith(", " + v)]
                        for v in ("reference", "paper: µ on the model's Adam", "primary floor")
                    }
                else:
                    wanted = {"budget": ("budget",), "eps": ("eps",), "rho": ("rho",)}[factor]
                    groups = {"YOTO": [r for r in x1 if r["factor"] in (*wanted, "reference")]}
                for label, points in groups.items():
                    values = [_factor_value(factor, r, entry) for r in points]
                    order = np.argsort(values)
                    ax.errorbar(
                        np.asarray(values)[order],
                        [points[i]["vs_grid"]["mean"] for i in order],
                        [points[i]["vs_grid"]["se"] for i in order],
                        marker="o",
                        capsize=3,
                        label=label,
                    )
                ax.set_xscale("log")
                ax.set_xlabel(
                    {
                        "budget": "µ budget (nats)",
                        "eps": "ε",
                        "rho": "ρ",
                        "units": "c (last aux ×c)",
                    }[factor]
                )
            ax.axhline(0.0, color="k", lw=0.8)
            ax.set_ylabel(f"YOTO − grid_best ({entry['metric']}, + favours YOTO)", fontsize=7)
            ax.set_title(f"{name}: {factor}")
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _factor_value(factor: str, row: dict[str, Any], entry: dict[str, Any]) -> float:
    variant = entry["levels"]["x1"]["yoto"][row["variant"]]["variant"]
    if factor == "budget":
        # the paper's setting: µ on the model's cosine-decayed Adam, lr·T/2 nats
        return (variant["mu_lr"] if not variant["paper"] else 0.5 * entry["learning_rate"]) * entry[
            "steps"
        ]
    return {"eps": variant["eps"], "rho": variant["rho"], "units": variant["scale"]}[factor]


def write(results: dict[str, Any], out: Path) -> None:
    """Writes results.md and the plots into `out`."""
    (out / "results.md").write_text(markdown(results))
    for name, task in results["tasks"].items():
        if "yoto" in task["methods"]:
            plot_dynamics(name, task, results, out / f"dynamics_{name}.png")
        if "grid" in task:
            plot_grid(name, task, out / f"grid_{name}.png")
        if task["methods"]:
            plot_compute(name, task, out / f"compute_{name}.png")
    if results["studies"]["eps"]["tasks"]:
        plot_studies(results, out / "studies.png")
    if results.get("regimes"):
        plot_regimes(results, out / "regimes.png")


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    write(json.loads((directory / "results.json").read_text()), directory)
