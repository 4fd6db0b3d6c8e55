"""The carrier simulator: an SMSC for `gateway smsc-sim`, the demo, the tests and the benchmarks.

Theory of operation
-------------------
The simulator is the gateway's *peer*, so it is built directly on the codec
(``pdu``, ``tlv``, ``text``) with its own small server-side rules and never on
``session.py``: a bug shared by the gateway's session and its test peer would be
invisible.  Three sans-IO parts decide, a Twisted shell moves bytes:

* ``CarrierBehaviour`` decides each submit's fate from seeded ``random.Random``
  streams (one per decision, so changing ``throttle_rate`` does not change which
  messages fail): throttled (ESME_RTHROTTLED), refused (ESME_RINVDSTADR for
  ``rejected_destinations`` and ``error_rate``), answered or never answered, and
  the receipt's outcome (``outcome_weights``, ``outcome_overrides`` per number).
* ``MessageRecorder`` reassembles what ESMEs submit (UDH IE 0x00 and 0x08, the
  sar_* TLVs, message_payload) per (system_id, source, destination, reference) and
  keeps ``ReceivedMessage`` records plus counters; with ``record_texts=False`` it
  only counts (for the benchmarks).
* ``format_receipt_text`` writes the SMPP 3.4 Appendix B receipt text.

``SmscProtocol`` is one SMPP session, server side (or client side after an
outbind).  Which command is allowed in which state is the table ``HANDLERS``;
a request missing from it is answered with ESME_RINVBNDSTS (section 2.3 / table
2-1), an unknown command_id with generic_nack ESME_RINVCMDID, a command_length
below 16 or above ``max_pdu_bytes`` with generic_nack ESME_RINVCMDLEN and a close
(the stream cannot be re-framed).  A body the codec rejects gets the command's
response with the status the codec names.

``CarrierSimulator`` (a Service) owns the listener, the sessions, the delivery
queues and two batch timers.  Performance (about 7,000 submit_sm/s and as many
receipts on one core) shapes the hot path:

* responses are collected per ``dataReceived`` and written with one ``write``;
* receipts due within the same ``tick_seconds`` share one ``IDelayedCall``
  (``_BatchTimer``) instead of one ``callLater`` each;
* receipts and MOs wait in a queue per system_id and go out over any session of
  that system_id bound as receiver or transceiver, at most ``deliver_window``
  unacknowledged per session; a session that binds later drains the queue.  A
  deliver_sm answered with an error is sent again after ``redeliver_delay_seconds``,
  and one outstanding when its connection closes is queued again (a real SMSC
  retries; the gateway must cope with the duplicate);
* a deliver_sm is encoded once with sequence_number 0 and patched when sent;
  receipts and submit_sm_resp are packed by hand (``encode_receipt``,
  ``encode_submit_sm_resp``), which a property test holds byte for byte equal to
  the codec's output; everything else goes through ``pdu.encode``/``pdu.decode``;
* nothing is logged per PDU.

Faults, for the fault tests: ``drop_after_pdus`` closes the TCP connection (no
unbind) on every N-th PDU received on a connection; that PDU is processed (the
message counts as received and gets its receipt) but its response is never sent,
which is the "response unknown" case a gateway must retry and count.  A submit
chosen by ``never_respond_rate`` is processed the same way on a connection that
stays up: it gets a message id and a receipt the gateway has never heard of.

Deviations and simplifications: query_sm, cancel_sm and replace_sm are answered
with ESME_RQUERYFAIL, ESME_RCANCELFAIL and ESME_RREPLACEFAIL; a submit_multi gets one
message id and one receipt per accepted destination; an outcome is drawn per PDU,
so the parts of one long message may end differently (as on real networks).  The
receipt's ``text:`` field carries the first 20 characters with anything but
printable ASCII replaced by '?', since a receipt is sent in data_coding 0.
"""

from __future__ import annotations

import argparse
import bisect
import enum
import itertools
import math
import random
import re
import struct
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import IO, Any, Final, Literal

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.privacy import mask_phone
from gateway.smpp.pdu import (
    HEADER_LENGTH,
    PDU_CLASSES,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CommandId,
    CommandStatus,
    DataSm,
    DataSmResp,
    DeliverSm,
    EnquireLinkResp,
    GenericNack,
    Outbind,
    PduDecodeError,
    SmeAddress,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    UnsuccessSme,
    decode,
    encode,
    is_response,
    status_name,
)
from gateway.smpp.text import (
    DATA_CODING_DEFAULT,
    DATA_CODING_UCS2,
    ESM_CLASS_UDHI,
    decode_short_message,
    plan_message,
)
from gateway.smpp.tlv import Tlv, TlvTag, tlv_bytes, tlv_int

__all__ = [
    "HANDLERS",
    "RECEIPT_STATES",
    "CarrierBehaviour",
    "CarrierSimulator",
    "MessageIdAllocator",
    "MessageRecorder",
    "ReceivedMessage",
    "SessionState",
    "SimulatorCounters",
    "SubmitRateWindows",
    "SimulatorOptions",
    "SmscProtocol",
    "add_arguments",
    "encode_receipt",
    "encode_submit_sm_resp",
    "format_receipt_text",
    "main",
    "options_for_carrier",
    "options_from_args",
    "run_from_args",
]

log = Logger()

