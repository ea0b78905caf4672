"""benchmarks/learning_rate_horizon.py: the shortfall and the leave-one-task-out folds."""

import pytest

from benchmarks.learning_rate_horizon import HORIZONS, leave_one_task_out, shortfall


def test_shortfall_is_the_relative_distance_behind_the_grid():
    assert shortfall(0.6, 0.8, higher_is_better=True) == pytest.approx(0.25)
    assert shortfall(0.9, 0.8, higher_is_better=True) == pytest.approx(-0.125)
    assert shortfall(0.25, 0.2, higher_is_better=False) == pytest.approx(0.25)


def test_each_fold_picks_the_horizon_with_the_least_worst_shortfall_elsewhere():
    """Three tasks; H=10 is best on a and b from below but fails c's; H=33 is the
    only one fine on both starts of a and c. By hand: holding out a, b and c pick
    (from below) 33, 33, 10 and (both starts) 33, 33, 33."""
    cell = lambda below, above: {"0.1×": below, "10× + ramp": above}
    bad = cell(0.5, 0.5)
    table = {
        "a": {1.0: bad, 10.0: cell(0.0, 0.4), 33.0: cell(0.05, 0.05), 100.0: bad},
        "b": {1.0: bad, 10.0: cell(0.01, 0.3), 33.0: cell(0.04, 0.1), 100.0: bad},
        "c": {1.0: bad, 10.0: cell(0.3, 0.3), 33.0: cell(0.02, 0.02), 100.0: bad},
    }
    assert set(table["a"]) == set(HORIZONS)
    folds = leave_one_task_out(table)
    assert {n: f["horizon"] for n, f in folds["from below"].items()} == {
        "a": 33.0,
        "b": 33.0,
        "c": 10.0,
    }
    assert folds["from below"]["c"]["held_out_shortfall"] == pytest.approx(0.3)
    assert {n: f["horizon"] for n, f in folds["both starts"].items()} == dict.fromkeys("abc", 33.0)
    assert folds["both starts"]["b"]["held_out_shortfall"] == pytest.approx(0.1)
