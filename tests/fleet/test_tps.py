"""The fleet-wide TPS limiter: the slot core on a fake clock, and gcra.lua on a real redis-server."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter

import redis as sync_redis
from twisted.internet import reactor

from gateway.fleet import tps as tps_module
from gateway.fleet.tps import (
    EARLY_SECONDS,
    GCRA_LUA,
    HORIZON_SECONDS,
    MAX_LATENESS_SECONDS,
    AccountRateLimiter,
    SlotReservations,
    account_key,
    emission_interval_us,
    reserve_slots,
)
from gateway.metrics import REGISTRY
from gateway.smpp.throttle import TokenBucket
from gateway.store.scripts import lua_source
from tests.aio import on_asyncio, redis_client


def test_a_slot_is_never_spent_before_its_time() -> None:
    """Granted slots are spent one interval apart from their first time on, not earlier."""
    slots = SlotReservations(100.0, early_seconds=0.0, now=0.0)
    slots.grant(3, first_offset_seconds=0.05, interval_seconds=0.01, received_at=1.0)
    assert math.isclose(slots.take(1.0), 0.05)  # wait for the first slot
    assert slots.take(1.05) == 0.0
    assert math.isclose(slots.take(1.05), 0.01)  # the next one is an interval later
    assert slots.take(1.06) == 0.0
    assert slots.take(1.07) == 0.0
    assert slots.take(1.08) == math.inf and slots.spent == 3


def test_slots_not_spent_in_time_are_dropped_not_carried() -> None:
    """After a stall, slots older than max_lateness are dropped: no burst of old slots."""
    slots = SlotReservations(1000.0, max_lateness_seconds=0.02, early_seconds=0.0, now=0.0)
    slots.grant(100, first_offset_seconds=0.0, interval_seconds=0.001, received_at=0.0)
    now = 0.0505  # the reactor was busy for 50 ms
    spent = 0
    while slots.take(now) == 0.0:
        spent += 1
    # Only the slots of the last 20 ms (30.5 ms .. 50.5 ms) may still go out now.
    assert spent <= 21
    assert slots.dropped >= 29
    assert slots.dropped + spent + slots.remaining == 100


def test_batch_follows_the_recent_rate_within_bounds() -> None:
    """A batch covers about 50 ms of the process's own rate, never more than 50 ms of the
    account, and at least two slots."""
    slots = SlotReservations(2000.0, now=0.0)
    assert slots.batch_size(0.0) == 2
    slots.grant(1000, 0.0, 0.0005, 0.0)
    now = 0.0
    for _ in range(400):  # 400 slots spent in 0.2 s: 2,000/s
        now += 0.0005
        assert slots.take(now) == 0.0
    assert slots.batch_size(now) == 100  # 2,000/s * 50 ms, also the account's cap
    idle = SlotReservations(2000.0, now=0.0)
    idle.grant(10, 0.0, 0.001, 0.0)
    idle.take(0.0)
    assert idle.batch_size(1.0) == 2  # one slot in a second: the floor


def test_reserve_slots_spaces_every_grant_one_interval_apart() -> None:
    """The GCRA reservation: consecutive grants continue one another; none beyond the
    horizon; idle time is not banked."""
    tat, granted, first, interval, _ = reserve_slots(0, 1_000_000, 1000, 10, 100_000)
    assert (granted, first, interval) == (10, 0, 1000) and tat == 1_010_000
    tat, granted, first, _, _ = reserve_slots(tat, 1_000_000, 1000, 500, 100_000)
    assert granted == 91 and first == 10_000  # up to now + 100 ms, inclusive
    tat, granted, _, _, retry = reserve_slots(tat, 1_000_000, 1000, 5, 100_000)
    assert granted == 0 and retry == 1000
    tat, granted, first, _, _ = reserve_slots(tat, 5_000_000, 1000, 1, 100_000)
    assert granted == 1 and first == 0  # after an idle spell: from now, no burst


def simulate_fleet(processes: int, account_tps: float, seconds: float, seed: int,
                   link_tps: float | None = None, stalls: bool = True) -> tuple[Counter[int], int]:
    """Processes with unlimited demand sharing one GCRA key (reserve_slots as Redis), with
    random round trips and reactor stalls, each behind its own link's token bucket when
    ``link_tps`` is given (as CarrierLink._pump); returns submits per 1 s window and the total."""
    rng = random.Random(seed)
    buckets = [TokenBucket(link_tps, max(1.0, link_tps / 10)) if link_tps else None for _ in range(processes)]
    interval_us = emission_interval_us(account_tps)
    horizon_us = int(HORIZON_SECONDS * 1e6)
    tat = 0
    step = 0.0005
    cores = [SlotReservations(account_tps, own_tps=link_tps, now=0.0) for _ in range(processes)]
    replies: list[list[tuple[float, int, int, int, int]]] = [[] for _ in range(processes)]
    reserving = [False] * processes
    busy_until = [0.0] * processes
    windows: Counter[int] = Counter()
    total = 0
    now = 0.0
    while now < seconds:
        now += step
        for p, core in enumerate(cores):
            for reply in [r for r in replies[p] if r[0] <= now]:
                replies[p].remove(reply)
                _, granted, first_us, interval, _ = reply
                core.grant(granted, first_us / 1e6, interval / 1e6, received_at=now)
                reserving[p] = False
            if stalls and p == 0 and 0.95 <= now % 1.0 < 0.951:
                busy_until[p] = now + 0.1  # a stall across each window's end, the worst place
            if now < busy_until[p]:
                continue
            if stalls and rng.random() < 0.0003:
                busy_until[p] = now + rng.uniform(0.05, 0.25)  # the reactor stalls
                continue
            bucket = buckets[p]
            while True:
                if bucket is not None and bucket.take(now) > 0:
                    break
                if core.take(now) > 0:
                    if bucket is not None:
                        bucket.refund()
                    break
                windows[int(now)] += 1
                total += 1
            if not reserving[p] and core.needs_reservation(now):
                reserving[p] = True
                wanted = core.batch_size(now)
                sent_at = now + rng.uniform(0.0001, 0.002)  # Redis runs the script on the way
                tat, granted, first_us, interval, _ = reserve_slots(
                    tat, int(sent_at * 1e6), interval_us, wanted, horizon_us)
                # Offsets are relative to Redis's now; the reply lands a little later.
                replies[p].append((sent_at + rng.uniform(0.0001, 0.003), granted, first_us, interval, 0))
    return windows, total


def test_a_fleet_of_three_stays_within_five_percent_of_the_account_tps_in_every_second() -> None:
    """Three processes that always have work, with stalls and round trips: no 1 s window
    above account TPS + 5 %, and the fleet still gets nearly all of it."""
    for seed in range(3):
        windows, total = simulate_fleet(3, 1500.0, 6.0, seed)
        assert max(windows.values()) <= 1500 * 1.05, windows
        assert total >= 1500 * 6 * 0.85, (total, windows)
        # The theory's bound: slots of 1 s + max lateness, plus one.
        assert max(windows.values()) <= 1500 * (1 + EARLY_SECONDS + MAX_LATENESS_SECONDS) + 1


def test_gcra_script_grants_what_the_python_reference_grants(redis_url: str) -> None:
    """gcra.lua on a real redis-server: grants continue one another one interval apart,
    stop at the horizon, and the key carries the account's hash tag."""
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        script = client.register_script(lua_source(tps_module.__file__, GCRA_LUA))
        key = account_key("12123:", "cmcc")
        assert key == "12123:{acct:cmcc}:gcra"
        interval = emission_interval_us(1000.0)  # 1 ms
        first = script(keys=[key], args=[interval, 10, 100_000])
        second = script(keys=[key], args=[interval, 1000, 100_000])
        third = script(keys=[key], args=[interval, 5, 100_000])
        assert first[0] == 10 and first[1] == 0 and first[2] == 1000
        # The second continues after the first's ten slots, up to now + 100 ms.
        assert 85 <= second[0] <= 100 and second[1] >= 10_000 - 5_000
        assert second[1] + (second[0] - 1) * interval <= 100_000  # the last slot within the horizon
        assert third[0] == 0 or third[1] >= 95_000
        assert 0 < client.pttl(key) <= 1200
    finally:
        client.close()


