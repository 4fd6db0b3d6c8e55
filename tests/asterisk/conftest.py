"""Fixtures of the real-Asterisk ring: one Asterisk 22 for the session, `gateway run` per module.

Skips, with the reason, where the prebuilt Asterisk, its Debian runtime libraries or (for
the SIP tests) SIPp are missing; .ci/run installs the packages when it runs as root.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from gateway.store.embedded import RedisServerProcess, free_port
from gateway.store.keys import Keys
from tests.asterisk.ring import (
    REPO,
    AmiDriver,
    AsteriskRing,
    can_give_asterisk_a_host_zone,
    find_tarball,
    missing_libraries,
    placeholder_prompts,
    unpack,
    zone_with_local_hour,
)
from tests.integration.daemon import Daemon, write_config

AMI_SECRET = "ring-gateway-secret-0123456789abcdef"
KEYS = Keys()
MENUS = REPO / "config" / "ivr.yaml"
# The Asterisk host's clock is put where the agents' hours (08:30-17:30) are the opposite of
# China time's now, so that a GotoIfTime without a time zone takes the wrong branch.
SERVICE_HOURS = range(9, 17)
OUTSIDE_HOURS = [h for h in range(24) if h not in range(8, 18)]


def _china_hour(now: float) -> int:
    return time.gmtime(now + 8 * 3600).tm_hour


@pytest.fixture(scope="session")
def asterisk_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tarball = find_tarball()
    if tarball is None:
        pytest.skip("the prebuilt Asterisk is not there (shared/tools/asterisk/"
                    "asterisk-22.10.1-pjsip-bookworm-amd64.tar.xz, or $GATEWAY_ASTERISK_TARBALL)")
    if shutil.which("ldd") is None:
        pytest.skip("ldd is not available to check Asterisk's runtime libraries")
    install = unpack(tarball, tmp_path_factory.mktemp("asterisk-install"))
    missing = missing_libraries(install)
    if missing:
        pytest.skip(f"Asterisk's runtime libraries are missing: {', '.join(missing)} (apt-get install -y "
                    "libedit2 libjansson4 libxml2 libxslt1.1 libsqlite3-0 libssl3 libuuid1)")
    return install


@pytest.fixture(scope="session")
def ring_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServerProcess]:
    """A redis-server of the ring's own (the suite's shared one is flushed per test)."""
    server = RedisServerProcess(data_dir=Path(tmp_path_factory.mktemp("ring-redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def asterisk(asterisk_install: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsteriskRing]:
    root = tmp_path_factory.mktemp("asterisk-root")
    sounds = root / "sounds"
    # espeak-ng and sox may be missing: every prompt the menus use is a silent placeholder
    # (Asterisk only needs the files to exist; the gateway checks what it asked for).
    placeholder_prompts(sounds, MENUS)
    now = time.time()
    inside = 8 <= _china_hour(now) < 18
    zone = zone_with_local_hour(OUTSIDE_HOURS if inside else SERVICE_HOURS, now) \
        if can_give_asterisk_a_host_zone() else None
    ring = AsteriskRing(install=asterisk_install, root=root / "asterisk", sounds_dir=sounds,
                        fastagi_port=free_port(), ami_secret=AMI_SECRET, host_zone=zone)
    ring.start()
    yield ring
    ring.stop()


@pytest.fixture(scope="session")
def driver(asterisk: AsteriskRing) -> Iterator[AmiDriver]:
    ami = AmiDriver(asterisk.ami_port)
    yield ami
    ami.close()


GatewayFactory = Callable[..., Daemon]


@pytest.fixture(scope="session")
def start_gateway(asterisk: AsteriskRing, ring_redis: RedisServerProcess,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFactory]:
    """Starts `gateway run` for the ring (one at a time: they share the FastAGI port the
    dialplan calls); every daemon started is stopped at the end of the session."""
    started: list[Daemon] = []

    def start(trunk: str, voice_drain_seconds: float = 40, redis: dict[str, Any] | None = None,
              partitions: int = 1, **ami: Any) -> Daemon:
        for daemon in started:
            daemon.stop()
        directory = tmp_path_factory.mktemp("gateway")
        path = write_config(
            directory,
            redis=redis or {"url": ring_redis.url},
            ivr={"fastagi": {"listen": f"127.0.0.1:{asterisk.fastagi_port}"}, "menus_file": str(MENUS),
                 "sounds_dir": str(asterisk.sounds_dir), "voice_drain_seconds": voice_drain_seconds},
            ami={"enabled": True, "host": "127.0.0.1", "port": asterisk.ami_port, "secret": "${ASTERISK_AMI_SECRET}",
                 "trunk": trunk, "originate_timeout_seconds": 4, **ami},
            # Reminder calls are held in quiet hours; the ring runs at any hour.
            push={"templates_file": str(REPO / "config" / "templates.yaml"),
                  "quiet_hours": {"start": "00:00", "end": "00:00"}, "partitions": partitions},
        )
        daemon = Daemon(path, directory / "gateway.log", env={"ASTERISK_AMI_SECRET": AMI_SECRET})
        daemon.start()
        started.append(daemon)
        daemon.wait_until("/healthz", timeout_seconds=60)
        wait_for(lambda: "gateway12123" in asterisk.cli("manager show connected"), 60, "the gateway's AMI login")
        seed(ring_redis.url)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def seed(url: str) -> Any:
    from redis.asyncio import Redis

    from gateway.domain import from_unix
    from gateway.domain.sample import load_sample

    async def load() -> Any:
        client = Redis.from_url(url, decode_responses=True)
        try:
            return await load_sample(client, KEYS, today=from_unix(time.time()).date())
        finally:
            await client.aclose()

    # The suite's asyncio reactor owns this thread's loop: load from a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, load()).result(60)


def redis_client(url: str) -> sync_redis.Redis:
    return sync_redis.Redis.from_url(url, decode_responses=True)


def wait_for(check: Callable[[], Any], timeout_seconds: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout_seconds} s")


def call_events(url: str, uniqueid: str) -> list[dict[str, str]]:
    client = redis_client(url)
    try:
        return [f for _, f in client.xrange(KEYS.events_stream)
                if f.get("type") == "ivr.call" and f.get("uniqueid") == uniqueid]
    finally:
        client.close()
