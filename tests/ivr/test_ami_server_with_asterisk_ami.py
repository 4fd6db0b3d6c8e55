"""The AMI server peer against an independent client: the asterisk-ami package.

asterisk-ami (module ``asterisk.ami``) is a blocking client with its own reader thread,
so it runs in a worker thread (deferToThread) while the peer runs on the reactor.  If
the peer speaks AMI as asterisk-ami understands it, login, Ping, Originate and the
OriginateResponse event all work.  The last tests record why the daemon does not use
asterisk-ami (docs/ami.md): its reader thread dies on a callback exception, and a
measured comparison of sequential Ping round trips.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import pytest_twisted
from asterisk.ami import AMIClient, SimpleAction
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import deferToThread

from gateway.ivr.ami_client import AmiClientService
from tests.peers.ami_server import AmiServer, Outcome, default_user, listen

SECRET = "s3cret"

# asterisk-ami calls Condition.notifyAll (deprecated since Python 3.10) on every response.
pytestmark = pytest.mark.filterwarnings("ignore:notifyAll:DeprecationWarning")


@pytest.fixture
def ami_server():
    server = AmiServer(users={"gateway12123": default_user(SECRET)}, clock=reactor)
    port = listen(server, reactor)
    yield server, port.getHost().port
    port.stopListening()


def blocking_originate(port: int) -> dict[str, Any]:
    """One asterisk-ami session: login, Ping, Originate, wait for OriginateResponse, logoff."""
    client = AMIClient(address="127.0.0.1", port=port, timeout=3)
    got_response = threading.Event()
    events: list[Any] = []

    def on_event(event: Any, source: Any) -> None:
        events.append(event)
        got_response.set()

    client.add_event_listener(on_event, white_list=["OriginateResponse"])
    try:
        login = client.login(username="gateway12123", secret=SECRET).response
        ping = client.send_action(SimpleAction("Ping")).response
        originate = client.send_action(SimpleAction(
            "Originate", Channel="PJSIP/13800138000@carrier-trunk", Context="12123-reminder", Exten="s",
            Priority="1", CallerID="12123", Timeout="30000", Variable="NOTIFICATION_ID=x1", Async="true",
            ActionID="rem-x1-1")).response
        got_response.wait(5)
        return {"login": login, "ping": ping, "originate": originate, "events": events}
    finally:
        client.logoff()
        client.disconnect()


@pytest_twisted.inlineCallbacks
def test_asterisk_ami_logs_in_pings_and_originates_against_the_peer(ami_server):
    """asterisk-ami logs in, gets Pong, queues an Originate and receives its OriginateResponse."""
    server, port = ami_server
    server.script("13800138000", Outcome.BUSY_SIGNAL)  # Busy(): Reason 5
    result = yield deferToThread(blocking_originate, port)
    assert result["login"].status == "Success"
    assert result["ping"].status == "Success" and result["ping"].keys["Ping"] == "Pong"
    assert result["originate"].status == "Success"
    assert result["originate"].keys["Message"] == "Originate successfully queued"
    (event,) = result["events"]
    assert event.name == "OriginateResponse"
    assert (event["ActionID"], event["Response"], event["Reason"]) == ("rem-x1-1", "Failure", "5")
    (originate,) = server.originates
    assert originate.variables() == {"NOTIFICATION_ID": "x1"}


def blocking_bad_login(port: int) -> Any:
    client = AMIClient(address="127.0.0.1", port=port, timeout=3)
    try:
        return client.login(username="gateway12123", secret="wrong").response
    finally:
        client.disconnect()


@pytest_twisted.inlineCallbacks
def test_asterisk_ami_is_refused_with_a_wrong_secret(ami_server):
    """The peer refuses asterisk-ami's Login with a wrong secret, as Asterisk does."""
    server, port = ami_server
    response = yield deferToThread(blocking_bad_login, port)
    assert response.status == "Error" and response.keys["Message"] == "Authentication failed"


def blocking_callback_raises(port: int) -> tuple[Any, Any, bool]:
    """A response callback that raises, then another Ping on the same client."""
    client = AMIClient(address="127.0.0.1", port=port, timeout=0.5)
    try:
        assert client.login(username="gateway12123", secret=SECRET).response.status == "Success"

        def broken(response: Any) -> None:
            raise ValueError("bug in a callback")

        first = client.send_action(SimpleAction("Ping"), callback=broken).response
        client._thread.join(1)  # the reader thread, if it ended
        reader_alive = client._thread.is_alive()
        second = client.send_action(SimpleAction("Ping")).response
        return first, second, reader_alive
    finally:
        client.disconnect()


