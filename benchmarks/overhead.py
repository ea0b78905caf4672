"""The per-step cost of YOTO: ``yoto_jax.trainer``'s jitted step with fixed loss weights
against the same step with YOTO, timed in one process, interleaved, on the same model,
batch and optimizer (Adam).

    python -m benchmarks.overhead [--json FILE] [--rounds N] [--control]

Steps (:data:`VARIANTS`), each ``yoto_jax.trainer(weighting, optax.adam(1e-3))``:
``fixed`` (``yoto_jax.fixed_weights``, the weights YOTO starts from), ``yoto`` (the
library's default, ``yoto_jax.yoto(eps, rho)``: µ on its own Adam, the primary's weight
floored at 1/(K+1)) and ``paper`` (``yoto(eps, rho, mu_learning_rate=None,
primary_floor=0.0)``: µ on the model's Adam). ``--control`` adds a second, separately
compiled fixed step (an A/A test: the noise floor).

Configurations: ``convnet`` (the depth benchmark's conv net, batch and losses: SILog,
segmentation cross-entropy, flip consistency; benchmarks/models.py), ``resnet`` (a
larger residual net on the same task) and ``k1`` … ``k64`` (the conv net regressing
K + 1 maps, one loss each). Each round times every configuration's steps back to back,
in alternating order; the medians over rounds are robust to other load on the machine.
ρ is an argument of the jitted step and is changed, like µ, between timed samples: each
step must still compile exactly once (the script fails otherwise). It also prints, and
puts under ``cost`` in the JSON, the size of each compiled step's top-level program
(``compiled.as_text()``'s ENTRY computation): all its instructions, its fusions and
custom calls, and its kernels (every instruction that computes); being deterministic,
these track YOTO's kernel delta on any machine, a CPU-only one too. Numbers and
analysis: benchmarks/OVERHEAD.md.
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import yoto_jax
from benchmarks import record
from benchmarks.models import ConvNet, depth_conv_net, depth_loss_vector
from yoto_jax.trainer import WEIGHTING

LEARNING_RATE = 1e-3
EPS = yoto_jax.DEFAULT_EPS
BATCH_SIZE = 16  # the depth benchmark's training batch

Params = Any
Batch = dict[str, jax.Array]
LossVector = Callable[[Params, Batch], jax.Array]


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with group norm and a skip connection (projected by a 1x1
    convolution when the shape changes)."""

    width: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        strides = (self.stride, self.stride)
        y = nn.relu(nn.GroupNorm(8)(nn.Conv(self.width, (3, 3), strides=strides)(x)))
        y = nn.GroupNorm(8)(nn.Conv(self.width, (3, 3))(y))
        if self.stride != 1 or x.shape[-1] != self.width:
            x = nn.Conv(self.width, (1, 1), strides=strides)(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A small ResNet for dense prediction, with the benchmark conv net's interface:
    three stages of two residual blocks (stride 2 between stages), upsampled back to
    full resolution and fused with the stem; one 3x3 head per output."""

    outputs: tuple[tuple[str, int], ...]
    widths: tuple[int, ...] = (32, 64, 128)

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        stem = nn.relu(nn.Conv(self.widths[0], (3, 3))(images))
        x = stem
        for stage, width in enumerate(self.widths):
            x = ResidualBlock(width, stride=1 if stage == 0 else 2)(x)
            x = ResidualBlock(width)(x)
        scale = 2 ** (len(self.widths) - 1)
        x = jnp.repeat(jnp.repeat(x, scale, axis=1), scale, axis=2)
        features = jnp.concatenate([x, stem], axis=-1)
        return {name: nn.Conv(ch, (3, 3), name=name)(features) for name, ch in self.outputs}


@dataclass(frozen=True)
class Workload:
    """Initial model params, a batch and the loss vector (K + 1 losses, primary first)."""

    name: str
    params: Params
    batch: Batch
    losses: LossVector
    num_aux: int


CONFIGS = ("convnet", "resnet", "k1", "k4", "k16", "k64")


def workload(name: str, batch_size: int = BATCH_SIZE) -> Workload:
    """(a) "convnet": the depth benchmark's conv net and losses (SILog, segmentation
    cross-entropy, flip consistency); (b) "resnet": a ResNet on the same task; (c)
    "k<K>": the conv net regressing K + 1 maps, one squared error each."""
    depth = depth_conv_net()
    batch = jax.tree.map(jnp.asarray, depth.sample_batch(batch_size))
    init_key, augment_key = jax.random.split(jax.random.key(0))
    if name == "convnet":
        losses = functools.partial(depth.loss_vector, key=augment_key)
        return Workload(name, jax.jit(depth.init)(init_key), batch, losses, num_aux=2)
    if name == "resnet":
        resnet = ResNet(depth.model.outputs)
        losses = functools.partial(depth_loss_vector, resnet, key=augment_key)
        params = jax.jit(resnet.init)(init_key, batch["image"])
        return Workload(name, params, batch, losses, num_aux=2)
    k = int(name.removeprefix("k"))
    model = ConvNet((("maps", k + 1),), depth.model.width)
    targets = jax.random.normal(augment_key, (*batch["depth"].shape, k + 1))
    return Workload(
        name,
        jax.jit(model.init)(init_key, batch["image"]),
        {"image": batch["image"], "targets": targets},
        functools.partial(map_losses, model),
        num_aux=k,
    )


def map_losses(model: ConvNet, params: Params, batch: Batch) -> jax.Array:
    """One mean squared error per output map: K + 1 losses."""
    maps = model.apply(params, batch["image"])["maps"]
    return jnp.mean((maps - batch["targets"]) ** 2, axis=(0, 1, 2))


VARIANTS = ("fixed", "yoto", "paper")
"""The steps timed against each other: fixed weights, YOTO's default path (µ on its own
Adam, the primary's weight floored at 1/(K+1)) and the paper's (µ on the model's Adam,
no floor)."""

WeightingOf = Callable[[jax.Array], yoto_jax.Weighting]


def weightings(num_aux: int) -> dict[str, WeightingOf]:
    """Each variant's weighting as a function of ρ (traced inside the jitted step).

    The fixed weights are those the default YOTO step starts from (ε = 0.1, the
    primary floored at 1/(K+1)); ``"control"`` is the fixed weighting again.
    """
    start = yoto_jax.yoto(EPS)
    fixed = start.weights(*start.init(num_aux + 1))
    return {
        "fixed": lambda rho: yoto_jax.fixed_weights(fixed),
        "yoto": lambda rho: yoto_jax.yoto(EPS, rho),
        "paper": lambda rho: yoto_jax.yoto(EPS, rho, mu_learning_rate=None, primary_floor=0.0),
        "control": lambda rho: yoto_jax.fixed_weights(fixed),
    }


@dataclass
class Run:
    """A jitted train step (:func:`yoto_jax.trainer`'s), its state, its ρ, and how many
    times it was traced."""

    step: Callable[..., tuple[yoto_jax.TrainerState, yoto_jax.StepLog]]
    state: yoto_jax.TrainerState
    rho: jax.Array
    traces: list[None]
    steps_per_call: int = 1

    def run(self, batch: Batch, calls: int) -> float:
        """Calls the jitted step ``calls`` times; returns the mean seconds per training
        step."""
        start = time.perf_counter()
        for _ in range(calls):
            self.state, log = self.step(self.state, batch, self.rho)
        log.losses.block_until_ready()
        return (time.perf_counter() - start) / (calls * self.steps_per_call)


def train_run(work: Workload, weighting_of: WeightingOf, steps_per_call: int = 1) -> Run:
    """A :class:`Run` of ``yoto_jax.trainer(weighting_of(rho), optax.adam(lr))`` on the
    workload, counting its traces. ρ is an argument of the jitted step, so changing it
    does not recompile (the fixed step ignores it). With ``steps_per_call`` > 1, one
    call runs that many training steps in a ``jax.lax.scan``: the host dispatches once
    per call, so the time per step is the device's alone."""
    traces: list[None] = []
    tx = optax.adam(LEARNING_RATE)

    @jax.jit
    def step(state: yoto_jax.TrainerState, batch: Batch, rho: jax.Array):
        traces.append(None)  # runs only when JAX traces, i.e. compiles, the step
        train = yoto_jax.trainer(weighting_of(rho), tx)

        def one_step(state: yoto_jax.TrainerState, _: None):
            return train.step(state, lambda params: work.losses(params, batch))

        if steps_per_call == 1:
            return one_step(state, None)
        state, logs = jax.lax.scan(one_step, state, length=steps_per_call)
        return state, jax.tree.map(lambda log: log[-1], logs)

    rho = jnp.asarray(yoto_jax.DEFAULT_RHO, jnp.float32)
    state = yoto_jax.trainer(weighting_of(rho), tx).init(work.params, work.num_aux + 1)
    return Run(step, state, rho, traces, steps_per_call)


def runs(work: Workload, control: bool = False, steps_per_call: int = 1) -> dict[str, Run]:
    """The fixed-weights and the two YOTO runs of a workload (:data:`VARIANTS`). With
    ``control``, also a second, separately compiled copy of the fixed-weights step: its
    ratio to the first is the noise floor of the measurement (an A/A test)."""
    weighting_of = weightings(work.num_aux)
    names = (*VARIANTS, "control") if control else VARIANTS
    return {name: train_run(work, weighting_of[name], steps_per_call) for name in names}


BOOKKEEPING = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "bitcast"})
"""Top-level HLO opcodes that only name or regroup buffers: no computation, no kernel."""

