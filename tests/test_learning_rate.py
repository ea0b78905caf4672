"""learned_learning_rate: α = exp(ν) learnt by the normalised hypergradient.

On a quadratic with curvatures 0.1 … 10 (κ = 100), fixed SGD diverges above
α = 2/L = 0.2 and the tuned fixed α comes from a grid; started 10–100× too small
(and, for SGD, past the divergence edge) the learned rate with the default meta
settings reaches the tuned run's loss decrease within the stated factor.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _toy import assert_trees_equal
from _ulps import assert_close_at_scale
from test_checkpoint import save_and_restore

import yoto_jax
from yoto_jax import learning_rate as L

CURVATURES = jnp.logspace(-1, 1, 20)
X0 = jnp.ones(20)
STEPS = 500
GRID = jnp.logspace(-4, 0, 17)
DIRECTIONS = {"sgd": optax.identity(), "adam": optax.scale_by_adam()}
FRACTION_OF_TUNED = {
    ("sgd", 1.0): 1.0,
    ("adam", 1.0): 0.25,
    ("sgd", L.HORIZON): 1.0,
    ("adam", L.HORIZON): 0.15,
}
"""The learned run's loss decrease in nats over the tuned fixed run's, at least, by
direction and ``horizon``. SGD: the learned rate takes longer steps than any stable
fixed one (up to 5× 2/L, shrinking whenever the stiff directions oscillate) and ends
lower (measured 1.39× from 100× too small, 1.47× from 10×, 1.59× from 2.0; with the
horizon of 33 steps 1.42×, 1.51× and 4.4×). Adam: the
learned α peaks near 0.08, 2.5× above the grid's best 0.032, and then falls to
3e-4–7e-3 on this noiseless problem, where the cosine's sign stays consistent near the
optimum (measured 0.40 from 100× too small, 0.41 from 10×), far ahead of the fixed run
at its start. With the horizon of 33 steps Adam's momentum oscillation reads as "too
large" for longer and the learned α ends lower (measured 0.196 and 0.22): the horizon is
for minibatch training, where it learns more (docs/learning_rate.md)."""


def quadratic(x: jax.Array) -> jax.Array:
    return 0.5 * jnp.sum(CURVATURES * x * x)


def run(tx: optax.GradientTransformation, steps: int = STEPS, x=X0, state=None, trace=None):
    """``steps`` full-batch steps on the quadratic: the final params and state, and with
    ``trace(x, state)`` after every step."""

    def body(carry, _):
        x, state = carry
        updates, state = tx.update(jax.grad(quadratic)(x), state, x)
        x = optax.apply_updates(x, updates)
        return (x, state), None if trace is None else trace(x, state)

    state = tx.init(x) if state is None else state
    final, traced = jax.lax.scan(body, (x, state), None, steps)
    return final if trace is None else (final, traced)


def fixed_losses(direction: optax.GradientTransformation, rates: jax.Array = GRID) -> jax.Array:
    """The final loss of fixed α over ``rates`` (nan where it diverged)."""
    tx = lambda a: optax.chain(direction, optax.scale_by_learning_rate(a))
    return jax.jit(jax.vmap(lambda a: quadratic(run(tx(a))[0])))(rates)


@pytest.mark.parametrize(("name", "horizon"), list(FRACTION_OF_TUNED))
def test_learned_rate_reaches_the_tuned_rate_from_far_off(name, horizon):
    direction = DIRECTIONS[name]
    fixed = np.asarray(fixed_losses(direction))
    tuned = float(np.nanmin(fixed))
    starts = jnp.array([GRID[np.nanargmin(fixed)] / 100, GRID[np.nanargmin(fixed)] / 10])
    if name == "sgd":
        starts = jnp.append(starts, 2.0)  # fixed SGD diverges there (10× the edge 2/L)
        diverged = quadratic(run(optax.chain(direction, optax.scale_by_learning_rate(2.0)))[0])
        assert not float(diverged) < 1e10  # inf or nan

    def learned(alpha):
        tx = yoto_jax.learned_learning_rate(direction, alpha, horizon=horizon)
        _, (losses, rates) = run(
            tx, trace=lambda x, s: (quadratic(x), yoto_jax.learning_rate_of(s))
        )
        return losses, rates

    losses, rates = jax.jit(jax.vmap(learned))(starts)
    initial = float(quadratic(X0))
    # Linear convergence: compare the loss decrease in nats, log(f₀/f_T).
    tuned_decrease = np.log(initial / tuned)
    assert tuned_decrease > 10
    np.testing.assert_array_less(
        FRACTION_OF_TUNED[name, horizon] * tuned_decrease,
        np.log(initial) - np.log(np.maximum(np.asarray(losses[:, -1]), np.finfo(np.float32).tiny)),
    )
    np.testing.assert_array_less(losses[:2].max(axis=1), 1.001 * initial)  # never rose
    at_start = fixed_losses(direction, starts[:2])
    np.testing.assert_array_less(100 * losses[:2, -1], at_start)
    np.testing.assert_array_less(2 * starts[:2], rates[:2].max(axis=1))  # α grew
    if name == "sgd":
        assert float(rates[2].min()) < 0.2  # α came down below the edge 2/L


def hypergradient_cosine(
    x: jax.Array, direction: jax.Array, alpha: float, loss=quadratic
) -> jax.Array:
    """The cosine of −∂f(x − α d)/∂α with d, and the gradient at x − α d, for f ``loss``:
    the derivative is a central difference (exact on a quadratic up to rounding)."""
    h = alpha / 2
    step = lambda a: loss(x - a * direction)
    finite_difference = (step(alpha + h) - step(alpha - h)) / (2 * h)
    g = jax.grad(loss)(x - alpha * direction)
    return -finite_difference / (jnp.linalg.norm(g) * jnp.linalg.norm(direction))


def test_the_rate_moves_by_the_normalised_mean_of_the_hypergradients_cosine():
    """Three steps of SGD on the quadratic: the state's running moments are those of the
    hypergradient's cosines (central differences of the loss in α), and ν₃ − ν₂ is
    β·m̂/√v̂ (b₁ = 0.8, b₂ = 0.99, bias-corrected; no shrink while the cosine is > −τ)."""
    alpha, beta = 0.02, 0.05
    b1, b2 = L.COSINE_DECAY, L.SQUARE_DECAY
    tx = yoto_jax.learned_learning_rate(optax.identity(), alpha, meta_learning_rate=beta)
    x1, state1 = run(tx, steps=1)
    assert float(state1.log_learning_rate) == pytest.approx(np.log(alpha), abs=1e-7)
    assert float(state1.cosine_mean) == 0.0  # no previous direction yet
    x2, state2 = run(tx, steps=1, x=x1, state=state1)
    _, state3 = run(tx, steps=1, x=x2, state=state2)

    c1 = float(hypergradient_cosine(X0, jax.grad(quadratic)(X0), alpha))
    alpha2 = float(jnp.exp(state2.log_learning_rate))
    c2 = float(hypergradient_cosine(x1, jax.grad(quadratic)(x1), alpha2))
    assert 0 < c2 < c1 < 1  # α is too small: consecutive gradients agree
    np.testing.assert_allclose(float(state2.cosine_mean), (1 - b1) * c1, rtol=1e-4)
    mean = b1 * (1 - b1) * c1 + (1 - b1) * c2
    square = b2 * (1 - b2) * c1**2 + (1 - b2) * c2**2
    np.testing.assert_allclose(float(state3.cosine_mean), mean, rtol=1e-4)
    np.testing.assert_allclose(float(state3.cosine_square), square, rtol=1e-4)
    # the first cosine alone: m̂/√v̂ = 1, whatever its size
    step = float(state2.log_learning_rate - state1.log_learning_rate)
    np.testing.assert_allclose(step, beta, rtol=1e-5)
    ratio = (mean / (1 - b1**2)) / np.sqrt(square / (1 - b2**2))
    assert 0.9 < ratio < 1.0  # c₂ < c₁
    step = float(state3.log_learning_rate - state2.log_learning_rate)
    np.testing.assert_allclose(step, beta * ratio, rtol=1e-4)


def test_the_horizon_reads_the_cosine_with_the_discounted_past_directions():
    """Four SGD steps with ``horizon=H``: the trace is e = γ(γd₀ + d₁) + d₂ (γ = 1 − 1/H,
    d_t = g_t for SGD), the moments are those of cos(g_t, e_{t}) from gradients taken
    here, and ν's step is β·m̂/√v̂ (no shrink while the one-step cosine is > −τ)."""
    alpha, beta, horizon = 0.02, 0.05, 4.0
    gamma, b1, b2 = 1 - 1 / horizon, L.COSINE_DECAY, L.SQUARE_DECAY
    tx = yoto_jax.learned_learning_rate(
        optax.identity(), alpha, meta_learning_rate=beta, horizon=horizon
    )
    xs, states = [X0], [tx.init(X0)]
    for _ in range(4):
        x, state = run(tx, steps=1, x=xs[-1], state=states[-1])
        xs.append(x)
        states.append(state)
    g = [np.asarray(jax.grad(quadratic)(x), np.float64) for x in xs]
    cos = lambda a, b: np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    traces = [g[0], gamma * g[0] + g[1], gamma**2 * g[0] + gamma * g[1] + g[2]]
    cosines = [cos(g[t + 1], traces[t]) for t in range(3)]
    assert cosines[2] < cos(g[3], g[2])  # the past steps agree less with the gradient now
    assert_close_at_scale(states[4].direction_trace, traces[2])
    mean = square = 0.0
    for c in cosines:
        mean, square = b1 * mean + (1 - b1) * c, b2 * square + (1 - b2) * c**2
    np.testing.assert_allclose(float(states[4].cosine_mean), mean, rtol=1e-5)
    np.testing.assert_allclose(float(states[4].cosine_square), square, rtol=1e-5)
    ratio = (mean / (1 - b1**3)) / np.sqrt(square / (1 - b2**3))
    step = float(states[4].log_learning_rate - states[3].log_learning_rate)
    np.testing.assert_allclose(step, beta * ratio, rtol=1e-4)
    assert yoto_jax.learned_learning_rate(optax.identity(), alpha).init(X0).direction_trace is None


