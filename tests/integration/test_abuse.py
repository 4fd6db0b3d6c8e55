"""Abuse over real sockets on 127.0.0.1 (port 0): what an attacker can do to each door.

* SMPP listener: guessing passwords (sequentially, on one connection, in parallel, by
  system_id) is cut off at ``max_bind_failures`` for the source address, a locked-out
  address is refused even with the right password and disconnected, another address is
  not affected, and garbage before a bind neither crashes the listener nor locks anyone.
  The client is a blocking socket speaking our own codec, run in a thread.
* HTTP intake (build_site with the real NotificationsResource on the real redis-server):
  no token or a wrong one is 401, a body that is not acceptable JSON is 400 with a JSON
  error, a 10 MB body is 413 without being read, and /healthz answers afterwards.
* FastAGI: a flood of identity guesses from one caller number, all at once, is held to
  ``IvrConfig.attempts_per_hour`` lookups (tests/peers/fastagi_client.py as Asterisk).
"""

from __future__ import annotations

import json
import select
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource

from gateway.config import HttpConfig, PartnerAccount, Secret, SmppServerConfig
from gateway.http.notifications import NotificationsResource
from gateway.http.server import build_site
from gateway.smpp.link import CarrierLink
from gateway.smpp.listener import SmppListener
from gateway.smpp.pdu import (
    BindTransceiver,
    CommandStatus,
    EnquireLink,
    GenericNack,
    Outbind,
    Pdu,
    decode,
    encode,
)
from gateway.store.bridge import wait_deferred
from tests.aio import on_asyncio
from tests.ivr.test_fastagi import fastagi
from tests.peers.fastagi_client import AsteriskFastAgiClient, place_call
from tests.push.harness import code, pipeline
from tests.smpp.test_link import RecordingSink, carrier_config
from tests.smpp.test_listener import RecordingIntake

SYSTEM_ID = "partner"
PASSWORD = "pw123"
MAX_BIND_FAILURES = 5
CARRIER_OUTBIND_ID = "CMCC-SMSC"
CARRIER_OUTBIND_PASSWORD = "ob"
IO_TIMEOUT_SECONDS = 10.0


# -- SMPP ----------------------------------------------------------------------------------------


class RawSmppClient:
    """A blocking ESME on a plain socket, framing with command_length and decoding with
    our codec; ``source`` picks the loopback address it connects from."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=IO_TIMEOUT_SECONDS, source_address=(source, 0)
        )
        self.buffer = b""
        self.sequence = 0

    def send(self, pdu: Pdu) -> None:
        self.sock.sendall(encode(pdu))

    def read_pdu(self) -> Pdu | None:
        """The next PDU from the listener; None once it closed the connection."""
        while True:
            if len(self.buffer) >= 4:
                length = int.from_bytes(self.buffer[:4], "big")
                if len(self.buffer) >= length:
                    raw, self.buffer = self.buffer[:length], self.buffer[length:]
                    return decode(raw)
            try:
                data = self.sock.recv(65_536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.buffer += data

    def bind(self, system_id: str, password: str) -> int | None:
        """bind_transceiver; the response's command_status, or None if the listener hung up."""
        self.sequence += 1
        self.send(BindTransceiver(self.sequence, system_id=system_id, password=password))
        response = self.read_pdu()
        return None if response is None else int(response.command_status)

    def closed_by_peer(self) -> bool:
        return self.read_pdu() is None

    def close(self) -> None:
        self.sock.close()


def bind_once(port: int, system_id: str, password: str, source: str = "127.0.0.1") -> int | None:
    client = RawSmppClient(port, source)
    try:
        return client.bind(system_id, password)
    finally:
        client.close()


@pytest.fixture
def listener() -> Iterator[SmppListener]:
    config = SmppServerConfig(
        listen="127.0.0.1:0",
        accounts=(PartnerAccount(system_id=SYSTEM_ID, password=Secret(PASSWORD)),),
        max_bind_failures=MAX_BIND_FAILURES,
        bind_failure_window_seconds=300.0,
        lockout_seconds=900.0,
    )
    # A carrier that may outbind, so that outbind reaches the credential check.
    carrier = CarrierLink(
        carrier_config(
            accept_outbind=True,
            outbind_system_id=CARRIER_OUTBIND_ID,
            outbind_password=Secret(CARRIER_OUTBIND_PASSWORD),
        ),
        RecordingSink(),
        reactor,
        jitter=lambda: 0.0,
    )
    service = SmppListener(config, RecordingIntake(), {"cmcc": carrier}, reactor)
    service.startService()
    yield service
    pytest_twisted.blockon(service.stopService())
    pytest_twisted.blockon(carrier.stopService())