@pytest_twisted.inlineCallbacks
def test_asterisk_ami_reader_thread_dies_when_a_callback_raises(ami_server):
    """asterisk-ami 0.1.7: a raising callback hits `traceback` (not imported); the reader ends, later actions get no answer."""
    server, port = ami_server
    first, second, reader_alive = yield deferToThread(blocking_callback_raises, port)
    assert first is not None and first.status == "Success"
    assert not reader_alive
    assert second is None  # the peer answered (see below), nobody read it
    assert len(server.actions_named("Ping")) == 2


def blocking_idle(port: int) -> tuple[bool, Any]:
    """Log in, stay idle longer than the socket timeout, then Ping."""
    client = AMIClient(address="127.0.0.1", port=port, timeout=0.2)
    try:
        assert client.login(username="gateway12123", secret=SECRET).response.status == "Success"
        client._thread.join(2)  # returns once the reader thread has ended
        alive = client._thread.is_alive()
        return alive, client.send_action(SimpleAction("Ping")).response
    finally:
        client.disconnect()


@pytest_twisted.inlineCallbacks
def test_asterisk_ami_reader_thread_dies_after_its_socket_timeout_of_silence(ami_server):
    """asterisk-ami 0.1.7: recv times out after `timeout` s of silence and the reader ends (hence its 0.5 s Ping thread)."""
    server, port = ami_server
    alive, pong = yield deferToThread(blocking_idle, port)
    assert not alive
    assert pong is None
    assert len(server.actions_named("Ping")) == 1  # sent and answered; nobody reads any more


PINGS = 100
ROUNDS = 3


def blocking_pings(port: int) -> tuple[float, float]:
    """(sequential, pipelined) seconds for PINGS Pings with asterisk-ami."""
    client = AMIClient(address="127.0.0.1", port=port, timeout=3)
    try:
        assert client.login(username="gateway12123", secret=SECRET).response.status == "Success"
        start = time.perf_counter()
        for _ in range(PINGS):
            response = client.send_action(SimpleAction("Ping")).response
            assert response is not None and response.status == "Success"
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        futures = [client.send_action(SimpleAction("Ping")) for _ in range(PINGS)]
        assert all(f.response is not None and f.response.status == "Success" for f in futures)
        return sequential, time.perf_counter() - start
    finally:
        client.logoff()  # the peer closes on Goodbye, which ends the reader thread at once
        client.disconnect()


@pytest_twisted.inlineCallbacks
def test_ping_round_trips_ours_and_asterisk_ami(ami_server):
    """100 Pings, one after the other and all at once, with both clients against the same peer.

    The figures (best of ROUNDS, printed with -s) are in docs/ami.md.  Both clients must
    get every Pong; the timing itself is not asserted (shared CI machines).
    """
    server, port = ami_server
    ours_client = AmiClientService(TCP4ClientEndpoint(reactor, "127.0.0.1", port), username="gateway12123",
                                   secret=SECRET, clock=reactor)
    ours_client.startService()
    figures: dict[str, list[float]] = {"theirs_seq": [], "theirs_pipe": [], "ours_seq": [], "ours_pipe": []}
    try:
        yield ours_client.whenConnected(failAfterFailures=1)
        for _ in range(ROUNDS):
            sequential, pipelined = yield deferToThread(blocking_pings, port)
            figures["theirs_seq"].append(sequential)
            figures["theirs_pipe"].append(pipelined)
            start = time.perf_counter()
            for _ in range(PINGS):
                pong = yield ours_client.send_action("Ping")
                assert pong.get("Ping") == "Pong"
            figures["ours_seq"].append(time.perf_counter() - start)
            start = time.perf_counter()
            pongs = yield gatherResults([ours_client.send_action("Ping") for _ in range(PINGS)])
            assert all(p.get("Ping") == "Pong" for p in pongs)
            figures["ours_pipe"].append(time.perf_counter() - start)
    finally:
        yield ours_client.stopService()
    best = {name: min(values) * 1000 for name, values in figures.items()}
    print(f"\n{PINGS} Pings, best of {ROUNDS} (ms): sequential asterisk-ami {best['theirs_seq']:.1f}, "
          f"AmiClientService {best['ours_seq']:.1f}; all at once asterisk-ami {best['theirs_pipe']:.1f}, "
          f"AmiClientService {best['ours_pipe']:.1f}")
    assert len(server.actions_named("Ping")) == 4 * PINGS * ROUNDS
