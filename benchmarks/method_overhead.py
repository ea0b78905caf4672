"""The per-step cost of each loss-weighting method relative to fixed weights.

    python -m benchmarks.method_overhead [--task depth] [--rounds 7] [--methods a,b] [--json FILE]

Each method's program is the benchmark's own (``harness.Programs``: the task's model,
batches and Adam, one run), with the task cut to ``--steps`` training steps and one
evaluation chunk per split, so a run is almost all training steps. Every round runs
each method's compiled program once, in an order that alternates between rounds;
the report gives the median seconds per step over rounds and the ratio of each
method's median to fixed weights' (``equal``). GradNorm, PCGrad, MGDA, CAGrad, Nash-MTL,
IMTL, Aligned-MTL and UPGrad take T backward passes per step, FAMO one extra forward
pass, Auto-λ a validation forward and backward pass and a forward-mode pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import jax

from benchmarks.harness import Programs, seed_key
from benchmarks.methods import GRADIENT_METHODS, METHODS, Method
from benchmarks.tasks import build
from benchmarks.tasks.base import Splits, Task

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


def timing_task(task: Task, steps: int) -> Task:
    """`task` trained for `steps` steps, logging once, evaluated on one chunk per split."""
    chunk = task.training.eval_chunk
    val, test = (jax.tree.map(lambda x: x[:chunk], split) for split in task.data[1:])
    data = Splits(task.data.train, val, test)
    training = task.training._replace(steps=steps, log_every=steps)
    return dataclasses.replace(task, data=data, training=training)


def methods_to_time() -> dict[str, Method]:
    """The registered baselines and YOTO, plus the gradient-manipulation methods."""
    return {**{name: METHODS[name] for name in BASELINES}, **GRADIENT_METHODS}


def measure(task: Task, methods: dict[str, Method], rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each method, one sample per round, interleaved."""
    programs = Programs(task)
    keys = seed_key(0)[None]
    configs = {name: method.configs(task.num_aux, 0)[:1] for name, method in methods.items()}
    for name, method in methods.items():  # compile and warm up
        programs.run(method.weighting, configs[name], keys)
    samples: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            timed = programs.run(methods[name].weighting, configs[name], keys)
            samples[name].append(timed.run_s / task.training.steps)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="depth")
    parser.add_argument("--scale", default="quick", help="the task's model and data scale")
    parser.add_argument("--steps", type=int, default=100, help="training steps per sample")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (odd: median)")
    parser.add_argument(
        "--methods", help="comma-separated methods to time (default: all); equal is always timed"
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
    task = timing_task(build(args.task, args.scale), args.steps)
    samples = measure(task, methods, args.rounds)
    step_s = {name: statistics.median(times) for name, times in samples.items()}
    report = {
        "task": args.task,
        "scale": args.scale,
        "steps_per_sample": args.steps,
        "rounds": args.rounds,
        "step_s": step_s,
        "ratio_to_fixed": {name: t / step_s["equal"] for name, t in step_s.items()},
        "samples": samples,
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
    }
    print(f"{'method':12} {'ms/step':>8} {'x fixed':>8}")
    for name, seconds in step_s.items():
        print(f"{name:12} {1e3 * seconds:8.3f} {report['ratio_to_fixed'][name]:8.3f}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)


if __name__ == "__main__":
    main()
