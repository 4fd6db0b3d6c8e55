"""The pipeline (intake, dispatcher, writer, receipts on a real redis-server) with real
carrier links bound to node-smpp (tests/peers/node/) as the SMSC, over TCP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from twisted.internet import reactor

from gateway.config import CarrierConfig, Secret
from gateway.push.routing import PortedNumbers, PrefixRouter
from gateway.smpp.link import CarrierLink
from gateway.smpp.times import parse_time
from gateway.store.bridge import wait_deferred
from tests.aio import on_asyncio
from tests.peers.node_smpp import NodeSmppPeer
from tests.push.harness import CMCC_NUMBER, EventWaiter, Pipeline, code, pipeline

CMCC_PREFIXES = ("134", "135", "136", "137", "138", "139")
RECEIPT = "id:{id} sub:001 dlvrd:001 submit date:2612021200 done date:2612021201 stat:DELIVRD err:000 text:"


def carrier(name: str, port: int, prefixes: tuple[str, ...], **extra: Any) -> CarrierConfig:
    settings: dict[str, Any] = {
        "window": 10, "tps_limit": 1000.0, "reconnect_initial_seconds": 0.05,
        "reconnect_max_seconds": 0.2, "accepts_other_carriers": True,  # they interconnect for 12123
        **extra,
    }
    return CarrierConfig(name=name, host="127.0.0.1", port=port, system_id=f"gw{name}",
                         password=Secret("pw"), prefixes=prefixes, **settings)


@asynccontextmanager
async def node_pipeline(redis_url: str, peer: NodeSmppPeer, *configs: tuple[str, tuple[str, ...]],
                        reconnect: dict[str, float] | None = None,
                        **pipeline_options: Any) -> AsyncIterator[tuple[Pipeline, list[CarrierLink], list[int]]]:
    """A pipeline whose carrier links (name, prefixes) all bind to node-smpp; yields the
    pipeline, the links and each link's node session number."""
    port = await wait_deferred(peer.listen())
    async with pipeline(redis_url, links=[], **pipeline_options) as p:
        links: list[CarrierLink] = []
        sessions: list[int] = []
        for name, prefixes in configs:
            extra: dict[str, Any] = {}
            if reconnect and name in reconnect:
                extra = {"reconnect_initial_seconds": reconnect[name], "reconnect_max_seconds": reconnect[name] * 2}
            link = CarrierLink(carrier(name, port, prefixes, **extra), p.receipts, reactor,  # type: ignore[arg-type]
                               jitter=lambda: 0.0)
            link.startService()
            await wait_deferred(link.when_bound().addTimeout(20, reactor))
            bind = await wait_deferred(peer.next_pdu("bind_transceiver"))
            links.append(link)
            sessions.append(bind["session"])
        p.dispatcher.router = PrefixRouter(links)
        try:
            yield p, links, sessions
        finally:
            for link in links:
                await wait_deferred(link.stopService())


def long_text(notification_id: str) -> dict[str, Any]:
    """A partner's text of 106 Chinese characters: two UCS2 parts."""
    return {"id": notification_id, "type": "partner_text", "to": CMCC_NUMBER,
            "params": {"text": "【交管12123】" + "您的机动车检验有效期即将届满请及时办理" * 5}}


async def dispatch_until_idle(p: Pipeline) -> None:
    while await p.dispatcher.dispatch_once():
        await p.dispatcher.idle()
        await p.writer.flushed()
    await p.writer.flushed()


@on_asyncio
async def test_long_message_refused_after_part_one_records_the_part_and_fails_over(
    redis_url: str, node_peer: NodeSmppPeer,
) -> None:
    """cmcc accepts part 1 and refuses part 2 (ESME_RSUBMITFAIL): part 1's id is recorded
    as the carrier sent it, one possible duplicate is counted, and the whole message goes
    out via cucc, whose ids are kept as sent (001A2B01) and still match its receipts."""
    await wait_deferred(node_peer.configure(submit_statuses=[0, 0x45]))
    async with node_pipeline(redis_url, node_peer, ("cmcc", CMCC_PREFIXES), ("cucc", ("130",))) as (p, _, sessions):
        waiter = EventWaiter(p.redis, p.keys)
        await p.accept(long_text("long-1"))
        await dispatch_until_idle(p)
        assert await waiter.wait_for("long-1", {"submitted", "failed"}) == "submitted"
        view = await p.ledger.get("long-1")
        assert view is not None
        assert view["carrier"] == "cucc" and view["parts"] == 2
        assert view["partial_message_ids"] == ["cmcc:001A2B00"]
        assert view["possible_duplicates"] == 1
        assert view["message_ids"] == ["001A2B01", "001A2B02"]
        submits = [await wait_deferred(node_peer.next_pdu("submit_sm")) for _ in range(4)]
        assert [s["session"] for s in submits] == [sessions[0], sessions[0], sessions[1], sessions[1]]
        for message_id in view["message_ids"]:
            response = await wait_deferred(node_peer.send(
                sessions[1], "deliver_sm", source_addr=CMCC_NUMBER, destination_addr="12123",
                esm_class=0x04, short_message=RECEIPT.format(id=message_id).encode("ascii")))
            assert response["command_status"] == 0
        assert await waiter.wait_for("long-1", {"delivered", "undeliverable"}) == "delivered"


