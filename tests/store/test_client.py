"""The gateway's Redis client against a real redis-server."""

from __future__ import annotations

from gateway.store.service import SOCKET_TIMEOUT_SECONDS, make_client
from tests.aio import on_asyncio


@on_asyncio
async def test_a_blocking_read_longer_than_redis_py_default_timeout_returns_empty(redis_url: str) -> None:
    """XREAD BLOCK 6 s on an idle stream answers "nothing", not TimeoutError: the client's
    socket_timeout is the gateway's own (redis-py 8 would cut every reply at 5 s)."""
    client = make_client(redis_url)
    try:
        assert SOCKET_TIMEOUT_SECONDS > 6
        assert await client.xread({"idle-stream": "0-0"}, block=6000) in (None, [], {})
    finally:
        await client.aclose()
