"""Input that used to be trained on silently, or that raised JAX internals, gets a
message naming the argument, what was expected and what was given (issue 23)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import yoto_jax
from yoto_jax import baselines
from yoto_jax.nnx import LossWeights, shared_params, train_step


def _losses_fn(params):
    return jnp.stack([jnp.sum(params["s"] ** 2), jnp.sum(params["a"]), jnp.sum(params["b"])])


PARAMS = {"s": jnp.ones(3), "a": jnp.ones(2), "b": jnp.ones(2)}


@pytest.mark.parametrize("mu_learning_rate", [0.05, None], ids=["own-adam", "paper"])
def test_yoto_optimizer_refuses_params_without_mu(mu_learning_rate):
    tx = yoto_jax.yoto_optimizer(optax.adam(1e-3), mu_learning_rate=mu_learning_rate)
    misnamed = {"model": {"w": jnp.ones(3)}, "mu": yoto_jax.init_mu(2)}
    with pytest.raises(ValueError, match=r"'yoto_mu' key .* got the keys \['model/w', 'mu'\]"):
        tx.init(misnamed)
    # Only the structure is checked: init still jits, and µ gets its decay.
    params = {"model": {"w": jnp.ones(3)}, "yoto_mu": jnp.zeros(2)}
    state = jax.jit(tx.init)(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, state, params)
    assert float(jnp.abs(updates["yoto_mu"]).min()) > 0.0
    np.testing.assert_array_equal(updates["model"]["w"], np.zeros(3))


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: yoto_jax.hyperparameter_decay(lambda count: -5.0),
            r"rho \(a schedule, at step 0\)",
        ),
        (
            lambda: yoto_jax.yoto_optimizer(optax.adam(1e-3), rho=lambda count: -5.0),
            r"rho \(a schedule, at step 0\) must be a finite number >= 0, got -5.0",
        ),
        (
            lambda: yoto_jax.yoto_optimizer(
                optax.adam(1e-3), mu_learning_rate=optax.linear_schedule(-0.1, 0.1, 10)
            ),
            r"mu_learning_rate \(a schedule, at step 0\) must be a finite number > 0",
        ),
        (
            lambda: yoto_jax.yoto(rho=lambda count: jnp.float32(-5.0)).optimizer(optax.sgd(0.1)),
            r"rho \(a schedule, at step 0\)",
        ),
    ],
    ids=["decay", "optimizer-rho", "mu-learning-rate", "weighting"],
)
def test_a_schedule_starting_out_of_range_is_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_a_schedule_is_checked_only_at_its_start():
    """A schedule decaying to 0 is valid; ρ(count) is what each update applies."""
    decay = yoto_jax.hyperparameter_decay(optax.linear_schedule(0.5, 0.0, 1))
    mu = jnp.zeros(1)
    state = decay.init(mu)
    first, state = decay.update(jnp.zeros(1), state, mu)
    second, _ = decay.update(jnp.zeros(1), state, mu)
    np.testing.assert_allclose(first, [0.25], rtol=1e-6)  # 0.5 ∇R(0) = 0.5 σ(0)
    np.testing.assert_array_equal(second, [0.0])


@pytest.mark.parametrize("method", [baselines.mgda, baselines.upgrad, baselines.pcgrad])
def test_a_shared_mask_of_another_structure_is_named(method):
    weighting = method(shared={"s": True, "a": False})
    params, state = weighting.init(3)
    with pytest.raises(
        ValueError,
        match=r"shared must be a callable .* got a dict with keys \['a', 's'\] where the "
        r"params are a dict with keys \['a', 'b', 's'\]",
    ):
        weighting.step(_losses_fn, PARAMS, params, state, key=jax.random.key(0))


def test_uncertainty_names_the_losses_against_num_losses():
    weighting = baselines.uncertainty()
    params, state = weighting.init(2)
    with pytest.raises(ValueError, match=r"losses has 3 entries, expected 2"):
        weighting.step(_losses_fn, PARAMS, params, state)


@pytest.mark.parametrize(
    "val_loss_fn, takes_key, hint",
    [
        (lambda params, key: 0.0, False, "pass val_takes_key=True"),
        (lambda params: 0.0, True, "give it a second parameter for the key"),
    ],
    ids=["extra-key", "missing-key"],
)
def test_auto_lambda_checks_val_loss_fn_against_val_takes_key(val_loss_fn, takes_key, hint):
    with pytest.raises(TypeError, match=rf"val_takes_key={takes_key}, but its signature .*{hint}"):
        baselines.auto_lambda(val_loss_fn, learning_rate=0.1, val_takes_key=takes_key)
    baselines.auto_lambda(lambda params, key=None: 0.0, learning_rate=0.1, val_takes_key=takes_key)


@pytest.mark.parametrize("values", [0.1, "0.1", np.float32(0.1), [[0.1, 1.0]]])
def test_loss_weight_grid_wants_a_sequence_of_values(values):
    with pytest.raises(TypeError, match=r"values must be a sequence of candidate weights"):
        yoto_jax.loss_weight_grid(values, 2)


@pytest.mark.parametrize(
    "weighting",
    [baselines.rlw(), baselines.pcgrad(shared={"s": True, "a": False, "b": False})],
    ids=["rlw", "pcgrad"],
)
def test_an_int_key_is_refused(weighting):
    params, state = weighting.init(3)
    with pytest.raises(TypeError, match=r"needs a PRNG key as key .* got 3\."):
        weighting.step(_losses_fn, PARAMS, params, state, key=3)


class _CompileCounter(logging.Handler):
    def __init__(self):
        super().__init__()
        self.compiled = []

    def emit(self, record):
        if record.getMessage().startswith("Compiling"):
            self.compiled.append(record.getMessage()[:80])


@pytest.mark.parametrize(
    "solver, expected",
    [
        (baselines.upgrad_weights, lambda norms: np.full(2, 0.5)),  # no conflict: the mean
        (baselines.min_norm_weights, lambda norms: norms[::-1] ** 2 / np.sum(norms**2)),
        (baselines.nash_mtl_weights, lambda norms: 1.0 / norms),
    ],
    ids=["upgrad", "mgda", "nash_mtl"],
)
def test_an_eager_solver_call_does_not_recompile(solver, expected):
    """Orthogonal gradients of norms n: closed forms for each solver."""
    first, second = np.array([2.0, 0.5], np.float32), np.array([3.0, 0.25], np.float32)
    grams = [jnp.diag(jnp.asarray(norms**2)) for norms in (first, second)]
    solver(grams[0])
    counter = _CompileCounter()
    logger = logging.getLogger("jax")
    logger.addHandler(counter)
    try:
        with jax.log_compiles():
            weights = solver(grams[1])
    finally:
        logger.removeHandler(counter)
    assert counter.compiled == []
    np.testing.assert_allclose(weights, expected(second.astype(np.float64)), rtol=1e-5)


class _TwoHeads(nnx.Module):
    def __init__(self, weighting):
        self.trunk = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
        self.heads = nnx.Linear(4, 2, rngs=nnx.Rngs(1))
        self.loss_weights = LossWeights("a", ["b"], weighting=weighting)

    def __call__(self, x):
        return self.heads(jnp.tanh(self.trunk(x)))


def _nnx_step(shared, method):
    model = _TwoHeads(method(shared=shared))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    inputs = jnp.linspace(-1.0, 1.0, 15).reshape(5, 3)

    def losses_fn(model):
        outputs = model(inputs)
        return {"a": jnp.mean(outputs[:, 0] ** 2), "b": jnp.mean((outputs[:, 1] - 1.0) ** 2)}

    train_step(model, optimizer, model.loss_weights, losses_fn)
    return nnx.state(model, nnx.Param)


@pytest.mark.parametrize("method", [baselines.mgda, baselines.gradnorm, baselines.upgrad])
def test_a_dict_of_module_names_selects_under_nnx(method):
    """A plain dict prefix meets an nnx.State under train_step (it used to raise a
    structure mismatch between a dict and a State with the same keys): it selects as
    shared_params does, and the trunk-only selection differs from selecting everything."""
    selection = {"trunk": True, "heads": False}
    by_dict = _nnx_step(selection, method)
    by_filter = _nnx_step(shared_params(selection), method)
    everything = _nnx_step(shared_params({"trunk": True, "heads": True}), method)
    for got, expected in zip(jax.tree.leaves(by_dict), jax.tree.leaves(by_filter)):
        np.testing.assert_array_equal(got, expected)
    difference = [
        np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(by_dict), jax.tree.leaves(everything))
    ]
    assert max(difference) > 1e-4
    with pytest.raises(ValueError, match=r"prefix gives no bool for the parameter 'heads/bias'"):
        _nnx_step({"trunk": True}, method)


@pytest.mark.parametrize(
    ("build", "old", "new"),
    [
        (baselines.nash_mtl, {"update_weights_every": 3}, {"update_every": 3}),
        (baselines.nash_mtl, {"optim_niter": 5}, {"iterations": 5}),
        (lambda **kw: baselines.famo(**kw), {"learning_rate": 0.2}, {"meta_learning_rate": 0.2}),
    ],
)
def test_renamed_hyperparameters_keep_their_old_names_as_deprecated_aliases(build, old, new):
    """One name per concept (update_every, iterations, meta_learning_rate: the method's
    own step size); the old names still work, with a DeprecationWarning, and give the
    same method."""
    args = (True,) if build is baselines.nash_mtl else ()
    weighting = build(*args, **new)
    with pytest.warns(DeprecationWarning, match=f"{next(iter(old))} is deprecated"):
        aliased = build(*args, **old)
    params, state = weighting.init(3)
    expected = weighting.step(_losses_fn, PARAMS, params, state, key=jax.random.key(0))
    got = aliased.step(_losses_fn, PARAMS, params, state, key=jax.random.key(0))
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="deprecated alias, not a second option"):
        build(*args, **old, **{next(iter(new)): 7})


def test_the_trainer_names_a_swapped_or_wrong_argument():
    """trainer(weighting, tx) with the two swapped, or a string for tx, used to fail
    with an AttributeError from inside the trainer."""
    with pytest.raises(TypeError, match=r"weighting must be a yoto_jax.Weighting .* got Gradient"):
        yoto_jax.trainer(optax.adam(1e-3), yoto_jax.yoto())
    with pytest.raises(TypeError, match=r"tx must be an optax.GradientTransformation .* got str"):
        yoto_jax.trainer(yoto_jax.yoto(), "adam")
