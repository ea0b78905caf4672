"""The per-loss gradients' geometry in parameter mode and in representation mode.

    python -m benchmarks.gradient_geometry [--tasks depth,segmentation,multidigits]
        [--steps 0,100,200,400] [--seeds 0,1,2] [--batches 4] [--json FILE]

Trains each task (full scale) with equal weights, by the harness's own run
(``benchmarks.training.training``: the same initialisation, batches and Adam as the
``equal`` row), and at each of ``--steps`` takes ``--batches`` random training batches.
On each it compares the T per-loss gradients

* with respect to the shared parameters (the rows of G, the task's ``shared_mask``:
  what the gradient methods combine in parameter mode), and
* with respect to the trunk's output z (the rows of Z, :func:`benchmarks.methods.trunk_split`:
  what they combine in representation mode),

by their T × T cosines and norm ratios ‖g_i‖/‖g_0‖, and by what five methods make of
each Gram matrix: the weights α of MGDA, IMTL-G, Aligned-MTL, UPGrad and Nash-MTL. Both
modes update the trunk by αᵀG (in representation mode (∂z/∂θ)ᵀ Zᵀα = Gᵀα), so the
comparison with equal weights is that of αᵀG with 1ᵀG: their cosine and norm ratio.
The table gives means over seeds and batches (α scaled to α·T/‖α‖₁, so equal weights
read 1, 1, 1); the JSON has every value, unscaled.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import yoto_jax
from benchmarks import record, tasks
from benchmarks.harness import seed_key
from benchmarks.methods import fixed, trunk_split
from benchmarks.training import split_key, training
from yoto_jax import baselines
from yoto_jax.representation import representation_gradients

HIGHEST = jax.lax.Precision.HIGHEST

WEIGHTS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "mgda": baselines.min_norm_weights,
    "imtl_g": baselines.imtl_g_weights,
    "aligned_mtl": baselines.aligned_mtl_weights,
    "upgrad": baselines.upgrad_weights,
    "nash_mtl": baselines.nash_mtl_weights,
}
"""Each method's α from the Gram matrix (the update is αᵀG)."""


def rows(per_loss: Any, num_losses: int, mask: Any = None) -> jax.Array:
    """The (T, n) matrix of a tree of per-loss gradients (leaves with a leading T axis),
    over the leaves where ``mask`` (a tree of bools like it, default all) is True."""
    leaves = jax.tree.leaves(per_loss)
    flags = [True] * len(leaves) if mask is None else jax.tree.leaves(mask)
    return jnp.concatenate(
        [leaf.reshape(num_losses, -1) for leaf, flag in zip(leaves, flags, strict=True) if flag],
        axis=1,
    )


def gradient_matrices(
    split: yoto_jax.RepresentationLosses, model_params: Any, shared: Any, num_losses: int
) -> tuple[jax.Array, jax.Array]:
    """G, the per-loss gradients of the ``shared`` leaves (parameter mode's Jacobian rows),
    and Z, those of the representation z (representation mode's), both (T, ·)."""
    jacobian = jax.jacrev(split)(model_params)
    per_z = representation_gradients(split, model_params, num_losses).per_loss
    return rows(jacobian, num_losses, shared), rows(per_z, num_losses)


def cosines(matrix: jax.Array) -> dict[str, jax.Array]:
    """The rows' Gram matrix, (T, T) cosines and norm ratios ‖g_i‖/‖g_0‖."""
    gram = jnp.matmul(matrix, matrix.T, precision=HIGHEST)
    norms = jnp.sqrt(jnp.diagonal(gram))
    return {"gram": gram, "cosine": gram / jnp.outer(norms, norms), "norm_ratio": norms / norms[0]}


def geometry(matrix: jax.Array, update_basis: jax.Array) -> dict[str, jax.Array]:
    """`cosines` of the rows of ``matrix`` and the methods' α from their Gram matrix; each
    α's update αᵀB on ``update_basis`` B (parameter mode's G) against equal weights' 1ᵀB."""
    out = cosines(matrix)
    gram = out["gram"]
    equal = jnp.sum(update_basis, axis=0)
    for name, weights_fn in WEIGHTS.items():
        alpha = weights_fn(gram)
        update = jnp.matmul(alpha, update_basis, precision=HIGHEST)
        out[f"{name}_alpha"] = alpha
        out[f"{name}_cos_equal"] = jnp.dot(update, equal) / (
            jnp.linalg.norm(update) * jnp.linalg.norm(equal)
        )
        out[f"{name}_norm_equal"] = jnp.linalg.norm(update) / jnp.linalg.norm(equal)
    return out


