"""The built-in benchmark: real photographs shipped with scikit-image, synthetic forgery families
modelled on DF40's, written once in the DF40 JSON + PNG format, and a data module over it.

* :mod:`~data_modules.benchmark.sources`   real crops in two acquisition domains (photo, archive)
* :mod:`~data_modules.benchmark.families`  forgery families and their registry (``register_family``)
* :mod:`~data_modules.benchmark.generate`  writing the dataset (reals once; each family in its own folder)
* :mod:`~data_modules.benchmark.datamodule` ``BenchmarkDataModule`` and ``benchmark_datamodule``
* ``python -m data_modules.benchmark generate OUT`` / ``show OUT.png`` / ``info``

Only the family registry (numpy) is imported eagerly; everything else loads on first use, so
``from data_modules.benchmark import register_family`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from data_modules.benchmark.families import (
    FAMILIES,
    Family,
    apply_family,
    get_family,
    load_family_modules,
    register_family,
)

__all__ = [
    "FAMILIES",
    "Family",
    "register_family",
    "get_family",
    "apply_family",
    "load_family_modules",
    "BenchmarkConfig",
    "generate_benchmark",
    "ensure_benchmark",
    "ensure_family",
    "read_manifest",
    "verify_benchmark",
    "BenchmarkDataModule",
    "benchmark_datamodule",
    "BENCHMARK_AUGMENT",
]

_LAZY = {
    "BenchmarkConfig": "generate",
    "generate_benchmark": "generate",
    "ensure_benchmark": "generate",
    "ensure_family": "generate",
    "read_manifest": "generate",
    "verify_benchmark": "generate",
    "BenchmarkDataModule": "datamodule",
    "benchmark_datamodule": "datamodule",
    "BENCHMARK_AUGMENT": "datamodule",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"data_modules.benchmark.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'data_modules.benchmark' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
