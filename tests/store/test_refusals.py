"""Redis refusing writes, with the replies a real redis-server gives (issue 12 item 1).

Each test pushes the session's redis-server into one refusal with CONFIG SET (and takes
it back out in `finally`): maxmemory below the data (OOM), min-replicas-to-write
without replicas (NOREPLICAS), REPLICAOF a port nobody listens on (READONLY).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import redis as sync_redis
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger, LogLevel, globalLogPublisher

from gateway.ports import DeliveryReceipt, SubmitAccepted
from gateway.store.bridge import wait_deferred
from gateway.store.embedded import free_port
from gateway.store.refusals import RefusalLog, is_unavailable, is_write_refusal, refusal_code
from tests.aio import on_asyncio
from tests.push.harness import code, pipeline


@contextmanager
def refusing(redis_url: str, *settings: tuple[str, str]) -> Iterator[None]:
    """CONFIG SET `settings` for the block, then restore the previous values."""
    admin = sync_redis.Redis.from_url(redis_url)
    before = {name: admin.config_get(name)[name] for name, _ in settings}
    try:
        for name, value in settings:
            admin.config_set(name, value)
        yield
    finally:
        for name, value in before.items():
            admin.config_set(name, value)
        admin.close()


@asynccontextmanager
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        await redis.set("filler", "x" * 10_000)
        yield redis
    finally:
        await redis.aclose()


async def refused(call: Any) -> BaseException:
    with pytest.raises(ResponseError) as caught:
        await call
    return caught.value


OOM = (("maxmemory-policy", "noeviction"), ("maxmemory", "1"))


@on_asyncio
async def test_oom_replies_are_refusals_also_inside_a_script(redis_url: str) -> None:
    """Under maxmemory/noeviction a SET and a script's first write are refused as OOM
    (Redis 6.2 wraps the script's reply), while reads still answer."""
    async with client(redis_url) as redis:
        with refusing(redis_url, *OOM):
            plain = await refused(redis.set("k", "v"))
            scripted = await refused(redis.eval("return redis.call('SET', KEYS[1], 'v')", 1, "k"))
            assert await redis.get("filler") is not None
    assert refusal_code(plain) == "OOM" and refusal_code(scripted) == "OOM", (plain, scripted)
    assert is_unavailable(plain) and is_unavailable(scripted)


@on_asyncio
async def test_noreplicas_and_readonly_and_noscript_are_refusals(redis_url: str) -> None:
    """NOREPLICAS (min-replicas-to-write), READONLY (a replica) and NOSCRIPT replies."""
    async with client(redis_url) as redis:
        with refusing(redis_url, ("min-replicas-to-write", "1"), ("min-replicas-max-lag", "10")):
            noreplicas = await refused(redis.set("k", "v"))
        nosha = await refused(redis.evalsha("0" * 40, 0))
        await redis.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        try:
            readonly = await refused(redis.set("k", "v"))
        finally:
            await redis.execute_command("REPLICAOF", "NO", "ONE")
    assert [refusal_code(e) for e in (noreplicas, readonly, nosha)] == ["NOREPLICAS", "READONLY", "NOSCRIPT"]


@on_asyncio
async def test_a_blocked_read_whose_stream_goes_away_is_a_pass_not_a_bug(redis_url: str) -> None:
    """XREADGROUP BLOCK on a stream that is deleted while it waits (as MIGRATE deletes a
    moving slot's keys on the source node) answers UNBLOCKED: the intake loop backs off
    and reads again, instead of logging a critical error for a routine resharding."""
    import asyncio

    reader = Redis.from_url(redis_url, decode_responses=True)
    other = Redis.from_url(redis_url, decode_responses=True)
    try:
        await reader.xgroup_create("s-unblocked", "g", id="$", mkstream=True)
        blocked = asyncio.ensure_future(reader.xreadgroup("g", "c", {"s-unblocked": ">"}, count=1, block=10_000))
        for _ in range(100):  # until the read is blocked in the server
            if (await other.info("clients")).get("blocked_clients") == 1:
                break
            await asyncio.sleep(0.02)
        await other.delete("s-unblocked")
        with pytest.raises(ResponseError) as unblocked:
            await asyncio.wait_for(blocked, 5)
        assert str(unblocked.value).startswith("UNBLOCKED"), unblocked.value
        assert refusal_code(unblocked.value) == "UNBLOCKED" and is_unavailable(unblocked.value)
    finally:
        await reader.aclose()
        await other.aclose()


@on_asyncio
async def test_a_script_bug_is_not_a_refusal(redis_url: str) -> None:
    """A wrong type or a Lua error is a bug, not "try again later"."""
    async with client(redis_url) as redis:
        wrongtype = await refused(redis.lpush("filler", "x"))
        lua = await refused(redis.eval("return redis.call('NOSUCHCOMMAND')", 0))
    assert not is_write_refusal(wrongtype) and not is_write_refusal(lua)
    assert not is_unavailable(wrongtype) and not is_unavailable(lua)


def test_refusal_log_says_it_once_per_interval_with_counts() -> None:
    """A thousand refusals in 12 s give three error lines with their counts, and one
    line when writes pass again."""
    clock, seen = Clock(), []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "test.refusals":
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        refusals = RefusalLog("writer", clock, Logger(namespace="test.refusals"))
        for _ in range(1000):
            refusals.failed(ResponseError("OOM command not allowed when used memory > 'maxmemory'."), 10)
            clock.advance(0.012)
        refusals.succeeded()
    finally:
        globalLogPublisher.removeObserver(observe)
    errors = [e for e in seen if e["log_level"] == LogLevel.error]
    assert len(errors) == 3
    assert errors[1]["attempts"] == 417 and errors[1]["errors"] == "OOM x417"  # 5 s / 12 ms
    assert [e["log_level"] for e in seen[3:]] == [LogLevel.info]


@on_asyncio
async def test_outcomes_redis_refuses_are_kept_until_it_takes_them(redis_url: str) -> None:
    """A submit accepted by the carrier while Redis refuses writes (OOM) keeps its outcome
    in the writer (the notification stays submitting, nothing forgotten) and is recorded
    once Redis takes writes again; a receipt refused meanwhile fails its Deferred, so the
    link answers ESME_RX_T_APPN and the SMSC delivers it again."""
    async with pipeline(redis_url) as p:
        p.links[0].script.append("hold")
        await p.accept(code("kept"))
        await p.dispatcher.dispatch_once()
        await wait_deferred(p.links[0].when_held())
        sms, held = p.links[0].held.pop()
        with refusing(redis_url, *OOM):
            held.callback(SubmitAccepted("cmcc", ("CMCC00000001",)))
            deadline = reactor.seconds() + 10
            while not p.writer.failing and reactor.seconds() < deadline:
                await wait_deferred(deferLater(reactor, 0.05))
            assert p.writer.failing and p.writer.pending == 1
            receipt = p.receipts.record_receipt(DeliveryReceipt("cmcc", "CMCC00000001", "DELIVRD", "000"))
            receipt_error = await wait_deferred(receipt.addCallbacks(lambda _: None, lambda f: f.value))
            assert receipt_error is not None and is_write_refusal(receipt_error)
            assert await p.state("kept") == "submitting"
        await p.writer.flushed()
        assert not p.writer.failing
        raw = await p.ledger.raw("kept")
        assert raw["state"] == "submitted" and raw["message_ids"].lower() == "cmcc00000001"
        assert sms.reference == "kept"


@pytest.mark.parametrize("reply", [
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "NOREPLICAS Not enough good replicas to write.",
    "Error running script (call to f_0123): @user_script:7: @user_script: 7: -MISCONF Errors writing to the AOF file",
    "READONLY You can't write against a read only replica. script: 0123, on @user_script:9.",
])
def test_replies_that_cannot_be_provoked_cheaply_are_refusals(reply: str) -> None:
    """MISCONF and BUSY as Redis 6.2 and 7 word them, bare or inside a script's error."""
    assert is_write_refusal(ResponseError(reply)), reply


@on_asyncio
async def test_an_mo_redis_refuses_is_not_acknowledged(redis_url: str) -> None:
    """Checkpoint, then acknowledge: an MO whose XADD Redis refuses (OOM) fails its
    Deferred, so the link answers ESME_RX_T_APPN and the SMSC delivers it again; once
    Redis takes writes, the same MO is recorded."""
    from gateway.ports import MobileOriginated
    from gateway.privacy import PhoneNumber
    from gateway.push.mo import MoRecorder
    from gateway.store.keys import Keys

    async with client(redis_url) as redis:
        recorder = MoRecorder(redis, Keys(), lambda: 1_796_000_000.0)
        message = MobileOriginated("cmcc", PhoneNumber("13800138000"), "12123", "CX")
        with refusing(redis_url, *OOM):
            outcome = await wait_deferred(recorder.record_mo(message).addCallbacks(lambda _: None, lambda f: f.value))
        assert outcome is not None and refusal_code(outcome) == "OOM", outcome
        assert await redis.xlen(Keys().mo_stream) == 0
        await wait_deferred(recorder.record_mo(message))
        assert await redis.xlen(Keys().mo_stream) == 1