LAUNCHES = frozenset({"fusion", "custom-call"})
"""The opcodes that are kernels on every backend: fusions, and library calls (on GPUs,
cuBLAS gemms and cuDNN convolutions are custom calls). XLA:CPU leaves some dots and
convolutions as plain ``dot``/``convolution`` instructions: kernels, but not these."""


def opcode(instruction: str) -> str:
    """The opcode of one HLO instruction line, e.g. ``%f = f32[8]{0} fusion(...)`` → fusion.
    The result type may be a tuple, ``(f32[8]{0}, /*index=1*/s32[])``, with spaces."""
    rest = instruction.split(" = ", 1)[1]
    if rest.startswith("("):  # skip the tuple type up to its matching parenthesis
        depth = 0
        for end, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                break
        rest = rest[end + 1 :]
    else:
        rest = rest.split(" ", 1)[1]
    match = re.match(r"\s*([\w-]+)\(", rest)
    if match is None:
        raise ValueError(f"not an HLO instruction: {instruction[:200]}")
    return match.group(1)


def entry_opcodes(hlo: str) -> list[str]:
    """The opcodes of the top-level instructions (the ENTRY computation) of an HLO module's
    text (``compiled.as_text()``), in program order."""
    entry = hlo.split("\nENTRY ", 1)[1].split("\n}", 1)[0]
    return [opcode(line) for line in entry.splitlines()[1:] if " = " in line]


