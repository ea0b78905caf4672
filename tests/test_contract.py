"""One contract for every method: each of the sixteen weightings (tests/_registry.py)
through the same properties, on one toy problem.

Per method, one jitted program (two configurations vmapped, 50 steps,
``trainer(..., skip_nonfinite=True)``, a NaN target at step 0 and an inf at step 5 in
the first, a NaN at step 3 in the second, so that a loss and its gradients are not
finite) is compiled once and checked for:
training reduces the primary loss; the bad steps are skipped atomically and training
goes on; ``Trainer.weights`` is what ``yoto_jax.Trainer``'s docstring says; a step taken
eagerly by one configuration alone equals the run's. Without compiling: init and
weights shapes for T in {1, 3, 5} and the state structure kept by a step
(``jax.eval_shape``); a step on bfloat16 losses (eager). All methods' states round-trip
through one orbax checkpoint, and one subprocess runs every method on 8 simulated
devices, compared with the runs here. The eight gradient-combination methods run the
same contract in representation mode too (the losses split at the trunk's features
z = tanh(x W), ``yoto_jax.representation_losses``). Without ``skip_nonfinite``,
``optax.apply_if_finite`` lets the NaN into FAMO's, Auto-λ's, DWA's, GradNorm's and
YOTO's weights or statistics.
"""

import functools
import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import _registry as R
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from _toy import assert_trees_equal

import yoto_jax
from yoto_jax import baselines as bl

NAMES = list(R.REGISTRY)
STEPS, DEVICE_STEPS = 50, 8
SHIFT = 0.3  # the second configuration's data: its targets shifted
SECOND_BAD_STEP = 3  # the second configuration's bad step
RTOL = 2e-6  # float32, ~16 ulps of each leaf's scale: jit against eager and vmapped against
# unbatched (one step from the same state), 8 devices against one (8 steps)

NEEDS_TWO_LOSSES = {"yoto": "YOTO needs a primary and at least one auxiliary loss, got 1 loss"}
"""The methods that need T >= 2, and the error they give for T = 1."""

REPRESENTATION = [
    "pcgrad",
    "mgda",
    "cagrad",
    "gradnorm",
    "nash_mtl",
    "imtl",
    "aligned_mtl",
    "upgrad",
]
"""The gradient-combination methods, also run in representation mode."""

CASES = [(name, "parameter") for name in NAMES] + [
    (name, "representation") for name in REPRESENTATION
]
"""(method, mode) for the contract's properties."""

WEIGHTS_LAST_APPLIED = {"auto_lambda", "nash_mtl"}
"""Methods whose ``Trainer.weights`` are the weights the last step applied (the others'
are those the next step applies, but for FAMO's and RLW's, tested on their own)."""


@pytest.fixture(scope="module", autouse=True)
def on_the_cpu():
    """Every computation here on the CPU backend, also on a GPU machine: the 8-device run
    is on simulated CPU devices, and the tolerances are XLA:CPU's float32 (a GPU
    multiplies float32 in TF32 by default, and jit and eager may fuse differently)."""
    with jax.default_device(jax.devices("cpu")[0]):
        yield


def split_losses(x, y, dtype=None):
    """``R.losses`` split at the trunk's features z = tanh(x W) (representation mode)."""
    cast = (lambda a: a) if dtype is None else (lambda a: a.astype(dtype))
    return yoto_jax.representation_losses(
        lambda p: jnp.tanh(cast(x) @ cast(p["trunk"])),
        lambda p, z: jnp.mean((z @ cast(p["heads"]) - cast(y)) ** 2, axis=0),
    )


LOSSES_OF = {"parameter": None, "representation": split_losses}
"""``R.step``'s and ``R.run``'s ``losses_of`` in each mode."""
STEP = {mode: functools.partial(R.step, losses_of=of) for mode, of in LOSSES_OF.items()}
"""One step of ``R.run`` in each mode."""


