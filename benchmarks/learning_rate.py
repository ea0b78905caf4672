"""Fixed against learned learning rates (``yoto_jax.learned_learning_rate``), for docs/learning_rate.md.

Two problems: the test's quadratic (curvatures 0.1 … 10, full batch, SGD and Adam
directions, the final loss) and the suite's ``signal_small`` MLP (Adam, batch 64,
1500 steps, with YOTO and with equal fixed weights; test accuracy and α's trajectory).
Rows: Adam at 1e-4, 1e-3 (the suite's rate) and 1e-2, and learned from 1e-4 and 1e-2
(``horizon`` 1 and ``HORIZON``).

``--tasks`` runs issue 21's benchmark instead (``benchmarks.learning_rate_tasks``):
the three benchmark tasks, against an Adam grid and optax.contrib's
learning-rate-free optimizers.

Run: ``python -m benchmarks.learning_rate [--seeds 3] [--steps 1500]``, or
``python -m benchmarks.learning_rate --tasks [--scale quick] [--seeds 3] [--out DIR]``, or
``python -m benchmarks.learning_rate --tasks --diagnose [--scale quick] [--seeds 3]`` for
the cosine's statistics at fixed rates and the damage done by the first steps at 10×
the rate, or ``... --tasks --variants --scale full --seeds 5 [--out DIR]`` for variants of the rule
(ν drifting up, a cosine decay on top) from 0.1×, 0.001× and 10× the best rate, or
``... --horizons --scale full --seeds 5 [--out DIR]`` for the learned rate's ``horizon``
chosen by leave-one-task-out (``benchmarks.learning_rate_horizon``), or
``... --validation --scale full --seeds 5 [--out DIR]`` for the hypergradient of a held-out
loss against the training one (``benchmarks.learning_rate_validation``).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import yoto_jax
from benchmarks import learning_rate_horizon, learning_rate_tasks, learning_rate_validation
from benchmarks.suite.tasks import TASKS
from yoto_jax import learning_rate

CURVATURES = jnp.logspace(-1, 1, 20)
RATES = (1e-4, 1e-3, 1e-2)


def rows(direction: optax.GradientTransformation) -> dict[str, optax.GradientTransformation]:
    fixed = {f"fixed {a:g}": optax.chain(direction, optax.scale_by_learning_rate(a)) for a in RATES}
    learned = {
        f"learned{label} from {a:g}": yoto_jax.learned_learning_rate(direction, a, horizon=h)
        for label, h in (("", 1.0), (f", horizon {learning_rate.HORIZON:g}", learning_rate.HORIZON))
        for a in (1e-4, 1e-2)
    }
    return fixed | learned


def rate(opt_state) -> jax.Array:
    """The learned α in an optimizer state, nan for a fixed rate."""
    states = [
        s
        for s in jax.tree.leaves(
            opt_state, is_leaf=lambda s: isinstance(s, yoto_jax.LearnedLearningRateState)
        )
        if isinstance(s, yoto_jax.LearnedLearningRateState)
    ]
    return yoto_jax.learning_rate_of(states[0]) if states else jnp.float32(jnp.nan)


def alphas(rates: jax.Array, middle: int | None = None) -> str:
    """α's peak, (value at step ``middle``,) and final value, averaged over the leading
    axis of runs; a dash for a fixed rate."""
    rates = np.asarray(rates)
    if np.isnan(rates).all():
        return "—"
    values = [rates.max(axis=1), rates[:, -1]]
    if middle is not None:
        values.insert(1, rates[:, middle])
    return " / ".join(f"{np.mean(v):.2g}" for v in values)


def quadratic_table(steps: int) -> None:
    def loss(x):
        return 0.5 * jnp.sum(CURVATURES * x * x)

    print(
        f"quadratic (κ = 100), {steps} full-batch steps, "
        f"the final and the peak loss (initial {loss(jnp.ones(20)):.3g}), α's peak and final value"
    )
    for name, direction in (("SGD", optax.identity()), ("Adam", optax.scale_by_adam())):
        for row, tx in rows(direction).items():

            def body(carry, _, tx=tx):
                x, state = carry
                updates, state = tx.update(jax.grad(loss)(x), state, x)
                x = optax.apply_updates(x, updates)
                return (x, state), (loss(x), rate(state))

            x0 = jnp.ones(20)
            (x, _), (losses, rates) = jax.jit(
                lambda x0, tx=tx, body=body: jax.lax.scan(body, (x0, tx.init(x0)), None, steps)
            )(x0)
            print(
                f"| {name} | {row} | {float(loss(x)):.2g} | {float(jnp.max(losses)):.2g} | "
                f"{alphas(rates[None])} |"
            )


def signal_table(seeds: int, steps: int, batch_size: int = 64) -> None:
    task = TASKS["signal_small"]()
    num_losses = len(task.loss_names)
    weightings = {
        "YOTO": yoto_jax.yoto,
        "equal weights": lambda: yoto_jax.fixed_weights(jnp.ones(num_losses)),
    }
    print(
        f"signal_small, Adam, batch {batch_size}, {steps} steps, {seeds} seeds: test accuracy (mean ± std), α's peak, mid-run and final value"
    )
    for weighting_name, weighting in weightings.items():
        for row, tx in rows(optax.scale_by_adam()).items():
            train = yoto_jax.trainer(weighting(), tx)

            def run_one(key, train=train):
                init_key, loop_key = jax.random.split(key)
                num_train = task.data.train["x"].shape[0]

                def step(state, index):
                    batch_key, loss_key, method_key = jax.random.split(
                        jax.random.fold_in(loop_key, index), 3
                    )
                    rows_ = jax.random.randint(batch_key, (batch_size,), 0, num_train)
                    batch = jax.tree.map(lambda x: x[rows_], task.data.train)
                    state, _ = train.step(
                        state, lambda p: task.losses(p, batch, loss_key), method_key
                    )
                    return state, rate(state.opt_state)

                state = train.init(task.init(init_key), num_losses)
                state, rates = jax.lax.scan(step, state, jnp.arange(steps))
                return task.metric(state.params["model"], task.data.test), rates

            start = time.perf_counter()
            accuracy, rates = jax.jit(jax.vmap(run_one))(jax.random.split(jax.random.key(0), seeds))
            print(
                f"| {weighting_name} | {row} | {np.mean(accuracy):.4f} ± {np.std(accuracy):.4f} | "
                f"{alphas(rates, steps // 2)} | {time.perf_counter() - start:.0f} s |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--quadratic-steps", type=int, default=500)
    parser.add_argument(
        "--shrink-ratio",
        type=float,
        default=None,
        help="override SHRINK_RATIO (the fast shrink at a cosine of -1, in units of β; 0: none)",
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="with --tasks: the raw cosine's statistics at fixed rates, and the damage of "
        "the first steps at 10× the rate",
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="with --tasks: the learned rate with ν drifting up (a rest point at a negative "
        "cosine) and times a cosine decay, from 0.1×, 0.001× and 10× the best rate",
    )
    parser.add_argument(
        "--horizons",
        action="store_true",
        help="the learned rate's horizon on the three tasks, chosen by leave-one-task-out",
    )
    parser.add_argument(
        "--validation",
        action="store_true",
        help="the hypergradient of a held-out loss against the training one, on the three tasks",
    )
    parser.add_argument("--tasks", action="store_true", help="issue 21's task benchmark instead")
    parser.add_argument("--scale", default="quick", help="with --tasks/--horizons/--validation")
    parser.add_argument(
        "--out", default=None, help="with --tasks/--horizons/--validation: the JSON's folder"
    )
    args = parser.parse_args()
    if args.shrink_ratio is not None:
        learning_rate.SHRINK_RATIO = args.shrink_ratio
    if args.horizons:
        learning_rate_horizon.main(args.scale, args.seeds, args.out)
        return
    if args.validation:
        learning_rate_validation.main(args.scale, args.seeds, args.out)
        return
    if args.tasks and args.diagnose:
        learning_rate_tasks.diagnose(args.scale, args.seeds)
        return
    if args.tasks and args.variants:
        learning_rate_tasks.variants(args.scale, args.seeds, args.out)
        return
    if args.tasks:
        learning_rate_tasks.main(args.scale, args.seeds, args.out)
        return
    print(f"SHRINK_RATIO {learning_rate.SHRINK_RATIO:g}")
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
    quadratic_table(args.quadratic_steps)
    signal_table(args.seeds, args.steps)


if __name__ == "__main__":
    main()
