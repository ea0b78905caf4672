"""A dict of arrays by loss name whose order survives JAX's transformations."""

from __future__ import annotations

import jax


@jax.tree_util.register_pytree_with_keys_class
class ByName(dict):
    """A dict of arrays by loss name that keeps its order through ``jax.jit`` and other
    transformations (a plain dict comes out of them with its keys sorted)."""

    def tree_flatten_with_keys(self) -> tuple[list, tuple[str, ...]]:
        return [(jax.tree_util.DictKey(name), value) for name, value in self.items()], tuple(self)

    def tree_flatten(self) -> tuple[list, tuple[str, ...]]:
        return list(self.values()), tuple(self)

    @classmethod
    def tree_unflatten(cls, names: tuple[str, ...], values: list) -> ByName:
        return cls(zip(names, values))
