"""Procedural scenes for the depth and segmentation tasks: shapes at known depths.

A scene is a ground plane seen by a pinhole camera (random height and pitch) with 1 to `max_objects` flat,
camera-facing shapes standing on it. Every depth cue a monocular network can learn
from is present and controlled:

* height in the image: an object stands on the ground, so farther objects sit higher;
* size: each class has a fixed physical size, so its apparent size is `focal · size / z`
  (knowing the class, from segmentation, pins the depth down);
* colour: each class has a mean colour, jittered per object (colours overlap);
* shading: fog blends colours towards grey with `exp(-z / fog)`; each object is lit
  from the top-left;
* occlusion: a z-buffer keeps the nearest surface at every pixel.

Images are (N, S, S, 3) in [0, 1] plus noise; depth maps are (N, S, S) in scene units;
labels are (N, S, S) ints: 0 background, then one per class in `CLASSES`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

CLASSES = ("disc", "square", "bar")
"""Object classes; label i + 1 is CLASSES[i], label 0 the ground."""

_HALF_SIZE = {"disc": (0.7, 0.7), "square": (0.55, 0.55), "bar": (1.1, 0.3)}
"""Physical half-width and half-height of each class, in scene units."""

_TINT = {"disc": (0.9, 0.35, 0.3), "square": (0.35, 0.45, 0.9), "bar": (0.85, 0.8, 0.3)}
"""Each class's mean colour; every object's colour is jittered by up to ±`_TINT_JITTER`."""
_TINT_JITTER = 0.3

_NEAR, _FAR = 2.5, 20.0
_CAMERA_HEIGHT = 2.0
_FOG = 12.0
_FOG_COLOUR = 0.6


class Scenes(NamedTuple):
    """A batch of rendered scenes (NumPy arrays)."""

    image: np.ndarray  # (N, S, S, 3) float32
    depth: np.ndarray  # (N, S, S) float32, > 0
    label: np.ndarray  # (N, S, S) int32 in [0, len(CLASSES)]


def render(
    rng: np.random.Generator,
    num: int,
    size: int = 16,
    max_objects: int = 3,
    classes: tuple[str, ...] = CLASSES,
    noise: float = 0.03,
) -> Scenes:
    """Renders `num` random scenes of `size` x `size` pixels.

    Args:
      rng: the NumPy generator to draw the scenes from.
      num: the number of scenes.
      size: the image side S in pixels.
      max_objects: each scene holds 1 to `max_objects` objects.
      classes: the classes that may appear (a subset of `CLASSES`); labels keep
        their `CLASSES` numbering.
      noise: the standard deviation of the additive Gaussian pixel noise.

    Returns:
      The `Scenes`.
    """
    focal = float(size)
    rows = np.arange(size, dtype=np.float64)[None, :, None] + 0.5
    cols = np.arange(size, dtype=np.float64)[None, None, :] + 0.5
    # A random camera pitch and height per scene, so that depth is not a function of the row.
    horizon = rng.uniform(0.0, 0.35 * size, size=(num, 1, 1))
    height = rng.uniform(0.7, 1.3, size=(num, 1, 1)) * _CAMERA_HEIGHT
    # Ground plane: a pixel `h` rows below the horizon sees the ground at z = f·H/h.
    below = np.maximum(rows - horizon, 1e-3)
    depth = np.minimum(focal * height / below, _FAR)
    checker = (np.floor(4.0 * height / depth * focal / size) + np.floor(cols / 3.0)) % 2
    ground = np.stack([0.35 + 0.15 * checker, 0.45 + 0.1 * checker, 0.3 + 0.1 * checker], -1)
    colour = np.where((rows > horizon)[..., None], ground, np.array([0.7, 0.75, 0.85]))
    label = np.zeros((num, size, size), np.int32)
    counts = rng.integers(1, max_objects + 1, size=num)
    for slot in range(max_objects):
        present = (slot < counts)[:, None, None]
        kind = rng.integers(0, len(classes), size=num)
        z = rng.uniform(_NEAR, 0.45 * _FAR, size=num)
        half_w = np.array([_HALF_SIZE[classes[k]][0] for k in kind])
        half_h = np.array([_HALF_SIZE[classes[k]][1] for k in kind])
        centre_col = rng.uniform(0.1 * size, 0.9 * size, size=num)
        # The object stands on the ground: its base projects to the ground row at depth z.
        base_row = horizon[:, 0, 0] + focal * height[:, 0, 0] / z
        centre_row = base_row - focal * half_h / z
        du = (cols - centre_col[:, None, None]) / (focal * half_w[:, None, None] / z[:, None, None])
        dv = (rows - centre_row[:, None, None]) / (focal * half_h[:, None, None] / z[:, None, None])
        is_disc = np.array([classes[k] == "disc" for k in kind])[:, None, None]
        inside = np.where(is_disc, du**2 + dv**2 <= 1.0, (np.abs(du) <= 1.0) & (np.abs(dv) <= 1.0))
        visible = present & inside & (z[:, None, None] < depth)
        tint = np.array([_TINT[classes[k]] for k in kind])[:, None, None, :]
        tint = np.clip(tint + rng.uniform(-_TINT_JITTER, _TINT_JITTER, (num, 1, 1, 3)), 0.0, 1.0)
        light = np.clip(1.0 - 0.25 * (du + dv), 0.4, 1.4)[..., None]
        depth = np.where(visible, z[:, None, None], depth)
        label = np.where(
            visible, np.array([CLASSES.index(classes[k]) + 1 for k in kind])[:, None, None], label
        )
        colour = np.where(visible[..., None], tint * light, colour)
    transmittance = np.exp(-depth / _FOG)[..., None]
    image = colour * transmittance + _FOG_COLOUR * (1.0 - transmittance)
    image = image + noise * rng.standard_normal(image.shape)
    return Scenes(image.astype(np.float32), depth.astype(np.float32), label.astype(np.int32))
