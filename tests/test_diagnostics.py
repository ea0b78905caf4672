"""``weight_report``: closed-form fields; the switched-off and collapse alarms fire on
constructed runs with the library's default YOTO and stay silent on a healthy one; NaN,
names and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import yoto_jax


def free_weights(mu):
    """softmax([0, µ]) in float64, over the last axis."""
    logits = np.concatenate([np.zeros(np.shape(mu)[:-1] + (1,)), mu], -1).astype(np.float64)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def test_fields_match_a_numpy_reference():
    mu = np.array([0.3, -1.2, 2.0], np.float32)
    losses = np.array([0.4, 0.9, 0.05, 0.2], np.float32)
    report = yoto_jax.weight_report(jnp.asarray(mu), jnp.asarray(losses), primary_floor=0.25)
    free = free_weights(mu)
    weights = 0.75 * free + np.array([0.25, 0, 0, 0])
    entropy = -np.sum(weights * np.log(weights))
    np.testing.assert_allclose(report.free_weights, free, rtol=1e-6)
    np.testing.assert_allclose(report.weights, weights, rtol=1e-6)
    np.testing.assert_allclose(report.primary_weight, weights[0], rtol=1e-6)
    np.testing.assert_allclose(report.entropy, entropy, rtol=1e-6)
    np.testing.assert_allclose(report.normalized_entropy, entropy / np.log(4), rtol=1e-6)
    assert int(report.heaviest) == 3 and int(report.smallest_loss) == 2
    # s_0 = 0.09 < 0.2, but the weight is not on the smallest loss
    assert not bool(report.collapsed) and bool(report.finite)
    assert report.off_steps.tolist() == [0, 0, 0] and not bool(report.any_switched_off)


def test_collapse_reads_the_free_weights_and_needs_the_smallest_loss_heaviest():
    losses = jnp.array([0.5, 0.01, 0.9])
    assert bool(yoto_jax.weight_report(jnp.array([4.0, -3.0]), losses).collapsed)
    # the primary floor 1/3 keeps the applied λ_0 above 0.2; the free s_0 = 0.018 does not
    floored = yoto_jax.weight_report(jnp.array([4.0, -3.0]), losses, primary_floor=1 / 3)
    assert float(floored.primary_weight) > 1 / 3 and bool(floored.collapsed)
    # s_0 = 0.27 above the threshold: not collapsed
    assert not bool(yoto_jax.weight_report(jnp.array([1.0, -3.0]), losses).collapsed)
    # the weight on the auxiliary with the larger loss: not the collapse this flags
    assert not bool(yoto_jax.weight_report(jnp.array([-3.0, 4.0]), losses).collapsed)
    # without losses: a small primary weight with an auxiliary heaviest
    assert bool(yoto_jax.weight_report(jnp.array([-3.0, 4.0])).collapsed)
    assert int(yoto_jax.weight_report(jnp.array([-3.0, 4.0])).smallest_loss) == -1
    np.testing.assert_allclose(
        yoto_jax.weight_report(jnp.zeros(2)).normalized_entropy, 1.0, rtol=1e-6
    )


def test_switched_off_counts_consecutive_reports_and_resets():
    """s_2 = e^{-6} / (2 + e^{-6}) = 0.0012 < 0.05/3; at µ_2 = -3, s_2 = 0.024 is above."""
    report = None
    for mu_2, expected in [(-6.0, 1), (-6.0, 2), (-3.0, 0), (-6.0, 1), (-6.0, 2), (-6.0, 3)]:
        report = yoto_jax.weight_report(jnp.array([0.0, mu_2]), previous=report, sustain=3)
        assert report.off_steps.tolist() == [0, expected]
        assert report.switched_off.tolist() == [False, expected >= 3]
        assert bool(report.any_switched_off) == (expected >= 3)
    # the threshold is a fraction of uniform: φ = 0.1 puts 0.024 < 0.1/3 below it
    looser = yoto_jax.weight_report(jnp.array([0.0, -3.0]), off_fraction=0.1, sustain=1)
    assert looser.switched_off.tolist() == [False, True]


def test_named_form_jit_and_names():
    mu = {"consistency": jnp.float32(3.0), "segmentation": jnp.float32(-2.0)}
    losses = {"depth": 0.4, "segmentation": 0.7, "consistency": 0.001}
    report = jax.jit(yoto_jax.weight_report)(mu, losses)
    # names sorted: (depth, consistency, segmentation)
    np.testing.assert_allclose(report.weights, yoto_jax.loss_weights(jnp.array([3.0, -2.0])))
    assert int(report.smallest_loss) == 1 and bool(report.collapsed)
    named = yoto_jax.report_names(report, ["depth", *sorted(mu)])
    assert named.heaviest == named.smallest_loss == "consistency"
    assert named.collapsed and named.finite and named.switched_off == ()
    assert list(named.weights) == ["depth", "consistency", "segmentation"]
    np.testing.assert_allclose(list(named.weights.values()), report.weights, rtol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(3,\) but 2 names"):
        yoto_jax.report_names(report, ["depth", "consistency"])


def test_not_finite():
    nan = float("nan")
    report = yoto_jax.weight_report(jnp.array([nan, -3.0]), jnp.array([0.5, 0.01, 0.9]))
    assert not bool(report.finite) and not bool(report.collapsed)
    assert int(report.heaviest) == -1 and not bool(report.any_switched_off)
    # a NaN loss is not the smallest; µ is finite, so the heaviest is still known
    report = yoto_jax.weight_report(jnp.array([4.0, -3.0]), jnp.array([0.5, nan, 0.9]))
    assert not bool(report.finite) and not bool(report.collapsed)
    assert int(report.smallest_loss) == -1 and int(report.heaviest) == 1
    named = yoto_jax.report_names(report, ["a", "b", "c"])
    assert named.smallest_loss is None and named.heaviest == "b" and not named.finite


STEPS = 400


def trained(cases):
    """The default ``yoto_jax.yoto()`` (the model on Adam 0.05) on three losses: a
    primary and an auxiliary of the same size by construction (one-weight fits of
    2 sin(2x), the auxiliary's inputs a permutation of the primary's), each case
    ``(c, a, b)`` scaling the primary by c and making the third loss a + b × the second.
    Returns µ after each step, the losses the step saw, and the reports chained through
    ``previous`` (with the default ``sustain``), all from one vmapped ``lax.scan``.

    The alarms below fire in this toy under the previous defaults (ε = 0.1, µ's Adam
    0.05, primary floor 1/T) and under ε = 1 with µ on the model's Adam, no floor, or a
    floor 0.8/T on every loss (checked by hand when the defaults changed)."""
    x = jax.random.normal(jax.random.key(0), (64,))
    x = jnp.stack([x, jnp.roll(x, 7)])
    targets = 2.0 * jnp.sin(2.0 * x)
    train = yoto_jax.trainer(yoto_jax.yoto(), optax.adam(0.05))

    def run(case):
        def losses(w):
            errors = jnp.mean((w[:, None] * x - targets) ** 2, axis=1)
            return jnp.stack([case[0] * errors[0], errors[1], case[1] + case[2] * errors[1]])

        state = train.init(jnp.zeros(2), 3)
        first = yoto_jax.weight_report(state.params["weighting"]["yoto_mu"], losses(jnp.zeros(2)))

        def step(carry, _):
            state, report = carry
            state, log = train.step(state, losses)
            mu = state.params["weighting"]["yoto_mu"]
            report = yoto_jax.weight_report(mu, log.losses, previous=report)
            return (state, report), (mu, log.losses, report)

        return jax.lax.scan(step, (state, first), None, STEPS)[1]

    return jax.jit(jax.vmap(run))(jnp.array(cases))


def expected_off_steps(mu: np.ndarray) -> np.ndarray:
    """The recurrence of ``off_steps`` in NumPy from the µ trajectory (steps, K)."""
    below = free_weights(mu)[:, 1:] < 0.05 / 3
    counts = np.zeros(below.shape, np.int64)
    for t in range(len(below)):
        counts[t] = below[t] * ((counts[t - 1] if t else 0) + 1)
    return counts


def regularizer_equilibrium() -> np.ndarray:
    """The free weights where R's gradient vanishes for two equal logits, by bisection in
    NumPy: λ_i (log λ_i + H) + σ(µ) = 0, negative at µ = -5 and 1/2 at µ = 0."""

    def gradient(mu):
        weights = free_weights(np.array([mu, mu]))
        entropy = -np.sum(weights * np.log(weights))
        return weights[1] * (np.log(weights[1]) + entropy) + 1 / (1 + np.exp(-mu))

    low, high = -5.0, 0.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (low, middle) if gradient(middle) > 0 else (middle, high)
    return free_weights(np.full(2, low))


def test_alarms_fire_with_the_default_yoto_and_stay_silent_on_a_healthy_run():
    # a third loss 20 + tiny; a primary 10x and a third loss 1/1000 of the second; all equal
    mus, losses, reports = trained([[1.0, 20.0, 0.01], [10.0, 0.0, 1e-3], [1.0, 0.0, 1.0]])
    mus, losses = np.asarray(mus), np.asarray(losses)
    for run in range(3):
        np.testing.assert_array_equal(reports.off_steps[run], expected_off_steps(mus[run]))
        np.testing.assert_array_equal(
            reports.switched_off[run], expected_off_steps(mus[run]) >= 100
        )
    final = jax.tree.map(lambda field: field[:, -1], reports)
    free = free_weights(mus[:, -1])
    # the large third loss is switched off, the second auxiliary (as large as the primary) not
    assert final.switched_off[0].tolist() == [False, True] and free[0, 2] < 0.05 / 3
    # the tiny third loss takes the free weight from the large primary
    assert bool(final.collapsed[1]) and free[1, 0] < 0.2 and int(final.heaviest[1]) == 2
    assert int(final.smallest_loss[1]) == 2 == 1 + np.argmin(losses[1, -1, 1:])
    # equal losses: µ at the regulariser's equilibrium, neither alarm over the whole run
    np.testing.assert_allclose(free[2], regularizer_equilibrium(), rtol=1e-3)
    assert not np.any(reports.collapsed[2]) and not np.any(reports.off_steps[2])


def test_bad_arguments():
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"primary_threshold must be in \(0, 1\)"):
            yoto_jax.weight_report(jnp.zeros(2), primary_threshold=bad)
        with pytest.raises(ValueError, match=r"off_fraction must be in \(0, 1\)"):
            yoto_jax.weight_report(jnp.zeros(2), off_fraction=bad)
    with pytest.raises(ValueError, match="sustain must be an int >= 1"):
        yoto_jax.weight_report(jnp.zeros(2), sustain=0)
    with pytest.raises(ValueError, match="losses must have shape"):
        yoto_jax.weight_report(jnp.zeros(2), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"previous.off_steps must have shape \(K,\) = \(3,\)"):
        yoto_jax.weight_report(jnp.zeros(3), previous=yoto_jax.weight_report(jnp.zeros(2)))
    with pytest.raises(TypeError, match="previous must be a WeightReport or None, got dict"):
        yoto_jax.weight_report(jnp.zeros(2), previous={"off_steps": jnp.zeros(2)})


def test_flax_modules_report_in_their_own_order():
    from yoto_jax.linen import LossWeights as LinenLossWeights
    from yoto_jax.nnx import LossWeights

    losses = {"depth": 0.4, "segmentation": 0.7, "consistency": 0.001}
    names = ("depth", ["segmentation", "consistency"])
    paper = yoto_jax.yoto(0.1, primary_floor=0.0, loss_floor=0.0)
    module = LossWeights(*names, weighting=paper)
    module.yoto_mu[...] = jnp.array([-2.0, 3.0])
    report = module.report(losses)
    np.testing.assert_allclose(report.weights, yoto_jax.loss_weights(jnp.array([-2.0, 3.0])))
    assert int(report.smallest_loss) == 2 and bool(report.collapsed)
    assert module.report_names(report).heaviest == "consistency"
    # the floor 1/(K+1) keeps the applied λ_0 >= 1/3; the alarm reads s_0 = 0.047
    floored = LossWeights(
        *names, weighting=yoto_jax.yoto(0.1, primary_floor="uniform", loss_floor=0.0)
    )
    floored.yoto_mu[...] = jnp.array([-2.0, 3.0])
    report = floored.report(losses)
    expected = yoto_jax.loss_weights(jnp.array([-2.0, 3.0]), primary_floor=1 / 3)
    np.testing.assert_allclose(report.weights, expected, rtol=1e-6)
    assert float(report.primary_weight) >= 1 / 3 and bool(report.collapsed)
    # a floor on every loss (m = 1/2 of T = 2 losses, over the primary floor 1/2): the
    # report's weights are those applied, the alarm reads s_1 = e^-8 / (1 + e^-8)
    every = LossWeights(
        "depth", ["segmentation"], weighting=yoto_jax.yoto(loss_floor=0.5, primary_floor="uniform")
    )
    every.yoto_mu[...] = jnp.array([-8.0])
    report = every.report({"depth": 0.4, "segmentation": 5.0}, sustain=1)
    free = free_weights(np.array([-8.0]))
    np.testing.assert_allclose(report.weights, 0.25 + 0.5 * (0.5 * free + [0.5, 0]), rtol=1e-6)
    assert float(report.weights[1]) > 0.25
    assert every.report_names(report).switched_off == ("segmentation",)
    linen = LinenLossWeights(
        "depth", ("segmentation", "consistency"), eps=0.1, primary_floor="uniform"
    )
    variables = linen.init(jax.random.key(0), losses)
    report = linen.apply(variables, losses, method=LinenLossWeights.report)
    # the weights the module applies, whatever its floors, in its order
    applied = linen.apply(variables, method=LinenLossWeights.weights)
    in_order = [applied[name] for name in ("depth", "segmentation", "consistency")]
    np.testing.assert_allclose(report.weights, in_order, rtol=1e-6)
    np.testing.assert_allclose(report.free_weights, free_weights(np.log([0.1, 0.1])), rtol=1e-6)
    assert not bool(report.collapsed)
    assert linen.report_names(report).smallest_loss == "consistency"
    with pytest.raises(KeyError, match=r"missing \['consistency'\]"):
        module.report({"depth": 0.4, "segmentation": 0.7})
    with pytest.raises(TypeError, match="report reads YOTO's logits"):
        LossWeights("depth", ["segmentation"], weighting=yoto_jax.baselines.dwa(3)).report(losses)
