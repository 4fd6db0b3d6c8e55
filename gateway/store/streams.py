"""Reading redis-py's stream replies the same way whatever the protocol version."""

from __future__ import annotations

from typing import Any

from redis.client import NEVER_DECODE

__all__ = ["read_group_entries", "autoclaim_entries", "stream_entries"]


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


# Streams other systems write (the intake streams core systems XADD to) are read undecoded
# and decoded here: the client's own decoding is strict, so one entry that is not UTF-8
# failed the whole read, again at every retry of its pending batch, and held the entries
# read with it for ever.  An octet that is not UTF-8 becomes a lone surrogate
# (surrogateescape), which the intake rejects as not text (gateway/push/intake.py).
def _text_of(value: Any) -> Any:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _decoded(entry: Any) -> Any:
    if entry is None:
        return None
    entry_id, fields = entry
    if fields:
        # Undecoded replies are bytes throughout; one comprehension, no call per field
        # (this runs for every notification a core system XADDs).
        fields = {name.decode("utf-8", "surrogateescape"): value.decode("utf-8", "surrogateescape")
                  for name, value in fields.items()}
    return _text_of(entry_id), fields


async def read_group_entries(redis: Any, group: str, consumer: str, stream: str, start: str, *,
                             count: int, block_ms: int | None = None) -> list[Any]:
    """XREADGROUP of one stream from `start` ('>' new, '0' this consumer's pending):
    its ``(entry id, fields)`` pairs, decoded here (above)."""
    args: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    args += ["STREAMS", stream, start]
    response = await redis.execute_command(*args, **{NEVER_DECODE: True})
    return [_decoded(entry) for entry in stream_entries(response)]


async def autoclaim_entries(redis: Any, stream: str, group: str, consumer: str, *, min_idle_ms: int,
                            start_id: str, count: int) -> tuple[str, list[Any]]:
    """XAUTOCLAIM: (the cursor to go on from, the entries claimed), decoded here (above)."""
    response = await redis.execute_command("XAUTOCLAIM", stream, group, consumer, min_idle_ms, start_id,
                                           "COUNT", count, **{NEVER_DECODE: True})
    return _text_of(response[0]), [_decoded(entry) for entry in response[1]]
