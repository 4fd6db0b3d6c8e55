"""Intake against a real redis-server: the stream door, idempotency, rejections, caps,
quiet hours and expiry at acceptance, XAUTOCLAIM of a crashed consumer's entries, and
the CLI's enqueue/status."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.client import NEVER_DECODE

from gateway.push.intake import IntakeConsumer, enqueue, status
from tests.aio import on_asyncio
from tests.push.harness import CMCC_NUMBER, MORNING, POLICY, code, inspection, pipeline


def consumer(p, name: str = "gw-1", **kw) -> IntakeConsumer:  # type: ignore[no-untyped-def]
    return IntakeConsumer(p.intake, p.redis, p.keys, group="gateway", consumer=name, **kw)


def stream_fields(request: dict) -> dict[str, str]:  # type: ignore[type-arg]
    out = {k: v for k, v in request.items() if k != "params"}
    out["params"] = json.dumps(request["params"], ensure_ascii=False)
    return out


@on_asyncio
async def test_stream_entry_is_accepted_queued_and_acked(redis_url: str) -> None:
    """An XADDed request becomes a queued notification in its lane; the entry is acked."""
    async with pipeline(redis_url) as p:
        c = consumer(p)
        await c.ensure_group()
        await p.redis.xadd(p.keys.notify_stream, stream_fields(code("otp-1")))
        assert await c.read_once() == 1
        raw = await p.ledger.raw("otp-1")
        assert raw["state"] == "queued" and raw["to"] == CMCC_NUMBER
        # derivable and default fields are not stored (each argument costs Redis CPU)
        assert "to_masked" not in raw and "attempts" not in raw and "quiet_hours" not in raw
        assert raw["text"].startswith("【交管12123】您的验证码为123456")
        assert await p.redis.zscore(p.keys.lane("high"), "otp-1") is not None
        pending = await p.redis.xpending(p.keys.notify_stream, "gateway")
        assert pending["pending"] == 0
        assert await p.redis.xlen(p.keys.notify_stream) == 0
        [event] = await p.events("otp-1")
        assert event["type"] == "notification.queued" and event["notification_type"] == "verification_code"
        assert CMCC_NUMBER not in json.dumps(event)


@on_asyncio
async def test_same_id_twice_is_one_notification(redis_url: str) -> None:
    """The same id through the stream and then HTTP/CLI acceptance is recorded once."""
    async with pipeline(redis_url) as p:
        c = consumer(p)
        await c.ensure_group()
        await p.redis.xadd(p.keys.notify_stream, stream_fields(code("dup")))
        await p.redis.xadd(p.keys.notify_stream, stream_fields(code("dup")))
        await c.read_once()
        [again] = await p.accept(code("dup"))
        assert again.duplicate and again.state == "queued"
        assert await p.redis.zcard(p.keys.lane("high")) == 1
        assert [e["type"] for e in await p.events("dup")] == ["notification.queued"]
        assert (await p.redis.xpending(p.keys.notify_stream, "gateway"))["pending"] == 0
        assert await p.dispatch_all() == 1
        assert len(p.links[0].submitted) == 1


@on_asyncio
async def test_batch_larger_than_one_redis_call_is_accepted_whole_and_in_order(redis_url: str) -> None:
    """2,500 requests in one accept: the script sends its lane adds and its duplicate
    check in chunks (1,000 / 2,000 per call), and every request is queued once, in order;
    the same batch again, with one new id last, is answered as 2,500 duplicates and 1 new."""
    async with pipeline(redis_url) as p:
        batch = [code(f"big-{i:04d}", to=f"139{i:08d}") for i in range(2500)]
        outcomes = await p.accept(*batch)
        assert [o.state for o in outcomes] == ["queued"] * 2500
        assert await p.redis.zrange(p.keys.lane("high"), 0, -1) == [f"big-{i:04d}" for i in range(2500)]
        again = await p.accept(*batch, code("big-new"))
        assert [o.duplicate for o in again] == [True] * 2500 + [False]
        assert await p.redis.zcard(p.keys.lane("high")) == 2501


@on_asyncio
async def test_rejections_are_recorded_with_reason_and_dead_lettered(redis_url: str) -> None:
    """A bad request becomes state rejected with its reason, listed in the dead letters."""
    async with pipeline(redis_url) as p:
        outcomes = await p.accept(
            {"id": "r1", "type": "nope", "to": CMCC_NUMBER, "params": {}},
            code("r2", to="12345"),
            {**code("r3"), "params": {"code": "1"}},
            code("r4", priority="urgent"),
            code("r5", channel="pigeon"),
            {**code("r6"), "params": "{oops"},
        )
        reasons = {o.id: o.reason for o in outcomes}
        assert all(o.state == "rejected" for o in outcomes)
        assert reasons["r1"] == "unknown type 'nope'"
        assert reasons["r2"].startswith("not a Chinese mobile number")
        assert reasons["r3"] == "missing parameter 'minutes'"
        assert reasons["r4"].startswith("bad priority 'urgent'")
        assert reasons["r5"].startswith("bad channel 'pigeon'")
        assert reasons["r6"] == "malformed params JSON"
        assert set(await p.redis.zrange(p.keys.dead_letters, 0, -1)) == set(reasons)
        view = await status(p.redis, p.keys, "r3")
        assert view is not None and view["state"] == "rejected" and view["reason"] == "missing parameter 'minutes'"
        assert view["to"] == "138****8000"


@on_asyncio
async def test_rejected_id_may_be_corrected(redis_url: str) -> None:
    """A corrected request under a rejected id replaces the rejection and leaves the dead letters."""
    async with pipeline(redis_url) as p:
        await p.accept({**code("fix"), "params": {}})
        [outcome] = await p.accept(code("fix"))
        assert outcome.state == "queued" and not outcome.duplicate
        assert await p.redis.zscore(p.keys.dead_letters, "fix") is None


@on_asyncio
async def test_daily_cap_rejects_bulk_reminders_over_the_cap(redis_url: str) -> None:
    """Bulk reminders to one number beyond daily_cap_bulk are rejected with "daily cap"."""
    async with pipeline(redis_url, daily_cap_bulk=2) as p:
        outcomes = await p.accept(*(inspection(f"b{i}") for i in range(3)), code("hi"))
        assert [o.state for o in outcomes] == ["queued", "queued", "rejected", "queued"]
        assert outcomes[2].reason.startswith("daily cap")
        # Another number has its own count; the next local day starts again.
        [other] = await p.accept(inspection("b-other", to="13912345678"))
        assert other.state == "queued"
        p.clock.advance(86_400)
        [tomorrow] = await p.accept(inspection("b-tomorrow"))
        assert tomorrow.state == "queued"


@on_asyncio
async def test_quiet_hours_schedule_reminders_but_not_codes(redis_url: str) -> None:
    """At 23:00 a reminder is scheduled for 08:00 while a verification code is queued."""
    night = MORNING + 13 * 3600  # 23:00
    async with pipeline(redis_url, now=night) as p:
        reminder, otp = await p.accept(inspection("q1"), code("q2"))
        assert (reminder.state, otp.state) == ("scheduled", "queued")
        due = await p.redis.zscore(p.keys.scheduled, "q1")
        assert due == POLICY.quiet_until(night) == MORNING + 22 * 3600
        assert await p.ledger.promote_due(now=night + 3600) == 0
        assert await p.ledger.promote_due(now=due) == 1
        assert await p.state("q1") == "queued"


@on_asyncio
async def test_past_expiry_is_expired_at_intake(redis_url: str) -> None:
    """A request whose expires_at has passed is recorded as expired and never queued."""
    async with pipeline(redis_url) as p:
        [outcome] = await p.accept(code("old", expires_at=str(MORNING - 1)))
        assert outcome.state == "expired"
        assert await p.redis.zcard(p.keys.lane("high")) == 0


@on_asyncio
async def test_crashed_consumers_entries_are_claimed_and_finished(redis_url: str) -> None:
    """Entries read but never acked by a dead consumer are XAUTOCLAIMed and accepted."""
    async with pipeline(redis_url) as p:
        dead = consumer(p, "gw-dead")
        await dead.ensure_group()
        await p.redis.xadd(p.keys.notify_stream, stream_fields(code("orphan")))
        # The dead consumer read it (pending) and crashed before accepting.
        await p.redis.xreadgroup("gateway", "gw-dead", {p.keys.notify_stream: ">"}, count=10)
        assert await p.state("orphan") == ""
        alive = consumer(p, "gw-alive", claim_idle_seconds=0)
        assert await alive.claim_stale_once() == 1
        assert await p.state("orphan") == "queued"
        assert (await p.redis.xpending(p.keys.notify_stream, "gateway"))["pending"] == 0


@on_asyncio
async def test_own_pending_entries_are_finished_after_restart(redis_url: str) -> None:
    """A consumer restarted under its name finishes the entries it had read."""
    async with pipeline(redis_url) as p:
        c = consumer(p)
        await c.ensure_group()
        await p.redis.xadd(p.keys.notify_stream, stream_fields(code("mine")))
        await p.redis.xreadgroup("gateway", "gw-1", {p.keys.notify_stream: ">"}, count=10)
        assert await c.read_own_pending_once() == 1
        assert await p.state("mine") == "queued"


@on_asyncio
async def test_entry_without_id_gets_a_stable_id(redis_url: str) -> None:
    """An entry without an id is named after its stream entry, so a re-read is no duplicate send."""
    async with pipeline(redis_url) as p:
        c = consumer(p)
        await c.ensure_group()
        fields = stream_fields(code("x"))
        del fields["id"]
        entry = await p.redis.xadd(p.keys.notify_stream, fields)
        await c.read_once()
        assert await p.state(f"stream-{entry}") == "queued"


@on_asyncio
async def test_enqueue_and_status_via_the_stream(redis_url: str) -> None:
    """The CLI's enqueue writes to the stream; after the intake reads it, status shows it."""
    async with pipeline(redis_url) as p:
        c = consumer(p)
        await c.ensure_group()
        notification_id = await enqueue(p.redis, p.keys, type="verification_code", to="+8613800138000",
                                        params={"code": "1", "minutes": "5"}, priority="high", id="cli-1")
        assert notification_id == "cli-1"
        assert await status(p.redis, p.keys, "cli-1") is None
        await c.read_once()
        view = await status(p.redis, p.keys, "cli-1")
        assert view is not None
        assert view["state"] == "queued" and view["to"] == "138****8000" and view["source"] == "cli"
        assert view["attempts"] == 0  # not stored before the first claim, shown as 0
        assert "text" not in view and "params" not in view


