"""The gateway's Redis client against a real redis-server."""

from __future__ import annotations

from gateway.store.service import SOCKET_TIMEOUT_SECONDS, lend_newest_first, make_client
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


@on_asyncio
async def test_a_cluster_connection_closed_under_a_command_is_a_connection_error(redis_url: str) -> None:
    """redis-py's asyncio cluster closes every connection of a node when one command to it
    fails; a command sending on another of them then finds no writer.  The gateway's
    cluster connection reports that as ConnectionError (retried, or Redis away), not the
    AttributeError redis-py 8.1 raised, which no loop or retry policy handles.

    redis-py 8.2 checks the writer itself (ConnectionError); the send below raises what
    8.1's did, so that the gateway's guard is what is tested, whichever redis-py is
    installed."""
    import pytest
    from redis.asyncio.connection import Connection
    from redis.exceptions import ConnectionError as RedisConnectionError

    from gateway.store.service import _ClusterConnection

    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")

    # The installed redis-py's own behaviour, for the record: 8.1 AttributeError, 8.2 ConnectionError.
    upstream = Connection(host=host, port=int(port), socket_timeout=5)
    await upstream.connect()
    send = upstream._send_packed_command

    async def writer_gone(command: object) -> None:
        # What the node-wide disconnect does between redis-py's is_connected check and
        # its send task (asyncio.wait_for runs the send as a task).
        upstream._writer = None  # type: ignore[attr-defined]
        await send(command)  # type: ignore[arg-type]

    upstream._send_packed_command = writer_gone  # type: ignore[method-assign]
    try:
        with pytest.raises((AttributeError, RedisConnectionError)):
            await upstream.send_packed_command(upstream.pack_command("PING"), check_health=False)
    finally:
        await upstream.disconnect()

    guarded = _ClusterConnection(host=host, port=int(port), socket_timeout=5)
    await guarded.connect()

    async def send_as_redis_py_8_1(command: object) -> None:
        guarded._writer = None  # type: ignore[attr-defined]
        guarded._writer.writelines(command)  # type: ignore[attr-defined]  # AttributeError, as in 8.1

    guarded._send_packed_command = send_as_redis_py_8_1  # type: ignore[method-assign]
    try:
        with pytest.raises(RedisConnectionError):
            await guarded.send_packed_command(guarded.pack_command("PING"), check_health=False)
    finally:
        await guarded.disconnect()


@on_asyncio
async def test_the_cluster_client_uses_the_guarded_connection(redis_cluster_url: str) -> None:
    """make_cluster_client builds every node connection, seeds and discovered nodes, as
    _ClusterConnection (packing with hiredis directly: gateway/store/packing.py)."""
    from gateway.store.packing import DirectPacker
    from gateway.store.service import _ClusterConnection, make_cluster_client

    client = make_cluster_client(redis_cluster_url.removeprefix("cluster:").split(","), "")
    try:
        for i in range(20):
            await client.set(f"guarded-{i}", "1")  # keys in every master's slots
        nodes = client.get_nodes()
        assert len([n for n in nodes if n.server_type == "primary"]) >= 3
        assert all(issubclass(node.connection_class, _ClusterConnection) for node in nodes)
        connections = [connection for node in nodes for connection in node._connections]
        assert connections and all(isinstance(c._command_packer, DirectPacker) for c in connections)
    finally:
        await client.aclose()


def _getkeys_calls(ports: list[int]) -> int:
    from gateway.store.local_cluster import command

    total = 0
    for port in ports:
        for line in command(port, "info", "commandstats").splitlines():
            if line.startswith("cmdstat_command|getkeys:"):
                total += int(line.split("calls=")[1].split(",")[0])
    return total


def test_stream_read_keys_are_the_first_half_after_streams() -> None:
    from gateway.store.service import stream_read_keys

    assert stream_read_keys(["GROUP", "g", "c", "COUNT", 5, "STREAMS", "{p1}:a", "{p1}:b", ">", ">"]) == [
        "{p1}:a", "{p1}:b"]
    assert stream_read_keys(["COUNT", 5, "streams", "s", "0-0"]) == ["s"]
    assert stream_read_keys(["GROUP", "g", "c"]) is None
    assert stream_read_keys(["STREAMS", "s"]) is None  # odd: let redis-py and Redis say what is wrong


