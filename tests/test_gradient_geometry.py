"""benchmarks.gradient_geometry: the per-loss gradients of the shared parameters (G) and
of the representation z (Z), against their closed forms on a tanh head per loss.

* identity trunk (z is the shared parameters): G = Z, so both modes' cosines and norm
  ratios agree;
* linear trunk z = x W: G_i = vec(xᵀ Z_i), its cosines from NumPy float64.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import yoto_jax
from benchmarks.gradient_geometry import cosines, gradient_matrices

BATCH, FEATURES, INPUTS, T = 6, 3, 4, 3
ULPS = 16


def _close(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.max(np.abs(expected)), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ULPS * 2.0**-23 * scale)


def _heads(params, z, y):
    """l_i = mean over the batch of (tanh(z_b · h_i) - y_bi)²."""
    return jnp.mean((jnp.tanh(z @ params["heads"]) - y) ** 2, axis=0)


def _z_gradients(z, heads, y):
    """∂l_i/∂z, (T, batch, features), in float64: (2/B)(tanh s - y)(1 - tanh² s) h_iᵀ."""
    t = np.tanh(z @ heads)
    residual = 2.0 / z.shape[0] * (t - y) * (1.0 - t**2)  # (batch, T)
    return np.einsum("bi,fi->ibf", residual, heads)


def _cosines(rows):
    norms = np.linalg.norm(rows, axis=1)
    return rows @ rows.T / np.outer(norms, norms), norms / norms[0]


def _arrays(rng, *shapes):
    return [np.asarray(rng.normal(size=shape), np.float32) for shape in shapes]


@pytest.mark.usefixtures("full_matmul_precision")
def test_identity_trunk_gives_equal_geometries(rng):
    z, heads, y = _arrays(rng, (BATCH, FEATURES), (FEATURES, T), (BATCH, T))
    params = {"trunk": jnp.asarray(z), "heads": jnp.asarray(heads)}
    split = yoto_jax.representation_losses(lambda p: p["trunk"], lambda p, z: _heads(p, z, y))
    g, zg = gradient_matrices(split, params, {"trunk": True, "heads": False}, T)
    reference = _z_gradients(z.astype(np.float64), heads.astype(np.float64), y).reshape(T, -1)
    _close(g, reference)
    _close(zg, reference)
    cosine, ratio = _cosines(reference)
    for found in (cosines(g), cosines(zg)):
        _close(found["cosine"], cosine)
        _close(found["norm_ratio"], ratio)


@pytest.mark.usefixtures("full_matmul_precision")
def test_linear_trunk_parameter_gradients(rng):
    x, w, heads, y = _arrays(rng, (BATCH, INPUTS), (INPUTS, FEATURES), (FEATURES, T), (BATCH, T))
    params = {"trunk": jnp.asarray(w), "heads": jnp.asarray(heads)}
    split = yoto_jax.representation_losses(
        lambda p: jnp.asarray(x) @ p["trunk"], lambda p, z: _heads(p, z, y)
    )
    g, zg = gradient_matrices(split, params, {"trunk": True, "heads": False}, T)
    x64 = x.astype(np.float64)
    per_z = _z_gradients(x64 @ w.astype(np.float64), heads.astype(np.float64), y)
    per_w = np.einsum("bk,ibf->ikf", x64, per_z).reshape(T, -1)  # ∂l_i/∂W = xᵀ ∂l_i/∂z
    _close(zg, per_z.reshape(T, -1))
    _close(g, per_w)
    cosine, ratio = _cosines(per_w)
    found = cosines(g)
    _close(found["cosine"], cosine)
    _close(found["norm_ratio"], ratio)
    assert g.shape == (T, INPUTS * FEATURES)  # the heads' leaf is not in G
