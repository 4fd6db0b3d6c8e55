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


def test_embedded_server_keeps_notification_hashes_compact(redis_url: str) -> None:
    """The embedded redis-server stores a hash with a 1 KB value as a listpack (ziplist on
    6.2), not a hash table: half the memory per notification (gateway/store/embedded.py)."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    try:
        client.hset("12123:notification:{compact}", mapping={"state": "queued", "text": "【交管12123】" + "您" * 300})
        assert client.object("encoding", "12123:notification:{compact}") in (b"listpack", b"ziplist")
    finally:
        client.close()