def configurations(name):
    """The two configurations of the vmapped run: (h, x, y), the second with h's other
    value (if the method has one) and shifted targets."""
    values = R.REGISTRY[name].values or (None, None)
    x, y = R.batches(STEPS)
    return [(values[0], x, y), (values[1], x, y + SHIFT)]


def bad_batches():
    """The bad targets of the two configurations: a NaN at step 0 and an inf at step 5
    (``R.poison``); a NaN at step 3 alone (each member of a vmapped run skips its own)."""
    second = np.zeros(STEPS, np.float32)
    second[SECOND_BAD_STEP] = np.nan
    return np.stack([R.poison(STEPS), second])


@functools.cache
def vmapped_run(name, mode="parameter"):
    """The two configurations' runs, one jitted and vmapped program, as NumPy (``R.run``
    with the losses of ``mode``)."""
    (h0, x0, y0), (h1, x1, y1) = configurations(name)
    hs = None if h0 is None else jnp.array([h0, h1])
    run = jax.vmap(
        lambda h, x, y, bad: R.run(name, h, x, y, bad, LOSSES_OF[mode]),
        (None if hs is None else 0, 0, 0, 0),
    )
    args = (hs, jnp.stack([x0, x1]), jnp.stack([y0, y1]), bad_batches())
    return jax.device_get(R.compile_fast(run, *args)(*args))


def member(tree, i):
    return jax.tree.map(lambda leaf: leaf[i], tree)