def test_a_tat_written_by_another_server_is_moved_a_horizon_ahead() -> None:
    """After a failover the promoted replica's TAT may be older than the slots its old
    master granted (asynchronous replication): a TAT written elsewhere is first moved to
    now + horizon, past every slot any master granted before; one written here is not."""
    tat, granted, first, _, _ = reserve_slots(900_000, 1_000_000, 1000, 10, 100_000, written_elsewhere=True)
    assert (granted, first) == (1, 100_000) and tat == 1_101_000
    tat, granted, _, _, retry = reserve_slots(1_150_000, 1_000_000, 1000, 10, 100_000, written_elsewhere=True)
    assert (tat, granted, retry) == (1_150_000, 0, 50_000)  # already beyond the horizon: kept
    _, granted, first, _, _ = reserve_slots(900_000, 1_000_000, 1000, 10, 100_000)
    assert (granted, first) == (10, 0)


def test_gcra_script_fences_a_tat_that_another_server_wrote(redis_url: str) -> None:
    """gcra.lua on a real redis-server: the TAT carries the run id of the server that
    wrote it.  A value from another server (a promoted replica holding its old master's
    TAT, or the old format without a run id) grants its first slot a horizon ahead and
    says so (fenced 1); the next call, on what this server wrote, is not fenced."""
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        script = client.register_script(lua_source(tps_module.__file__, GCRA_LUA))
        key = account_key("12123:", "fence")
        interval = emission_interval_us(1000.0)
        run_id = client.info("server")["run_id"]
        seconds, micros = client.time()
        stale = seconds * 1_000_000 + micros - 50_000  # 50 ms ago: behind what was granted
        for value in (f"{stale} {'ab' * 20}", str(stale)):
            client.set(key, value, px=5000)
            granted, first, _, _, fenced = script(keys=[key], args=[interval, 10, 100_000])
            assert fenced == 1 and granted == 1 and 95_000 <= first <= 100_000, (value, granted, first, fenced)
            assert client.get(key).endswith(" " + run_id)
            granted, first, _, _, fenced = script(keys=[key], args=[interval, 10, 100_000])
            # not fenced again; whatever it grants continues after the fenced slot (the
            # horizon moves on with the clock: a slot frees up every interval)
            assert fenced == 0 and (granted == 0 or first >= 50_000), (granted, first, fenced)
        client.delete(key)
        granted, first, _, _, fenced = script(keys=[key], args=[interval, 10, 100_000])
        assert (granted, first, fenced) == (10, 0, 0)  # a fresh key: nothing to fence
    finally:
        client.close()


