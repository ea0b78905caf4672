"""The per-step cost of each loss-weighting method relative to fixed weights.

    python -m benchmarks.method_overhead [--task depth] [--rounds 7] [--methods a,b]
        [--num-losses 3,10] [--json FILE]

Each method's program is the benchmark's own (``harness.Programs``: the task's model,
batches and Adam, one run), with the task cut to ``--steps`` training steps and one
evaluation chunk per split, so a run is almost all training steps. Every round runs
each method's compiled program once, in an order that alternates between rounds;
the report gives the median seconds per step over rounds and the ratio of each
method's median to fixed weights' (``equal``). GradNorm, PCGrad, MGDA, CAGrad, Nash-MTL,
IMTL, Aligned-MTL and UPGrad take T backward passes per step, FAMO one extra forward
pass, Auto-λ a validation forward and backward pass and a forward-mode pass; in
representation mode (the ``_rep`` rows, ``benchmarks.methods.REPRESENTATION_METHODS``)
the gradient methods take T backward passes through the heads and one through the trunk.
The ``_products`` rows (and ``_products_rep``, in representation mode) are the methods
whose update is αᵀG with α a function of G Gᵀ, with ``gramian="products"``: the Gram
matrix by one VJP and one JVP per loss in sequence, without the T per-loss gradients,
and the update by one VJP (two with non-shared leaves).

Besides the median, each method gets the median over rounds of its time divided by
fixed weights' in the same round (``paired_ratio``: both share the round's load, as the
machine's other work comes and goes), and the memory of its compiled training step
(``memory_analysis()`` of one jitted ``trainer`` step on one batch: ``temp_bytes``, the
step's working memory, and ``peak_bytes``, with its arguments and outputs).
``--num-losses 3,10`` also times the depth task with T = 10 losses: seven more
one-channel heads on the shared encoder (:func:`depth_with_heads`).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from tqdm import tqdm

import yoto_jax
from benchmarks import losses as L
from benchmarks import record
from benchmarks.harness import Programs, seed_key
from benchmarks.methods import (
    GRADIENT_METHODS,
    METHODS,
    REPRESENTATION_METHODS,
    Method,
    in_representation,
    no_config,
    on_the_trunk,
    single_config,
)
from benchmarks.models import (
    DEPTH_LOSSES,
    LOG_DEPTH_SHIFT,
    ConvNet,
    depth_loss_vector,
    flip_augment,
)
from benchmarks.scenes import CLASSES
from benchmarks.tasks import build
from benchmarks.tasks.base import Batch, Params, Splits, Task
from benchmarks.training import Setting
from yoto_jax import baselines
from yoto_jax.baselines import _gradients

BASELINES = (
    "equal",
    "yoto",
    "uncertainty",
    "dwa",
    "rlw",
    "gradnorm",
    "famo",
    "auto_lambda",
    "nash_mtl",
    "imtl",
    "aligned_mtl",
    "upgrad",
)


GRAM_METHODS = ("pcgrad", "mgda", "cagrad", "nash_mtl", "imtl", "aligned_mtl", "upgrad")
"""The methods with ``gramian="products"`` (their update αᵀG, α a function of G Gᵀ)."""


def with_products(name: str) -> Method:
    """The factory ``baselines.<name>`` on the trunk, as in :data:`METHODS`, with
    ``gramian="products"``; named ``<name>_products``."""
    factory = getattr(baselines, name)
    return Method(
        f"{name}_products",
        lambda config, setting: factory(setting.shared_mask, gramian="products"),
        single_config(no_config),
        f"{name}, the Gram matrix by products (gramian='products')",
    )


PRODUCTS_METHODS: dict[str, Method] = {
    method.name: method
    for name in GRAM_METHODS
    for method in (with_products(name), in_representation(with_products(name)))
}
"""The ``_products`` and ``_products_rep`` rows."""


def _yardstick(
    name: str, shared: Any, weights_fn: Callable[[jax.Array], jax.Array]
) -> yoto_jax.Weighting:
    """The per-loss gradients combined with α = ``weights_fn(G Gᵀ)`` by the library's
    private blocks (no solver): a yardstick, not a method."""
    transformation = _gradients.gram_transformation(name, shared, _gradients.stateless(weights_fn))
    return _gradients.manipulation_weighting(transformation)


def summed_per_loss(shared: Any) -> yoto_jax.Weighting:
    """The floor of every gradient-combination method's cost: the per-loss gradients
    formed (T backward passes; in representation mode, of z through the heads) and
    summed, with no Gram matrix (its entries are never read, so XLA drops it) and no
    solver."""
    return _yardstick("summed_per_loss", shared, lambda gram: jnp.ones(gram.shape[:1], gram.dtype))


def gram_per_loss(shared: Any) -> yoto_jax.Weighting:
    """The floor of the Gram-matrix methods' cost: :func:`summed_per_loss` plus the Gram
    matrix G Gᵀ of the per-loss gradients, which α = 1 + 0 · (G Gᵀ's column sums)
    reads (XLA keeps a product by 0, which is nan for a nan input), and no solver."""
    return _yardstick(
        "gram_per_loss",
        shared,
        lambda gram: jnp.ones(gram.shape[:1], gram.dtype) + 0.0 * jnp.sum(gram, 0),
    )


_SUMMED = on_the_trunk(summed_per_loss, "the per-loss gradients, summed (no Gram, no solver)")
_GRAM = on_the_trunk(gram_per_loss, "the per-loss gradients and their Gram matrix, summed")
FLOOR_METHODS: dict[str, Method] = {
    m.name: m for m in (_SUMMED, in_representation(_SUMMED), _GRAM, in_representation(_GRAM))
}
"""``summed_per_loss`` and ``gram_per_loss``, each also ``_rep``: the cost of forming the
per-loss gradients alone, and with their Gram matrix, in both modes."""


def timing_task(task: Task, steps: int) -> Task:
    """`task` trained for `steps` steps, logging once, evaluated on one chunk per split."""
    chunk = task.training.eval_chunk
    val, test = (jax.tree.map(lambda x: x[:chunk], split) for split in task.data[1:])
    data = Splits(task.data.train, val, test)
    training = task.training._replace(steps=steps, log_every=steps)
    return dataclasses.replace(task, data=data, training=training)


def methods_to_time() -> dict[str, Method]:
    """The registered baselines and YOTO, the gradient-manipulation methods, the
    gradient-combination methods in representation mode, the Gram-matrix methods
    with ``gramian="products"`` in both modes, and the floor rows (``summed_per_loss``,
    ``gram_per_loss``)."""
    return {
        **{name: METHODS[name] for name in BASELINES},
        **GRADIENT_METHODS,
        **REPRESENTATION_METHODS,
        **PRODUCTS_METHODS,
        **FLOOR_METHODS,
    }


class _Outputs:
    """A stand-in model whose ``apply`` returns outputs computed already."""

    def __init__(self, outputs: dict[str, jax.Array]):
        self.outputs = outputs

    def apply(self, params: Params, images: jax.Array) -> dict[str, jax.Array]:
        return self.outputs


def depth_with_heads(task: Task, num_losses: int, width: int) -> Task:
    """The depth task with ``num_losses`` >= 3 losses: its three, then one per extra
    one-channel head on the shared encoder, the squared error of the head's log depth
    against (1 + k / T) x the true log depth (a different target per head, so the
    gradients differ). One encoder pass per evaluation, as in the task."""
    extra = [f"aux{k}" for k in range(num_losses - len(DEPTH_LOSSES))]
    model = ConvNet(
        (("depth", 1), ("segmentation", len(CLASSES) + 1), *((n, 1) for n in extra)), width
    )
    image = task.data.train["image"][:1]

    def losses(params: Params, batch: Batch, key: jax.Array) -> jax.Array:
        images = jnp.asarray(batch["image"])
        outputs = model.apply(params, jnp.concatenate([images, flip_augment(images, key)]))
        log_depth = jnp.log(batch["depth"])
        heads = [
            L.mean_squared_error(
                jnp.split(outputs[name][..., 0], 2)[0] + LOG_DEPTH_SHIFT,
                (1.0 + k / num_losses) * log_depth,
            )
            for k, name in enumerate(extra)
        ]
        base = depth_loss_vector(_Outputs(outputs), params, batch, key)
        return jnp.concatenate([base, jnp.stack(heads)])

    return dataclasses.replace(
        task,
        loss_names=(*DEPTH_LOSSES, *extra),
        init=lambda key: model.init(key, image),
        losses=losses,
        statistics=lambda params, batch: task.statistics(
            {"params": {k: v for k, v in params["params"].items() if k not in extra}}, batch
        ),
    )


def measure(task: Task, methods: dict[str, Method], rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each method, one sample per round, interleaved (the order
    reversed every other round)."""
    programs = Programs(task)
    keys = seed_key(0)[None]
    configs = {name: method.configs(task.num_aux, 0)[:1] for name, method in methods.items()}
    for name, method in tqdm(methods.items(), desc="compile", leave=False):
        programs.run(method.weighting, configs[name], keys)
    samples: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for r in tqdm(range(rounds), desc="rounds", leave=False):
        for name in names if r % 2 == 0 else names[::-1]:
            timed = programs.run(methods[name].weighting, configs[name], keys)
            samples[name].append(timed.run_s / task.training.steps)
    return samples


def step_memory(task: Task, method: Method) -> dict[str, int]:
    """The compiled memory of one jitted ``trainer`` step of ``method`` on one batch
    (Adam, the task's model), from XLA's ``memory_analysis()``: the step's temporaries
    and its peak, arguments + outputs + temporaries - aliased (donated) buffers."""
    batch_size = task.training.batch_size
    train_batch, val_batch = (
        jax.tree.map(lambda x: x[:batch_size], split) for split in task.data[:2]
    )
    schedule = optax.cosine_decay_schedule(task.training.learning_rate, task.training.steps)
    setting = Setting(
        task.shared_mask, schedule, lambda params, key: task.losses(params, val_batch, key)[0]
    )
    config = method.configs(task.num_aux, 0)[0]
    train = yoto_jax.trainer(method.weighting(config, setting), optax.adam(schedule))
    key = seed_key(0)
    state = train.init(task.init(key), len(task.loss_names))

    def step(state, batch, key):
        return train.step(state, lambda params: task.losses(params, batch, key), key)

    stats = jax.jit(step).lower(state, train_batch, key).compile().memory_analysis()
    peak = (  # the CPU's peak_memory_in_bytes leaves the temporaries out
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    return {"temp_bytes": int(stats.temp_size_in_bytes), "peak_bytes": int(peak)}


def paired_ratios(samples: dict[str, list[float]]) -> dict[str, float]:
    """The median over rounds of each method's time over fixed weights' in that round."""
    fixed = samples["equal"]
    return {
        name: statistics.median(t / f for t, f in zip(times, fixed))
        for name, times in samples.items()
    }


def report_for(task: Task, methods: dict[str, Method], rounds: int) -> dict:
    """Timings and memory of every method on ``task``."""
    samples = measure(task, methods, rounds)
    memory = {
        name: step_memory(task, m) for name, m in tqdm(methods.items(), desc="memory", leave=False)
    }
    step_s = {name: statistics.median(times) for name, times in samples.items()}
    return {
        "num_losses": len(task.loss_names),
        "step_s": step_s,
        "ratio_to_fixed": {name: t / step_s["equal"] for name, t in step_s.items()},
        "paired_ratio": paired_ratios(samples),
        "memory": memory,
        "memory_ratio": {
            name: m["peak_bytes"] / memory["equal"]["peak_bytes"] for name, m in memory.items()
        },
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="depth")
    parser.add_argument("--scale", default="quick", help="the task's model and data scale")
    parser.add_argument("--steps", type=int, default=100, help="training steps per sample")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (odd: median)")
    parser.add_argument(
        "--methods", help="comma-separated methods to time (default: all); equal is always timed"
    )
    parser.add_argument(
        "--num-losses",
        help="comma-separated T to time (depth only; T > 3 adds heads, see depth_with_heads); "
        "default: the task's own",
    )
    parser.add_argument("--json", help="write the report to this file")
    args = parser.parse_args()
    methods = methods_to_time()
    if args.methods:
        names = ["equal", *(name for name in args.methods.split(",") if name != "equal")]
        unknown = sorted(set(names) - set(methods))
        if unknown:
            parser.error(f"unknown methods {unknown}; known: {', '.join(methods)}")
        methods = {name: methods[name] for name in names}
    base = build(args.task, args.scale)
    counts = [len(base.loss_names)]
    if args.num_losses:
        counts = [int(n) for n in args.num_losses.split(",")]
        if args.task != "depth" and counts != [len(base.loss_names)]:
            parser.error("--num-losses other than the task's own needs --task depth")
        if min(counts) < len(DEPTH_LOSSES):
            parser.error(f"--num-losses must be >= {len(DEPTH_LOSSES)}")
    width = base.init(seed_key(0))["params"]["encoder"]["Dense_0"]["kernel"].shape[-1]
    report = {
        "task": args.task,
        "scale": args.scale,
        "steps_per_sample": args.steps,
        "rounds": args.rounds,
        **record.provenance("benchmarks.method_overhead"),
        "by_num_losses": {},
    }
    for count in counts:
        task = base if count == len(base.loss_names) else depth_with_heads(base, count, width)
        result = report_for(timing_task(task, args.steps), methods, args.rounds)
        report["by_num_losses"][str(count)] = result
        print(f"T = {count}")
        print(
            f"{'method':20} {'ms/step':>8} {'x fixed':>8} {'paired':>8} {'peak MB':>8} {'x mem':>6}"
        )
        for name, seconds in result["step_s"].items():
            print(
                f"{name:20} {1e3 * seconds:8.3f} {result['ratio_to_fixed'][name]:8.3f} "
                f"{result['paired_ratio'][name]:8.3f} "
                f"{result['memory'][name]['peak_bytes'] / 2**20:8.2f} "
                f"{result['memory_ratio'][name]:6.2f}"
            )
    if args.json:
        record.write_json(args.json, report, indent=2)


if __name__ == "__main__":
    main()
