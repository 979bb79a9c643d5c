"""Where the tests find the real MNIST files: `$IPAE_DATA/mnist`, the library's own cache (`ipae.data.mnist`),
when IPAE_DATA is set and that directory holds the four files; else ../shared/data/mnist beside the repository.
Tests that need them skip with `needs_mnist` where neither holds them; nothing is downloaded."""

import os
from pathlib import Path

import pytest

from ipae.data.mnist import FILES, mnist_directory

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def _real_mnist() -> Path:
    if os.environ.get("IPAE_DATA"):
        try:
            return mnist_directory(download=False)  # $IPAE_DATA/mnist, by the rule the library reads it with
        except (FileNotFoundError, NotADirectoryError):
            pass
    return SHARED


REAL_MNIST = _real_mnist()
HAS_REAL_MNIST = all((REAL_MNIST / name).is_file() for name in FILES)
MISSING = f"the real MNIST files are neither in $IPAE_DATA/mnist nor in {SHARED}"
needs_mnist = pytest.mark.skipif(not HAS_REAL_MNIST, reason=MISSING)
