"""The benchmark's networks (Flax Linen), and the depth task's net with its per-loss vector.

Stable interface for other scripts (``benchmarks/overhead.py``)::

    from benchmarks.models import depth_conv_net
    net = depth_conv_net()                       # DepthNet(model, init, sample_batch, loss_vector)
    params = net.init(jax.random.key(0))
    batch = net.sample_batch(32)                 # {"image", "depth", "label"}, NumPy arrays
    losses = net.loss_vector(params, batch, jax.random.key(1))  # (3,): SILog, seg CE, consistency

Convolutions are written as patch extraction followed by a matrix product
(`PatchConv`). Under ``jax.vmap`` over parameters (a grid search of many runs), XLA
turns a vmapped ``lax.conv`` into a grouped convolution, which is slow on CPU, while a
vmapped matrix product is a batched matrix product.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import losses as L
from benchmarks.scenes import CLASSES, render

LOG_DEPTH_SHIFT = 2.0
"""The depth head predicts log depth minus this shift (≈ the mean log depth of the scenes)."""


class PatchConv(nn.Module):
    """A 3x3 'SAME' convolution as patches @ kernel (NHWC), vmap-friendly on CPU."""

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        patches = jax.lax.conv_general_dilated_patches(
            x,
            (3, 3),
            (self.stride, self.stride),
            "SAME",
            dimension_numbers=("NHWC", "OIHW", "NHWC"),
        )
        return nn.Dense(self.features, name="kernel")(patches)


class Encoder(nn.Module):
    """Shared trunk: 3x3 convs at full and half resolution, upsampled and fused with a skip."""

    width: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        full = nn.relu(PatchConv(self.width)(x))
        half = nn.relu(PatchConv(2 * self.width, stride=2)(full))
        half = nn.relu(PatchConv(2 * self.width)(half))
        up = jnp.repeat(jnp.repeat(half, 2, axis=1), 2, axis=2)
        return nn.relu(nn.Dense(self.width)(jnp.concatenate([full, up], axis=-1)))


class ConvNet(nn.Module):
    """Dense prediction: a shared `Encoder` and one 1x1 head per output.

    Attributes:
      outputs: (name, channels) of each head; the outputs dict has these names.
      width: the encoder's base width.
    """

    outputs: tuple[tuple[str, int], ...]
    width: int = 8

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        features = Encoder(self.width, name="encoder")(images)
        return {name: nn.Dense(ch, name=name)(features) for name, ch in self.outputs}


class Trunk(nn.Module):
    """Two ReLU dense layers."""

    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(nn.Dense(self.hidden)(nn.relu(nn.Dense(self.hidden)(x))))


class DigitsNet(nn.Module):
    """An MLP with a shared trunk and three heads: left digit, right digit, reconstruction."""

    pixels: int
    hidden: int = 64

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        features = Trunk(self.hidden, name="trunk")(images.reshape(images.shape[0], -1))
        return {
            "left": nn.Dense(10, name="left")(features),
            "right": nn.Dense(10, name="right")(features),
            "reconstruction": nn.Dense(self.pixels, name="reconstruction")(features),
        }


def encoder_mask(params: Any) -> Any:
    """True for the shared parameters (those under an ``encoder`` or ``trunk`` scope)."""

    def shared(path: tuple, _: Any) -> bool:
        return any(getattr(entry, "key", None) in ("encoder", "trunk") for entry in path)

    return jax.tree_util.tree_map_with_path(shared, params)


Batch = dict[str, Any]


def flip_augment(images: jax.Array, key: jax.Array) -> jax.Array:
    """A horizontally flipped copy of `images` (B, H, W, C) with brightness jittered by ±20%."""
    gain = jax.random.uniform(key, (images.shape[0], 1, 1, 1), minval=0.8, maxval=1.2)
    return images[:, :, ::-1] * gain


def depth_loss_vector(model: ConvNet, params: Any, batch: Batch, key: jax.Array) -> jax.Array:
    r"""The depth task's losses (3,): SILog (primary), segmentation CE, flip consistency.

    SILog uses λ = 0.15, UniDepth's value. The consistency loss compares the log depth predicted on the image with the
    un-flipped prediction on its flipped, brightness-jittered copy,
    :math:`\mathrm{mean}(\hat d(x) - \mathrm{flip}(\hat d(\mathrm{aug}(x))))^2`: a
    geometric-invariance loss that needs no labels (gradients flow through both).
    """
    images = jnp.asarray(batch["image"])
    both = jnp.concatenate([images, flip_augment(images, key)])
    outputs = model.apply(params, both)
    log_depth, log_depth_aug = jnp.split(outputs["depth"][..., 0] + LOG_DEPTH_SHIFT, 2)
    seg_logits = jnp.split(outputs["segmentation"], 2)[0]
    return jnp.stack(
        [
            L.silog(log_depth, jnp.log(batch["depth"]), variance_focus=0.15),
            L.cross_entropy(seg_logits, batch["label"]),
            L.mean_squared_error(log_depth, log_depth_aug[:, :, ::-1]),
        ]
    )


DEPTH_LOSSES = ("silog", "segmentation", "consistency")


class DepthNet(NamedTuple):
    """The depth task's conv net, its inputs and its per-loss vector."""

    model: ConvNet
    init: Callable[[jax.Array], Any]  # key -> params
    sample_batch: Callable[..., Batch]  # (batch_size, seed=0) -> batch of NumPy arrays
    loss_vector: Callable[[Any, Batch, jax.Array], jax.Array]  # (params, batch, key) -> (3,)


def depth_conv_net(width: int = 8, image_size: int = 16) -> DepthNet:
    """The depth benchmark's net: `ConvNet` with a log-depth and a segmentation head.

    Args:
      width: the encoder's base width.
      image_size: the side of the square input images.

    Returns:
      A `DepthNet`; its `loss_vector` is :func:`depth_loss_vector`, whose entries are
      named by `DEPTH_LOSSES`.
    """
    model = ConvNet((("depth", 1), ("segmentation", len(CLASSES) + 1)), width)

    def init(key: jax.Array) -> Any:
        return model.init(key, jnp.zeros((1, image_size, image_size, 3)))

    def sample_batch(batch_size: int, seed: int = 0) -> Batch:
        return render(np.random.default_rng(seed), batch_size, image_size)._asdict()

    def loss_vector(params: Any, batch: Batch, key: jax.Array) -> jax.Array:
        return depth_loss_vector(model, params, batch, key)

    return DepthNet(model, init, sample_batch, loss_vector)
