"""WAIT for replicas on a connection whose writes it covers (gateway/store/replication.py),
on a real master and its real replica, the replica stopped (SIGSTOP) to fall behind.

Each test also shows the trap the fence avoids: a bare WAIT covers what was written up to
its connection's previous command (redis-server 7.0), so on a pooled connection last used
before the batch was written it answers at once with every replica, however far behind
(the gateway did that before: push.intake_wait_replicas could confirm a batch no replica
had)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import redis as sync_redis
import redis.asyncio as aioredis
from twisted.logger import globalLogPublisher

from gateway.store.embedded import RedisServerProcess
from gateway.store.keys import Keys
from gateway.store.local_cluster import LocalRedisCluster
from gateway.store.replication import ReplicaWaits, wait_for_replicas
from gateway.store.service import make_client, make_cluster_client
from tests.aio import on_asyncio


@contextlib.contextmanager
def _stopped(server: RedisServerProcess) -> Iterator[None]:
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)


def _wait_in_sync(master_port: int, timeout_seconds: float = 30.0) -> None:
    """Until the master's one replica is online and has acknowledged all it was sent
    (replicas acknowledge once a second)."""
    master = sync_redis.Redis(port=master_port, decode_responses=True)
    deadline = time.monotonic() + timeout_seconds
    try:
        while time.monotonic() < deadline:
            state = master.info("replication")
            replica = state.get("slave0", {})
            if replica.get("state") == "online" and replica.get("offset") == state["master_repl_offset"]:
                return
            time.sleep(0.05)
        raise AssertionError("the replica did not come in sync")
    finally:
        master.close()


async def _check_the_wait_covers_another_connections_write(client: object, fence: str, master_port: int,
                                                          replica_stopped: contextlib.AbstractContextManager[None],
                                                          written_key: str) -> None:
    """With the replica stopped, a write on one connection; a fenced wait through the
    gateway's client must wait for it, where a bare WAIT on a connection used before the
    write answers at once."""
    script_connection = aioredis.Redis(port=master_port)  # where a script's writes went
    bare = aioredis.Redis(port=master_port)
    try:
        assert await wait_for_replicas(client, fence, 1, 1000) == 1
        _wait_in_sync(master_port)
        await bare.ping()  # a pooled connection's last use, before the batch
        with replica_stopped:
            await script_connection.set(written_key, "queued")
            assert await bare.execute_command("WAIT", 1, 300) == 1, "the trap: WAIT on a connection used before"
            started = time.monotonic()
            assert await wait_for_replicas(client, fence, 1, 300) == 0
            assert time.monotonic() - started >= 0.25
        assert await wait_for_replicas(client, fence, 1, 5000) == 1
    finally:
        await script_connection.aclose()
        await bare.aclose()


@on_asyncio
async def test_wait_covers_what_other_connections_wrote_on_one_redis(tmp_path: Path) -> None:
    master = RedisServerProcess(data_dir=tmp_path / "master")
    replica = RedisServerProcess(data_dir=tmp_path / "replica")
    master.start()
    replica.start()
    client = make_client(master.url)  # the gateway's pooled client
    try:
        sync_redis.Redis(port=replica.port).replicaof("127.0.0.1", master.port)
        _wait_in_sync(master.port)
        await _check_the_wait_covers_another_connections_write(
            client, Keys().partition(0).replication_fence, master.port, _stopped(replica), "12123:notification:{n1}")
    finally:
        await client.aclose()
        replica.stop()
        master.stop()


@on_asyncio
async def test_wait_covers_what_other_connections_wrote_on_a_cluster(redis_cluster: object) -> None:
    assert isinstance(redis_cluster, LocalRedisCluster)
    redis_cluster.wait_replicas_online()
    keys = Keys(partitions=24)
    fence = keys.partition(7).replication_fence
    client = make_cluster_client(redis_cluster.startup_nodes, "")
    try:
        await client.initialize()
        master_port = redis_cluster.owner_of(client.keyslot(fence))
        (replica_port,) = redis_cluster.replicas_of(master_port)
        await _check_the_wait_covers_another_connections_write(
            client, fence, master_port, redis_cluster.paused(replica_port),  # well short of the 2 s node timeout
            keys.partition(7).notification("n1"))
    finally:
        await client.aclose()


@on_asyncio
async def test_a_master_whose_replicas_fell_short_is_held_off_then_asked_again(redis_url: str) -> None:
    """ReplicaWaits on a redis-server with no replica: the first wait takes its bound and
    falls short; within the hold-off the next ones answer 0 at once without a WAIT (a
    second per batch would stall every receipt behind it); after it, Redis is asked again."""
    now = [100.0]
    client = make_client(redis_url)
    stats = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    waits = ReplicaWaits(client, hold_off_seconds=10.0, timeout_ms=200, clock=lambda: now[0])
    fence = Keys().partition(0).replication_fence

    def waits_sent() -> int:
        return int(stats.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))

    warnings: list[dict[str, object]] = []

    def observe(event: dict[str, object]) -> None:
        if event.get("log_namespace") == "gateway.store.replication":
            warnings.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        before = waits_sent()
        started = time.monotonic()
        assert await waits.confirmed(fence, 1, "receipts") == 0
        assert time.monotonic() - started >= 0.15
        assert waits_sent() == before + 1
        now[0] += 9.0
        started = time.monotonic()
        assert await waits.confirmed(fence, 1, "receipts") == 0
        assert time.monotonic() - started < 0.1
        assert waits_sent() == before + 1
        now[0] += 1.5
        assert await waits.confirmed(fence, 1, "receipts") == 0
        assert waits_sent() == before + 2
        assert await waits.confirmed(fence, 0) == 0  # held off again: nothing asked
        assert waits_sent() == before + 2
        # One warning per hold-off period and kind of wait, saying how many fell short
        # since the last: the first at once; the held-off answer at 9 s only counted;
        # the wait at 10.5 s warned with both.
        assert [(w["what"], w["times"]) for w in warnings] == [("receipts", 1), ("receipts", 2)]
    finally:
        globalLogPublisher.removeObserver(observe)
        stats.close()
        await client.aclose()
