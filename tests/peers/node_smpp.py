"""A third independent SMPP implementation as a test peer: farhadi/node-smpp (npm ``smpp``).

``tests/peers/node/peer.js`` runs node-smpp as an SMSC (our carrier links bind to it) or as
an ESME (it binds to our listener); this module starts it with the machine's Node.js and
talks to it in JSON lines (the protocol is described at the top of peer.js).  `make test`
installs the package with ``npm ci``; without node, npm or the installed package the
tests that need it skip, saying why.

    peer = yield start_node_peer()            # a NodeSmppPeer
    port = yield peer.listen()                # as SMSC on 127.0.0.1, a free port
    yield peer.configure(submit_statuses=[0, 0x45])
    submit = yield peer.next_pdu("submit_sm") # what our link sent, as node-smpp read it
    response = yield peer.send(session, "deliver_sm", esm_class=4, short_message=b"...")
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

__all__ = ["NODE_PEER_DIR", "NodeSmppPeer", "node_peer_unavailable", "start_node_peer"]

NODE_PEER_DIR = Path(__file__).resolve().parent / "node"
# Generous: the machine is shared and node starts in ~0.1 s when idle.
WAIT_SECONDS = 20.0


def node_peer_unavailable() -> str | None:
    """Why the node-smpp peer cannot run here (a skip reason), or None."""
    if shutil.which("node") is None:
        return "node (Node.js) is not installed: the node-smpp peer cannot run"
    if not (NODE_PEER_DIR / "node_modules" / "smpp").is_dir():
        return "node-smpp not installed: run `npm ci` in tests/peers/node (make test does)"
    return None


def as_octets(value: Any) -> Any:
    return {"hex": value.hex()} if isinstance(value, bytes | bytearray) else value


def octets(field: Any) -> bytes:
    """A PDU field that node-smpp reported as {"hex": ...} (or absent) as bytes."""
    if isinstance(field, dict) and "hex" in field:
        return bytes.fromhex(field["hex"])
    return b""


class NodeSmppPeer(ProcessProtocol):
    """The running peer.js: requests by id, events kept in arrival order."""

    def __init__(self) -> None:
        self._buffer = b""
        self._next_id = 0
        self._replies: dict[int, Deferred[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._waiters: list[tuple[Callable[[dict[str, Any]], bool], Deferred[dict[str, Any]]]] = []
        self._taken: set[int] = set()  # indexes of events a next_* call already returned
        self.started: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.stderr = b""

    # -- process ------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.started.callback(None)

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._message(json.loads(line))

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-4000:]

    def processEnded(self, reason: Failure) -> None:
        for d in self._replies.values():
            d.errback(RuntimeError(f"node peer ended: {self.stderr.decode(errors='replace')}"))
        self._replies.clear()
        if not self.ended.called:
            self.ended.callback(None)

    def _message(self, message: dict[str, Any]) -> None:
        if "reply" in message:
            d = self._replies.pop(message["reply"], None)
            if d is not None:
                d.callback(message)
            return
        self.events.append(message)
        index = len(self.events) - 1
        for entry in list(self._waiters):
            predicate, d = entry
            if predicate(message):
                self._waiters.remove(entry)
                self._taken.add(index)
                d.callback(message)
                break

    # -- requests -------------------------------------------------------------------------------

    def request(self, op: str, **fields: Any) -> Deferred[dict[str, Any]]:
        self._next_id += 1
        d: Deferred[dict[str, Any]] = Deferred()
        self._replies[self._next_id] = d
        assert self.transport is not None
        self.transport.write(json.dumps({"id": self._next_id, "op": op, **fields}).encode() + b"\n")
        return d.addTimeout(WAIT_SECONDS, global_reactor)

    def listen(self) -> Deferred[int]:
        """Start the SMSC side; fires with its port on 127.0.0.1."""
        return self.request("listen").addCallback(lambda r: r["port"])

    def configure(self, **settings: Any) -> Deferred[dict[str, Any]]:
        """SMSC behaviour: bind_statuses, submit_statuses, message_ids (each used in order)."""
        return self.request("configure", **settings)

    def connect(self, port: int, *, auto_deliver_sm_resp: bool = True) -> Deferred[int]:
        """Connect as ESME to 127.0.0.1:port; fires with the session number."""
        return self.request(
            "connect", port=port, auto_deliver_sm_resp=auto_deliver_sm_resp
        ).addCallback(lambda r: r["session"])

    def send(self, session: int, command: str, **params: Any) -> Deferred[dict[str, Any]]:
        """Send a request; fires with the response PDU (bytes values go as octets)."""

        def response(reply: dict[str, Any]) -> dict[str, Any]:
            if "error" in reply:
                raise RuntimeError(reply["error"])
            return reply["pdu"]  # type: ignore[no-any-return]

        encoded = {k: as_octets(v) for k, v in params.items()}
        return self.request("send", session=session, command=command, params=encoded).addCallback(response)

    def close_session(self, session: int) -> Deferred[dict[str, Any]]:
        return self.request("close", session=session)

    # -- events ---------------------------------------------------------------------------------

    def next_event(self, predicate: Callable[[dict[str, Any]], bool]) -> Deferred[dict[str, Any]]:
        """The first event matching `predicate` not yet returned (waits for it)."""
        for index, event in enumerate(self.events):
            if index not in self._taken and predicate(event):
                self._taken.add(index)
                d: Deferred[dict[str, Any]] = Deferred()
                d.callback(event)
                return d
        d = Deferred()
        self._waiters.append((predicate, d))
        return d.addTimeout(WAIT_SECONDS, global_reactor)

    def next_pdu(self, command: str) -> Deferred[dict[str, Any]]:
        """The next request PDU of `command` that the peer received, with its session."""

        def matches(event: dict[str, Any]) -> bool:
            return event.get("event") == "pdu" and event["pdu"].get("command") == command

        def unwrap(event: dict[str, Any]) -> dict[str, Any]:
            return {**event["pdu"], "session": event["session"]}

        return self.next_event(matches).addCallback(unwrap)

    def pdus(self, command: str) -> list[dict[str, Any]]:
        """Every request PDU of `command` received so far."""
        return [e["pdu"] for e in self.events if e.get("event") == "pdu" and e["pdu"].get("command") == command]

    def stop(self) -> Deferred[None]:
        """Close stdin (peer.js exits); kill it if it does not within the wait."""
        if self.ended.called:
            return self.ended
        assert self.transport is not None
        self.transport.closeStdin()

        def kill() -> None:
            try:
                self.transport.signalProcess("KILL")  # type: ignore[union-attr]
            except ProcessExitedAlready:
                pass

        call = global_reactor.callLater(5.0, kill)  # type: ignore[attr-defined]

        def done(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result

        return self.ended.addBoth(done)


def start_node_peer() -> Deferred[NodeSmppPeer]:
    """Spawn peer.js with the machine's node; fires once the process runs."""
    reason = node_peer_unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    node = shutil.which("node")
    assert node is not None
    peer = NodeSmppPeer()
    global_reactor.spawnProcess(  # type: ignore[attr-defined]
        peer, node, [node, str(NODE_PEER_DIR / "peer.js")], env=dict(os.environ),
        path=str(NODE_PEER_DIR),
    )
    return peer.started.addCallback(lambda _: peer)

