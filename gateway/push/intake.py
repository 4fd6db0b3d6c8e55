"""Intake: three doors (Redis stream, HTTP, CLI), one validation, one acceptance.

Theory of operation
-------------------
A request has the fields ``id`` (the caller's idempotency key), ``type``, ``to``,
``params`` (a JSON object; a JSON string on the stream), optional ``priority``
(high|normal|bulk; default: the template's), ``expires_at`` (Unix seconds) and
``channel`` (sms|voice|auto; default sms).

`validate_request` is the sans-IO core: mapping in, `ValidRequest` or `Rejection` out,
time as a number.  Rejection reasons name what is wrong: ``unknown type 'x'``,
``missing parameter 'plate'``, ``not a Chinese mobile number``, ``bad priority 'x'``,
``bad channel 'x'``, ``malformed params JSON``, the exam-date rule of a ``send_before``
template, ``text too long``.  Numbers are normalised (+86, 0086, 86, full-width digits).

`Intake.accept_many` turns validated requests into `AcceptItem`s (queue now, schedule for
the end of quiet hours, expired, voice hand-off, reject) and records the batch with one
Lua call (`NotificationLedger.accept`), which is idempotent per id: the same id handed in
twice sends one message.  The HTTP resource, the partner door and the stream consumer
all call it; the CLI's `enqueue` writes to the stream.

The stream consumer reads ``keys.notify_stream`` with a consumer group (XREADGROUP COUNT
batch_size), so several gateway processes share the work.  An entry is XACKed (and
deleted) by the same script that records its outcome, never before; entries left
pending by a crashed process are claimed with XAUTOCLAIM after `claim_idle_seconds` and
finished (acceptance being idempotent, finishing twice is harmless).
"""

from __future__ import annotations

import enum
import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError
from twisted.logger import Logger

from gateway.privacy import InvalidPhoneNumber, mask_phone, normalise_cn_mobile
from gateway.push.index import PAUSE_AFTER_FAILURE_SECONDS
from gateway.push.queue import Priority, QuietHoursPolicy, local_day
from gateway.push.render import BadParameter, MissingParameter, TemplateSet, exam_start
from gateway.push.render import parse_date as parse_date  # re-exported: callers import it from here
from gateway.push.state import AcceptItem, AcceptOutcome, NotificationLedger, public_view
from gateway.records import hot_record
from gateway.store.keys import Keys
from gateway.store.service import REDIS_ERRORS
from gateway.store.streams import autoclaim_entries, read_group_entries

__all__ = [
    "Channel",
    "Intake",
    "IntakeConsumer",
    "Rejection",
    "ValidRequest",
    "enqueue",
    "status",
    "validate_request",
]

log = Logger()
# Rejections logged one by one per batch (the rest are counted in one line).
REJECTIONS_LOGGED_PER_BATCH = 10

# Ids become part of Redis keys (inside a {hash tag}) and of the URL /v1/notifications/{id}.
_ID = re.compile(r"^[A-Za-z0-9._:@+=-]{1,128}$")
# Longest text accepted: 6 UCS2 parts of 67 characters (the carriers' default max_parts);
# a link refuses longer messages anyway, and refusing here names the reason.
DEFAULT_MAX_TEXT_CHARS = 6 * 67
# The events stream's cap, as the ledger's scripts keep it (NotificationLedger events_maxlen).
EVENTS_MAXLEN = 1_000_000
# A late booking confirmation for an exam this close also goes by voice when the SMS
# fails (channel auto): a day is the span in which an unread SMS may be the only notice.
LATE_VOICE_WITHIN_HOURS = 24.0


class Channel(enum.StrEnum):
    SMS = "sms"
    VOICE = "voice"
    AUTO = "auto"  # SMS first; a phone call when the SMS ends undeliverable or failed


@hot_record
class ValidRequest:
    id: str
    type: str
    digits: str
    params_json: str
    text: str
    priority: Priority
    channel: Channel
    expires_at: float
    quiet_hours: bool
    requested_expires_at: str = ""
    # send_before types: sent later than due (e.g. a booking confirmation less than two
    # days before the exam); hours between acceptance and the date (exam start).
    late: bool = False
    lead_hours: float | None = None


