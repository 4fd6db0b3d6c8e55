"""Reading redis-py's stream replies the same way whatever the protocol version."""

from __future__ import annotations

from typing import Any

__all__ = ["stream_entries"]


def stream_entries(response: Any) -> list[Any]:
    """The ``(entry id, fields)`` pairs of an XREADGROUP/XREAD reply for one stream.

    RESP2 answers ``[[stream, [entries]]]``; RESP3 clients answer a mapping
    ``{stream: [[entries]]}`` (or ``{stream: [entries]}``).  None or empty: no entries.
    """
    if not response:
        return []
    if isinstance(response, dict):  # RESP3 clients answer with a mapping
        out: list[Any] = []
        for value in response.values():
            out.extend(value[0] if value and isinstance(value[0], list) else value)
        return out
    return list(response[0][1])
