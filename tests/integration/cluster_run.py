"""Several `gateway run` processes on a real Redis Cluster with the carrier simulator.

`ClusterRun` owns a LocalRedisCluster (3 masters, 3 replicas), the carrier simulator in
its own process (tests/fleet/fleet_run.py, bench/run_simulator.py) and any number of
daemons configured with ``redis.cluster_nodes`` and ``push.partitions``.  Notifications go to their partitions' intake streams (as HTTP
and the CLI write them); the count is taken as tests/integration/faults.py takes it: a
notification is lost when it has no final state with its reason (or no copy at the
carrier for delivered), duplicated when the carrier got it more than once, and a
duplicate is explained when the ledger counted as many possible duplicates.
Used by tests/integration/test_cluster.py and bench/cluster.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from gateway.push.state import FINAL_STATES
from gateway.store.embedded import free_port
from gateway.store.keys import Keys
from gateway.store.local_cluster import LocalRedisCluster
from gateway.store.service import make_cluster_client
from tests.fleet.fleet_run import SimulatorProcess, start_simulator
from tests.integration.daemon import Daemon, write_config
from tests.integration.faults import (
    CARRIER_DEFAULTS,
    CMCC_PREFIXES,
    PUSH_DEFAULTS,
    REASON_FIELD,
    Notification,
)

# 16 partitions over 3 masters: 5 or 6 each, so a master's loss or a slot's move touches
# a few partitions, as it would in production.
PARTITIONS = 16
# The carrier simulator must get the CPU before the gateways and redis-servers.  A
# carrier meters submits as they arrive on its own hardware; here it shares two cores
# with 3 gateways and 6 redis-servers, and whenever it got no CPU for some tens of ms it
# read the submits that had queued in its sockets all at once and counted them in one
# 1 s window (618 at an account TPS of 450, after a window of 191).  So it runs in its
# own process, raised as root (nice -10), and the peers keep the normal priority:
# putting the peers at nice 19 instead starved them whenever anything else loaded the
# machine (the suite under two busy loops: no /readyz in 60 s).  It used to run on this
# process's reactor, raised as one thread: the harness's own threads (the slot
# migration, the state reads) held the GIL at normal priority, and under two busy loops
# the simulator waited on them (483 in the window after one of 419, at the slot
# migration, in 1 of 3 runs).  Without root only the peers can go lower.  Niceness
# only shares the CPU differently; what the gateways send and when is theirs.
PRIVILEGED = os.geteuid() == 0
SYSTEM_ID, PASSWORD = "gwcmcc", "cmcc-pw"
SIMULATOR_NICENESS = -10
PEERS_NICENESS = 0 if PRIVILEGED else 19


@dataclass
class ClusterTally:
    accepted: int = 0
    final: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    possible_duplicates: int = 0
    unexplained_duplicates: int = 0
    states: dict[str, int] = field(default_factory=dict)
    lost_examples: list[str] = field(default_factory=list)
    elapsed_seconds: float = 0.0

    def line(self) -> str:
        return (f"accepted {self.accepted}, final {self.final}, delivered {self.delivered}, lost {self.lost}, "
                f"duplicated {self.duplicated} (possible duplicates counted {self.possible_duplicates}, "
                f"unexplained {self.unexplained_duplicates}), states {self.states}, "
                f"{self.elapsed_seconds:.1f} s; e.g. {self.lost_examples}")


class ClusterRun:
    """A cluster, a simulator and `gateways` daemons; `async with` stops them all."""

    def __init__(self, directory: Path, *, gateways: int = 3, partitions: int = PARTITIONS,
                 simulator_args: Sequence[str] = (), carrier: dict[str, Any] | None = None,
                 push: dict[str, Any] | None = None, replicas_per_master: int = 1, masters: int = 3) -> None:
        self.directory = directory
        self.gateways = gateways
        self.keys = Keys(partitions=partitions)
        self.simulator_args = list(simulator_args)  # bench/run_simulator.py flags (receipts after 0.2 s)
        self.carrier = {**CARRIER_DEFAULTS, **(carrier or {})}
        self.push = {**PUSH_DEFAULTS, "partitions": partitions, **(push or {})}
        self.cluster = LocalRedisCluster(directory / "cluster", niceness=PEERS_NICENESS,
                                         replicas_per_master=replicas_per_master, masters=masters)
        self.simulator: SimulatorProcess | None = None
        self.daemons: list[Daemon] = []
        self.client: Any = None
        self._blocking_client: Any = None  # redis.cluster.RedisCluster, for reads in a thread
        self.sigkills = 0

    async def __aenter__(self) -> ClusterRun:
        try:
            return await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)  # nothing left running after a failed start
            raise

    async def _start(self) -> ClusterRun:
        self.directory.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.cluster.start)
        self.simulator = await self.start_simulator()
        self.client = make_cluster_client(self.cluster.startup_nodes, "")
        for k in range(self.gateways):
            self.daemons.append(self._daemon(k))
        await asyncio.gather(*(self.start_gateway(d) for d in self.daemons))
        return self

    async def start_simulator(self) -> SimulatorProcess:
        """The carrier simulator in its own process, raised as root (`SIMULATOR_NICENESS`)."""
        return await asyncio.to_thread(
            start_simulator, self.directory / "carrier", *self.simulator_args, system_id=SYSTEM_ID,
            password=PASSWORD, record_texts=True, niceness=SIMULATOR_NICENESS if PRIVILEGED else None)

    async def carrier_messages(self) -> int:
        """Distinct whole messages the carrier has received (its stats port)."""
        assert self.simulator is not None
        stats = await asyncio.to_thread(self.simulator.stats)
        return int(stats["distinct_messages"])

    async def __aexit__(self, *exc: Any) -> None:
        # Each step in its own try: whatever fails (a daemon that will not stop, a client
        # that raises on close after a failover), the redis-servers are stopped last.
        try:
            for daemon in self.live_daemons():
                await asyncio.to_thread(daemon.stop, 30.0)
            if self.client is not None:
                try:
                    await self.client.aclose()
                except (RedisError, OSError):
                    pass
            if self._blocking_client is not None:
                self._blocking_client.close()
            if self.simulator is not None:
                await asyncio.to_thread(self.simulator.stop)
        finally:
            await asyncio.to_thread(self.cluster.stop)

    def live_daemons(self) -> list[Daemon]:
        return [d for d in self.daemons if d.process is not None and d.process.poll() is None]

    async def answers(self, daemon: Daemon) -> bool:
        """/healthz answers 200 (the reactor runs); if not, its threads are printed."""
        assert daemon.process is not None
        try:
            code, _ = await asyncio.to_thread(daemon.get, "/healthz")
        except OSError as e:
            code = str(e)
        if code != 200:
            print(f"gateway {daemon.log_path}: /healthz {code}; its threads:\n{py_spy_dump(daemon.process.pid)}")
        return code == 200

    async def stop_gateway(self, daemon: Daemon, timeout_seconds: float = 30.0) -> int | None:
        """SIGTERM and wait: the exit code, or None (with a py-spy dump of its threads on
        stdout) when it did not exit within `timeout_seconds` (then it is SIGKILLed)."""
        assert daemon.process is not None
        try:
            return await asyncio.to_thread(daemon.terminate, timeout_seconds)
        except subprocess.TimeoutExpired:
            print(f"gateway {daemon.log_path} ignored SIGTERM; its threads:\n{py_spy_dump(daemon.process.pid)}")
            daemon.kill()
            return None

    def _daemon(self, k: int) -> Daemon:
        assert self.simulator is not None
        first = self.cluster.startup_nodes[0]
        carrier = {"name": "cmcc", "host": "127.0.0.1", "port": self.simulator.smpp_port,
                   "system_id": SYSTEM_ID, "password": PASSWORD, "prefixes": list(CMCC_PREFIXES), **self.carrier}
        directory = self.directory / f"gateway{k}"
        path = write_config(directory, redis={"url": f"redis://{first}/0", "cluster_nodes": self.cluster.startup_nodes},
                            carriers=[carrier], push={**self.push, "consumer_name": f"gateway{k}"},
                            ivr={"fastagi": {"enabled": False, "listen": f"127.0.0.1:{free_port()}"}})
        return Daemon(path, directory / "gateway.log", extra_args=["--log-format", "json"],
                      niceness=PEERS_NICENESS)

    async def start_gateway(self, daemon: Daemon, timeout_seconds: float = 60.0) -> None:
        """Start one daemon and wait for /readyz (its binds come up on their own).

        Process starts, kills and waits run in a thread here and below, so that the
        test's own reactor goes on (its timers, the milestones)."""
        await asyncio.to_thread(daemon.start)
        await asyncio.to_thread(daemon.wait_until, "/readyz", 200, timeout_seconds)

    async def add_gateway(self) -> Daemon:
        """Start one more daemon while the others run (it takes a share without any
        restart: every process claims from every partition)."""
        daemon = self._daemon(len(self.daemons))
        self.daemons.append(daemon)
        await self.start_gateway(daemon)
        return daemon

    async def accepted_submits(self, daemon: Daemon) -> int:
        """submit_sm answered ESME_ROK to this daemon (its /metrics)."""
        _, text = await asyncio.to_thread(daemon.get, "/metrics")
        total = 0.0
        for line in str(text).splitlines():
            if line.startswith("gateway12123_smpp_submit_responses_total{") and 'status="ESME_ROK"' in line:
                total += float(line.rsplit(" ", 1)[1])
        if not total:
            print("metrics of the daemon:", [ln for ln in str(text).splitlines() if "submit_responses" in ln][:5])
        return int(total)

    async def kill_gateway(self, index: int) -> None:
        """SIGKILL one daemon (no drain); it stays down: the others take over its work."""
        await asyncio.to_thread(self.daemons[index].kill)
        self.sigkills += 1

    async def restart_gateway(self, index: int) -> None:
        """Start a SIGKILLed daemon again with its config (its consumer name): it takes back
        a share without any restart of the others."""
        await self.start_gateway(self.daemons[index])

    # -- work --------------------------------------------------------------------------

    async def enqueue(self, notifications: Sequence[Notification], batch: int = 1000) -> None:
        """XADD each notification to its partition's intake stream, `batch` per pipeline
        (in a thread, off the reactor: the gateways start sending meanwhile)."""
        await asyncio.to_thread(self._enqueue_blocking, list(notifications), batch)

    def _enqueue_blocking(self, notifications: list[Notification], batch: int) -> None:
        client = self._blocking()
        for start in range(0, len(notifications), batch):
            pipe = client.pipeline()
            for n in notifications[start:start + batch]:
                pipe.xadd(self.keys.partition(self.keys.partition_of(n.id)).notify_stream, n.stream_fields())
            pipe.execute()

    async def states(self, ids: Sequence[str], fields: Sequence[str] = ("state",)) -> list[list[str | None]]:
        """The records' `fields`, read in a thread with a blocking client (20,000 replies
        parsed on the reactor would stall it for a good part of a second)."""
        return await asyncio.to_thread(self._states_blocking, list(ids), list(fields))

    def _blocking(self) -> Any:
        """A blocking RedisCluster client, for the harness's threads."""
        if self._blocking_client is None:
            from redis.cluster import ClusterNode, RedisCluster

            self._blocking_client = RedisCluster(
                startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in self.cluster.running()],
                decode_responses=True, socket_timeout=10.0, socket_connect_timeout=2.0)
        return self._blocking_client

    def _states_blocking(self, ids: list[str], fields: list[str]) -> list[list[str | None]]:
        rows: list[list[str | None]] = []
        for start in range(0, len(ids), 2000):
            pipe = self._blocking().pipeline()
            for i in ids[start:start + 2000]:
                pipe.hmget(self.keys.notification(i), fields)
            rows.extend(pipe.execute())
        return rows

    async def wait_settled(self, notifications: Sequence[Notification], *, timeout_seconds: float,
                           milestones: Sequence[tuple[float, Callable[[], Awaitable[Any]]]] = ()) -> None:
        """Until every notification is final (or the timeout); milestones run once that
        fraction has reached the carrier whole.

        Progress is read from the simulator's stats port (no Redis call); the records are
        read only once the carrier has nearly all messages, and every 10 s before that
        (to see a run that loses some): reading 20,000 records each second takes a good
        part of a core on a machine the gateways and the carrier share."""
        assert self.simulator is not None
        pending = [n.id for n in notifications]
        total = len(pending)
        todo = sorted(milestones, key=lambda m: m[0])
        deadline = time.monotonic() + timeout_seconds
        last_read = time.monotonic()
        while time.monotonic() < deadline:
            at_carrier = await self.carrier_messages() / total
            while todo and todo[0][0] <= at_carrier:
                _, action = todo.pop(0)
                await action()
            if at_carrier < 0.99 and time.monotonic() - last_read < 10.0:
                await asyncio.sleep(0.5)
                continue
            last_read = time.monotonic()
            try:
                rows = await self.states(pending)
            except (RedisError, RedisClusterException, OSError):
                await asyncio.sleep(0.5)  # a failover under way
                continue
            states = {i: row[0] for i, row in zip(pending, rows, strict=True)}
            pending = [i for i, s in states.items() if s not in FINAL_STATES]
            progress = (total - len(pending)) / total
            while todo and todo[0][0] <= progress:
                _, action = todo.pop(0)
                await action()
            if not pending and not todo:
                return
            await asyncio.sleep(1.0)

    async def tally(self, notifications: Sequence[Notification]) -> ClusterTally:
        assert self.simulator is not None
        result = ClusterTally(accepted=len(notifications))
        rows = await self.states([n.id for n in notifications],
                                 ("state", "error", "reason", "expires_at", "possible_duplicates"))
        at_carrier = await asyncio.to_thread(self.simulator.copies)
        for n, (state, error, reason, expires_at, duplicates) in zip(notifications, rows, strict=True):
            result.states[state or "none"] = result.states.get(state or "none", 0) + 1
            copies = at_carrier.get((n.to, n.text), 0)
            counted = int(duplicates or 0)
            result.possible_duplicates += counted
            result.duplicated += max(0, copies - 1)
            result.unexplained_duplicates += max(0, copies - 1 - counted)
            lost = ""
            if state is None:
                lost = "no state"
            elif state == "delivered":
                lost = "" if copies else "delivered but never received"
                result.delivered += 1 if copies else 0
            elif state in REASON_FIELD and not (error if REASON_FIELD[state] == "error" else reason):
                lost = f"{state} without a reason"
            elif state == "expired" and not expires_at:
                lost = "expired without expires_at"
            elif state not in FINAL_STATES:
                lost = f"still {state}"
            if state in FINAL_STATES:
                result.final += 1
            if lost:
                result.lost += 1
                if len(result.lost_examples) < 5:
                    result.lost_examples.append(f"{n.id}: {lost}")
        return result

    async def leftovers(self) -> dict[str, int]:
        """Work half done in Redis, over every partition (all 0 once settled)."""
        out = {"inflight": 0, "queued": 0, "scheduled": 0, "stream_entries": 0}
        async with self.client.pipeline(transaction=False) as pipe:
            for part in self.keys.all_partitions:
                pipe.zcard(part.inflight)
                for lane in ("high", "normal", "bulk"):
                    pipe.zcard(part.lane(lane))
                pipe.zcard(part.scheduled)
                pipe.xlen(part.notify_stream)
            counts = await pipe.execute()
        for k in range(0, len(counts), 6):
            out["inflight"] += counts[k]
            out["queued"] += sum(counts[k + 1:k + 4])
            out["scheduled"] += counts[k + 4]
            out["stream_entries"] += counts[k + 5]
        return out


def py_spy_dump(pid: int) -> str:
    """The Python stacks of a running process (py-spy, from the dev extra), for a report."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    try:
        done = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(no py-spy dump: {e})"
    return done.stdout + done.stderr
