"""Arrays from users' files, checked before any work is done on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["load_array"]


def load_array(path: str | Path, *, n_features: int | None = None) -> np.ndarray:
    """Load a numeric 2-D array (N, F) from a `.npy` file as float32.

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for anything that
    is not a non-empty, finite, numeric 2-D array (with F == `n_features` when given).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix != ".npy":
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected .npy")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npy array ({error})") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D array (samples, features), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{path}: the array has no rows")
    if n_features is not None and array.shape[1] != n_features:
        raise ValueError(f"{path}: expected {n_features} features per row, got {array.shape[1]}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: the array contains NaN or infinite values")
    return array
