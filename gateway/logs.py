"""Log observers: readable text on a terminal, JSON lines with --log-format json.

Phone and ID numbers are `PhoneNumber`/`IdNumber` values that mask themselves, so the
fields in JSON and the formatted text are masked at the source.  `MaskingObserver` is the
safety net in front of the real observer: it masks long digit runs in every string field
and in the formatted message, so a number that slipped in as a plain string still never
reaches the output whole.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)
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
        if event.get("log_io"):
            masked["log_io"] = mask_digit_runs(str(event["log_io"]))
        self._observer(masked)


def make_observer(fmt: str, level: str = "info", stream: IO[str] | None = None) -> ILogObserver:
    """The process's observer chain: level filter -> masking -> text or JSON."""
    out = stream or sys.stdout
    sink = jsonFileLogObserver(out, recordSeparator="") if fmt == "json" else textFileLogObserver(out)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
    return FilteringLogObserver(MaskingObserver(sink), [predicate])


def start_logging(fmt: str, level: str = "info", stream: IO[str] | None = None) -> None:
    """Begin logging to stdout (or `stream`); stdlib logging and warnings are captured too."""
    globalLogBeginner.beginLoggingTo([make_observer(fmt, level, stream)], redirectStandardIO=False)
