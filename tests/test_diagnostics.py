"""``weight_report``: closed-form fields, a collapse flag that fires on a constructed
collapse and stays silent on a healthy run, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import yoto_jax


def test_fields_match_a_numpy_reference():
    mu = np.array([0.3, -1.2, 2.0], np.float32)
    losses = np.array([0.4, 0.9, 0.05, 0.2], np.float32)
    report = yoto_jax.weight_report(jnp.asarray(mu), jnp.asarray(losses))
    logits = np.concatenate([[0.0], mu]).astype(np.float64)
    weights = np.exp(logits) / np.exp(logits).sum()
    entropy = -np.sum(weights * np.log(weights))
    np.testing.assert_allclose(report.weights, weights, rtol=1e-6)
    np.testing.assert_allclose(report.primary_weight, weights[0], rtol=1e-6)
    np.testing.assert_allclose(report.entropy, entropy, rtol=1e-6)
    np.testing.assert_allclose(report.normalized_entropy, entropy / np.log(4), rtol=1e-6)
    assert int(report.heaviest) == 3 and int(report.smallest_loss) == 2
    assert not bool(
        report.collapsed
    )  # λ_0 = 0.09 < 0.2, but the weight is not on the smallest loss


def test_flag_needs_both_a_small_primary_weight_and_the_weight_on_the_smallest_loss():
    losses = jnp.array([0.5, 0.01, 0.9])
    assert bool(yoto_jax.weight_report(jnp.array([4.0, -3.0]), losses).collapsed)
    # the same λ with the primary above the threshold: not collapsed
    assert not bool(yoto_jax.weight_report(jnp.array([1.0, -3.0]), losses).collapsed)
    # the weight on the auxiliary with the larger loss: not the collapse this flags
    assert not bool(yoto_jax.weight_report(jnp.array([-3.0, 4.0]), losses).collapsed)
    # without losses: a small primary weight with an auxiliary heaviest
    assert bool(yoto_jax.weight_report(jnp.array([-3.0, 4.0])).collapsed)
    assert int(yoto_jax.weight_report(jnp.array([-3.0, 4.0])).smallest_loss) == -1
    # uniform weights: normalised entropy 1
    np.testing.assert_allclose(yoto_jax.weight_report(jnp.zeros(2)).normalized_entropy, 1.0)


def test_named_form_and_jit():
    mu = {"consistency": jnp.float32(3.0), "segmentation": jnp.float32(-2.0)}
    losses = {"depth": 0.4, "segmentation": 0.7, "consistency": 0.001}
    report = jax.jit(yoto_jax.weight_report)(mu, losses)
    # names sorted: (depth, consistency, segmentation)
    np.testing.assert_allclose(report.weights, yoto_jax.loss_weights(jnp.array([3.0, -2.0])))
    assert int(report.smallest_loss) == 1 and bool(report.collapsed)


def run(small_loss: float, steps: int = 400) -> list:
    """YOTO with the library's defaults (ρ = 0.1) on a linear model of two nonlinear
    targets of the same size (their losses stay near 1) and a third loss that is
    `small_loss` times the second by construction; the reports every 50 steps."""
    x = jax.random.normal(jax.random.key(0), (64, 3))
    targets = 2.0 * jnp.stack([jnp.sin(2 * x[:, 0]), jnp.sin(2 * x[:, 1])], 1)
    params = {"w": jnp.zeros((3, 2)), "yoto_mu": yoto_jax.init_mu(2, eps=0.1)}
    tx = yoto_jax.yoto_optimizer(optax.adam(1e-2))

    def losses(params):
        errors = jnp.mean((x @ params["w"] - targets) ** 2, axis=0)
        return jnp.stack([errors[0], errors[1], small_loss * errors[1]])

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: yoto_jax.yoto_composite(p["yoto_mu"], losses(p)))(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        return params, state, yoto_jax.weight_report(params["yoto_mu"], losses(params))

    state, reports = tx.init(params), []
    for i in range(steps):
        params, state, report = step(params, state)
        if i % 50 == 49:
            reports.append(report)
    return reports


def test_flag_fires_on_a_constructed_collapse_and_not_on_a_healthy_run():
    collapsing = run(small_loss=1e-3)
    assert bool(collapsing[-1].collapsed)
    assert float(collapsing[-1].primary_weight) < 0.2
    assert int(collapsing[-1].heaviest) == 2
    healthy = run(small_loss=1.0)
    assert not any(bool(report.collapsed) for report in healthy)
    assert float(healthy[-1].primary_weight) > 0.3


def test_bad_threshold():
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"primary_threshold must be in \(0, 1\)"):
            yoto_jax.weight_report(jnp.zeros(2), primary_threshold=bad)
    with pytest.raises(ValueError, match="losses must have shape"):
        yoto_jax.weight_report(jnp.zeros(2), jnp.zeros(2))


def test_flax_modules_report_in_their_own_order():
    from yoto_jax.linen import LossWeights as LinenLossWeights
    from yoto_jax.nnx import LossWeights

    losses = {"depth": 0.4, "segmentation": 0.7, "consistency": 0.001}
    module = LossWeights("depth", ["segmentation", "consistency"], eps=0.1, primary_floor=0.0)
    module.yoto_mu[...] = jnp.array([-2.0, 3.0])
    report = module.report(losses)
    np.testing.assert_allclose(report.weights, yoto_jax.loss_weights(jnp.array([-2.0, 3.0])))
    assert int(report.smallest_loss) == 2 and bool(report.collapsed)
    # the default floor 1/(K+1) keeps the primary above the threshold: no collapse
    floored = LossWeights("depth", ["segmentation", "consistency"], eps=0.1)
    floored.yoto_mu[...] = jnp.array([-2.0, 3.0])
    report = floored.report(losses)
    expected = yoto_jax.loss_weights(jnp.array([-2.0, 3.0]), primary_floor=1 / 3)
    np.testing.assert_allclose(report.weights, expected, rtol=1e-6)
    assert float(report.primary_weight) >= 1 / 3 and not bool(report.collapsed)
    linen = LinenLossWeights("depth", ("segmentation", "consistency"), eps=0.1)
    variables = linen.init(jax.random.key(0), losses)
    report = linen.apply(variables, losses, method=LinenLossWeights.report)
    expected = yoto_jax.loss_weights(jnp.log(jnp.array([0.1, 0.1])), primary_floor=1 / 3)
    np.testing.assert_allclose(report.weights, expected, rtol=1e-6)
    assert not bool(report.collapsed)
    with pytest.raises(KeyError, match=r"missing \['consistency'\]"):
        module.report({"depth": 0.4, "segmentation": 0.7})
