"""What the searches refuse, and how a checkpointed search resumes: a checkpoint of
another search, of another program, or in use by another process is refused with a
message naming it; an unreadable latest checkpoint falls back to the one before. On the
counting problem (``_search_worker.py``), whose results are exact.
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _search_worker import count_eval, count_init, count_train
from _toy import assert_trees_equal
from flax import nnx

from yoto_jax import population_based_training, successive_halving
from yoto_jax._population import check_step_counters, step_counters

KEY = jax.random.key(0)
CONFIGS = jnp.arange(1.0, 10.0)[:, None]  # 9 members, the last is the best
STEPS = {"total_steps": 12, "eta": 2}  # rungs of 9, 4, 2, 1 members, 3 steps each


def counting(configs: Any = CONFIGS, init_fn: Any = count_init, **kwargs: Any):
    return successive_halving(init_fn, count_train, count_eval, configs, KEY, **{**STEPS, **kwargs})


def assert_results_equal(got: Any, want: Any) -> None:
    assert got.best_index == want.best_index and got.member_steps == want.member_steps
    assert_trees_equal(got.best_state, want.best_state)
    for rung, expected in zip(got.history, want.history, strict=True):
        np.testing.assert_array_equal(rung.indices, expected.indices)
        np.testing.assert_array_equal(rung.scores, expected.scores)


@pytest.fixture(scope="module")
def uninterrupted():
    return counting()


@pytest.fixture(scope="module")
def stopped_after_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory of the counting search, stopped after rungs 1 and 2."""
    directory = tmp_path_factory.mktemp("stopped") / "checkpoint"
    counting(checkpoint_dir=directory, stop_after_rung=2)
    return directory


@pytest.fixture
def checkpoint(stopped_after_two: Path, tmp_path: Path) -> Path:
    """A fresh copy of ``stopped_after_two`` for a test to resume or damage."""
    return Path(shutil.copytree(stopped_after_two, tmp_path / "checkpoint"))


# --- resume refuses another search --------------------------------------------------------


def test_resume_continues_the_same_search(checkpoint, uninterrupted):
    assert_results_equal(counting(checkpoint_dir=checkpoint), uninterrupted)


def init_with_momentum(config: jax.Array, key: jax.Array) -> dict:
    return {**count_init(config, key), "momentum": jnp.zeros(3)}


@pytest.mark.parametrize(
    "kwargs, differs",
    [
        # The same N and dtype, other values: resumed before, returning a config never searched.
        (
            {"configs": CONFIGS[::-1]},
            r"configs: saved \['root float32\[9,1\] sha256:\w{64}'\], now",
        ),
        ({"configs": CONFIGS.astype(jnp.int32)}, r"configs: saved .*float32.*now .*int32"),
        ({"configs": {"w": CONFIGS}}, r"configs: saved \['root .*now \[\"\['w'\] float32"),
        ({"init_fn": init_with_momentum}, r"state: saved .*now .*\['momentum'\] float32\[3\]"),
        ({"rung_steps": [1, 2, 4, 5]}, r"rung_steps: saved \[3, 3, 3, 3\], now \[1, 2, 4, 5\]"),
        ({"eta": 3}, r"eta: saved 2, now 3"),
    ],
)
def test_resume_refuses_another_search_naming_what_differs(checkpoint, kwargs, differs):
    with pytest.raises(ValueError, match=f"holds another search(.|\n)*{differs}"):
        counting(checkpoint_dir=checkpoint, **kwargs)


def test_a_directory_of_other_files_or_another_checkpoint_is_refused(tmp_path, checkpoint):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=f"{notes} holds files that are not .*\\(notes.txt\\)"):
        counting(checkpoint_dir=notes)
    os.remove(checkpoint / "yoto_jax_search.json")  # an orbax checkpoint of something else
    with pytest.raises(ValueError, match=r"not a yoto_jax search checkpoint \(1, 2\)"):
        counting(checkpoint_dir=checkpoint)
    with pytest.raises(ValueError, match="is a file; pass a directory"):
        counting(checkpoint_dir=notes / "notes.txt")
    assert os.listdir(notes) == ["notes.txt"]  # refused before writing anything


# --- one process per directory ------------------------------------------------------------

