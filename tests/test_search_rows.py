"""The benchmark's select_best row (benchmarks/search_methods.py): its winner is trained
exactly as the harness trains the same weighting (the vmapped program of every other
row); the Optuna rows' budget and their absence. On the tiny multidigits task, one
seed; the Optuna rows themselves: tests/test_optuna_rows.py."""

import sys

import numpy as np
import pytest
from _harness_runs import harness_run

from benchmarks import harness, search_methods, tasks
from benchmarks.methods import METHODS, fixed


@pytest.fixture(scope="module")
def programs() -> harness.Programs:
    return harness.Programs(tasks.build("multidigits", "tiny"))


def test_halving_budget_is_halvings_member_steps():
    assert search_methods.halving_budget(90) == (9 + 3 + 1) * 30
    assert search_methods.halving_budget(400) == 9 * 133 + 3 * 133 + 134
    assert search_methods.halving_budget(6) == (9 + 3 + 1) * 2


def test_select_best_trains_its_winner_as_the_methods_own_row(programs, monkeypatch):
    """Two families (equal weights, one member; the fixed rows, three): 4 -> 1 members."""
    monkeypatch.setattr(search_methods, "SELECT_METHODS", ("equal",))
    entry = search_methods.run("select_best", programs, [0])
    steps = programs.task.training.steps
    assert entry["member_steps"] == [(4 + 1) * steps // 2]
    first, last = entry["history"][0]
    assert sorted(zip(first["families"], first["indices"], strict=True)) == [
        ("equal", 0),
        ("fixed", 0),
        ("fixed", 1),
        ("fixed", 2),
    ]
    family, index = last["families"][0], last["indices"][0]
    assert entry["selected"] == [f"{family}[{index}]"]
    if family == "equal":
        method = METHODS["equal"]
        val, test = harness_run(programs, method.weighting, method.configs(2, 0)[0])
    else:
        row = search_methods.fixed_rows(3, search_methods.DEFAULT_FIXED_VALUES)[index]
        val, test = harness_run(programs, fixed, {"weights": row})
    np.testing.assert_allclose(entry["val"][0], val, atol=1e-6)
    np.testing.assert_allclose(entry["test"][0], test, atol=1e-6)
    np.testing.assert_allclose(last["scores"][0], val, atol=1e-6)


def test_without_optuna_its_rows_are_skipped_with_a_message(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    kept = search_methods.available(["grid_best", "optuna_tpe", "select_best", "optuna_hyperband"])
    assert kept == ["grid_best", "select_best"]
    assert (
        "skipping optuna_tpe, optuna_hyperband: optuna is not installed" in capsys.readouterr().out
    )