@dataclass(frozen=True)
class Rejection:
    id: str
    reason: str
    type: str = ""
    to_raw: str = ""
    params_json: str = ""
    priority: str = ""
    channel: str = ""


def new_id() -> str:
    return uuid.uuid4().hex


# A plain decimal number as JSON writes it: no NaN, Infinity, hex, or "1_000".
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
# Unix seconds before 2100-01-01 UTC: a notification's life is days; a larger value is
# a unit mistake (milliseconds) or garbage such as 1e300, which would be stored with 300
# digits and break every client that reads it back.
MAX_UNIX_SECONDS = 4_102_444_800.0


def parse_unix_seconds(text: str) -> float:
    """A finite Unix time in [0, MAX_UNIX_SECONDS]; ValueError says what is wrong."""
    if not _DECIMAL.fullmatch(text):
        raise ValueError("not a decimal number of Unix seconds (NaN and Infinity are not numbers)")
    value = float(text)
    if not 0 <= value <= MAX_UNIX_SECONDS:
        raise ValueError(f"out of range: Unix seconds from 0 to {MAX_UNIX_SECONDS:.0f} (2100-01-01)")
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# Text that cannot be stored: a lone UTF-16 surrogate, from a JSON escape ("\\ud800", half
# of an emoji cut in two) or from an octet that is not UTF-8 in a stream entry (read with
# surrogateescape, gateway/store/streams.py).  Redis takes UTF-8 only: one such field failed
# the acceptance of its whole batch (HTTP 500) or, from a stream, every retry of it.
_SURROGATES = re.compile("[\ud800-\udfff]")
# Control characters a text may not carry to an SMSC: C0 but tab, line feed and carriage
# return, and DEL.  SMSCs differ on them: some cut the message at a NUL (OpenSIPS
# proto_smpp, opensips#1935), some count it wrong and refuse the part (RestComm,
# smscgateway#253); none shows them to a citizen.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _not_text(value: Any) -> bool:
    if not isinstance(value, str) or value.isascii():
        return False
    try:
        value.encode("utf-8")  # half the time of a regex search, and no copy is kept
    except UnicodeEncodeError:
        return True
    return False


def _clean(value: Any) -> Any:
    """`value` with every lone surrogate replaced by U+FFFD (mappings: keys and values)."""
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, Mapping):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def _field_not_text(raw: Mapping[str, Any]) -> str:
    """The first field (or params.<name>) of a request that is not storable text, or ''.
    Every request passes here: ASCII names and values (nearly all) are cleared by
    str.isascii() in place, without a call per field; params given as JSON text are
    checked once parsed, with the parameters (validate_request)."""
    for name, value in raw.items():
        if type(value) is str:
            if (value.isascii() or name == "params") and name.isascii():
                continue
        elif isinstance(value, Mapping):  # params as an object (HTTP)
            for key, item in value.items():
                if _not_text(key) or _not_text(item):
                    return f"field '{_clean(name)[:64]}.{_clean(str(key))[:64]}'"
        if _not_text(name) or _not_text(value):
            return f"field '{_clean(name)[:64]}'"
    return ""


# One encoder for every request: json.dumps with options builds a new one per call.
_encode_params = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
# Eleven ASCII digits as core systems send them: already what normalise_cn_mobile returns.
_PLAIN_MOBILE = re.compile(r"1[3-9][0-9]{9}")


# json's own string quoting (C), non-ASCII kept: what _encode_params does to each str.
_quote = json.encoder.encode_basestring


def _params_json(params: Mapping[str, str]) -> str:
    """`params` as _encode_params writes it.  Template parameters are a few str pairs, for
    which the encoder's set-up per call (JSONEncoder.encode builds its C encoder each
    time) cost more than the encoding: 2.6 % of a gateway's py-spy samples at full speed,
    though only 0.4 % of its instructions by count (bench/redis_instructions.py --process
    gateway).  They are quoted here with the same function; anything else goes to the
    encoder."""
    try:
        return "{" + ",".join([_quote(k) + ":" + _quote(v) for k, v in sorted(params.items())]) + "}"
    except TypeError:  # a key or value that is not a str (or keys of mixed types): the encoder decides
        return _encode_params(params)


