"""Helpers of the gradient-combination tests: one update on a single shared leaf, and the
check that every product asks for full precision."""

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np


def apply_traced(tx, grads):
    """The update of ``tx`` for the (T, n) per-loss gradients ``grads`` (traceable)."""
    per_loss = {"w": grads}
    return tx.update({"w": grads.sum(0)}, tx.init(None), per_loss_grads=per_loss)[0]["w"]


def apply(tx, grads, dtype=jnp.float32):
    """``apply_traced`` of ``grads`` cast to ``dtype``, jitted (one program per shape
    instead of dispatching the solvers op by op), as a NumPy array."""
    return np.asarray(_jitted_apply(tx, jnp.asarray(grads, dtype)))


_jitted_apply = jax.jit(apply_traced, static_argnums=0)


DOT = re.compile(r"stablehlo\.dot_general .*?precision = \[(\w+), (\w+)\]")


def assert_every_dot_is_highest(fn, arg, scope, minimum):
    """Every dot of ``jax.jit(fn)`` lowered at ``arg`` asks for HIGHEST precision (at least
    ``minimum`` dots), also under the default-precision ``scope``. XLA:CPU computes float32
    dots fully whatever they ask, so only the lowered program can show it; on GPUs a dot
    that does not ask runs in TF32."""
    with jax.default_matmul_precision(scope) if scope else contextlib.nullcontext():
        text = jax.jit(fn).lower(arg).as_text()
    precisions = DOT.findall(text)
    assert len(precisions) == text.count("stablehlo.dot_general") >= minimum
    assert set(precisions) == {("HIGHEST", "HIGHEST")}
