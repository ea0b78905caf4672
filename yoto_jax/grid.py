"""Fast grid search: train one model per loss-weight vector as one jitted, vmapped program.

A grid search trains the same model N times, once per configuration. When the
configurations differ only in numbers (loss weights, a regularisation strength, an
initial logit) and the training function is pure, ``jax.vmap`` turns the N runs into
one program and ``jax.jit`` compiles it once: the runs share every kernel launch and
each batched matrix product does N runs' work.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from yoto_jax import _checks

Metrics = TypeVar("Metrics")


def vmapped_training(
    train_one: Callable[..., Metrics],
) -> Callable[..., Metrics]:
    r"""Turns ``train_one(hparams, key, *args)`` into one jitted program over N configurations.

    The returned function maps :math:`(h_n, k_n)_{n=1..N} \mapsto
    (\mathrm{train\_one}(h_n, k_n, \mathrm{args}))_{n=1..N}`: ``jax.vmap`` over the leading
    axis of ``hparams`` and ``keys``, with ``args`` (data, say) shared by every run,
    under one ``jax.jit``. Keep it and call it again to reuse the compiled program (for
    another grid of the same size); it also has ``.lower`` for ahead-of-time compilation.

    Args:
      train_one: a pure function ``(hparams, key, *args) -> metrics``: one training run
        with the configuration ``hparams`` (an array, e.g. a loss-weight vector of shape
        (K+1,), or a pytree of arrays) and the PRNG key ``key``, returning any pytree
        of arrays.

    Returns:
      ``run(hparams, keys, *args) -> metrics``: ``hparams`` is ``train_one``'s argument
      stacked along a new leading axis of size N (every leaf floating); ``keys`` is one
      key per configuration, shape (N,), or a single key that every run shares (the
      same initialisation and batches, so only the configuration differs); ``args`` are
      passed unchanged to every run. The metrics gain a leading axis of size N. Wrong
      shapes or a non-floating ``hparams`` leaf raise at trace time.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> def train_one(weights, key, x, y):  # weighted least squares, closed form
      ...     return jnp.sum(weights * x * y) / jnp.sum(weights * x * x)
      >>> run = vmapped_training(train_one)
      >>> weights = jnp.array([[1.0, 1.0], [1.0, 0.0]])
      >>> run(weights, jax.random.key(0), jnp.array([1.0, 2.0]), jnp.array([1.0, 3.0]))
      Array([1.4, 1. ], dtype=float32)
    """
    _checks.functions(train_one=train_one)

    def run(hparams: Any, keys: ArrayLike, *args: Any) -> Metrics:
        num = _checks.num_configs(hparams, "hparams")
        in_axes = (0, _checks.key_axis(keys, num, "keys")) + (None,) * len(args)
        return jax.vmap(train_one, in_axes=in_axes)(hparams, keys, *args)

    return jax.jit(run)


def stack_trees(trees: Sequence[Any]) -> Any:
    """Pytrees of one structure stacked along a new leading axis: configurations into the
    ``hparams`` of :func:`vmapped_training`, or one model per configuration.

    Args:
      trees: a non-empty sequence of pytrees with the same structure (arrays or numbers
        as leaves, of the same shape leaf by leaf).

    Returns:
      One pytree of that structure whose leaves have a new leading axis of size
      ``len(trees)``.

    Example:
      >>> import jax.numpy as jnp
      >>> configs = [{"rho": 0.1, "weights": jnp.ones(2)}, {"rho": 1.0, "weights": jnp.zeros(2)}]
      >>> stacked = stack_trees(configs)
      >>> stacked["rho"], stacked["weights"].shape
      (Array([0.1, 1. ], dtype=float32, weak_type=True), (2, 2))
    """
    trees = list(trees)
    if not trees:
        raise ValueError("stack_trees needs at least one pytree.")
    return jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(x) for x in leaves]), *trees)


def loss_weight_grid(values: Sequence[float], num_aux: int) -> jax.Array:
    """Every combination of auxiliary weights from ``values``, relative to a primary weight 1.

    Args:
      values: the candidate weights of each auxiliary loss, each a finite number > 0.
      num_aux: the number K >= 1 of auxiliary losses.

    Returns:
      An array of shape (len(values)**K, K+1), float32: column 0 (the primary) is 1,
      the rows run over ``itertools.product(values, repeat=K)``.

    Example:
      >>> loss_weight_grid([0.01, 0.1, 1.0], num_aux=2).shape  # the paper's 3x3 grid
      (9, 3)
    """
    num_aux = _checks.positive_int(num_aux, "num_aux")
    if isinstance(values, str) or np.ndim(values) != 1:
        raise TypeError(
            f"values must be a sequence of candidate weights, e.g. [0.01, 0.1, 1.0], got {values!r}."
        )
    values = [float(v) for v in values]
    if not values:
        raise ValueError("values must hold at least one weight.")
    for value in values:
        _checks.positive(value, "every grid value")
    rows = [(1.0, *combo) for combo in itertools.product(values, repeat=num_aux)]
    return jnp.asarray(np.array(rows, np.float32))


def random_loss_weights(
    key: ArrayLike, num: int, num_aux: int, low: float = 0.01, high: float = 1.0
) -> jax.Array:
    r"""``num`` random auxiliary weights, log-uniform in [low, high], relative to a primary 1.

    .. math::
        w_i = \exp(u_i), \quad u_i \sim \mathcal{U}[\log \mathrm{low}, \log \mathrm{high}].

    Args:
      key: a PRNG key.
      num: the number of configurations, an int >= 1.
      num_aux: the number K >= 1 of auxiliary losses.
      low: the smallest weight, > 0.
      high: the largest weight, >= low.

    Returns:
      An array of shape (num, K+1), float32, with column 0 equal to 1.

    Example:
      >>> import jax
      >>> weights = random_loss_weights(jax.random.key(0), num=9, num_aux=2)
      >>> weights.shape, bool((weights[:, 1:] >= 0.01).all() & (weights[:, 1:] <= 1.0).all())
      ((9, 3), True)
    """
    num_aux = _checks.positive_int(num_aux, "num_aux")
    _checks.positive_int(num, "num")
    _checks.positive(low, "low")
    _checks.positive(high, "high")
    if high < low:
        raise ValueError(f"high must be >= low, got low={low}, high={high}.")
    logs = jax.random.uniform(key, (num, num_aux), minval=math.log(low), maxval=math.log(high))
    return jnp.concatenate([jnp.ones((num, 1)), jnp.exp(logs)], axis=1)