@on_asyncio
async def test_voice_channel_goes_to_the_voice_stream(redis_url: str) -> None:
    """channel voice is handed to keys.voice_requests with the text minus the signature."""
    async with pipeline(redis_url) as p:
        [outcome] = await p.accept(code("v1", channel="voice"))
        assert outcome.state == "submitted"
        [(_, request)] = await p.redis.xrange(p.keys.voice_requests)
        assert request["id"] == "v1" and request["to"] == CMCC_NUMBER
        assert request["text"].startswith("您的验证码为123456") and request["not_before"] == "0"



@on_asyncio
async def test_stream_entries_with_non_finite_expiry_are_rejected_with_a_reason(redis_url: str) -> None:
    """From the stream, expires_at NaN, Infinity and 1e300 are rejected (recorded with the
    reason), not silently ignored or stored with 300 digits; params NaN likewise."""
    async with pipeline(redis_url) as p:
        c = consumer(p)
        await c.ensure_group()
        for notification_id, expires_at in (("s-nan", "NaN"), ("s-inf", "Infinity"), ("s-big", "1e300")):
            await p.redis.xadd(p.keys.notify_stream, stream_fields(code(notification_id, expires_at=expires_at)))
        await p.redis.xadd(p.keys.notify_stream, {**stream_fields(code("s-param")),
                                                  "params": '{"code": NaN, "minutes": "5"}'})
        assert await c.read_once() == 4
        for notification_id, why in (("s-nan", "not a decimal number"), ("s-inf", "not a decimal number"),
                                     ("s-big", "out of range"), ("s-param", "not a finite number")):
            raw = await p.ledger.raw(notification_id)
            assert raw["state"] == "rejected" and why in raw["reason"], (notification_id, raw)