def test_a_too_large_rate_shrinks_faster():
    """At α past 2/L, g₁ opposes d₀ (cosine c < −τ): ν falls by β(1 + K(−c − τ)/(1 − τ)),
    the normalised mean's −1 and the fast shrink (the closed form)."""
    alpha, beta = 0.5, 0.05
    tx = yoto_jax.learned_learning_rate(optax.identity(), alpha, meta_learning_rate=beta)
    x1, state1 = run(tx, steps=1)
    _, state2 = run(tx, steps=1, x=x1, state=state1)
    d0 = CURVATURES * X0
    g1 = CURVATURES * (1 - alpha * CURVATURES) * X0
    cosine = np.dot(g1, d0) / (np.linalg.norm(g1) * np.linalg.norm(d0))
    tau = L.SHRINK_THRESHOLD
    assert cosine < -tau
    step = float(state2.log_learning_rate - state1.log_learning_rate)
    expected = beta * (-1.0 + L.SHRINK_RATIO * (cosine + tau) / (1 - tau))
    np.testing.assert_allclose(step, expected, rtol=1e-4)


def noisy_run(signal: float, steps: int = 500, dim: int = 100, seeds: int = 64) -> jax.Array:
    """SGD's learned rate fed gradients g_t = signal·e + ξ_t (ξ_t standard normal in
    ``dim`` dimensions, e a fixed unit vector), independent of the params: log(α_T/α₀)
    per seed."""
    tx = yoto_jax.learned_learning_rate(optax.identity(), 1e-2)
    e = jnp.ones(dim) / jnp.sqrt(dim)

    def one(key):
        def body(state, key):
            _, state = tx.update(signal * e + jax.random.normal(key, (dim,)), state)
            return state, None

        state, _ = jax.lax.scan(body, tx.init(jnp.zeros(dim)), jax.random.split(key, steps))
        return state.log_learning_rate - jnp.log(1e-2)

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), seeds))