def program_cost(run: Run, batch: Batch, hlo_file: Path | None = None) -> dict[str, float]:
    """XLA's count of the compiled step's flops, transcendentals and bytes accessed, and
    the size of its top-level program (deterministic, unlike timings):
    ``entry_instructions``, every instruction of the ENTRY computation; ``fusions``, its
    fusions and custom calls, each one kernel on any backend; ``kernels``, every
    instruction that computes (those and the unfused ops: dots, convolutions, copies,
    concatenations…; on a GPU, one launch each), i.e. all but parameters, constants,
    tuples, get-tuple-elements and bitcasts. Also ``state_nodes``, the pytree nodes of
    the train state, which the host flattens and rebuilds at every call of the jitted
    step (at about 1 ms per step on a GPU, the host's share). With ``hlo_file``, the
    compiled program's text is written there."""
    compiled = run.step.lower(run.state, batch, run.rho).compile()
    cost = compiled.cost_analysis()
    hlo = compiled.as_text()
    if hlo_file is not None:
        hlo_file.write_text(hlo)
    opcodes = entry_opcodes(hlo)
    keys = ("flops", "transcendentals", "bytes accessed")
    return {key.replace(" ", "_"): cost[key] for key in keys} | {
        "entry_instructions": len(opcodes),
        "fusions": sum(op in LAUNCHES for op in opcodes),
        "kernels": sum(op not in BOOKKEEPING for op in opcodes),
        "state_nodes": jax.tree.structure(run.state).num_nodes,
    }


