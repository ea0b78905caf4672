"""The test problems of tests/test_search*.py, and a script that searches one in a fresh process.

The problem: weighted least squares θ ∈ R^3 on a primary and an auxiliary regression
task, config = loss weights (1, w), trained by SGD (Optax, a linear learning-rate
schedule over the total steps, a small key-dependent gradient bias); the score is the
squared error on a validation set whose targets mix the two tasks' parameters, so the
best w is interior and known in closed form.

As a script it runs successive halving on this problem with the population split over
a mesh of simulated CPU devices (``JAX_PLATFORMS=cpu``, ``--devices``; JAX's device
count is fixed when it starts, hence a separate process) and writes the results to
``.npz`` files: ``DIR --stop-after R`` runs the search uninterrupted, then again with a
checkpoint that stops after R rungs, as a preempted job would; a second process, ``DIR``
alone, resumes from that checkpoint.

The counting problem (``count_*``) checks bookkeeping exactly: a member adds its
config's first entry once per step, and its score is that sum.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

import numpy as np

DIM, NUM_TRAIN, NUM_VAL = 3, 32, 64
_RNG = np.random.default_rng(0)
_THETAS = _RNG.normal(size=(2, DIM))  # the primary and the auxiliary task's parameters
XS = _RNG.normal(size=(2, NUM_TRAIN, DIM)).astype(np.float32)
YS = (np.einsum("knd,kd->kn", XS, _THETAS) + 0.3 * _RNG.normal(size=(2, NUM_TRAIN))).astype(
    np.float32
)
X_VAL = _RNG.normal(size=(NUM_VAL, DIM)).astype(np.float32)
Y_VAL = (X_VAL @ (0.6 * _THETAS[0] + 0.4 * _THETAS[1])).astype(np.float32)

AUX_WEIGHTS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
"""The grid of auxiliary weights; the closed-form best is 0.3 (index 3)."""
HALVING_STEPS = 60
GRADIENT_NOISE = 0.02


def weight_rows(aux_weights: Any) -> np.ndarray:
    """Loss-weight rows (1, w), float32, (N, 2)."""
    aux = np.asarray(aux_weights, np.float64)
    return np.stack([np.ones_like(aux), aux], axis=1).astype(np.float32)


def closed_form_theta(weights: np.ndarray) -> np.ndarray:
    """argmin_θ Σ_k w_k mean((X_k θ − y_k)²), in float64."""
    xs, ys = XS.astype(np.float64), YS.astype(np.float64)
    gram = sum(w * x.T @ x / NUM_TRAIN for w, x in zip(weights, xs, strict=True))
    moment = sum(w * x.T @ y / NUM_TRAIN for w, x, y in zip(weights, xs, ys, strict=True))
    return np.linalg.solve(gram, moment)


def closed_form_val_loss(weights: np.ndarray) -> float:
    """The validation loss of the exact minimiser for the loss weights ``weights``."""
    theta = closed_form_theta(np.asarray(weights, np.float64))
    return float(np.mean((X_VAL.astype(np.float64) @ theta - Y_VAL) ** 2))


def make_problem(total_steps: int) -> tuple:
    """``(init_fn, train_fn, eval_fn)``: SGD with a learning rate decaying linearly over
    ``total_steps``; the state counts its steps. ``eval_fn`` is the validation loss."""
    import jax  # imported late: the script sets the device count first
    import jax.numpy as jnp
    import optax

    tx = optax.sgd(optax.linear_schedule(0.3, 0.03, total_steps))

    def loss(theta: jax.Array, weights: jax.Array, xs: jax.Array, ys: jax.Array) -> jax.Array:
        losses = jnp.mean((jnp.einsum("knd,d->kn", xs, theta) - ys) ** 2, axis=1)
        return jnp.dot(weights, losses) / jnp.sum(weights)

    def key_numbers(key: jax.Array) -> jax.Array:
        """DIM numbers in [-1/2, 1/2) from the key's own bits: a stand-in for
        jax.random.uniform that keeps XLA from compiling threefry into every program."""
        bits = jax.random.key_data(key)
        mixed = bits[0] * jnp.arange(1, DIM + 1, dtype=jnp.uint32) ^ bits[1]
        return (mixed >> 8).astype(jnp.float32) / 2**24 - 0.5

    def init_fn(weights: jax.Array, key: jax.Array) -> dict:
        theta = 0.2 * key_numbers(key)
        return {"theta": theta, "opt": tx.init(theta), "steps": jnp.zeros((), jnp.int32)}

    def train_fn(state: dict, weights: jax.Array, key: jax.Array, num_steps: int) -> dict:
        noise = GRADIENT_NOISE * key_numbers(key)  # the same gradient bias for the whole rung
        # The examples in a key-dependent cyclic order: the loss is the same, but the data
        # is indexed with per-member indices, as minibatching would (on a mesh, that must
        # work without sharding annotations).
        order = (jax.random.key_data(key)[0] + jnp.arange(NUM_TRAIN, dtype=jnp.uint32)) % NUM_TRAIN
        xs, ys = jnp.asarray(XS)[:, order], jnp.asarray(YS)[:, order]

        def step(state: dict, _: None) -> tuple[dict, None]:
            grad = jax.grad(loss)(state["theta"], weights, xs, ys) + noise
            updates, opt = tx.update(grad, state["opt"], state["theta"])
            theta = optax.apply_updates(state["theta"], updates)
            return {"theta": theta, "opt": opt, "steps": state["steps"] + 1}, None

        return jax.lax.scan(step, state, None, length=num_steps)[0]

    def eval_fn(state: dict, weights: jax.Array) -> jax.Array:
        return jnp.mean((X_VAL @ state["theta"] - Y_VAL) ** 2)

    return init_fn, train_fn, eval_fn


def count_init(config: Any, key: Any) -> dict:
    """The counting problem's state: its steps and the sum of config[0] over them."""
    import jax.numpy as jnp

    return {"steps": jnp.zeros((), jnp.int32), "sum": jnp.zeros(())}


