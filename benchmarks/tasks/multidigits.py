"""``multidigits``: two overlapping digits side by side (MultiMNIST-style, from scikit-learn's digits).

Each image puts two 8x8 digits of scikit-learn's bundled set side by side on an 8x12
canvas, overlapping by four columns (pixel-wise maximum). The digit images are split
into disjoint train, val and test pools first, so test pairs hold unseen digit
images. Primary: cross-entropy of the left digit, from few labelled pairs.
Auxiliaries: cross-entropy of the right digit (more labels for the shared trunk, but a
competing readout of the overlap), and the reconstruction of the whole image
(per-pixel binary cross-entropy; unsupervised, a regulariser that also spends capacity). Test metric: left-digit accuracy.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

from benchmarks import losses as L
from benchmarks import metrics
from benchmarks.models import DigitsNet
from benchmarks.tasks.base import Batch, Params, Scale, Task, Training, grow_train, split_batch

_SHIFT = 4  # the right digit starts this many columns to the right of the left one
_WIDTH = 8 + _SHIFT
_POOLS = (0.4, 0.2, 0.4)  # fractions of the digit images for train, val, test pairs

_SCALES = {  # width: the MLP's hidden size
    "full": Scale((128, 512, 1024), Training(600, 32, 3e-3, 30, 256), width=64),
    "quick": Scale((128, 512, 512), Training(240, 32, 3e-3, 40, 256), width=64),
    "tiny": Scale((16, 16, 16), Training(6, 8, 3e-3, 3, 16), width=16),
}


def _pairs(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, num: int) -> dict:
    left, right = rng.integers(0, len(images), size=(2, num))
    canvas = np.zeros((num, 8, _WIDTH), np.float32)
    canvas[:, :, :8] = images[left]
    canvas[:, :, _SHIFT:] = np.maximum(canvas[:, :, _SHIFT:], images[right])
    return {"image": canvas, "left": labels[left], "right": labels[right]}


def build(scale: str, data_seed: int = 0, train_size: int | str | None = None) -> Task:
    """The multidigits task at `scale` ("full", "quick" or "tiny"), optionally with more
    training pairs from the training pool of digit images (`benchmarks.tasks.base.grow_train`)."""
    sizes, training, width = _SCALES[scale]
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int32)
    rng = np.random.default_rng(data_seed)
    order = rng.permutation(len(images))
    bounds = np.cumsum([0, *(int(f * len(images)) for f in _POOLS)])
    pools = [order[lo:hi] for lo, hi in itertools.pairwise(bounds)]
    parts = [_pairs(rng, images[pool], labels[pool], num) for pool, num in zip(pools, sizes)]
    data = split_batch({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, sizes)
    train_pool = pools[0]
    data, training = grow_train(
        data,
        training,
        train_size,
        lambda extra_rng, num: _pairs(extra_rng, images[train_pool], labels[train_pool], num),
        data_seed,
    )
    model = DigitsNet(pixels=8 * _WIDTH, hidden=width)

    def losses(params: Params, batch: Batch, key: jax.Array) -> jax.Array:
        out = model.apply(params, batch["image"])
        pixels = batch["image"].reshape(batch["image"].shape[0], -1)
        return jnp.stack(
            [
                L.cross_entropy(out["left"], batch["left"]),
                L.cross_entropy(out["right"], batch["right"]),
                L.binary_cross_entropy(out["reconstruction"], pixels),
            ]
        )

    def statistics(params: Params, batch: Batch) -> dict[str, jax.Array]:
        return metrics.confusion_statistics(
            model.apply(params, batch["image"])["left"], batch["left"]
        )

    return Task(
        name="multidigits",
        description="left digit of two overlapping digits; aux: right digit CE, reconstruction; accuracy",
        loss_names=("left", "right", "reconstruction"),
        metric="accuracy",
        higher_is_better=True,
        data=data,
        training=training,
        init=lambda key: model.init(key, data.train["image"][:1]),
        losses=losses,
        statistics=statistics,
        metrics=metrics.accuracy_metrics,
    )
