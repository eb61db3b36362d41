"""Checking values read back from an index's stored metadata (meta.json, heads.npz).

A file on disk may have been edited, truncated or written by another version; these
raise TypeError on a value of the wrong type, which the loaders turn into an
IndexLoadError naming the file.
"""

from __future__ import annotations


def as_int(value: object) -> int:
    """An integer (not a bool), or TypeError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def as_float(value: object) -> float:
    """A number (not a bool) as a float, or TypeError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def as_list(value: object) -> list[object]:
    """A list, or TypeError."""
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value
