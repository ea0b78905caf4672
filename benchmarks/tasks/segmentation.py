"""``segmentation``: semantic segmentation with a frozen teacher (the paper's CISS setting).

The scenes of `benchmarks.scenes` with four classes: ground, disc, square, bar. As
in class-incremental segmentation, a teacher was trained on many scenes without bars
and only knows ground, disc and square. Primary: per-pixel cross-entropy on the few
labelled training scenes. Auxiliaries: a soft Dice loss (every class weighs equally,
which helps the rare classes that mIoU counts as much as the ground), and distillation
from the frozen teacher: the cross-entropy of the student against the teacher's soft
labels, with zero mass on "bar" (the teacher's knowledge helps on the old classes and
pulls bars towards the background). Test metric: mIoU over the four classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import yoto_jax
from benchmarks import losses as L
from benchmarks import metrics
from benchmarks.models import ConvNet
from benchmarks.scenes import CLASSES, render
from benchmarks.tasks.base import (
    Batch,
    Params,
    Scale,
    Task,
    Training,
    grow_train,
    split_batch,
    to_device,
)
from benchmarks.training import Setting, fit, split_key

OLD_CLASSES = ("disc", "square")
"""The classes the teacher knows (besides the ground)."""

_SCALES = {  # the student's scale, and the teacher's (its val split is only for the logs)
    "full": (
        Scale((16, 128, 256), Training(400, 8, 3e-3, 20, 64), width=16),
        Scale((512, 64, 0), Training(400, 16, 3e-3, 400, 64), width=16),
    ),
    "quick": (
        Scale((16, 128, 128), Training(90, 8, 3e-3, 15, 64), width=16),
        Scale((256, 64, 0), Training(150, 16, 3e-3, 150, 64), width=16),
    ),
    "tiny": (
        Scale((8, 8, 8), Training(6, 4, 3e-3, 3, 8), width=4),
        Scale((8, 8, 0), Training(3, 4, 3e-3, 3, 8), width=4),
    ),
}


def _teacher(scale: Scale, data_seed: int) -> tuple[ConvNet, Params]:
    """A segmentation net trained with cross-entropy on scenes without bars."""
    sizes, training, width = scale
    rng = np.random.default_rng([data_seed, 1])
    scenes = render(rng, sum(sizes), classes=OLD_CLASSES)._asdict()
    data = split_batch(scenes, sizes)
    model = ConvNet((("segmentation", len(OLD_CLASSES) + 1),), width)
    task = _segmentation_task(model, data, training, ("ce",))
    key = jax.random.key(data_seed)
    init = task.init(split_key(key)[0])
    params, _, _ = fit(task, _cross_entropy_only, {}, init, key, task.data)
    return model, params


def _cross_entropy_only(config: dict, setting: Setting) -> yoto_jax.Weighting:
    """The teacher's one loss, at weight 1."""
    return yoto_jax.fixed_weights(jnp.ones(1))


def _losses(model: ConvNet, params: Params, batch: Batch) -> jax.Array:
    logits = model.apply(params, batch["image"])["segmentation"]
    losses = [L.cross_entropy(logits, batch["label"])]
    if "teacher" in batch:
        losses += [
            L.dice_loss(logits, batch["label"]),
            L.soft_cross_entropy(logits, batch["teacher"]),
        ]
    return jnp.stack(losses)


def _segmentation_task(model, data, training, loss_names) -> Task:
    def init(key: jax.Array) -> Params:
        return model.init(key, data.train["image"][:1])

    def statistics(params: Params, batch: Batch) -> dict[str, jax.Array]:
        logits = model.apply(params, batch["image"])["segmentation"]
        return metrics.confusion_statistics(logits, batch["label"])

    return Task(
        name="segmentation",
        description="segmentation; aux: Dice, distillation from a teacher without bars; mIoU",
        loss_names=loss_names,
        metric="miou",
        higher_is_better=True,
        data=data,
        training=training,
        init=init,
        losses=lambda params, batch, key: _losses(model, params, batch),
        statistics=statistics,
        metrics=metrics.segmentation_metrics,
    )


def build(scale: str, data_seed: int = 0, train_size: int | str | None = None) -> Task:
    """The segmentation task at `scale` ("full", "quick" or "tiny"), optionally with more
    training scenes (`benchmarks.tasks.base.grow_train`)."""
    (sizes, training, width), teacher_scale = _SCALES[scale]
    teacher, teacher_params = _teacher(teacher_scale, data_seed)

    def labelled_scenes(rng: np.random.Generator, num: int) -> dict[str, np.ndarray]:
        """Scenes with the teacher's soft labels (zero mass on the classes it does not know)."""
        scenes = render(rng, num)._asdict()
        probs = jax.nn.softmax(
            teacher.apply(teacher_params, to_device(scenes)["image"])["segmentation"]
        )
        new_classes = len(CLASSES) - len(OLD_CLASSES)
        scenes["teacher"] = np.asarray(jnp.pad(probs, ((0, 0),) * 3 + ((0, new_classes),)))
        return scenes

    data = split_batch(labelled_scenes(np.random.default_rng(data_seed), sum(sizes)), sizes)
    data, training = grow_train(data, training, train_size, labelled_scenes, data_seed)
    model = ConvNet((("segmentation", len(CLASSES) + 1),), width)
    return _segmentation_task(model, data, training, ("ce", "dice", "distill"))