def assert_close(got, want, what=""):
    """Equal trees: float leaves within RTOL of the leaf's largest magnitude, others exact."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind == "f":
            atol = RTOL * np.abs(b).max(initial=0.0)
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=atol, err_msg=what)
        else:
            np.testing.assert_array_equal(a, b, err_msg=what)


def test_the_registry_holds_every_method():
    """Every factory of ``yoto_jax.baselines`` (a public function returning a Weighting),
    plus ``yoto`` and ``fixed_weights``, is in the registry, and nothing else."""
    returns = {
        name: typing.get_type_hints(getattr(bl, name)).get("return")
        for name in bl.__all__
        if inspect.isfunction(getattr(bl, name))
    }
    assert None not in returns.values()  # every function says what it returns
    factories = {name for name, kind in returns.items() if kind is yoto_jax.Weighting}
    assert set(NAMES) == factories | {"yoto", "fixed_weights"}
    assert len(NAMES) == 16


@pytest.mark.parametrize("name, mode", CASES)
def test_training_reduces_the_primary_loss_and_skips_the_bad_steps(name, mode):
    result = vmapped_run(name, mode)
    for i, expected in enumerate([[0, R.BAD_STEP], [SECOND_BAD_STEP]]):
        logs, states = member(result.logs, i), member(result.states, i)
        skipped = np.flatnonzero(logs.skipped)
        np.testing.assert_array_equal(skipped, expected)
        primary = logs.losses[:, 0]  # per batch, noisy: the last 10 steps against steps 1-5
        assert primary[-10:].mean() < 0.7 * primary[1:6].mean()
        # The bad steps leave everything as it was, bitwise; the next step moves on.
        for bad in skipped:
            before, after = member(states, bad), member(states, bad + 1)
            assert_trees_equal(after.params, before.params)
            assert_trees_equal(after.weighting_state, before.weighting_state)
            assert_trees_equal(after.opt_state.inner_state, before.opt_state.inner_state)
            moved = member(states, bad + 2).params["model"]["trunk"]
            assert not np.array_equal(moved, after.params["model"]["trunk"])
        guard = states.opt_state
        np.testing.assert_array_equal(
            guard.total_notfinite, np.cumsum(np.isin(np.arange(-1, STEPS), skipped))
        )
        np.testing.assert_array_equal(guard.notfinite_count[1:], logs.skipped)
        assert all(
            np.isfinite(leaf).all()
            for leaf in jax.tree.leaves(member(states, -1))
            if leaf.dtype.kind == "f"
        )


UNGUARDED = {  # what optax.apply_if_finite around the model's optimizer leaves to a NaN
    "famo": (lambda: R.make("famo"), lambda state: state.weighting_state.logits),
    "auto_lambda": (lambda: R.make("auto_lambda"), lambda state: state.weighting_state.weights),
    "dwa": (lambda: R.make("dwa"), lambda state: state.weighting_state.loss_sum),
    "gradnorm": (lambda: R.make("gradnorm"), lambda state: state.weighting_state.initial_losses),
    "yoto": (
        lambda: yoto_jax.yoto(mu_learning_rate=0.05),  # µ on its own Adam
        lambda state: state.params["weighting"][yoto_jax.MU_KEY],
    ),
}


@pytest.mark.parametrize("name", list(UNGUARDED))
def test_apply_if_finite_alone_lets_a_nan_into_the_weighting(name):
    """The reason for ``skip_nonfinite``: FAMO's logits, Auto-λ's λ, DWA's loss sums and
    GradNorm's l(0) are updated outside the optimizer, and YOTO's µ, on its own Adam,
    around the guarded ``tx``: one bad batch (here the first) writes NaN into them."""
    make, weights = UNGUARDED[name]
    tx = optax.apply_if_finite(optax.adam(R.LEARNING_RATE), max_consecutive_errors=5)
    train = yoto_jax.trainer(make(), tx)
    first = train.init(R.model_init(), R.NUM_LOSSES)
    x, y = R.batches(1)
    state, _ = R.step(train, first, x[0], y[0], np.nan, 0)
    assert_trees_equal(state.params["model"], first.params["model"])  # this, it guards
    assert np.isnan(weights(state)).any()


@pytest.mark.parametrize("name, mode", CASES)
def test_trainer_weights_are_the_next_or_the_last_applied(name, mode):
    """``Trainer.weights(state)``, as its docstring says, on the steps that were applied."""
    result = vmapped_run(name, mode)
    for i in range(2):
        logs = member(result.logs, i)
        ok = ~logs.skipped
        applied, before = logs.weights[ok], result.weights_before[i][ok]
        after = result.weights_after[i][ok]
        if name == "famo":  # z = softmax(ξ); a step applies z / l, normalised
            scaled = before / (logs.losses[ok] + 1e-8)
            np.testing.assert_allclose(applied, scaled / scaled.sum(1, keepdims=True), rtol=1e-5)
        elif name == "rlw":  # the expectation; a step applies its key's draw
            np.testing.assert_array_equal(before, np.full_like(before, 1 / 3))
            np.testing.assert_allclose(applied.sum(1), 1.0, rtol=1e-6)
            assert len(np.unique(applied[:, 0])) == len(applied)
        elif name in WEIGHTS_LAST_APPLIED:
            np.testing.assert_array_equal(after, applied)
        else:
            np.testing.assert_allclose(before, applied, rtol=1e-6)


@pytest.mark.parametrize("name, mode", CASES)
def test_jit_and_vmap_equal_an_eager_unbatched_step(name, mode):
    """The second configuration's second step, taken eagerly and alone from the vmapped,
    jitted run's state, gives that run's next state and log; the configurations differ."""
    result = vmapped_run(name, mode)
    h, x, y = configurations(name)[1]
    train = R.trainer(name, R.NUM_LOSSES, h)
    states, logs = member(result.states, 1), member(result.logs, 1)
    state, (_, _, log) = STEP[mode](train, member(states, 1), x[1], y[1], 0.0, 1)
    assert_close(state, member(states, 2))
    assert_close(log, member(logs, 1))
    first, second = (member(result.states.params["model"], i) for i in range(2))
    assert not np.allclose(first["trunk"][-1], second["trunk"][-1])


@pytest.mark.parametrize("name, mode", CASES)
@pytest.mark.parametrize("num_losses", [1, 3, 5])
def test_init_weights_and_step_shapes_keep_the_state_structure(name, mode, num_losses):
    train = R.trainer(name, num_losses)
    if num_losses == 1 and name in NEEDS_TWO_LOSSES:
        with pytest.raises(ValueError, match=NEEDS_TWO_LOSSES[name]):
            train.init(R.model_init(num_losses), num_losses)
        return
    state = train.init(R.model_init(num_losses), num_losses)
    weights = train.weights(state)
    assert weights.shape == (num_losses,) and weights.dtype == jnp.float32
    x, y = R.batches(1, num_losses)
    new_state, (before, after, log) = jax.eval_shape(
        lambda state: STEP[mode](train, state, x[0], y[0], 0.0, 0), state
    )
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    shapes = lambda tree: jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), tree)
    assert shapes(new_state) == shapes(state)
    for value in (before, after, log.losses, log.weights):
        assert value.shape == (num_losses,)
    assert log.skipped.shape == () and log.skipped.dtype == jnp.bool_


@pytest.mark.parametrize("name, mode", CASES)
def test_bfloat16_losses_train_finite_and_close_to_float32(name, mode):
    """An eager step on losses computed in bfloat16: applied, the state finite and its
    floats float32, and the losses within 4 bfloat16 roundings (4 · 2^-8) of float32's."""
    h, x, y = configurations(name)[0]
    train = R.trainer(name, R.NUM_LOSSES, h)
    state = train.init(R.model_init(), R.NUM_LOSSES)
    state, (_, _, log) = STEP[mode](train, state, x[0], y[0], 0.0, 0, jnp.bfloat16)
    assert not bool(log.skipped)
    full = R.losses(R.model_init(), x[0], y[0])
    np.testing.assert_allclose(np.asarray(log.losses, np.float32), full, rtol=4 * 2.0**-8)
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32 and np.isfinite(leaf).all()


