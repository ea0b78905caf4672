"""End to end with Flax NNX: one model, three losses, YOTO, a baseline swapped in, a grid.

An MLP on scikit-learn's handwritten digits (shipped with scikit-learn, nothing is
downloaded) is trained on three losses:

* ``digit``, the primary: 10-class cross-entropy;
* ``parity``: is the digit odd (a binary cross-entropy from a second head);
* ``reconstruction``: the 64 pixels from the hidden layer (mean squared error).

It is trained three ways, each reported on the held-out test digits:

1. with YOTO (:class:`yoto_jax.nnx.LossWeights`, the library's defaults);
2. with uncertainty weighting, swapped in by one argument (``weighting=``);
3. with a 3x3 grid of fixed auxiliary weights, all nine runs as one vmapped program
   (:func:`yoto_jax.vmapped_training` over :func:`yoto_jax.trainer`), the best row
   chosen on a validation split.

    python examples/nnx_digits.py [--steps 300]
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import yoto_jax
from yoto_jax import baselines
from yoto_jax.nnx import LossWeights, train_step

LOSS_NAMES = ("digit", "parity", "reconstruction")
LEARNING_RATE = 3e-3
BATCH_SIZE = 64


def digits() -> dict[str, dict[str, jax.Array]]:
    """The digits, pixels scaled to [0, 1], split 60/20/20 into train, val and test."""
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    images = (data.data[order] / 16.0).astype(np.float32)
    labels = data.target[order].astype(np.int32)
    cuts = [int(0.6 * len(labels)), int(0.8 * len(labels))]
    splits = zip(("train", "val", "test"), np.split(images, cuts), np.split(labels, cuts))
    return {name: {"x": jnp.asarray(x), "y": jnp.asarray(y)} for name, x, y in splits}


class Net(nnx.Module):
    """An MLP trunk with three heads: digit logits, parity logit, reconstructed pixels."""

    def __init__(self, rngs: nnx.Rngs):
        self.trunk = nnx.Linear(64, 64, rngs=rngs)
        self.digit = nnx.Linear(64, 10, rngs=rngs)
        self.parity = nnx.Linear(64, 1, rngs=rngs)
        self.reconstruction = nnx.Linear(64, 64, rngs=rngs)

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        hidden = jax.nn.relu(self.trunk(x))
        return {
            "digit": self.digit(hidden),
            "parity": self.parity(hidden)[:, 0],
            "reconstruction": self.reconstruction(hidden),
        }

    def losses(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        out = self(batch["x"])
        odd = (batch["y"] % 2).astype(jnp.float32)
        return {
            "digit": optax.softmax_cross_entropy_with_integer_labels(
                out["digit"], batch["y"]
            ).mean(),
            "parity": optax.sigmoid_binary_cross_entropy(out["parity"], odd).mean(),
            "reconstruction": jnp.mean((out["reconstruction"] - batch["x"]) ** 2),
        }

    def accuracy(self, batch: dict[str, jax.Array]) -> jax.Array:
        return jnp.mean(jnp.argmax(self(batch["x"])["digit"], -1) == batch["y"])


class Model(nnx.Module):
    """The net and the loss weights of its objective, trained by one optimizer."""

    def __init__(self, weighting: yoto_jax.Weighting | None, seed: int = 0):
        self.net = Net(nnx.Rngs(seed))
        self.loss_weights = LossWeights(LOSS_NAMES[0], LOSS_NAMES[1:], weighting=weighting)


def batch_at(train: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
    index = jax.random.randint(key, (BATCH_SIZE,), 0, train["y"].shape[0])
    return jax.tree.map(lambda x: x[index], train)


def train_nnx(weighting: yoto_jax.Weighting | None, data: dict, steps: int) -> tuple[float, dict]:
    """Trains ``Model(weighting)`` with :func:`yoto_jax.nnx.train_step`; test accuracy and
    final weights."""
    model = Model(weighting)
    tx = model.loss_weights.optimizer(optax.adam(LEARNING_RATE))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model: Model, optimizer: nnx.Optimizer, key: jax.Array):
        batch = batch_at(data["train"], key)
        return train_step(model, optimizer, model.loss_weights, lambda m: m.net.losses(batch))

    for i in range(steps):
        step(model, optimizer, jax.random.key(i))
    weights = {name: float(w) for name, w in model.loss_weights.weights().items()}
    return float(model.net.accuracy(data["test"])), weights


GRID_ROWS = yoto_jax.loss_weight_grid([0.01, 0.1, 1.0], num_aux=2)
"""The 3x3 grid of auxiliary weights {0.01, 0.1, 1}, relative to the primary's 1."""


def grid_search(data: dict, steps: int) -> dict[str, np.ndarray]:
    """Every row of ``GRID_ROWS`` trained with fixed weights, nine runs in one program
    (the same initialisation and batches as :func:`train_nnx`); each row's validation
    and test accuracy."""
    graphdef, init_params = nnx.split(Net(nnx.Rngs(0)))

    def losses(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
        named = nnx.merge(graphdef, params).losses(batch)
        return jnp.stack([named[name] for name in LOSS_NAMES])

    def train_one(weights: jax.Array, key: jax.Array, data: dict) -> dict[str, jax.Array]:
        train = yoto_jax.trainer(yoto_jax.fixed_weights(weights), optax.adam(LEARNING_RATE))

        def step(state: yoto_jax.TrainerState, i: jax.Array):
            batch = batch_at(data["train"], jax.random.key(i))
            return train.step(state, lambda params: losses(params, batch))[0], None

        state, _ = jax.lax.scan(step, train.init(init_params, len(LOSS_NAMES)), jnp.arange(steps))
        net = nnx.merge(graphdef, state.params["model"])
        return {split: net.accuracy(data[split]) for split in ("val", "test")}

    accuracy = yoto_jax.vmapped_training(train_one)(GRID_ROWS, jax.random.key(0), data)
    return jax.tree.map(np.asarray, accuracy)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    args = parser.parse_args(argv)
    data = digits()
    results = {}
    for name, weighting in (("yoto", None), ("uncertainty", baselines.uncertainty())):
        accuracy, weights = train_nnx(weighting, data, args.steps)
        results[name] = {"test_accuracy": accuracy, "weights": weights}
        print(f"{name:12} test accuracy {accuracy:.3f}  weights {weights}")
    grid = grid_search(data, args.steps)
    best = int(np.argmax(grid["val"]))  # chosen on validation, reported on test
    row = np.asarray(GRID_ROWS[best]).tolist()
    results["grid_best"] = {"test_accuracy": float(grid["test"][best]), "weights": row}
    print(f"{'grid_best':12} test accuracy {grid['test'][best]:.3f}  weights {row} (9 runs)")
    return results


if __name__ == "__main__":
    main()
