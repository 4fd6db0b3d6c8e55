"""Log lines: one JSON schema, local time with its offset, no object reprs, masking kept."""

from __future__ import annotations

import io
import json
import re

from twisted.logger import Logger

from gateway.logs import make_observer
from gateway.privacy import PhoneNumber


class _BindingEndpoint:
    """Stands for an object whose default repr carries a memory address."""


def test_json_lines_have_the_documented_schema() -> None:
    """time (ISO 8601, +08:00), level, logger, event template, message, fields; no reprs."""
    out = io.StringIO()
    log = Logger(namespace="gateway.smpp.link", observer=make_observer("json", "debug", out))
    log.info("carrier {carrier} bound via {endpoint} to {to}", carrier="cmcc", endpoint=_BindingEndpoint(),
             to=PhoneNumber("13800138000"))
    line = json.loads(out.getvalue())
    assert list(line)[:5] == ["time", "level", "logger", "event", "message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00", line["time"])
    assert (line["level"], line["logger"]) == ("info", "gateway.smpp.link")
    assert line["event"] == "carrier {carrier} bound via {endpoint} to {to}"
    assert line["message"] == "carrier cmcc bound via <_BindingEndpoint> to 138****8000"
    assert line["carrier"] == "cmcc" and line["to"] == "138****8000"
    assert "object at 0x" not in out.getvalue() and "log_" not in out.getvalue()
    assert len(out.getvalue()) < 400  # one line per event, not Twisted's ~690-byte dump


def test_failures_carry_error_and_masked_traceback() -> None:
    out = io.StringIO()
    log = Logger(namespace="gateway.test", observer=make_observer("json", "info", out))
    try:
        raise ValueError("bad number 13800138000")
    except ValueError:
        log.failure("handling {what} failed", what="a receipt")
    line = json.loads(out.getvalue())
    assert line["error"] == "ValueError" and "138****8000" in line["traceback"]
    assert "13800138000" not in out.getvalue()


def test_text_lines_use_the_configured_time_zone() -> None:
    """Text lines read 2026-12-03 02:00:18.123+0800 in Shanghai and +0000 in UTC."""
    for zone, offset in (("Asia/Shanghai", "+0800"), ("UTC", "+0000")):
        out = io.StringIO()
        log = Logger(namespace="gateway.push", observer=make_observer("text", "info", out, timezone=zone))
        log.warn("endpoint {endpoint} gave up", endpoint=_BindingEndpoint())
        text = out.getvalue()
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}" + re.escape(offset) + r" warn  \[gateway\.push\] ", text)
        assert text.rstrip().endswith("endpoint <_BindingEndpoint> gave up")
