"""The benchmark's halving_best and pbt_best: the winner of successive halving is trained
exactly as the grid's run of the same configuration (same initialisation, batches and
schedule), and both report their compute in member-steps."""

import numpy as np

from benchmarks import harness, search_methods, tasks
from benchmarks.methods import METHODS


def test_halving_winner_is_the_grid_run_of_its_configuration_and_pbt_counts_its_compute():
    task = tasks.build("multidigits", "tiny")
    programs = harness.Programs(task)
    seeds = [0, 1]
    grid = harness.run_method(programs, METHODS["grid_best"], seeds)
    halving = search_methods.run("halving_best", programs, seeds)
    steps = task.training.steps
    assert halving["member_steps"] == [(9 + 3 + 1) * steps // 3] * 2
    np.testing.assert_allclose(halving["runs_per_seed"], 13 / 3)
    for seed in range(2):
        chosen = halving["selected"][seed]
        assert halving["history"][seed][-1]["indices"] == [chosen]
        np.testing.assert_allclose(halving["weights"][seed], grid.configs[seed][chosen]["weights"])
        # same run as the grid's: same metrics, to float32 rounding of the vmapped programs
        for split in ("val", "test"):
            np.testing.assert_allclose(
                halving[split][seed], grid.results[split][task.metric][seed, chosen], atol=1e-6
            )
    pbt = search_methods.run("pbt_best", programs, seeds)
    assert pbt["member_steps"] == [9 * steps] * 2 and pbt["runs_per_seed"] == 9
    for seed in range(2):
        weights = np.asarray(pbt["weights"][seed])
        assert weights[0] == 1.0 and np.all(weights[1:] >= 1e-3) and np.all(weights[1:] <= 10)
        parents = np.asarray(pbt["history"][seed]["parents"])
        assert parents.shape == (steps, 9)  # tiny: one round per step
        np.testing.assert_array_equal(parents[-1], np.arange(9))
        assert np.sum(parents[:-1] != np.arange(9)) == 2 * (steps - 1)  # 2 replaced per round
