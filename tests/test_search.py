"""Successive halving and population-based training against closed forms and exact rules.

The main problem (``_search_worker.py``): weighted least squares with loss weights
(1, w), trained by Optax SGD with a schedule over the total steps; the validation loss
of the exact minimiser is known in closed form, so the best configuration is too. Cheap
counting problems check the bookkeeping exactly. Two fresh processes run the search on 8
simulated CPU devices, the second resuming the first's preempted, checkpointed search.
"""

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _load import ROOT
from _search_worker import (
    AUX_WEIGHTS,
    HALVING_STEPS,
    closed_form_theta,
    closed_form_val_loss,
    count_eval,
    count_init,
    count_train,
    make_problem,
    result_arrays,
    weight_rows,
)
from _toy import assert_trees_equal

import yoto_jax.search
from yoto_jax import member_keys, population_based_training, successive_halving

KEY = jax.random.key(0)
CONFIGS = weight_rows(AUX_WEIGHTS)  # (9, 2): three rungs of 20 steps with eta = 3
HALVING = make_problem(HALVING_STEPS)
CLOSED_FORM_BEST = int(np.argmin([closed_form_val_loss(row) for row in CONFIGS]))
WORKER = ROOT / "tests" / "_search_worker.py"


def halving(**kwargs: Any) -> yoto_jax.search.HalvingResult:
    """Successive halving on the least-squares problem (the validation loss is minimised)."""
    return successive_halving(
        *HALVING, CONFIGS, KEY, total_steps=HALVING_STEPS, maximize=False, **kwargs
    )


@pytest.fixture(scope="module", autouse=True)
def full_matmul_precision_for_the_module():
    """Every search here is compared with another run of the same training (alone, or on
    8 devices): in full float32, also on a GPU (conftest's ``full_matmul_precision``)."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def search() -> yoto_jax.search.HalvingResult:
    return halving()


@pytest.fixture(scope="module")
def cpu_search(search) -> yoto_jax.search.HalvingResult:
    """The search on one CPU device, the reference for the 8 simulated CPU devices: on a
    GPU machine ``search`` ran on the GPU, whose arithmetic differs from the CPU's."""
    if jax.default_backend() == "cpu":
        return search
    with jax.default_device(jax.devices("cpu")[0]):
        return halving()


def assert_trees_close(tree: Any, expected: Any, rtol: float = 1e-5) -> None:
    for leaf, want in zip(jax.tree.leaves(tree), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(leaf), np.asarray(want), rtol=rtol, atol=1e-7)


# --- successive halving on the least-squares problem -------------------------------------


def test_halving_picks_the_closed_form_best(search):
    assert CLOSED_FORM_BEST == 3  # w = 0.3; the grid's neighbours are 5x worse
    assert search.best_index == CLOSED_FORM_BEST
    np.testing.assert_array_equal(search.best_config, CONFIGS[CLOSED_FORM_BEST])
    # Trained to near the exact minimiser, so its score is near the closed-form one.
    theta = np.asarray(search.best_state["theta"])
    np.testing.assert_allclose(theta, closed_form_theta(CONFIGS[CLOSED_FORM_BEST]), atol=0.02)
    best_loss = closed_form_val_loss(CONFIGS[CLOSED_FORM_BEST])
    np.testing.assert_allclose(search.history[-1].scores[0], best_loss, rtol=0.25)


def test_rungs_and_member_steps(search):
    assert [len(rung.indices) for rung in search.history] == [9, 3, 1]
    assert [rung.num_steps for rung in search.history] == [20, 20, 20]
    assert search.member_steps == 9 * 20 + 3 * 20 + 1 * 20
    # Continued, not restarted: the winner's own counter and Optax's both read the total.
    assert int(search.best_state["steps"]) == HALVING_STEPS
    assert int(search.best_state["opt"][1].count) == HALVING_STEPS


keys_of = jax.jit(member_keys, static_argnums=2)
init_one = jax.jit(HALVING[0])
train_one = jax.jit(HALVING[1], static_argnums=3)
eval_one = jax.jit(HALVING[2])


