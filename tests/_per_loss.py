"""One update of a gradient-combination transformation on a single shared leaf."""

import jax.numpy as jnp
import numpy as np


def apply_traced(tx, grads):
    """The update of ``tx`` for the (T, n) per-loss gradients ``grads`` (traceable)."""
    per_loss = {"w": grads}
    return tx.update({"w": grads.sum(0)}, tx.init(None), per_loss_grads=per_loss)[0]["w"]


def apply(tx, grads, dtype=jnp.float32):
    """``apply_traced`` of ``grads`` cast to ``dtype``, as a NumPy array."""
    return np.asarray(apply_traced(tx, jnp.asarray(grads, dtype)))