def _mobile_digits(to_raw: str) -> str:
    """normalise_cn_mobile, without its Unicode normalisation when there is nothing to do."""
    return to_raw if _PLAIN_MOBILE.fullmatch(to_raw) else normalise_cn_mobile(to_raw)


def validate_request(raw: Mapping[str, Any], *, templates: TemplateSet, policy: QuietHoursPolicy,
                     now: float, default_id: str = "",
                     max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> ValidRequest | Rejection:
    """Check and normalise one request; never raises for bad input.

    Args:
        raw: the request fields; params may be a mapping or a JSON string.
        default_id: the id to use when the request has none (e.g. derived from the
            stream entry id, so that a re-read entry gets the same id).
        now: Unix seconds (exam-date rule and expiry).
    """
    not_text = _field_not_text(raw)
    if not_text:
        raw = _clean(raw)  # what the rejection records must be storable itself
    notification_id = _text(raw.get("id")).strip() or default_id or new_id()
    type_name = _text(raw.get("type")).strip()
    to_raw = _text(raw.get("to"))
    priority_raw = _text(raw.get("priority")).strip().lower()
    channel_raw = _text(raw.get("channel")).strip().lower()
    raw_params = raw.get("params")

    def reject(reason: str, params_json: str = "") -> Rejection:
        # params as JSON text are checked only once parsed: cleaned here, where a request
        # rejected before that (or for malformed JSON) is recorded with them
        return Rejection(id=notification_id, reason=reason, type=type_name, to_raw=to_raw,
                         params_json=_clean(params_json or _text(raw_params)[:4096]),
                         priority=priority_raw, channel=channel_raw)

    if not _ID.match(notification_id):
        # Keep the rejection recordable: a fresh id, the caller learns it from the answer.
        notification_id = new_id()
        return reject("bad id (1-128 characters of A-Z a-z 0-9 . _ : @ + = -)")
    if not_text:
        return reject(f"{not_text} is not text (a lone UTF-16 surrogate, or octets that are not UTF-8)")
    template = templates.get(type_name)
    if template is None:
        return reject(f"unknown type '{type_name[:64]}'")

    if raw_params is None or raw_params == "":
        params_obj: Any = {}
    elif isinstance(raw_params, (str, bytes)):
        try:
            params_obj = json.loads(raw_params)
        except ValueError:
            return reject("malformed params JSON")
    else:
        params_obj = raw_params
    if not isinstance(params_obj, Mapping):
        return reject("malformed params JSON (expected an object)")
    params: dict[str, str] = {}
    for name, value in params_obj.items():
        if isinstance(value, bool):
            params[str(name)] = "是" if value else "否"
        elif isinstance(value, float) and not math.isfinite(value):
            # json.loads reads NaN and Infinity: no citizen should get "nan" in an SMS.
            return reject(f"parameter '{str(name)[:64]}' is not a finite number")
        elif isinstance(value, (str, int, float)):
            params[str(name)] = str(value)
        elif value is None:
            params[str(name)] = ""
        else:
            return reject(f"parameter '{str(name)[:64]}' must be text or a number")
    params_json = _params_json(params)
    if _not_text(params_json):  # octets that are not UTF-8, or a JSON-escaped half surrogate pair
        return reject("field 'params' is not text (a lone UTF-16 surrogate, or octets that are not UTF-8)",
                      params_json)

    try:
        digits = _mobile_digits(to_raw)
    except InvalidPhoneNumber:
        return reject("not a Chinese mobile number (1[3-9] and 9 digits)", params_json)

    if priority_raw:
        try:
            priority = Priority(priority_raw)
        except ValueError:
            return reject(f"bad priority '{priority_raw[:32]}' (high, normal or bulk)", params_json)
    else:
        priority = template.priority
    if channel_raw:
        try:
            channel = Channel(channel_raw)
        except ValueError:
            return reject(f"bad channel '{channel_raw[:32]}' (sms, voice or auto)", params_json)
    else:
        channel = Channel.SMS

    try:
        text = template.render(params, now=now)
    except MissingParameter as e:
        return reject(f"missing parameter '{e.name}'", params_json)
    except BadParameter as e:
        return reject(str(e), params_json)
    if len(text) > max_text_chars:
        return reject(f"text too long ({len(text)} characters, at most {max_text_chars})", params_json)
    # A text its author signs (a partner's: a service without our signature) goes as they
    # wrote it, in the data_coding they chose.
    control = _CONTROL.search(text) if template.service.signature else None
    if control is not None:
        name = next((name for name, value in params.items() if control.group() in value), "")
        where = f"parameter '{name[:64]}'" if name else "the text"
        return reject(f"{where} holds control character U+{ord(control.group()):04X}: an SMSC may cut the "
                      "message there or refuse it (tab, line feed and carriage return are allowed)", params_json)

    expires_at = now + template.validity_seconds
    requested = _text(raw.get("expires_at")).strip()
    if requested:
        try:
            expires_at = min(expires_at, parse_unix_seconds(requested))
        except ValueError as e:
            return reject(f"bad expires_at '{requested[:32]}': {e}", params_json)

    quiet_hours = template.quiet_hours
    late = False
    lead_hours: float | None = None
    if template.send_before is not None:
        rule = template.send_before
        value = params[rule.param]
        date = parse_date(value)
        if date is None:
            return reject(f"parameter '{rule.param}' is not a date (YYYY-MM-DD or YYYY年M月D日)", params_json)
        start = exam_start(value, params.get("session", ""))
        assert start is not None  # the date parsed
        starts_at = start.replace(tzinfo=policy.tz).timestamp()
        lead_hours = (starts_at - now) / 3600
        # Worth sending until the exam begins, never after.
        expires_at = min(expires_at, starts_at)
        if (date - policy.today(now)).days < rule.days:
            # "At least two days before" (seed 001) is a duty on the sender, not a reason
            # to stay silent: the candidate who is not told may not come, is counted
            # absent and, for subjects 2 and 3, loses one of five chances.  So a late one
            # goes out at once, quiet hours or not, on the high lane, flagged late.
            late = True
            quiet_hours = False
            if not priority_raw:
                priority = Priority.HIGH
            if lead_hours <= LATE_VOICE_WITHIN_HOURS and channel is Channel.SMS:
                # Within a day of the exam an unread SMS is likely: a call follows when
                # the SMS does not arrive (channel auto; calls respect quiet hours).
                channel = Channel.AUTO

    return ValidRequest(
        id=notification_id, type=type_name, digits=digits, params_json=params_json, text=text,
        priority=priority, channel=channel, expires_at=expires_at,
        quiet_hours=quiet_hours, requested_expires_at=requested, late=late, lead_hours=lead_hours,
    )


@hot_record
class IntakeRequest:
    """A request as it came in, with where it came from."""

    fields: Mapping[str, Any]
    source: str  # stream, http, cli, partner, retry
    entry_id: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)  # stored as is (partner, ...)


