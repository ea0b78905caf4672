"""Shared fixtures."""

import zlib

import jax
import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A NumPy generator seeded by the test's id: the same draws in any order or worker."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


@pytest.fixture
def x64():
    """Runs the test with 64-bit floats enabled, and restores the default after it."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def full_matmul_precision():
    """Runs the test with float32 matrix products computed in full float32.

    A GPU computes float32 products at reduced precision by default (TF32 on NVIDIA
    Ampere and later: about 1e-3 relative error), and two programs computing the same
    thing (vmapped and not, traced and concrete hyperparameters, the trainer and a
    hand-written loop) may round differently. Tests that compare a toy model's training
    with a float64 NumPy reference, or two such programs with each other, test the
    algorithm and not the hardware's rounding, so they use this fixture (on a CPU it
    changes nothing). The library's solvers do not rely on it: they ask for
    HIGHEST precision themselves, and their accuracy tests run without it.
    """
    with jax.default_matmul_precision("highest"):
        yield
