"""Data-parallel and FSDP training with YOTO loss weights on a device mesh.

µ is a handful of scalars in the parameter tree. Replicate it like any small
parameter, shard the batch over a mesh axis (data parallelism) and, optionally,
the model's weights too (FSDP-style); ``yoto_jax`` needs nothing else.

Run on N simulated CPU devices, on any machine (the script forces the CPU platform and
sets the device count before JAX starts, so a GPU machine runs it like a CPU one):

    python examples/sharded_training.py --devices 8 --steps 24

or, without ``--devices``, on the machine's real devices (``jax.devices()``: its GPUs or
TPUs, or one CPU device; the global batch of 64 must divide over them):

    python examples/sharded_training.py --steps 24

It trains the same small three-loss regression model on one device, then on all
devices three ways (data parallel by sharding annotations, FSDP, and data parallel
written per device with ``jax.shard_map``), prints how far the 8-device losses and µ
are from the 1-device ones, and counts the collectives in the compiled train step
with YOTO and with fixed loss weights. ``--json FILE`` writes all of it to a file
(``tests/test_sharding.py`` runs this script so).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import yoto_jax

AXIS = "data"
FEATURES, HIDDEN, OUTPUTS = 16, 64, 2
BATCH = 64  # the global batch; each of n devices holds BATCH / n examples
LEARNING_RATE = 3e-2  # µ shares the model's Adam; a large rate lets it move in a short run
NUM_LOSSES = 3
RHO = 0.1
EPS = 0.5
STRATEGIES = ("dp", "fsdp", "shard_map")

Params = dict[str, Any]
Batch = tuple[jax.Array, jax.Array]
Step = Callable[[yoto_jax.TrainerState, Batch], tuple[yoto_jax.TrainerState, jax.Array]]


def init_model(key: jax.Array) -> Params:
    """A two-layer MLP."""
    k_hidden, k_out = jax.random.split(key)
    return {
        "hidden": jax.random.normal(k_hidden, (FEATURES, HIDDEN)) / np.sqrt(FEATURES),
        "out": jax.random.normal(k_out, (HIDDEN, OUTPUTS)) / np.sqrt(HIDDEN),
    }


def make_batch(step: int) -> Batch:
    """The global batch of a step: inputs and two noisy targets of one teacher."""
    key = jax.random.fold_in(jax.random.key(1), step)
    k_x, k_noise = jax.random.split(key)
    x = jax.random.normal(k_x, (BATCH, FEATURES))
    teacher = jnp.sin(x[:, :1] + 0.5 * x[:, 1:2]) + 0.1 * x[:, 2:3]
    y = teacher + jnp.array([0.05, 0.3]) * jax.random.normal(k_noise, (BATCH, OUTPUTS))
    return x, y


def task_losses(model: Params, batch: Batch, gather: bool) -> jax.Array:
    """(primary, auxiliary, consistency) losses, shape (3,).

    With ``gather`` (FSDP), each sharded weight is all-gathered before it is used.
    """
    if gather:
        model = jax.tree.map(lambda w: jax.sharding.reshard(w, P()), model)
    x, y = batch
    pred = jnp.tanh(x @ model["hidden"]) @ model["out"]
    errors = jnp.mean((pred - y) ** 2, axis=0)
    consistency = jnp.mean((pred[:, 0] - pred[:, 1]) ** 2)
    return jnp.concatenate([errors, consistency[None]])


def make_trainer(yoto: bool = True) -> yoto_jax.Trainer:
    """``yoto_jax.trainer`` with YOTO (µ on the model's Adam, ρ = RHO, from ε = EPS) or,
    ``yoto=False``, with the fixed loss weights YOTO starts from."""
    adam = optax.adam(LEARNING_RATE)
    weighting = yoto_jax.yoto(EPS, RHO, mu_learning_rate=None, primary_floor=0.0)
    if not yoto:
        weighting = yoto_jax.fixed_weights(weighting.weights(*weighting.init(NUM_LOSSES)))
    return yoto_jax.trainer(weighting, adam)


def make_step(train: yoto_jax.Trainer, strategy: str) -> Step:
    """A jitted train step for ``strategy`` ("dp", "fsdp" or "shard_map"), returning the
    new state and the weighted loss Σ λ_i l_i before the step.

    "dp" and "fsdp" write the losses for the global batch and let JAX partition the
    step. "shard_map" writes them per device: each device computes the losses on its
    part of the batch, and their mean over the mesh (``pmean``) is the loss vector the
    weighting sees; JAX sums the gradients of the replicated params across devices.
    That is exact: the losses are means over equal parts of the batch.
    """

    def losses(model: Params, batch: Batch) -> jax.Array:
        return task_losses(model, batch, gather=strategy == "fsdp")

    if strategy == "shard_map":
        losses = jax.shard_map(
            lambda model, batch: jax.lax.pmean(task_losses(model, batch, False), AXIS),
            in_specs=(P(), P(AXIS)),
            out_specs=P(),
        )

    @jax.jit
    def step(state: yoto_jax.TrainerState, batch: Batch):
        state, log = train.step(state, lambda model: losses(model, batch))
        return state, jnp.dot(log.weights, log.losses)

    return step


def param_spec(leaf: jax.Array, strategy: str, num_shards: int) -> P:
    """Where a model weight lives: but for "fsdp", replicated; for "fsdp", split over the
    mesh along its first divisible axis. (µ, created by the trainer's init from no
    input, is replicated.)"""
    if strategy != "fsdp":
        return P()
    for axis, size in enumerate(leaf.shape):
        if size % num_shards == 0:
            return P(*([None] * axis), AXIS)
    return P()


def place(model: Params, mesh: jax.sharding.Mesh, strategy: str) -> Params:
    """The model's weights laid out on ``mesh`` for ``strategy``."""
    return jax.tree.map(
        lambda leaf: jax.device_put(
            leaf, NamedSharding(mesh, param_spec(leaf, strategy, mesh.size))
        ),
        model,
    )


def same_layout(tree: Any, reference: Any) -> bool:
    """Whether every leaf of ``tree`` is laid out as in ``reference`` (P() and
    P(None, None) are the same layout), so an update moved or resharded nothing."""
    return all(
        leaf.sharding.is_equivalent_to(ref.sharding, leaf.ndim)
        for leaf, ref in zip(jax.tree.leaves(tree), jax.tree.leaves(reference), strict=True)
    )


def sharded_leaves(tree: Any) -> list[str]:
    """The key paths of the leaves of ``tree`` that are split over devices."""
    return [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if not leaf.sharding.is_fully_replicated
    ]


def setup(
    mesh: jax.sharding.Mesh, strategy: str, yoto: bool = True
) -> tuple[Step, yoto_jax.TrainerState]:
    """The train step and the initial state (params and optimizer state) laid out on
    ``mesh``. Call it under ``jax.set_mesh(mesh)``."""
    train = make_trainer(yoto)
    model = place(init_model(jax.random.key(0)), mesh, strategy)
    return make_step(train, strategy), jax.jit(train.init, static_argnums=1)(model, NUM_LOSSES)


def train(mesh: jax.sharding.Mesh, strategy: str, steps: int) -> dict[str, Any]:
    """Trains from a fixed initialisation; returns the loss and µ trajectories, whether
    the state's shardings stayed as initialised, and which leaves are split over
    devices."""
    data = NamedSharding(mesh, P(AXIS))
    with jax.set_mesh(mesh):
        step, state = setup(mesh, strategy)
        initial = state
        losses, mus, stable = [], [], True
        for t in range(steps):
            batch = jax.device_put(make_batch(t), data)
            state, loss = step(state, batch)
            stable &= same_layout(state, initial)
            losses.append(float(loss))
            mus.append(np.asarray(state.params["weighting"][yoto_jax.MU_KEY]).tolist())
    return {
        "loss": losses,
        "mu": mus,
        "shardings_stable": stable,
        "sharded": sharded_leaves({"params": state.params, "opt_state": state.opt_state}),
    }


COLLECTIVE = re.compile(
    r"= (.+?) (all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)(?:-start)?\("
)
SHAPE = re.compile(r"[a-z]+\d*\[([\d,]*)\]")


def collectives(mesh: jax.sharding.Mesh, strategy: str, yoto: bool) -> dict[str, list[int]]:
    """The collectives of the compiled train step: for each kind, [ops, elements moved],
    e.g. {"all-reduce": [1, 2115]}."""
    with jax.set_mesh(mesh):
        step, state = setup(mesh, strategy, yoto)
        batch = jax.device_put(make_batch(0), NamedSharding(mesh, P(AXIS)))
        hlo = step.lower(state, batch).compile().as_text()
    found: dict[str, list[int]] = {}
    for result_type, kind in COLLECTIVE.findall(hlo):
        sizes = [
            math.prod(int(d) for d in dims.split(",") if d) for dims in SHAPE.findall(result_type)
        ]
        ops, elements = found.get(kind, [0, 0])
        found[kind] = [ops + 1, elements + sum(sizes)]
    return found


def single_device_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A one-device mesh on the first of ``devices`` (default ``jax.devices()``): the
    reference run, with no collectives."""
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh((1,), (AXIS,), devices=devices[:1])


def run(steps: int) -> dict[str, Any]:
    """Every run and collective count of this example, on all devices and on one."""
    if BATCH % jax.device_count():
        raise ValueError(
            f"the global batch of {BATCH} does not split over {jax.device_count()} devices; "
            "choose a device count that divides it (--devices N simulates N CPU devices)."
        )
    mesh = jax.make_mesh((jax.device_count(),), (AXIS,))
    report: dict[str, Any] = {
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "single": train(single_device_mesh(), "dp", steps),
    }
    for strategy in STRATEGIES:
        report[strategy] = train(mesh, strategy, steps)
        report[f"{strategy}_collectives"] = {
            "yoto": collectives(mesh, strategy, yoto=True),
            "fixed": collectives(mesh, strategy, yoto=False),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--devices",
        type=int,
        help="simulate this many CPU devices (forces the CPU platform, also on a GPU or TPU "
        "machine); without it, run on the real devices, jax.devices()",
    )
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--json", help="write the full report to this file")
    args = parser.parse_args()
    if args.devices is not None:
        if args.devices < 1:
            parser.error("--devices must be >= 1")
        # Both before JAX starts its backends: the CPU platform only (a GPU would be the
        # default device otherwise), with N devices.
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", args.devices)
    report = run(args.steps)
    single = report["single"]
    for strategy in STRATEGIES:
        result = report[strategy]
        loss_gap = np.max(np.abs(np.subtract(result["loss"], single["loss"])))
        mu_gap = np.max(np.abs(np.subtract(result["mu"], single["mu"])))
        print(
            f"{strategy}: {report['devices']} {report['platform']} devices vs 1: "
            f"max |Δloss| {loss_gap:.2e}, "
            f"max |Δµ| {mu_gap:.2e}, shardings stable: {result['shardings_stable']}; "
            f"collectives with YOTO {report[strategy + '_collectives']['yoto']}, "
            f"fixed weights {report[strategy + '_collectives']['fixed']}"
        )
    print(f"final µ {single['mu'][-1]}, λ {yoto_jax.loss_weights(jnp.asarray(single['mu'][-1]))}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file)


if __name__ == "__main__":
    main()