def perturb(run: Run, round_index: int) -> None:
    """Sets a new ρ and a new µ in a YOTO run: neither may retrace."""
    run.rho = jnp.asarray(0.05 * (1 + round_index % 3), jnp.float32)
    params = run.state.params
    mu = params[WEIGHTING][yoto_jax.MU_KEY]
    new_mu = yoto_jax.init_mu(mu.shape[0], eps=0.1 + 0.1 * (round_index % 2))
    weighting = params[WEIGHTING] | {yoto_jax.MU_KEY: new_mu}
    run.state = run.state._replace(params=params | {WEIGHTING: weighting})


def measure(
    works: list[Workload],
    rounds: int,
    seconds: float,
    control: bool,
    hlo_dir: Path | None,
    steps_per_call: int = 1,
) -> dict[str, dict[str, Any]]:
    """Interleaved timings: per workload and variant, the seconds per step of each round.
    The program sizes are those of one training step (also with ``steps_per_call`` > 1);
    with ``hlo_dir``, each one's text goes to ``{config}_{variant}.hlo.txt`` there."""
    found = {work.name: runs(work, control, steps_per_call) for work in works}
    samples: dict[str, dict[str, list[float]]] = {}
    calls: dict[str, int] = {}
    for work in works:  # compile, warm up, and size each sample to about `seconds`
        for variant in found[work.name].values():
            variant.run(work.batch, 2)
        per_call = steps_per_call * found[work.name]["fixed"].run(work.batch, 2)
        calls[work.name] = max(1, round(seconds / per_call))
        samples[work.name] = {variant: [] for variant in found[work.name]}
    for r in range(rounds):
        for work in works:
            order = list(found[work.name]) if r % 2 == 0 else list(reversed(found[work.name]))
            for variant in VARIANTS[1:]:
                perturb(found[work.name][variant], r)
            for variant in order:
                samples[work.name][variant].append(
                    found[work.name][variant].run(work.batch, calls[work.name])
                )
    compiles = {
        name: {variant: len(run.traces) for variant, run in variants.items()}
        for name, variants in found.items()
    }

    def hlo_file(name: str, variant: str) -> Path | None:
        return None if hlo_dir is None else hlo_dir / f"{name}_{variant}.hlo.txt"

    one_step = found if steps_per_call == 1 else {work.name: runs(work) for work in works}
    costs = {
        work.name: {
            v: program_cost(one_step[work.name][v], work.batch, hlo_file(work.name, v))
            for v in VARIANTS
        }
        for work in works
    }
    return {
        "samples": samples,
        "compiles": compiles,
        "calls_per_sample": calls,
        "steps_per_call": steps_per_call,
        "cost": costs,
    }


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """The median over rounds of ``times / reference``, each round's pair timed together."""
    return statistics.median(t / r for t, r in zip(times, reference, strict=True))


def summarise(measured: dict[str, Any]) -> dict[str, Any]:
    """The JSON report, per configuration and variant: median step times; the ratio to
    the fixed step, as the median of the rounds' paired ratios (each round times all
    steps back to back, so load that drifts between rounds cancels) and as the ratio of
    the medians; compile counts; XLA's cost of each program and what each YOTO variant
    adds to the fixed step's."""
    step_s, ratio, of_medians, extra = {}, {}, {}, {}
    for name, variants in measured["samples"].items():
        step_s[name] = {variant: statistics.median(times) for variant, times in variants.items()}
        others = [variant for variant in variants if variant != "fixed"]
        ratio[name] = {v: paired_ratio(variants[v], variants["fixed"]) for v in others}
        of_medians[name] = {v: step_s[name][v] / step_s[name]["fixed"] for v in others}
        cost = measured["cost"][name]
        extra[name] = {
            v: {key: cost[v][key] - cost["fixed"][key] for key in cost["fixed"]}
            for v in VARIANTS[1:]
        }
    return {
        "ratio": ratio,
        "compiles": measured["compiles"],
        "step_s": step_s,
        "ratio_of_medians": of_medians,
        "cost": measured["cost"],
        "yoto_extra_cost": extra,
        "calls_per_sample": measured["calls_per_sample"],
        "steps_per_call": measured["steps_per_call"],
        "rounds": len(next(iter(measured["samples"].values()))["fixed"]),
        **record.provenance("benchmarks.overhead"),
    }


