"""Log observers: readable text on a terminal, JSON lines with --log-format json.

JSON lines have one schema (`JsonLinesObserver`): time (ISO 8601 with offset), level,
logger, event (the message template), message, the fields, error/traceback.  Text
lines give the local time (``logging.timezone``), level, logger and message.  Object
reprs (``<... object at 0x...>``) become ``<ClassName>`` in both.

Phone and ID numbers are `PhoneNumber`/`IdNumber` values that mask themselves, so the
fields in JSON and the formatted text are masked at the source.  `MaskingObserver` is the
safety net in front of the real observer: it masks long digit runs in every string field
and in the formatted message, so a number that slipped in as a plain string still never
reaches the output whole.
"""

from __future__ import annotations

import copy as _copy
import datetime as dt
import json
import re
import sys
import time
from typing import IO, Any
from zoneinfo import ZoneInfo

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from twisted.python.reflect import safe_str
from zope.interface import implementer

from gateway.privacy import mask_digit_runs

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}
_KEEP = {"log_time", "log_level", "log_namespace", "log_source", "log_logger", "log_system", "log_failure",
         "log_format", "log_io", "log_trace"}


@implementer(ILogObserver)
class MaskingObserver:
    """Masks mobile and ID numbers in every string field before passing the event on."""

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        masked: dict[str, Any] = {}
        for key, value in event.items():
            if key in _KEEP:
                masked[key] = value
            elif isinstance(value, str):
                masked[key] = mask_digit_runs(value)
            elif isinstance(value, (int, float, bool)) or value is None:
                masked[key] = value
            else:
                # JSON cannot carry objects; their str() (masked for our privacy types) can.
                masked[key] = mask_digit_runs(str(value))
        if event.get("log_format"):
            # Render once with the original values so format specs still apply, then mask.
            masked["log_format"] = "{log_masked_text}"
            masked["log_masked_text"] = mask_digit_runs(formatEvent(event))
            masked["log_template"] = mask_digit_runs(str(event["log_format"]))
        if event.get("log_io"):
            masked["log_io"] = mask_digit_runs(str(event["log_io"]))
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            # A traceback ends with the exception's message, which may quote what the
            # code was handling (a number, a PDU field): the text observer prints it.
            masked["log_failure"] = masked_failure(failure)
            masked["log_traceback"] = masked["log_failure"].getTraceback()
        self._observer(masked)


