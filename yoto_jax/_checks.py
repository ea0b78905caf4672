"""Trace-time input validation shared by the public functions.

Every check here runs on shapes, dtypes and Python values only, so it works on
tracers; values are inspected only when they are concrete (`concrete_float`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def floating_array(x: Any, what: str) -> jax.Array:
    """`x` as a JAX array, requiring a floating dtype (gradients need one).

    Example:
      >>> floating_array([1.0, 2.0], "losses")
      Array([1., 2.], dtype=float32)
    """
    try:
        array = jnp.asarray(x)
    except TypeError as error:
        raise TypeError(
            f"{what} must be a floating-point array, got {type(x).__name__}."
        ) from error
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(
            f"{what} must have a floating dtype (float16/bfloat16/float32/float64), got {array.dtype}; "
            "cast it with .astype(jnp.float32)."
        )
    return array


def scalar(x: Any, what: str) -> jax.Array:
    """`x` as a floating scalar array; a reduced loss or a single logit.

    Example:
      >>> scalar(0.5, "losses['depth']").shape
      ()
    """
    array = floating_array(x, what)
    if array.shape != ():
        raise ValueError(
            f"{what} must be a scalar (reduce it over the batch first, e.g. with .mean()), "
            f"got shape {array.shape}."
        )
    return array


def compute_dtype(*arrays: jax.Array) -> jnp.dtype:
    """float32, or wider when an input is wider: half precision is upcast.

    Example:
      >>> import jax.numpy as jnp
      >>> compute_dtype(jnp.zeros(2, jnp.bfloat16))
      dtype('float32')
    """
    return jnp.result_type(jnp.float32, *(a.dtype for a in arrays))


def concrete_float(x: Any) -> float | None:
    """The Python float of a concrete scalar, or None for tracers and callables.

    Example:
      >>> concrete_float(0.5), concrete_float(lambda step: 0.1)
      (0.5, None)
    """
    if callable(x) or isinstance(x, jax.core.Tracer):
        return None
    value = np.asarray(x)
    if value.shape != ():
        raise ValueError(f"expected a scalar hyperparameter, got shape {value.shape}.")
    if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise TypeError(f"expected a real number, got dtype {value.dtype}.")
    return float(value)


def non_negative(x: Any, name: str) -> None:
    """Raises unless `x` is a tracer, a schedule, or a finite number >= 0.

    Example:
      >>> non_negative(-1.0, "rho")
      Traceback (most recent call last):
      ValueError: rho must be a finite number >= 0, got -1.0.
    """
    value = concrete_float(x)
    if value is not None and not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}.")


def at_step_zero(check: Callable[[Any, str], None], x: Any, name: str) -> None:
    """``check(x, name)``, or for a schedule (a callable of the step count) on its value
    at step 0: a schedule that starts out of range is refused; its later values are not
    checked (they are traced inside the update).

    Example:
      >>> at_step_zero(non_negative, lambda count: -5.0, "rho")
      Traceback (most recent call last):
      ValueError: rho (a schedule, at step 0) must be a finite number >= 0, got -5.0.
    """
    if callable(x):
        x, name = x(jnp.zeros([], jnp.int32)), f"{name} (a schedule, at step 0)"
    check(x, name)


def unit_interval(x: Any, name: str, *, closed: bool = False) -> None:
    """Raises unless `x` is a tracer or a finite number in [0, 1) ([0, 1] if ``closed``).

    Example:
      >>> unit_interval(1.0, "primary_floor")
      Traceback (most recent call last):
      ValueError: primary_floor must be a finite number in [0, 1), got 1.0.
    """
    value = concrete_float(x)
    if value is not None and not (
        math.isfinite(value) and 0.0 <= value and (value <= 1.0 if closed else value < 1.0)
    ):
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value}.")


def positive(x: Any, name: str) -> None:
    """Raises unless `x` is a tracer or a finite number > 0.

    Example:
      >>> positive(0.0, "eps")
      Traceback (most recent call last):
      ValueError: eps must be a finite number > 0, got 0.0.
    """
    value = concrete_float(x)
    if value is not None and not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}.")


def positive_entries(x: Any, name: str) -> None:
    """Raises unless `x` is a tracer or a scalar or array of finite numbers > 0.

    Example:
      >>> positive_entries([0.1, 0.0], "eps")
      Traceback (most recent call last):
      ValueError: eps must hold finite numbers > 0, got [0.1, 0.0].
    """
    if callable(x) or isinstance(x, jax.core.Tracer):
        return
    values = np.asarray(x)
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {values.dtype}.")
    if not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(f"{name} must hold finite numbers > 0, got {values.tolist()}.")


def primary_name(mu: Mapping[str, Any], losses: Mapping[str, Any]) -> str:
    """The one key of `losses` that is not an auxiliary name in `mu`.

    Example:
      >>> primary_name({"flip": 0.0}, {"flip": 0.1, "depth": 1.0})
      'depth'
    """
    if not isinstance(losses, Mapping):
        raise TypeError(
            f"mu is a dict of auxiliary logits, so losses must be a dict too, got {type(losses).__name__}."
        )
    missing = sorted(set(mu) - set(losses))
    if missing:
        raise KeyError(f"losses is missing the auxiliary losses {missing} that mu names.")
    extra = sorted(set(losses) - set(mu))
    if len(extra) != 1:
        raise KeyError(
            f"losses must hold the {len(mu)} auxiliary names of mu ({sorted(mu)}) plus exactly one "
            f"primary loss; got {len(extra)} other keys: {extra}."
        )
    return extra[0]


def positive_int(x: Any, name: str, minimum: int = 1) -> int:
    """`x` as a Python int when it is a Python or NumPy int >= ``minimum`` (a count:
    losses, configurations, steps).

    Example:
      >>> import numpy as np
      >>> positive_int(np.int64(3), "num_steps")
      3
    """
    if isinstance(x, bool | np.bool_) or not isinstance(x, int | np.integer) or x < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {x!r}.")
    return int(x)


def renamed(value: Any, default: Any, name: str, old_value: Any, old_name: str) -> Any:
    """``value``, or ``old_value`` with a DeprecationWarning when the caller used the old
    keyword ``old_name`` (kept as an alias of ``name``). Both at once is a TypeError."""
    if old_value is None:
        return value
    if value is not default:
        raise TypeError(
            f"pass {name} only: {old_name} is its deprecated alias, not a second option."
        )
    warnings.warn(
        f"{old_name} is deprecated and will be removed; pass {name} instead.",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value


def functions(**named: Any) -> None:
    """Raises a TypeError naming the first of ``named`` (argument name -> value) that is
    not callable."""
    for name, function in named.items():
        if not callable(function):
            raise TypeError(f"{name} must be a function, got {type(function).__name__}.")


def boolean(x: Any, name: str) -> bool:
    """`x` as a Python bool when it is a Python or NumPy bool (not a string or a number).

    Example:
      >>> boolean("False", "maximize")
      Traceback (most recent call last):
      TypeError: maximize must be a bool (True or False), got 'False'.
    """
    if not isinstance(x, bool | np.bool_):
        raise TypeError(f"{name} must be a bool (True or False), got {x!r}.")
    return bool(x)


def real_array(x: Any, what: str) -> jax.Array:
    """`x` as a JAX array of a floating or integer dtype (a configuration's weights or seed).

    Example:
      >>> real_array([1, 2], "seeds")
      Array([1, 2], dtype=int32)
    """
    try:
        array = jnp.asarray(x)
    except TypeError as error:
        raise TypeError(f"{what} must be an array of numbers, got {type(x).__name__}.") from error
    if not (jnp.issubdtype(array.dtype, jnp.floating) or jnp.issubdtype(array.dtype, jnp.integer)):
        raise TypeError(f"{what} must have a floating or integer dtype, got {array.dtype}.")
    return array


def key_axis(keys: Any, num: int, name: str) -> int | None:
    """0 when `keys` holds one PRNG key per configuration (leading size `num`), None
    for one key; typed keys or raw ``uint32`` ones (``jax.random.PRNGKey``).

    Example:
      >>> import jax
      >>> key_axis(jax.random.split(jax.random.key(0), 4), 4, "keys")
      0
    """
    array = jnp.asarray(keys)
    if jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
        key_shape = ()
    elif array.dtype == jnp.uint32 and array.ndim >= 1:
        key_shape = array.shape[-1:]  # raw keys from jax.random.PRNGKey: (..., 2)
    else:
        given = f"{keys!r}" if isinstance(keys, int | np.integer) else f"dtype {array.dtype}"
        raise TypeError(
            f"{name} must hold PRNG keys (jax.random.key(seed), or jax.random.split of one), "
            f"got {given}."
        )
    if array.shape == key_shape:
        return None
    if array.shape == (num, *key_shape):
        return 0
    raise ValueError(
        f"{name} must be one key, or one key per configuration (leading size {num}), got a "
        f"shape {array.shape}."
    )


def num_configs(tree: Any, name: str, *, integers: bool = False) -> int:
    """The common leading size N of the floating leaves of `tree` (one entry per
    configuration: a grid's hyperparameters, a search's configurations); with
    ``integers``, integer leaves (a seed) are allowed too.

    Example:
      >>> import jax.numpy as jnp
      >>> num_configs({"weights": jnp.ones((4, 3)), "rho": jnp.ones(4)}, "configs")
      4
    """
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if not leaves:
        raise ValueError(f"{name} must hold at least one array, got an empty pytree.")
    sizes = set()
    for path, leaf in leaves:
        where = name + jax.tree_util.keystr(path)
        array = real_array(leaf, where) if integers else floating_array(leaf, where)
        if array.ndim == 0:
            raise ValueError(
                f"{where} must have a leading axis of one entry per configuration, got a scalar; "
                "stack the configurations, e.g. jnp.stack([w1, w2, ...])."
            )
        sizes.add(array.shape[0])
    if len(sizes) != 1:
        raise ValueError(
            f"every leaf of {name} must have the same leading size (one entry per configuration), "
            f"got sizes {sorted(sizes)}."
        )
    return sizes.pop()
