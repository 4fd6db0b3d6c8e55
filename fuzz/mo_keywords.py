"""atheris harness: the MO keyword parser on any text.

The input becomes a ``str`` three ways (UTF-8 with replacement, UTF-16 with lone
surrogates kept, latin-1), optionally repeated to about 1 MB.  ``parse_mo`` must return
one of the five commands with a well-formed argument, depend only on the first
MAX_TEXT_CHARS characters, and finish within 50 ms.
"""

from __future__ import annotations

import time

import _common  # first: puts the repository on sys.path
import atheris

with atheris.instrument_imports(include=["gateway"]):
    from gateway.push.keywords import MAX_TEXT_CHARS, parse_mo
from tests.fuzz.test_fuzz_mo import check_command

BUDGET_SECONDS = 0.05


def as_text(data: bytes) -> str:
    match data[:1]:
        case b"\x00":
            return data[1:].decode("utf-16-le", "surrogatepass") if len(data) % 2 else ""
        case b"\x01":
            return data[1:].decode("latin-1")
        case _:
            return data[1:].decode("utf-8", "replace")


def test_one_input(data: bytes) -> None:
    text = as_text(data)
    if data[-1:] == b"\xff" and text:
        text = text * (1_000_000 // len(text) + 1)
    command = parse_mo(text)
    check_command(command)
    assert parse_mo(text[:MAX_TEXT_CHARS]) == command
    # Timed twice: one slow run can be a garbage collection, two are the parser.
    if min(parse_seconds(text), parse_seconds(text)) > BUDGET_SECONDS:
        raise RuntimeError(f"parse_mo is slow on {len(text)} characters")


def parse_seconds(text: str) -> float:
    started = time.perf_counter()
    parse_mo(text)
    return time.perf_counter() - started


def seeds() -> list[bytes]:
    texts = [
        "CXYY",
        "QXYY 20261130001",
        "QR 123456",
        "确认取消 654321",
        "查询积分",
        "ＣＸＹＹ",
        "帮助",
    ]
    return [b"\x02" + t.encode("utf-8") for t in texts] + [
        b"\x00" + "取消预约\ud800".encode("utf-16-le", "surrogatepass")
    ]


if __name__ == "__main__":
    _common.main(test_one_input, seeds)
