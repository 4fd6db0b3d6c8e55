"""bench/soak.py on its smallest scenario (a carrier down, its traffic moved to the other
one): the run settles every notification, reports it, and cleans up after itself unless
asked to keep its work directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A short TMPDIR for the run: redis-server's Unix socket lives under it, and a socket
    path must stay under 108 bytes (pytest's tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="soak-t-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _soak(scratch: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "soak.py"), "down", "--n", "200", *args],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result, json.loads(result.stdout.strip().splitlines()[-1])


def test_soak_removes_its_work_directory_when_everything_held(scratch: Path) -> None:
    _, report = _soak(scratch)
    assert report["ok"] is True and report["broken"] == {}
    [down] = report["results"]  # type: ignore[misc]
    assert down["accepted"] == 200 and down["lost"] == 0 and down["delivered"] == 200
    assert list(scratch.iterdir()) == []


def test_soak_keeps_what_it_was_asked_to_keep(scratch: Path) -> None:
    kept = scratch / "kept"
    _soak(scratch, "--keep", str(kept))
    assert (kept / "down-0").is_dir() and any((kept / "down-0").rglob("*.log"))