def test_orbax_round_trip_of_every_trainer_state_is_bitwise(tmp_path: Path):
    """Every method's final state in one checkpoint, restored into the structure of a fresh
    ``init``."""
    states = {name: member(member(vmapped_run(name).states, 0), -1) for name in NAMES}
    target = {}
    for name in NAMES:
        init = R.trainer(name).init
        target[name] = jax.eval_shape(lambda init=init: init(R.model_init(), R.NUM_LOSSES))
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.save(STEPS, args=ocp.args.StandardSave(states))
        manager.wait_until_finished()
    with ocp.CheckpointManager(tmp_path) as manager:
        restored = manager.restore(STEPS, args=ocp.args.StandardRestore(target))
    for name in NAMES:
        assert_trees_equal(restored[name], jax.tree.map(jnp.asarray, states[name]))


@pytest.fixture(scope="module", autouse=True)
def eight_devices(tmp_path_factory: pytest.TempPathFactory):
    """``python tests/_registry.py``: every method on 8 simulated CPU devices, started
    with the module so that it runs while the other tests do; waits for it on first use."""
    out = tmp_path_factory.mktemp("contract") / "eight_devices.npz"
    command = [sys.executable, str(Path(R.__file__)), str(out), "--steps", str(DEVICE_STEPS)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with subprocess.Popen(command, stderr=subprocess.PIPE, env=env) as process:

        @functools.cache
        def result():
            _, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, stderr.decode()
            return dict(np.load(out))

        yield result


def test_eight_devices_equal_one_device(eight_devices):
    """The batches split over 8 devices (sums in another order): the same model params after
    every step, bad steps included, to a few float32 ulps of their scale."""
    found = eight_devices()
    for name in NAMES:
        params = member(vmapped_run(name).states.params["model"], 0)
        expected = {leaf_name: leaf[: DEVICE_STEPS + 1] for leaf_name, leaf in params.items()}
        got = {leaf_name: found[f"{name}/{leaf_name}"] for leaf_name in params}
        assert_close(got, expected, name)