@on_asyncio
async def test_limiter_on_real_redis_holds_two_processes_to_the_account_rate(redis_url: str) -> None:
    """Two AccountRateLimiters on one real Redis, both always wanting to send, spend
    together about the account's rate, in batches (far fewer Redis calls than submits)."""
    async with redis_client(redis_url) as redis:
        key = account_key("12123:", "cmcc")
        limiters = [AccountRateLimiter(redis, key, 400.0, reactor, account="cmcc-test") for _ in range(2)]
        spent = [0, 0]
        start = reactor.seconds()
        while reactor.seconds() - start < 1.5:
            for i, limiter in enumerate(limiters):
                while limiter.take(reactor.seconds()) == 0.0:
                    spent[i] += 1
            await asyncio.sleep(0.002)
        elapsed = reactor.seconds() - start
        assert sum(spent) <= 400 * elapsed * 1.05 + 2
        assert all(spent)  # a loaded machine loses slots (late ones are dropped), never adds
        calls = sum(limiter.reservation_calls for limiter in limiters)
        assert calls < sum(spent) / 2  # slots come in batches, not one call per submit
        granted = REGISTRY.get_sample_value("gateway12123_account_reservations_total",
                                            {"account": "cmcc-test", "result": "granted"})
        assert granted is not None and 0 < granted <= calls


