"""stream_entries against the real redis-server, in both protocol versions."""

from __future__ import annotations

import pytest
import redis

from gateway.store.streams import stream_entries


@pytest.mark.parametrize("protocol", [2, 3])
def test_xreadgroup_reply_gives_the_entries_in_order(redis_url: str, protocol: int) -> None:
    """An XREADGROUP reply, RESP2 list or RESP3 mapping, becomes the (id, fields) pairs."""
    client = redis.Redis.from_url(redis_url, decode_responses=True, protocol=protocol)
    try:
        first = client.xadd("s", {"id": "a"})
        second = client.xadd("s", {"id": "b"})
        client.xgroup_create("s", "g", id="0")
        entries = stream_entries(client.xreadgroup("g", "c", {"s": ">"}, count=10))
        assert [(entry_id, fields) for entry_id, fields in entries] == [
            (first, {"id": "a"}), (second, {"id": "b"})]
        assert stream_entries(client.xreadgroup("g", "c", {"s": ">"}, count=10)) == []
    finally:
        client.close()
