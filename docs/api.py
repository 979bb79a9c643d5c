"""Build the API reference from the docstrings with pdoc: `python -W error docs/api.py [OUT]` writes
HTML into OUT (build/api by default; ignored by git). Needs `pip install -e '.[docs]'`.

The reference is the public face: the package `ipae` and each module whose `__all__` lists names.
pdoc reads the names of a module's `__all__` from its namespace, so the package's lazily imported
names (`ipae.IPAE`, `ipae.BetaVAE`, `ipae.load_estimator`, `ipae.plot_runs`) are imported first.
"""

import importlib
import pkgutil
import sys
from pathlib import Path

import pdoc

import ipae

for name in ipae.__all__:
    getattr(ipae, name)
submodules = [info.name for info in pkgutil.walk_packages(ipae.__path__, "ipae.")]
public = [name for name in submodules if getattr(importlib.import_module(name), "__all__", None)]
pdoc.pdoc("ipae", *public, output_directory=Path(sys.argv[1] if len(sys.argv) > 1 else "build/api"))
