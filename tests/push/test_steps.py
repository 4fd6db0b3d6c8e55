"""The ledger's steps (gateway/push/steps/) against its scripts (gateway/push/lua/), on real
redis-servers.

Each ledger call runs twice from the same copy of Redis: the script on the ledger's
server, the step on a twin (tests/push/steps_twin.py); every key they leave and every
reply must be the same.  The pipeline's own tests are run that way (the first test), and
the rarer paths those tests do not reach are driven here directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.push.state import (
    AcceptItem,
    NotificationLedger,
    op_accepted,
    op_carrier_refused,
    op_failed,
    op_link_down,
    op_partly_sent,
    op_receipt,
    op_retry,
)
from gateway.push.steps.driver import Fence, FencedOut, StepScript
from gateway.push.steps.ledger import Ledger, tonumber, tostring
from gateway.push.steps.overlay import NotLoaded, Overlay, redis_number
from gateway.store.embedded import RedisServerProcess
from gateway.store.keys import Keys
from tests.aio import on_asyncio, redis_client
from tests.push.steps_twin import SCRIPTS, Twins

ROOT = Path(__file__).resolve().parents[2]
NOW = 1772416800.0
# The pipeline's tests run with twins (their notifications go through every script but
# change_if).  Left out: the tests that kill a master or make Redis fail under the
# ledger's feet (a twin compares nothing then), and the Cluster's variants (slow to set up
# and the same scripts); about 40 s of twinned tests.
TWINNED_TESTS = ["tests/push/test_dispatch.py", "tests/push/test_receipts.py", "tests/push/test_intake.py",
                 "tests/push/test_end_to_end.py", "tests/push/test_partitions.py"]
NOT_TWINNED = "not master_killed and not cluster and not deferred_stream_whose_node_is_away"


@pytest.fixture(scope="module")
def twin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServerProcess(data_dir=tmp_path_factory.mktemp("twin"), appendonly=False)
    server.start()
    yield server.url
    server.stop()


def test_the_pipeline_tests_leave_redis_as_the_scripts_do(twin_url: str, tmp_path: Path) -> None:
    calls_file = tmp_path / "calls.jsonl"
    env = {**os.environ, "GATEWAY_TEST_STEPS_TWIN": twin_url, "GATEWAY_TEST_STEPS_TWIN_CALLS": str(calls_file)}
    env.pop("PYTEST_XDIST_WORKER", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                          f"--basetemp={tmp_path / 'inner'}", "-k", NOT_TWINNED, *TWINNED_TESTS],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    calls: dict[str, int] = {}
    for line in calls_file.read_text().splitlines():
        for name, n in json.loads(line).items():
            calls[name] = calls.get(name, 0) + n
    # every script but change_if was compared, many times (change_if: the next test)
    assert {name for name, n in calls.items() if n} == set(SCRIPTS.values()) - {"change_if.lua"}, calls
    assert calls["outcomes.lua"] > 100 and calls["claim.lua"] > 100, calls


def _item(notification_id: str, disposition: str = "queue", **fields: str) -> AcceptItem:
    return AcceptItem(notification_id, "verification_code", disposition, "high",
                      {"to": "13800138000", "text": "【交管12123】您的验证码为123456", "channel": "sms", **fields},
                      due_at=NOW + 60 if disposition in ("schedule", "voice") else 0.0, reason="bad request",
                      expires_at=NOW + 600)


@on_asyncio
async def test_the_rarer_paths_leave_redis_as_the_scripts_do(redis_url: str, twin_url: str) -> None:
    """Partners' change_if, a transition, partial sends, link losses, carrier refusals,
    receipts parked (again, beyond the cap), wrong numbers, claim replays, duplicates
    and dead-letter retries, every disposition at intake, and an unknown op."""
    async with redis_client(redis_url) as redis:
        ledger = NotificationLedger(redis, Keys(), 86_400, early_receipts_max=3, receipt_timeout_seconds=60)
        twins = Twins(ledger, twin_url)
        outcomes = await ledger.accept([_item("a"), _item("b"), _item("c"), _item("d"), _item("e"),
                                        _item("s", "schedule"), _item("v", "voice"), _item("x", "expired"),
                                        _item("r", "reject"), _item("a")], now=NOW)
        assert [o.state for o in outcomes] == ["queued"] * 5 + ["scheduled", "submitted", "expired", "rejected",
                                                                  "queued"]
        assert outcomes[-1].duplicate
        # partners: cancel only what is not with a carrier yet; replace fields only
        assert await ledger.change_if("e", ["queued", "scheduled"], now=NOW, state="failed",
                                      error="cancelled", text="x") == (True, "queued")
        assert await ledger.change_if("s", ["scheduled"], now=NOW, text="replaced") == (True, "scheduled")
        assert await ledger.change_if("v", ["queued"], now=NOW, state="failed") == (False, "submitted")
        assert await ledger.change_if("nobody", ["queued"], now=NOW, state="failed") == (False, "")

        claimed = await ledger.claim(4, now=NOW, lease_seconds=30, quiet_until=0, token="t1")
        assert sorted(c.id for c in claimed) == ["a", "b", "c", "d"]
        again = await ledger.claim(4, now=NOW, lease_seconds=30, quiet_until=0, token="t1", retrying=True)
        assert sorted(c.id for c in again) == ["a", "b", "c", "d"]  # the same batch, nothing new

        # receipts before their submits: parked, one replaced by a final state, one beyond the cap
        await ledger.apply([op_receipt("cmcc", "DELIVRD", "000", ["m3"])], now=NOW + 1)
        await ledger.apply([op_receipt("cmcc", "ENROUTE", "000", ["m1"]), op_receipt("cmcc", "DELIVRD", "000", ["m1"]),
                            op_receipt("cmcc", "DELIVRD", "000", ["m2"], tails="99999999"),
                            op_receipt("cmcc", "DELIVRD", "000", ["m4"])], now=NOW + 1.5)
        assert await redis.zrange(ledger.keys.early_receipts, 0, -1) == ["cmcc m1", "cmcc m2", "cmcc m4"]
        await ledger.apply([op_partly_sent("c", "cmcc", ["p1"]), op_carrier_refused("c", "cucc", "refused"),
                            op_link_down("c", NOW + 5, "link lost", True, 1, op_retry("c", NOW + 5, "link lost", True)),
                            op_accepted("a", "cmcc", ["m1"]), op_accepted("b", "cmcc", ["m2"]),
                            op_failed("d", "no route", False)], now=NOW + 2)
        assert (await ledger.raw("a"))["state"] == "delivered"  # its parked receipt, applied
        assert (await ledger.raw("b"))["state"] == "submitted"  # its receipt named another number
        assert (await ledger.raw("c"))["state"] == "scheduled"
        await ledger.accept([AcceptItem("d", "verification_code", "queue", "high", {"to": "13800138000"},
                                        retry=True, expires_at=NOW + 600)], now=NOW + 3)  # a dead letter retried
        assert await ledger.transition("c", "failed", now=NOW + 4, channel="voice", call_outcome="busy")
        assert not await ledger.transition("nobody", "failed", now=NOW + 4)
        assert await ledger.promote_due(now=NOW + 120) == 2  # s, and c's stale entry
        assert (await ledger.raw("s"))["state"] == "queued"
        assert await ledger.recover_expired_leases(now=NOW + 60) == 0
        assert await ledger.close_overdue_receipts(now=NOW + 300) == (1, 1)
        with pytest.raises(Exception, match="unknown outcome op"):
            await ledger.apply([("Z", "a")], now=NOW + 5, defer=False)
        await twins.close()  # raises with every difference found
        assert {twin.name: twin.calls for twin in twins.twins if twin.calls} == {
            "accept.lua": 2, "claim.lua": 2, "outcomes.lua": 4, "change_if.lua": 4, "transition.lua": 2,
            "promote.lua": 1, "receipts_overdue.lua": 1}


def test_a_step_may_not_read_what_its_driver_did_not_load() -> None:
    """A value guessed would be written back wrong: reading a key, a member or a list that
    was not loaded fails, as a script's undeclared key does."""
    overlay = Overlay()
    overlay.load_hash("n", {"state": "queued"}, 100)
    assert overlay.hget("n", "state") == "queued" and overlay.ttl("n") == 100
    for read in (lambda: overlay.hget("other", "state"), lambda: overlay.get("k"),
                 lambda: overlay.zscore("lane", "n"), lambda: overlay.lrange_all("claim")):
        with pytest.raises(NotLoaded):
            read()
    overlay.delete("n")
    assert overlay.ttl("n") == -2 and overlay.writes == [("DEL", "n")]
    led = Ledger([f"k{j}" for j in range(13)], json.dumps(["1.000", "60", "10", "", "0", "all", 0]), overlay)
    with pytest.raises(Exception, match="key not declared in KEYS: nx"):
        led.nkey("x")


