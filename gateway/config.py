"""The configuration schema: every key, its type, unit, default and help text.

Theory of operation
-------------------
`gateway.yaml` is read with a YAML loader that remembers the source text of every plain
scalar.  YAML 1.1 (pyyaml) turns an unquoted ``22:00`` into the sexagesimal number 1320 and
``12123`` into an integer; a field whose type is ``str`` takes the *source text* instead, so
times, short codes and phone numbers come out as the strings they mean.  A ``str`` field
whose source is not a string at all (a list, a mapping) is an error naming the key.

Sections are frozen dataclasses.  `load_config` walks them by their type hints, collects
*every* problem (unknown key, wrong type, missing value, number out of range, value not in
its choices, missing referenced file, unset ``${VAR}``) and raises one `ConfigError` that
lists them, each as ``file: key.path: problem`` (buildbot's config errors are the model).
The CLI turns that into exit code 2.  A component receives only its own section.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = [
    "AmiConfig",
    "CarrierConfig",
    "Config",
    "ConfigError",
    "FastAgiConfig",
    "HttpConfig",
    "IvrConfig",
    "LoggingConfig",
    "PartnerAccount",
    "PushConfig",
    "RedisConfig",
    "Secret",
    "SmppServerConfig",
    "StatusClassOverride",
    "inspect_config",
    "load_config",
    "operational_warnings",
    "parse_listen",
]


class ConfigError(Exception):
    """One or more problems in a configuration file; `problems` lists them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class Secret:
    """A value from the environment (``${VAR}``) or the file that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class ReferencedFile(str):
    """A path relative to the config file's folder; it must exist."""


def _help(text: str, *, unit: str = "", minimum: float | None = None,
          maximum: float | None = None, choices: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"help": text, "unit": unit, "minimum": minimum, "maximum": maximum, "choices": choices}


def setting(default: Any = MISSING, *, help: str, unit: str = "", minimum: float | None = None,
            maximum: float | None = None, choices: tuple[str, ...] = (),
            default_factory: Any = MISSING) -> Any:
    meta = _help(help, unit=unit, minimum=minimum, maximum=maximum, choices=choices)
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