class Intake:
    """The acceptance function shared by every door.

    Args:
        ledger: where notifications live.
        templates: a callable returning the templates in force (reloadable).
        policy: quiet hours and the local calendar.
        clock: IReactorTime (``seconds()``).
        daily_cap_bulk: bulk reminders per number per local day.
        on_accepted: called (no arguments) after a batch put something in a lane, so an
            idle dispatcher in this process wakes at once.
    """

    def __init__(self, ledger: NotificationLedger, templates: Callable[[], TemplateSet],
                 policy: QuietHoursPolicy, clock: Any, *, daily_cap_bulk: int = 3,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
                 on_accepted: Callable[[], None] | None = None) -> None:
        self.ledger = ledger
        self.keys = ledger.keys
        self._templates = templates
        self.policy = policy
        self.clock = clock
        self.daily_cap_bulk = daily_cap_bulk
        self.max_text_chars = max_text_chars
        self.on_accepted = on_accepted
        # Set by the push service: numbers and batches the console can search by.
        self.index: Any = None

    def templates(self) -> TemplateSet:
        """The template set in force (SIGHUP may swap it)."""
        return self._templates()

    def prepare(self, request: IntakeRequest, now: float, quiet_until: float) -> AcceptItem:
        """Validate one request and decide what acceptance does with it (pure)."""
        fields = request.fields
        default_id = f"stream-{request.entry_id}" if request.entry_id else ""
        result = validate_request(fields, templates=self._templates(), policy=self.policy, now=now,
                                  default_id=default_id, max_text_chars=self.max_text_chars)
        retry = _text(fields.get("retry")) == "1"
        if isinstance(result, Rejection):
            try:
                digits = normalise_cn_mobile(result.to_raw)
            except InvalidPhoneNumber:
                digits = re.sub(r"\D", "", result.to_raw)
            stored = {
                "to": result.to_raw[:64], "to_masked": mask_phone(digits) if digits else "",
                "params": result.params_json, "source": request.source,
                "channel": result.channel, "requested_priority": result.priority,
            }
            stored.update({k: v for k, v in request.extra.items() if k != "partner_receipt"})
            return AcceptItem(id=result.id, type=result.type, disposition="reject", lane="",
                              fields=stored, reason=result.reason, entry_id=request.entry_id, retry=retry)
        # Only what cannot be derived, and no defaults: every argument of the record's HSET
        # costs Redis its parsing, its AOF record and its replication (about 0.4 us each,
        # docs/benchmarks.md).  The masked number is derived from `to` when shown
        # (public_view); quiet_hours is stored only when it holds ("1").
        stored = {
            "to": result.digits, "params": result.params_json,
            "text": result.text, "channel": result.channel.value, "expires_at": f"{result.expires_at:.3f}",
            "source": request.source,
        }
        if result.quiet_hours:
            stored["quiet_hours"] = "1"
        if result.requested_expires_at:
            stored["requested_expires_at"] = result.requested_expires_at
        if result.late:
            stored["late"] = "1"
        if result.lead_hours is not None:
            stored["lead_hours"] = f"{result.lead_hours:.1f}"
        batch = _text(fields.get("batch"))
        if batch:  # the caller's batch name: operators search and cancel by it
            stored["batch"] = batch[:64]
        stored.update(request.extra)
        cap_key, cap = "", 0
        if result.priority is Priority.BULK:
            cap_key, cap = self.keys.daily_count(result.digits, local_day(now, self.policy)), self.daily_cap_bulk
        due = quiet_until if result.quiet_hours else 0.0
        if result.expires_at <= now:
            disposition = "expired"
        elif result.channel is Channel.VOICE:
            disposition = "voice"
        elif due:
            disposition = "schedule"
        else:
            disposition = "queue"
        return AcceptItem(id=result.id, type=result.type, disposition=disposition,
                          lane=result.priority.value, fields=stored, due_at=due, cap_key=cap_key,
                          cap=cap, entry_id=request.entry_id, retry=retry, expires_at=result.expires_at)

    def _log_rejections(self, items: Sequence[AcceptItem], outcomes: Sequence[AcceptOutcome]) -> None:
        """Each rejected request by id and reason (the first few of a batch: a flood of
        bad requests must not flood the log; the rest are counted)."""
        rejected = [(item, o) for item, o in zip(items, outcomes, strict=False) if o.state == "rejected" and not o.duplicate]
        for item, outcome in rejected[:REJECTIONS_LOGGED_PER_BATCH]:
            log.warn("notification {id} rejected ({source}): {reason}", id=outcome.id,
                     source=item.fields.get("source", ""), reason=outcome.reason)
        if len(rejected) > REJECTIONS_LOGGED_PER_BATCH:
            log.warn("{count} more notifications of the same batch rejected",
                     count=len(rejected) - REJECTIONS_LOGGED_PER_BATCH)

    async def accept_many(self, requests: Sequence[IntakeRequest], *,
                          stream: tuple[str, str] = ("", "")) -> list[AcceptOutcome]:
        """Validate and record a batch; one outcome per request, in order.

        Within a batch a repeated id is answered as a duplicate of its first occurrence.
        """
        now = self.clock.seconds()
        quiet_until = self.policy.quiet_until(now)
        items: list[AcceptItem] = []
        positions: list[int] = []
        first_seen: dict[str, int] = {}
        repeats: list[tuple[int, int]] = []
        extra_acks: list[str] = []
        for index, request in enumerate(requests):
            item = self.prepare(request, now, quiet_until)
            if item.id in first_seen:
                repeats.append((index, first_seen[item.id]))
                if item.entry_id:
                    extra_acks.append(item.entry_id)
                continue
            first_seen[item.id] = len(items)
            positions.append(index)
            items.append(item)
        outcomes = await self.ledger.accept(items, now=now, stream=stream)
        self._log_rejections(items, outcomes)
        if self.index is not None:
            try:
                await self.index.record(items, outcomes, now)
            except (RedisError, *REDIS_ERRORS) as e:  # a Cluster's slot map errors are no RedisError
                log.warn("search index not updated ({error}); searches may miss this batch and those of "
                         "the next {pause:.0f} s", error=type(e).__name__, pause=PAUSE_AFTER_FAILURE_SECONDS)
        if extra_acks:
            await self.ledger.ack_only(stream[0], stream[1], extra_acks)
        answer: list[AcceptOutcome | None] = [None] * len(requests)
        for position, outcome in zip(positions, outcomes, strict=True):
            answer[position] = outcome
        for index, first in repeats:
            original = outcomes[first]
            answer[index] = AcceptOutcome(original.id, original.state, True, "")
        late = [(item, outcome) for item, outcome in zip(items, outcomes, strict=True)
                if item.fields.get("late") == "1" and not outcome.duplicate and outcome.state != "rejected"]
        if late:
            await self._flag_late(late, now)
        if self.on_accepted is not None and any(o.state == "queued" and not o.duplicate for o in outcomes):
            self.on_accepted()
        return [a for a in answer if a is not None]


    async def _flag_late(self, late: Sequence[tuple[AcceptItem, AcceptOutcome]], now: float) -> None:
        """One ``notification.late`` event per late notification, for the core systems.

        After the acceptance script, not inside it (that script's events have a fixed
        shape, and the hash's ``late=1`` already records the fact durably); a crash in
        between loses only this event, never the message.
        """
        async with self.ledger.redis.pipeline(transaction=False) as pipe:
            for item, outcome in late:
                pipe.xadd(self.keys.events_stream, {
                    "type": "notification.late", "id": item.id, "at": f"{now:.3f}",
                    "notification_type": item.type, "state": outcome.state,
                    "channel": item.fields.get("channel", ""), "lead_hours": item.fields.get("lead_hours", ""),
                }, maxlen=EVENTS_MAXLEN, approximate=True)
            await pipe.execute()