def test_zero_mean_noise_leaves_the_rate_alone_and_a_weak_signal_moves_it():
    """Cosines of pure noise (zero mean, std 1/√dim = 0.1) move ν by a random walk of
    about β√T = 1.1 nats per seed and no drift: the 64 seeds' mean stays within 0.5 nats
    of 0 after 500 steps (measured −0.18, std 1.10), where a rule shrinking 10× faster
    than it grows, ν += β·min(c, 10c), drifts by −4.5β·E|c|·T ≈ −9 nats. A weak mean
    (signal 3: a cosine mean of 0.08 against a noise of 0.1) grows α by more than 10
    nats over the same steps (measured 15.9, 0.63β a step)."""
    noise = np.asarray(noisy_run(0.0))
    assert abs(noise.mean()) < 0.5
    assert 0.3 < noise.std() < 3 * 0.05 * np.sqrt(500)
    assert float(np.asarray(noisy_run(3.0)).mean()) > 10


def test_zero_meta_rate_is_the_fixed_rate_and_vmap_over_initial_rates():
    alphas = jnp.array([0.01, 0.1])
    learned = jax.vmap(
        lambda a: run(
            yoto_jax.learned_learning_rate(optax.scale_by_adam(), a, meta_learning_rate=0.0), 20
        )[0]
    )(alphas)
    fixed = jax.vmap(
        lambda a: run(optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(a)), 20)[0]
    )(alphas)
    np.testing.assert_allclose(learned, fixed, rtol=1e-6, atol=1e-6)
    # vmapped members equal the single runs, with the default meta rate
    one = lambda a: run(yoto_jax.learned_learning_rate(optax.identity(), a), 20)
    batched = jax.vmap(one)(alphas)
    for i, a in enumerate([0.01, 0.1]):
        single = one(a)
        np.testing.assert_allclose(batched[0][i], single[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(
            yoto_jax.learning_rate_of(batched[1])[i],
            yoto_jax.learning_rate_of(single[1]),
            rtol=1e-6,
        )


def test_chain_with_clipping_and_apply_if_finite_skip_a_nan_step():
    tx = optax.apply_if_finite(
        optax.chain(
            optax.clip_by_global_norm(1.0), yoto_jax.learned_learning_rate(optax.identity(), 0.1)
        ),
        max_consecutive_errors=5,
    )
    x, state = run(tx, steps=5)
    before = state
    updates, state = tx.update(jnp.full(20, jnp.nan), state, x)
    assert np.all(np.asarray(updates) == 0)
    assert_trees_equal(state.inner_state, before.inner_state)
    rate = yoto_jax.learning_rate_of(state.inner_state[1])
    assert np.isfinite(float(rate)) and float(rate) > 0.1  # clipped steps agreed: α grew


@pytest.mark.parametrize("horizon", [1.0, L.HORIZON])
def test_resume_from_an_orbax_checkpoint_is_bitwise(tmp_path: Path, horizon: float):
    tx = yoto_jax.learned_learning_rate(optax.scale_by_adam(), 1e-3, horizon=horizon)
    expected = run(tx, steps=12)
    saved = run(tx, steps=6)
    fresh = (X0 * 2, tx.init(X0 * 2))
    x, state = save_and_restore(tmp_path, 6, saved, fresh)
    assert_trees_equal(run(tx, steps=6, x=x, state=state), expected)
    assert float(yoto_jax.learning_rate_of(expected[1])) > 1e-3


W_TRUE = jnp.array([1.0, -2.0, 0.5])


def yoto_run(tx: optax.GradientTransformation, steps: int = 100):
    """YOTO's trainer on a noiseless least-squares primary and an L2 auxiliary: the final state
    and the primary loss."""

    def losses(w, x):
        return jnp.stack([jnp.mean((x @ (w - W_TRUE)) ** 2), jnp.mean(w**2)])

    train = yoto_jax.trainer(yoto_jax.yoto(), tx)
    x = jax.random.normal(jax.random.key(0), (16, 3))

    def body(state, key):
        state, log = train.step(state, lambda w: losses(w, x), key)
        return state, log.losses[0]

    keys = jax.random.split(jax.random.key(1), steps)
    return jax.jit(lambda s: jax.lax.scan(body, s, keys))(train.init(jnp.zeros(3), num_losses=2))


def test_trains_with_yoto_in_the_trainer():
    state, primary = yoto_run(yoto_jax.learned_learning_rate(optax.scale_by_adam(), 1e-3))
    _, fixed = yoto_run(optax.adam(1e-3))
    rates = [
        yoto_jax.learning_rate_of(s)
        for s in jax.tree.leaves(
            state.opt_state, is_leaf=lambda s: isinstance(s, yoto_jax.LearnedLearningRateState)
        )
        if isinstance(s, yoto_jax.LearnedLearningRateState)
    ]
    assert len(rates) == 1 and float(rates[0]) > 1e-2  # α grew 10× from 1e-3
    assert float(primary[-1]) < 0.5 * float(fixed[-1]) < 0.5 * float(primary[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"learning_rate": 0.0}, ValueError, "learning_rate must be a finite number > 0, got 0.0"),
        ({"learning_rate": -1e-3}, ValueError, "learning_rate must be a finite number > 0"),
        (
            {"learning_rate": float("nan")},
            ValueError,
            "learning_rate must be a finite number > 0, got nan",
        ),
        (
            {"meta_learning_rate": -0.1},
            ValueError,
            "meta_learning_rate must be a finite number >= 0",
        ),
        ({"meta_learning_rate": float("nan")}, ValueError, "meta_learning_rate must be a finite"),
        ({"direction": optax.adam}, TypeError, "direction must be an optax.GradientTransformation"),
        ({"ramp_from": 0.0}, ValueError, "or a finite number in (0, 1], the fraction"),
        ({"ramp_from": 1.5}, ValueError, "in (0, 1], the fraction of learning_rate"),
        ({"ramp_from": float("nan")}, ValueError, "ramp_from must be None"),
        ({"horizon": 0.5}, ValueError, "horizon must be a concrete finite number >= 1"),
        ({"horizon": float("inf")}, ValueError, "horizon must be a concrete finite number"),
        ({"horizon": jnp.ones(2)}, ValueError, "expected a scalar hyperparameter, got shape"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, error, message):
    arguments = {"direction": optax.identity(), "learning_rate": 1e-3} | kwargs
    direction = arguments.pop("direction")
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        yoto_jax.learned_learning_rate(direction, **arguments)


def test_a_traced_horizon_is_refused_at_trace_time():
    make = lambda h: yoto_jax.learned_learning_rate(optax.identity(), 1e-3, horizon=h).init(X0)
    with pytest.raises(ValueError, match="horizon must be a concrete finite number >= 1"):
        jax.jit(make)(33.0)


def test_learning_rate_of_finds_the_state_inside_a_trainer_and_names_a_missing_one():
    tx = yoto_jax.learned_learning_rate(optax.scale_by_adam(), 3e-3)
    state = yoto_jax.trainer(yoto_jax.yoto(), tx).init(jnp.zeros(2), 2)
    np.testing.assert_allclose(yoto_jax.learning_rate_of(state.opt_state), 3e-3, rtol=1e-6)
    with pytest.raises(ValueError, match="holds no LearnedLearningRateState"):
        yoto_jax.learning_rate_of(optax.adam(1e-3).init(jnp.zeros(2)))


GROUP_CURVATURES = {"flat": jnp.logspace(-2, 0, 10), "stiff": jnp.logspace(0, 2, 10)}
"""Two parameter groups (κ = 100 each) whose stability edges 2/L differ 100×: 2 and 0.02."""


def group_loss(x: dict, groups=tuple(GROUP_CURVATURES)) -> jax.Array:
    return sum(0.5 * jnp.sum(GROUP_CURVATURES[g] * x[g] ** 2) for g in groups)


def group_run(tx: optax.GradientTransformation, groups=tuple(GROUP_CURVATURES), steps=300):
    """``steps`` steps on the groups' quadratic from ones: the final params and state, and
    each step's learned α per group (read by label when ``tx`` is a partition; none for a
    fixed rate)."""
    x0 = {g: jnp.ones(10) for g in groups}
    loss = lambda x: group_loss(x, groups)
    state = tx.init(x0)
    labels = groups if isinstance(state, optax.PartitionState) else [None]
    if not optax.tree_utils.tree_get_all_with_path(state, "log_learning_rate"):
        labels = []

    def body(carry, _):
        x, state = carry
        updates, state = tx.update(jax.grad(loss)(x), state, x)
        x = optax.apply_updates(x, updates)
        rates = [yoto_jax.learning_rate_of(state, g) for g in labels]
        return (x, state), jnp.stack(rates) if rates else None

    return jax.jit(lambda x0: jax.lax.scan(body, (x0, tx.init(x0)), None, steps))(x0)


def per_group(alpha: float) -> optax.GradientTransformation:
    return optax.partition(
        {g: yoto_jax.learned_learning_rate(optax.identity(), alpha) for g in GROUP_CURVATURES},
        {g: g for g in GROUP_CURVATURES},
    )


@pytest.mark.parametrize("alpha", [1e-3, 1.0])
def test_one_rate_per_partition_group_moves_to_each_groups_tuned_rate(alpha):
    """From 1e-3 (both groups far too small) and from 1.0 (50× past the stiff group's
    edge), each group's α settles within 3× of its own tuned fixed SGD rate (a grid,
    each group trained alone, near 2/(m + L)), 100× apart: measured 1.3–2.2× above it
    for the flat group (the learned SGD rate runs past the fixed stability edge, as on
    the κ = 100 quadratic above), 1.2–1.3× for the stiff one. One shared α is held
    below the stiff group's edge and leaves the flat group's loss far higher."""
    grid = jnp.logspace(-4, 1, 21)
    tuned = {}
    for g, h in GROUP_CURVATURES.items():
        losses = jax.vmap(lambda a, g=g: group_loss(group_run(optax.sgd(a), (g,))[0][0], (g,)))(
            grid
        )
        tuned[g] = float(grid[np.nanargmin(np.asarray(losses))])
        np.testing.assert_allclose(tuned[g] * (h.min() + h.max()) / 2, 1, rtol=0.15)

    (x, _), rates = group_run(per_group(alpha))
    settled = np.exp(np.log(np.asarray(rates[150:])).mean(axis=0))  # the second half's
    for i, g in enumerate(GROUP_CURVATURES):
        np.testing.assert_allclose(np.log(settled[i] / tuned[g]), 0.0, atol=np.log(3.0))
    assert 30 < settled[0] / settled[1] < 300
    (shared, _), _ = group_run(yoto_jax.learned_learning_rate(optax.identity(), alpha))
    flat = float(group_loss(x, ("flat",)))
    assert float(group_loss(shared, ("flat",))) > 100 * flat


def test_partition_groups_equal_separate_single_group_runs():
    """The quadratic is separable, so each group of the partitioned run is the run of
    one learned rate on that group alone: the same params and α."""
    (x, state), rates = group_run(per_group(1e-2), steps=60)
    for i, g in enumerate(GROUP_CURVATURES):
        single = yoto_jax.learned_learning_rate(optax.identity(), 1e-2)
        (alone, _), alone_rates = group_run(single, (g,), steps=60)
        assert_close_at_scale(x[g], alone[g])
        assert_close_at_scale(np.log(rates[:, i]), np.log(alone_rates[:, 0]))
        np.testing.assert_allclose(yoto_jax.learning_rate_of(state, g), rates[-1, i], rtol=0)
    assert float(rates[-1, 0]) > 2 * float(rates[-1, 1])  # the groups' α differ


def test_learning_rate_of_a_partition_needs_the_group():
    state = per_group(1e-2).init({g: jnp.ones(10) for g in GROUP_CURVATURES})
    with pytest.raises(
        ValueError, match=r"holds 2 learned learning rates \(groups 'flat', 'stiff'\)"
    ):
        yoto_jax.learning_rate_of(state)
    with pytest.raises(ValueError, match="expected one under the label 'bias'"):
        yoto_jax.learning_rate_of(state, "bias")


@pytest.mark.parametrize(
    "rate, alphas, rule_start",
    [
        # x keeps its sign through α = 0.15, 0.3, 0.6 and flips at 1.2; the next cosine
        # is −1, so α halves back to 0.6 and the rule starts there: its first cosine is
        # +1 and moves ν by β (the bias-corrected ratio of one cosine is its sign)
        (1.5, [0.15, 0.3, 0.6, 1.2, 0.6, 0.6 * np.exp(0.05)], 4),
        # the doublings reach learning_rate = 0.3 (the last one shorter, 0.24 → 0.3) with
        # every cosine +1: the ramp ends there and the rule starts from 0.3
        (0.3, [0.03, 0.06, 0.12, 0.24, 0.3, 0.3, 0.3 * np.exp(0.05)], 5),
    ],
)
def test_the_ramp_doubles_alpha_up_to_the_rate_until_a_step_overshoots(rate, alphas, rule_start):
    """SGD on f = ½x² from x = 1 with ramp_from 0.1 and β = 0.05: the α each step takes."""
    beta = 0.05
    tx = yoto_jax.learned_learning_rate(
        optax.identity(), rate, meta_learning_rate=beta, ramp_from=0.1
    )
    x, state = jnp.ones(()), tx.init(jnp.ones(()))
    taken = []
    for _ in alphas:
        updates, state = tx.update(x, state, x)  # the gradient of ½x² is x
        taken.append(float(yoto_jax.learning_rate_of(state)))
        x = optax.apply_updates(x, updates)
    assert_close_at_scale(np.log(taken), np.log(alphas))
    assert int(state.rule_start) == rule_start
    np.testing.assert_allclose(state.cosine_mean, 1 - L.COSINE_DECAY, rtol=1e-6)


def test_the_ramp_is_off_at_zero_meta_rate_and_reaches_the_tuned_loss_from_past_the_edge():
    """With β = 0 the ramp is off (the fixed rate); with the default β, SGD on the
    quadratic from 100× too small and from 10× and 100× past the divergence edge 2/L
    ends with at least the tuned fixed run's loss decrease (in nats)."""
    fixed = run(optax.chain(optax.identity(), optax.scale_by_learning_rate(0.05)), 20)[0]
    off = yoto_jax.learned_learning_rate(
        optax.identity(), 0.05, meta_learning_rate=0.0, ramp_from=0.01
    )
    assert_close_at_scale(run(off, 20)[0], fixed)
    tuned = float(np.nanmin(fixed_losses(optax.identity())))
    starts = jnp.array([GRID[np.nanargmin(fixed_losses(optax.identity()))] / 100, 2.0, 20.0])
    ramped = lambda a: quadratic(
        run(yoto_jax.learned_learning_rate(optax.identity(), a, ramp_from=0.01))[0]
    )
    losses = np.asarray(jax.jit(jax.vmap(ramped))(starts))
    initial = float(quadratic(X0))
    np.testing.assert_array_less(np.log(initial / tuned), np.log(initial / losses))