def test_processes_slower_than_the_account_use_their_slots_instead_of_dropping_them() -> None:
    """Three processes whose binds send 300/s each in an account of 900/s: batches are cut
    to what each can spend in time, so the fleet reaches the account's rate."""
    windows, total = simulate_fleet(3, 900.0, 5.0, seed=7, link_tps=300.0, stalls=False)
    assert total >= 900 * 5 * 0.95, (total, windows)
    assert max(windows.values()) <= 900 * 1.05


def test_links_faster_than_their_share_are_held_to_the_account() -> None:
    """Three processes whose binds could send 600/s each: the account's 900/s holds them."""
    windows, total = simulate_fleet(3, 900.0, 5.0, seed=8, link_tps=600.0, stalls=False)
    assert max(windows.values()) <= 900 * 1.05, windows
    assert total >= 900 * 5 * 0.95, (total, windows)
    windows, _ = simulate_fleet(3, 900.0, 5.0, seed=9, link_tps=600.0)  # with stalls
    assert max(windows.values()) <= 900 * 1.05, windows


@on_asyncio
async def test_without_redis_the_account_stops_sending_after_the_slots_it_holds(redis_url: str) -> None:
    """Redis unreachable: no slot is granted, so nothing is sent beyond what was already
    reserved (stopping never exceeds the contract; a local share could)."""
    async with redis_client("redis://127.0.0.1:1") as nowhere:
        limiter = AccountRateLimiter(nowhere, account_key("12123:", "cmcc"), 1000.0, reactor, account="cmcc")
        spent = 0
        start = reactor.seconds()
        while reactor.seconds() - start < 1.0:
            while limiter.take(reactor.seconds()) == 0.0:
                spent += 1
            await asyncio.sleep(0.01)
        assert spent == 0
        assert limiter.reservation_calls >= 2  # it kept asking, with backoff
        wait_seconds = limiter.take(reactor.seconds())
        assert 0 < wait_seconds <= 2.0


def test_slots_due_within_the_early_margin_go_together() -> None:
    """Slots due within 5 ms may be spent in one pump, and none earlier than that."""
    slots = SlotReservations(1000.0, early_seconds=0.005, now=0.0)
    slots.grant(10, first_offset_seconds=0.01, interval_seconds=0.001, received_at=0.0)
    assert math.isclose(slots.take(0.0), 0.005)  # the first is due at 10 ms, spendable at 5 ms
    spent = 0
    while slots.take(0.005) == 0.0:
        spent += 1
    assert spent == 1  # only the slot at 10 ms is within 5 ms of 5 ms
    spent = 0
    while slots.take(0.0101) == 0.0:
        spent += 1
    assert spent == 5  # the slots at 11..15 ms


@on_asyncio
async def test_an_operators_tps_change_holds_the_fleet_to_the_new_account_rate(redis_url: str) -> None:
    """set_account_tps (the console's TPS action on an account carrier) lowers what two
    limiters on one real Redis spend together to the new fleet-wide rate."""
    async with redis_client(redis_url) as redis:
        key = account_key("12123:", "cucc")
        limiters = [AccountRateLimiter(redis, key, 400.0, reactor, account="cucc-test") for _ in range(2)]
        for limiter in limiters:
            limiter.set_account_tps(100.0)
            assert limiter.reservations.max_batch <= 100
        await asyncio.sleep(0.3)  # slots granted before the change are out of the horizon
        spent = 0
        start = reactor.seconds()
        while reactor.seconds() - start < 1.5:
            for limiter in limiters:
                while limiter.take(reactor.seconds()) == 0.0:
                    spent += 1
            await asyncio.sleep(0.002)
        elapsed = reactor.seconds() - start
        assert 0 < spent <= 100 * elapsed * 1.05 + 2
