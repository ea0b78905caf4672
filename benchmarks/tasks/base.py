"""What a benchmark task is: data splits, a model's per-loss vector, a test metric, a budget."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.models import encoder_mask

Params = Any
Batch = dict[str, jax.Array]


class Splits(NamedTuple):
    """Train, validation and test data: dicts of arrays with a common leading size each."""

    train: Batch
    val: Batch
    test: Batch


class Training(NamedTuple):
    """The training budget shared by every method and seed on a task."""

    steps: int
    batch_size: int
    learning_rate: float  # Adam's initial one (cosine decay to 0), for the model and µ
    log_every: int  # steps between logged points of the curves
    eval_chunk: int  # examples per evaluation chunk; divides the val and test sizes
    fresh: bool = False  # batches walk once through a shuffled split of steps x batch examples


class Scale(NamedTuple):
    """A task's sizes at one scale (``full``, ``quick`` or ``tiny``)."""

    sizes: tuple[int, int, int]  # train, val, test examples
    training: Training
    width: int  # the model's width


@dataclass(frozen=True)
class Task:
    """A multi-loss task. Every function is pure and jittable.

    Attributes:
      name: the task's name on the command line.
      description: one line for the reports.
      loss_names: the names of the losses, primary first.
      metric: the name of the headline test metric (a key of ``metrics``' result).
      higher_is_better: whether a larger ``metric`` is better.
      data: the splits; the model is selected on ``val`` and reported on ``test``.
      training: the budget.
      init: ``key -> params`` of the model.
      losses: ``(params, batch, key) -> (K+1,)`` losses of a training batch.
      statistics: ``(params, batch) -> dict`` of sums over a chunk of examples.
      metrics: ``dict of summed statistics -> dict`` of metrics, including ``metric``.
      shared_mask: ``params -> bool tree``, True for the shared parameters (for
        methods such as GradNorm that need gradients of the shared trunk).
    """

    name: str
    description: str
    loss_names: tuple[str, ...]
    metric: str
    higher_is_better: bool
    data: Splits
    training: Training
    init: Callable[[jax.Array], Params]
    losses: Callable[[Params, Batch, jax.Array], jax.Array]
    statistics: Callable[[Params, Batch], dict[str, jax.Array]]
    metrics: Callable[[dict[str, jax.Array]], dict[str, jax.Array]]
    shared_mask: Callable[[Params], Any] = encoder_mask

    @property
    def num_aux(self) -> int:
        """K, the number of auxiliary losses."""
        return len(self.loss_names) - 1


def to_device(batch: dict[str, np.ndarray]) -> Batch:
    """A dict of NumPy arrays as JAX arrays."""
    return {name: jnp.asarray(value) for name, value in batch.items()}


def split_batch(batch: dict[str, np.ndarray], sizes: tuple[int, int, int]) -> Splits:
    """Cuts a batch into train, val and test splits of the given sizes, in that order."""
    bounds = np.cumsum((0, *sizes))
    parts = [{k: v[lo:hi] for k, v in batch.items()} for lo, hi in itertools.pairwise(bounds)]
    return Splits(*(to_device(part) for part in parts))


EXTRA_TRAIN_SEED = 2
"""Extra training examples are drawn from ``np.random.default_rng([data_seed, 2])``."""

FRESH = "fresh"
"""The training-set size at which no example is seen twice (see `grow_train`)."""


def grow_train(
    data: Splits,
    training: Training,
    train_size: int | str | None,
    examples: Callable[[np.random.Generator, int], dict[str, np.ndarray]],
    data_seed: int,
) -> tuple[Splits, Training]:
    """`data` with its training split grown to `train_size` examples by `examples(rng, n)`.

    The validation and test splits, and the first training examples, stay as they are,
    so that a larger training set is the only change (the regime map's data-size factor).
    ``train_size="fresh"`` grows the split to steps x batch examples and sets
    ``training.fresh``: the batches then walk through it once, in a shuffled order, so
    every batch holds new examples, as in a large-data regime.
    """
    size = jax.tree.leaves(data.train)[0].shape[0]
    if train_size == FRESH:
        train_size = training.steps * training.batch_size
        training = training._replace(fresh=True)
    if train_size is None or train_size == size:
        return data, training
    if not isinstance(train_size, int) or train_size < size:
        raise ValueError(
            f"train_size must be None, {FRESH!r} or an int >= the split's {size} examples, "
            f"got {train_size!r}."
        )
    rng = np.random.default_rng([data_seed, EXTRA_TRAIN_SEED])
    extra = to_device(examples(rng, train_size - size))
    train = {k: jnp.concatenate([v, extra[k]]) for k, v in data.train.items()}
    return data._replace(train=train), training
