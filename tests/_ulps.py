"""The float32 comparison of the suite's trajectory tests: within a few ulps of the
values' scale, not of each entry's own value."""

import numpy as np


def assert_close_at_scale(actual, expected, ulps: int = 16) -> None:
    """Within ``ulps`` float32 ulps of the largest magnitude in ``expected`` (a few
    roundings), compared in float64. Rounding accumulates with the computation's scale,
    so a small entry may differ from another program's by many of its own ulps (14 at
    XLA's optimisation level 0, of a parameter 50× below its vector's largest)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.max(np.abs(expected)), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ulps * 2.0**-23 * scale)
