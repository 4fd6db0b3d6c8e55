"""Partition ownership (gateway/push/ownership.py): the pure share and rendezvous logic
with a task.Clock; leases between several owners on a real redis-server and a real Redis
Cluster (3 masters, 3 replicas); two PushServices sharing the partitions with work moving
between them mid-flow, nothing lost or sent twice."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from twisted.internet import reactor, task

from gateway.config import PushConfig
from gateway.push.ownership import (
    FENCE_MARGIN,
    UNKNOWN,
    PartitionLeases,
    PartitionOwnership,
    fair_share,
    plan_ownership,
    rendezvous_score,
)
from gateway.push.render import load_templates
from gateway.push.service import PushService
from gateway.store.bridge import wait_deferred
from gateway.store.keys import Keys
from tests.aio import on_asyncio
from tests.push.harness import TEMPLATES_FILE, ScriptedLink, connect

P = 16
CODE = json.dumps({"code": "246810", "minutes": "5"})


@pytest.fixture(params=["single", "cluster"])
def target(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url" if request.param == "single" else "redis_cluster_url"))


# -- the pure part ---------------------------------------------------------------------------


def settle(members: list[str], owners: dict[int, Any], rounds: int = 6) -> dict[int, Any]:
    """Members plan in turn against the shared owner table, as their ticks would."""
    for _ in range(rounds):
        for me in members:
            plan = plan_ownership(me, P, members, owners, [p for p, o in owners.items() if o == me])
            for p in plan.release:
                owners[p] = None
            for p in plan.hold:
                if owners.get(p) in (None, me):
                    owners[p] = me
    return owners


def test_fair_share_is_the_ceiling() -> None:
    assert [fair_share(16, m) for m in (1, 2, 3, 4, 5, 17)] == [16, 8, 6, 4, 4, 1]
    assert fair_share(16, 0) == 16


def test_one_member_takes_every_free_partition_in_its_rendezvous_order() -> None:
    plan = plan_ownership("a", P, ["a"], dict.fromkeys(range(P)))
    assert sorted(plan.hold) == list(range(P)) and plan.release == () and plan.share == 16
    assert list(plan.hold) == sorted(range(P), key=lambda p: -rendezvous_score("a", p))


def test_members_split_the_partitions_without_overlap_and_a_joiner_gets_a_share() -> None:
    owners = settle(["a", "b", "c"], dict.fromkeys(range(P)))
    counts = {m: sum(1 for o in owners.values() if o == m) for m in "abc"}
    assert None not in owners.values() and max(counts.values()) <= 6, counts
    owners = settle(["a", "b", "c", "d"], owners)
    counts = {m: sum(1 for o in owners.values() if o == m) for m in "abcd"}
    assert None not in owners.values() and counts == {"a": 4, "b": 4, "c": 4, "d": 4}


def test_a_dead_members_partitions_go_to_the_others_once_free() -> None:
    owners = settle(["a", "b", "c"], dict.fromkeys(range(P)))
    dead = [p for p, o in owners.items() if o == "c"]
    # c's membership ran out, its leases still run: nobody may take them yet.
    plan = plan_ownership("a", P, ["a", "b"], owners, [p for p, o in owners.items() if o == "a"])
    assert not set(plan.hold) & set(dead)
    for p in dead:
        owners[p] = None  # ... now its leases ran out too
    owners = settle(["a", "b"], owners)
    assert None not in owners.values() and {owners[p] for p in dead} <= {"a", "b"}


def test_a_partition_held_by_another_is_dropped_and_an_unknown_one_kept() -> None:
    owners: dict[int, Any] = dict.fromkeys(range(P))
    owners.update({0: "a", 1: "b", 2: UNKNOWN})
    plan = plan_ownership("a", P, ["a", "b"], owners, held=[0, 1, 2])
    assert 0 in plan.hold and 2 in plan.hold and 1 not in plan.hold and 1 not in plan.release


def test_the_fence_ends_a_lease_at_its_local_validity() -> None:
    clock = task.Clock()
    leases = PartitionLeases(10.0)
    clock.advance(100)
    assert leases.granted(3, sent_at=clock.seconds()) is True
    assert leases.granted(3, sent_at=clock.seconds()) is False  # a renewal
    clock.advance(10 * (1 - FENCE_MARGIN) - 0.01)
    assert leases.owned(clock.seconds()) == (3,)
    clock.advance(0.02)
    assert leases.owned(clock.seconds()) == ()  # never renewed: fenced before Redis frees it


def test_ownership_with_one_partition_is_off_and_owns_partition_0() -> None:
    clock = task.Clock()
    never_connected = connect("redis://127.0.0.1:1/0")  # register_script does not connect
    ownership = PartitionOwnership(never_connected, Keys(), "a", clock)
    assert ownership.enabled is False and ownership.owned() == (0,)
    clock.advance(3600)
    assert ownership.owned() == (0,)


# -- leases in Redis -------------------------------------------------------------------------


def owners_of(processes: list[PartitionOwnership]) -> list[set[int]]:
    return [set(o.owned()) for o in processes]


async def tick_until(processes: list[PartitionOwnership], done: Any, timeout_seconds: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    while not done():
        assert loop.time() < deadline, [sorted(s) for s in owners_of(processes)]
        for o in processes:
            await o.tick()
        await asyncio.sleep(0.1)


def disjoint_cover(sets: list[set[int]]) -> bool:
    return sum(len(s) for s in sets) == P and set().union(*sets) == set(range(P))


@on_asyncio
async def test_owners_split_disjointly_a_joiner_gets_a_share_and_a_dead_ones_partitions_move(target: str) -> None:
    redis = connect(target)
    keys = Keys(partitions=P)
    try:
        a, b = (PartitionOwnership(redis, keys, name, reactor, lease_seconds=2.0) for name in ("a", "b"))
        await tick_until([a, b], lambda: disjoint_cover(owners_of([a, b])) and len(b.owned()) == 8)
        assert [len(s) for s in owners_of([a, b])] == [8, 8]
        for part in keys.all_partitions:
            assert await redis.get(part.owner) in ("a", "b")
        # A third process joins: the two give up their extras, it takes a share.
        c = PartitionOwnership(redis, keys, "c", reactor, lease_seconds=2.0)
        await tick_until([a, b, c], lambda: disjoint_cover(owners_of([a, b, c]))
                         and max(len(s) for s in owners_of([a, b, c])) <= 6)
        assert len(c.owned()) >= 4
        # c stops heartbeating (SIGKILL): it fences itself after 0.9 lease without Redis...
        taken_from_c = set(c.owned())
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        while c.owned():
            await asyncio.sleep(0.1)
        assert loop.time() - killed_at <= 2.0
        # ... and the others take its partitions once its leases have run out.
        await tick_until([a, b], lambda: disjoint_cover(owners_of([a, b])), timeout_seconds=15.0)
        assert taken_from_c <= set(a.owned()) | set(b.owned())
        # A clean stop frees at once: b takes a's partitions at its next tick.
        await a.release_all()
        assert a.owned() == ()
        await b.tick()
        await b.tick()
        assert set(b.owned()) == set(range(P))
        assert await redis.zrange(keys.partition_members, 0, -1) == ["b"]
    finally:
        await redis.aclose()


@on_asyncio
async def test_a_lease_taken_by_another_process_is_fenced_at_the_next_tick(redis_url: str) -> None:
    redis = connect(redis_url)
    keys = Keys(partitions=P)
    try:
        a = PartitionOwnership(redis, keys, "a", reactor, lease_seconds=5.0)
        await a.tick()
        assert a.owned() == tuple(range(P))
        # Its lease ran out (a long pause) and another process took partition 5.
        await redis.set(keys.partition(5).owner, "z", px=5000)
        await a.tick()
        assert 5 not in a.owned() and len(a.owned()) == P - 1
    finally:
        await redis.aclose()


# -- two PushServices --------------------------------------------------------------------------


def service(redis: Any, keys: Keys, name: str, link: ScriptedLink) -> PushService:
    config = PushConfig(consumer_name=name, claim_idle_seconds=1.0, partitions=keys.partitions,
                        partition_lease_seconds=2.0)
    push = PushService(redis, keys, config, load_templates(TEMPLATES_FILE), [link], reactor,
                       drain_timeout_seconds=5.0, backoff_initial_seconds=0.05, backoff_max_seconds=0.2)
    push.startService()
    return push


async def xadd_codes(redis: Any, keys: Keys, ids: list[str]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for n, notification_id in enumerate(ids):
            pipe.xadd(keys.partition(keys.partition_of(notification_id)).notify_stream,
                      {"id": notification_id, "type": "verification_code", "to": f"138{n:08d}", "params": CODE})
        await pipe.execute()


async def wait_states(redis: Any, keys: Keys, ids: list[str], state: str, timeout_seconds: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hget(keys.notification(i), "state")
            states = await pipe.execute()
        if all(s == state for s in states):
            return
        assert loop.time() < deadline, {s: states.count(s) for s in set(states)}
        await asyncio.sleep(0.2)


async def wait_owned(services: list[PushService], timeout_seconds: float = 30.0) -> list[set[int]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    share = math.ceil(P / len(services))
    while True:
        sets = [set(s.ownership.owned()) for s in services]
        # Settled, not only covered: a process that joined holds one partition while the
        # first still gives back the rest above its share (a snapshot then would not hold).
        if disjoint_cover(sets) and all(sets) and all(len(owned) <= share for owned in sets):
            return sets
        assert loop.time() < deadline, sets
        await asyncio.sleep(0.1)


@on_asyncio
async def test_services_claim_only_from_their_partitions_and_lose_nothing_when_ownership_moves(target: str) -> None:
    """Two PushServices on 16 partitions: in steady state each submits only notifications
    of the partitions it owns; a third joining mid-flow and the first stopping mid-flow
    move partitions, and every notification is submitted exactly once."""
    redis = connect(target)
    keys = Keys(partitions=P)
    links = [ScriptedLink("cmcc", ("138",)) for _ in range(3)]
    services = [service(redis, keys, "a", links[0]), service(redis, keys, "b", links[1])]
    try:
        owned = await wait_owned(services)
        steady = [f"steady-{i}" for i in range(160)]
        await xadd_codes(redis, keys, steady)
        await wait_states(redis, keys, steady, "submitted")
        for link, mine in zip(links, owned, strict=False):
            assert link.submitted, "both processes took work"
            assert {keys.partition_of(s.reference) for s in link.submitted} <= mine
        # Mid-flow: c joins, then a stops (cleanly: it drains and releases its partitions).
        moving = [f"moving-{i}" for i in range(600)]
        await xadd_codes(redis, keys, moving[:300])
        services.append(service(redis, keys, "c", links[2]))
        await wait_owned(services)
        await xadd_codes(redis, keys, moving[300:])
        await wait_deferred(services[0].stopService())
        await wait_states(redis, keys, moving, "submitted")
        await wait_owned(services[1:])
        sent = [s.reference for link in links for s in link.submitted]
        assert sorted(sent) == sorted(steady + moving), "each submitted exactly once"
        assert links[2].submitted, "the joiner took a share"
    finally:
        for s in services:
            if s.running:
                await wait_deferred(s.stopService())
        await redis.aclose()


def test_check_config_names_a_partition_lease_out_of_range(tmp_path: Any) -> None:
    from gateway.config import ConfigError, load_config

    path = tmp_path / "gateway.yaml"
    path.write_text("push:\n  partitions: 16\n  partition_lease_seconds: 0.5\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    [line] = [line for line in str(caught.value).splitlines() if "partition_lease_seconds" in line]
    assert "push.partition_lease_seconds" in line and "2" in line, line


@on_asyncio
async def test_a_new_owner_finishes_the_entries_the_last_one_read_and_left(target: str) -> None:
    """The last owner read a partition's entries (pending for it) and died before
    accepting them: the new owner's take-over accepts every one at once (no idle wait) and
    leaves the stream empty; an entry both accept counts once."""
    from gateway.push.intake import IntakeConsumer
    from tests.push.harness import pipeline

    async with pipeline(target, partitions=4) as p:
        stream = p.keys.partition(2).notify_stream
        ids = [i for i in (f"take-{n}" for n in range(200)) if p.keys.partition_of(i) == 2][:20]
        dead, heir = (IntakeConsumer(p.intake, p.redis, p.keys, group="gateway", consumer=name, stream=stream,
                                     partition=2, batch_size=8, claim_idle_seconds=3600) for name in ("dead", "heir"))
        await dead.ensure_group()
        for n, notification_id in enumerate(ids):
            await p.redis.xadd(stream, {"id": notification_id, "type": "verification_code", "to": f"139{n:08d}",
                                        "params": '{"code":"1","minutes":"5"}'})
        first = await dead.fetch()
        await dead.process(first[:3])  # accepted these, then died holding the rest of its reads
        while await dead.fetch():
            pass
        assert (await p.redis.xpending(stream, "gateway"))["pending"] == len(ids) - 3
        assert await heir.take_over_pending() == len(ids) - 3
        assert await heir.claim_stale_once() == 0 and (await p.redis.xpending(stream, "gateway"))["pending"] == 0
        assert await p.redis.xlen(stream) == 0
        assert {await p.state(i) for i in ids} == {"queued"}