def port_of(listener: SmppListener) -> int:
    assert listener.port is not None
    return int(listener.port.getHost().port)


@pytest_twisted.inlineCallbacks
def test_password_guessing_on_one_connection_is_locked_out(listener: SmppListener) -> Any:
    """Guessing on one connection: max_bind_failures answers of ESME_RINVPASWD, then
    ESME_RBINDFAIL and the listener hangs up; the right password no longer helps."""
    port = port_of(listener)

    def guess() -> list[int | None]:
        client = RawSmppClient(port)
        statuses = []
        try:
            for n in range(20):
                status = client.bind(SYSTEM_ID, f"guess{n}")
                statuses.append(status)
                if status is None or status == CommandStatus.ESME_RBINDFAIL:
                    break
            statuses.append(None if client.closed_by_peer() else -1)
        finally:
            client.close()
        return statuses

    statuses = yield deferToThread(guess)
    assert statuses == [CommandStatus.ESME_RINVPASWD] * MAX_BIND_FAILURES + [
        CommandStatus.ESME_RBINDFAIL,
        None,  # disconnected
    ]
    right = yield deferToThread(bind_once, port, SYSTEM_ID, PASSWORD)
    assert right == CommandStatus.ESME_RBINDFAIL


@pytest_twisted.inlineCallbacks
def test_parallel_guessing_gets_no_more_than_max_bind_failures_checks(
    listener: SmppListener,
) -> Any:
    """Thirty connections each sending a wrong bind at the same moment: at most
    max_bind_failures of them get a password verdict; the rest get ESME_RBINDFAIL."""
    port = port_of(listener)

    def storm() -> list[int | None]:
        clients = [RawSmppClient(port) for _ in range(30)]
        try:
            for n, client in enumerate(clients):
                client.send(BindTransceiver(1, system_id=SYSTEM_ID, password=f"g{n}"))
            answers = []
            for client in clients:
                response = client.read_pdu()
                answers.append(None if response is None else int(response.command_status))
            return answers
        finally:
            for client in clients:
                client.close()

    answers = yield deferToThread(storm)
    assert answers.count(CommandStatus.ESME_RINVPASWD) == MAX_BIND_FAILURES
    assert all(
        a in (CommandStatus.ESME_RINVPASWD, CommandStatus.ESME_RBINDFAIL, None) for a in answers
    ), answers


@pytest_twisted.inlineCallbacks
def test_system_id_guessing_counts_too(listener: SmppListener) -> Any:
    """Unknown system_ids (ESME_RINVSYSID) count towards the lock-out like wrong passwords."""
    port = port_of(listener)
    for n in range(MAX_BIND_FAILURES):
        status = yield deferToThread(bind_once, port, f"user{n}", "x")
        assert status == CommandStatus.ESME_RINVSYSID
    status = yield deferToThread(bind_once, port, SYSTEM_ID, PASSWORD)
    assert status == CommandStatus.ESME_RBINDFAIL


@pytest_twisted.inlineCallbacks
def test_lock_out_is_per_source_address(listener: SmppListener) -> Any:
    """While 127.0.0.1 is locked out, a partner connecting from 127.0.0.2 binds normally."""
    port = port_of(listener)
    for n in range(MAX_BIND_FAILURES):
        yield deferToThread(bind_once, port, SYSTEM_ID, f"wrong{n}")
    assert (
        yield deferToThread(bind_once, port, SYSTEM_ID, PASSWORD)
    ) == CommandStatus.ESME_RBINDFAIL
    assert (
        yield deferToThread(bind_once, port, SYSTEM_ID, PASSWORD, "127.0.0.2")
    ) == CommandStatus.ESME_ROK


