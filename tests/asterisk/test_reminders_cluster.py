"""Voice reminders through the real Asterisk with the gateway on a real Redis Cluster (3
masters, 3 replicas) and 16 partitions: reminders of several partitions are each dialled
once (one Originate each, seen on Asterisk's AMI) and heard, with every voice key in its
notification's partition."""

from __future__ import annotations

import re
from typing import Any

import pytest
from redis.cluster import ClusterNode, RedisCluster

from gateway.store.keys import Keys
from tests.asterisk.conftest import wait_for
from tests.asterisk.ring import CALLEES, AmiDriver

pytestmark = pytest.mark.asterisk
PARTITIONS = 16
KEYS = Keys(partitions=PARTITIONS)


def test_reminders_of_several_partitions_are_dialled_once_each(start_gateway: Any, driver: AmiDriver,
                                                               redis_cluster_url: str) -> None:
    nodes = redis_cluster_url.removeprefix("cluster:").split(",")
    gateway = start_gateway("Local/{number}@ring-callees", partitions=PARTITIONS,
                            redis={"url": f"redis://{nodes[0]}", "cluster_nodes": nodes})
    try:
        _dial_three_partitions(gateway, driver, nodes)
    finally:
        # The Cluster is the session's: a gateway left running there is a live member
        # that holds partitions in the next test's fleet (start_gateway would stop it
        # only when the next Asterisk test starts one).
        gateway.stop()


def _dial_three_partitions(gateway: Any, driver: AmiDriver, nodes: list[str]) -> None:
    ids = ["ring-cluster-a", "ring-cluster-b", "ring-cluster-c"]
    assert len({KEYS.partition_of(i) for i in ids}) == 3
    start = driver.mark()
    for notification_id in ids:
        status, body = gateway.post("/v1/notifications", {
            "id": notification_id, "type": "verification_code", "to": CALLEES["listener"],
            "params": {"code": "123456", "minutes": "5"}, "channel": "voice"})
        assert status == 202, body

    def all_final() -> Any:
        views = [gateway.get(f"/v1/notifications/{i}", token="test-token")[1] for i in ids]
        return views if all(v.get("state") in ("delivered", "failed") for v in views) else None

    views = wait_for(all_final, 120, "the outcomes of the reminders")
    assert [v["state"] for v in views] == ["delivered"] * 3, views
    with driver._cond:
        responses = [e.get("actionid") for e in driver.events[start:] if e.name == "OriginateResponse"]
    assert sorted(responses) == sorted(f"rem-{i}-1" for i in ids), responses
    client = RedisCluster(startup_nodes=[ClusterNode(*n.rsplit(":", 1)) for n in nodes], decode_responses=True)
    try:
        for notification_id in ids:
            call = client.hgetall(KEYS.call(f"rem-{notification_id}-1"))
            assert (call["outcome"], call["reported"]) == ("heard", "1"), call
            assert re.match(rf"^12123:\{{p{KEYS.partition_of(notification_id)}\}}:call:",
                            KEYS.call(f"rem-{notification_id}-1"))
    finally:
        client.close()
