"""The benchmark's Optuna rows (benchmarks/search_methods.py): they spend at most
halving's member-step budget, and their winner is trained exactly as the harness trains
the same weights (the vmapped program of every other row). On the tiny multidigits
task, one seed."""

import numpy as np
import pytest
from _harness_runs import harness_run

from benchmarks import harness, search_methods, tasks
from benchmarks.methods import fixed


@pytest.fixture(scope="module")
def programs() -> harness.Programs:
    return harness.Programs(tasks.build("multidigits", "tiny"))


@pytest.mark.parametrize("name", search_methods.OPTUNA_SEARCHES)
def test_optuna_rows_spend_halvings_budget_and_report_their_best_trial(programs, name):
    pytest.importorskip("optuna")
    entry = search_methods.run(name, programs, [0])
    steps = programs.task.training.steps
    budget = search_methods.halving_budget(steps)
    trials = entry["history"][0]
    assert entry["member_steps"][0] == sum(t["steps"] for t in trials) <= budget
    if name == "optuna_tpe":  # whole trials only; no trial started that could not finish
        assert all(t["steps"] == steps and t["status"] == "complete" for t in trials)
        assert len(trials) == budget // steps
    else:  # trials stop when pruned or when the budget runs out
        assert budget - entry["member_steps"][0] < steps // min(9, steps) + 1
    finished = [t for t in trials if t["status"] == "complete"]
    chosen = trials[entry["selected"][0]]
    assert chosen["status"] == "complete"
    assert chosen["val"] == max(t["val"] for t in finished)  # accuracy: higher is better
    weights = np.asarray(entry["weights"][0])
    assert weights[0] == 1.0 and np.all((weights[1:] >= 0.01) & (weights[1:] <= 1.0))
    # the trial's model is the harness's run of its weights: same val and test metric
    val, test = harness_run(programs, fixed, {"weights": np.float32(weights)})
    np.testing.assert_allclose([entry["val"][0], chosen["val"]], val, atol=1e-6)
    np.testing.assert_allclose(entry["test"][0], test, atol=1e-6)
