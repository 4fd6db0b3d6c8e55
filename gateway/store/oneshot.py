"""A Redis client for commands that talk to Redis once and exit (the CLI, ivr-sim).

With ``redis.url: embedded`` it uses the running daemon's server (its unix socket), or
starts a temporary one on the same data directory (the daemon picks the data up later).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.store.keys import Keys

__all__ = ["redis_for"]


@asynccontextmanager
async def redis_for(config: Any) -> AsyncIterator[tuple[Any, Keys]]:
    """(client, keys) for the config's Redis, closed (and a temporary server stopped) after."""
    from gateway.store.embedded import RedisServerProcess
    from gateway.store.service import make_client, make_cluster_client

    temporary: RedisServerProcess | None = None
    if config.redis.cluster_nodes:
        client = make_cluster_client(config.redis.cluster_nodes, config.redis.url)
        try:
            yield client, Keys(config.redis.prefix, partitions=config.push.partitions)
        finally:
            await client.aclose()
        return
    if config.redis.url == "embedded":
        server = RedisServerProcess(data_dir=Path(config.redis.data_dir).resolve())
        if server.running_elsewhere():
            url = f"unix://{server.socket_path}"
        else:
            server.start()
            temporary = server
            url = server.url
    else:
        url = config.redis.url
    client = make_client(url)
    try:
        yield client, Keys(config.redis.prefix, partitions=config.push.partitions)
    finally:
        await client.aclose()
        if temporary is not None:
            temporary.stop()