@on_asyncio
async def test_cluster_stream_reads_need_no_command_getkeys(redis_cluster: object, redis_cluster_url: str) -> None:
    """XREADGROUP and XREAD go to their stream's node without a COMMAND GETKEYS round trip
    first (redis-py asks one for every command with movable keys), and read what is there."""
    import asyncio

    from gateway.store.local_cluster import LocalRedisCluster
    from gateway.store.service import make_cluster_client

    assert isinstance(redis_cluster, LocalRedisCluster)
    client = make_cluster_client(redis_cluster_url.removeprefix("cluster:").split(","), "")
    ports = [node.port for node in redis_cluster.nodes]
    try:
        streams = [f"12123:{{p{k}}}:notify" for k in range(6)]  # spread over the masters
        for stream in streams:
            await client.xgroup_create(stream, "g", id="0", mkstream=True)
            await client.xadd(stream, {"k": stream})
        before = await asyncio.to_thread(_getkeys_calls, ports)
        for stream in streams:
            got = await client.xreadgroup("g", "c", {stream: ">"}, count=10)
            assert [fields for _, entries in got for _, fields in entries] == [{"k": stream}]
            assert await client.xread({stream: "0-0"}, count=10)
        assert await asyncio.to_thread(_getkeys_calls, ports) == before
    finally:
        await client.aclose()


@on_asyncio
async def test_cluster_reads_follow_ask_during_a_slot_migration(redis_cluster: object, redis_cluster_url: str) -> None:
    """While a slot migrates, a key already moved is answered by the importing node after
    ASK, however many connections the client holds to it.  redis-py 8.1 sends ASKING and
    the command as two pooled commands, and its pool hands out the oldest free connection
    first: with two or more free, the command went without ASKING, the importing node
    answered MOVED back to the source, and the client ping-ponged until "TTL exhausted"
    (seen in bench/cluster_soak.py: receipts refused for the whole migration)."""
    import asyncio

    from redis.crc import key_slot

    from gateway.store.local_cluster import LocalRedisCluster, command
    from gateway.store.reads import get_many
    from gateway.store.service import make_cluster_client

    assert isinstance(redis_cluster, LocalRedisCluster)
    client = make_cluster_client(redis_cluster_url.removeprefix("cluster:").split(","), "")
    slot = key_slot(b"{ask-test}")
    source = redis_cluster.owner_of(slot)
    target = next(port for port in redis_cluster.master_ports() if port != source)
    keys = [f"{{ask-test}}:{k}" for k in range(10)]
    source_id, target_id = command(source, "cluster", "myid"), command(target, "cluster", "myid")
    try:
        for key in keys:
            await client.set(key, key)
        # Half the keys moved, the slot still the source's: the state a reshard leaves
        # for seconds while it moves a slot's keys in batches.
        command(target, "cluster", "setslot", str(slot), "importing", source_id)
        command(source, "cluster", "setslot", str(slot), "migrating", target_id)
        assert "OK" in command(source, "migrate", "127.0.0.1", str(target), "", "0", "5000", "keys", *keys[:5])
        # Several free connections to the importing node: concurrent commands open them.
        target_key = next(f"warm-{k}" for k in range(1000)
                          if redis_cluster.owner_of(key_slot(f"warm-{k}".encode())) == target)
        await asyncio.gather(*(client.get(target_key) for _ in range(8)))
        for _ in range(3):
            assert await client.get(keys[0]) == keys[0]  # moved: ASK to the target
            assert await client.get(keys[9]) == keys[9]  # not yet: the source answers
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            assert await pipe.execute() == keys
        # A multi-key MGET in the slot is answered TRYAGAIN until the migration ends;
        # get_many (the receipts' message-id lookups) reads key by key then.
        assert await get_many(client, keys) == keys
    finally:
        command(source, "migrate", "127.0.0.1", str(target), "", "0", "5000", "keys", *keys[5:])
        for port in redis_cluster.master_ports():
            command(port, "cluster", "setslot", str(slot), "node", target_id)
        await client.aclose()


def test_the_ask_workaround_lends_the_newest_free_connection_and_leaves_an_unknown_pool_alone() -> None:
    import collections

    from twisted.logger import globalLogPublisher

    class Node:  # the shape of redis-py 8.1's ClusterNode pool
        __slots__ = ("_free", "made")

        def __init__(self) -> None:
            self._free: collections.deque[str] = collections.deque(["oldest", "newest"])
            self.made = 0

        def acquire_connection(self) -> str:
            if self._free:
                return self._free.popleft()
            self.made += 1
            return "new"

    assert lend_newest_first(Node)
    node = Node()
    assert [node.acquire_connection(), node.acquire_connection(), node.acquire_connection()] == ["newest", "oldest", "new"]
    assert node.made == 1

    class OtherPool:  # a redis-py built differently: no _free deque
        def acquire_connection(self) -> str:
            return "theirs"

    said: list[dict[str, object]] = []
    globalLogPublisher.addObserver(said.append)
    try:
        assert not lend_newest_first(OtherPool)
    finally:
        globalLogPublisher.removeObserver(said.append)
    assert OtherPool().acquire_connection() == "theirs"
    assert any(e.get("node") == "OtherPool" and e.get("log_namespace") == "gateway.store" for e in said)