@pytest_twisted.inlineCallbacks
def test_outbind_guessing_is_locked_out_too(listener: SmppListener) -> Any:
    """Wrong outbinds (no carrier accepts them) close the connection and count as failed
    binds of the address."""
    port = port_of(listener)

    def outbind_once(password: str) -> Pdu | None:
        """The listener's answer to an outbind: None when it hung up (a link that took
        the connection over would send bind_receiver instead)."""
        client = RawSmppClient(port)
        try:
            client.send(Outbind(1, system_id=CARRIER_OUTBIND_ID, password=password))
            return client.read_pdu()
        finally:
            client.close()

    for n in range(MAX_BIND_FAILURES):
        assert (yield deferToThread(outbind_once, f"x{n}")) is None
    status = yield deferToThread(bind_once, port, SYSTEM_ID, PASSWORD)
    assert status == CommandStatus.ESME_RBINDFAIL
    # Locked out: even the carrier's right outbind credentials are not tried.
    assert (yield deferToThread(outbind_once, CARRIER_OUTBIND_PASSWORD)) is None


@pytest_twisted.inlineCallbacks
def test_garbage_before_bind_is_answered_and_locks_nobody(listener: SmppListener) -> Any:
    """Random bytes, an unknown command and an absurd command_length get generic_nacks
    and a hang-up; the listener keeps serving, and the address can still bind."""
    port = port_of(listener)

    def garbage() -> list[Any]:
        seen: list[Any] = []
        client = RawSmppClient(port)
        try:
            client.sock.sendall(struct.pack(">IIII", 16, 0x00ABCDEF, 0, 41))  # unknown command
            seen.append(client.read_pdu())
            client.send(EnquireLink(42))  # still talking
            seen.append(client.read_pdu())
            client.sock.sendall(struct.pack(">IIII", 0xFFFFFFF0, 4, 0, 43) + b"\xa5" * 100_000)
            seen.append(client.read_pdu())
            seen.append(client.closed_by_peer())
        finally:
            client.close()
        return seen

    unknown, enquire_link_resp, too_long, closed = yield deferToThread(garbage)
    assert unknown == GenericNack(41, CommandStatus.ESME_RINVCMDID)
    assert enquire_link_resp is not None and enquire_link_resp.sequence_number == 42
    assert too_long == GenericNack(43, CommandStatus.ESME_RINVCMDLEN)
    assert closed
    assert (yield deferToThread(bind_once, port, SYSTEM_ID, PASSWORD)) == CommandStatus.ESME_ROK


# -- HTTP ----------------------------------------------------------------------------------------

TOKEN = "abuse-test-token"
MAX_BODY_BYTES = 1_048_576


