"""A benchmark script of bench/ imported as a module, for the tests that call its parts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def bench_module(name: str) -> ModuleType:
    """bench/<name>.py, with bench/ on the path while it loads (it imports its siblings)."""
    sys.path[:0] = [str(REPO / "bench")]
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_bench", REPO / "bench" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))
