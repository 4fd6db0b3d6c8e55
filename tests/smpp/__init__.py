"""Tests of gateway/smpp.

`decode_all` reads back what a session or shell wrote to its transport.
"""

from __future__ import annotations

from gateway.smpp.pdu import Pdu, decode


def decode_all(data: bytes) -> list[Pdu]:
    """The PDUs in `data`, which must be whole frames (every command_length in range)."""
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        assert 16 <= length <= len(data) - pos
        out.append(decode(data[pos : pos + length]))
        pos += length
    return out
