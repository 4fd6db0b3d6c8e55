"""A partner ESME (node-smpp, tests/peers/node/) on the real listener, with the pipeline
on a real redis-server: multi-part submits, per-part receipts, fixed-width message ids,
query_sm, cancel_sm and replace_sm (SMPP 3.4 sections 4.8-4.10)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from twisted.internet import reactor

from gateway.config import PartnerAccount, Secret
from gateway.ports import DeliveryReceipt
from gateway.push.partners import PartnerGateway
from gateway.smpp.listener import SmppListener
from gateway.smpp.pdu import CommandStatus
from gateway.store.bridge import wait_deferred
from tests.aio import on_asyncio
from tests.peers.node_smpp import NodeSmppPeer, octets
from tests.push.harness import Pipeline, pipeline
from tests.smpp.test_listener import server_config

TEXT = ("【驾培中心】您预约的科目二练车时间为本周六上午九点，请提前十分钟到达训练场并携带身份证。" * 4)[:180]


def udh_parts(text: str, reference: int = 7) -> list[bytes]:
    """The text as UCS2 parts of at most 67 characters, each with an 8-bit-reference UDH."""
    chunks = [text[i:i + 67] for i in range(0, len(text), 67)]
    return [bytes([5, 0, 3, reference, len(chunks), k]) + chunk.encode("utf-16-be")
            for k, chunk in enumerate(chunks, 1)]


@asynccontextmanager
async def partner_door(redis_url: str, peer: NodeSmppPeer, id_format: str) -> AsyncIterator[tuple[Pipeline, int, int]]:
    """The pipeline, its PartnerGateway and the listener; yields (pipeline, the listener's
    port, the node session bound as transceiver with system_id "acme")."""
    accounts = (PartnerAccount(system_id="acme", password=Secret("pw"), message_id_format=id_format),
                PartnerAccount(system_id="other", password=Secret("pw")))
    async with pipeline(redis_url) as p:
        partners = PartnerGateway(p.intake, p.ledger, p.clock)
        listener = SmppListener(server_config(accounts=accounts), partners, {}, reactor)
        partners.set_receipt_sink(listener)
        p.ledger.on_partner_final = partners.on_partner_final
        listener.startService()
        try:
            port = (await wait_deferred(listener.listening())).getHost().port
            session = await wait_deferred(peer.connect(port))
            bound = await wait_deferred(peer.send(session, "bind_transceiver", system_id="acme", password="pw"))
            assert bound["command_status"] == 0
            yield p, port, session
        finally:
            await wait_deferred(listener.stopService())


@on_asyncio
async def test_multi_part_submit_gets_fixed_width_ids_and_a_receipt_per_part(
    redis_url: str, node_peer: NodeSmppPeer,
) -> None:
    """Three UDH parts, each asking for a receipt, from an account with decimal10 ids:
    each part is answered with its own 10-digit id, and once delivered each id comes back
    in a receipt deliver_sm (receipted_message_id, DELIVRD); query_sm of part 2 says
    DELIVERED (2) with a final date."""
    async with partner_door(redis_url, node_peer, "decimal10") as (p, _, session):
        # The listener answers the parts once the whole message is recorded: send all first.
        sent = [node_peer.send(session, "submit_sm", destination_addr="13800138000", esm_class=0x40,
                               data_coding=8, registered_delivery=1, short_message=part)
                for part in udh_parts(TEXT)]
        responses = [await wait_deferred(d) for d in sent]
        ids = [r["message_id"] for r in responses]
        assert ids == ["0000000001", "0000000002", "0000000003"]
        await p.dispatch_all()
        notification_id = "p.acme.0000000001"
        raw = await p.ledger.raw(notification_id)
        assert raw["partner_receipt_ids"].split() == ids
        [carrier_id] = raw["message_ids"].split()
        await wait_deferred(p.receipts.record_receipt(DeliveryReceipt("cmcc", carrier_id, "DELIVRD", "000")))
        receipts = [await wait_deferred(node_peer.next_pdu("deliver_sm")) for _ in ids]
        assert [r["receipted_message_id"] for r in receipts] == ids
        assert all(r["esm_class"] == 0x04 and r["message_state"] == 2 for r in receipts)
        assert all(f"id:{i} " in octets(r["short_message"]).decode() for i, r in zip(ids, receipts, strict=True))
        query = await wait_deferred(node_peer.send(session, "query_sm", message_id="0000000002"))
        assert (query["command_status"], query["message_state"]) == (0, 2)
        assert query["final_date"].endswith("00+")


@on_asyncio
async def test_cancel_and_replace_apply_only_before_the_carrier_has_it(
    redis_url: str, node_peer: NodeSmppPeer,
) -> None:
    """replace_sm of a queued message changes its text (ESME_ROK); cancel_sm of another
    queued one ends it (query_sm: DELETED, 4); once submitted to the carrier both are
    refused (ESME_RREPLACEFAIL, ESME_RCANCELFAIL); another partner's id is unknown
    (ESME_RQUERYFAIL)."""
    async with partner_door(redis_url, node_peer, "hex8") as (p, port, session):
        first = await wait_deferred(node_peer.send(
            session, "submit_sm", destination_addr="13800138000", short_message=b"old text"))
        second = await wait_deferred(node_peer.send(
            session, "submit_sm", destination_addr="13800138001", short_message=b"cancel me"))
        assert (first["message_id"], second["message_id"]) == ("00000001", "00000002")
        replaced = await wait_deferred(node_peer.send(
            session, "replace_sm", message_id="00000001", short_message=b"new text"))
        cancelled = await wait_deferred(node_peer.send(session, "cancel_sm", message_id="00000002"))
        assert (replaced["command_status"], cancelled["command_status"]) == (0, 0)
        query = await wait_deferred(node_peer.send(session, "query_sm", message_id="00000002"))
        assert query["message_state"] == 4
        await p.dispatch_all()
        [sms] = p.links[0].submitted
        assert sms.text.endswith("new text") and sms.destination.digits == "13800138000"
        again = await wait_deferred(node_peer.send(
            session, "replace_sm", message_id="00000001", short_message=b"too late"))
        late_cancel = await wait_deferred(node_peer.send(session, "cancel_sm", message_id="00000001"))
        assert again["command_status"] == CommandStatus.ESME_RREPLACEFAIL
        assert late_cancel["command_status"] == CommandStatus.ESME_RCANCELFAIL
        query = await wait_deferred(node_peer.send(session, "query_sm", message_id="00000001"))
        assert (query["command_status"], query["message_state"], query["final_date"]) == (0, 1, "")
        other = await wait_deferred(node_peer.connect(port))
        await wait_deferred(node_peer.send(other, "bind_transceiver", system_id="other", password="pw"))
        foreign = await wait_deferred(node_peer.send(other, "query_sm", message_id="00000001"))
        assert foreign["command_status"] == CommandStatus.ESME_RQUERYFAIL
