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
RHO = 0.1
EPS = 0.5
STRATEGIES = ("dp", "fsdp", "shard_map")

Params = dict[str, Any]
Batch = tuple[jax.Array, jax.Array]
Step = Callable[[Params, optax.OptState, Batch], tuple[Params, optax.OptState, jax.Array]]


def init_params(key: jax.Array, yoto: bool = True) -> Params:
    """A two-layer MLP under "model" and, with ``yoto``, µ for two auxiliary losses."""
    k_hidden, k_out = jax.random.split(key)
    params: Params = {
        "model": {
            "hidden": jax.random.normal(k_hidden, (FEATURES, HIDDEN)) / np.sqrt(FEATURES),
            "out": jax.random.normal(k_out, (HIDDEN, OUTPUTS)) / np.sqrt(HIDDEN),
        }
    }
    if yoto:
        params[yoto_jax.MU_KEY] = yoto_jax.init_mu(2, eps=EPS)
    return params


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


def make_step(tx: optax.GradientTransformation, strategy: str, yoto: bool = True) -> Step:
    """A jitted train step for ``strategy`` ("dp", "fsdp" or "shard_map"); ``yoto=False``
    gives the same step with fixed loss weights, those YOTO starts from.

    "dp" and "fsdp" write the step for the global batch and let JAX partition it.
    "shard_map" writes the loss per device: each device computes L_e on its part of
    the batch, and the mean over the mesh (``pmean``) is the loss that is
    differentiated; JAX sums the gradients of the replicated params and µ across
    devices. That is exact for YOTO too: L_e is linear in the losses and λ depends on
    the replicated µ alone, so the mean of per-device L_e is the global-batch L_e.
    """
    fixed_weights = np.asarray(yoto_jax.loss_weights(yoto_jax.init_mu(2, eps=EPS)))

    def loss_fn(params: Params, batch: Batch) -> jax.Array:
        losses = task_losses(params["model"], batch, gather=strategy == "fsdp")
        if yoto:
            return yoto_jax.yoto_composite(params[yoto_jax.MU_KEY], losses)
        return jnp.dot(fixed_weights, losses)

    def mean_over_devices(params: Params, batch: Batch) -> jax.Array:
        return jax.lax.pmean(loss_fn(params, batch), AXIS)

    if strategy == "shard_map":
        value_and_grad = jax.shard_map(
            jax.value_and_grad(mean_over_devices), in_specs=(P(), P(AXIS)), out_specs=P()
        )
    else:
        value_and_grad = jax.value_and_grad(loss_fn)

    @jax.jit
    def step(params: Params, opt_state: optax.OptState, batch: Batch):
        loss, grads = value_and_grad(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def make_optimizer(yoto: bool = True) -> optax.GradientTransformation:
    """Adam for the model and µ, with hyperparameter decay on µ when ``yoto``."""
    adam = optax.adam(LEARNING_RATE)
    return yoto_jax.yoto_optimizer(adam, rho=RHO) if yoto else adam


def param_spec(path: tuple, leaf: jax.Array, strategy: str, num_shards: int) -> P:
    """Where a parameter lives: µ and, but for "fsdp", everything replicated; for
    "fsdp", the model's weights split over the mesh along their first divisible axis."""
    if strategy != "fsdp" or yoto_jax.is_mu_path(path):
        return P()
    for axis, size in enumerate(leaf.shape):
        if size % num_shards == 0:
            return P(*([None] * axis), AXIS)
    return P()


def place(params: Params, mesh: jax.sharding.Mesh, strategy: str) -> Params:
    """``params`` laid out on ``mesh`` for ``strategy``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jax.device_put(
            leaf, NamedSharding(mesh, param_spec(path, leaf, strategy, mesh.size))
        ),
        params,
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
) -> tuple[Step, Params, optax.OptState]:
    """The train step and the initial params and optimizer state laid out on ``mesh``.
    Call it under ``jax.set_mesh(mesh)``."""
    tx = make_optimizer(yoto)
    params = place(init_params(jax.random.key(0), yoto), mesh, strategy)
    return make_step(tx, strategy, yoto), params, jax.jit(tx.init)(params)


def train(mesh: jax.sharding.Mesh, strategy: str, steps: int) -> dict[str, Any]:
    """Trains from a fixed initialisation; returns the loss and µ trajectories, whether
    the params' and optimizer state's shardings stayed as initialised, and which
    leaves are split over devices."""
    data = NamedSharding(mesh, P(AXIS))
    with jax.set_mesh(mesh):
        step, params, opt_state = setup(mesh, strategy)
        initial = (params, opt_state)
        losses, mus, stable = [], [], True
        for t in range(steps):
            batch = jax.device_put(make_batch(t), data)
            params, opt_state, loss = step(params, opt_state, batch)
            stable &= same_layout((params, opt_state), initial)
            losses.append(float(loss))
            mus.append(np.asarray(params[yoto_jax.MU_KEY]).tolist())
    return {
        "loss": losses,
        "mu": mus,
        "shardings_stable": stable,
        "sharded": sharded_leaves({"params": params, "opt_state": opt_state}),
    }


COLLECTIVE = re.compile(
    r"= (.+?) (all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)(?:-start)?\("
)
SHAPE = re.compile(r"[a-z]+\d*\[([\d,]*)\]")


def collectives(mesh: jax.sharding.Mesh, strategy: str, yoto: bool) -> dict[str, list[int]]:
    """The collectives of the compiled train step: for each kind, [ops, elements moved],
    e.g. {"all-reduce": [1, 2115]}."""
    with jax.set_mesh(mesh):
        step, params, opt_state = setup(mesh, strategy, yoto)
        batch = jax.device_put(make_batch(0), NamedSharding(mesh, P(AXIS)))
        hlo = step.lower(params, opt_state, batch).compile().as_text()
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