def task_geometry(
    task: tasks.Task, steps: list[int], seed: int, num_batches: int
) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """``{step: {mode: {quantity: array with a leading batches axis}}}`` along one
    equal-weights run of ``task`` (seed ``seed``)."""
    num_losses = len(task.loss_names)
    key = seed_key(seed)
    run = training(task, fixed, {"weights": jnp.ones(num_losses)}, key, task.data)
    carry = run.init(jax.jit(task.init)(split_key(key)[0]))
    advance = jax.jit(
        lambda carry, start, stop: jax.lax.fori_loop(
            start, stop, lambda step, c: run.step(c, step)[0], carry
        )
    )
    batch_size = task.training.batch_size
    num_train = jax.tree.leaves(task.data.train)[0].shape[0]

    @jax.jit
    def measure(model_params: Any, key: jax.Array) -> dict[str, dict[str, jax.Array]]:
        batch_key, loss_key = jax.random.split(key)
        index = jax.random.randint(batch_key, (batch_size,), 0, num_train)
        batch = jax.tree.map(lambda x: x[index], task.data.train)
        split = trunk_split(lambda p: task.losses(p, batch, loss_key))
        g, z = gradient_matrices(split, model_params, task.shared_mask(model_params), num_losses)
        return {"parameters": geometry(g, g), "representation": geometry(z, g)}

    found, done = {}, 0
    for step in sorted(steps):
        carry = advance(carry, done, step)
        done = step
        keys = jax.random.split(jax.random.fold_in(jax.random.key(seed + 1000), step), num_batches)
        found[step] = jax.tree.map(
            np.asarray, jax.vmap(measure, (None, 0))(carry.params["model"], keys)
        )
    return found


def summary_rows(task_name: str, step: int, per_seed: list[dict]) -> list[str]:
    """Two table rows (parameter, representation) of means over seeds and batches."""
    lines = []
    for mode in ("parameters", "representation"):
        mean = {q: np.mean([s[mode][q] for s in per_seed], axis=(0, 1)) for q in per_seed[0][mode]}
        cos = mean["cosine"]
        pairs = [f"{cos[i, j]:+.2f}" for i in range(len(cos)) for j in range(i + 1, len(cos))]
        ratios = [f"{r:.2g}" for r in mean["norm_ratio"][1:]]
        methods = []
        for name in WEIGHTS:
            alpha = np.stack([s[mode][f"{name}_alpha"] for s in per_seed])
            scaled = alpha * alpha.shape[-1] / np.sum(np.abs(alpha), axis=-1, keepdims=True)
            relative = np.mean(scaled, axis=(0, 1))
            ratios_alpha = ", ".join(f"{r:.2f}" for r in relative)
            methods.append(f"{mean[f'{name}_cos_equal']:.2f} ({ratios_alpha})")
        lines.append(
            f"| {task_name} | {step} | {mode[:5]} | {' '.join(pairs)} | {' '.join(ratios)} | "
            + " | ".join(methods)
            + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(tasks.TASKS))
    parser.add_argument("--steps", default="0,100,200,400")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--scale", default="full", choices=tasks.SCALES)
    parser.add_argument("--json", default="docs/benchmark-representation-2026-12-05/geometry.json")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        "| task | step | mode | cos(0,1) cos(0,2) cos(1,2) | ‖g_i‖/‖g_0‖ | "
        + " | ".join(WEIGHTS)
        + " |  (method: cos(αᵀG, 1ᵀG) (α·T/‖α‖₁))"
    )
    print("|---|---:|---|---|---|" + "---|" * len(WEIGHTS))
    results = {}
    for name in args.tasks.split(","):
        task = tasks.build(name, args.scale)
        if max(steps) > task.training.steps:
            raise ValueError(f"{name}: step {max(steps)} > the run's {task.training.steps} steps.")
        per_seed = [task_geometry(task, steps, seed, args.batches) for seed in seeds]
        results[name] = {
            "losses": list(task.loss_names),
            "steps": {
                str(step): jax.tree.map(
                    lambda *xs: np.stack(xs).tolist(), *(found[step] for found in per_seed)
                )
                for step in sorted(steps)
            },
        }
        for step in sorted(steps):
            print("\n".join(summary_rows(name, step, [found[step] for found in per_seed])))
    payload = {
        "provenance": record.provenance("benchmarks.gradient_geometry", argv),
        "layout": "task -> steps -> step -> mode -> quantity: [seed][batch][...]",
        "seeds": seeds,
        "batches": args.batches,
        "results": results,
    }
    print(f"wrote {record.write_json(args.json, payload, indent=None)}")


if __name__ == "__main__":
    main()
