"""A benchmark script of bench/ imported as a module (for the tests that call its parts), or
run as a script (for the smoke tests of its output)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

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


def run_bench(name: str, *args: str, timeout_seconds: float = 600) -> tuple[list[str], dict[str, Any]]:
    """bench/<name>.py run as a script with `args`; its output lines (the table first) and
    the JSON line it ends with.  Fails the test with the script's stderr if it failed."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), *args], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout_seconds)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    return lines, json.loads(lines[-1])