def count_train(state: dict, config: Any, key: Any, num_steps: int) -> dict:
    """Adds the config's first entry once per step; the score is that sum."""
    return {"steps": state["steps"] + num_steps, "sum": state["sum"] + num_steps * config[0]}


def count_eval(state: dict, config: Any) -> Any:
    return state["sum"]


def result_arrays(result: Any) -> dict[str, np.ndarray]:
    """A halving result as flat arrays, to compare across processes."""
    import jax

    arrays = {"best_index": np.asarray(result.best_index), "steps": np.asarray(result.member_steps)}
    for r, rung in enumerate(result.history):
        arrays[f"indices{r}"], arrays[f"scores{r}"] = rung.indices, rung.scores
    for path, leaf in jax.tree_util.tree_flatten_with_path(result.best_state)[0]:
        arrays["state" + jax.tree_util.keystr(path)] = np.asarray(leaf)
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where the results (.npz) and the checkpoint go")
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    parser.add_argument(
        "--stop-after",
        type=int,
        help="run the search uninterrupted (uninterrupted.npz), then again checkpointed and "
        "stopped after this many rungs (stopped.npz); without it, resume (resumed.npz)",
    )
    args = parser.parse_args()

    import jax  # imported late: the script sets the device count first

    jax.config.update("jax_num_cpu_devices", args.devices)  # CPU only; before JAX starts
    import yoto_jax

    assert jax.device_count() == args.devices
    directory = pathlib.Path(args.directory)

    def search(name: str, **checkpointing: Any) -> None:
        result = yoto_jax.successive_halving(
            *make_problem(HALVING_STEPS),
            weight_rows(AUX_WEIGHTS),
            jax.random.key(0),
            total_steps=HALVING_STEPS,
            maximize=False,
            mesh=jax.make_mesh((args.devices,), ("population",)),
            **checkpointing,
        )
        np.savez(directory / f"{name}.npz", **result_arrays(result))

    checkpoint_dir = directory / "checkpoint"
    if args.stop_after is None:
        search("resumed", checkpoint_dir=checkpoint_dir)
    else:
        search("uninterrupted")
        search("stopped", checkpoint_dir=checkpoint_dir, stop_after_rung=args.stop_after)


if __name__ == "__main__":
    main()
