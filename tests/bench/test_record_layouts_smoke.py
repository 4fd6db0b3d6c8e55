"""bench/record_layouts.py, small: the columnar record it measures keeps the hot path's
guarantees on a real redis-server (else its figures would be for a ledger that does less),
and the benchmark runs both records to a table and a JSON line."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any

import pytest

from tests.aio import on_asyncio, redis_client
from tests.bench.bench_modules import bench_module, run_bench


def _item(notification_id: str, to: str, expires_at: float) -> dict[str, Any]:
    return {"id": notification_id, "type": "exam_booked", "expires_at": expires_at, "to": to,
            "fields": {"to": to, "text": "【交管12123】您已预约科目一考试", "channel": "sms"}}


async def _guarantees(url: str, layout: str) -> None:
    bench = bench_module("record_layouts")
    async with redis_client(url) as redis:
        if layout == "owner":
            ledger = bench.OwnerLedger(redis)
            await ledger.take()
        else:
            ledger = bench.ColumnarLedger(redis)
        now = time.time()
        # accept: idempotent per id, within a batch and across batches
        assert await ledger.accept([_item("a", "13800001111", now + 86_400), _item("a", "13800001111", now + 86_400),
                                    _item("old", "13800002222", now - 1)], now) == ["a"]
        assert await ledger.accept([_item("a", "13800001111", now + 86_400)], now) == ["a"]
        assert await redis.hlen(ledger.state) == 2 and await ledger.lane_length() == 2
        events = [e[1] for e in await redis.xrange(ledger.events)]
        assert [(e["type"], e["id"]) for e in events] == [("notification.queued", "a"), ("notification.queued", "old")]

        # claim: what is queued, once; what expired ends expired and is not sent
        claimed = await ledger.claim(10, now)
        assert [(c[0], c[1], c[2]["to"]) for c in claimed] == [("a", 1, "13800001111")]
        assert await ledger.state_of("old") == "expired"
        assert await ledger.claim(10, now) == [] and await redis.zcard(ledger.inflight) == 1

        # submitted: only for what is submitting; the parts asking a receipt indexed
        assert await ledger.submitted([("a", ["m1", "m2"], 1), ("old", ["m9"], 1)], now) == []
        assert await ledger.state_of("old") == "expired"
        assert await redis.hgetall(ledger.index) == {"cmcc\0m1": "a 0"}
        assert await redis.zcard(ledger.inflight) == 0 and await redis.zcard(ledger.awaiting) == 1

        # receipt: refused for another number, applied for this one, nothing after final
        assert await ledger.receipts([("m1", "DELIVRD", "000", "99998888")], now) == [1]
        assert await ledger.state_of("a") == "submitted"
        await ledger.receipts([("m1", "DELIVRD", "000", "00001111")], now)
        assert await ledger.state_of("a") == "delivered" and await redis.zcard(ledger.awaiting) == 0
        await ledger.receipts([("m1", "UNDELIV", "001", "00001111")], now)
        assert await ledger.state_of("a") == "delivered"
        record = (await redis.hget(ledger.state, "a")).split("\t")
        assert record[-1].split(" ")[1:] == [f"queued={now:.3f}", f"submit_started={now:.3f}",
                                            f"submitted={now:.3f}", f"delivered={now:.3f}"]
        kinds = [e[1]["type"] for e in await redis.xrange(ledger.events)]
        assert kinds.count("notification.delivered") == 1 and "notification.undeliverable" not in kinds

        # sweep: records, index entries and retention entries all go, a batch at a time
        assert await ledger.sweep(float("inf"), 1) == 1
        assert await ledger.sweep(float("inf"), 10) == 1
        assert await ledger.sweep(float("inf"), 10) == 0
        for key in (ledger.body, ledger.state, ledger.index, ledger.expiry):
            assert await redis.exists(key) == 0, key
        if layout == "owner":
            await ledger.close()


@on_asyncio
async def test_the_columnar_record_keeps_the_hot_paths_guarantees(redis_url: str) -> None:
    await _guarantees(redis_url, "columnar")


@on_asyncio
async def test_the_owner_written_record_keeps_the_same_guarantees_without_lua(redis_url: str) -> None:
    await _guarantees(redis_url, "owner")


async def _bucketed_guarantees(url: str) -> None:
    bench = bench_module("record_layouts")
    async with redis_client(url) as redis:
        ledger = bench.BucketedOwnerLedger(redis, bucket_seconds=60, shards=4)
        await ledger.take()
        now = time.time()
        bucket = ledger.bucket_at(now)
        assert await ledger.accept([_item("a", "13800001111", now + 86_400), _item("a", "13800001111", now + 86_400),
                                    _item("old", "13800002222", now - 1)], now) == ["a"]
        # a later bucket still knows the id (the ids map): a duplicate, not a second record
        assert await ledger.accept([_item("a", "13800001111", now + 86_400)], now + 120) == ["a"]
        assert await redis.hlen(f"{ledger.state}:{bucket}") == 2
        assert await redis.lrange(ledger.lane, 0, -1) == [f"{bucket} a", f"{bucket} old"]
        claimed = await ledger.claim(10, now)
        assert [(c[0], c[1]) for c in claimed] == [("a", 1)]
        assert await ledger.state_of("old") == "expired" and await ledger.claim(10, now) == []
        assert await ledger.submitted([("a", ["m1", "m2"], 1)], now) == []
        assert await redis.hget(ledger.index_key(ledger.shard("cmcc\0m1")), "cmcc\0m1") == f"{bucket} a 0"
        assert await ledger.receipts([("m1", "DELIVRD", "000", "99998888")], now) == [1]
        await ledger.receipts([("m1", "DELIVRD", "000", "00001111")], now)
        await ledger.receipts([("m1", "UNDELIV", "001", "00001111")], now)
        assert await ledger.state_of("a") == "delivered"
        assert await redis.zcard(ledger.awaiting) == 0 and await redis.zcard(ledger.inflight) == 0
        events = [e[1] for e in await redis.xrange(ledger.events)]
        assert {e["id"] for e in events} == {"a", "old"}  # the id, never the bucket
        assert [e["type"] for e in events if e["id"] == "a"] == [
            "notification.queued", "notification.submitting", "notification.submitted", "notification.delivered"]
        # the sweep ends the bucket whole, and the ids and index entries of its records
        assert await ledger.sweep(now, 10) == 0  # retention not ended yet
        assert await ledger.sweep(float("inf"), 10) == 2 and await ledger.sweep(float("inf"), 10) == 0
        left = sorted(k.removeprefix(ledger.prefix) for k in await redis.keys(ledger.prefix + "*"))
        assert left == ["epoch", "events"], left
        await ledger.close()


@on_asyncio
async def test_the_bucketed_owner_record_keeps_them_with_keys_a_cluster_can_move(redis_url: str) -> None:
    await _bucketed_guarantees(redis_url)


async def _fencing(url: str) -> None:
    bench = bench_module("record_layouts")
    async with redis_client(url) as redis:
        fenced_out = sys.modules[bench.OwnerLedger.__module__].FencedOut
        old, new = bench.OwnerLedger(redis), bench.OwnerLedger(redis)
        await old.take()
        now = time.time()
        assert await old.accept([_item("a", "13800001111", now + 86_400)], now) == []
        await new.take()  # a take-over: the old owner's next step must write nothing
        with pytest.raises(fenced_out):
            await old.accept([_item("b", "13800002222", now + 86_400)], now)
        with pytest.raises(fenced_out):
            await old.claim(10, now)
        assert await redis.hexists(old.state, "b") == 0 and await new.state_of("a") == "queued"
        assert [c[0] for c in await new.claim(10, now)] == ["a"]

        # the epoch changing between the owner's reads and its EXEC: nothing of the step lands
        async def taken_meanwhile(connection: Any) -> Any:
            await redis.set(new.epoch_key, "someone-else")
            return await connection.call([("HMGET", new.state, "c")])

        with pytest.raises(fenced_out):
            await new._fenced(taken_meanwhile, lambda _: ([("HSET", new.state, "c", "queued")], None))
        assert await redis.hexists(new.state, "c") == 0
        await old.close()
        await new.close()


@on_asyncio
async def test_a_partition_taken_over_fences_out_its_old_owner(redis_url: str) -> None:
    await _fencing(redis_url)


def test_every_record_through_the_four_phases() -> None:
    lines, report = run_bench("record_layouts", "-n", "400", "--batch", "100", "--repeat", "1", timeout_seconds=300)
    assert "sweep us" in lines[0] and "memory bytes/notification" in lines[0]
    figures = report["redis_us_per_notification"]
    assert set(figures) == {"gateway", "columnar+sweep", "owner+sweep", "owner-buckets+sweep"}
    for phase in ("accept", "claim", "submitted", "receipt"):
        assert all(figures[layout][phase] > 0 for layout in figures)
    assert all(figures[layout]["sweep"] > 0 for layout in figures if layout != "gateway")
    assert "sweep" not in figures["gateway"]
    assert all(figures[layout]["client_us"] > 0 for layout in figures)
    # every layout sends at least each notification's text (about 200 bytes of Chinese)
    assert all(figures[layout]["bytes_to_redis"] > 200 for layout in figures)
    # a Chinese notification's record and events: hundreds of bytes, not nothing
    assert all(figures[layout]["memory_bytes"] > 300 for layout in figures)



@pytest.mark.skipif(shutil.which("valgrind") is None,
                    reason="valgrind not installed (Debian package valgrind; .ci/run installs it as root)")
def test_instructions_of_every_record_with_where_they_go() -> None:
    """Counted: the sweep only adds to the columnar record, and the breakdown names the
    scripts' share of each record (small sizes, so no ranking of the two records: below
    hash-max-listpack-entries the columnar hashes are scanned listpacks)."""
    lines, report = run_bench("record_layouts", "--instructions", "--breakdown", "--instructions-sizes", "100", "200",
                              "--batch", "50", "--warm-up", "50")
    assert "Redis instructions per notification" in lines[0]
    per = report["instructions_per_notification"]
    assert list(per) == ["gateway", "gateway-steps", "columnar", "columnar+sweep", "owner", "owner+sweep",
                         "owner-buckets", "owner-buckets+sweep"]
    assert all(50_000 < v < 5_000_000 for v in per.values()), per
    # (not the bucketed one's: at these sizes a bucket's sweep is one UNLINK of a listpack, within the noise)
    assert per["columnar"] < per["columnar+sweep"] and per["owner"] < per["owner+sweep"], per
    for layout, functions in report["breakdown"].items():
        if layout.startswith("owner") or layout == "gateway-steps":
            # no script at all: every command comes parsed from the client, inside MULTI/EXEC
            assert functions["evalGenericCommand"] == 0 and functions["processMultibulkBuffer"] > 0, layout
            assert functions["execCommand"] > 0, layout
        else:
            # the scripts are most of what a notification costs Redis, in the records written by Lua
            assert 0.5 * per[layout] < functions["evalGenericCommand"] <= per[layout], (layout, functions)
        assert functions["xaddCommand"] > 0, layout  # the events stream, one entry per state change
    # the sweep deletes fields; the gateway's record deletes nothing on the hot path (its keys expire)
    assert report["breakdown"]["columnar+sweep"]["hdelCommand"] > 0
    assert report["breakdown"]["owner+sweep"]["hdelCommand"] > 0
    assert report["breakdown"]["owner-buckets+sweep"]["hdelCommand"] > 0  # its ids and index entries
    assert report["breakdown"]["gateway"]["hdelCommand"] == 0
    assert report["breakdown"]["gateway-steps"]["hdelCommand"] == 0
