"""benchmarks/learning_rate_tasks.py: its one-program optimizer switch is each optimizer.

Every member of the task benchmark's vmapped program picks its optimizer by a traced
index (``one_of``); each member must train as that optimizer alone would, and the Adam
rows as the harness's ``optax.adam(cosine_decay_schedule(rate, steps))``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import yoto_jax
from benchmarks.learning_rate_tasks import CONTRIB, Row, drifted, members, optimizer

STEPS = 30
CURVATURES = jnp.linspace(0.5, 2.0, 6)


def run(tx: optax.GradientTransformation) -> jax.Array:
    """``STEPS`` steps on a noise-free quadratic centred at 1: the final params."""
    loss = lambda x: 0.5 * jnp.sum(CURVATURES * (x["w"] - 1.0) ** 2)

    def body(carry, _):
        x, state = carry
        updates, state = tx.update(jax.grad(loss)(x), state, x)
        return (optax.apply_updates(x, updates), state), None

    x0 = {"w": jnp.zeros(6)}
    return jax.lax.scan(body, (x0, tx.init(x0)), None, STEPS)[0][0]["w"]


def test_each_member_trains_as_its_optimizer_alone():
    rows = members()
    expected = {
        "Adam 0.03": optax.adam(optax.cosine_decay_schedule(0.03, STEPS)),
        "learned from 0.03": yoto_jax.learned_learning_rate(optax.scale_by_adam(), 0.03),
        "ramped from 0.03": yoto_jax.learned_learning_rate(
            optax.scale_by_adam(), 0.03, ramp_from=0.01
        ),
        "horizon from 0.03": yoto_jax.learned_learning_rate(
            optax.scale_by_adam(), 0.03, horizon=33.0
        ),
        "horizon, ramped from 0.03": yoto_jax.learned_learning_rate(
            optax.scale_by_adam(), 0.03, ramp_from=0.01, horizon=33.0
        ),
        **{name: make() for name, make in CONTRIB.items()},
    }
    chosen = [rows[name] for name in expected]
    fields = {f: jnp.asarray([getattr(r, f) for r in chosen]) for f in Row._fields}
    batched = jax.jit(jax.vmap(lambda row: run(optimizer(row, STEPS))))(fields)
    for i, (name, tx) in enumerate(expected.items()):
        alone = run(tx)
        scale = float(jnp.max(jnp.abs(alone)))
        assert scale > 1e-4, name  # it moved (DoG starts with 1e-6 steps)
        np.testing.assert_allclose(batched[i], alone, rtol=1e-5, atol=1e-6 * scale, err_msg=name)


def test_drifted_shifts_log_rate_and_updates_after_the_first_step():
    """``drifted``: each step is the rule's own step from the same state, then ν and the
    updates moved up by β·drift (nats), except on the first step."""
    shift = yoto_jax.DEFAULT_META_LEARNING_RATE * 0.3
    rule = yoto_jax.learned_learning_rate(optax.identity(), 0.1)
    pushed = drifted(rule, jnp.asarray(0.3))
    params = {"w": jnp.zeros(2)}
    state = pushed.init(params)
    for step, w in enumerate([[1.0, -2.0], [0.5, 1.5], [-1.0, 0.25]]):
        grads = {"w": jnp.asarray(w)}
        expected_updates, expected_state = rule.update(grads, state, params)
        updates, state = pushed.update(grads, state, params)
        moved = shift if step > 0 else 0.0
        np.testing.assert_allclose(
            state.log_learning_rate, expected_state.log_learning_rate + moved, rtol=1e-6
        )
        np.testing.assert_allclose(updates["w"], expected_updates["w"] * np.exp(moved), rtol=1e-6)
        assert state.count == expected_state.count == step + 1
