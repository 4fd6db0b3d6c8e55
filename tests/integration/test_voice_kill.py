"""A `gateway run` process SIGKILLed with a reminder call ringing: two processes on a real
Redis Cluster (3 masters, 3 replicas, 16 partitions), both logged in to the repo's AMI
server peer (tests/peers/ami_server.py, standing in for one Asterisk).  The call's lease
runs out, the other process takes it over, finds it by Status, follows it to its end and
reports it: one Originate, the notification delivered."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor

from gateway.store.bridge import wait_deferred
from gateway.store.keys import Keys
from tests.aio import on_asyncio
from tests.integration.daemon import Daemon, write_config
from tests.peers.ami_server import AmiServer, Outcome, default_user, listen
from tests.push.harness import connect

PARTITIONS = 16
KEYS = Keys(partitions=PARTITIONS)
NUMBER = "13912345000"
LEASE_SECONDS = 2.0  # ami.call_slot_lease_seconds: short, so the takeover comes soon


def gateway(directory: Path, name: str, nodes: list[str], ami_port: int) -> Daemon:
    path = write_config(
        directory / name,
        redis={"url": f"redis://{nodes[0]}", "cluster_nodes": nodes},
        push={"partitions": PARTITIONS, "consumer_name": name, "quiet_hours": {"start": "00:00", "end": "00:00"}},
        ami={"enabled": True, "host": "127.0.0.1", "port": ami_port, "secret": "s3cret",
             "call_slot_lease_seconds": LEASE_SECONDS},
        ivr={"fastagi": {"enabled": False}},
    )
    return Daemon(path, directory / f"{name}.log")


async def until(check: Any, seconds: float, what: str) -> Any:
    deadline = reactor.seconds() + seconds
    while reactor.seconds() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} not reached in {seconds} s")


@pytest.mark.slow
@on_asyncio
async def test_a_call_of_a_killed_process_is_taken_over_and_reported_once(redis_cluster_url: str,
                                                                         tmp_path: Path) -> None:
    server = AmiServer(users={"gateway12123": default_user("s3cret")}, clock=reactor)
    server.script(NUMBER, Outcome.ANSWER_HEARD, hold="ringing")
    port = listen(server, reactor)
    nodes = redis_cluster_url.removeprefix("cluster:").split(",")
    a = gateway(tmp_path, "gw-a", nodes, port.getHost().port)
    b = gateway(tmp_path, "gw-b", nodes, port.getHost().port)
    redis = connect(redis_cluster_url)
    try:
        a.start()
        await asyncio.to_thread(a.wait_until, "/healthz", 200, 60)
        status, body = await asyncio.to_thread(a.post, "/v1/notifications", {
            "id": "kill-1", "type": "verification_code", "to": NUMBER,
            "params": {"code": "123456", "minutes": "5"}, "channel": "voice"})
        assert status == 202, body
        await wait_deferred(server.wait_for_originates(1).addTimeout(60, reactor))
        call_key = KEYS.call("rem-kill-1-1")
        assert await redis.hget(call_key, "owner") == "gw-a"

        b.start()
        await asyncio.to_thread(b.wait_until, "/healthz", 200, 60)
        status_action = server.wait_for_action("Status")
        a.kill()  # SIGKILL with the call ringing

        await wait_deferred(status_action.addTimeout(60, reactor))  # b reconciles the call it took over

        async def taken() -> bool:
            return await redis.hget(call_key, "owner") == "gw-b"
        await until(taken, 30, "the takeover by gw-b")
        server.proceed(NUMBER)

        async def delivered() -> bool:
            state = await redis.hget(KEYS.notification("kill-1"), "state")
            return state == "delivered"
        await until(delivered, 30, "the notification delivered")
        assert len(server.originates_with("NOTIFICATION_ID", "kill-1")) == 1
        call = await redis.hgetall(call_key)
        assert (call["outcome"], call["reported"], call["owner"]) == ("heard", "1", "gw-b"), call
        assert await redis.zcard(KEYS.partition(KEYS.partition_of("kill-1")).voice_calls_open) == 0
        assert "taken over" in b.log_text() or "another process" in b.log_text()
    finally:
        for daemon in (a, b):
            await asyncio.to_thread(daemon.stop)
        await wait_deferred(port.stopListening())
        await redis.aclose()