@on_asyncio
async def test_verification_code_reaches_the_smsc_with_its_validity_and_priority(
    redis_url: str, node_peer: NodeSmppPeer,
) -> None:
    """A verification code (high lane, template validity 10 minutes) is submitted with
    priority_flag 1 and validity_period 000000001000000R (minus the seconds it waited);
    a partner's text (normal lane, validity one day) with priority_flag 0."""
    async with node_pipeline(redis_url, node_peer, ("cmcc", CMCC_PREFIXES)) as (p, _, _):
        await p.accept(code("code-1"), {"id": "text-1", "type": "partner_text", "to": CMCC_NUMBER,
                                        "params": {"text": "【交管12123】hello"}})
        await dispatch_until_idle(p)
        submits = {}
        for _ in range(2):
            submit = await wait_deferred(node_peer.next_pdu("submit_sm"))
            submits[submit["priority_flag"]] = submit
        assert set(submits) == {0, 1}
        now = reactor.seconds()
        assert 590 <= parse_time(submits[1]["validity_period"], now=now) - now <= 600
        assert 86_000 <= parse_time(submits[0]["validity_period"], now=now) - now <= 86_400


@on_asyncio
async def test_ported_number_goes_to_its_new_carrier(redis_url: str, node_peer: NodeSmppPeer) -> None:
    """A 138 number that core systems listed as ported to cucc (HSET 12123:ported:138) is
    submitted on cucc's bind, another 138 number on cmcc's."""
    async with node_pipeline(redis_url, node_peer, ("cmcc", CMCC_PREFIXES), ("cucc", ("130",))) as (p, links, sessions):
        p.dispatcher.ported = PortedNumbers(p.redis, p.keys.prefix, [link.name for link in links])
        await p.redis.hset(f"{p.keys.prefix}ported:138", "13800138000", "cucc")
        await p.accept(code("ported-1", to="13800138000"), code("home-1", to="13800138001"))
        await dispatch_until_idle(p)
        submits = [await wait_deferred(node_peer.next_pdu("submit_sm")) for _ in range(2)]
        by_number = {s["destination_addr"]: s["session"] for s in submits}
        assert by_number == {"13800138000": sessions[1], "13800138001": sessions[0]}
        assert (await p.ledger.get("ported-1") or {})["carrier"] == "cucc"


@on_asyncio
async def test_after_both_binds_drop_a_number_waits_for_its_own_carrier(
    redis_url: str, node_peer: NodeSmppPeer,
) -> None:
    """node-smpp drops both carriers' connections; cucc rebinds first (shorter backoff).
    A cmcc number claimed meanwhile is not sent via cucc: it waits (scheduled,
    no_carrier) and goes out on cmcc's new bind."""
    async with node_pipeline(redis_url, node_peer, ("cmcc", CMCC_PREFIXES), ("cucc", ("130",)),
                             reconnect={"cmcc": 1.0}) as (p, links, sessions):
        p.dispatcher.router.observe(p.clock.seconds())
        for session in sessions:
            await wait_deferred(node_peer.close_session(session))
        await wait_deferred(node_peer.next_event(lambda e: e.get("event") == "closed"))
        await wait_deferred(node_peer.next_event(lambda e: e.get("event") == "closed"))
        await wait_deferred(links[1].when_bound().addTimeout(20, reactor))
        assert not links[0].is_bound()
        await p.accept(code("blip-1", to="13800138000"))
        await dispatch_until_idle(p)
        raw = await p.ledger.raw("blip-1")
        assert (raw["state"], raw["scheduled_reason"]) == ("scheduled", "no_carrier")
        await wait_deferred(links[0].when_bound().addTimeout(20, reactor))
        rebind = await wait_deferred(node_peer.next_event(
            lambda e: e.get("event") == "pdu" and e["pdu"].get("system_id") == "gwcmcc" and e["session"] not in sessions))
        p.clock.advance(10)
        await p.ledger.promote_due(now=p.clock.seconds())
        await dispatch_until_idle(p)
        submit = await wait_deferred(node_peer.next_pdu("submit_sm"))
        assert (submit["destination_addr"], submit["session"]) == ("13800138000", rebind["session"])