def test_cli_enqueue_refuses_a_non_finite_expiry() -> None:
    """`gateway enqueue --expires-at 1e300` (and NaN) exits 2 naming the option and why."""
    import subprocess
    import sys

    for value in ("1e300", "NaN"):
        result = subprocess.run([sys.executable, "-m", "gateway", "enqueue", "--type", "verification_code",
                                 "--to", "13800138000", "--expires-at", value],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "--expires-at" in result.stderr and value in result.stderr, result.stderr


@given(st.dictionaries(st.text(), st.text(), max_size=6))
def test_params_are_written_as_the_json_encoder_writes_them(params: dict[str, str]) -> None:
    """intake._params_json quotes str pairs itself (the encoder's set-up per call cost more
    than the encoding); the text stored is the encoder's, byte for byte."""
    from gateway.push.intake import _params_json

    assert _params_json(params) == json.dumps(params, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


@pytest.mark.parametrize("params", [{"n": 1}, {"a": None, "b": 1.5, "c": True}, {"x": ["l"]}, {1: "a"}])
def test_params_that_are_not_str_pairs_go_to_the_encoder(params: dict) -> None:
    from gateway.push.intake import _params_json

    assert _params_json(params) == json.dumps(params, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


async def _xadd_raw(p, fields: dict[bytes, bytes]) -> None:  # type: ignore[no-untyped-def]
    """XADD octets as a core system may send them (the test client would encode str)."""
    await p.redis.execute_command("XADD", p.keys.notify_stream, "*", *[x for pair in fields.items() for x in pair])


def _poisoned_batch() -> list[dict[bytes, bytes]]:
    good = {k.encode(): v.encode() for k, v in stream_fields(code("good-after")).items()}
    return [
        # half an emoji's surrogate pair as a JSON escape: valid JSON, not storable text
        {**good, b"id": b"half-emoji", b"params": b'{"code": "12\\ud83d", "minutes": "5"}'},
        # octets that are not UTF-8 in a value, in the type, in a field name
        {**good, b"id": b"latin1-param", b"params": '{"code": "123456", "minutes": "5分"}'.encode("gb18030")},
        {**good, b"id": b"bad-type", b"type": b"verification_code\xff"},
        {**good, b"id": b"bad-name", b"\xfe\xff": b"x"},
        # not JSON either: rejected as malformed, and recorded all the same
        {**good, b"id": b"broken-json", b"params": b'{"code": "12\xff'},
        good,
    ]


@on_asyncio
async def test_entries_that_are_not_text_are_rejected_and_do_not_hold_their_batch(redis_url: str) -> None:
    """A stream entry with octets that are not UTF-8, or a JSON-escaped lone surrogate, is
    recorded as rejected with the field named; the good entry read in the same batch is
    queued and nothing stays pending.  Before, the client's strict decoding failed the
    whole XREADGROUP (and every retry of the pending batch), and a lone surrogate failed
    the acceptance script: the good entry waited for ever."""
    async with pipeline(redis_url) as p:
        c = consumer(p)
        await c.ensure_group()
        for fields in _poisoned_batch():
            await _xadd_raw(p, fields)
        assert await c.read_once() == 6
        assert await p.state("good-after") == "queued"
        expected = {"half-emoji": "field 'params' is not text", "latin1-param": "field 'params' is not text",
                    "bad-type": "field 'type' is not text", "bad-name": "field '\ufffd\ufffd' is not text",
                    "broken-json": "malformed params JSON"}
        for notification_id, reason in expected.items():
            raw = await p.ledger.raw(notification_id)
            assert raw["state"] == "rejected" and raw["reason"].startswith(reason), (notification_id, raw)
        # what the rejection recorded is the request with the holes marked, not dropped
        assert "\ufffd" in (await p.ledger.raw("latin1-param"))["params"]
        assert (await p.ledger.raw("broken-json"))["params"] == '{"code": "12\ufffd'
        assert (await p.redis.xpending(p.keys.notify_stream, "gateway"))["pending"] == 0


@on_asyncio
async def test_a_poisoned_pending_batch_is_finished_by_whoever_takes_it(redis_url: str) -> None:
    """The same entries read by a consumer that died before accepting them: the next one
    takes them over (XAUTOCLAIM, decoded by the gateway) and finishes every one."""
    async with pipeline(redis_url) as p:
        dead = consumer(p, "gw-dead")
        await dead.ensure_group()
        for fields in _poisoned_batch():
            await _xadd_raw(p, fields)
        await p.redis.execute_command("XREADGROUP", "GROUP", "gateway", "gw-dead", "COUNT", 10,
                                      "STREAMS", p.keys.notify_stream, ">", **{NEVER_DECODE: True})
        alive = consumer(p, "gw-alive")
        assert await alive.take_over_pending() == 6
        assert await p.state("good-after") == "queued"
        assert await p.state("half-emoji") == "rejected"
        assert (await p.redis.xpending(p.keys.notify_stream, "gateway"))["pending"] == 0