def test_numbers_are_written_and_read_as_lua_does() -> None:
    assert [tonumber(x) for x in ("12", " 7 ", "1.5", "0x10", "abc", "", None, 3)] == [12, 7, 1.5, 16, None, None,
                                                                                      None, 3]
    assert [tostring(x) for x in (5, 5.0, 0.1, 1e20, "s")] == ["5", "5", "0.1", "1e+20", "s"]
    assert redis_number(1772416800.123) == "1772416800.1229999" and redis_number(60) == "60"


class _Interrupted(StepScript):
    """A step after whose reads another client writes the fence key once."""

    def __init__(self, redis: Any, name: str, fence_of: Any, other: Any, value: str) -> None:
        super().__init__(redis, name, fence_of)
        self.other, self.value, self.interruptions = other, value, 0

    async def _run(self, led: Any, keys: list[str], payload: str, send: Any) -> Any:
        prepared = await super()._run(led, keys, payload, send)
        if not self.interruptions:
            self.interruptions += 1
            await self.other.set(OWNER_KEY, self.value, px=10_000)
        return prepared


OWNER_KEY = "12123:owner"


@on_asyncio
async def test_a_fenced_step_writes_only_while_its_process_owns_the_partition(redis_url: str) -> None:
    """The owner's steps write; another process's write nothing and raise FencedOut, also
    when the partition is taken between a step's reads and its EXEC; this process renewing
    its lease meanwhile only makes the step run again, and write once."""
    async with redis_client(redis_url) as redis:
        def fence_of(keys: list[str]) -> Fence:
            return Fence(OWNER_KEY, "gw-a")

        ledger = NotificationLedger(redis, Keys(), 86_400, engine="steps", step_fence=fence_of)
        await redis.set(OWNER_KEY, "gw-a", px=10_000)
        assert [o.state for o in await ledger.accept([_item("a")], now=NOW)] == ["queued"]

        await redis.set(OWNER_KEY, "gw-b", px=10_000)
        with pytest.raises(FencedOut, match="names gw-b, not gw-a"):
            await ledger.accept([_item("b")], now=NOW)
        assert await redis.exists(ledger.keys.notification("b")) == 0

        await redis.set(OWNER_KEY, "gw-a", px=10_000)
        ledger._accept = _Interrupted(redis, "accept.lua", fence_of, redis, "gw-b")  # taken over
        with pytest.raises(FencedOut, match="taken by gw-b"):
            await ledger.accept([_item("c")], now=NOW)
        assert await redis.exists(ledger.keys.notification("c")) == 0

        await redis.set(OWNER_KEY, "gw-a", px=10_000)
        renewed = ledger._accept = _Interrupted(redis, "accept.lua", fence_of, redis, "gw-a")  # own renewal
        assert [o.state for o in await ledger.accept([_item("d")], now=NOW)] == ["queued"]
        assert renewed.interruptions == 1
        events = [f["id"] for _, f in await redis.xrange(ledger.keys.events_stream)]
        assert events == ["a", "d"]  # once each: the interrupted run wrote nothing
        assert await redis.zrange(ledger.keys.lane("high"), 0, -1) == ["a", "d"]