def http_exchange(port: int, request: bytes) -> bytes:
    """Send a raw request, then read until the server closes or a whole response with
    Content-Length has arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_SECONDS) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server hung up mid-request; whatever it answered is still readable
        return _read_response(sock)


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            more = sock.recv(65_536)
        except ConnectionResetError:
            return data
        if not more:
            return data
        data += more
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and len(body) >= int(value):
                    return data


def status_and_json(response: bytes) -> tuple[int, dict[str, Any], dict[bytes, bytes]]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, json.loads(body) if body else {}, headers


def post(path: str, body: bytes, token: str | None = TOKEN, extra: bytes = b"") -> bytes:
    auth = b"" if token is None else b"Authorization: Bearer " + token.encode() + b"\r\n"
    return (
        b"POST "
        + path.encode()
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + auth
        + extra
        + b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )


async def serve_intake(p: Any) -> Any:
    v1 = Resource()
    v1.putChild(b"notifications", NotificationsResource(p.intake, p.ledger, max_batch=10))
    config = HttpConfig(listen="127.0.0.1:0", token=Secret(TOKEN), max_body_bytes=MAX_BODY_BYTES)
    site = build_site(config, readiness=dict, v1=v1)
    return reactor.listenTCP(0, site, interface="127.0.0.1")


async def healthz(port: int) -> int:
    response = await wait_deferred(
        deferToThread(
            http_exchange,
            port,
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
    )
    return status_and_json(response)[0]


@on_asyncio
async def test_intake_refuses_missing_and_wrong_tokens(redis_url: str) -> None:
    """No Authorization, a wrong token, a token of another length, another scheme, an
    empty bearer: 401 with a JSON error and WWW-Authenticate; nothing is recorded."""
    async with pipeline(redis_url) as p:
        listening = await serve_intake(p)
        port = listening.getHost().port
        try:
            body = json.dumps(code("abuse-1")).encode()
            attempts = [
                post("/v1/notifications", body, token=None),
                post("/v1/notifications", body, token="abuse-test-tokeX"),
                post("/v1/notifications", body, token=TOKEN + "-and-more"),
                post("/v1/notifications", body, token=""),
                post(
                    "/v1/notifications",
                    body,
                    token=None,
                    extra=b"Authorization: Basic " + TOKEN.encode() + b"\r\n",
                ),
            ]
            for raw in attempts:
                response = await wait_deferred(deferToThread(http_exchange, port, raw))
                status, answer, headers = status_and_json(response)
                assert status == 401, raw
                assert answer["error"] == "unauthorized"
                assert headers[b"www-authenticate"].startswith(b"Bearer")
            assert await p.redis.exists(p.keys.notification("abuse-1")) == 0
            assert await healthz(port) == 200
        finally:
            await wait_deferred(listening.stopListening())


@on_asyncio
async def test_intake_answers_bad_json_with_400_and_a_json_error(redis_url: str) -> None:
    """Not JSON, not UTF-8, a JSON string or null: 400 with {"error": "bad_request", ...},
    and the server answers afterwards."""
    async with pipeline(redis_url) as p:
        listening = await serve_intake(p)
        port = listening.getHost().port
        try:
            for body in (b"{nope", b"\xff\xfe{}", b'"just a string"', b"null"):
                response = await wait_deferred(
                    deferToThread(http_exchange, port, post("/v1/notifications", body))
                )
                status, answer, headers = status_and_json(response)
                assert status == 400, (body[:20], status)
                assert answer["error"] == "bad_request"
                assert headers[b"content-type"].startswith(b"application/json")
            assert await healthz(port) == 200
        finally:
            await wait_deferred(listening.stopListening())


@on_asyncio
async def test_deeply_nested_json_is_a_bad_request(redis_url: str) -> None:
    """A 50 kB body of 50,000 '[' (any token holder can send it) is 400 with a JSON error."""
    async with pipeline(redis_url) as p:
        listening = await serve_intake(p)
        port = listening.getHost().port
        try:
            response = await wait_deferred(
                deferToThread(http_exchange, port, post("/v1/notifications", b"[" * 50_000))
            )
            assert await healthz(port) == 200
            status, answer, _ = status_and_json(response)
            assert status == 400 and answer["error"] == "bad_request"
        finally:
            await wait_deferred(listening.stopListening())


@on_asyncio
async def test_ten_megabyte_body_is_refused_unread_and_the_server_stays_up(redis_url: str) -> None:
    """A 10 MB JSON body with its Content-Length is 413 (with or without a token), the
    server closes that connection without reading the body, and /healthz answers."""
    async with pipeline(redis_url) as p:
        listening = await serve_intake(p)
        port = listening.getHost().port
        try:
            big = b'[{"id": "x", "pad": "' + b"a" * 10_000_000 + b'"}]'
            for token in (TOKEN, None):
                head = post("/v1/notifications", big, token=token)[: -len(big)]
                chunks = (big[i : i + 65_536] for i in range(0, len(big), 65_536))
                response, sent = await wait_deferred(deferToThread(upload, port, head, chunks))
                status, answer, _ = status_and_json(response)
                assert status == 413
                assert answer["error"] == "payload_too_large"
                # The answer came while most of the body was unsent (loopback socket
                # buffers take a few MB before the server reads anything).
                assert sent < 8_000_000, sent
            assert await healthz(port) == 200
            assert await p.redis.exists(p.keys.notification("x")) == 0
        finally:
            await wait_deferred(listening.stopListening())


def upload(port: int, head: bytes, chunks: Iterator[bytes], end: bytes = b"") -> tuple[bytes, int]:
    """Send ``head`` then the body chunks, stopping as soon as the server answers or hangs
    up (``end`` is sent only after the last chunk).  Returns the response and the number
    of body bytes sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_SECONDS) as sock:
        sock.sendall(head)
        for chunk in chunks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        else:
            sock.sendall(end)
        return _read_response(sock), sent


