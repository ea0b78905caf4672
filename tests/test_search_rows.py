"""The benchmark's select_best row (benchmarks/search_methods.py): its winner is trained
exactly as the harness trains the same weighting (the vmapped program of every other
row); the Optuna rows' budget and their absence. On the tiny multidigits task, one
seed; the Optuna rows themselves: tests/test_optuna_rows.py."""

import sys

import numpy as np
import pytest
from _harness_runs import harness_run

from benchmarks import harness, search_methods, tasks
from benchmarks.methods import GRID_VALUES, METHODS, fixed
from yoto_jax.grid import loss_weight_grid


@pytest.fixture(scope="module")
def programs() -> harness.Programs:
    return harness.Programs(tasks.build("multidigits", "tiny"))


def test_halving_budget_is_halvings_member_steps():
    assert search_methods.halving_budget(90) == (9 + 3 + 1) * 30
    assert search_methods.halving_budget(400) == 9 * 133 + 3 * 133 + 134
    assert search_methods.halving_budget(6) == (9 + 3 + 1) * 2


def test_select_rung_steps_is_the_largest_doubling_within_halvings_budget():
    for steps in (20, 90, 240, 1000, 1501):
        budget = search_methods.halving_budget(steps)
        for sizes in ([14, 4, 1], [10, 3, 1], [28, 9, 3, 1]):
            rungs = search_methods.select_rung_steps(steps, sizes)
            first = rungs[0]
            assert rungs[:-1] == [first * 2**i for i in range(len(sizes) - 1)]
            assert sum(rungs) == steps and rungs[-1] >= 1
            spent = sum(n * s for n, s in zip(sizes, rungs, strict=True))
            assert spent <= budget
            longer = [(first + 1) * 2**i for i in range(len(sizes) - 1)]
            over = sum(n * s for n, s in zip(sizes, longer, strict=False)) + steps - sum(longer)
            even_cap = steps * (len(sizes) - 1) // len(sizes)
            assert over > budget or sum(longer) > even_cap
    assert search_methods.select_rung_steps(90, [14, 4, 1]) == [15, 30, 45]
    assert search_methods.select_rung_steps(6, [14, 4, 1]) == [1, 2, 3]
    # few members: the even split (2.5 runs) is within budget and is the cap
    assert search_methods.select_rung_steps(90, [4, 1]) == [45, 45]
    assert search_methods.select_rung_steps(90, [1]) == [90]


def test_select_best_trains_its_winner_as_the_methods_own_row(programs, monkeypatch):
    """Two families (YOTO, one member; the grid's fixed rows, nine): 10 -> 3 -> 1."""
    monkeypatch.setattr(search_methods, "SELECT_METHODS", ("yoto",))
    entry = search_methods.run("select_best", programs, [0])
    steps = programs.task.training.steps
    rungs = search_methods.select_rung_steps(steps, [10, 3, 1])
    assert entry["member_steps"] == [10 * rungs[0] + 3 * rungs[1] + rungs[2]]
    first, _, last = entry["history"][0]  # seed 0's rungs
    assert sorted(zip(first["families"], first["indices"], strict=True)) == [
        *[("fixed", i) for i in range(9)],
        ("yoto", 0),
    ]
    family, index = last["families"][0], last["indices"][0]
    assert entry["selected"] == [f"{family}[{index}]"]
    if family == "yoto":
        method = METHODS["yoto"]
        val, test = harness_run(programs, method.weighting, method.configs(2, 0)[0])
    else:
        row = loss_weight_grid(GRID_VALUES, 2)[index]
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
