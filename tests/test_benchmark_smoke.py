"""Smoke test of the benchmark: a tiny run of the real command, its outputs and their schema."""

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import yoto_jax

ROOT = Path(__file__).resolve().parents[1]

from benchmarks import harness, methods, regimes, studies, tasks
from benchmarks.methods import yoto_config

METHOD_KEYS = {"test", "val", "runs_per_seed", "wall_s", "weights"}
CORE_METHODS = ("yoto", "grid_best", "random_best", "equal")


def test_a_tiny_run_writes_consistent_results(tmp_path):
    """One run of the real command (a single test, so that pytest-xdist runs it once)."""
    command = [sys.executable, "-m", "benchmarks.run", "--scale", "tiny", "--seeds", "2"]
    command += ["--tasks", "multidigits", "--methods", ",".join(CORE_METHODS)]
    subprocess.run([*command, "--out", str(tmp_path)], cwd=ROOT, check=True, capture_output=True)
    data = json.loads((tmp_path / "results.json").read_text())
    check_outputs(tmp_path)
    check_schema_and_finite(data)
    check_selection_and_shared_runs(data["tasks"]["multidigits"])


def _numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _numbers(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _numbers(value)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


def check_outputs(out: Path) -> None:
    for name in [
        "results.json",
        "results.md",
        "dynamics_multidigits.png",
        "grid_multidigits.png",
        "studies.png",
    ]:
        assert (out / name).stat().st_size > 0, name
    assert "## multidigits" in (out / "results.md").read_text()


def check_schema_and_finite(data: dict) -> None:
    assert set(data) >= {"config", "tasks", "studies"}
    task = data["tasks"]["multidigits"]
    assert task["metric"] == "accuracy" and task["higher_is_better"] is True
    assert set(task["methods"]) == set(data["config"]["methods"]) == set(CORE_METHODS)
    for name, method in task["methods"].items():
        assert METHOD_KEYS <= set(method), name
        assert len(method["test"]) == len(method["val"]) == len(method["weights"]) == 2
        assert all(len(w) == 3 for w in method["weights"])
    assert task["methods"]["grid_best"]["runs_per_seed"] == 9
    assert np.asarray(task["grid"]["weights"]).shape == (9, 3)
    assert np.asarray(task["grid"]["test"]).shape == (9, 2)
    for which in ("eps", "rho"):
        study = data["studies"][which]
        table = np.asarray(study["tasks"]["multidigits"]["test"])
        assert table.shape == (len(study["mu_lr_factors"]), len(study["values"]), 2)
    numbers = list(_numbers(data))
    assert len(numbers) > 500 and all(math.isfinite(x) for x in numbers)


def check_selection_and_shared_runs(task: dict) -> None:
    """grid_best is the grid's best validation configuration; equal is its (1, 1) cell;
    the one-by-one runs reproduce the vmapped ones; YOTO's λ sum to 1."""
    grid_val, grid_test = np.asarray(task["grid"]["val"]), np.asarray(task["grid"]["test"])
    best = np.argmax(grid_val, axis=0)
    np.testing.assert_array_equal(task["methods"]["grid_best"]["selected"], best)
    np.testing.assert_allclose(task["methods"]["grid_best"]["test"], grid_test[best, [0, 1]])
    equal_cell = [w[1:] for w in task["grid"]["weights"]].index([1.0, 1.0])
    np.testing.assert_allclose(task["methods"]["equal"]["test"], grid_test[equal_cell], atol=1e-6)
    assert task["timing"]["max_abs_test_difference"] < 1e-4
    np.testing.assert_allclose(np.sum(task["methods"]["yoto"]["weights"], axis=1), 1.0, rtol=1e-6)


def _trained(tx: optax.GradientTransformation, mu: jax.Array) -> dict:
    """20 steps of `tx` on fixed pseudo-gradients over a model leaf and µ."""
    params = {"model": {"w": jnp.ones((3, 2))}, "weighting": {yoto_jax.MU_KEY: mu}}
    grads = jax.tree.map(
        lambda x: jnp.sin(jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)), params
    )
    state = tx.init(params)
    for _ in range(20):
        update, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, update)
    return params


def _assert_same(a: dict, b: dict, mu: jax.Array) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    assert not np.allclose(a["weighting"][yoto_jax.MU_KEY], mu)  # µ moved


def _setting(schedule: optax.Schedule) -> methods.Setting:
    return methods.Setting(lambda params: True, schedule, lambda params, key: 0.0)


