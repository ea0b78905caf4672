"""Every loss-weighting method of the library, built for one toy problem: the registry of
tests/test_contract.py, and the script of its 8-device run (``python tests/_registry.py
OUT.npz``, in a fresh process: JAX's device count is fixed when it starts).

The problem: a shared trunk ``tanh(x W)`` (4 -> 3) and one linear head per loss; loss i
is the mean squared error of head i on target i, the primary first. The targets are
noisy, so the losses stay positive (FAMO takes their logarithm). Batches are inputs, so
the 8-device run can split them over a mesh.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import yoto_jax
from yoto_jax import baselines as bl

FEATURES, HIDDEN, BATCH = 4, 3, 16
NUM_LOSSES = 3
LEARNING_RATE = 0.03
BAD_STEP = 5
SHARED = {"trunk": True, "heads": False}
"""The shared parameters, for the methods that act on the trunk's per-loss gradients."""

_RNG = np.random.default_rng(0)
_TEACHER = _RNG.normal(size=(FEATURES, 8)).astype(np.float32)
_VAL_X = _RNG.normal(size=(BATCH, FEATURES)).astype(np.float32)


def batches(num_steps: int, num_losses: int = NUM_LOSSES, shift: float = 0.0):
    """The first ``num_steps`` batches: inputs (steps, BATCH, 4) and targets
    (steps, BATCH, T); each step's batch a function of the step alone."""
    xs, ys = [], []
    for step in range(num_steps):
        rng = np.random.default_rng([1, step])
        x = rng.normal(size=(BATCH, FEATURES))
        noise = 0.3 * rng.normal(size=(BATCH, num_losses))
        xs.append(x)
        ys.append(np.tanh(x @ _TEACHER[:, :num_losses]) + noise + shift)
    return np.asarray(xs, np.float32), np.asarray(ys, np.float32)


def model_init(num_losses: int = NUM_LOSSES) -> dict[str, jax.Array]:
    """The trunk (4, 3) and the heads (3, T), float32."""
    rng = np.random.default_rng(2)
    return {
        "trunk": jnp.asarray(0.5 * rng.normal(size=(FEATURES, HIDDEN)), jnp.float32),
        "heads": jnp.asarray(0.5 * rng.normal(size=(HIDDEN, num_losses)), jnp.float32),
    }


def losses(params: dict[str, jax.Array], x: jax.Array, y: jax.Array, dtype=None) -> jax.Array:
    """The (T,) losses of a batch, computed in ``dtype`` (default: float32)."""
    if dtype is not None:
        params = jax.tree.map(lambda leaf: leaf.astype(dtype), params)
        x, y = x.astype(dtype), y.astype(dtype)
    pred = jnp.tanh(x @ params["trunk"]) @ params["heads"]
    return jnp.mean((pred - y) ** 2, axis=0)


def _val_loss(params: dict[str, jax.Array]) -> jax.Array:
    """Auto-λ's validation loss: the primary head's error on a fixed held-out batch."""
    x = jnp.asarray(_VAL_X)
    pred = jnp.tanh(x @ params["trunk"]) @ params["heads"][:, 0]
    return jnp.mean((pred - jnp.tanh(x @ _TEACHER[:, 0])) ** 2)


class Entry(NamedTuple):
    """``build(num_losses, h)``, and the two values of h in the tests (its default first);
    h may be traced. ``values`` is None for methods without such a hyperparameter."""

    build: Callable[[int, Any], yoto_jax.Weighting]
    values: tuple[float, float] | None = None


REGISTRY: dict[str, Entry] = {
    "yoto": Entry(lambda t, h: yoto_jax.yoto(eps=h), (0.1, 0.5)),
    "fixed_weights": Entry(
        lambda t, h: yoto_jax.fixed_weights(jnp.ones(t).at[1:].multiply(h)), (0.5, 2.0)
    ),
    "equal_weighting": Entry(lambda t, h: bl.equal_weighting()),
    "uncertainty": Entry(lambda t, h: bl.uncertainty(h), (0.0, -0.5)),
    "dwa": Entry(lambda t, h: bl.dwa(3, temperature=h), (2.0, 0.5)),
    "rlw": Entry(lambda t, h: bl.rlw()),
    "gradnorm": Entry(lambda t, h: bl.gradnorm(SHARED, alpha=h), (1.5, 0.0)),
    "famo": Entry(lambda t, h: bl.famo(meta_learning_rate=h), (0.025, 0.2)),
    "pcgrad": Entry(lambda t, h: bl.pcgrad(SHARED)),
    "mgda": Entry(lambda t, h: bl.mgda(SHARED)),
    "cagrad": Entry(lambda t, h: bl.cagrad(SHARED, c=h), (0.4, 0.8)),
    "auto_lambda": Entry(
        lambda t, h: bl.auto_lambda(_val_loss, learning_rate=LEARNING_RATE, meta_learning_rate=h),
        (0.01, 0.03),
    ),
    "nash_mtl": Entry(lambda t, h: bl.nash_mtl(SHARED, max_norm=h), (1.0, 0.2)),
    "imtl": Entry(lambda t, h: bl.imtl(SHARED, log_scale_init=h), (0.0, -0.5)),
    "aligned_mtl": Entry(lambda t, h: bl.aligned_mtl(SHARED)),
    "upgrad": Entry(lambda t, h: bl.upgrad(SHARED)),
}
"""Every method, by the name of its factory."""