def train_alone(index: int, rung_steps: list[int], num_rungs: int, key_index: int | None = None):
    """Config ``index`` trained alone, with the keys of member ``key_index`` (default: its own)."""
    init_key, rung_keys = keys_of(KEY, index if key_index is None else key_index, num_rungs)
    state = init_one(CONFIGS[index], init_key)
    for rung, steps in enumerate(rung_steps):
        state = train_one(state, CONFIGS[index], rung_keys[rung], steps)
    return state


def test_the_winner_trained_alone_with_its_keys_is_best_state(search):
    steps = [rung.num_steps for rung in search.history]
    alone = train_alone(search.best_index, steps, len(steps))
    assert_trees_close(search.best_state, alone)
    # The keys matter: another member's keys give another state.
    other = train_alone(search.best_index, steps, len(steps), key_index=0)
    assert np.abs(np.asarray(other["theta"] - alone["theta"])).max() > 1e-3


def test_history_is_consistent(search):
    history = search.history
    for rung, following in itertools.pairwise(history):
        # The survivors are the best of the previous rung, ranked best first.
        np.testing.assert_array_equal(following.indices, rung.indices[: len(following.indices)])
    for rung in history:
        assert np.all(np.diff(rung.scores) >= 0)  # maximize=False: lowest loss first
    assert search.best_index == history[-1].indices[0]
    # A score is eval_fn of that member: the worst of rung 0, evaluated independently.
    worst = int(history[0].indices[-1])
    alone = train_alone(worst, [history[0].num_steps], len(history))
    np.testing.assert_allclose(history[0].scores[-1], eval_one(alone, CONFIGS[worst]), rtol=1e-5)


def test_checkpoint_resume_in_process(search, tmp_path: Path):
    stopped = halving(checkpoint_dir=tmp_path, stop_after_rung=2)
    assert len(stopped.history) == 2 and stopped.member_steps == 9 * 20 + 3 * 20
    assert int(stopped.best_state["steps"]) == 40  # the leader so far, trained two rungs
    resumed = halving(checkpoint_dir=tmp_path)
    assert resumed.best_index == search.best_index
    assert_trees_equal(resumed.best_state, search.best_state)
    for got, want in zip(resumed.history, search.history, strict=True):
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.scores, want.scores)
    # A finished checkpoint is a finished search; other settings are refused.
    assert_trees_equal(halving(checkpoint_dir=tmp_path).best_state, search.best_state)
    with pytest.raises(ValueError, match="holds another search"):
        successive_halving(
            *HALVING, CONFIGS, jax.random.key(1), total_steps=HALVING_STEPS, checkpoint_dir=tmp_path
        )


# --- exact bookkeeping on a counting problem ----------------------------------------------


def counting(configs: jax.Array, **kwargs: Any) -> yoto_jax.search.HalvingResult:
    """Successive halving on the counting problem: the score is config[0] * steps."""
    return successive_halving(count_init, count_train, count_eval, configs, KEY, **kwargs)


@pytest.mark.parametrize(
    "num, kwargs, sizes, steps",
    [
        (9, {"total_steps": 30, "eta": 3}, [9, 3, 1], [10, 10, 10]),  # 130 member-steps
        (9, {"total_steps": 10, "eta": 2}, [9, 4, 2, 1], [2, 2, 3, 3]),  # the remainder last
        (9, {"total_steps": 30, "rung_steps": [2, 8, 20]}, [9, 3, 1], [2, 8, 20]),
        (1, {"total_steps": 7}, [1], [7]),
    ],
)
def test_member_steps_follow_the_rule(num, kwargs, sizes, steps):
    result = counting(jnp.arange(1.0, num + 1.0)[:, None], **kwargs)  # the last is the best
    assert [len(rung.indices) for rung in result.history] == sizes
    assert [rung.num_steps for rung in result.history] == steps
    assert result.member_steps == sum(n * s for n, s in zip(sizes, steps, strict=True))
    assert result.best_index == num - 1
    assert int(result.best_state["steps"]) == kwargs["total_steps"]
    np.testing.assert_allclose(result.best_state["sum"], num * kwargs["total_steps"])