class _MaskedMessage(Exception):
    """Stands in for an exception whose message had to be masked."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class _MaskedFailure(Failure):
    """A Failure whose rendered traceback was masked once (source lines included: the
    text observer would read them again from the files)."""

    masked_traceback = ""

    def getTraceback(self, *args: Any, **kwargs: Any) -> str:  # noqa: N802 - Twisted API
        return self.masked_traceback


def masked_failure(failure: Failure) -> Failure:
    """A copy of `failure` whose exception message and rendered traceback have their
    digit runs masked; its type (what ``check()`` and the traceback name) and frames are
    kept."""
    copy = _copy.copy(failure)
    copy.value = _MaskedMessage(mask_digit_runs(safe_str(failure.value)))
    copy.__class__ = _MaskedFailure
    copy.masked_traceback = mask_digit_runs(failure.getTraceback())  # type: ignore[attr-defined]
    return copy


# Legacy and bookkeeping keys of Twisted's events that are no fields of ours.
_NOT_FIELDS = frozenset({"message", "isError", "system", "format", "why", "failure", "time", "printed",
                         "log_legacy", "log_masked_text", "log_template", "log_text"})
# "<gateway.smpp.link._BindingEndpoint object at 0x7f...>" says nothing to an operator.
_OBJECT_REPR = re.compile(r"<([\w.]+\.)?(\w+) object at 0x[0-9a-fA-F]+>")


def clean_reprs(text: str) -> str:
    """Object reprs shortened to their class name: ``<_BindingEndpoint>``."""
    return _OBJECT_REPR.sub(lambda m: f"<{m.group(2)}>", text)


def _level_name(event: dict[str, Any]) -> str:
    level = event.get("log_level")
    return str(getattr(level, "name", level or "info"))


def _logger_name(event: dict[str, Any]) -> str:
    return str(event.get("log_namespace") or "-")


def _message(event: dict[str, Any]) -> str:
    text = event.get("log_masked_text")
    if text is None:
        text = formatEvent(event) if event.get("log_format") else ""
    return clean_reprs(str(text))


def _failure_text(event: dict[str, Any]) -> str:
    failure = event.get("log_failure")
    if failure is None:
        return ""
    try:
        return mask_digit_runs(clean_reprs(failure.getTraceback()))
    except Exception:  # noqa: BLE001 - a broken failure must not break logging
        return mask_digit_runs(clean_reprs(str(failure)))


def _json_value(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return clean_reprs(value) if isinstance(value, str) else value
    return clean_reprs(str(value))


@implementer(ILogObserver)
class JsonLinesObserver:
    """One JSON object per line: ``time`` (ISO 8601 with its offset, in `timezone`),
    ``level``, ``logger`` (the namespace), ``event`` (the message template: the same for
    every occurrence, so it can be counted and alerted on), ``message`` (rendered),
    the event's own fields, and ``error`` + ``traceback`` for a failure."""

    def __init__(self, stream: IO[str], timezone: str = "Asia/Shanghai") -> None:
        self._stream = stream
        self._zone = ZoneInfo(timezone)

    def __call__(self, event: dict[str, Any]) -> None:
        moment = dt.datetime.fromtimestamp(float(event.get("log_time") or time.time()), self._zone)
        line: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds"),
            "level": _level_name(event),
            "logger": _logger_name(event),
            "event": event.get("log_template") or event.get("log_format") or "",
            "message": _message(event),
        }
        for key, value in event.items():
            if key.startswith("log_") or key in _NOT_FIELDS or key in line:
                continue
            line[key] = _json_value(value)
        failure = event.get("log_failure")
        if failure is not None:
            line["error"] = clean_reprs(getattr(getattr(failure, "type", None), "__name__", "") or "failure")
            line["traceback"] = _failure_text(event)
        self._stream.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        self._stream.flush()


@implementer(ILogObserver)
class TextLineObserver:
    """``2026-12-03 02:00:18.123+0800 info  [gateway.smpp.link] carrier cmcc bound`` in
    `timezone` (the operators' local time, as the console shows it)."""

    def __init__(self, stream: IO[str], timezone: str = "Asia/Shanghai") -> None:
        self._stream = stream
        self._zone = ZoneInfo(timezone)

    def __call__(self, event: dict[str, Any]) -> None:
        moment = dt.datetime.fromtimestamp(float(event.get("log_time") or time.time()), self._zone)
        stamp = moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}" + moment.strftime("%z")
        text = f"{stamp} {_level_name(event):<5} [{_logger_name(event)}] {_message(event)}\n"
        failure = _failure_text(event)
        if failure:
            text += failure if failure.endswith("\n") else failure + "\n"
        self._stream.write(text)
        self._stream.flush()


def make_observer(fmt: str, level: str = "info", stream: IO[str] | None = None,
                  timezone: str = "Asia/Shanghai") -> ILogObserver:
    """The process's observer chain: level filter -> masking -> text or JSON lines."""
    out = stream or sys.stdout
    sink: ILogObserver = JsonLinesObserver(out, timezone) if fmt == "json" else TextLineObserver(out, timezone)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
    return FilteringLogObserver(MaskingObserver(sink), [predicate])


def start_logging(fmt: str, level: str = "info", stream: IO[str] | None = None,
                  timezone: str = "Asia/Shanghai") -> None:
    """Begin logging to stdout (or `stream`); stdlib logging and warnings are captured too."""
    globalLogBeginner.beginLoggingTo([make_observer(fmt, level, stream, timezone)], redirectStandardIO=False)