# Section 5.3.2.35 message_state values of the final states a receipt may report.
RECEIPT_STATES: Final[Mapping[str, int]] = MappingProxyType(
    {"DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5, "ACCEPTD": 6, "UNKNOWN": 7, "REJECTD": 8}
)
# The err: field is network specific (Appendix B); these are the codes we send.
_RECEIPT_ERR: Final[Mapping[str, str]] = MappingProxyType(
    {"DELIVRD": "000", "EXPIRED": "001", "DELETED": "002", "UNDELIV": "003", "ACCEPTD": "000",
     "UNKNOWN": "004", "REJECTD": "005"}
)
ESM_CLASS_DELIVERY_RECEIPT: Final = 0x04  # section 5.2.12, deliver_sm message type bits
SC_INTERFACE_VERSION_34: Final = 0x34
# A stopping simulator waits this long for unbind_resp before it drops the connections.
_UNBIND_TIMEOUT_SECONDS: Final = 2.0
# Message ids are unique across restarts when the counter starts at wall-clock seconds
# times this, as long as fewer than this many ids are handed out per second of uptime.
_ID_START_PER_SECOND: Final = 100_000
_MAX_SEQUENCE: Final = 0x7FFFFFFF  # section 5.1.4: sequence_number 0x00000001-0x7FFFFFFF

_HEADER = struct.Struct(">IIII")
_SEQUENCE = struct.Struct(">I")
_NOT_PRINTABLE_ASCII = re.compile("[^ -~]")

MessageIdStyle = Literal["decimal", "hex", "uuid"]
ReceiptIdFormat = Literal["as_is", "hex_of_decimal", "decimal_of_hex"]
MoConcatenation = Literal["udh8", "udh16", "sar", "payload"]

# Stray receipts (SimulatorOptions.stray_receipts): decimal ids far below the ones this
# SMSC gives (wall-clock seconds * 100000, about 1.7e14) and a number of no test.
STRAY_RECEIPT_FIRST_ID = 9_000_000_000
STRAY_RECEIPT_NUMBER = "13999999999"


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatorOptions:
    """How the simulated carrier behaves.  Rates are fractions 0..1; times in seconds.

    Raises ValueError (listing every problem) for inconsistent values.
    """

    host: str = "127.0.0.1"
    port: int = 2775  # 0: any free port (tests); see CarrierSimulator.port_number
    smsc_system_id: str = "SIMSMSC"  # system_id in bind_*_resp
    # system_id -> password; empty accepts any bind.  Unknown system_id ->
    # ESME_RINVSYSID, wrong password -> ESME_RINVPASWD.
    credentials: Mapping[str, str] = field(default_factory=dict)
    max_pdu_bytes: int = 65_536  # as SmppServerConfig.max_pdu_bytes: a larger command_length closes
    message_id_style: MessageIdStyle = "decimal"
    message_id_start: int | None = None  # None: wall-clock seconds * 100000 (unique across restarts)
    hex_upper: bool = False  # upper-case hex digits in hex ids
    latency_seconds: float = 0.0  # before each submit response
    throttle_rate: float = 0.0  # submits answered ESME_RTHROTTLED
    error_rate: float = 0.0  # submits refused with error_status
    error_status: int = CommandStatus.ESME_RINVDSTADR
    rejected_destinations: frozenset[str] = frozenset()  # always ESME_RINVDSTADR
    never_respond_rate: float = 0.0  # submits accepted but never answered
    drop_after_pdus: int = 0  # close the connection at every N-th PDU received; 0: never
    receipt_delay_seconds: float = 1.0
    outcome_weights: Mapping[str, float] = field(default_factory=lambda: {"DELIVRD": 1.0})
    outcome_overrides: Mapping[str, str] = field(default_factory=dict)  # destination -> stat
    # as_is: receipts carry the submit_sm_resp id; hex_of_decimal: decimal ids answered,
    # receipts in hex (pair with the carrier's message_id_format hex_to_dec);
    # decimal_of_hex: the reverse (pair with dec_to_hex).
    receipt_id_format: ReceiptIdFormat = "as_is"
    receipt_before_response: bool = False  # the receipt goes out before the submit_sm_resp
    duplicate_receipts: bool = False  # every receipt twice
    # Before every receipt, this many UNDELIV for message ids this SMSC never gave this
    # account (another account's, misrouted), from STRAY_RECEIPT_FIRST_ID on, for
    # STRAY_RECEIPT_NUMBER.  message_id_start=STRAY_RECEIPT_FIRST_ID makes them collide
    # with ids it gives later (an SMSC whose accounts share one id space).
    stray_receipts: int = 0
    # Receipts carry the handset masked (86138****5678), as SMSCs that hide numbers do.
    mask_receipt_numbers: bool = False
    receipt_rate: float = 1.0  # receipts that are sent at all
    receipt_tlvs: bool = True  # receipted_message_id and message_state TLVs besides the text
    deliver_window: int = 100  # unacknowledged deliver_sm per session
    redeliver_delay_seconds: float = 5.0  # after a deliver_sm_resp with an error
    record_texts: bool = True  # False: counters only (benchmarks)
    gsm7_packed: bool = False  # how data_coding 0 is read and MO is written
    mo_concatenation: MoConcatenation = "udh8"
    seed: int = 12123
    tick_seconds: float = 0.01  # resolution of delayed responses and receipts
    reassembly_timeout_seconds: float = 300.0  # parts of an incomplete message are dropped after

    def __post_init__(self) -> None:
        # Freeze the mappings so a shared options object cannot change under a simulator.
        object.__setattr__(self, "credentials", MappingProxyType(dict(self.credentials)))
        object.__setattr__(self, "outcome_weights", MappingProxyType(dict(self.outcome_weights)))
        object.__setattr__(self, "outcome_overrides", MappingProxyType(dict(self.outcome_overrides)))
        object.__setattr__(self, "rejected_destinations", frozenset(self.rejected_destinations))
        problems = []
        for name in ("throttle_rate", "error_rate", "never_respond_rate", "receipt_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be within 0..1")
        for name in ("latency_seconds", "receipt_delay_seconds", "redeliver_delay_seconds"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if self.tick_seconds <= 0:
            problems.append("tick_seconds must be positive")
        if self.reassembly_timeout_seconds <= 0:
            problems.append("reassembly_timeout_seconds must be positive")
        if not 0 <= self.port <= 65535:
            problems.append("port must be within 0..65535")
        if self.drop_after_pdus < 0:
            problems.append("drop_after_pdus must not be negative")
        if self.deliver_window < 1:
            problems.append("deliver_window must be at least 1")
        if self.max_pdu_bytes < 64:
            problems.append("max_pdu_bytes must be at least 64")
        if self.message_id_style not in ("decimal", "hex", "uuid"):
            problems.append("message_id_style must be decimal, hex or uuid")
        if self.receipt_id_format == "hex_of_decimal" and self.message_id_style != "decimal":
            problems.append("receipt_id_format hex_of_decimal needs message_id_style decimal")
        elif self.receipt_id_format == "decimal_of_hex" and self.message_id_style != "hex":
            problems.append("receipt_id_format decimal_of_hex needs message_id_style hex")
        elif self.receipt_id_format not in ("as_is", "hex_of_decimal", "decimal_of_hex"):
            problems.append("receipt_id_format must be as_is, hex_of_decimal or decimal_of_hex")
        if self.mo_concatenation not in ("udh8", "udh16", "sar", "payload"):
            problems.append("mo_concatenation must be udh8, udh16, sar or payload")
        for stat, weight in self.outcome_weights.items():
            if stat not in RECEIPT_STATES:
                problems.append(f"outcome_weights: unknown stat {stat!r}")
            if weight < 0:
                problems.append(f"outcome_weights: {stat} has a negative weight")
        if sum(self.outcome_weights.values()) <= 0:
            problems.append("outcome_weights must have a positive total")
        for stat in self.outcome_overrides.values():
            if stat not in RECEIPT_STATES:
                problems.append(f"outcome_overrides: unknown stat {stat!r}")
        if problems:
            raise ValueError("; ".join(problems))


def options_for_carrier(carrier: Any, **overrides: Any) -> SimulatorOptions:
    """Options that let the gateway's link for ``carrier`` (a CarrierConfig) bind.

    Port, credentials and receipt id format follow the carrier's section; ``overrides``
    set any other option (e.g. ``throttle_rate=0.01``).
    """
    receipt_formats: dict[str, tuple[str, str]] = {
        "as_is": ("decimal", "as_is"),
        "hex_to_dec": ("decimal", "hex_of_decimal"),
        "dec_to_hex": ("hex", "decimal_of_hex"),
    }
    style, receipt_format = receipt_formats[carrier.message_id_format]
    password = carrier.password.reveal() if hasattr(carrier.password, "reveal") else str(carrier.password)
    values: dict[str, Any] = {
        "host": carrier.host,
        "port": carrier.port,
        "credentials": {carrier.system_id: password},
        "message_id_style": style,
        "receipt_id_format": receipt_format,
        "gsm7_packed": carrier.gsm7_packed,
    }
    values.update(overrides)
    return SimulatorOptions(**values)


# ---------------------------------------------------------------------------------------
# Sans-IO parts: decisions, ids, receipts, reassembly
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One whole message as the simulated carrier received it (parts joined)."""

    system_id: str
    destination: str
    text: str
    parts: int
    message_ids: tuple[str, ...]  # one per part, in part order
    data_coding: int
    at: float  # clock seconds when the last part arrived
    source: str = ""


@dataclass(slots=True)
class SimulatorCounters:
    """Everything the simulator counts; ``CarrierSimulator.report()`` adds the gauges."""

    connections: int = 0
    binds: int = 0
    bind_failures: int = 0
    submit_sm: int = 0
    submit_multi: int = 0
    data_sm: int = 0
    accepted: int = 0
    throttled: int = 0
    rejected: int = 0
    unanswered: int = 0
    dropped_connections: int = 0
    generic_nacks: int = 0
    bind_state_errors: int = 0
    receipts_scheduled: int = 0
    receipts_skipped: int = 0
    receipts_sent: int = 0
    receipts_acked: int = 0
    receipts_failed: int = 0
    receipts_redelivered: int = 0
    mo_queued: int = 0
    mo_sent: int = 0
    mo_acked: int = 0
    mo_failed: int = 0


class SubmitRateWindows:
    """Submits per system_id per whole second, and binds per system_id: what a carrier
    meters against an account's TPS and bind count (tests/fleet, bench/fleet_limits.py).

    A submit counts in the second of the simulator's clock in which it was read, whatever
    its answer (a carrier counts what arrives).  The last ``keep_seconds`` windows are
    kept per system_id; the peaks cover the whole run.
    """

    def __init__(self, keep_seconds: int = 600) -> None:
        # 600 windows of two ints per system_id: a few KB, whatever the run's length.
        self.keep_seconds = keep_seconds
        self._windows: dict[str, deque[list[int]]] = {}
        self.peak_submits: dict[str, int] = {}
        self.binds: dict[str, int] = {}
        self.peak_binds: dict[str, int] = {}

    def submit(self, system_id: str, now: float) -> None:
        second = int(now)
        windows = self._windows.get(system_id)
        if windows is None:
            windows = self._windows[system_id] = deque(maxlen=self.keep_seconds)
        if windows and windows[-1][0] == second:
            windows[-1][1] += 1
        else:
            windows.append([second, 1])
        count = windows[-1][1]
        if count > self.peak_submits.get(system_id, 0):
            self.peak_submits[system_id] = count

    def bound(self, system_id: str) -> None:
        count = self.binds[system_id] = self.binds.get(system_id, 0) + 1
        if count > self.peak_binds.get(system_id, 0):
            self.peak_binds[system_id] = count

    def unbound(self, system_id: str) -> None:
        self.binds[system_id] = max(0, self.binds.get(system_id, 0) - 1)

    def windows(self, system_id: str) -> list[tuple[int, int]]:
        """(Unix second, submits) of the kept windows, oldest first."""
        return [(second, count) for second, count in self._windows.get(system_id, ())]

    def report(self) -> dict[str, Any]:
        return {
            "peak_submits_per_second": dict(self.peak_submits),
            "binds_by_system_id": dict(self.binds),
            "peak_binds_by_system_id": dict(self.peak_binds),
            "submits_per_second": {sid: self.windows(sid)[-60:] for sid in self._windows},
        }


class AnswerTimes:
    """How long the ESME took to answer our deliver_sm (receipts and MOs apart): from the
    pump writing it to its deliver_sm_resp (or generic_nack) being read.  What a carrier
    sees of the gateway's receipt path, e.g. the cost of push.delivery_wait_replicas
    (bench/cluster.py).

    The last ``keep`` answers of each kind are kept: 20,000 floats, about 0.5 MB at most,
    whatever the run's length; percentiles are over those.
    """

    def __init__(self, keep: int = 20_000) -> None:
        self._seconds: dict[str, deque[float]] = {
            "receipt": deque(maxlen=keep), "mo": deque(maxlen=keep)}

    def answered(self, is_receipt: bool, seconds: float) -> None:
        self._seconds["receipt" if is_receipt else "mo"].append(max(0.0, seconds))

    def report(self) -> dict[str, dict[str, float | int]]:
        """{kind: {count, p50_ms, p99_ms, max_ms}} for the kinds answered at least once."""
        out: dict[str, dict[str, float | int]] = {}
        for kind, kept in self._seconds.items():
            if not kept:
                continue
            ordered = sorted(kept)
            n = len(ordered)

            def rank(q: float, ordered: list[float] = ordered, n: int = n) -> float:
                # nearest rank: the smallest value with at least q of the answers at or below it
                return round(ordered[max(0, math.ceil(q * n) - 1)] * 1000, 2)

            out[kind] = {"count": n, "p50_ms": rank(0.50), "p99_ms": rank(0.99), "max_ms": rank(1.0)}
        return out


class MessageIdAllocator:
    """Message ids, unique per simulator and (with the default start) across restarts."""

    def __init__(
        self, style: MessageIdStyle, start: int, *, rng: random.Random, hex_upper: bool = False
    ) -> None:
        self._counter = itertools.count(max(1, start))
        hex_format = "X" if hex_upper else "x"
        if style == "decimal":
            self.allocate: Callable[[], str] = lambda: str(next(self._counter))
        elif style == "hex":
            self.allocate = lambda: format(next(self._counter), hex_format)
        else:
            # uuid-like: a random 80-bit prefix per simulator, the counter in the last group.
            bits = rng.getrandbits(80)
            prefix = f"{bits >> 48:08x}-{(bits >> 32) & 0xFFFF:04x}-4{(bits >> 20) & 0xFFF:03x}-{0x8000 | ((bits >> 4) & 0x3FFF):04x}-"
            self.allocate = lambda: f"{prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


def receipt_id_converter(fmt: ReceiptIdFormat, *, hex_upper: bool = False) -> Callable[[str], str]:
    """The function turning a submit_sm_resp id into the id its receipt carries."""
    if fmt == "hex_of_decimal":
        spec = "X" if hex_upper else "x"
        return lambda message_id: format(int(message_id), spec)
    if fmt == "decimal_of_hex":
        return lambda message_id: str(int(message_id, 16))
    return lambda message_id: message_id


def format_receipt_text(
    message_id: str, stat: str, submit_date: str, done_date: str, text: str
) -> str:
    """A delivery receipt's short_message text, SMPP 3.4 Appendix B.

    ``submit_date``/``done_date`` are YYMMDDhhmm; ``text`` is cut to 20 characters.
    """
    dlvrd = "001" if stat == "DELIVRD" else "000"
    err = _RECEIPT_ERR.get(stat, "000")
    return (
        f"id:{message_id} sub:001 dlvrd:{dlvrd} submit date:{submit_date} "
        f"done date:{done_date} stat:{stat} err:{err} text:{text[:20]}"
    )


class CarrierBehaviour:
    """The simulated carrier's decisions, from seeded random streams (sans-IO).

    Each decision has its own stream, seeded from ``options.seed`` and its name, so the
    same options and the same sequence of submits give the same decisions.
    """

    def __init__(self, options: SimulatorOptions) -> None:
        self._options = options
        seed = options.seed
        self._throttle = random.Random(f"{seed}:throttle").random
        self._error = random.Random(f"{seed}:error").random
        self._silence = random.Random(f"{seed}:never_respond").random
        self._receipt = random.Random(f"{seed}:receipt_rate").random
        self._outcome = random.Random(f"{seed}:outcome").random
        self._rejected = options.rejected_destinations
        self._overrides = options.outcome_overrides
        weights = [(stat, w) for stat, w in options.outcome_weights.items() if w > 0]
        self._stats = [stat for stat, _ in weights]
        self._cumulative = list(itertools.accumulate(w for _, w in weights))

    def submit_status(self, destination: str) -> int:
        """ESME_ROK, ESME_RTHROTTLED or a refusal for one submit to ``destination``."""
        o = self._options
        if o.throttle_rate and self._throttle() < o.throttle_rate:
            return CommandStatus.ESME_RTHROTTLED
        if destination in self._rejected:
            return CommandStatus.ESME_RINVDSTADR
        if o.error_rate and self._error() < o.error_rate:
            return o.error_status
        return CommandStatus.ESME_ROK

    def responds(self) -> bool:
        """False for a submit that is processed but never answered."""
        rate = self._options.never_respond_rate
        return not (rate and self._silence() < rate)

    def receipt_stat(self, destination: str, registered_delivery: int) -> str | None:
        """The final state a receipt will report, or None when no receipt is sent.

        registered_delivery bits 1-0 (section 5.2.17): 1 asks for a receipt on success
        and failure, 2 on failure only (3 is reserved; treated as 1).
        """
        wanted = registered_delivery & 0x03
        if not wanted:
            return None
        stat = self._overrides.get(destination) if self._overrides else None
        if stat is None:
            if len(self._stats) == 1:
                stat = self._stats[0]
            else:
                point = self._outcome() * self._cumulative[-1]
                stat = self._stats[bisect.bisect_right(self._cumulative, point)]
        if wanted == 2 and stat == "DELIVRD":
            return None
        return stat

    def receipt_sent(self) -> bool:
        """False for a receipt dropped by ``receipt_rate``."""
        rate = self._options.receipt_rate
        return rate >= 1.0 or self._receipt() < rate


@dataclass(slots=True)
class _Partial:
    first_seen: float
    total: int
    data_coding: int
    # sequence -> (user data octets, the octets text.decode_short_message reads, esm_class, message_id)
    parts: dict[int, tuple[bytes, bytes, int, str]]


def _concatenation(
    short_message: bytes, esm_class: int, tlvs: tuple[Tlv, ...]
) -> tuple[int, int, int, int] | None:
    """(reference, total, sequence, UDH octets) of a part, or None for a whole message."""
    if esm_class & ESM_CLASS_UDHI and len(short_message) > 1:
        udhl = short_message[0]
        end = 1 + udhl
        if end <= len(short_message):
            i = 1
            while i + 2 <= end:
                iei, length = short_message[i], short_message[i + 1]
                if i + 2 + length > end:
                    break
                if iei == 0x00 and length == 3:
                    return short_message[i + 2], short_message[i + 3], short_message[i + 4], end
                if iei == 0x08 and length == 4:
                    ref = (short_message[i + 2] << 8) | short_message[i + 3]
                    return ref, short_message[i + 4], short_message[i + 5], end
                i += 2 + length
            return None
    if tlvs:
        sar_ref = tlv_int(tlvs, TlvTag.SAR_MSG_REF_NUM)
        if sar_ref is not None:
            total = tlv_int(tlvs, TlvTag.SAR_TOTAL_SEGMENTS)
            seq = tlv_int(tlvs, TlvTag.SAR_SEGMENT_SEQNUM)
            if total is not None and seq is not None:
                return sar_ref, total, seq, 0
    return None


class MessageRecorder:
    """Joins the parts ESMEs submit and records whole messages (sans-IO).

    Parts are grouped by (system_id, source, destination, reference, total); a repeated
    part replaces the earlier copy.  ``copies`` counts how often each (destination,
    text) arrived whole and ``submit_pdus`` how many PDUs carried it, which is what the
    fault tests compare to find duplicates.  With ``record_texts=False`` nothing is
    decoded or kept but the counters.
    """

    def __init__(
        self,
        *,
        record_texts: bool = True,
        gsm7_packed: bool = False,
        timeout_seconds: float = 300.0,
    ) -> None:
        self.record_texts = record_texts
        self.gsm7_packed = gsm7_packed
        self.timeout_seconds = timeout_seconds
        self.received: list[ReceivedMessage] = []
        self.copies: Counter[tuple[str, str]] = Counter()
        self.submit_pdus: Counter[tuple[str, str]] = Counter()
        self.pdus = 0
        self.parts = 0  # PDUs that were one part of a longer message
        self.messages = 0
        self.incomplete_messages = 0
        self.duplicate_messages = 0
        self.repeated_parts = 0
        self._pending: dict[tuple[str, str, str, int, int], _Partial] = {}  # insertion = age

    def pending_count(self) -> int:
        return len(self._pending)

    def add(
        self,
        system_id: str,
        source: str,
        destination: str,
        short_message: bytes,
        data_coding: int,
        esm_class: int,
        tlvs: tuple[Tlv, ...],
        message_id: str,
        now: float,
    ) -> ReceivedMessage | None:
        """Record one submitted PDU; the whole message when this completes it, else None."""
        self.pdus += 1
        if tlvs:
            payload = tlv_bytes(tlvs, TlvTag.MESSAGE_PAYLOAD)
            if payload is not None:
                short_message = payload  # section 5.3.2.32: instead of short_message
        concat = _concatenation(short_message, esm_class, tlvs)
        if concat is None or concat[1] <= 1 or not 1 <= concat[2] <= concat[1]:
            # A whole message (or a nonsensical concatenation, recorded as it is).
            self.messages += 1
            if not self.record_texts:
                return None
            text, _ = decode_short_message(
                short_message, data_coding, esm_class, gsm7_packed=self.gsm7_packed
            )
            return self._record(system_id, source, destination, text, 1, (message_id,), data_coding, now)
        ref, total, seq, udh_octets = concat
        self.parts += 1
        key = (system_id, source, destination, ref, total)
        partial = self._pending.get(key)
        if partial is None:
            partial = self._pending[key] = _Partial(now, total, data_coding, {})
        elif seq in partial.parts:
            self.repeated_parts += 1
        if self.record_texts:
            partial.parts[seq] = (short_message[udh_octets:], short_message, esm_class, message_id)
        else:
            partial.parts[seq] = (b"", b"", 0, message_id)
        if len(partial.parts) < total:
            return None
        del self._pending[key]
        self.messages += 1
        if not self.record_texts:
            return None
        ordered = [partial.parts[i] for i in range(1, total + 1)]
        if partial.data_coding == DATA_CODING_UCS2:
            # Join the octets first: an ESME may cut a surrogate pair between two parts.
            text = b"".join(p[0] for p in ordered).decode("utf-16-be", "replace")
        else:
            text = "".join(
                decode_short_message(sm, partial.data_coding, esm, gsm7_packed=self.gsm7_packed)[0]
                for _, sm, esm, _ in ordered
            )
        ids = tuple(p[3] for p in ordered)
        return self._record(system_id, source, destination, text, total, ids, partial.data_coding, now)

    def _record(
        self,
        system_id: str,
        source: str,
        destination: str,
        text: str,
        parts: int,
        message_ids: tuple[str, ...],
        data_coding: int,
        now: float,
    ) -> ReceivedMessage:
        message = ReceivedMessage(system_id, destination, text, parts, message_ids, data_coding, now, source)
        self.received.append(message)
        key = (destination, text)
        if key in self.copies:
            self.duplicate_messages += 1
        self.copies[key] += 1
        self.submit_pdus[key] += parts
        return message

    def expire(self, now: float) -> int:
        """Drop groups whose first part came ``timeout_seconds`` or more ago; how many."""
        cutoff = now - self.timeout_seconds
        dropped = 0
        while self._pending:
            key = next(iter(self._pending))
            if self._pending[key].first_seen > cutoff:
                break
            del self._pending[key]
            dropped += 1
        self.incomplete_messages += dropped
        return dropped


# ---------------------------------------------------------------------------------------
# Twisted shell
# ---------------------------------------------------------------------------------------


class _BatchTimer:
    """Items due within the same tick share one IDelayedCall; ``fire`` gets them in bulk."""

    def __init__(self, clock: Any, tick_seconds: float, fire: Callable[[list[Any]], None]) -> None:
        self._clock = clock
        self._tick = tick_seconds
        self._fire = fire
        self._buckets: dict[int, list[Any]] = {}
        self._calls: dict[int, Any] = {}  # IDelayedCall

    def add(self, delay_seconds: float, item: Any) -> None:
        now = self._clock.seconds()
        tick = math.ceil((now + delay_seconds) / self._tick)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = []
            self._calls[tick] = self._clock.callLater(
                max(0.0, tick * self._tick - now), self._run, tick
            )
        bucket.append(item)

    def _run(self, tick: int) -> None:
        del self._calls[tick]
        self._fire(self._buckets.pop(tick))

    def pending(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def cancel(self) -> None:
        for call in self._calls.values():
            call.cancel()
        self._calls.clear()
        self._buckets.clear()


class _AckWaiter:
    """Fires ``deferred`` when ``remaining`` deliver_sm have been acknowledged."""

    __slots__ = ("deferred", "remaining")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.deferred: Deferred[None] = Deferred()


class _Delivery:
    """A deliver_sm waiting in a queue: encoded once, sequence_number patched on send."""

    __slots__ = ("is_receipt", "pdu", "sent_at", "waiter")

    def __init__(self, pdu: bytes, is_receipt: bool, waiter: _AckWaiter | None = None) -> None:
        self.pdu = pdu
        self.is_receipt = is_receipt
        self.waiter = waiter
        self.sent_at = 0.0  # the simulator's clock when last written (send_deliver)


class SessionState(enum.Enum):
    """SMPP 3.4 section 2.3 session states, plus OUTBOUND (we sent outbind)."""

    OPEN = "OPEN"
    OUTBOUND = "OUTBOUND"
    BOUND_TX = "BOUND_TX"
    BOUND_RX = "BOUND_RX"
    BOUND_TRX = "BOUND_TRX"
    UNBINDING = "UNBINDING"  # we sent unbind, waiting for unbind_resp
    CLOSED = "CLOSED"


_C = CommandId
_ALWAYS: dict[int, str] = {
    _C.ENQUIRE_LINK: "_on_enquire_link",
    _C.ENQUIRE_LINK_RESP: "_on_ignored_response",
    _C.GENERIC_NACK: "_on_generic_nack",
}
_BIND: dict[int, str] = {
    _C.BIND_TRANSMITTER: "_on_bind",
    _C.BIND_RECEIVER: "_on_bind",
    _C.BIND_TRANSCEIVER: "_on_bind",
}
_BOUND: dict[int, str] = {
    **_ALWAYS,
    **dict.fromkeys(_BIND, "_on_already_bound"),
    _C.UNBIND: "_on_unbind",
    _C.UNBIND_RESP: "_on_unbind_resp",
}
_TRANSMIT: dict[int, str] = {
    _C.SUBMIT_SM: "_on_submit",
    _C.SUBMIT_MULTI: "_on_submit",
    _C.DATA_SM: "_on_submit",
    _C.QUERY_SM: "_on_not_supported",
    _C.CANCEL_SM: "_on_not_supported",
    _C.REPLACE_SM: "_on_not_supported",
}
_RECEIVE: dict[int, str] = {_C.DELIVER_SM_RESP: "_on_deliver_sm_resp"}

# Which PDU an ESME may send in which state (SMPP 3.4 table 2-1), and the method that
# handles it.  A request missing here is answered ESME_RINVBNDSTS; a response missing
# here is dropped.  enquire_link is also accepted before bind (SMPP 5.0 allows it).
HANDLERS: Final[Mapping[SessionState, Mapping[int, str]]] = MappingProxyType({
    SessionState.OPEN: {**_ALWAYS, **_BIND},
    # After our outbind, the ESME answers with bind_receiver (section 2.2.1); some
    # ESMEs bind as transceiver, which we accept.
    SessionState.OUTBOUND: {**_ALWAYS, _C.BIND_RECEIVER: "_on_bind", _C.BIND_TRANSCEIVER: "_on_bind"},
    SessionState.BOUND_TX: {**_BOUND, **_TRANSMIT},
    SessionState.BOUND_RX: {**_BOUND, **_RECEIVE},
    SessionState.BOUND_TRX: {**_BOUND, **_TRANSMIT, **_RECEIVE},
    SessionState.UNBINDING: {**_ALWAYS, **_RECEIVE, _C.UNBIND_RESP: "_on_unbind_resp"},
    SessionState.CLOSED: {},
})
_BOUND_STATE = {
    _C.BIND_TRANSMITTER: SessionState.BOUND_TX,
    _C.BIND_RECEIVER: SessionState.BOUND_RX,
    _C.BIND_TRANSCEIVER: SessionState.BOUND_TRX,
}
_BIND_RESP = {
    _C.BIND_TRANSMITTER: BindTransmitterResp,
    _C.BIND_RECEIVER: BindReceiverResp,
    _C.BIND_TRANSCEIVER: BindTransceiverResp,
}
_NOT_SUPPORTED_STATUS = {
    _C.QUERY_SM: CommandStatus.ESME_RQUERYFAIL,
    _C.CANCEL_SM: CommandStatus.ESME_RCANCELFAIL,
    _C.REPLACE_SM: CommandStatus.ESME_RREPLACEFAIL,
}
_RECEIVER_STATES = frozenset({SessionState.BOUND_RX, SessionState.BOUND_TRX})


class SmscProtocol(Protocol):
    """One SMPP session seen from the carrier's side.

    The shell frames the byte stream, dispatches by ``HANDLERS`` and writes what the
    handlers queue, once per ``dataReceived``.  The carrier's rules live in
    ``CarrierSimulator``; this class holds the per-connection state only.
    """

    def __init__(self, simulator: CarrierSimulator, outbind: tuple[str, str] | None = None) -> None:
        self.simulator = simulator
        self.system_id = ""
        self.bind_command: CommandId | None = None
        self.state = SessionState.OPEN
        self.outstanding: dict[int, _Delivery] = {}  # deliver_sm sequence_number -> delivery
        self.bound: Deferred[SmscProtocol] = Deferred()  # fires when an ESME bound here
        self.closed: Deferred[None] = Deferred()
        self._outbind = outbind
        self._out: list[bytes] = []
        self._buffer = b""
        self._pdus_received = 0
        self._drop_after = simulator.options.drop_after_pdus
        self._max_pdu_bytes = simulator.options.max_pdu_bytes
        self._sequence = 0
        self._acks_seen = False
        self._handlers: dict[int, Callable[[bytes, int, int, int], None]] = {}
        self._set_state(SessionState.OUTBOUND if outbind else SessionState.OPEN)

    # -- Twisted -----------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.simulator.session_opened(self)
        if self._outbind is not None:
            system_id, password = self._outbind
            self.send_now(encode(Outbind(self.next_sequence(), system_id=system_id, password=password)))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._set_state(SessionState.CLOSED)
        self.simulator.session_closed(self)
        if self._outbind is not None and not self.bound.called:
            # Only an outbind has a caller waiting for the bind.
            self.bound.errback(Failure(ConnectionError("connection closed before bind")))
        self.closed.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self.state is SessionState.CLOSED:
            return
        buf = self._buffer + data if self._buffer else data
        n = len(buf)
        pos = 0
        unpack_from = _HEADER.unpack_from
        while n - pos >= HEADER_LENGTH:
            length, command_id, status, sequence = unpack_from(buf, pos)
            if length < HEADER_LENGTH or length > self._max_pdu_bytes:
                # Not a PDU boundary we can trust: answer and close (no resync possible).
                self._nack(CommandStatus.ESME_RINVCMDLEN, sequence)
                self._close()
                return
            end = pos + length
            if end > n:
                break
            raw = buf[pos:end]
            pos = end
            self._pdus_received += 1
            if self._pdus_received == self._drop_after:
                self._drop(raw, command_id, status, sequence)
                return
            self._dispatch(raw, command_id, status, sequence)
            if self.state is SessionState.CLOSED:
                return
        self._buffer = buf[pos:] if pos < n else b""
        self.flush()
        if self._acks_seen:
            self._acks_seen = False
            self.simulator.pump(self.system_id)

    # -- plumbing ----------------------------------------------------------------------

    def _set_state(self, state: SessionState) -> None:
        self.state = state
        self._handlers = {cid: getattr(self, name) for cid, name in HANDLERS[state].items()}

    def _dispatch(self, raw: bytes, command_id: int, status: int, sequence: int) -> None:
        handler = self._handlers.get(command_id)
        try:
            if handler is not None:
                handler(raw, command_id, status, sequence)
            elif command_id not in PDU_CLASSES:
                self._nack(CommandStatus.ESME_RINVCMDID, sequence)
            elif not is_response(command_id):
                self.simulator.counters.bind_state_errors += 1
                self._answer_error(command_id, CommandStatus.ESME_RINVBNDSTS, sequence)
            # else: a response we did not ask for; nothing to answer.
        except PduDecodeError as e:
            log.warn(
                "undecodable {command} from {system_id}: {status}",
                command=_command_name(command_id),
                system_id=self.system_id,
                status=e.status.name,
                sequence_number=sequence,
            )
            if is_response(command_id):
                return
            self._answer_error(command_id, e.status, sequence)

    def _answer_error(self, command_id: int, status: int, sequence: int) -> None:
        """The command's own response with ``status``, or generic_nack if it has none."""
        response = PDU_CLASSES.get(command_id | 0x80000000)
        if response is None:
            self._nack(status, sequence)
        else:
            self._out.append(encode(response(sequence, status)))

    def _nack(self, status: int, sequence: int) -> None:
        self.simulator.counters.generic_nacks += 1
        self._out.append(encode(GenericNack(sequence, status)))

    def _drop(self, raw: bytes, command_id: int, status: int, sequence: int) -> None:
        """Fault injection: process the PDU, then close without answering it."""
        queued = len(self._out)
        self._dispatch(raw, command_id, status, sequence)
        del self._out[queued:]
        self.simulator.counters.dropped_connections += 1
        log.info(
            "dropping connection of {system_id} after {count} PDUs (fault injection)",
            system_id=self.system_id,
            count=self._pdus_received,
        )
        self._close()

    def _close(self) -> None:
        self.flush()
        self._set_state(SessionState.CLOSED)
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

    def next_sequence(self) -> int:
        self._sequence = self._sequence % _MAX_SEQUENCE + 1
        return self._sequence

    def queue(self, data: bytes) -> None:
        """Queue bytes; written at the end of the current batch (or by ``flush``)."""
        self._out.append(data)

    def send_now(self, data: bytes) -> None:
        self._out.append(data)
        self.flush()

    def flush(self) -> None:
        out = self._out
        if out:
            transport: Any = self.transport
            if transport is not None:
                transport.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()

    @property
    def is_receiver(self) -> bool:
        return self.state in _RECEIVER_STATES

    def send_deliver(self, delivery: _Delivery) -> None:
        """Queue ``delivery`` as a deliver_sm with the next sequence_number."""
        sequence = self.next_sequence()
        pdu = delivery.pdu
        self._out.append(pdu[:12] + _SEQUENCE.pack(sequence) + pdu[16:])
        self.outstanding[sequence] = delivery

    def unbind(self) -> None:
        """Start an orderly close: unbind, then close on unbind_resp."""
        if self.state in (SessionState.BOUND_TX, SessionState.BOUND_RX, SessionState.BOUND_TRX):
            self._set_state(SessionState.UNBINDING)
            self.send_now(encode(Unbind(self.next_sequence())))
        elif self.state is not SessionState.CLOSED:
            self._close()

    def abort(self) -> None:
        transport: Any = self.transport
        if transport is not None and self.state is not SessionState.CLOSED:
            self._set_state(SessionState.CLOSED)
            transport.abortConnection()

    # -- handlers (names from HANDLERS) ------------------------------------------------

    def _on_bind(self, raw: bytes, command_id: int, status: int, sequence: int) -> None:
        bind = decode(raw)
        assert isinstance(bind, BindTransmitter | BindReceiver | BindTransceiver)
        verdict = self.simulator.check_credentials(bind.system_id, bind.password)
        resp_class = _BIND_RESP[CommandId(command_id)]
        if verdict != CommandStatus.ESME_ROK:
            self.simulator.counters.bind_failures += 1
            log.warn(
                "bind refused for {system_id}: {status}",
                system_id=bind.system_id,
                status=status_name(verdict),
            )
            self._out.append(encode(resp_class(sequence, verdict)))
            return
        self.system_id = bind.system_id
        self.bind_command = CommandId(command_id)
        self._out.append(
            encode(
                resp_class(
                    sequence,
                    system_id=self.simulator.options.smsc_system_id,
                    tlvs=(Tlv.uint8(TlvTag.SC_INTERFACE_VERSION, SC_INTERFACE_VERSION_34),),
                )
            )
        )
        self._set_state(_BOUND_STATE[CommandId(command_id)])
        self.flush()  # the bind_resp goes before any queued deliver_sm
        self.simulator.session_bound(self)
        self.bound.callback(self)

    def _on_already_bound(self, raw: bytes, command_id: int, status: int, sequence: int) -> None:
        self._out.append(encode(_BIND_RESP[CommandId(command_id)](sequence, CommandStatus.ESME_RALYBND)))

    def _on_enquire_link(self, raw: bytes, command_id: int, status: int, sequence: int) -> None:
        self._out.append(encode(EnquireLinkResp(sequence)))

    def _on_ignored_response(self, raw: bytes, command_id: int, status: int, sequence: int) -> None:
        pass

    def _on_generic_nack(self, raw: bytes, command_id: int, status: int, sequence: int) -> None:
        # A nack for one of our deliver_sm counts as a failed delivery.
        if sequence in self.outstanding:
            self._on_deliver_sm_resp(raw, command_id, status or CommandStatus.ESME_RUNKNOWNERR, sequence)

    def _on_unbind(self, raw: bytes, command_id: int, status: int, sequence: int) -> None:
        self._out.append(encode(UnbindResp(sequence)))
        self._close()

    def _on_unbind_resp(self, raw: bytes, command_id: int, status: int, sequence: int) -> None:
        self._close()

    def _on_not_supported(self, raw: bytes, command_id: int, status: int, sequence: int) -> None:
        self._answer_error(command_id, _NOT_SUPPORTED_STATUS[CommandId(command_id)], sequence)

    def _on_submit(self, raw: bytes, command_id: int, status: int, sequence: int) -> None:
        self.simulator.handle_submit(self, decode(raw))  # type: ignore[arg-type]

    def _on_deliver_sm_resp(self, raw: bytes, command_id: int, status: int, sequence: int) -> None:
        delivery = self.outstanding.pop(sequence, None)
        if delivery is not None:
            self._acks_seen = True
            self.simulator.delivery_answered(self, delivery, status)


def _command_name(command_id: int) -> str:
    try:
        return CommandId(command_id).name.lower()
    except ValueError:
        return f"0x{command_id:08x}"


class _SmscFactory(Factory):
    noisy = False

    def __init__(self, simulator: CarrierSimulator, outbind: tuple[str, str] | None = None) -> None:
        self._simulator = simulator
        self._outbind = outbind

    def buildProtocol(self, addr: Any) -> SmscProtocol:
        return SmscProtocol(self._simulator, self._outbind)


class CarrierSimulator(Service):
    """A simulated SMSC listening on ``options.host:options.port``.

    ``port_number`` is the bound port once ``startService`` has run.  Everything the
    simulator saw is in ``received``, ``counters`` and ``report()``.
    """

    name = "smsc-sim"

    def __init__(self, options: SimulatorOptions, reactor: Any) -> None:
        self.options = options
        self._reactor = reactor
        self.counters = SimulatorCounters()
        self.rates = SubmitRateWindows()
        self.answer_times = AnswerTimes()
        self._metered_binds: set[SmscProtocol] = set()
        self.behaviour = CarrierBehaviour(options)
        self.recorder = MessageRecorder(
            record_texts=options.record_texts,
            gsm7_packed=options.gsm7_packed,
            timeout_seconds=options.reassembly_timeout_seconds,
        )
        start = options.message_id_start
        if start is None:
            start = int(time.time()) * _ID_START_PER_SECOND
        self._ids = MessageIdAllocator(
            options.message_id_style, start, rng=random.Random(f"{options.seed}:ids"),
            hex_upper=options.hex_upper,
        )
        self._receipt_id = receipt_id_converter(options.receipt_id_format, hex_upper=options.hex_upper)
        self._mo_reference = random.Random(f"{options.seed}:mo").randrange(0x10000)
        self._sessions: set[SmscProtocol] = set()
        self._receivers: dict[str, list[SmscProtocol]] = {}
        # system_id -> deliveries waiting for a receiver; "" holds MOs for any system_id.
        self._queues: dict[str, deque[_Delivery]] = {}
        self._responses = _BatchTimer(reactor, options.tick_seconds, self._send_delayed_responses)
        self._receipts = _BatchTimer(reactor, options.tick_seconds, self._enqueue_deliveries)
        self._housekeeping = LoopingCall(self._expire_partials)
        self._housekeeping.clock = reactor
        self._port: Any = None  # IListeningPort
        self._date_cache: tuple[int, str] = (-1, "")
        self._stray_ids = itertools.count(STRAY_RECEIPT_FIRST_ID)

    # -- service ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._port = self._reactor.listenTCP(
            self.options.port, _SmscFactory(self), interface=self.options.host
        )
        self._housekeeping.start(min(5.0, self.options.reassembly_timeout_seconds), now=False)
        log.info("carrier simulator listening on {host}:{port}", host=self.options.host, port=self.port_number)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._housekeeping.running:
            self._housekeeping.stop()
        steps: list[Deferred[Any]] = []
        if self._port is not None:
            steps.append(defer.maybeDeferred(self._port.stopListening))
        sessions = list(self._sessions)
        for session in sessions:
            session.unbind()
        closed = [session.closed for session in sessions if not session.closed.called]
        if closed:
            timeout = self._reactor.callLater(_UNBIND_TIMEOUT_SECONDS, self._abort_all)
            all_closed = defer.DeferredList(closed)

            def _cancel_timeout(result: Any) -> Any:
                if timeout.active():
                    timeout.cancel()
                return result

            all_closed.addBoth(_cancel_timeout)
            steps.append(all_closed)
        self._responses.cancel()
        self._receipts.cancel()
        return defer.DeferredList(steps).addCallback(lambda _: None)

    def _abort_all(self) -> None:
        for session in list(self._sessions):
            session.abort()

    @property
    def port_number(self) -> int:
        """The TCP port listened on (the real one when options.port is 0)."""
        if self._port is None:
            raise RuntimeError("the simulator is not listening")
        return int(self._port.getHost().port)

    # -- sessions ----------------------------------------------------------------------

    def session_opened(self, session: SmscProtocol) -> None:
        self.counters.connections += 1
        self._sessions.add(session)

    def session_closed(self, session: SmscProtocol) -> None:
        self._sessions.discard(session)
        if session in self._metered_binds:
            self._metered_binds.discard(session)
            self.rates.unbound(session.system_id)
        receivers = self._receivers.get(session.system_id)
        if receivers and session in receivers:
            receivers.remove(session)
        if session.outstanding:
            # Unacknowledged deliver_sm are sent again, first in line.
            queue = self._queue(session.system_id)
            for delivery in reversed(list(session.outstanding.values())):
                if delivery.is_receipt:
                    self.counters.receipts_redelivered += 1
                queue.appendleft(delivery)
            session.outstanding.clear()
            if self.running:
                self.pump(session.system_id)

    def session_bound(self, session: SmscProtocol) -> None:
        self.counters.binds += 1
        self._metered_binds.add(session)
        self.rates.bound(session.system_id)
        log.info(
            "{system_id} bound as {bind}",
            system_id=session.system_id,
            bind=session.state.value,
        )
        if session.is_receiver:
            self._receivers.setdefault(session.system_id, []).append(session)
            self.pump(session.system_id)

    def check_credentials(self, system_id: str, password: str) -> int:
        """ESME_ROK, ESME_RINVSYSID (unknown system_id) or ESME_RINVPASWD."""
        credentials = self.options.credentials
        if not credentials:
            return CommandStatus.ESME_ROK
        expected = credentials.get(system_id)
        if expected is None:
            return CommandStatus.ESME_RINVSYSID
        if expected != password:
            return CommandStatus.ESME_RINVPASWD
        return CommandStatus.ESME_ROK

    def bound_sessions(self) -> list[SmscProtocol]:
        return [s for s in self._sessions if s.state in (SessionState.BOUND_TX, SessionState.BOUND_RX, SessionState.BOUND_TRX)]

    # -- submits -----------------------------------------------------------------------

    def handle_submit(self, session: SmscProtocol, pdu: SubmitSm | SubmitMulti | DataSm) -> None:
        """Answer one submit_sm, submit_multi or data_sm and schedule its receipts."""
        counters = self.counters
        self.rates.submit(session.system_id, self._reactor.seconds())
        if isinstance(pdu, SubmitSm):
            counters.submit_sm += 1
            destinations: Iterable[str] = (pdu.destination_addr,)
            first = pdu.destination_addr
        elif isinstance(pdu, DataSm):
            counters.data_sm += 1
            destinations = (pdu.destination_addr,)
            first = pdu.destination_addr
        else:
            counters.submit_multi += 1
            destinations = ()
            first = ""  # rejected destinations are refused one by one below
        behaviour = self.behaviour
        status = behaviour.submit_status(first)
        unsuccess: list[UnsuccessSme] = []
        if isinstance(pdu, SubmitMulti) and status == CommandStatus.ESME_ROK:
            accepted = []
            for d in pdu.dest_addresses:
                if isinstance(d, SmeAddress) and d.destination_addr not in self.options.rejected_destinations:
                    accepted.append(d.destination_addr)
                else:
                    addr = d.destination_addr if isinstance(d, SmeAddress) else d.dl_name
                    unsuccess.append(UnsuccessSme(0, 0, addr, CommandStatus.ESME_RINVDSTADR))
            destinations = accepted
            if not accepted:
                status = CommandStatus.ESME_RINVDSTADR
        if status != CommandStatus.ESME_ROK:
            if status == CommandStatus.ESME_RTHROTTLED:
                counters.throttled += 1
            else:
                counters.rejected += 1
            self._respond(session, type(pdu), pdu.sequence_number, status, "")
            return
        counters.accepted += 1
        message_id = self._ids.allocate()
        now = self._reactor.seconds()
        short_message = pdu.short_message if not isinstance(pdu, DataSm) else b""
        for destination in destinations:
            self.recorder.add(
                session.system_id, pdu.source_addr, destination, short_message,
                pdu.data_coding, pdu.esm_class, pdu.tlvs, message_id, now,
            )
            self._plan_receipt(session, pdu, destination, message_id, now)
        if not behaviour.responds():
            counters.unanswered += 1
            return
        self._respond(session, type(pdu), pdu.sequence_number, CommandStatus.ESME_ROK, message_id, unsuccess)

    def _respond(
        self,
        session: SmscProtocol,
        request: type,
        sequence: int,
        status: int,
        message_id: str,
        unsuccess: list[UnsuccessSme] | None = None,
    ) -> None:
        if request is SubmitSm:
            if status == CommandStatus.ESME_ROK:
                data = encode_submit_sm_resp(sequence, message_id)
            else:
                data = encode(SubmitSmResp(sequence, status))
        elif request is DataSm:
            data = encode(DataSmResp(sequence, status, message_id=message_id))
        else:
            data = encode(SubmitMultiResp(sequence, status, message_id=message_id, unsuccess_smes=tuple(unsuccess or ())))
        if self.options.latency_seconds:
            self._responses.add(self.options.latency_seconds, (session, data))
        else:
            session.queue(data)

    def _send_delayed_responses(self, items: list[tuple[SmscProtocol, bytes]]) -> None:
        touched = set()
        for session, data in items:
            if session.state is not SessionState.CLOSED:
                session.queue(data)
                touched.add(session)
        for session in touched:
            session.flush()

    # -- receipts ------------------------------------------------------------------------

    def _plan_receipt(
        self,
        session: SmscProtocol,
        pdu: SubmitSm | SubmitMulti | DataSm,
        destination: str,
        message_id: str,
        now: float,
    ) -> None:
        behaviour = self.behaviour
        stat = behaviour.receipt_stat(destination, pdu.registered_delivery)
        if stat is None:
            return
        if not behaviour.receipt_sent():
            self.counters.receipts_skipped += 1
            return
        o = self.options
        delay = 0.0 if o.receipt_before_response else o.receipt_delay_seconds
        receipt_id = self._receipt_id(message_id)
        text = format_receipt_text(
            receipt_id, stat, self._date(now), self._date(now + delay), _receipt_excerpt(pdu)
        )
        # masked in the international form: 86137****0001
        handset = "86" + mask_phone(destination[-11:]) if o.mask_receipt_numbers else destination
        data = encode_receipt(
            handset, pdu.source_addr, text, receipt_id, RECEIPT_STATES[stat], with_tlvs=o.receipt_tlvs
        )
        copies = 2 if o.duplicate_receipts else 1
        # another account's first: they fill the gateway's room for parked receipts before
        # this one needs its place there
        deliveries = [self._stray_receipt(now) for _ in range(o.stray_receipts)] + [_Delivery(data, True)] * copies
        self.counters.receipts_scheduled += len(deliveries)
        system_id = session.system_id
        if o.receipt_before_response:
            self._queue(system_id).extend(deliveries)
            self.pump(system_id)
        else:
            for delivery in deliveries:
                self._receipts.add(delay, (system_id, delivery))

    def _stray_receipt(self, now: float) -> _Delivery:
        """An UNDELIV receipt for another account's message: an id this SMSC did not give
        this account (yet), a number the gateway never sent to."""
        stray_id = str(next(self._stray_ids))
        text = format_receipt_text(stray_id, "UNDELIV", self._date(now), self._date(now), "")
        return _Delivery(encode_receipt(STRAY_RECEIPT_NUMBER, "12123", text, stray_id, RECEIPT_STATES["UNDELIV"],
                                        with_tlvs=self.options.receipt_tlvs), True)

    def _date(self, seconds: float) -> str:
        """YYMMDDhhmm in local time; formatted once per minute."""
        minute = int(seconds // 60)
        cached_minute, text = self._date_cache
        if minute != cached_minute:
            text = time.strftime("%y%m%d%H%M", time.localtime(minute * 60))
            self._date_cache = (minute, text)
        return text

    # -- deliveries (receipts and MO) ----------------------------------------------------

    def _queue(self, system_id: str) -> deque[_Delivery]:
        queue = self._queues.get(system_id)
        if queue is None:
            queue = self._queues[system_id] = deque()
        return queue

    def _enqueue_deliveries(self, items: list[tuple[str, _Delivery]]) -> None:
        touched = set()
        for system_id, delivery in items:
            self._queue(system_id).append(delivery)
            touched.add(system_id)
        for system_id in touched:
            self.pump(system_id)

    def pump(self, system_id: str) -> None:
        """Send queued deliveries for ``system_id`` (then MOs for anyone) within the windows."""
        receivers = self._receivers.get(system_id)
        if not receivers:
            return
        own = self._queues.get(system_id)
        shared = self._queues.get("")
        if not own and not shared:
            return
        window = self.options.deliver_window
        counters = self.counters
        # Rotate so that consecutive pumps start with a different session.
        if len(receivers) > 1:
            receivers.append(receivers.pop(0))
        for session in list(receivers):
            if not session.is_receiver:
                continue  # unbinding
            room = window - len(session.outstanding)
            sent = False
            while room > 0:
                if own:
                    delivery = own.popleft()
                elif shared:
                    delivery = shared.popleft()
                else:
                    break
                delivery.sent_at = self._reactor.seconds()
                session.send_deliver(delivery)
                if delivery.is_receipt:
                    counters.receipts_sent += 1
                else:
                    counters.mo_sent += 1
                room -= 1
                sent = True
            if sent:
                session.flush()
            if not own and not shared:
                break

    def delivery_answered(self, session: SmscProtocol, delivery: _Delivery, status: int) -> None:
        """A deliver_sm_resp (or generic_nack) for one of our deliver_sm."""
        counters = self.counters
        self.answer_times.answered(delivery.is_receipt, self._reactor.seconds() - delivery.sent_at)
        if status == CommandStatus.ESME_ROK:
            if delivery.is_receipt:
                counters.receipts_acked += 1
            else:
                counters.mo_acked += 1
                waiter = delivery.waiter
                if waiter is not None:
                    waiter.remaining -= 1
                    if waiter.remaining == 0:
                        waiter.deferred.callback(None)
            return
        if delivery.is_receipt:
            counters.receipts_failed += 1
            counters.receipts_redelivered += 1
        else:
            counters.mo_failed += 1
        self._receipts.add(self.options.redeliver_delay_seconds, (session.system_id, delivery))

    # -- MO --------------------------------------------------------------------------------

    def send_mo(
        self, source: str, text: str, destination: str = "12123", *, system_id: str | None = None
    ) -> Deferred[None]:
        """Deliver a citizen's message to a bound receiver or transceiver.

        The text goes as GSM 03.38 when it can, else UCS2, split into concatenated parts
        (``options.mo_concatenation``) when long.  With ``system_id`` None any receiver
        may take it.  Queued until a receiver binds.  The Deferred fires once every part
        was acknowledged with ESME_ROK (parts refused are sent again after
        ``redeliver_delay_seconds``).
        """
        self._mo_reference = (self._mo_reference + 1) & 0xFFFF
        plan = plan_message(
            text,
            gsm7_packed=self.options.gsm7_packed,
            concatenation=self.options.mo_concatenation,
            reference=self._mo_reference,
        )
        waiter = _AckWaiter(len(plan.parts))
        queue = self._queue(system_id or "")
        for part in plan.parts:
            deliver = DeliverSm(
                0,
                source_addr=source,
                dest_addr_ton=0,
                destination_addr=destination,
                esm_class=part.esm_class,
                data_coding=part.data_coding,
                short_message=part.short_message,
                tlvs=part.tlvs,
            )
            queue.append(_Delivery(encode(deliver), False, waiter))
        self.counters.mo_queued += len(plan.parts)
        if system_id:
            self.pump(system_id)
        else:
            for receiver_system_id in list(self._receivers):
                self.pump(receiver_system_id)
        return waiter.deferred

    # -- outbind ---------------------------------------------------------------------------

    def outbind(self, host: str, port: int, system_id: str, password: str) -> Deferred[SmscProtocol]:
        """Connect to an ESME's listener and send outbind (SMPP 3.4 section 4.1.7).

        The ESME is expected to answer with bind_receiver over the same connection; its
        credentials are checked like any bind.  Fires with the session once bound;
        receipts and MOs for the ESME's system_id then flow over it.
        """
        endpoint = TCP4ClientEndpoint(self._reactor, host, port)
        factory: Any = _SmscFactory(self, (system_id, password))

        def when_bound(session: IProtocol) -> Deferred[SmscProtocol]:
            assert isinstance(session, SmscProtocol)  # what _SmscFactory builds
            return session.bound

        return endpoint.connect(factory).addCallback(when_bound)

    # -- reporting -------------------------------------------------------------------------

    @property
    def received(self) -> list[ReceivedMessage]:
        return self.recorder.received

    def _expire_partials(self) -> None:
        self.recorder.expire(self._reactor.seconds())

    def submit_pdus_for(self, destination: str, text: str) -> int:
        """How many submit PDUs carried this message (all its copies, all their parts)."""
        return self.recorder.submit_pdus[(destination, text)]

    def copies_of(self, destination: str, text: str) -> int:
        """How many times this message arrived whole."""
        return self.recorder.copies[(destination, text)]

    def queued_deliveries(self) -> int:
        return sum(len(q) for q in self._queues.values()) + self._receipts.pending()

    def report(self, per_message: bool = True) -> dict[str, Any]:
        """Counters and gauges; with texts recorded and ``per_message``, also submit PDUs
        per distinct message under ``submit_pdus_by_message`` (keys "destination text":
        one entry per message, so a poller that only wants progress leaves it out)."""
        out: dict[str, Any] = {f.name: getattr(self.counters, f.name) for f in fields(self.counters)}
        recorder = self.recorder
        out.update(
            messages=recorder.messages,
            distinct_messages=len(recorder.copies),
            parts=recorder.parts,
            incomplete_messages=recorder.incomplete_messages,
            pending_partial_messages=recorder.pending_count(),
            duplicate_messages=recorder.duplicate_messages,
            repeated_parts=recorder.repeated_parts,
            bound_sessions=len(self.bound_sessions()),
            deliveries_queued=self.queued_deliveries(),
            deliveries_outstanding=sum(len(s.outstanding) for s in self._sessions),
        )
        out.update(self.rates.report())
        out["deliver_sm_answer_times"] = self.answer_times.report()
        if self.options.record_texts and per_message:
            out["submit_pdus_by_message"] = {
                f"{destination} {text}": count
                for (destination, text), count in recorder.submit_pdus.items()
            }
        return out


def _receipt_excerpt(pdu: SubmitSm | SubmitMulti | DataSm) -> str:
    """The first 20 characters of a submitted part, as printable ASCII, for text:."""
    data = b"" if isinstance(pdu, DataSm) else pdu.short_message
    if pdu.tlvs:
        payload = tlv_bytes(pdu.tlvs, TlvTag.MESSAGE_PAYLOAD)
        if payload is not None:
            data = payload
    if pdu.esm_class & ESM_CLASS_UDHI and data:
        data = data[1 + data[0]:]
    if pdu.data_coding == DATA_CODING_UCS2:
        chars = data[:40].decode("utf-16-be", "replace")
    else:
        chars = data[:20].decode("latin-1")
    if chars.isascii() and chars.isprintable():
        return chars
    return _NOT_PRINTABLE_ASCII.sub("?", chars)


def encode_submit_sm_resp(sequence: int, message_id: str) -> bytes:
    """``encode(SubmitSmResp(sequence, message_id=message_id))`` packed directly (hot path).

    ``message_id`` must be ASCII, as the simulator's ids are.
    """
    body = message_id.encode("ascii") + b"\0"
    return _HEADER.pack(HEADER_LENGTH + len(body), CommandId.SUBMIT_SM_RESP, 0, sequence) + body


# The receipt deliver_sm's mandatory parameters after destination_addr (section 4.6.1):
# esm_class 0x04, protocol_id, priority_flag, empty schedule_delivery_time and
# validity_period, registered_delivery, replace_if_present_flag, data_coding 0, sm_default_msg_id.
_RECEIPT_MIDDLE = bytes((ESM_CLASS_DELIVERY_RECEIPT, 0, 0, 0, 0, 0, 0, DATA_CODING_DEFAULT, 0))
_TLV_HEAD = struct.Struct(">HH")
_MESSAGE_STATE_TLV = struct.Struct(">HHB")


def encode_receipt(
    source_addr: str, destination_addr: str, text: str, receipt_id: str, message_state: int,
    *, with_tlvs: bool = True,
) -> bytes:
    """A receipt deliver_sm with sequence_number 0, packed directly (hot path).

    Equal to ``encode(DeliverSm(0, source_addr=..., destination_addr=..., esm_class=0x04,
    short_message=text, tlvs=(receipted_message_id, message_state)))``; falls back to the
    codec for anything unusual (long or non-ASCII addresses), which then raises
    PduEncodeError as the codec does.
    """
    short_message = text.encode("ascii", "replace")
    tlvs = b""
    if with_tlvs:
        rid = receipt_id.encode("ascii", "replace") + b"\0"
        tlvs = (
            _TLV_HEAD.pack(TlvTag.RECEIPTED_MESSAGE_ID, len(rid)) + rid
            + _MESSAGE_STATE_TLV.pack(TlvTag.MESSAGE_STATE, 1, message_state)
        )
    if (
        len(source_addr) > 20 or len(destination_addr) > 20 or len(short_message) > 254
        or not (source_addr + destination_addr).isascii()
        or "\0" in source_addr or "\0" in destination_addr
    ):
        return encode(DeliverSm(
            0, source_addr=source_addr, destination_addr=destination_addr,
            esm_class=ESM_CLASS_DELIVERY_RECEIPT, data_coding=DATA_CODING_DEFAULT,
            short_message=short_message,
            tlvs=(Tlv.cstring(TlvTag.RECEIPTED_MESSAGE_ID, receipt_id),
                  Tlv.uint8(TlvTag.MESSAGE_STATE, message_state)) if with_tlvs else (),
        ))
    body = b"".join((
        b"\0\0\0", source_addr.encode("ascii"), b"\0\0\0", destination_addr.encode("ascii"), b"\0",
        _RECEIPT_MIDDLE, bytes((len(short_message),)), short_message, tlvs,
    ))
    return _HEADER.pack(HEADER_LENGTH + len(body), CommandId.DELIVER_SM, 0, 0) + body


# ---------------------------------------------------------------------------------------
# Command line: gateway smsc-sim
# ---------------------------------------------------------------------------------------


def _listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("expected host:port, e.g. 127.0.0.1:2775")
    return host or "0.0.0.0", int(port)


def _pair(value: str, separator: str = ":") -> tuple[str, str]:
    left, sep, right = value.partition(separator)
    if not sep or not left:
        raise argparse.ArgumentTypeError(f"expected LEFT{separator}RIGHT, got {value!r}")
    return left, right


def _weight(value: str) -> tuple[str, float]:
    stat, weight = _pair(value, "=")
    try:
        return stat.upper(), float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STAT=WEIGHT, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `gateway smsc-sim` (one per SimulatorOptions field that matters)."""
    d = SimulatorOptions()
    parser.add_argument("--listen", type=_listen_address, default=(d.host, d.port), metavar="HOST:PORT",
                        help="address to listen on (default 127.0.0.1:2775; port 0: any)")
    parser.add_argument("--system-id", dest="smsc_system_id", default=d.smsc_system_id,
                        help="system_id the simulator answers binds with")
    parser.add_argument("--account", action="append", type=_pair, default=[], metavar="SYSTEM_ID:PASSWORD",
                        help="accepted credentials (repeatable); none given: accept any bind")
    parser.add_argument("--message-id-style", choices=("decimal", "hex", "uuid"), default=d.message_id_style,
                        help="form of the message ids in submit_sm_resp")
    parser.add_argument("--message-id-start", type=int, default=None,
                        help="first message id number (default: from the clock, unique across restarts)")
    parser.add_argument("--hex-upper", action="store_true", help="upper-case hex message ids")
    parser.add_argument("--latency", type=float, default=d.latency_seconds, metavar="SECONDS",
                        help="delay before each submit response")
    parser.add_argument("--throttle-rate", type=float, default=d.throttle_rate, metavar="FRACTION",
                        help="submits answered ESME_RTHROTTLED")
    parser.add_argument("--error-rate", type=float, default=d.error_rate, metavar="FRACTION",
                        help="submits refused with ESME_RINVDSTADR")
    parser.add_argument("--reject-destination", action="append", default=[], metavar="NUMBER",
                        help="a number always refused with ESME_RINVDSTADR (repeatable)")
    parser.add_argument("--never-respond-rate", type=float, default=d.never_respond_rate, metavar="FRACTION",
                        help="submits accepted but never answered")
    parser.add_argument("--drop-after-pdus", type=int, default=0, metavar="N",
                        help="close each connection (no unbind) at its N-th PDU")
    parser.add_argument("--receipt-delay", type=float, default=d.receipt_delay_seconds, metavar="SECONDS",
                        help="delay between submit_sm_resp and the delivery receipt")
    parser.add_argument("--outcome", action="append", type=_weight, default=[], metavar="STAT=WEIGHT",
                        help="receipt outcome weights, e.g. DELIVRD=0.9 UNDELIV=0.1 (repeatable)")
    parser.add_argument("--outcome-for", action="append", type=lambda v: _pair(v, "="), default=[],
                        metavar="NUMBER=STAT", help="fixed receipt outcome for one number (repeatable)")
    parser.add_argument("--receipt-id-format", choices=("as_is", "hex_of_decimal", "decimal_of_hex"),
                        default=d.receipt_id_format,
                        help="how the id in a receipt relates to the submit_sm_resp id (carrier quirks)")
    parser.add_argument("--receipt-before-response", action="store_true",
                        help="send the receipt before the submit_sm_resp (a race real SMSCs show)")
    parser.add_argument("--duplicate-receipts", action="store_true",
                        help="send every receipt twice")
    parser.add_argument("--mask-receipt-numbers", action="store_true",
                        help="receipts carry the handset masked (86138****5678)")
    parser.add_argument("--stray-receipts", type=int, default=0, metavar="N",
                        help="before every receipt, N for ids this SMSC never gave (another account's)")
    parser.add_argument("--receipt-rate", type=float, default=d.receipt_rate, metavar="FRACTION",
                        help="share of submits that get a receipt at all")
    parser.add_argument("--no-receipt-tlvs", dest="receipt_tlvs", action="store_false",
                        help="receipts with the text only (no receipted_message_id/message_state)")
    parser.add_argument("--deliver-window", type=int, default=d.deliver_window,
                        help="deliver_sm (receipts, MOs) outstanding at once per session")
    parser.add_argument("--no-record-texts", dest="record_texts", action="store_false",
                        help="keep counters only (benchmarks)")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="random seed (outcomes, errors), for repeatable runs")
    parser.add_argument("--mo", action="append", type=_pair, default=[], metavar="SOURCE:TEXT",
                        help="a citizen's message to deliver once a receiver binds (repeatable)")
    parser.add_argument("--mo-destination", default="12123",
                        help="destination_addr of the --mo messages")
    parser.add_argument("--outbind", type=_listen_address, default=None, metavar="HOST:PORT",
                        help="send outbind to the gateway's listener at HOST:PORT")
    parser.add_argument("--outbind-system-id", default="SIMSMSC",
                        help="system_id the --outbind sends")
    parser.add_argument("--outbind-password", default="",
                        help="password the --outbind sends")
    parser.add_argument("--report-interval", type=float, default=5.0, metavar="SECONDS",
                        help="how often the simulator prints its counters")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after this long (default: until interrupted)")


def options_from_args(args: argparse.Namespace) -> SimulatorOptions:
    """SimulatorOptions from parsed `smsc-sim` flags; raises ValueError if inconsistent."""
    host, port = args.listen
    return SimulatorOptions(
        host=host,
        port=port,
        smsc_system_id=args.smsc_system_id,
        credentials=dict(args.account),
        message_id_style=args.message_id_style,
        message_id_start=args.message_id_start,
        hex_upper=args.hex_upper,
        latency_seconds=args.latency,
        throttle_rate=args.throttle_rate,
        error_rate=args.error_rate,
        rejected_destinations=frozenset(args.reject_destination),
        never_respond_rate=args.never_respond_rate,
        drop_after_pdus=args.drop_after_pdus,
        receipt_delay_seconds=args.receipt_delay,
        outcome_weights=dict(args.outcome) if args.outcome else {"DELIVRD": 1.0},
        outcome_overrides={number: stat.upper() for number, stat in args.outcome_for},
        receipt_id_format=args.receipt_id_format,
        receipt_before_response=args.receipt_before_response,
        duplicate_receipts=args.duplicate_receipts,
        stray_receipts=args.stray_receipts,
        mask_receipt_numbers=args.mask_receipt_numbers,
        receipt_rate=args.receipt_rate,
        receipt_tlvs=args.receipt_tlvs,
        deliver_window=args.deliver_window,
        record_texts=args.record_texts,
        seed=args.seed,
    )


def report_line(report: Mapping[str, Any]) -> str:
    """One human line of counters (no numbers or texts of citizens)."""
    return (
        "smsc-sim: bound={bound_sessions} submits={submits} accepted={accepted} "
        "throttled={throttled} rejected={rejected} unanswered={unanswered} messages={messages} "
        "receipts sent={receipts_sent} acked={receipts_acked} queued={deliveries_queued} "
        "mo sent={mo_sent} acked={mo_acked} drops={dropped_connections}"
    ).format(submits=report["submit_sm"] + report["submit_multi"] + report["data_sm"], **report)


def run_from_args(
    args: argparse.Namespace, reactor: Any, out: IO[str] | None = None
) -> Deferred[None]:
    """Start a simulator from `smsc-sim` flags; fires when it has stopped.

    Prints a report line every ``--report-interval`` seconds and a last one on exit
    (reactor shutdown or ``--duration``).  MO sources are printed masked.
    """
    stream = out if out is not None else sys.stdout
    simulator = CarrierSimulator(options_from_args(args), reactor)
    simulator.startService()
    print(f"smsc-sim: listening on {simulator.options.host}:{simulator.port_number}", file=stream, flush=True)

    for source, text in args.mo:
        simulator.send_mo(source, text, args.mo_destination)
        print(f"smsc-sim: MO from {mask_phone(source)} queued", file=stream, flush=True)
    if args.outbind is not None:
        host, port = args.outbind

        def _outbind_failed(failure: Failure) -> None:
            print(f"smsc-sim: outbind to {host}:{port} failed: {failure.getErrorMessage()}", file=stream, flush=True)

        simulator.outbind(host, port, args.outbind_system_id, args.outbind_password).addErrback(_outbind_failed)

    ticker = LoopingCall(lambda: print(report_line(simulator.report()), file=stream, flush=True))
    ticker.clock = reactor
    ticker.start(args.report_interval, now=False)
    finished: Deferred[None] = Deferred()

    def stop() -> Deferred[None]:
        if ticker.running:
            ticker.stop()
        if not simulator.running:
            return defer.succeed(None)
        d = simulator.stopService()

        def _final(_: Any) -> None:
            print(report_line(simulator.report()), file=stream, flush=True)
            if not finished.called:
                finished.callback(None)

        return d.addCallback(_final)

    # stop() is idempotent: the shutdown trigger may also run after a --duration stop.
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    if args.duration is not None:
        reactor.callLater(args.duration, stop)
    return finished


def main(argv: list[str] | None = None) -> None:
    """Run `smsc-sim` on its own: ``python -m gateway.smpp.simulator --listen 127.0.0.1:2776``."""
    parser = argparse.ArgumentParser(prog="smsc-sim", description="SMPP 3.4 carrier (SMSC) simulator")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        options_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    import asyncio

    from twisted.internet import asyncioreactor

    if "twisted.internet.reactor" not in sys.modules:
        asyncioreactor.install(asyncio.new_event_loop())
    from twisted.internet import task

    task.react(lambda reactor: run_from_args(args, reactor))


if __name__ == "__main__":
    main()