def test_ties_go_to_the_lower_index_and_nan_ranks_last():
    configs = jnp.array([1.0, 3.0, 3.0, 2.0, jnp.nan, 0.5, 0.5, 0.25, 3.0])[:, None]
    highest = counting(configs, total_steps=10, eta=2, maximize=True)
    assert highest.history[0].indices.tolist() == [1, 2, 8, 3, 0, 5, 6, 7, 4]
    assert highest.best_index == 1
    lowest = counting(configs, total_steps=10, eta=2, maximize=False)
    assert lowest.history[0].indices.tolist() == [7, 5, 6, 0, 3, 1, 2, 8, 4]
    assert lowest.best_index == 7


def test_programs_are_compiled_once_and_reused():
    traces = []

    def train(state: dict, config: jax.Array, key: jax.Array, num_steps: int) -> dict:
        traces.append(num_steps)
        return count_train(state, config, key, num_steps)

    configs = jnp.arange(9.0)[:, None]
    for _ in range(2):
        successive_halving(count_init, train, count_eval, configs, KEY, total_steps=30)
        assert len(traces) == 3  # one program per population size 9, 3, 1; none the 2nd time


BAD_KEYS = jax.random.split(KEY, 9)


@pytest.mark.parametrize(
    "configs, kwargs, error, match",
    [
        ({}, {}, ValueError, "at least one array"),
        ({"a": jnp.ones((3, 1)), "b": jnp.ones((2, 1))}, {}, ValueError, "same leading size"),
        (jnp.ones((9, 2), bool), {}, TypeError, "floating or integer dtype"),
        ({"w": CONFIGS, "lr": jnp.float32(0.1)}, {}, ValueError, "leading axis"),
        (CONFIGS, {"total_steps": 2}, ValueError, "total_steps too small for the rungs"),
        (CONFIGS, {"total_steps": 0}, ValueError, "total_steps must be an int >= 1"),
        (CONFIGS, {"total_steps": 30.0}, ValueError, "total_steps must be an int >= 1"),
        (CONFIGS, {"eta": 1}, ValueError, "eta must be an int >= 2"),
        (CONFIGS, {"eta": 2.5}, ValueError, "eta must be an int >= 2"),
        (CONFIGS, {"rung_steps": [15, 15]}, ValueError, "one entry per rung"),
        (CONFIGS, {"rung_steps": [10, 10, 5]}, ValueError, "must sum to total_steps=30"),
        (CONFIGS, {"rung_steps": [0, 15, 15]}, ValueError, "every entry of rung_steps"),
        (CONFIGS, {"stop_after_rung": 1}, ValueError, "needs checkpoint_dir"),
        (CONFIGS, {"key": BAD_KEYS}, ValueError, "one PRNG key"),
        (
            CONFIGS,
            {"key": 0},
            TypeError,
            r"key must hold PRNG keys \(jax.random.key\(seed\).*got 0",
        ),
        (CONFIGS, {"maximize": "False"}, TypeError, "maximize must be a bool"),
        (CONFIGS, {"maximize": 0}, TypeError, "maximize must be a bool"),
        (jnp.ones((0, 2)), {}, ValueError, "at least 1 member .*got 0"),
        (CONFIGS, {"axis": "population"}, ValueError, "pass mesh too"),
    ],
)
def test_halving_rejects_bad_inputs(configs, kwargs, error, match):
    kwargs = {"key": KEY, "total_steps": 30, **kwargs}
    with pytest.raises(error, match=match):
        successive_halving(count_init, count_train, count_eval, configs, **kwargs)


def test_halving_rejects_a_bad_mesh_axis_and_non_scalar_scores():
    mesh = jax.make_mesh((1,), ("population",))
    with pytest.raises(ValueError, match="'data' is not an axis of mesh"):
        counting(CONFIGS, total_steps=30, mesh=mesh, axis="data")
    with pytest.raises(ValueError, match=r"one scalar score per member, got shape \(2,\)"):
        successive_halving(
            count_init, count_train, lambda s, c: jnp.ones(2), CONFIGS, KEY, total_steps=30
        )
    with pytest.raises(TypeError, match="eval_fn must be a function"):
        successive_halving(count_init, count_train, None, CONFIGS, KEY, total_steps=30)


