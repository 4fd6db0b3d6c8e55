"""The HTTP door on a real server (port 0) behind the lead's site: POST accepts one or
many notifications (202 with per-item results), GET answers the state with a masked
number, bad bodies get 400, and the same id twice is one notification."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from zope.interface import implementer

from gateway.config import HttpConfig, Secret
from gateway.http.notifications import NotificationsResource
from gateway.http.server import build_site
from gateway.store.bridge import wait_deferred
from tests.aio import on_asyncio
from tests.push.harness import Pipeline, code, inspection, pipeline

TOKEN = "test-token"
# twisted's client warns about its own response transport; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")


@implementer(IBodyProducer)
class _Body:
    def __init__(self, data: bytes) -> None:
        self.body = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Any:  # noqa: N802
        from twisted.internet.defer import succeed

        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


class Client:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.agent = Agent(reactor)

    async def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                      token: str = TOKEN) -> tuple[int, Any]:
        headers = Headers({b"authorization": [f"Bearer {token}".encode()],
                           b"content-type": [b"application/json"]})
        data = raw if raw is not None else (json.dumps(body, ensure_ascii=False).encode() if body is not None else None)
        response = await wait_deferred(self.agent.request(
            method.encode(), (self.base + path).encode(), headers, _Body(data) if data is not None else None))
        text = await wait_deferred(readBody(response))
        return response.code, json.loads(text) if text else None


@asynccontextmanager
async def served(p: Pipeline) -> AsyncIterator[Client]:
    v1 = Resource()
    v1.putChild(b"notifications", NotificationsResource(p.intake, p.ledger, max_batch=10))
    site = build_site(HttpConfig(listen="127.0.0.1:0", token=Secret(TOKEN)), readiness=dict, v1=v1)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        yield Client(port.getHost().port)
    finally:
        await wait_deferred(port.stopListening())


@on_asyncio
async def test_post_one_then_get_its_state(redis_url: str) -> None:
    """POST one object answers 202 with its id; GET shows queued with a masked number."""
    async with pipeline(redis_url) as p, served(p) as client:
        status, body = await client.request("POST", "/v1/notifications", code("h1", to="+86 13800138000"))
        assert status == 202
        assert body == {"accepted": [{"id": "h1", "state": "queued"}], "rejected": [], "batch": body["batch"]}
        assert body["batch"].startswith("http-")
        status, view = await client.request("GET", "/v1/notifications/h1")
        assert status == 200
        assert view["state"] == "queued" and view["to"] == "138****8000" and view["source"] == "http"
        assert "13800138000" not in json.dumps(view)


@on_asyncio
async def test_post_batch_reports_each_item(redis_url: str) -> None:
    """A list is accepted item by item: queued, duplicate, and rejected with reasons."""
    async with pipeline(redis_url) as p, served(p) as client:
        batch = [code("b1"), code("b1"), inspection("b2", to="110"), {**code("b3"), "type": "nope"}]
        status, body = await client.request("POST", "/v1/notifications", batch)
        assert status == 202
        assert body["accepted"] == [{"id": "b1", "state": "queued"},
                                    {"id": "b1", "state": "queued", "duplicate": True}]
        assert [(r["id"], r["reason"].split(" (")[0]) for r in body["rejected"]] == [
            ("b2", "not a Chinese mobile number"), ("b3", "unknown type 'nope'")]
        status, view = await client.request("GET", "/v1/notifications/b3")
        assert status == 200 and view["state"] == "rejected"
        assert await p.redis.zcard(p.keys.lane("high")) == 1


@on_asyncio
async def test_same_id_posted_twice_sends_once(redis_url: str) -> None:
    """Posting the same id again answers duplicate and queues nothing more."""
    async with pipeline(redis_url) as p, served(p) as client:
        await client.request("POST", "/v1/notifications", code("again"))
        status, body = await client.request("POST", "/v1/notifications", code("again"))
        assert status == 202 and body["accepted"] == [{"id": "again", "state": "queued", "duplicate": True}]
        await p.dispatch_all()
        assert len(p.links[0].submitted) == 1


@on_asyncio
async def test_bad_bodies_get_400_with_json_error(redis_url: str) -> None:
    """Not JSON, not objects, empty or too many items: 400 and a JSON error body."""
    async with pipeline(redis_url) as p, served(p) as client:
        for raw, message in [(b"{nope", "body is not JSON"), (b"[1, 2]", "item 0 is not a JSON object"),
                             (b"[]", "empty list"),
                             (json.dumps([code(f"x{i}") for i in range(11)]).encode(), "more than 10")]:
            status, body = await client.request("POST", "/v1/notifications", raw=raw)
            assert status == 400, raw
            assert body["error"] == "bad_request" and body["message"].startswith(message)
        assert await p.redis.exists(p.keys.notification("x0")) == 0


@on_asyncio
async def test_unknown_id_is_404_and_missing_token_401(redis_url: str) -> None:
    """GET of an unknown id is 404; without the bearer token the server says 401."""
    async with pipeline(redis_url) as p, served(p) as client:
        status, body = await client.request("GET", "/v1/notifications/nobody")
        assert status == 404 and body["error"] == "not_found"
        status, _ = await client.request("POST", "/v1/notifications", code("sneaky"), token="wrong")
        assert status == 401
        assert await p.redis.exists(p.keys.notification("sneaky")) == 0


@on_asyncio
async def test_post_while_redis_refuses_writes_is_503_with_retry_after(redis_url: str) -> None:
    """Redis refusing writes (OOM under maxmemory/noeviction) is "come back later": 503
    with Retry-After, not 500; the same POST is accepted once Redis takes writes again."""
    from tests.store.test_refusals import OOM, refusing

    async with pipeline(redis_url) as p, served(p) as client:
        await p.redis.set("filler", "x" * 10_000)
        body = json.dumps(code("oom-1")).encode()
        headers = Headers({b"authorization": [f"Bearer {TOKEN}".encode()], b"content-type": [b"application/json"]})
        with refusing(redis_url, *OOM):
            response = await wait_deferred(client.agent.request(
                b"POST", (client.base + "/v1/notifications").encode(), headers, _Body(body)))
            answer = json.loads(await wait_deferred(readBody(response)))
        assert response.code == 503, answer
        assert response.headers.getRawHeaders(b"retry-after") == [b"5"]
        assert answer["error"] == "unavailable"
        status, accepted = await client.request("POST", "/v1/notifications", code("oom-1"))
        assert status == 202 and accepted["accepted"] == [{"id": "oom-1", "state": "queued"}]


def _strict(text: bytes) -> Any:
    """Parse as RFC 8259 JSON: NaN and Infinity are errors."""
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in a JSON answer")

    return json.loads(text, parse_constant=refuse)


async def _post_raw(client: Client, raw: bytes) -> tuple[int, Any]:
    headers = Headers({b"authorization": [f"Bearer {TOKEN}".encode()], b"content-type": [b"application/json"]})
    response = await wait_deferred(client.agent.request(
        b"POST", (client.base + "/v1/notifications").encode(), headers, _Body(raw)))
    return response.code, _strict(await wait_deferred(readBody(response)))


async def _get_notification(client: Client, notification_id: str) -> tuple[int, Any]:
    """GET /v1/notifications/<id>: the status and the body, read as strict JSON."""
    response = await wait_deferred(client.agent.request(
        b"GET", f"{client.base}/v1/notifications/{notification_id}".encode(),
        Headers({b"authorization": [f"Bearer {TOKEN}".encode()]})))
    return response.code, _strict(await wait_deferred(readBody(response)))


@on_asyncio
async def test_non_finite_and_out_of_range_expiry_is_refused_with_a_reason(redis_url: str) -> None:
    """expires_at NaN or Infinity as JSON literals is a 400 (not strict JSON); 1e300,
    "NaN", "-Infinity" and a negative time are rejected items with the reason; GET of
    each answers strict JSON."""
    async with pipeline(redis_url) as p, served(p) as client:
        for literal in (b"NaN", b"Infinity", b"-Infinity"):
            raw = b'{"id": "x", "type": "verification_code", "to": "13800138000", ' \
                  b'"params": {"code": "1", "minutes": "5"}, "expires_at": ' + literal + b"}"
            status, body = await _post_raw(client, raw)
            assert status == 400 and literal.decode().lstrip("-") in body["message"], body
        bad = [code("e1", expires_at=1e300), code("e2", expires_at="NaN"), code("e3", expires_at="-Infinity"),
               code("e4", expires_at=-5), code("e5", expires_at="0x10"), code("e6", params={"code": "1", "minutes": 5})]
        status, body = await _post_raw(client, json.dumps(bad).encode())
        assert status == 202, body
        reasons = {row["id"]: row["reason"] for row in body["rejected"]}
        assert set(reasons) == {"e1", "e2", "e3", "e4", "e5"}, body
        assert "out of range" in reasons["e1"] and "out of range" in reasons["e4"], reasons
        assert "not a decimal number" in reasons["e2"] and "not a decimal number" in reasons["e5"], reasons
        for notification_id in ("e1", "e2", "e6"):
            response = await wait_deferred(client.agent.request(
                b"GET", f"{client.base}/v1/notifications/{notification_id}".encode(),
                Headers({b"authorization": [f"Bearer {TOKEN}".encode()]})))
            assert response.code == 200
            _strict(await wait_deferred(readBody(response)))


@on_asyncio
async def test_control_characters_in_parameters_are_refused_with_a_reason(redis_url: str) -> None:
    """A parameter holding NUL, ESC or DEL is a rejected item naming the parameter and the
    character (some SMSCs cut a message at a NUL, others refuse the part; before
    2026-12-05 it was sent); tab, line feed and carriage return pass, and so does a
    partner's text.  The rejection is recorded, so GET answers it."""
    async with pipeline(redis_url) as p, served(p) as client:
        items = [code("nul", params={"code": "12\u000034", "minutes": "5"}),
                 code("esc", params={"code": "\u001b[31m1", "minutes": "5"}),
                 {**code("del"), "type": "mo_reply", "params": {"text": "您的预约\u007f"}},
                 {**code("spaces"), "type": "mo_reply", "params": {"text": "第一行\n第二行\r\n\t第三行"}},
                 # a partner's text goes as the partner wrote it (their bytes, their data_coding)
                 {**code("partner"), "type": "partner_text", "params": {"text": "【驾校】\u001b1"}}]
        status, body = await _post_raw(client, json.dumps(items).encode())
        assert status == 202, body
        assert body["accepted"] == [{"id": "spaces", "state": "queued"}, {"id": "partner", "state": "queued"}], body
        reasons = {row["id"]: row["reason"] for row in body["rejected"]}
        assert reasons["nul"].startswith("parameter 'code' holds control character U+0000"), reasons
        assert reasons["esc"].startswith("parameter 'code' holds control character U+001B"), reasons
        assert reasons["del"].startswith("parameter 'text' holds control character U+007F"), reasons
        status, view = await _get_notification(client, "nul")
        assert status == 200 and view["state"] == "rejected" and "U+0000" in view["reason"]
        assert "\n第二行\r\n\t第三行" in (await p.ledger.raw("spaces"))["text"]