def run(
    names: tuple[str, ...] = CONFIGS,
    batch_size: int = BATCH_SIZE,
    rounds: int = 31,
    sample_s: float = 0.1,
    control: bool = False,
    hlo_dir: Path | None = None,
    steps_per_call: int = 1,
) -> dict[str, Any]:
    """Builds, compiles and times the configurations ``names``; returns the report."""
    works = [workload(name, batch_size) for name in names]
    return summarise(measure(works, rounds, sample_s, control, hlo_dir, steps_per_call))


def table(report: dict[str, Any]) -> str:
    """The report as a text table, one configuration and YOTO variant a row; A/A is the
    control's ratio (with ``--control``)."""
    header = f"{'config':8} {'variant':7} {'fixed ms':>9} {'step ms':>9} {'ratio':>7} "
    rows = [header + f"{'of med.':>7} {'A/A':>7} {'MFLOP':>9} {'+flop':>6} {'+kernels':>8}"]
    for name, times in report["step_s"].items():
        for variant in VARIANTS[1:]:
            extra = report["yoto_extra_cost"][name][variant]
            rows.append(
                f"{name:8} {variant:7} {1e3 * times['fixed']:9.3f} {1e3 * times[variant]:9.3f} "
                f"{report['ratio'][name][variant]:7.4f} "
                f"{report['ratio_of_medians'][name][variant]:7.4f} "
                f"{report['ratio'][name].get('control', float('nan')):7.4f} "
                f"{report['cost'][name]['fixed']['flops'] / 1e6:9.1f} {extra['flops']:6.0f} "
                f"{extra['kernels']:8d}"
            )
    rows.append(f"compiles: {report['compiles']}")
    return "\n".join(rows)


def program_table(report: dict[str, Any]) -> str:
    """The size of each compiled step's top-level program, fixed → YOTO variant (its
    extra)."""
    counts = ("entry_instructions", "fusions", "kernels", "state_nodes")
    rows = [f"{'config':8} {'variant':7} " + " ".join(f"{count:>20}" for count in counts)]
    for name, cost in report["cost"].items():
        for variant in VARIANTS[1:]:
            extra = report["yoto_extra_cost"][name][variant]
            cells = (f"{cost['fixed'][c]} → {cost[variant][c]} ({extra[c]:+d})" for c in counts)
            rows.append(f"{name:8} {variant:7} " + " ".join(f"{cell:>20}" for cell in cells))
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the report to this file")
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds")
    parser.add_argument("--sample-s", type=float, default=0.1, help="seconds per timed sample")
    parser.add_argument("--batch", type=int, default=BATCH_SIZE)
    parser.add_argument("--only", default=",".join(CONFIGS), help="e.g. convnet,k64")
    parser.add_argument(
        "--control", action="store_true", help="also time a copy of the fixed step (A/A)"
    )
    parser.add_argument(
        "--hlo", type=Path, help="write each compiled step's HLO text to this directory"
    )
    parser.add_argument(
        "--steps-per-call",
        type=int,
        default=1,
        help="training steps per jitted call (a lax.scan): the host dispatches once per "
        "call, so the step time is the device's alone",
    )
    args = parser.parse_args()
    if args.steps_per_call < 1:
        parser.error("--steps-per-call must be >= 1")
    names = tuple(args.only.split(","))
    if args.hlo is not None:
        args.hlo.mkdir(parents=True, exist_ok=True)
    report = run(
        names, args.batch, args.rounds, args.sample_s, args.control, args.hlo, args.steps_per_call
    )
    print(table(report))
    print("\nTop-level HLO of the compiled steps, fixed → YOTO (YOTO's extra):")
    print(program_table(report))
    if args.json:
        record.write_json(args.json, report, indent=2)
    retraced = {n: c for n, c in report["compiles"].items() if set(c.values()) != {1}}
    if retraced:
        raise SystemExit(f"a step compiled more than once: {retraced}")


if __name__ == "__main__":
    main()
