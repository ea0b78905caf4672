"""``depth``: monocular depth on procedural scenes (the paper's UniDepth setting, in miniature).

Primary: SILog on log depth. Auxiliaries: the cross-entropy of a segmentation head
sharing the encoder (object classes have fixed physical sizes, so knowing the class
helps to read depth from apparent size), and a flip-consistency loss between the
predictions on an image and on its flipped, brightness-jittered copy (a geometric
invariance that needs no labels, with a trivial minimiser: a constant prediction).
Test metric: AbsRel (lower is better); δ<1.25 is reported too.
"""

from __future__ import annotations

import jax
import numpy as np

from benchmarks import metrics
from benchmarks.models import DEPTH_LOSSES, LOG_DEPTH_SHIFT, depth_conv_net
from benchmarks.scenes import render
from benchmarks.tasks.base import Batch, Params, Scale, Task, Training, grow_train, split_batch

_SCALES = {
    "full": Scale((16, 128, 256), Training(400, 8, 3e-3, 20, 64), width=16),
    "quick": Scale((16, 128, 128), Training(90, 8, 3e-3, 15, 64), width=16),
    "tiny": Scale((8, 8, 8), Training(6, 4, 3e-3, 3, 8), width=4),
}


def build(scale: str, data_seed: int = 0, train_size: int | str | None = None) -> Task:
    """The depth task at `scale` ("full", "quick" or "tiny"), optionally with more
    training scenes (`benchmarks.tasks.base.grow_train`)."""
    sizes, training, width = _SCALES[scale]
    net = depth_conv_net(width=width)
    scenes = render(np.random.default_rng(data_seed), sum(sizes))
    data = split_batch(scenes._asdict(), sizes)
    data, training = grow_train(
        data, training, train_size, lambda rng, num: render(rng, num)._asdict(), data_seed
    )

    def statistics(params: Params, batch: Batch) -> dict[str, jax.Array]:
        log_depth = net.model.apply(params, batch["image"])["depth"][..., 0] + LOG_DEPTH_SHIFT
        return metrics.depth_statistics(log_depth, batch["depth"])

    return Task(
        name="depth",
        description="monocular depth; aux: segmentation CE, flip consistency; AbsRel",
        loss_names=DEPTH_LOSSES,
        metric="abs_rel",
        higher_is_better=False,
        data=data,
        training=training,
        init=net.init,
        losses=net.loss_vector,
        statistics=statistics,
        metrics=metrics.depth_metrics,
    )
