"""The yoto_jax benchmark suite: one YOTO run against grid and random search (see README.md)."""
