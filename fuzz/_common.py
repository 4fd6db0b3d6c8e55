"""Shared set-up of the atheris harnesses: the repository on sys.path, seed files, `main`.

Run a harness from the repository root, e.g. ``.venv/bin/python fuzz/smpp_decode.py
-runs=200000``; libFuzzer options (``-max_total_time=60``, ``-max_len=4096``, a corpus
directory) pass straight through.  See fuzz/README.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_seeds(directory: str, seeds: Iterable[bytes]) -> None:
    """Write each seed to ``directory`` as a file libFuzzer reads as a starting corpus."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(seeds):
        (path / f"seed-{n:03d}").write_bytes(seed)


def seeds_requested(argv: list[str]) -> str | None:
    """``--write-seeds DIR``: the harness writes its seed corpus there and exits."""
    if len(argv) >= 3 and argv[1] == "--write-seeds":
        return argv[2]
    return None


def main(test_one_input: Callable[[bytes], None], seeds: Callable[[], Iterable[bytes]]) -> None:
    """A harness's ``__main__``: ``--write-seeds DIR`` writes `seeds()` there and exits;
    anything else goes to libFuzzer, which calls `test_one_input` with each input."""
    import atheris

    target = seeds_requested(sys.argv)
    if target:
        write_seeds(target, seeds())
        sys.exit(0)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