# --- population-based training ------------------------------------------------------------

PBT_STEPS, PBT_INTERVAL = 200, 10
PBT_START = weight_rows((0.01, 0.02, 0.05, 3.0, 10.0, 30.0, 60.0, 100.0))  # all far from 0.42


@pytest.fixture(scope="module")
def pbt() -> yoto_jax.search.PBTResult:
    return population_based_training(
        *make_problem(PBT_STEPS),
        PBT_START,
        KEY,
        total_steps=PBT_STEPS,
        interval=PBT_INTERVAL,
        maximize=False,
        perturbation=1.25,
    )


def test_pbt_finds_a_near_optimal_weight(pbt):
    ratios = np.exp(np.linspace(np.log(1e-3), np.log(1e3), 4001))
    optimum = min(closed_form_val_loss((1.0, r)) for r in ratios)  # at w ~ 0.42
    start = [closed_form_val_loss(row) for row in PBT_START]
    found = closed_form_val_loss(np.asarray(pbt.best_config, np.float64))
    assert found < min(start)  # better than every initial configuration
    assert found - optimum < 0.05 * (np.median(start) - optimum)
    assert pbt.history.scores[-1][pbt.best_index] < np.median(start)


def test_pbt_bookkeeping(pbt):
    rounds, num = PBT_STEPS // PBT_INTERVAL, len(PBT_START)
    history = pbt.history
    assert pbt.member_steps == num * PBT_STEPS
    assert history.scores.shape == history.parents.shape == (rounds, num)
    assert history.configs.shape == (rounds, num, 2)
    np.testing.assert_array_equal(history.configs[0], PBT_START)
    assert pbt.best_index == int(np.argmin(history.scores[-1]))
    np.testing.assert_array_equal(pbt.best_config, history.configs[-1][pbt.best_index])
    assert int(pbt.best_state["steps"]) == int(pbt.best_state["opt"][1].count) == PBT_STEPS
    np.testing.assert_array_equal(history.parents[-1], np.arange(num))  # no exploit at the end
    everyone = np.arange(num)
    for t in range(rounds - 1):
        scores, parents = np.asarray(history.scores[t]), np.asarray(history.parents[t])
        configs = np.asarray(history.configs[t])
        order = np.argsort(scores, kind="stable")
        replaced = parents != everyone
        np.testing.assert_array_equal(np.flatnonzero(replaced), np.sort(order[-2:]))  # 25% of 8
        assert set(parents[replaced]) <= set(order[:2])  # copied from the best 25%
        following = np.asarray(history.configs[t + 1])
        np.testing.assert_array_equal(following[~replaced], configs[~replaced])
        factors = following[replaced] / configs[parents[replaced]]  # explored: x 1.25^(+-1)
        assert np.all(np.isclose(factors, 1.25) | np.isclose(factors, 0.8))


def test_exploit_copies_the_whole_state_in_one_compiled_program():
    """Members accumulate momentum m += c, x += m per step; a replaced member's next
    score continues from its parent's (x, m), with the parent's config + 1."""
    traces = {"init": 0, "train": 0, "eval": 0, "explore": 0}

    def init(config, key):
        traces["init"] += 1
        return {"x": jnp.zeros(()), "m": jnp.zeros(())}

    def train(state, config, key, num_steps):
        traces["train"] += 1

        def step(s, _):
            m = s["m"] + config[0]
            return {"x": s["x"] + m, "m": m}, None

        return jax.lax.scan(step, state, None, length=num_steps)[0]

    def evaluate(state, config):
        traces["eval"] += 1
        return state["x"]

    def explore(config, key):
        traces["explore"] += 1
        return config + 1.0

    configs = jnp.array([[0.5], [2.0], [1.0], [3.0]])
    for _ in range(2):
        result = population_based_training(
            init, train, evaluate, configs, KEY, total_steps=9, interval=3, explore_fn=explore
        )
        assert traces == {"init": 1, "train": 1, "eval": 1, "explore": 1}  # traced once

    def simulate(x, m, c):
        for _ in range(3):
            m = m + c
            x = x + m
        return x, m

    x, m, c = np.zeros(4), np.zeros(4), np.array([0.5, 2.0, 1.0, 3.0])
    for t in range(3):
        x, m = simulate(x, m, c)
        np.testing.assert_allclose(result.history.scores[t], x, rtol=1e-6)
        parents = np.asarray(result.history.parents[t])
        replaced = parents != np.arange(4)
        x, m, c = x[parents], m[parents], np.where(replaced, c[parents] + 1.0, c[parents])
    assert np.asarray(result.history.parents[:2] != np.arange(4)).sum() == 2  # one per round
    assert result.best_index == int(np.argmax(result.history.scores[-1]))
    np.testing.assert_allclose(result.best_state["x"], x[result.best_index], rtol=1e-6)


