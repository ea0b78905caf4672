"""The regime map's pieces: grown training splits, one level on the tiny multidigits task,
and its report rows."""

import jax
import numpy as np

from benchmarks import regimes, report, tasks


def test_grown_splits_keep_validation_test_and_the_first_training_examples():
    base = tasks.build("multidigits", "tiny")
    grown = tasks.build("multidigits", "tiny", train_size=64)
    fresh = tasks.build("multidigits", "tiny", train_size=tasks.FRESH)
    for split in ("val", "test"):
        for a, b in zip(
            jax.tree.leaves(getattr(base.data, split)), jax.tree.leaves(getattr(grown.data, split))
        ):
            np.testing.assert_array_equal(a, b)
    assert grown.data.train["image"].shape[0] == 64
    np.testing.assert_array_equal(grown.data.train["image"][:16], base.data.train["image"])
    # the extra pairs are new: not copies of the first ones
    assert not np.allclose(grown.data.train["image"][16:32], base.data.train["image"])
    steps, batch = base.training.steps, base.training.batch_size
    assert fresh.data.train["image"].shape[0] == steps * batch and fresh.training.fresh
    assert not base.training.fresh and not grown.training.fresh


def test_one_level_of_the_map_and_its_report(tmp_path):
    base = tasks.build("multidigits", "tiny")
    entry, task = regimes.run_level("multidigits", "tiny", "x1", None, [0, 1], None)
    higher = task.higher_is_better
    assert entry["train_size"] == 16 and not entry["fresh"]
    grid = [label for label in entry["fixed"] if label.startswith("grid")]
    assert len(grid) == 9
    # grid_best is the grid cell with the best validation metric, per seed
    for seed in range(2):
        vals = [entry["fixed"][label]["val"][seed] for label in grid]
        best = grid[int(np.argmax(vals) if higher else np.argmin(vals))]
        assert entry["grid_best"]["selected"][seed] == best
        assert entry["grid_best"]["test"][seed] == entry["fixed"][best]["test"][seed]
    # equal weights are the grid's (1, 1) cell, trained again in the same program
    np.testing.assert_allclose(
        entry["fixed"]["equal"]["test"], entry["fixed"]["grid (1, 1)"]["test"], atol=1e-6
    )
    names = [v.name for v in regimes.variants("x1")]
    assert list(entry["yoto"]) == names
    for name, run in entry["yoto"].items():
        weights = np.asarray(run["weights"])
        np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
        assert all(isinstance(flag, bool) for flag in run["collapsed"])
        if run["variant"]["floor"]:
            assert np.all(weights[:, 0] >= 1 / 3 - 1e-6), name
        # relative weights are on the original losses: λ_i c_i / λ_0
        scale = np.ones(3)
        scale[-1] = run["variant"]["scale"]
        np.testing.assert_allclose(
            run["relative_weights"], weights * scale / weights[:, :1], rtol=1e-5
        )
    full = {
        "levels": {"x1": entry},
        "metric": task.metric,
        "higher_is_better": higher,
        "steps": task.training.steps,
        "learning_rate": task.training.learning_rate,
    }
    rows = report.regime_rows(full)
    assert len(rows) == len(names)
    reference = rows[0]
    advantage = np.asarray(reference["test"]) - np.asarray(entry["grid_best"]["test"])
    np.testing.assert_allclose(
        reference["vs_grid"]["mean"], np.mean(advantage if higher else -advantage)
    )
    results = {"regimes": {"multidigits": full}}
    report.plot_regimes(results, tmp_path / "regimes.png")
    assert (tmp_path / "regimes.png").stat().st_size > 0
    assert base.metric == task.metric


def test_paired_verdicts():
    assert report.paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7], True)["verdict"] == "tie"
    win = report.paired([0.60, 0.71, 0.80], [0.50, 0.60, 0.71], True)
    assert win["verdict"] == "win" and (win["wins"], win["ties"], win["losses"]) == (3, 0, 0)
    # lower is better: a smaller error is a win
    assert report.paired([0.1, 0.2, 0.3], [0.2, 0.3, 0.4], False)["verdict"] == "win"
    noisy = report.paired([0.6, 0.4, 0.62], [0.5, 0.5, 0.5], True)
    assert noisy["verdict"] == "tie" and noisy["wins"] == 2 and noisy["losses"] == 1