class _Paused(StepScript):
    """A step that waits after its reads until the test lets it go on."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read, self.go_on = asyncio.Event(), asyncio.Event()

    async def _run(self, led: Any, keys: list[str], payload: str, send: Any) -> Any:
        prepared = await super()._run(led, keys, payload, send)
        self.read.set()
        await self.go_on.wait()
        return prepared


@on_asyncio
async def test_a_partitions_steps_take_turns_in_a_process(redis_url: str) -> None:
    """A partner's cancellation sent while a claim of the same notification is between
    its reads and its writes waits for the claim, then finds it submitting and changes
    nothing; run at once, it would have cancelled what the claim then overwrote."""
    async with redis_client(redis_url) as redis:
        ledger = NotificationLedger(redis, Keys(), 86_400, engine="steps")
        await ledger.accept([_item("a")], now=NOW)
        claim = ledger._claim = _Paused(redis, "claim.lua", None, ledger._change_if.locks)
        claiming = asyncio.ensure_future(ledger.claim(1, now=NOW, lease_seconds=30, quiet_until=0))
        await claim.read.wait()
        cancelling = asyncio.ensure_future(ledger.change_if("a", ["queued"], now=NOW, state="failed"))
        await asyncio.sleep(0.2)
        assert not cancelling.done()  # waits for the claim's turn to end
        claim.go_on.set()
        assert [c.id for c in await claiming] == ["a"]
        assert await cancelling == (False, "submitting")
        assert (await ledger.raw("a"))["state"] == "submitting"


@on_asyncio
async def test_steps_of_several_processes_take_turns_through_the_writer_lock(redis_url: str) -> None:
    """Two processes (two clients, two ledgers) claim from the same lanes at once, batch
    after batch: with each step holding the partition's writer lock, every notification is
    claimed once, by one of them, with one attempt; the lock is gone after the last step."""
    async with redis_client(redis_url) as first_redis, redis_client(redis_url) as second_redis:
        ledgers = [NotificationLedger(r, Keys(), 86_400, engine="steps", step_writer_lock=True)
                   for r in (first_redis, second_redis)]
        ids = [f"n{k}" for k in range(300)]
        await ledgers[0].accept([_item(i) for i in ids[:150]], now=NOW)
        await ledgers[1].accept([_item(i) for i in ids[150:]], now=NOW)
        claimed: list[list[str]] = [[], []]

        lane = ledgers[0].keys.lane("high")

        async def claim_all(k: int) -> None:
            # an empty batch may only mean the other took this one's candidates meanwhile
            while await first_redis.zcard(lane):
                claimed[k] += [c.id for c in await ledgers[k].claim(7, now=NOW, lease_seconds=30, quiet_until=0)]

        await asyncio.gather(claim_all(0), claim_all(1))
        together = claimed[0] + claimed[1]
        assert sorted(together) == sorted(ids) and claimed[0] and claimed[1]  # each once, both took some
        async with first_redis.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hget(ledgers[0].keys.notification(i), "attempts")
            assert set(await pipe.execute()) == {"1"}
        assert await first_redis.exists(ledgers[0].keys.partition(0).step_writer) == 0


@on_asyncio
async def test_an_operators_cancellation_waits_for_a_step_that_holds_the_partition(redis_url: str) -> None:
    """The console's cancel (gateway/ops/lua/cancel.lua) does not write between a step's
    reads and its writes: while the partition's writer lock is held it is asked again, and
    it cancels once the step is done; held beyond the wait, the operator gets a 503 saying
    which to try again, and nothing was cancelled."""
    from gateway.ops.actions import ActionError, Actor, _cancel_ids

    async with redis_client(redis_url) as redis:
        keys = Keys()
        ledger = NotificationLedger(redis, keys, 86_400, engine="steps", step_writer_lock=True)
        await ledger.accept([_item("a"), _item("b")], now=NOW)
        actor = Actor("duty", "operator", "cli@test")
        lock = keys.partition(0).step_writer
        await redis.set(lock, "a step", px=200)  # a step mid-way, ending within 200 ms
        assert await _cancel_ids(redis, keys, actor, ["a"], "storm") == {"cancelled": 1, "not_waiting": 0, "gone": 0}
        assert (await ledger.raw("a"))["state"] == "expired"
        await redis.set(lock, "a stuck step", px=10_000)
        with pytest.raises(ActionError, match="1 notifications' partitions stayed busy") as refused:
            await _cancel_ids(redis, keys, actor, ["b"], "storm")
        assert refused.value.code == 503 and (await ledger.raw("b"))["state"] == "queued"