def chunked_upload(port: int, total_bytes: int, token: str | None) -> tuple[int, int]:
    """Stream a chunked body of ``total_bytes``: (HTTP status or 0, body bytes sent)."""
    auth = b"" if token is None else b"Authorization: Bearer " + token.encode() + b"\r\n"
    head = (
        b"POST /v1/notifications HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + auth
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"10000\r\n" + b" " * 65_536 + b"\r\n"
    chunks = iter([chunk] * (total_bytes // 65_536))
    response, sent = upload(port, head, chunks, b"0\r\n\r\n")
    return (status_and_json(response)[0] if response else 0), sent


@on_asyncio
async def test_chunked_body_is_cut_off_at_max_body_bytes(redis_url: str) -> None:
    """A chunked upload without a token is refused once it passes max_body_bytes, long
    before its 64 MiB are sent (loopback buffers hold a few MiB, hence the margin)."""
    async with pipeline(redis_url) as p:
        listening = await serve_intake(p)
        port = listening.getHost().port
        try:
            status, sent = await wait_deferred(
                deferToThread(chunked_upload, port, 64 * 1_048_576, None)
            )
            assert await healthz(port) == 200
            assert status in (401, 413)
            assert sent < 24 * 1_048_576, sent
        finally:
            await wait_deferred(listening.stopListening())


@on_asyncio
async def test_header_flood_is_refused_and_the_server_stays_up(redis_url: str) -> None:
    """1,000 headers or a 100 kB header line are refused by twisted.web's limits (400 and
    a hang-up); /healthz answers afterwards."""
    async with pipeline(redis_url) as p:
        listening = await serve_intake(p)
        port = listening.getHost().port
        try:
            many = b"".join(b"X-H%d: v\r\n" % i for i in range(1_000))
            long_line = b"X-Long: " + b"a" * 100_000 + b"\r\n"
            for extra in (many, long_line):
                response = await wait_deferred(
                    deferToThread(
                        http_exchange, port, post("/v1/notifications", b"{}", extra=extra)
                    )
                )
                # 400, or a reset when the server hangs up while we are still sending.
                assert response == b"" or response.split(b" ", 2)[1] == b"400", response[:80]
            assert await healthz(port) == 200
        finally:
            await wait_deferred(listening.stopListening())


# -- FastAGI -------------------------------------------------------------------------------------

GUESSER = "13800138000"  # SAMPLE_CALLER: has bookings, so every wrong guess is a real lookup


@on_asyncio
async def test_identity_guessing_flood_from_one_number_is_held_to_the_hourly_allowance(
    redis_url: str,
) -> None:
    """Forty calls from one caller number, all at once, each typing a made-up booking
    number: only attempts_per_caller_per_hour (5 here) of them get a verdict
    (not_verified); the others hear the way forward; none hears a booking; and then the
    right number is refused too."""
    async with fastagi(redis_url, attempts_per_caller_per_hour=5) as h:

        def ends_on_verdict(_: int, line: str) -> bool:
            return "not_verified" in line or "attempts_way_forward" in line

        calls = [
            place_call(
                reactor,
                h.port,
                "12123",
                callerid=GUESSER,
                uniqueid=f"1764460900.{n}",
                inputs=["1", f"2026{n:07d}#"],
                hangup_at=ends_on_verdict,
            )
            for n in range(40)
        ]
        results = await wait_deferred(
            DeferredList(calls, fireOnOneErrback=True, consumeErrors=True)
        )
        await wait_deferred(h.service.when_idle())
        clients: list[AsteriskFastAgiClient] = [client for _, client in results]
        heard = [[p.what for p in c.played] for c in clients]
        verdicts = sum("12123/not_verified" in names for names in heard)
        limited = sum("12123/attempts_way_forward" in names for names in heard)
        assert (verdicts, limited) == (5, 35)
        assert not any("booking_readback" in name for names in heard for name in names)

        right = await h.call(callerid=GUESSER, inputs=["1", h.summary.cancellable_booking + "#"],
                             hangup_at=ends_on_verdict)
        assert "12123/attempts_way_forward" in [p.what for p in right.played]


@on_asyncio
async def test_garbage_on_the_fastagi_port_does_not_stop_calls(redis_url: str) -> None:
    """Random bytes, an endless line and an endless environment on the FastAGI port are
    hung up on; a real call afterwards is served normally."""
    async with fastagi(redis_url) as h:

        def abuse(payload: bytes) -> bool:
            with socket.create_connection(("127.0.0.1", h.port), timeout=IO_TIMEOUT_SECONDS) as s:
                try:
                    s.sendall(payload)
                except (BrokenPipeError, ConnectionResetError):
                    return True
                return _read_response(s) is not None  # read until the server closes

        for payload in (
            bytes(range(256)) * 40 + b"\n\n",
            b"agi_network: yes\nagi_x: " + b"a" * 2_000_000,
            b"agi_arg_1: x\n" * 10_000,
        ):
            assert await wait_deferred(deferToThread(abuse, payload))
        client = await h.call(callerid=GUESSER, inputs=["7", "7", "7"])
        assert client.commands[0] == "ANSWER" and client.hung_up_by_script