def make(name: str, num_losses: int = NUM_LOSSES, h: Any = None) -> yoto_jax.Weighting:
    """The method ``name`` for T = ``num_losses``, with hyperparameter ``h`` (default: its
    first test value)."""
    entry = REGISTRY[name]
    if h is None and entry.values is not None:
        h = entry.values[0]
    return entry.build(num_losses, h)


def trainer(name: str, num_losses: int = NUM_LOSSES, h: Any = None) -> yoto_jax.Trainer:
    """The guarded trainer of ``make(name, num_losses, h)`` with Adam."""
    return yoto_jax.trainer(
        make(name, num_losses, h), optax.adam(LEARNING_RATE), skip_nonfinite=True
    )


def step(
    train: yoto_jax.Trainer,
    state: Any,
    x: jax.Array,
    y: jax.Array,
    bad: jax.Array,
    index: Any,
    dtype: Any = None,
    losses_of: Callable[..., Any] | None = None,
) -> tuple[Any, tuple[jax.Array, jax.Array, yoto_jax.StepLog]]:
    """Step ``index`` on the batch ``x, y``, ``bad`` (0, NaN or inf) added to the first
    example's second target (so the second loss and its gradients are not finite), with
    the key ``fold_in(key(0), index)``; returns the new state, the weights
    ``Trainer.weights`` gives before and after it, and the step's log. The losses_fn is
    ``losses_of(x, y, dtype)`` if given (e.g. the same losses in representation mode),
    else :func:`losses` of the params."""
    y = jnp.asarray(y).at[0, 1].add(bad)

    def losses_fn(params):
        return losses(params, x, y, dtype)

    if losses_of is not None:
        losses_fn = losses_of(x, y, dtype)

    before = train.weights(state)
    state, log = train.step(state, losses_fn, jax.random.fold_in(jax.random.key(0), index))
    return state, (before, train.weights(state), log)


class Run(NamedTuple):
    """A training run: the state before each step and after the last, the weights
    ``Trainer.weights`` gave before and after each step, and the steps' logs."""

    states: Any  # leaves (steps + 1, ...)
    weights_before: jax.Array  # (steps, T)
    weights_after: jax.Array  # (steps, T)
    logs: yoto_jax.StepLog  # leaves (steps, ...)


def run(
    name: str,
    h: Any,
    x: jax.Array,
    y: jax.Array,
    bad: jax.Array,
    losses_of: Callable[..., Any] | None = None,
) -> Run:
    """Trains ``trainer(name, T, h)`` from ``model_init`` on the batches ``x, y`` (one per
    step, leading axis), ``bad[i]`` added to a second target of step i (see :func:`step`,
    which also takes ``losses_of``). Traceable in ``h``, the data and ``bad``."""
    num_losses = y.shape[-1]
    train = trainer(name, num_losses, h)
    first = train.init(model_init(num_losses), num_losses)

    def body(state, inputs):
        state, out = step(train, state, *inputs, losses_of=losses_of)
        return state, (state, *out)

    indices = jnp.arange(x.shape[0])
    _, (states, before, after, logs) = jax.lax.scan(body, first, (x, y, bad, indices))
    states = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, states)
    return Run(states, before, after, logs)


FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}
"""XLA:CPU options that cut the compile time of these small programs by about 3x (they
are compile-bound: each runs in milliseconds)."""


def compile_fast(fn: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """``jax.jit(fn)`` compiled for ``args`` with :data:`FAST_COMPILE`, or without the
    options an XLA version does not know."""
    lowered = jax.jit(fn).lower(*args)
    try:
        return lowered.compile(FAST_COMPILE)
    except jax.errors.JaxRuntimeError as error:
        if "No such compile option" not in str(error):
            raise
        return lowered.compile()


def poison(num_steps: int) -> np.ndarray:
    """The bad batches of the tests: a NaN target at step 0 and an inf at step 5."""
    out = np.zeros(num_steps, np.float32)
    out[0], out[BAD_STEP] = np.nan, np.inf
    return out


def main() -> None:
    """Runs every method on 8 simulated CPU devices, the batches split over them (with
    the bad batches of :func:`poison`), and writes each run's model params before and
    after every step to an .npz file."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", help="the .npz file to write")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--devices", type=int, default=8)
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", args.devices)  # before JAX starts
    assert jax.device_count() == args.devices
    mesh = jax.make_mesh((args.devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
    x, y = (jax.device_put(a, split) for a in batches(args.steps))
    bad = poison(args.steps)
    out = {}
    for name, entry in REGISTRY.items():
        h = None if entry.values is None else entry.values[0]
        program = compile_fast(lambda x, y, bad, name=name, h=h: run(name, h, x, y, bad), x, y, bad)
        result = program(x, y, bad)
        for leaf_name, leaf in result.states.params["model"].items():
            assert len(leaf.sharding.device_set) == args.devices
            out[f"{name}/{leaf_name}"] = np.asarray(leaf)
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