@pytest.mark.parametrize(
    "configs, kwargs, error, match",
    [
        (CONFIGS, {"total_steps": 25}, ValueError, "multiple of interval"),
        (CONFIGS, {"interval": 0}, ValueError, "interval must be an int >= 1"),
        (CONFIGS, {"fraction": 0.0}, ValueError, r"fraction must be a number in \(0, 0.5\]"),
        (CONFIGS, {"fraction": 0.6}, ValueError, r"fraction must be a number in \(0, 0.5\]"),
        (CONFIGS, {"perturbation": 0.0}, ValueError, "perturbation must be"),
        (CONFIGS, {"explore_fn": "random"}, TypeError, "explore_fn must be a function"),
        (CONFIGS[:1], {}, ValueError, "at least 2 members"),
        (CONFIGS, {"key": 0}, TypeError, "key must hold PRNG keys"),
        (CONFIGS, {"maximize": "False"}, TypeError, "maximize must be a bool"),
        (jnp.ones((4, 2), bool), {}, TypeError, "floating or integer dtype"),
        ({}, {}, ValueError, "at least one array"),
    ],
)
def test_pbt_rejects_bad_inputs(configs, kwargs, error, match):
    kwargs = {"key": KEY, "total_steps": 30, "interval": 10, **kwargs}
    with pytest.raises(error, match=match):
        population_based_training(count_init, count_train, count_eval, configs, **kwargs)


def test_pbt_rejects_non_scalar_scores():
    with pytest.raises(ValueError, match=r"got shape \(3,\)"):
        population_based_training(
            count_init,
            count_train,
            lambda s, c: jnp.ones(3),
            CONFIGS,
            KEY,
            total_steps=2,
            interval=1,
        )


# --- 8 simulated devices and preemption, in fresh processes --------------------------------


@pytest.fixture(scope="module")
def mesh_runs(search, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The worker's results on 8 devices: uninterrupted, stopped after one rung, and
    resumed in a second fresh process."""
    directory = tmp_path_factory.mktemp("search")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for extra in (["--stop-after", "1"], []):
        done = subprocess.run(
            [sys.executable, str(WORKER), str(directory), *extra],
            env=env,
            capture_output=True,
            check=False,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr.decode()[-4000:]
    return {
        name: dict(np.load(directory / f"{name}.npz"))
        for name in ("uninterrupted", "stopped", "resumed")
    }


def test_eight_devices_match_one_device(mesh_runs, cpu_search):
    eight, one = mesh_runs["uninterrupted"], result_arrays(cpu_search)
    assert eight.keys() == one.keys()
    for name, value in one.items():
        if np.issubdtype(value.dtype, np.floating):
            np.testing.assert_allclose(eight[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(eight[name], value, err_msg=name)


def test_preempted_search_resumes_bitwise_in_a_fresh_process(mesh_runs):
    stopped = mesh_runs["stopped"]
    assert "indices1" not in stopped and int(stopped["steps"]) == 9 * 20
    uninterrupted, resumed = mesh_runs["uninterrupted"], mesh_runs["resumed"]
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)
