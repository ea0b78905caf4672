"""Flax NNX and Linen training loops: model weights and µ in one pytree, one optimizer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import yoto_jax
from yoto_jax.linen import LossWeights as LinenLossWeights
from yoto_jax.nnx import LossWeights, YotoMu

EPS = 0.1


def two_target_data():
    """x ↦ (noisy target, easy target): the primary loss stays ≈ its noise level
    (0.25) while the auxiliary goes to 0, so Eq. 6 makes the auxiliary weight rise."""
    key_x, key_noise = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, (64, 4))
    primary = x @ jnp.array([1.0, -1.0, 0.5, 0.0]) + 0.5 * jax.random.normal(key_noise, (64,))
    auxiliary = x @ jnp.array([0.0, 1.0, 1.0, -1.0])
    return x, primary, auxiliary


def check_trained(mu_trajectory, primary_losses):
    mu_trajectory = np.asarray(mu_trajectory)
    assert np.all(np.isfinite(mu_trajectory))
    assert mu_trajectory[-1, 0] > np.log(EPS) + 0.3, "µ of the vanishing auxiliary must rise"
    assert primary_losses[-1] < 0.5 * primary_losses[0]


class TwoHeads(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.body = nnx.Linear(4, 2, rngs=rngs)
        self.loss_weights = LossWeights(
            "primary", ["auxiliary"], eps=EPS, primary_floor="uniform", loss_floor=0.0
        )

    def losses(self, x, primary, auxiliary):
        out = self.body(x)
        return {
            "primary": jnp.mean((out[:, 0] - primary) ** 2),
            "auxiliary": jnp.mean((out[:, 1] - auxiliary) ** 2),
        }


def test_nnx_loop_trains_model_and_mu_with_one_optimizer():
    model = TwoHeads(nnx.Rngs(0))
    tx = yoto_jax.yoto_optimizer(optax.adam(0.05), rho=0.1)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, batch):
        def loss_fn(model):
            losses = model.losses(*batch)
            return model.loss_weights(losses), losses

        (_, losses), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return losses

    batch = two_target_data()
    mus, primary_losses = [], []
    for _ in range(150):
        primary_losses.append(float(train_step(model, optimizer, batch)["primary"]))
        mus.append(np.array(model.loss_weights.mu))
    check_trained(mus, primary_losses)
    weights = model.loss_weights.weights()
    # the floor "uniform": the primary weighs at least 1/(K+1) = 1/2
    assert model.loss_weights.primary_floor == 0.5
    np.testing.assert_allclose(
        [weights["primary"], weights["auxiliary"]],
        0.5 * np.array([1.0, 0.0]) + 0.5 * yoto_jax.loss_weights(mus[-1]),
        rtol=1e-6,
    )


def test_nnx_state_mask_selects_every_mu_group():
    class Shared(nnx.Module):
        def __init__(self):
            self.depth_weights = LossWeights("depth", ["seg", "consistency"])
            self.seg_weights = LossWeights("seg", ["dice"], eps=0.5)
            self.head = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

    model = Shared()
    state = nnx.state(model, nnx.Param)
    mask = yoto_jax.mu_mask(state)
    selected = [leaf for leaf, m in zip(jax.tree.leaves(state), jax.tree.leaves(mask)) if m]
    assert sorted(leaf.shape for leaf in selected) == [(1,), (2,)]
    assert len(jax.tree.leaves(nnx.state(model, YotoMu))) == 2
    # the two groups get independent regulariser gradients through one optimizer
    # (µ on the model's SGD, the paper's setting, so the update is exactly −∇R)
    optimizer = nnx.Optimizer(
        model,
        yoto_jax.yoto_optimizer(optax.sgd(1.0), rho=1.0, mu_learning_rate=None),
        wrt=nnx.Param,
    )
    zero_grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    before = {"depth": model.depth_weights.mu, "seg": model.seg_weights.mu}
    optimizer.update(model, zero_grads)
    np.testing.assert_allclose(
        model.depth_weights.mu,
        before["depth"] - yoto_jax.regularizer_grad(before["depth"]),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        model.seg_weights.mu, before["seg"] - yoto_jax.regularizer_grad(before["seg"]), rtol=1e-6
    )


class LinenTwoHeads(nn.Module):
    @nn.compact
    def __call__(self, x, primary, auxiliary):
        out = nn.Dense(2)(x)
        losses = {
            "primary": jnp.mean((out[:, 0] - primary) ** 2),
            "auxiliary": jnp.mean((out[:, 1] - auxiliary) ** 2),
        }
        weights = LinenLossWeights(
            "primary",
            ("auxiliary",),
            eps=EPS,
            primary_floor="uniform",
            loss_floor=0.0,
            name="loss_weights",
        )
        return weights(losses), losses


def test_linen_train_state_loop_trains_model_and_mu():
    batch = two_target_data()
    module = LinenTwoHeads()
    params = module.init(jax.random.key(1), *batch)["params"]
    np.testing.assert_allclose(params["loss_weights"]["yoto_mu"], [np.log(EPS)], rtol=1e-6)
    state = train_state.TrainState.create(
        apply_fn=module.apply, params=params, tx=yoto_jax.yoto_optimizer(optax.adam(0.05), 0.1)
    )

    @jax.jit
    def train_step(state, batch):
        def loss_fn(params):
            return state.apply_fn({"params": params}, *batch)

        (_, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), losses

    mus, primary_losses = [], []
    for _ in range(150):
        state, losses = train_step(state, batch)
        primary_losses.append(float(losses["primary"]))
        mus.append(np.array(state.params["loss_weights"]["yoto_mu"]))
    check_trained(mus, primary_losses)
    weights = LinenLossWeights(
        "primary", ("auxiliary",), primary_floor="uniform", loss_floor=0.0
    ).apply({"params": state.params["loss_weights"]}, method=LinenLossWeights.weights)
    np.testing.assert_allclose(
        weights["auxiliary"], yoto_jax.loss_weights(mus[-1], primary_floor=0.5)[1], rtol=1e-6
    )


def test_modules_check_loss_names():
    weights = LossWeights("depth", ["seg"])
    with pytest.raises(KeyError, match=r"missing the auxiliary losses \['seg'\]"):
        weights({"depth": 1.0, "other": 2.0})
    with pytest.raises(KeyError, match="primary loss 'depth'"):
        weights({"seg": 1.0, "rgb": 2.0})
    with pytest.raises(ValueError, match="unique"):
        LossWeights("depth", ["depth"])
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        LinenLossWeights("depth", ("seg",), eps=0.0).init(
            jax.random.key(0), {"depth": 1.0, "seg": 1.0}
        )
    # one string is not a sequence of names (it would make the auxiliaries 's', 'e', 'g')
    with pytest.raises(
        TypeError, match=r"auxiliary must be a sequence of loss names, e.g. \['seg'\]"
    ):
        LossWeights("depth", "seg")
    with pytest.raises(TypeError, match="not the string 'seg'"):
        LinenLossWeights("depth", "seg").init(jax.random.key(0), {"depth": 1.0, "seg": 1.0})


# Any weighting in an NNX model: yoto_jax.nnx.train_step --------------------------------


def nnx_methods():
    """One factory per kind: objective-based with params (YOTO, uncertainty), with state
    (DWA), random (RLW), re-evaluating after the step (FAMO), gradient-norm (GradNorm) and
    gradient manipulation (MGDA)."""
    trunk = lambda params: jax.tree.map(lambda _: True, params)
    return {
        "yoto": lambda: yoto_jax.yoto(EPS),
        "uncertainty": yoto_jax.baselines.uncertainty,
        "dwa": lambda: yoto_jax.baselines.dwa(3),
        "rlw": yoto_jax.baselines.rlw,
        "famo": yoto_jax.baselines.famo,
        "gradnorm": lambda: yoto_jax.baselines.gradnorm(trunk),
        "mgda": lambda: yoto_jax.baselines.mgda(trunk),
    }


class Swappable(nnx.Module):
    def __init__(self, weighting):
        self.body = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
        self.loss_weights = LossWeights("primary", ["auxiliary"], weighting=weighting)

    def losses(self, x, primary, auxiliary):
        return TwoHeads.losses(self, x, primary, auxiliary)


@pytest.mark.parametrize("name", list(nnx_methods()))
def test_nnx_train_step_equals_the_functional_trainer(name):
    """Every weighting swaps into the same NNX loop by one argument, and the NNX step is
    ``yoto_jax.trainer``'s step on the model's params: the same losses, weights and
    parameters after 5 steps, and the weighting's own params trained."""
    batch = two_target_data()
    make = nnx_methods()[name]
    model = Swappable(make())
    tx = optax.adam(0.05)
    optimizer = nnx.Optimizer(model, model.loss_weights.optimizer(tx), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, key):
        return yoto_jax.nnx.train_step(
            model, optimizer, model.loss_weights, lambda m: m.losses(*batch), key=key
        )

    graphdef, body = nnx.split(Swappable(make()).body)
    train = yoto_jax.trainer(make(), tx)
    state = train.init(body, 2)

    def vector(body_params):
        named = Swappable.losses(_Body(nnx.merge(graphdef, body_params)), *batch)
        return jnp.stack([named["primary"], named["auxiliary"]])

    functional_step = jax.jit(lambda state, key: train.step(state, vector, key))
    for i in range(5):
        key = jax.random.key(i)
        losses, weights = step(model, optimizer, key)
        state, log = functional_step(state, key)
        assert list(losses) == list(weights) == ["primary", "auxiliary"]
        np.testing.assert_allclose(list(losses.values()), log.losses, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(list(weights.values()), log.weights, rtol=1e-5, atol=1e-7)
    for got, expected in zip(
        jax.tree.leaves(nnx.state(model.body, nnx.Param)), jax.tree.leaves(state.params["model"])
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    for param_name, value in state.params["weighting"].items():
        np.testing.assert_allclose(getattr(model.loss_weights, param_name)[...], value, rtol=1e-5)
    np.testing.assert_allclose(
        list(model.loss_weights.weights().values()), train.weights(state), rtol=1e-5
    )


class _Body:
    """The ``body`` attribute the losses read, around a merged ``nnx.Linear``."""

    def __init__(self, body):
        self.body = body


def test_nnx_weights_follow_the_names_order_and_modules_are_attributes():
    weights = LossWeights("z_primary", ["b", "a"], eps=EPS)
    assert list(weights.weights()) == ["z_primary", "b", "a"] == list(weights.names)
    np.testing.assert_allclose(
        list(weights.weights().values()),
        yoto_jax.loss_weights(weights.mu, loss_floor=yoto_jax.DEFAULT_LOSS_FLOOR),
        rtol=1e-6,
    )
    assert yoto_jax.nnx.LossWeights is LossWeights
    assert yoto_jax.linen.LossWeights is LinenLossWeights
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        yoto_jax.nope  # noqa: B018


def test_nnx_train_step_rejects_a_foreign_loss_weights_bad_losses_and_non_yoto_call():
    model = Swappable(yoto_jax.baselines.equal_weighting())
    optimizer = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
    stray = LossWeights("primary", ["auxiliary"])
    batch = two_target_data()
    with pytest.raises(ValueError, match="submodule of model"):
        yoto_jax.nnx.train_step(model, optimizer, stray, lambda m: m.losses(*batch))
    with pytest.raises(TypeError, match="train_step"):
        model.loss_weights({"primary": 1.0, "auxiliary": 2.0})
    # the losses must be exactly the names of LossWeights; nothing is updated otherwise
    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    with pytest.raises(KeyError, match=r"missing \[\], not weighted \['extra'\]"):
        yoto_jax.nnx.train_step(
            model, optimizer, model.loss_weights, lambda m: {**m.losses(*batch), "extra": 1.0}
        )
    with pytest.raises(KeyError, match=r"missing \['auxiliary'\], not weighted \[\]"):
        yoto_jax.nnx.train_step(
            model, optimizer, model.loss_weights, lambda m: {"primary": m.losses(*batch)["primary"]}
        )
    for leaf, unchanged in zip(
        jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(before)
    ):
        np.testing.assert_array_equal(leaf, unchanged)


class WithRegulariser(nnx.Module):
    """TwoHeads plus a third loss that stays near 5 whatever the model does (a
    regulariser's loss that is large by construction), with LossWeights' defaults but
    ε = 0.1 (from uniform weights the alarm would take longer to fire)."""

    def __init__(self):
        self.body = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
        self.loss_weights = LossWeights("primary", ["auxiliary", "consistency"], eps=0.1)

    def losses(self, x, primary, auxiliary):
        losses = TwoHeads.losses(self, x, primary, auxiliary)
        return {**losses, "consistency": 5.0 + 0.01 * losses["auxiliary"]}


STEPS, SUSTAIN = 70, 20


def test_nnx_report_switches_off_a_large_auxiliary():
    """LossWeights (ε = 0.1) turns the third loss down: its free weight s_2 falls below
    0.05/3 and, ``sustain`` (here 20) reports later, ``switched_off`` names it; the
    reports chain through ``previous`` inside ``nnx.jit``. The report after
    ``train_step`` holds the updated weights (those of the next step), ``train_step``
    the weights it applied."""
    model = WithRegulariser()
    optimizer = nnx.Optimizer(model, model.loss_weights.optimizer(optax.adam(0.05)), wrt=nnx.Param)
    batch = two_target_data()

    @nnx.jit
    def step(model, optimizer, report):
        losses, weights = yoto_jax.nnx.train_step(
            model, optimizer, model.loss_weights, lambda m: m.losses(*batch)
        )
        return weights, model.loss_weights.report(losses, previous=report, sustain=SUSTAIN)

    # the first report from a small program, so the step compiles once (None: twice)
    report, mus = nnx.jit(lambda m: m.loss_weights.report(m.losses(*batch)))(model), []
    for _ in range(STEPS - 1):
        weights, report = step(model, optimizer, report)
        mus.append(np.asarray(model.loss_weights.mu))
    before = list(model.loss_weights.weights().values())
    weights, report = step(model, optimizer, report)
    mus.append(np.asarray(model.loss_weights.mu))
    np.testing.assert_allclose(list(weights.values()), before, rtol=1e-6)
    after = list(model.loss_weights.weights().values())
    np.testing.assert_allclose(report.weights, after, rtol=1e-6)
    assert np.abs(np.subtract(after, before)).max() > 1e-4
    # off_steps: the reports in a row with s_2 below the threshold (NumPy)
    logits = np.concatenate([np.zeros((STEPS, 1)), np.array(mus, np.float64)], 1)
    free = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    below = free[:, 1:] < 0.05 / 3
    run = STEPS - 1 - max(t for t in range(STEPS) if not below[t, 1])
    assert report.off_steps.tolist() == [0, run] and run >= SUSTAIN
    named = model.loss_weights.report_names(report)
    assert named.switched_off == ("consistency",) and bool(report.any_switched_off)
    assert not named.collapsed and named.finite and named.heaviest != "consistency"