@on_asyncio
async def test_get_answers_strict_json_for_a_stored_non_finite_time(redis_url: str) -> None:
    """A record written before strict intake with expires_at "nan" / "inf": GET leaves
    the field out rather than answer NaN, which is not JSON."""
    async with pipeline(redis_url) as p, served(p) as client:
        await p.accept(code("old"))
        await p.redis.hset(p.keys.notification("old"), mapping={"expires_at": "nan", "requested_expires_at": "inf"})
        response = await wait_deferred(client.agent.request(
            b"GET", f"{client.base}/v1/notifications/old".encode(),
            Headers({b"authorization": [f"Bearer {TOKEN}".encode()]})))
        view = _strict(await wait_deferred(readBody(response)))
        assert response.code == 200 and "expires_at" not in view and "requested_expires_at" not in view
        assert view["state"] == "queued"


@on_asyncio
async def test_a_lone_surrogate_is_a_rejected_item_not_a_500(redis_url: str) -> None:
    """JSON lets a body escape half a surrogate pair ("\\ud83d", an emoji cut in two), which
    no Redis string can hold: that item is rejected naming its field, the rest of the
    batch is accepted, and the answer is 202, not 500 (as it was: the acceptance script of
    the whole batch failed).  The rejection is recorded, so GET answers it."""
    async with pipeline(redis_url) as p, served(p) as client:
        items = [code("half-1", params={"code": "12\ud83d", "minutes": "5"}),
                 code("half-2", batch="b\udcff"),
                 {**code("half-3"), "type": "verification_code\ud800"},
                 code("whole")]
        status, body = await _post_raw(client, json.dumps(items).encode())  # ensure_ascii: \ud83d escapes
        assert status == 202, body
        assert body["accepted"] == [{"id": "whole", "state": "queued"}]
        reasons = {row["id"]: row["reason"] for row in body["rejected"]}
        assert reasons["half-1"].startswith("field 'params.code' is not text"), reasons
        assert reasons["half-2"].startswith("field 'batch' is not text"), reasons
        assert reasons["half-3"].startswith("field 'type' is not text"), reasons
        status, view = await _get_notification(client, "half-1")
        assert status == 200 and view["state"] == "rejected"
