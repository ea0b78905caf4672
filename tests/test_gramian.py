"""Gramians without the Jacobian (``gramian="products"``): the Gram matrix G Gᵀ column by
column as G(Gᵀeᵢ), one VJP and one JVP per loss, and the update as one VJP.

* the Gram matrix by products against a NumPy float64 G Gᵀ of ``jax.jacrev``'s rows, in
  parameter mode (the shared leaves only) and in representation mode (the rows of z);
* every method with the keyword, in both modes, on a small MLP: the update equals the
  default path's (the T per-loss gradients formed) to a few float32 ulps of its scale,
  losses and weights included;
* ``jax.vmap`` over a traced hyperparameter, in the trainer;
* bad values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import yoto_jax
from yoto_jax import baselines as bl
from yoto_jax.baselines._gradients import linearized_losses

SHARED = {"trunk": True, "heads": False}
BATCH, INPUTS, HIDDEN, FEATURES, T = 8, 5, 6, 4, 3


def _close(actual, expected, ulps):
    """Equal to ``ulps`` float32 ulps of the largest magnitude."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.max(np.abs(expected)), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ulps * 2.0**-23 * scale)


def _problem(rng):
    """A two-layer tanh trunk (shared) and T nonlinear heads; the losses as a plain
    ``losses_fn`` and split at the trunk's output z (BATCH, FEATURES)."""
    params = {
        "trunk": {
            "w1": jnp.asarray(rng.normal(size=(INPUTS, HIDDEN)) / 2, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(HIDDEN, FEATURES)) / 2, jnp.float32),
        },
        "heads": jnp.asarray(rng.normal(size=(FEATURES, T)), jnp.float32),
    }
    x = jnp.asarray(rng.normal(size=(BATCH, INPUTS)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(BATCH, T)), jnp.float32)

    def features(p):
        return jnp.tanh(jnp.tanh(x @ p["trunk"]["w1"]) @ p["trunk"]["w2"])

    def heads(p, z):
        return jnp.mean((jnp.tanh(z @ p["heads"]) - y) ** 2, axis=0) + jnp.arange(T)

    split = yoto_jax.representation_losses(features, heads)
    return params, {"parameter": lambda p: heads(p, features(p)), "representation": split}


METHODS = {
    "pcgrad": lambda g: bl.pcgrad(SHARED, gramian=g),
    "mgda": lambda g: bl.mgda(SHARED, gramian=g),
    "cagrad": lambda g: bl.cagrad(SHARED, c=0.4, gramian=g),
    "cagrad_sum": lambda g: bl.cagrad(SHARED, c=0.8, rescale=False, scale_to_sum=True, gramian=g),
    "upgrad": lambda g: bl.upgrad(SHARED, gramian=g),
    "aligned_mtl": lambda g: bl.aligned_mtl(SHARED, gramian=g),
    "imtl_gradient": lambda g: bl.imtl(SHARED, mode="gradient", gramian=g),
    "imtl_hybrid": lambda g: bl.imtl(SHARED, log_scale_init=0.3, gramian=g),
    "nash_mtl": lambda g: bl.nash_mtl(SHARED, gramian=g),
    "nash_mtl_every_2": lambda g: bl.nash_mtl(SHARED, update_every=2, max_norm=0.0, gramian=g),
}


@pytest.mark.parametrize("mode", ["parameter", "representation"])
def test_gram_by_products_is_the_jacobians(rng, mode):
    """G Gᵀ from products against float64 products of ``jax.jacrev``'s rows: those of the
    shared leaves (the trunk) in parameter mode, of z in representation mode."""
    params, losses = _problem(rng)
    gram = jax.jit(lambda p: linearized_losses(losses[mode], p, T, SHARED).gram())(params)
    if mode == "parameter":
        rows = jax.jacrev(losses[mode])(params)["trunk"]
    else:
        split = losses[mode]
        rows = jax.jacrev(lambda z: split.heads_fn(params, z))(split.features_fn(params))
    matrix = np.concatenate(
        [np.asarray(leaf, np.float64).reshape(T, -1) for leaf in jax.tree.leaves(rows)], axis=1
    )
    _close(gram, matrix @ matrix.T, ulps=16)
    np.testing.assert_array_equal(gram, np.asarray(gram).T)  # symmetrised


@pytest.mark.parametrize("mode", ["parameter", "representation"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_products_equal_the_jacobian_path(rng, name, mode):
    """One step of each method, both ways, in one jitted program: the same losses, weights,
    weighting gradients and model update (to a few float32 ulps of each leaf's scale: the
    Gram matrix is summed in another order, and the solvers round on it)."""
    params, losses = _problem(rng)
    steps = []
    for gramian in ("jacobian", "products"):
        weighting = METHODS[name](gramian)
        weighting_params, state = weighting.init(T)
        steps.append(
            lambda p, weighting=weighting, wp=weighting_params, state=state: weighting.step(
                losses[mode], p, wp, state, key=jax.random.key(1)
            )
        )
    jacobian, products = jax.jit(lambda p: [step(p) for step in steps])(params)
    np.testing.assert_array_equal(products.losses, jacobian.losses)
    for got, want in zip(jax.tree.leaves(products), jax.tree.leaves(jacobian)):
        if jnp.issubdtype(want.dtype, jnp.floating):
            _close(got, want, ulps=64)
        else:
            np.testing.assert_array_equal(got, want)


def test_vmap_over_a_traced_hyperparameter_in_the_trainer(rng, full_matmul_precision):
    """CAGrad's radius c vmapped over three values, the Gram matrix by products in
    representation mode, equals three separate jitted runs of the default path."""
    params, losses = _problem(rng)

    def run(c, gramian):
        train = yoto_jax.trainer(bl.cagrad(SHARED, c=c, gramian=gramian), optax.sgd(0.1))
        state = train.init(params, T)
        for _ in range(3):
            state, log = train.step(state, losses["representation"])
        return state.params["model"], log.losses

    radii = jnp.array([0.0, 0.4, 1.0])
    vmapped = jax.jit(jax.vmap(lambda c: run(c, "products")))(radii)
    one_run = jax.jit(lambda c: run(c, "jacobian"))
    for i, c in enumerate(radii):
        for a, b in zip(jax.tree.leaves(vmapped), jax.tree.leaves(one_run(c))):
            _close(a[i], b, ulps=64)
    assert not np.allclose(vmapped[0]["trunk"]["w1"][0], vmapped[0]["trunk"]["w1"][2])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_bad_gramian_values_raise(name):
    with pytest.raises(ValueError, match=r"gramian must be one of \('jacobian', 'products'\)"):
        METHODS[name]("hessian")
    with pytest.raises(TypeError, match="gramian must be a string"):
        METHODS[name](True)


def test_methods_without_a_gram_form_refuse_it():
    """IMTL-L takes no per-loss gradients: a clear error. GradNorm has no keyword (it
    would need the Gram matrix's diagonal only; not built)."""
    with pytest.raises(ValueError, match="mode='loss' \\(IMTL-L\\) takes none"):
        bl.imtl(None, mode="loss", gramian="products")
    assert bl.imtl(None, mode="loss", gramian="jacobian") is not None
    with pytest.raises(TypeError, match="gramian"):
        bl.gradnorm(SHARED, gramian="products")
    with pytest.raises(TypeError, match="shared must select"):
        bl.mgda(None, gramian="products")
