"""Sharded training on 8 simulated CPU devices equals training on one device.

One subprocess (JAX's device count is fixed when it starts, and the rest of the suite
keeps one device) runs ``examples/sharded_training.py``: data parallel (batch split
over the mesh, params and µ replicated), FSDP (the model's weights split too, µ
replicated) and data parallel written per device with ``jax.shard_map``. This process
runs the same training on its single CPU device as the reference.

Everything runs on the CPU backend, also on a GPU machine (where the default backend
is the GPU, with its own device count and its own float32 matmul precision): the
subprocess with ``JAX_PLATFORMS=cpu``, the reference on ``jax.devices("cpu")``.
"""

import json
import os
import subprocess
import sys
from typing import Any

import jax
import numpy as np
import pytest
from _load import ROOT, load_script

DEVICES, STEPS = 8, 24
STRATEGIES = ("dp", "fsdp", "shard_map")
EXAMPLE = "examples/sharded_training.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    """The example's report from 8 devices, and the reference run in this one-device
    process (computed while the subprocess runs)."""
    out = tmp_path_factory.mktemp("sharding") / "report.json"
    command = [
        sys.executable,
        str(ROOT / EXAMPLE),
        "--devices",
        str(DEVICES),
        "--steps",
        str(STEPS),
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # the example forces it too, with --devices
    with subprocess.Popen(
        [*command, "--json", str(out)], stderr=subprocess.PIPE, env=env
    ) as process:
        cpu = jax.devices("cpu")
        assert len(cpu) == 1
        example = load_script(EXAMPLE)
        # On the CPU, like the subprocess: the mesh puts the params and batches there, and
        # the default device makes the initial values (random draws) there too.
        with jax.default_device(cpu[0]):
            one_device = example.train(example.single_device_mesh(cpu), "dp", STEPS)
        _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode()
    return json.loads(out.read_text()), one_device


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_eight_devices_match_one_device(runs, strategy):
    report, one_device = runs
    assert report["devices"] == DEVICES and report["platform"] == "cpu"
    run = report[strategy]
    assert len(run["loss"]) == STEPS
    np.testing.assert_allclose(run["loss"], one_device["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run["mu"], one_device["mu"], rtol=1e-5, atol=1e-6)
    mu = np.asarray(one_device["mu"])
    assert np.max(np.abs(mu[-1] - mu[0])) > 0.1, "µ must move, or its trajectory says nothing"


def test_shardings_are_stable_and_mu_is_replicated(runs):
    report, one_device = runs
    assert all(report[strategy]["shardings_stable"] for strategy in STRATEGIES)
    assert one_device["shardings_stable"]
    assert report["dp"]["sharded"] == report["shard_map"]["sharded"] == []
    sharded = report["fsdp"]["sharded"]
    # the two weight matrices and their two Adam moments each; nothing of µ
    assert len(sharded) == 6 and all("model" in path for path in sharded)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_yoto_adds_no_collective_ops(runs, strategy):
    """Same collectives as with fixed weights; at most the K + 1 = 3 per-loss scalars more
    in the one gradient all-reduce (with shard_map, which reduces the loss vector that
    µ's gradient needs; under jit partitioning those are reduced in both steps)."""
    found = runs[0][f"{strategy}_collectives"]
    yoto, fixed = found["yoto"], found["fixed"]
    assert "all-reduce" in fixed and yoto.keys() == fixed.keys()
    for kind, (ops, elements) in fixed.items():
        assert yoto[kind][0] == ops
        assert 0 <= yoto[kind][1] - elements <= 3
