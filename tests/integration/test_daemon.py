"""The daemon as a real subprocess: start, health, SIGTERM, embedded Redis lifecycle."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis as sync_redis

from gateway.store.embedded import RedisServerProcess
from tests.integration.daemon import Daemon, write_config


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except OSError:
        return False


def wait_for_redis_check(daemon: Daemon, expected: bool, timeout_seconds: float = 30.0) -> dict:
    """Poll /readyz until its redis check says `expected`; returns the body."""
    deadline = time.monotonic() + timeout_seconds
    body: dict = {}
    while time.monotonic() < deadline:
        code, body = daemon.get("/readyz")
        if isinstance(body, dict) and body.get("checks", {}).get("redis") is expected:
            return body
        time.sleep(0.1)
    raise AssertionError(f"/readyz redis check never became {expected}: {body}")


def test_daemon_starts_answers_and_stops_cleanly_keeping_its_data(tmp_path: Path) -> None:
    """`gateway run` answers /healthz, exits 0 on SIGTERM within the drain timeout, stops its
    embedded redis-server, and finds the data again at the next start."""
    config = write_config(tmp_path)
    daemon = Daemon(config, tmp_path / "gateway.log")
    daemon.start()
    try:
        assert daemon.wait_until("/healthz") == {"status": "up"}
        ready = wait_for_redis_check(daemon, True)
        assert ready["ready"] is False and ready["checks"]["carrier_bound"] is False  # no carrier: not ready
        socket_path = tmp_path / "redis" / "redis.sock"
        client = sync_redis.Redis(unix_socket_path=str(socket_path))
        client.set("12123:test:kept", "yes")
        redis_pid = int((tmp_path / "redis" / "redis.pid").read_text())
        started = time.monotonic()
        assert daemon.terminate(timeout_seconds=30) == 0
        assert time.monotonic() - started < 5 + 2  # drain_timeout_seconds + margin
    finally:
        daemon.kill()
    assert not _pid_alive(redis_pid), "the embedded redis-server outlived the daemon"

    daemon.start()
    try:
        daemon.wait_until("/healthz")
        client = sync_redis.Redis(unix_socket_path=str(tmp_path / "redis" / "redis.sock"))
        assert client.get("12123:test:kept") == b"yes"
    finally:
        daemon.terminate()


def test_daemon_recovers_readiness_after_redis_restart(tmp_path: Path) -> None:
    """With an external Redis restarted under it, the daemon reports not ready, then ready."""
    server = RedisServerProcess(data_dir=tmp_path / "external")
    server.start()
    config = write_config(tmp_path, redis={"url": server.url})
    daemon = Daemon(config, tmp_path / "gateway.log")
    daemon.start()
    try:
        daemon.wait_until("/healthz")
        wait_for_redis_check(daemon, True)
        server.stop()
        wait_for_redis_check(daemon, False)
        server.start()
        wait_for_redis_check(daemon, True)
    finally:
        daemon.kill()
        server.stop()


@pytest.mark.parametrize("path", ["/v1/notifications", "/v1/notifications/x"])
def test_v1_without_token_is_refused(tmp_path: Path, path: str) -> None:
    """Every /v1 path answers 401 without a bearer token."""
    daemon = Daemon(write_config(tmp_path), tmp_path / "gateway.log")
    daemon.start()
    try:
        daemon.wait_until("/healthz")
        code, body = daemon.get(path)
        assert code == 401 and body["error"] == "unauthorized"
    finally:
        daemon.stop()


def test_embedded_redis_that_exits_at_start_says_why(tmp_path: Path) -> None:
    """redis-server refuses a Unix socket path over 107 bytes and exits; the error the
    daemon logs carries redis-server's own reason, not only where its log is."""
    deep = tmp_path / ("d" * (120 - len(str(tmp_path))))
    server = RedisServerProcess(data_dir=deep)
    with pytest.raises(RuntimeError) as info:
        server.start(timeout_seconds=10)
    message = str(info.value)
    assert message.startswith("redis-server exited with 1: ")
    assert "unix socket path too long" in message.lower()
    assert f"(see {deep / 'redis.log'})" in message