HOLD_LOCK = """
import fcntl, os, sys, time
with open(sys.argv[1], "a+") as file:
    fcntl.flock(file, fcntl.LOCK_EX)
    file.truncate(0)
    file.write(f"process {os.getpid()} on this host\\n")
    file.flush()
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_process_is_refused_until_the_first_dies(checkpoint, uninterrupted):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(checkpoint / "yoto_jax_search.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(RuntimeError, match=f"in use by process {holder.pid} on this host"):
            counting(checkpoint_dir=checkpoint)
    finally:
        holder.send_signal(signal.SIGKILL)  # as a preempted job dies: no cleanup
        holder.wait()
    # The kernel released the dead holder's lock: the search resumes where it stopped.
    assert_results_equal(counting(checkpoint_dir=checkpoint), uninterrupted)


# --- an unreadable latest checkpoint falls back to the one before -------------------------


def truncate_record(step: Path) -> None:
    (step / "search" / "metadata").write_text("{")


def remove_states(step: Path) -> None:
    shutil.rmtree(step / "population")


@pytest.mark.parametrize("damage", [truncate_record, remove_states])
def test_an_unreadable_latest_checkpoint_falls_back(checkpoint, uninterrupted, damage):
    damage(checkpoint / "2")
    with pytest.warns(UserWarning, match=r"rung 2 could not be read .* resumed from rung 1"):
        resumed = counting(checkpoint_dir=checkpoint)
    assert_results_equal(resumed, uninterrupted)
    assert (checkpoint / "2.unreadable").is_dir()  # kept for inspection, out of the way
    assert_results_equal(counting(checkpoint_dir=checkpoint), uninterrupted)  # finished


def test_no_readable_checkpoint_raises(checkpoint):
    truncate_record(checkpoint / "1")
    truncate_record(checkpoint / "2")
    with pytest.raises(ValueError, match="no checkpoint in .* can be read: rung 2: .*rung 1: "):
        counting(checkpoint_dir=checkpoint)


# --- scores, shapes and counts ------------------------------------------------------------


def nan_after_ten_steps(state: dict, config: jax.Array) -> jax.Array:
    return jnp.where(state["steps"] > 10, jnp.nan, state["sum"])


def test_a_rung_or_round_of_nan_scores_raises_naming_it():
    with pytest.raises(ValueError, match=r"every member's score is NaN after rung 3 \(of 4, 3"):
        successive_halving(count_init, count_train, nan_after_ten_steps, CONFIGS, KEY, **STEPS)
    nan_configs = {"weight": CONFIGS * jnp.nan, "seed": SEEDS}  # PBT as compiled below
    with pytest.raises(ValueError, match=r"every member's score is NaN after round 0 \(of 4\)"):
        population_based_training(count_init, seed_train, count_eval, nan_configs, KEY, **PBT)


@pytest.mark.parametrize(
    "explore_fn, match",
    [
        (
            lambda config, key: config[:1],
            r"at the root it returned float32\[1\], expected float32\[2\]",
        ),
        (
            lambda config, key: config.astype(jnp.int32),
            r"returned int32\[2\], expected float32\[2\]",
        ),
        (lambda config, key: {"w": config}, "must keep the pytree structure"),
    ],
)
def test_explore_fn_must_keep_the_config_shapes(explore_fn, match):
    with pytest.raises(ValueError, match=f"explore_fn's config .*{match}"):
        population_based_training(
            count_init,
            count_train,
            count_eval,
            jnp.ones((4, 2)),
            KEY,
            total_steps=2,
            interval=1,
            explore_fn=explore_fn,
        )


def test_train_fn_must_keep_the_state_shapes():
    def train(state, config, key, num_steps):
        return {**count_train(state, config, key, num_steps), "sum": jnp.zeros(2)}

    with pytest.raises(
        ValueError, match=r"\['sum'\] it returned float32\[2\], expected float32\[\]"
    ):
        successive_halving(count_init, train, count_eval, CONFIGS, KEY, **STEPS)


def one_step(state: dict, config: Any, key: Any, num_steps: int) -> dict:
    """A train_fn that ignores ``num_steps``: one step whatever it is asked."""
    return count_train(state, config, key, 1)


def test_a_train_fn_that_ignores_num_steps_is_caught_by_the_step_counter():
    """The state counts its steps (``"steps"``, like an Optax state's ``count``): after
    the first rung (3 steps asked) it reads 1, and the search says so."""
    with pytest.raises(
        ValueError,
        match=r"asked for num_steps=3 steps, but member 0's step counters advanced \['steps'\] by 1",
    ):
        successive_halving(count_init, one_step, count_eval, CONFIGS, KEY, **STEPS)


def population_states(adam_count: Any, nnx_step: Any) -> dict:
    """Four members' states with an Adam count, an NNX step and leaves that are not
    counters."""
    wrapped = jax.vmap(optax.apply_if_finite(optax.adam(1e-3), 3).init)(jnp.zeros((4, 2)))
    adam = jax.vmap(optax.adam(1e-3).init)(jnp.zeros((4, 2)))
    return {
        "wrapped": wrapped,  # apply_if_finite: its inner count does not count skipped steps
        "adam": (adam[0]._replace(count=jnp.asarray(adam_count, jnp.int32)), adam[1]),
        "nnx": {"step": nnx.Variable(jnp.asarray(nnx_step, jnp.uint32))},
        "steps": jnp.zeros(4),  # a float
        "count": jnp.zeros((4, 2), jnp.int32),  # not one scalar per member
    }


def test_step_counters_are_read_where_they_are_reliable():
    """Optax's ``count`` and NNX's ``step`` are counters (a trailing ``.value`` skipped);
    a wrapped optimizer's (``apply_if_finite``: skipped steps do not count) is not, nor a
    float or a per-parameter leaf."""
    before = population_states(np.zeros(4), np.zeros(4))
    assert sorted(step_counters(before)) == ["['adam'][0].count", "['nnx']['step'].value"]
    # One counter reading 5 for every member is enough (the wrapped one never matters).
    check_step_counters(before, population_states(np.full(4, 5), [5, 5, 5, 4]), 5, 4)
    lagging = population_states([5, 5, 5, 4], [5, 5, 5, 4])
    with pytest.raises(ValueError, match=r"member 3's step counters advanced \['adam'\]"):
        check_step_counters(before, lagging, 5, 4)
    check_step_counters(before, lagging, 5, 3)  # member 3 is padding


def test_numpy_ints_are_accepted_where_ints_are(uninterrupted, tmp_path):
    result = successive_halving(
        count_init,
        count_train,
        count_eval,
        CONFIGS,
        KEY,
        total_steps=np.int64(12),
        eta=np.int32(2),
        rung_steps=list(np.full(4, 3, np.int64)),
        checkpoint_dir=tmp_path,
        stop_after_rung=np.int64(4),
    )
    assert_results_equal(result, uninterrupted)
    steps = {"total_steps": np.int64(PBT["total_steps"]), "interval": np.int64(PBT["interval"])}
    pbt = population_based_training(count_init, seed_train, count_eval, SEED_CONFIGS, KEY, **steps)
    assert pbt.member_steps == 9 * 4 and pbt.history.scores.shape == (4, 9)


SEEDS = jnp.arange(100, 109, dtype=jnp.int32)
SEED_CONFIGS = {"weight": CONFIGS, "seed": SEEDS}
PBT = {"total_steps": 4, "interval": 1}  # one compiled program for every PBT run here


def seed_train(state: dict, config: dict, key: jax.Array, num_steps: int) -> dict:
    return count_train(state, config["weight"], key, num_steps)


def test_integer_leaves_are_configurations_too(uninterrupted):
    """A seed per member (int32) next to the loss weights: searched, kept unperturbed."""
    result = successive_halving(count_init, seed_train, count_eval, SEED_CONFIGS, KEY, **STEPS)
    assert result.best_index == uninterrupted.best_index == 8
    assert result.best_config["seed"].dtype == jnp.int32 and int(result.best_config["seed"]) == 108
    pbt = population_based_training(count_init, seed_train, count_eval, SEED_CONFIGS, KEY, **PBT)
    history, parents = pbt.history.configs, np.asarray(pbt.history.parents[:3])
    replaced = parents != np.arange(9)
    assert replaced.any()
    for t in range(3):  # the seeds follow their parents; the weights are perturbed
        np.testing.assert_array_equal(history["seed"][t + 1], history["seed"][t][parents[t]])
        weights = np.asarray(history["weight"][:, :, 0])
        ratios = weights[t + 1][replaced[t]] / weights[t][parents[t]][replaced[t]]
        assert np.all(np.isclose(ratios, 1.25) | np.isclose(ratios, 0.8))
