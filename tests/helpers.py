"""Small shared helpers for tests (data fixtures that several test files use)."""

from __future__ import annotations

from ganft.data import Images, load_splits, pool_and_validation


def digits_pool_val(val_size: int = 300) -> tuple[Images, Images]:
    """The bundled digits' training split as the pool protocol divides it: (pool, validation)."""
    return pool_and_validation(load_splits("digits"), val_size)