class IntakeConsumer:
    """Reads the intake stream with a consumer group and feeds `Intake.accept_many`.

    `read_once` takes new entries (blocking up to `block_ms`); `claim_stale_once` takes
    entries another consumer left pending longer than `claim_idle_seconds` (XAUTOCLAIM);
    `read_own_pending_once` finishes this consumer's own pending entries (a restart under
    the same consumer name).  The service loops call them.
    """

    def __init__(self, intake: Intake, redis: Any, keys: Keys, *, group: str, consumer: str,
                 batch_size: int = 200, claim_idle_seconds: float = 60.0, stream: str | None = None,
                 partition: int | None = None) -> None:
        self.intake = intake
        self.redis = redis
        self.keys = keys
        # The shared ``notify`` stream, or one partition's (a partitioned pipeline reads both).
        self.stream = stream or keys.notify_stream
        # The partition whose stream this is (read only while this process owns it:
        # gateway/push/ownership.py); None: the shared ``notify`` stream, read by every process.
        self.partition = partition
        self.group = group
        self.consumer = consumer
        self.batch_size = batch_size
        self.claim_idle_seconds = claim_idle_seconds
        self._autoclaim_cursor = "0-0"

    async def ensure_group(self) -> None:
        """Create the stream and the group if missing (BUSYGROUP is fine)."""
        from redis.exceptions import ResponseError

        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def fetch(self, block_ms: int | None = None) -> list[Any]:
        """XREADGROUP new entries (blocking up to `block_ms`); safe to cancel."""
        return await read_group_entries(self.redis, self.group, self.consumer, self.stream, ">",
                                        count=self.batch_size, block_ms=block_ms)

    async def process(self, entries: Iterable[Any]) -> int:
        """Accept fetched entries (and XACK them in the same script)."""
        return await self._process(entries)

    async def _process(self, entries: Iterable[Any]) -> int:
        requests: list[IntakeRequest] = []
        empty: list[str] = []
        for entry in entries:
            if entry is None:
                continue
            entry_id, fields = entry
            if not fields:
                # Deleted while pending (XAUTOCLAIM gives nil fields): nothing to record.
                empty.append(entry_id)
                continue
            requests.append(IntakeRequest(fields=fields, source=_clean(_text(fields.get("source"))) or "stream",
                                          entry_id=entry_id))
        stream = (self.stream, self.group)
        if requests:
            outcomes = await self.intake.accept_many(requests, stream=stream)
            rejected = sum(1 for o in outcomes if o.state == "rejected" and not o.duplicate)
            if rejected:
                log.warn("intake rejected {count} of {total} stream entries", count=rejected, total=len(outcomes))
        if empty:
            await self.intake.ledger.ack_only(stream[0], stream[1], empty)
        return len(requests) + len(empty)

    async def read_once(self, block_ms: int | None = None) -> int:
        """Read and accept one batch of new entries; returns how many were handled."""
        return await self._process(await self.fetch(block_ms))

    async def read_own_pending_once(self) -> int:
        return await self._process(await read_group_entries(self.redis, self.group, self.consumer, self.stream,
                                                            "0", count=self.batch_size))

    async def claim_stale_once(self) -> int:
        """XAUTOCLAIM entries idle longer than claim_idle_seconds and accept them."""
        cursor, entries = await autoclaim_entries(
            self.redis, self.stream, self.group, self.consumer,
            min_idle_ms=int(self.claim_idle_seconds * 1000), start_id=self._autoclaim_cursor,
            count=self.batch_size,
        )
        self._autoclaim_cursor = cursor if cursor else "0-0"
        return await self._process(entries)

    async def take_over_pending(self, max_rounds: int = 1000) -> int:
        """Finish every entry pending in the group on this stream, whoever read it: a
        partition's new owner takes over what the last one read and did not accept (it
        died, or gave the partition up with a read under way).  Acceptance is idempotent,
        so an entry the last owner is accepting right now is only answered as a duplicate.
        At most `max_rounds` batches (a bound: 1000 x batch_size entries is far more than
        one process ever holds pending; the claim-stale loop finds the rest)."""
        handled = 0
        cursor = "0-0"
        for _ in range(max_rounds):
            cursor, entries = await autoclaim_entries(self.redis, self.stream, self.group, self.consumer,
                                                      min_idle_ms=0, start_id=cursor, count=self.batch_size)
            handled += await self._process(entries)
            if not cursor or cursor == "0-0":
                break
        return handled