_TIME_OF_DAY = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_LISTEN = re.compile(r"^(?P<host>[^:]*|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:8123' -> ('127.0.0.1', 8123); port 0 means any free port."""
    match = _LISTEN.match(value)
    if not match:
        raise ValueError("expected host:port, e.g. 127.0.0.1:8123")
    port = int(match["port"])
    if port > 65535:
        raise ValueError("port above 65535")
    return match["host"].strip("[]") or "0.0.0.0", port


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisConfig:
    url: str = setting("embedded", help="'embedded' starts a private redis-server; else a redis:// or rediss:// URL (password, TLS, database number)")
    prefix: str = setting("12123:", help="prefix of every key the gateway writes")
    data_dir: str = setting("var/redis", help="data directory of the embedded server (append-only file, log, Unix socket: a socket path is at most 107 bytes), relative to the working directory")
    reconnect_max_delay_seconds: float = setting(10.0, help="cap of the reconnect backoff", unit="s", minimum=0.1, maximum=300)
    max_connections: int = setting(1000, help="connections to Redis at most; beyond, commands wait for a free one", minimum=4, maximum=100_000)
    cluster_nodes: tuple[str, ...] = setting((), help="seed nodes of a Redis Cluster, host:port each; empty: a single Redis at redis.url.  With a cluster, redis.url names one node and gives the credentials and TLS for all, and push.partitions must be more than 1 (docs/redis-schema.md)")


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = setting(True, help="serve the admin and intake HTTP API")
    listen: str = setting("127.0.0.1:8123", help="address:port of the HTTP API")
    token: Secret = setting(default_factory=lambda: Secret(""), help="bearer token for /v1/*; empty refuses every /v1 call")
    max_body_bytes: int = setting(1_048_576, help="larger request bodies get 413", unit="bytes", minimum=1024, maximum=64 * 1024 * 1024)
    max_batch: int = setting(1000, help="most notifications in one POST", minimum=1, maximum=100_000)
    # The API's clients are core systems, monitoring and the console: a few connections each.
    max_connections: int = setting(100, help="HTTP connections at once; beyond, a new connection gets 503 with Retry-After and is closed", minimum=1, maximum=100_000)
    idle_timeout_seconds: float = setting(60.0, help="a connection with no request for this long is closed (twisted.web's default is 12 h)", unit="s", minimum=1, maximum=86_400)
    carrier_down_grace_seconds: float = setting(60.0, help="/readyz says not ready when a carrier that carries traffic (enabled, not stopped or isolated by an operator) has had no bound session for longer than this", unit="s", minimum=0, maximum=86_400)


@dataclass(frozen=True)
class StatusClassOverride:
    status: int = setting(help="a command_status, e.g. 0x08 (hex as in the carrier's documentation) or 8", minimum=1, maximum=0xFFFFFFFF)
    treat_as: str = setting(help="temporary (retry later), permanent (refused: fail over), throttled (slow down, resend the part), bind (rebind the session, retry)", choices=("temporary", "permanent", "throttled", "bind"))


@dataclass(frozen=True)
class CarrierConfig:
    name: str = setting(help="short name, used in logs, metrics and notification state (e.g. cmcc)")
    host: str = setting(help="SMSC host name or address")
    port: int = setting(help="SMSC port", minimum=1, maximum=65535)
    system_id: str = setting(help="bind system_id (max 15 characters)")
    password: Secret = setting(help="bind password (max 8 characters); use ${VAR}")
    prefixes: tuple[str, ...] = setting(help="number prefixes this carrier serves, e.g. ['134', '135', '1703']")
    enabled: bool = setting(True, help="bind this carrier")
    tls: bool = setting(False, help="connect with TLS")
    system_type: str = setting("", help="bind system_type")
    bind_mode: str = setting("transceiver", help="one transceiver, or a transmitter and a receiver", choices=("transceiver", "transmitter_receiver"))
    sessions: int = setting(1, help="number of parallel binds", minimum=1, maximum=32)
    window: int = setting(50, help="outstanding requests per session", minimum=1, maximum=10_000)
    tps_limit: float = setting(100.0, help="submit_sm per second over all sessions (token bucket)", unit="1/s", minimum=0.1, maximum=100_000)
    enquire_link_interval_seconds: float = setting(30.0, help="enquire_link after this much idle time", unit="s", minimum=1, maximum=3600)
    response_timeout_seconds: float = setting(10.0, help="a request unanswered this long is given up (submit: state unknown, retried)", unit="s", minimum=0.1, maximum=600)
    source_addr: str = setting("12123", help="source address of submits (the short code)")
    source_addr_ton: int = setting(0, help="source TON (0 unknown, 1 international, 3 network specific, 5 alphanumeric)", minimum=0, maximum=6)
    source_addr_npi: int = setting(0, help="source NPI", minimum=0, maximum=18)
    dest_addr_ton: int = setting(0, help="destination TON", minimum=0, maximum=6)
    dest_addr_npi: int = setting(1, help="destination NPI (1 E.164)", minimum=0, maximum=18)
    registered_delivery: int = setting(1, help="registered_delivery for the parts that ask for a receipt (1 asks for one)", minimum=0, maximum=255)
    receipt_parts: str = setting("every", help="which parts of a long message ask for a receipt: every part (delivered when all are), the first only (as Kannel does: delivered when part 1 is; half the receipts), or the last only (as many SMPP clients do, and SMSCs that report a long message once, under its last part's id)", choices=("every", "first", "last"))
    encoding: str = setting("auto", help="auto: GSM 03.38 when it carries the text, else UCS2", choices=("auto", "ucs2", "gsm7"))
    gsm7_packed: bool = setting(False, help="pack GSM 7-bit septets (most SMSCs want one septet per octet)")
    concatenation: str = setting("udh8", help="how long messages are joined", choices=("udh8", "udh16", "sar", "payload"))
    max_parts: int = setting(6, help="a longer message is refused, never cut", minimum=1, maximum=255)
    message_id_format: str = setting("as_is", help="how receipt ids relate to submit_sm_resp ids", choices=("as_is", "hex_to_dec", "dec_to_hex"))
    reconnect_initial_seconds: float = setting(1.0, help="first reconnect delay", unit="s", minimum=0.01, maximum=600)
    reconnect_max_seconds: float = setting(60.0, help="reconnect delay cap", unit="s", minimum=0.1, maximum=3600)
    bind_rejected_retry_seconds: float = setting(300.0, help="retry delay after the SMSC refuses our credentials", unit="s", minimum=0.1, maximum=86400)
    accept_outbind: bool = setting(False, help="accept outbind from this carrier on the listener")
    outbind_system_id: str = setting("", help="system_id the carrier's outbind carries (default: our system_id)")
    outbind_password: Secret = setting(default_factory=lambda: Secret(""), help="password the carrier's outbind carries")
    data_coding_0_alphabet: str = setting("gsm7", help="what data_coding 0 means in this SMSC's deliver_sm (MOs): gsm7 (GSM 03.38, the SMPP default), ascii (IA5) or latin-1", choices=("gsm7", "ascii", "latin-1"))
    accepts_other_carriers: bool = setting(False, help="take other carriers' numbers when their carrier is down or refused a message (failover); the three big carriers interconnect for 12123")
    failover_after_seconds: float = setting(30.0, help="after this carrier lost its bind, how long its numbers wait for it to reconnect before going to a carrier that accepts them", unit="s", minimum=0, maximum=3600)
    validity_period: str = setting("relative", help="submit_sm validity_period from the notification's expiry (template validity, expires_at): relative (YYMMDDhhmmss000R, independent of the SMSC's clock), absolute (UTC, YYMMDDhhmmsst00+) or off (empty: the SMSC's default)", choices=("relative", "absolute", "off"))
    priority_flag_high_lane: int = setting(1, help="submit_sm priority_flag for high-lane notifications (verification codes, bookings); 0 switches priority off; normal and bulk are always 0", minimum=0, maximum=3)
    error_classes: tuple[StatusClassOverride, ...] = setting((), help="overrides of the submit_sm_resp error classes (docs/smpp.md), e.g. [{status: 0x45, treat_as: temporary}]")
    unreadable_receipt_resend: bool = setting(True, help="answer a receipt that cannot be read (no id or stat in any reading) with ESME_RX_T_APPN so the SMSC sends it again; false: ESME_RX_P_APPN (the SMSC drops it)")
    failover_for: tuple[str, ...] = setting((), help="names of carriers whose number prefixes this carrier also lists on purpose, as their failover; without it the same prefix on two carriers is a configuration error (check-config)")
    # Fleet-wide limits of the carrier account, shared by every gateway process through Redis (docs/fleet.md).
    account_tps: float = setting(0.0, help="submit_sm per second of the whole account over every gateway process (GCRA in Redis); 0: only the per-process tps_limit", unit="1/s", minimum=0, maximum=100_000)
    max_binds: int = setting(0, help="binds of the account over every gateway process (leases in Redis); a process that gets no lease does not bind; 0: no fleet-wide limit", minimum=0, maximum=1000)
    bind_lease_seconds: float = setting(15.0, help="a bind lease of a process that died (SIGKILL) frees after this long; renewed every fifth of it", unit="s", minimum=1, maximum=600)


@dataclass(frozen=True)
class PartnerAccount:
    system_id: str = setting(help="partner ESME system_id")
    password: Secret = setting(help="partner password; use ${VAR}")
    allowed_networks: tuple[str, ...] = setting(("127.0.0.0/8",), help="source networks (CIDR) the partner may bind from")
    allowed_bind_types: tuple[str, ...] = setting(("transmitter", "receiver", "transceiver"), help="bind types the partner may use")
    tps_limit: float = setting(50.0, help="submits per second the partner may send", unit="1/s", minimum=0.1, maximum=100_000)
    message_id_format: str = setting("hex32", help="message ids this partner gets in submit_sm_resp and receipts: hex32 (p + 32 hex digits, part k: <id>-<k>), decimal10 (0000000042) or hex8 (0000002A) for fixed-width parsers", choices=("hex32", "decimal10", "hex8"))
    data_coding_0_alphabet: str = setting("gsm7", help="what data_coding 0 means in this partner's submit_sm: gsm7 (GSM 03.38, the SMPP default), ascii (IA5) or latin-1", choices=("gsm7", "ascii", "latin-1"))
    # A partner needs a transmitter and a receiver per process it runs (a few processes);
    # one account holding every connection of the listener would starve the others.
    max_sessions: int = setting(10, help="sessions the partner may have bound at once; one more bind gets ESME_RBINDFAIL", minimum=1, maximum=1000)


@dataclass(frozen=True)
class SmppServerConfig:
    enabled: bool = setting(True, help="listen for binds and outbinds")
    listen: str = setting("0.0.0.0:2775", help="address:port of the SMPP listener")
    tls_certificate: str = setting("", help="PEM file with certificate and key; empty: plain TCP")
    system_id: str = setting("12123GW", help="system_id the gateway answers binds with")
    accounts: tuple[PartnerAccount, ...] = setting((), help="partner ESMEs allowed to bind")
    max_pdu_bytes: int = setting(65_536, help="a larger command_length closes the session", unit="bytes", minimum=64, maximum=1_048_576)
    max_bind_failures: int = setting(5, help="failed binds from one address before lock-out", minimum=1, maximum=1000)
    bind_failure_window_seconds: float = setting(300.0, help="window counting failed binds", unit="s", minimum=1, maximum=86400)
    lockout_seconds: float = setting(900.0, help="lock-out after too many failed binds", unit="s", minimum=1, maximum=86400)
    enquire_link_interval_seconds: float = setting(30.0, help="enquire_link after this much idle time", unit="s", minimum=1, maximum=3600)
    response_timeout_seconds: float = setting(10.0, help="request timeout towards partners", unit="s", minimum=0.1, maximum=600)
    window: int = setting(100, help="outstanding deliver_sm per partner session", minimum=1, maximum=10_000)
    # Each connection costs a file descriptor and up to ~130 KiB of buffers (one 64 KiB
    # read of requests and the transport's 64 KiB output bound); 200 leaves most of the
    # 1,024 descriptors of systemd's default limit to FastAGI, HTTP and Redis.
    max_connections: int = setting(200, help="connections open at once, bound or not; beyond, a new connection is closed at once", minimum=1, maximum=100_000)


@dataclass(frozen=True)
class QuietHours:
    start: str = setting("22:00", help="start of quiet hours, HH:MM")
    end: str = setting("08:00", help="end of quiet hours, HH:MM")
    timezone: str = setting("Asia/Shanghai", help="IANA time zone of quiet hours and daily caps")


# Registration classes of seed 001 (gateway.domain.people.UserClass values).
USER_CLASSES = ("internet", "learner", "counter")


@dataclass(frozen=True)
class UserRights:
    """Which registration classes may do what through one channel (seed 001: internet-
    registered users may query; learners only exam matters; users verified face to face
    everything).  Defaults follow the seed; see docs/notifications.md, "User classes"."""

    query_bookings: tuple[str, ...] = setting(USER_CLASSES, help="classes that may hear their exam bookings", choices=USER_CLASSES)
    cancel_booking: tuple[str, ...] = setting(("learner", "counter"), help="classes that may cancel an exam booking", choices=USER_CLASSES)
    query_points: tuple[str, ...] = setting(("internet", "counter"), help="classes that may hear licence status and points", choices=USER_CLASSES)
    query_violations: tuple[str, ...] = setting(("internet", "counter"), help="classes that may hear violations to handle and points", choices=USER_CLASSES)
    query_vehicles: tuple[str, ...] = setting(("internet", "counter"), help="classes that may hear their vehicles' inspection status", choices=USER_CLASSES)


@dataclass(frozen=True)
class MoConfig:
    rate_limit_per_minute: int = setting(10, help="MOs per number per minute before the number is ignored", minimum=1, maximum=1000)
    ignore_seconds: float = setting(600.0, help="how long a flooding number is ignored", unit="s", minimum=1, maximum=86400)
    cancel_code_ttl_seconds: float = setting(600.0, help="validity of the six-digit cancel confirmation code", unit="s", minimum=30, maximum=86400)
    rights: UserRights = setting(default_factory=UserRights, help="which user classes may query and cancel by SMS")


@dataclass(frozen=True)
class PushConfig:
    enabled: bool = setting(True, help="run the notification pipeline")
    templates_file: ReferencedFile = setting(ReferencedFile("templates.yaml"), help="notification texts, relative to this file")
    consumer_group: str = setting("gateway", help="consumer group on the intake stream")
    consumer_name: str = setting("", help="intake stream consumer name, and the owner of voice calls across restarts; empty: host name and pid, and voice calls owned by this run only; the MO streams are read as this name + '-mo' (empty: host name, and pid with several partitions).  Leases, partition ownership and status reports always add a run id of their own (gateway/fleet/names.py)")
    batch_size: int = setting(200, help="entries read from the intake stream at a time", minimum=1, maximum=10_000)
    max_in_flight: int = setting(2000, help="notifications being submitted at once", minimum=1, maximum=100_000)
    lease_seconds: float = setting(30.0, help="a notification being submitted by a process that died is retried after this long", unit="s", minimum=1, maximum=3600)
    claim_idle_seconds: float = setting(60.0, help="pending intake entries idle this long are claimed again (XAUTOCLAIM)", unit="s", minimum=1, maximum=86400)
    retention_days: float = setting(30.0, help="how long notification state is kept", unit="days", minimum=0.01, maximum=3650)
    max_attempts: int = setting(5, help="submit attempts before a transient failure becomes final", minimum=1, maximum=100)
    max_link_losses: int = setting(20, help="times a submit may be cut off by its link going away (lost, not bound) without spending an attempt; beyond that each counts as one", minimum=0, maximum=1000)
    receipt_timeout_seconds: float = setting(172_800.0, help="a submitted notification whose asked-for receipt has not come after this long becomes unconfirmed (final); 0: wait for ever; at most push.retention_days", unit="s", minimum=0, maximum=2_592_000)
    # 1,000,000: ten times what may be parked legitimately at once, a fleet's receipts
    # (4,500/s: three carriers at 1,500 submit_sm/s) over the 30 s lease of a process that
    # died between its submits and their record (135,000); about 300 MB of Redis
    # (measured on redis-server 7.0: 165 bytes a parked receipt, 128 its place in the count).
    early_receipts_max: int = setting(1_000_000, help="receipts parked at once while they wait for their submit to be recorded (they beat its submit_sm_resp, or belong to no message of ours), in the whole pipeline (each partition parks its share); beyond it the oldest are dropped and counted (gateway12123_push_receipts_unparked_total)", minimum=1, maximum=100_000_000)
    retry_initial_seconds: float = setting(2.0, help="first retry delay", unit="s", minimum=0.01, maximum=3600)
    retry_max_seconds: float = setting(300.0, help="retry delay cap", unit="s", minimum=0.01, maximum=86400)
    daily_cap_bulk: int = setting(3, help="bulk reminders per number per day", minimum=1, maximum=1000)
    quiet_hours: QuietHours = setting(default_factory=QuietHours, help="hours in which reminders are held")
    mo: MoConfig = setting(default_factory=MoConfig, help="citizens' messages to 12123")
    # Partitions: gateway/store/keys.py (crc32 of the id), docs/redis-schema.md.
    events: str = setting("all", help="which notification state changes are appended to the events stream: all, final (delivered, undeliverable, unconfirmed, expired, failed, rejected: one XADD per notification instead of about four), off; the notification's hash keeps every <state>_at either way", choices=("all", "final", "off"))
    intake_wait_replicas: int = setting(0, help="after recording a batch of intake, WAIT until this many replicas of each partition's Redis have it (at most 1 s, then a warning and go on; a master that fell short is not waited for again for 10 s): with 1, an accepted notification survives its master's failover; 0: do not wait", minimum=0, maximum=5)
    delivery_wait_replicas: int = setting(0, help="after recording what a carrier delivers (receipts, citizens' messages), WAIT until this many replicas of the partition's Redis have it before deliver_sm_resp, and the message-id index entries of an accepted submit before the submit is recorded (at most 1 s, then a warning and go on, and that master not waited for again for 10 s; a master lost meanwhile: an error status, the carrier delivers again): with 1, what the carrier was told is recorded survives its master's failover; 0: do not wait", minimum=0, maximum=5)
    partition_lease_seconds: float = setting(10.0, help="with more than 1 partition each is owned by one process at a time (it reads the partition's intake stream, claims from its lanes, runs its sweeps); a process that died (SIGKILL) has its partitions taken over by the others after this long; renewed every fifth of it (docs/redis-schema.md, partition ownership)", unit="s", minimum=2, maximum=600)
    ledger_engine: str = setting("scripts", help="where the ledger's logic runs: scripts (Lua in Redis) or steps (the same logic in the gateway, its writes sent in MULTI/EXEC under a per-partition writer lock: about 0.6 of the scripts' Redis CPU per notification, docs/benchmarks.md); steps needs push.partitions 1 on a single Redis", choices=("scripts", "steps"))
    partitions: int = setting(1, help="partitions of the notification pipeline; more than 1 tags every pipeline key {pN} so that it spreads over a Redis Cluster (e.g. 16); changing it needs an empty pipeline (docs/redis-schema.md)", minimum=1, maximum=1024)


@dataclass(frozen=True)
class FastAgiConfig:
    enabled: bool = setting(True, help="serve FastAGI")
    listen: str = setting("127.0.0.1:4573", help="address:port of the FastAGI server")
    max_line_bytes: int = setting(8192, help="longest AGI line accepted", unit="bytes", minimum=256, maximum=1_048_576)
    # A command's reply comes when its prompt has played or its keys are in; the keys'
    # wait is added per command (GET DATA: timeout x max digits), so this only has to
    # cover the longest prompt: a reminder read out, under a minute.
    reply_timeout_seconds: float = setting(90.0, help="a command Asterisk has not answered after this long, plus the command's own key wait (GET DATA: timeout x max digits; WAIT FOR DIGIT: its timeout), ends the call (caller gone, peer stuck); longer than the longest prompt", unit="s", minimum=5, maximum=3600)
    # Asterisk opens one connection per call in progress; the trunk's channels bound that.
    # 500 calls leave room in systemd's default 1,024 descriptors for the SMPP listener
    # (200), HTTP (100) and Redis.
    max_connections: int = setting(500, help="FastAGI connections (calls) at once; beyond, a new call is asked to play the system_error apology and is closed", minimum=1, maximum=100_000)
    allow: tuple[str, ...] = setting(("127.0.0.0/8", "::1/128"), help="networks (CIDR) Asterisk may connect from; anyone who reaches the port can claim any caller id, so keep it to the Asterisk hosts")


@dataclass(frozen=True)
class IvrConfig:
    fastagi: FastAgiConfig = setting(default_factory=FastAgiConfig, help="FastAGI server")
    menus_file: ReferencedFile = setting(ReferencedFile("ivr.yaml"), help="voice menus, relative to this file")
    sounds_dir: str = setting("var/sounds", help="where `gateway prompts build` writes prompts, relative to the working directory")
    attempts_per_hour: int = setting(5, help="failed identity checks per caller number and booking number (or ID-number check) per hour", minimum=1, maximum=1000)
    # Limits a stranger cannot turn against the owner (gateway/ivr/attempts.py): 10 a day
    # gives the owner room for typing errors while a guesser gets 10 tries, not one per
    # spoofed number; 60 a minute is far above what callers mistype at the busiest hour.
    attempts_per_booking_per_day: int = setting(10, help="failed identity checks on one booking number per day, from any caller number; beyond, the booking answers only with the way forward (SMS, agent)", minimum=1, maximum=10_000)
    attempts_per_caller_per_hour: int = setting(20, help="failed identity checks per caller number per hour over all booking numbers (one number cannot walk through them)", minimum=1, maximum=10_000)
    enumeration_failures_per_minute: int = setting(60, help="failed identity checks per minute over all callers above which enumeration is suspected: logged, counted, and a caller number that failed before gets no further check", minimum=1, maximum=1_000_000)
    service_hours: str = setting("08:30-17:30", help="hours in which calls may go to an agent, HH:MM-HH:MM")
    agent_queue: str = setting("12123-agents", help="Asterisk queue for agents")
    # A reminder call reads an intro and the text (20-40 s with the built prompts), then
    # offers to repeat (5 s): 60 s lets one in progress at SIGTERM end normally.  systemd's
    # TimeoutStopSec must exceed it (deploy/).
    voice_drain_seconds: float = setting(60.0, help="on SIGTERM, how long calls in progress (menus, reminders) may go on before they are cut off and recorded as interrupted by shutdown", unit="s", minimum=0, maximum=600)
    rights: UserRights = setting(default_factory=UserRights, help="which user classes may query and cancel by phone")


@dataclass(frozen=True)
class AmiConfig:
    enabled: bool = setting(False, help="connect to Asterisk's AMI for outbound voice reminders")
    host: str = setting("127.0.0.1", help="Asterisk host")
    port: int = setting(5038, help="AMI port", minimum=1, maximum=65535)
    username: str = setting("gateway12123", help="AMI user (see dialplans/manager.conf)")
    secret: Secret = setting(default_factory=lambda: Secret(""),
                             help="AMI secret, manager.conf's for the user: ${ASTERISK_AMI_SECRET}")
    md5_challenge: bool = setting(True, help="log in with the MD5 challenge instead of the plain secret")
    trunk: str = setting("PJSIP/{number}@carrier-trunk", help="Originate channel; {number} is replaced")
    context: str = setting("12123-reminder", help="dialplan context of reminder calls")
    caller_id: str = setting("12123", help="caller id of reminder calls")
    max_concurrent_calls: int = setting(10, help="outbound calls at once on the trunk", minimum=1, maximum=10_000)
    originate_timeout_seconds: float = setting(30.0, help="ring time", unit="s", minimum=1, maximum=600)
    keepalive_seconds: float = setting(20.0, help="Ping interval", unit="s", minimum=1, maximum=3600)
    # Fleet-wide concurrent calls on the trunk, shared by every gateway process through Redis (docs/fleet.md).
    trunk_max_calls: int = setting(0, help="calls at once on the trunk over every gateway process (call slots leased in Redis); 0: only max_concurrent_calls per process", minimum=0, maximum=100_000)
    call_slot_lease_seconds: float = setting(30.0, help="a call slot of a process that died frees after this long, and its open calls are taken over by another process; renewed every fifth of it", unit="s", minimum=1, maximum=3600)


@dataclass(frozen=True)
class LoggingConfig:
    format: str = setting("text", help="text for terminals, json for JSON lines", choices=("text", "json"))
    level: str = setting("info", help="lowest level logged", choices=("debug", "info", "warn", "error"))
    timezone: str = setting("Asia/Shanghai", help="IANA time zone of the log lines' times (text and JSON; ISO 8601 with the offset in JSON)")


@dataclass(frozen=True)
class Config:
    redis: RedisConfig = setting(default_factory=RedisConfig, help="Redis connection")
    http: HttpConfig = setting(default_factory=HttpConfig, help="HTTP admin and intake API")
    carriers: tuple[CarrierConfig, ...] = setting((), help="SMSC links, one per carrier")
    smpp_server: SmppServerConfig = setting(default_factory=SmppServerConfig, help="SMPP listener")
    push: PushConfig = setting(default_factory=PushConfig, help="notification pipeline")
    ivr: IvrConfig = setting(default_factory=IvrConfig, help="voice menus")
    ami: AmiConfig = setting(default_factory=AmiConfig, help="AMI client")
    logging: LoggingConfig = setting(default_factory=LoggingConfig, help="logging")
    drain_timeout_seconds: float = setting(10.0, help="on SIGTERM, how long in-flight work may take", unit="s", minimum=0, maximum=3600)
    state_dir: str = setting("var", help="runtime files: the outcomes Redis still refused at shutdown (push-unrecorded-outcomes.json, recorded at the next start), relative to the working directory like every folder the gateway writes (files it reads are relative to this file)")
    # Where the file came from; set by load_config, not a YAML key.
    source_path: str = field(default="", metadata={"internal": True})

    def resolve(self, relative: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        base = Path(self.source_path).parent if self.source_path else Path.cwd()
        return (base / relative).resolve()

    def state_path(self) -> Path:
        """`state_dir`, relative to the working directory, as `redis.data_dir` and
        `ivr.sounds_dir`: folders the gateway writes go where it runs (systemd's
        WorkingDirectory, its StateDirectory), not beside a configuration that may be
        read-only (/etc under ProtectSystem=strict, deploy/gateway12123.service)."""
        return Path(self.state_dir).resolve()

    def state_path_before(self) -> Path:
        """Where gateways before 2026-12-05 kept `state_dir`: relative to the config file.
        A hand-over file left there is still recorded at start (PushService)."""
        return self.resolve(self.state_dir)


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


class _Scalar:
    """Mixin for YAML scalars that remember the text they were written as."""

    source: str


class _SourceInt(int, _Scalar):
    pass


class _SourceFloat(float, _Scalar):
    pass


class _SourceBool(int, _Scalar):
    """bool cannot be subclassed; an int 0/1 that knows it was a YAML boolean."""

    is_bool = True


class _SourceLoader(yaml.SafeLoader):
    pass


# The same loader on libyaml's parser where PyYAML has it (its wheels do): a config, its
# templates and menus parse about five times faster.  On an error the pure-Python parser
# reads the text again: its messages name what it found ("found character '\t' that
# cannot start any token", "found undefined alias 'y'"), libyaml's do not.
_FastSourceLoader: Any = type("_FastSourceLoader", (yaml.CSafeLoader,), {}) if hasattr(yaml, "CSafeLoader") else None


def _remember(kind: type, base: str) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        value = getattr(yaml.SafeLoader, base)(loader, node)
        wrapped = kind(value)
        wrapped.source = node.value
        return wrapped

    return construct


for _loader in (_SourceLoader, _FastSourceLoader):
    if _loader is not None:
        _loader.add_constructor("tag:yaml.org,2002:int", _remember(_SourceInt, "construct_yaml_int"))
        _loader.add_constructor("tag:yaml.org,2002:float", _remember(_SourceFloat, "construct_yaml_float"))
        _loader.add_constructor("tag:yaml.org,2002:bool", _remember(_SourceBool, "construct_yaml_bool"))

# ${VAR} must be set; ${VAR:-default} falls back (so the committed examples run the demo).
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

T = TypeVar("T")


def read_yaml(path: Path) -> Any:
    """Parse a YAML file with scalars that keep their source text; raises ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    try:
        if _FastSourceLoader is not None:
            try:
                return yaml.load(text, Loader=_FastSourceLoader)  # noqa: S506 - CSafeLoader subclass
            except yaml.YAMLError:
                pass  # read again below, for the message
        return yaml.load(text, Loader=_SourceLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{path}:{where}: not valid YAML: {getattr(e, 'problem', e)}"]) from None


_TYPE_HINTS: dict[Any, dict[str, Any]] = {}  # one entry per config section class: a few dozen


def _type_hints(cls: Any) -> dict[str, Any]:
    """The resolved annotations of a config section, once per class: resolving them
    (``from __future__ import annotations``: strings, compiled and evaluated) was a fifth
    of a config's load time, for every section and every load."""
    hints = _TYPE_HINTS.get(cls)
    if hints is None:
        hints = _TYPE_HINTS[cls] = typing.get_type_hints(cls)
    return hints


class _Builder:
    def __init__(self, file: str, environ: typing.Mapping[str, str], base_dir: Path) -> None:
        self.file = file
        self.environ = environ
        self.base_dir = base_dir
        self.problems: list[str] = []
        # Key paths with a problem: the checks across keys skip them and what is under
        # them, so one bad value is reported once, not again as a knock-on effect.
        self.failed_paths: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{self.file}: {path or '(top level)'}: {message}")
        self.failed_paths.append(path)

    def build(self, cls: type[T], data: Any, path: str) -> T:
        """The section `cls` from `data`; every problem is recorded, and a value that has
        one is replaced by its default (or a placeholder, when required) so that the
        checks of the other sections and keys still run: one range error under
        ``carriers`` must not hide the problems elsewhere."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.problem(path, f"expected a mapping of settings, got {_describe(data)}")
            return typing.cast(T, _placeholder(cls))
        hints = _type_hints(cls)
        known = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}  # type: ignore[arg-type]
        for key in data:
            if key not in known:
                suggestion = _closest(str(key), known)
                self.problem(_join(path, str(key)), "unknown key" + (f" (did you mean '{suggestion}'?)" if suggestion else ""))
        values: dict[str, Any] = {}
        for name, f in known.items():
            key_path = _join(path, name)
            required = f.default is MISSING and f.default_factory is MISSING
            if name in data:
                value = self.convert(hints[name], data[name], key_path, f.metadata)
                if value is not _INVALID:
                    values[name] = value
                elif required:
                    values[name] = _placeholder(hints[name])
            elif required:
                self.problem(key_path, "required value missing")
                values[name] = _placeholder(hints[name])
        return cls(**values)

    def convert(self, hint: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> Any:
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if value is None:
                return None
            return self.convert(args[0], value, path, meta)
        if origin is tuple:
            item_hint = typing.get_args(hint)[0]
            if not isinstance(value, list):
                self.problem(path, f"expected a list, got {_describe(value)}")
                return _INVALID
            items = [self.convert(item_hint, item, f"{path}[{i}]", meta) for i, item in enumerate(value)]
            return _INVALID if any(i is _INVALID for i in items) else tuple(items)
        if is_dataclass(hint):
            return self.build(hint, value, path)  # type: ignore[arg-type]
        if hint is Secret:
            text = self.string(value, path, {}, secret=True)
            return _INVALID if text is _INVALID else self.secret(text, path)
        if hint is ReferencedFile:
            text = self.convert(str, value, path, {})
            if text is _INVALID:
                return _INVALID
            missing = _missing_file(self.base_dir / text)
            if missing:
                self.problem(path, missing)
                return _INVALID
            return ReferencedFile(text)
        if hint is str:
            return self.string(value, path, meta)
        if hint is bool:
            if getattr(value, "is_bool", False) or isinstance(value, bool):
                return bool(value)
            self.problem(path, f"expected true or false, got {_describe(value)}")
            return _INVALID
        if hint in (int, float):
            if getattr(value, "is_bool", False) or isinstance(value, bool) or not isinstance(value, (int, float)):
                self.problem(path, f"expected a number, got {_describe(value)}")
                return _INVALID
            if hint is int and isinstance(value, float):
                self.problem(path, f"expected a whole number, got {value}")
                return _INVALID
            source = getattr(value, "source", "")  # the YAML text, kept by our loader's numbers
            if ":" in source:
                self.problem(path, f"'{source}' is read by YAML 1.1 as the number {int(value)}; write a plain number")
                return _INVALID
            number = hint(value)
            low, high = meta.get("minimum"), meta.get("maximum")
            if low is not None and number < low or high is not None and number > high:
                unit = meta.get("unit") or ""
                self.problem(path, f"{number} is out of range [{low:g}, {high:g}]{' ' + unit if unit else ''}")
                return _INVALID
            return number
        raise TypeError(f"config schema uses unsupported type {hint!r} at {path}")

    def string(self, value: Any, path: str, meta: typing.Mapping[str, Any], *, secret: bool = False) -> Any:
        if isinstance(value, _Scalar):
            # YAML 1.1 read 22:00 as 1320 and 12123 as an int: take what was written.
            text = value.source
        elif isinstance(value, str):
            text = value
        elif value is None:
            self.problem(path, "required value missing (empty)")
            return _INVALID
        else:
            # A secret's value is never echoed, not even as the wrong type it was read as.
            hint = " (quote it in YAML)" if isinstance(value, (dt.date, dt.time)) else ""
            self.problem(path, f"expected text, got {_describe(value, secret=secret)}{hint}")
            return _INVALID
        text = self.expand(text, path, secret=secret)
        if text is _INVALID:
            return _INVALID
        choices = meta.get("choices") or ()
        if choices and text not in choices:
            self.problem(path, f"'{text}' is not one of: {', '.join(choices)}")
            return _INVALID
        return text

    def expand(self, text: str, path: str, *, secret: bool = False) -> Any:
        """Replace ``${VAR}`` and ``${VAR:-default}`` as POSIX sh does: the default is
        used when VAR is unset *or empty*.  ``${VAR}`` unset is a problem; set but empty,
        it is a problem for a secret (an empty password or token must be a decision
        written in the file, never an accident of the environment)."""
        unset: list[str] = []
        empty: list[str] = []

        def value_of(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = self.environ.get(name)
            if value:
                return value
            if default is not None:
                return default
            (unset if value is None else empty).append(name)
            return ""

        expanded = _ENV_REF.sub(value_of, text)
        if unset:
            self.problem(path, f"environment variable {', '.join(unset)} is not set")
            return _INVALID
        if empty and secret:
            self.problem(path, f"environment variable {', '.join(empty)} is empty")
            return _INVALID
        return expanded

    def secret(self, text: str, path: str) -> Secret:
        return Secret(text)


_INVALID: Any = object()


def _missing_file(path: Path) -> str | None:
    """What is wrong with a file the config refers to, or None if it is a readable-looking file.

    pathlib's is_file() answers False only for the usual misses; a name longer than the
    file system allows (ENAMETOOLONG) or a directory it may not search (EACCES) raise.
    """
    try:
        if path.is_file():
            return None
    except OSError as e:
        return f"cannot use {str(path)[:120]}: {e.strerror}"
    return f"file not found: {path}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any, *, secret: bool = False) -> str:
    """What a wrong value is, for a problem; with `secret` only its kind, never the value."""
    if getattr(value, "is_bool", False) or isinstance(value, bool):
        return "a boolean" if secret else f"the boolean {getattr(value, 'source', value)!r}"
    if isinstance(value, _Scalar) or isinstance(value, (int, float)):
        return "a number" if secret else f"the number {getattr(value, 'source', value)}"
    if isinstance(value, dt.datetime):
        return "a date and time" if secret else f"the date and time {value.isoformat()}"
    if isinstance(value, dt.date):
        return "a date" if secret else f"the date {value.isoformat()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}" if secret else repr(value)


def _placeholder(hint: Any) -> Any:
    """A stand-in for a required value that had a problem (already reported), so that
    the rest of the file can still be built and checked."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return None
    if origin is tuple:
        return ()
    if is_dataclass(hint):
        hints = _type_hints(hint)
        return hint(**{f.name: _placeholder(hints[f.name]) for f in fields(hint)  # type: ignore[operator]
                       if f.default is MISSING and f.default_factory is MISSING and not f.metadata.get("internal")})
    if hint is Secret:
        return Secret("")
    if hint is ReferencedFile:
        return ReferencedFile("")
    if hint is bool:
        return False
    if hint in (str, int, float):
        return hint()
    raise TypeError(f"config schema uses unsupported type {hint!r}")


def _closest(key: str, known: typing.Iterable[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return match[0] if match else None


def _check_semantics(config: Config, add: typing.Callable[[str, str], None]) -> None:
    """Checks across keys that the type walk cannot express."""
    if config.redis.url != "embedded" and not re.match(r"^(redis|rediss|unix)://", config.redis.url):
        add("redis.url", "expected 'embedded' or a redis://, rediss:// or unix:// URL")
    for key, listen in (("http.listen", config.http.listen), ("smpp_server.listen", config.smpp_server.listen),
                        ("ivr.fastagi.listen", config.ivr.fastagi.listen)):
        try:
            parse_listen(listen)
        except ValueError as e:
            add(key, f"'{listen}': {e}")
    for key, value in (("push.quiet_hours.start", config.push.quiet_hours.start),
                       ("push.quiet_hours.end", config.push.quiet_hours.end)):
        if not _TIME_OF_DAY.match(value):
            add(key, f"'{value}' is not a time of day HH:MM (quote it in YAML: \"22:00\")")
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(config.push.quiet_hours.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        add("push.quiet_hours.timezone", f"unknown time zone '{config.push.quiet_hours.timezone}'")
    try:
        zoneinfo.ZoneInfo(config.logging.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        add("logging.timezone", f"unknown time zone '{config.logging.timezone}'")
    if config.push.receipt_timeout_seconds > config.push.retention_days * 86_400:
        # the record could expire while still waiting, and then never reach a final state
        add("push.receipt_timeout_seconds",
            f"{config.push.receipt_timeout_seconds:g} s is longer than push.retention_days "
            f"({config.push.retention_days:g} days): a notification could expire while waiting for its receipt")
    for i, node in enumerate(config.redis.cluster_nodes):
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            add(f"redis.cluster_nodes[{i}]", f"'{node}' is not host:port")
    if config.redis.cluster_nodes:
        if config.redis.url == "embedded":
            add("redis.url", "'embedded' with redis.cluster_nodes: give a redis:// or rediss:// URL of one cluster node (its credentials and TLS apply to all)")
        if config.push.partitions < 2:
            # one partition keeps untagged key names, which a cluster spreads over slots
            add("push.partitions", "a Redis Cluster (redis.cluster_nodes) needs more than 1 partition, e.g. 16")
    if config.push.ledger_engine == "steps" and (config.push.partitions > 1 or config.redis.cluster_nodes):
        # With several partitions, submits' index entries are written in other partitions
        # outside any step's lock, and a Cluster's transactions would need MOVED/ASK.
        add("push.ledger_engine", "steps runs on a single Redis with push.partitions 1; use scripts with "
                                  "several partitions or a Redis Cluster")
    if config.redis.url == "embedded":
        # The embedded redis-server has no replica: every wait would take its bound (1 s).
        for key in ("intake_wait_replicas", "delivery_wait_replicas"):
            if getattr(config.push, key):
                add(f"push.{key}", "the embedded redis-server has no replica to wait for: "
                                   "set 0, or point redis.url at a Redis with replicas")
    hours = config.ivr.service_hours.split("-")
    if len(hours) != 2 or not all(_TIME_OF_DAY.match(h) for h in hours):
        add("ivr.service_hours", f"'{config.ivr.service_hours}' is not HH:MM-HH:MM")
    if config.ami.enabled and not config.ami.secret.reveal():
        # Asterisk would refuse every login (and slow the retries to the auth-failure delay).
        add("ami.secret", "empty while ami.enabled is true: set ASTERISK_AMI_SECRET to the secret of "
                          f"'{config.ami.username}' in manager.conf")
    names: set[str] = set()
    for i, carrier in enumerate(config.carriers):
        where = f"carriers[{i}]"
        if carrier.name in names:
            add(f"{where}.name", f"duplicate carrier name '{carrier.name}'")
        names.add(carrier.name)
        if len(carrier.system_id) > 15:
            add(f"{where}.system_id", "longer than 15 characters (SMPP 3.4 limit)")
        if len(carrier.password.reveal()) > 8:
            add(f"{where}.password", "longer than 8 characters (SMPP 3.4 limit)")
        if not carrier.prefixes and carrier.enabled:
            add(f"{where}.prefixes", "an enabled carrier needs at least one number prefix")
        for j, prefix in enumerate(carrier.prefixes):
            if not prefix.isdigit():
                add(f"{where}.prefixes[{j}]", f"'{prefix}' is not a digit string")
        if carrier.reconnect_initial_seconds > carrier.reconnect_max_seconds:
            add(f"{where}.reconnect_initial_seconds", "greater than reconnect_max_seconds")
        seen_statuses: set[int] = set()
        for j, override in enumerate(carrier.error_classes):
            if override.status in seen_statuses:
                add(f"{where}.error_classes[{j}].status", f"0x{override.status:08X} is listed twice")
            seen_statuses.add(override.status)
        if (carrier.account_tps or carrier.max_binds) and ("{" in carrier.name or "}" in carrier.name):
            # The name is the account's Redis hash tag ({acct:<name>}).
            add(f"{where}.name", "may not contain { or } when account_tps or max_binds is set")
        if 0 < carrier.account_tps < 1:
            add(f"{where}.account_tps", f"{carrier.account_tps:g} is below 1 per second (0 switches the limit off)")
    for i, account in enumerate(config.smpp_server.accounts):
        for j, network in enumerate(account.allowed_networks):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                add(f"smpp_server.accounts[{i}].allowed_networks[{j}]", f"'{network}' is not a network (CIDR)")
        for j, bind_type in enumerate(account.allowed_bind_types):
            if bind_type not in ("transmitter", "receiver", "transceiver"):
                add(f"smpp_server.accounts[{i}].allowed_bind_types[{j}]", f"'{bind_type}' is not transmitter, receiver or transceiver")
    for j, network in enumerate(config.ivr.fastagi.allow):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            add(f"ivr.fastagi.allow[{j}]", f"'{network}' is not a network (CIDR)")
    _check_secrets(config, add)
    _check_listeners(config, add)
    _check_shared_prefixes(config, add)
    if config.smpp_server.tls_certificate:
        missing = _missing_file(config.resolve(config.smpp_server.tls_certificate))
        if missing:
            add("smpp_server.tls_certificate", missing)
    _check_directories(config, add)


def _check_directories(config: Config, add: typing.Callable[[str, str], None]) -> None:
    """The folders the gateway creates at run time, as it will resolve them: a file in the
    way or an unusable name would otherwise show only then (the embedded Redis at start-up,
    with a traceback; state_dir only when a shutdown has outcomes to hand over)."""
    from gateway.store.embedded import UNIX_SOCKET_PATH_MAX_BYTES, embedded_socket_path

    folders = [("state_dir", config.state_path())]
    if config.redis.url == "embedded":
        folders.append(("redis.data_dir", Path(config.redis.data_dir).resolve()))
    if config.ivr.fastagi.enabled:
        folders.append(("ivr.sounds_dir", Path(config.ivr.sounds_dir).resolve()))
    for key, folder in folders:
        problem = _directory_problem(folder)
        if problem:
            add(key, problem)
        elif key == "redis.data_dir":
            socket = str(embedded_socket_path(folder)).encode()
            if len(socket) > UNIX_SOCKET_PATH_MAX_BYTES:
                add(key, f"the embedded server's socket {folder}/redis.sock would be {len(socket)} bytes long; "
                         f"a Unix socket path is at most {UNIX_SOCKET_PATH_MAX_BYTES}: choose a shorter folder")


def _directory_problem(folder: Path) -> str | None:
    """Why `folder` cannot be a directory the gateway creates and uses, or None.  Whether
    this user may write there is not checked: check-config may run as another user."""
    try:
        for candidate in (folder, *folder.parents):
            if candidate.exists():
                if candidate.is_dir():
                    return None
                return f"{candidate} is a file, not a directory"
    except OSError as e:  # a name too long (ENAMETOOLONG), a folder we may not search
        return f"cannot use {str(folder)[:120]}: {e.strerror}"
    return None


def _check_secrets(config: Config, add: typing.Callable[[str, str], None]) -> None:
    """Empty passwords and tokens are refused (issue 12: a partner bound with an empty
    password that an empty environment variable gave it)."""
    for i, carrier in enumerate(config.carriers):
        if not carrier.password:
            add(f"carriers[{i}].password", "empty: the SMSC bind needs a password")
    for i, account in enumerate(config.smpp_server.accounts):
        if not account.password:
            add(f"smpp_server.accounts[{i}].password", "empty: anyone could bind as this partner")


def _check_listeners(config: Config, add: typing.Callable[[str, str], None]) -> None:
    """Two enabled listeners on one port (same address, or either on all addresses)."""
    listeners = [("http.listen", config.http.listen, config.http.enabled),
                 ("smpp_server.listen", config.smpp_server.listen, config.smpp_server.enabled),
                 ("ivr.fastagi.listen", config.ivr.fastagi.listen, config.ivr.fastagi.enabled)]
    seen: list[tuple[str, str, int]] = []
    wildcard = {"0.0.0.0", "::", ""}
    for key, listen, enabled in listeners:
        if not enabled:
            continue
        try:
            host, port = parse_listen(listen)
        except ValueError:
            continue  # reported above
        if port == 0:
            continue  # any free port: never the same
        for other_key, other_host, other_port in seen:
            if port == other_port and (host == other_host or host in wildcard or other_host in wildcard):
                add(key, f"port {port} is also {other_key}'s ({other_host}:{other_port}): one of them would fail to listen")
        seen.append((key, host, port))


def _check_shared_prefixes(config: Config, add: typing.Callable[[str, str], None]) -> None:
    """The same number prefix on two carriers is a mistake unless declared as failover."""
    names = {carrier.name for carrier in config.carriers}
    owner: dict[str, tuple[int, str]] = {}
    for i, carrier in enumerate(config.carriers):
        for j, name in enumerate(carrier.failover_for):
            if name not in names or name == carrier.name:
                add(f"carriers[{i}].failover_for[{j}]", f"'{name}' is not another carrier's name")
        for j, prefix in enumerate(carrier.prefixes):
            first = owner.get(prefix)
            if first is None:
                owner[prefix] = (i, carrier.name)
                continue
            k, other = first
            if other == carrier.name:
                add(f"carriers[{i}].prefixes[{j}]", f"'{prefix}' is listed twice")
            elif other not in carrier.failover_for and carrier.name not in config.carriers[k].failover_for:
                add(f"carriers[{i}].prefixes[{j}]",
                    f"'{prefix}' is also a prefix of carriers[{k}] ({other}); if {carrier.name} is meant as "
                    f"its failover, say so with failover_for: [{other}]")


def load_config(path: str | Path, environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read and check a gateway.yaml; raises ConfigError listing every problem found."""
    config, problems, _ = inspect_config(path, environ)
    if problems:
        raise ConfigError(problems)
    return config


def inspect_config(path: str | Path,
                   environ: typing.Mapping[str, str] | None = None) -> tuple[Config, list[str], list[str]]:
    """The config, every problem in it and its `operational_warnings` (each
    ``file: key.path: what``), without raising.

    With problems, values that had one are defaults or placeholders: the config is for
    reporting, not for running.
    """
    path = Path(path)
    data = read_yaml(path)
    builder = _Builder(str(path), os.environ if environ is None else environ, path.resolve().parent)
    problems = builder.problems
    if data is None:
        # An empty file (or only comments) is a mistake, not "all defaults": the gateway
        # would run with no carrier and no token.
        problems.append(f"{path}: (top level): the file is empty (no settings)")
        builder.failed_paths.append("")  # nothing else to say about defaults
    config = _replace(builder.build(Config, data, ""), source_path=str(path.resolve()))
    failed = tuple(builder.failed_paths)

    def add(key: str, message: str) -> None:
        if not any(_under(key, bad) for bad in failed):
            problems.append(f"{path}: {key}: {message}")

    _check_semantics(config, add)
    warnings = [w for w in operational_warnings(config)
                if not any(_under(w.split(": ")[1], bad) for bad in failed)]
    return config, problems, warnings


def operational_warnings(config: Config) -> list[str]:
    """Settings that load but quietly switch something off; `gateway check-config` reports
    them as problems (exit 2) and `gateway run` logs them at start.

    An empty ``http.token`` refuses every /v1 call (401): the core systems' intake over
    HTTP is off although ``http.enabled`` is true.
    """
    found: list[str] = []
    if config.http.enabled and not config.http.token:
        found.append(f"{config.source_path}: http.token: empty: every /v1 call is refused (401); "
                     "set a token (e.g. ${GATEWAY_HTTP_TOKEN}), or http.enabled: false")
    return found


def _under(key: str, path: str) -> bool:
    """Whether `key` is `path` or below it (``carriers[0].port`` is under ``carriers``)."""
    return key == path or key.startswith(path + ".") or key.startswith(path + "[") or not path


def default_config_path() -> Path:
    """config/gateway.yaml of the source tree (the embedded defaults of `make demo`)."""
    return Path(__file__).resolve().parent.parent / "config" / "gateway.yaml"


def _replace(obj: T, **changes: Any) -> T:
    import dataclasses

    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def describe_schema(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key path, type, default, help) for every key: the config reference in docs/."""
    rows: list[tuple[str, str, str, str]] = []
    hints = _type_hints(cls)
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        hint = hints[f.name]
        key = _join(prefix, f.name)
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
        if is_dataclass(inner):
            suffix = "[]" if typing.get_origin(hint) is tuple else ""
            rows.extend(describe_schema(inner, key + suffix))  # type: ignore[arg-type]
            continue
        if f.default is not MISSING:
            default = repr(f.default)
        elif f.default_factory is not MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        unit = f.metadata.get("unit")
        type_name = getattr(hint, "__name__", str(hint)) + (f" ({unit})" if unit else "")
        rows.append((key, type_name, default, f.metadata.get("help", "")))
    return rows


def reference_markdown() -> str:
    """docs/configuration.md, generated from the schema (`gateway config-reference`)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `gateway/config.py` by `gateway config-reference`; do not edit by hand.",
        "Secrets take `${VAR}` (must be set) or `${VAR:-default}`. Times of day are `HH:MM` text.",
        "",
        "Rules `gateway check-config` applies besides each key's type and range (every problem is",
        "reported, one line each as `file: key.path: problem`, exit code 2; a problem in one key",
        "does not hide problems in others):",
        "",
        "- `${VAR:-default}` takes the default when VAR is unset **or empty** (as POSIX sh does);",
        "  `${VAR}` unset is an error, and so is `${VAR}` set to an empty string in a secret",
        "  (`carriers[].password`, `smpp_server.accounts[].password`, `http.token`, `ami.secret`...).",
        "- Empty passwords are refused (`carriers[].password`, `smpp_server.accounts[].password`);",
        "  so is an empty `ami.secret` while `ami.enabled`. An empty `http.token` while `http.enabled`",
        "  is reported by check-config (every /v1 call would get 401) and logged by `gateway run`.",
        "- A secret's value is never printed, not even in a type error (`password: 2024-01-01`",
        "  is \"expected text, got a date (quote it in YAML)\").",
        "- An empty file is an error, not \"OK (0 carriers)\".",
        "- Two enabled listeners (`http.listen`, `smpp_server.listen`, `ivr.fastagi.listen`; `/metrics`",
        "  is served on `http.listen`) may not share a port on the same address or on all addresses.",
        "- The same number prefix on two carriers is an error unless the later one names the other",
        "  in `failover_for` (or the other way round).",
        "- The folders the gateway creates (`state_dir`; `redis.data_dir` with the embedded server;",
        "  `ivr.sounds_dir` with FastAGI), relative to the working directory (the files it reads,",
        "  such as `push.templates_file` and `ivr.menus_file`, are relative to the config file),",
        "  may not have a file in their way, nor a name the file system refuses; the embedded",
        "  server's socket `<redis.data_dir>/redis.sock` must fit a Unix socket path (107 bytes).",
        "  Whether the gateway's user may write there is not checked (check-config may run as another).",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, type_name, default, help_text in describe_schema():
        lines.append(f"| `{key}` | {type_name} | `{default}` | {help_text} |")
    return "\n".join(lines) + "\n"
