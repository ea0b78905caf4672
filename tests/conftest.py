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