def test_the_benchmarks_yoto_configurations_are_the_librarys_yoto():
    """One weighting function runs every YOTO variant of the benchmark: its default
    configuration is ``yoto_jax.yoto()``, its paper configuration
    ``yoto(0.1, mu_learning_rate=None, loss_floor=0.0)`` (µ on the model's Adam: the same
    updates, Adam acting elementwise), its previous default ``yoto(0.1,
    primary_floor="uniform", loss_floor=0.0)``; the regime map's floor variant is that
    previous default and the studies' factor-1 points at ε = 0.1 are the paper's setting."""
    schedule = optax.cosine_decay_schedule(3e-3, 20)
    setting = _setting(schedule)
    mu = yoto_jax.init_mu(2, 0.1)
    previous = yoto_jax.yoto(0.1, primary_floor="uniform", loss_floor=0.0)
    paper = yoto_jax.yoto(0.1, mu_learning_rate=None, loss_floor=0.0)
    pairs = [
        (methods.yoto(yoto_config(2), setting), yoto_jax.yoto()),
        (methods.yoto(methods.yoto_paper_config(2), setting), paper),
        (methods.yoto(methods.yoto_previous_config(2), setting), previous),
    ]
    params = {yoto_jax.MU_KEY: jnp.array([0.3, -2.0])}

    def losses_fn(theta: jax.Array) -> jax.Array:
        return jnp.array([0.5, 0.2, 0.9]) * jnp.array([theta**2, theta, 1.0 + theta])

    for got, expected in pairs:
        _assert_same(
            _trained(got.optimizer(optax.adam(schedule)), mu),
            _trained(expected.optimizer(optax.adam(schedule)), mu),
            mu,
        )
        np.testing.assert_allclose(got.weights(params, ()), expected.weights(params, ()))
        assert (
            got.init(3)[0][yoto_jax.MU_KEY].tolist()
            == expected.init(3)[0][yoto_jax.MU_KEY].tolist()
        )
        results = (w.step(losses_fn, jnp.float32(1.5), params, ()) for w in (got, expected))
        for x, y in zip(*(jax.tree.leaves(r) for r in results)):
            np.testing.assert_allclose(x, y, rtol=1e-6)
    assert float(pairs[2][0].weights(params, ())[0]) >= 1 / 3
    floor = regimes.FLOOR.config(2)
    assert set(floor) == {*yoto_config(2), "loss_scale"}
    for name, value in methods.yoto_previous_config(2).items():
        np.testing.assert_array_equal(floor[name], value)
    np.testing.assert_array_equal(floor["loss_scale"], np.ones(3))
    assert regimes.REFERENCE_MU_LEARNING_RATE == methods.PREVIOUS_MU_LEARNING_RATE
    study = studies.config(studies.Point(0.1, 0.1, mu_lr_factor=1.0), 2)
    for name, value in methods.yoto_paper_config(2).items():
        np.testing.assert_array_equal(study[name], value)


def test_methods_sharing_a_weighting_share_one_program_and_keep_their_results():
    """grid_best, random_best and equal train as one program of 19 runs; each method's
    results equal its own program's (the same runs: keys and configurations), checked
    for grid_best and equal."""
    task = tasks.build("multidigits", "tiny")
    programs = harness.Programs(task)
    names = ("grid_best", "random_best", "equal")
    together = harness.run_methods(programs, [methods.METHODS[n] for n in names], [0, 1])
    assert len(programs._compiled) == 1
    for name in ("grid_best", "equal"):
        alone = harness.run_method(harness.Programs(task), methods.METHODS[name], [0, 1])
        np.testing.assert_allclose(
            together[name].results["test"][task.metric],
            alone.results["test"][task.metric],
            rtol=1e-5,
        )
        np.testing.assert_array_equal(together[name].selected, alone.selected)
    assert together["random_best"].timed.compile_s == 0.0 < together["grid_best"].timed.compile_s


@pytest.mark.parametrize("name", ["depth", "segmentation"])
def test_conv_tasks_give_finite_losses_and_bounded_metrics(name):
    task = tasks.build(name, "tiny")
    params = task.init(jax.random.key(0))
    losses = task.losses(params, task.data.train, jax.random.key(1))
    assert losses.shape == (len(task.loss_names),) and np.all(np.isfinite(losses))
    metrics = harness.evaluate(task, params, task.data.test)
    assert np.isfinite(metrics[task.metric]) and metrics[task.metric] >= 0.0