# ----------------------------------------------------------------------------------------
# CLI functions (the lead's argparse calls these)
# ----------------------------------------------------------------------------------------


async def enqueue(redis: Any, keys: Keys, type: str, to: str, params: Mapping[str, Any] | None = None,
                  priority: str | None = None, id: str | None = None, *, channel: str | None = None,
                  expires_at: float | str | None = None) -> str:
    """Hand a notification to the pipeline through the intake stream; returns its id.

    The running gateway validates and accepts it (same idempotency as every door: the
    same id twice sends one message); `status` then shows its state or rejection.
    """
    notification_id = id or new_id()
    fields = {"id": notification_id, "type": type, "to": to,
              "params": json.dumps(dict(params or {}), ensure_ascii=False), "source": "cli"}
    if priority:
        fields["priority"] = priority
    if channel:
        fields["channel"] = channel
    if expires_at not in (None, ""):
        fields["expires_at"] = str(expires_at)
    # Its partition's stream: accepted with one script, no acknowledgement afterwards.
    await redis.xadd(intake_stream(keys, notification_id), fields)
    return notification_id


def intake_stream(keys: Keys, notification_id: str) -> str:
    """Where the gateway's own doors (HTTP, CLI) write a notification: its partition's
    intake stream (the shared ``notify`` stream with one partition)."""
    return keys.partition(keys.partition_of(notification_id)).notify_stream


async def status(redis: Any, keys: Keys, id: str) -> dict[str, Any] | None:
    """A notification's state as JSON-ready data (masked recipient), or None if unknown."""
    raw = await redis.hgetall(keys.notification(id))
    return public_view(id, raw) if raw else None


AcceptFunction = Callable[[Sequence[IntakeRequest]], Awaitable[list[AcceptOutcome]]]
