"""The benchmark harness's own run of one configuration, the reference of the search rows' tests."""

from typing import Any

from benchmarks import harness


def harness_run(programs: harness.Programs, weighting: Any, config: Any) -> tuple[float, float]:
    """``config`` trained by the harness's vmapped program with seed 0's key: (val, test)
    of the task's metric."""
    timed = programs.run(weighting, [config], harness.seed_key(0)[None])
    metric = programs.task.metric
    return timed.results["val"][metric][0], timed.results["test"][metric][0]
