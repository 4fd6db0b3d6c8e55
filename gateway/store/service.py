"""The Redis dependency as a Twisted service: the embedded server, the client, a health probe.

redis-py's asyncio client runs on the same loop as Twisted (the asyncio reactor).  It
reconnects by itself on the next command; commands that fail while Redis is away raise
`redis.exceptions.ConnectionError`, and every loop that uses Redis catches that, waits with
backoff and carries on, so work waits rather than being dropped.  The probe (PING each
second) drives `available`, /readyz and the `gateway12123_redis_up` gauge.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ClusterError, RedisClusterException, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway import metrics
from gateway.config import RedisConfig
from gateway.store.bridge import as_deferred
from gateway.store.embedded import RedisServerProcess, free_port
from gateway.store.keys import Keys
from gateway.store.packing import direct_packing
from gateway.store.refusals import describe

# Redis unavailable, for now: every loop backs off and tries again.  On a Cluster also a
# slot without a master (failover under way: CLUSTERDOWN, MASTERDOWN), a slot migrating
# with the keys split between nodes after redis-py's own retries (TRYAGAIN), and a slot
# map that does not cover a slot yet.
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, ClusterError, TryAgainError,
                RedisClusterException)
# How long a command may wait for its reply before it is a TimeoutError (then retried
# with backoff like any other failed command).  Set here rather than left to redis-py,
# whose default became 5 s in redis-py 8: the longest blocking read the gateway sends is
# 2 s (push.mo XREADGROUP BLOCK), and a loaded machine (CI with both cores busy, an AOF
# fsync on a busy disk) has been seen to hold a reply several seconds beyond that.
SOCKET_TIMEOUT_SECONDS = 15.0


# Core systems write the domain data (bookings, people, vehicles) and may write octets that
# are not UTF-8 (a GBK name): strict decoding failed every read of that key, so a citizen
# calling about that booking got an error.  Replaced, the rest of the record still reads
# (U+FFFD where the octets were).  The intake streams are read undecoded and a request
# that is not text is rejected instead (gateway/store/streams.py).
ENCODING_ERRORS = "replace"


def make_client(url: str, reconnect_max_delay_seconds: float = 10.0, *, max_connections: int = 1000,
                pool_timeout_seconds: float = 5.0, **options: Any) -> aioredis.Redis:
    """A redis.asyncio client for `url` (decode_responses=True).

    Commands are retried a few times with jittered backoff.  The pool *blocks* for up to
    `pool_timeout_seconds` when all `max_connections` are busy (redis-py's default pool
    fails at once at 100, which a burst of a thousand calls reaches: bench/ivr_calls.py).
    """
    retry = Retry(ExponentialWithJitterBackoff(cap=reconnect_max_delay_seconds, base=0.05), retries=3)
    if not url.startswith("unix:"):
        options.setdefault("socket_keepalive", True)  # TCP only; unix sockets refuse it
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout_seconds,
        decode_responses=True,
        encoding_errors=ENCODING_ERRORS,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        socket_connect_timeout=2.0,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        health_check_interval=0,
        **options,
    )
    pool.connection_class = direct_packing(pool.connection_class)
    return aioredis.Redis(connection_pool=pool)


def make_cluster_client(nodes: Sequence[str], url: str, reconnect_max_delay_seconds: float = 10.0, *,
                        max_connections: int = 1000) -> Any:
    """A redis.asyncio RedisCluster seeded with `nodes` (``host:port``), decode_responses=True.

    `url` (``redis://`` or ``rediss://`` of one node) gives the credentials and TLS for all.
    redis-py follows MOVED and ASK itself, refreshes the slot map and retries TRYAGAIN and
    CLUSTERDOWN: a slot migrating or a master failing over shows up as a slower command,
    or as ConnectionError/TimeoutError while no node serves the slot, which every loop
    already survives.
    """
    from redis.asyncio.cluster import ClusterNode
    from redis.asyncio.connection import parse_url

    _newest_free_connection_first()
    options: dict[str, Any] = {k: v for k, v in parse_url(url).items()
                               if k in ("username", "password", "ssl")} if url else {}
    seeds = [ClusterNode(host, int(port)) for host, _, port in (node.rpartition(":") for node in nodes)]
    retry = Retry(ExponentialWithJitterBackoff(cap=reconnect_max_delay_seconds, base=0.05), retries=3)
    client = _stream_slot_cluster_class()(startup_nodes=seeds, decode_responses=True,
                          encoding_errors=ENCODING_ERRORS, retry=retry,
                          max_connections=max_connections, socket_connect_timeout=2.0,
                          socket_timeout=SOCKET_TIMEOUT_SECONDS, **options)
    if not options.get("ssl"):
        # RedisCluster fixes its connection class in __init__; swap it before the first
        # connection is made (nodes found later are built from connection_kwargs).
        connection_class = direct_packing(_ClusterConnection)
        client.connection_kwargs["connection_class"] = connection_class
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = connection_class
    return client


@functools.cache
def _newest_free_connection_first() -> None:
    """Make redis.asyncio's cluster nodes hand out their most recently freed connection.

    On an ASK redirect (a slot migrating) redis-py 8.1 and 8.2 send ASKING, then the command,
    each through the node's pool, which handed out the *oldest* free connection: with two
    or more free, the command went on a connection that had not said ASKING, the
    importing node answered MOVED back to the source, and the client went back and forth
    until "TTL exhausted" (every receipt whose key had moved was refused for the whole
    migration: bench/cluster_soak.py; tests/store/test_client.py).  ASKING's connection
    goes back to the pool and the command is sent with no await in between, so taking
    the newest free connection gives the command ASKING's.  Which free connection a pool
    lends is otherwise of no consequence."""
    from redis.asyncio.cluster import ClusterNode

    lend_newest_first(ClusterNode)


def lend_newest_first(node_class: Any) -> bool:
    """Patch `node_class` (redis.asyncio's ClusterNode) to lend its newest free connection;
    False, with a warning, when its pool is not built as in redis-py 8.1."""
    if not callable(getattr(node_class, "acquire_connection", None)) or "_free" not in getattr(node_class, "__slots__", ()):
        # Left alone, and said: a slot migration may then refuse receipts again (the carrier
        # resends them; nothing is lost).  tests/store/test_client.py fails on such a version.
        Logger(namespace="gateway.store").warn(
            "redis-py {version}: {node} has no acquire_connection and _free pool; the ASK workaround "
            "(newest free connection first) is not applied", version=redis.__version__, node=node_class.__name__)
        return False
    original = node_class.acquire_connection

    def acquire_connection(self: Any) -> Any:
        free = self._free
        if free:
            return free.pop()
        return original(self)

    node_class.acquire_connection = acquire_connection
    return True


def stream_read_keys(args: Sequence[Any]) -> list[Any] | None:
    """The stream keys of an XREAD/XREADGROUP's arguments (after the command name): the
    first half of what follows STREAMS; None when there is no STREAMS."""
    for index, arg in enumerate(args):
        if isinstance(arg, (str, bytes)) and (arg.upper() if isinstance(arg, str) else arg.upper().decode()) == "STREAMS":
            rest = args[index + 1:]
            if not rest or len(rest) % 2:
                return None
            return list(rest[:len(rest) // 2])
    return None


@functools.cache
def _stream_slot_cluster_class() -> Any:
    # Built on first use: redis.asyncio.cluster is imported only when a Cluster is configured.
    from redis.asyncio.cluster import RedisCluster

    class StreamSlotCluster(RedisCluster):  # type: ignore[misc]
        """RedisCluster that finds the slot of XREAD/XREADGROUP itself.

        redis-py asks a node ``COMMAND GETKEYS`` for every command with movable keys,
        XREADGROUP among them: a second round trip and a second command for Redis on every
        intake and MO read (measured by w11-own: about 110 per second per idle gateway).
        The keys follow STREAMS, so the slot is computed here; MOVED/ASK handling is
        unchanged (it routes by this slot as before)."""

        async def _determine_slot(self, command: str, *args: Any) -> int:
            if isinstance(command, str) and command.upper() in ("XREADGROUP", "XREAD"):
                keys = stream_read_keys(args)
                if keys:
                    slots = {self.keyslot(key) for key in keys}
                    if len(slots) == 1:
                        return slots.pop()
            return await super()._determine_slot(command, *args)

    return StreamSlotCluster


class _ClusterConnection(aioredis.Connection):
    """A cluster node connection whose "closed under me" is a ConnectionError.

    redis-py 8.1's asyncio RedisCluster disconnects every connection of a node when one
    command to it fails (a timeout on a loaded machine, a master going away).  A command
    that was sending on another of that node's connections then meets ``_writer is None``
    and raises AttributeError (seen in tests/push/test_partitions.py under load), which no
    retry policy and none of our loops treat as a Redis error.  As a ConnectionError it is
    retried by the cluster client (the bytes were never written) or, past its retries,
    handled like Redis being away.  redis-py 8.2 checks the writer itself before the
    send; the read path and older releases still need this.
    """

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except AttributeError as e:
            raise RedisConnectionError(f"connection closed while sending ({e})") from e

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except AttributeError as e:
            raise RedisConnectionError(f"connection closed while reading ({e})") from e


class RedisService(Service):
    log = Logger()

    def __init__(self, config: RedisConfig, *, probe_interval_seconds: float = 1.0, partitions: int = 1) -> None:
        self.config = config
        self.keys = Keys(config.prefix, partitions=partitions)
        self.embedded: RedisServerProcess | None = None
        if config.url == "embedded" and not config.cluster_nodes:
            # Relative to the working directory: `make demo` keeps it in ./var/redis.
            # The port is chosen now so the client (and every part holding it) exists
            # before the server starts; connections are made lazily on first use.
            self.embedded = RedisServerProcess(data_dir=Path(config.data_dir).resolve(), port=free_port())
        self.client: Any
        if config.cluster_nodes:
            self.client = make_cluster_client(config.cluster_nodes, config.url, config.reconnect_max_delay_seconds,
                                              max_connections=config.max_connections)
        else:
            self.client = make_client(self.url, config.reconnect_max_delay_seconds,
                                      max_connections=config.max_connections)
        self.available = False
        # False while Redis answers PING but refuses writes (OOM, READONLY, MISCONF...):
        # /readyz says not ready then (issue 12: it said ready while outcomes were lost).
        self.writable = False
        self._probe = LoopingCall(self._check)
        self._probe_interval = probe_interval_seconds

    @property
    def url(self) -> str:
        return self.embedded.url if self.embedded else self.config.url

    def startService(self) -> None:
        if self.embedded is not None:
            # Blocking for the few milliseconds redis-server needs; runs once at start-up.
            self.embedded.start()
            self.log.info("embedded redis-server on 127.0.0.1:{port}, data in {dir}",
                          port=self.embedded.port, dir=str(self.embedded.data_dir))
        super().startService()
        self._probe.start(self._probe_interval, now=True)

    def _check(self) -> Deferred[None]:
        d = as_deferred(self._ping())
        d.addErrback(lambda f: self.log.failure("redis probe failed", f))
        return d

    async def _ping(self) -> None:
        try:
            await asyncio.wait_for(self.client.ping(), timeout=max(self._probe_interval, 0.5))
        except (TimeoutError, *REDIS_ERRORS) as e:
            if self.available:
                self.log.error("redis unreachable: {error}", error=type(e).__name__)
            self.available = False
            self.writable = False
        else:
            if not self.available:
                self.log.info("redis reachable")
            self.available = True
            await self._probe_write()
        metrics.redis_up.set(1 if self.available else 0)
        metrics.redis_writable.set(1 if self.writable else 0)

    async def _probe_write(self) -> None:
        """SET a short-lived key: a refused write (an error reply) makes `writable` False."""
        try:
            # PX: the key goes away by itself; 10 probe intervals, so it is never missed.
            await asyncio.wait_for(
                self.client.set(self.keys.prefix + "health:write-probe", "1",
                                px=int(max(self._probe_interval, 1.0) * 10_000)),
                timeout=max(self._probe_interval, 0.5))
        except (TimeoutError, *REDIS_ERRORS) as e:
            self.writable = False
            self.log.debug("redis write probe: {error}", error=type(e).__name__)
        except ResponseError as e:
            if self.writable:
                self.log.error("redis refuses writes: {error}", error=describe(e))
            self.writable = False
        else:
            if not self.writable:
                self.log.info("redis takes writes")
            self.writable = True

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._probe.running:
            self._probe.stop()
        return as_deferred(self._close())

    async def _close(self) -> None:
        try:
            await self.client.aclose()
        except REDIS_ERRORS:
            pass
        if self.embedded is not None:
            self.embedded.stop()
            self.log.info("embedded redis-server stopped")
