"""Notification templates: load, check and render config/templates.yaml.

Theory of operation
-------------------
Each notification type names one Chinese text with ``{placeholders}``, the parameters a
caller must give (each with a kind), its lane (`Priority`), whether quiet hours hold it,
how long it is worth sending (``validity``: seconds as a number, or "90s", "30m", "72h",
"7d"), its category (vehicle, licence, violation: the 37 notices of seed 003; service:
the rest) and the *service* that sends it.

**Services and signatures.**  A service is a signature and a sender code.  The 12123
short code and 【交管12123】 belong to traffic-safety notices only (seed 004); a notice of
another police service (``id_card_ready`` is household registration, seed 001) goes out
under that service's own signature and sender, and partner texts are not signed by us at
all (the partner signs its own).  Every text must start with its service's signature:
carriers in China refuse unsigned messages, and citizens are taught to trust only signed
ones.

**Parameters** are declared ``name: kind``; a trailing ``?`` makes one optional (absent
or empty renders as nothing).  Core systems send ISO values; the renderer writes them the
way a Chinese notice does:

=========  ===========================================  =========================
kind       accepted                                     rendered
=========  ===========================================  =========================
text       anything                                     as given
date       2026-12-09, 2026年12月9日                      2026年12月9日
time       08:30, 14:00-16:00, 上午, 下午                  上午8:30, 下午2:00至4:00
datetime   2026-12-09 08:30, 2026-12-09T08:30:00+08:00   2026年12月9日上午8:30
number     a whole number                               as digits
=========  ===========================================  =========================

A value of the wrong shape raises `BadParameter` (intake rejects the request, naming the
parameter).  **Derived** placeholders (``derived: [no_show]``) are sentences computed
from other parameters where a notice must state a rule that depends on them (seed 001:
a no-show for subjects 2 and 3 uses one of five chances); see `DERIVED`.

Loading collects every problem (unknown placeholder, missing signature, bad priority,
unreadable validity...) and raises one `gateway.config.ConfigError` whose lines read
``file: types.<type>.<key>: problem``, as the main configuration does.  Placeholders are
plain names; attribute access, indexing, conversions and format specs are refused so that
a caller's parameter can never reach into Python objects.

A template is compiled once into (literal, name) pieces, so rendering is a join.  A
parameter value that itself starts with the signature (an MO reply or a partner's text
that is already signed) does not get a second one.

`TemplateCatalogue` holds the current set; `reload()` (SIGHUP) loads and checks a new
set and swaps it in, or keeps the old one and raises the `ConfigError`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, read_yaml
from gateway.domain import clock_12, format_cn_date, format_cn_time, half_day
from gateway.push.queue import Priority

__all__ = [
    "CATEGORIES",
    "DEFAULT_SIGNATURE",
    "DERIVED",
    "PARAM_KINDS",
    "BadParameter",
    "MissingParameter",
    "NotificationTemplate",
    "ParamSpec",
    "SendBefore",
    "SenderService",
    "TemplateCatalogue",
    "TemplateSet",
    "check_templates_file",
    "cn_date",
    "cn_time",
    "exam_start",
    "load_templates",
    "parse_date",
    "parse_validity",
    "sms_parts",
]

DEFAULT_SIGNATURE = "【交管12123】"
TRAFFIC_SERVICE = "traffic"
CHINA_TZ = dt.timezone(dt.timedelta(hours=8), "CST")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALIDITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_TEMPLATE_KEYS = frozenset({"text", "params", "priority", "quiet_hours", "validity", "send_before",
                            "category", "seed", "service", "derived", "example"})
PARAM_KINDS = ("text", "date", "time", "datetime", "number")
# vehicle, licence, violation: the 37 notices of seed 003 (10 + 22 + 5); service: the rest.
CATEGORIES = ("vehicle", "licence", "violation", "service")
# One UCS2 part carries 70 characters; parts of a concatenated message 67 (6 octets of UDH).
UCS2_SINGLE_PART_CHARS = 70
UCS2_MULTI_PART_CHARS = 67


class MissingParameter(KeyError):
    """A required parameter was not given (or was empty); `name` says which."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class BadParameter(ValueError):
    """A parameter's value is not of its declared kind; `name` and `expected` say how."""

    def __init__(self, name: str, expected: str) -> None:
        super().__init__(f"parameter '{name}' is not {expected}")
        self.name = name
        self.expected = expected


def sms_parts(text: str) -> int:
    """UCS2 parts a Chinese text needs: 1 up to 70 characters, else 67 per part."""
    n = len(text)
    return 1 if n <= UCS2_SINGLE_PART_CHARS else math.ceil(n / UCS2_MULTI_PART_CHARS)


# --- dates and times ------------------------------------------------------------------------

_CN_DATE = re.compile(r"(\d{4})年(\d{1,2})月(\d{1,2})日")
_CLOCK = re.compile(r"([01]?\d|2[0-3])[:：]([0-5]\d)")
_half_day = half_day
_clock_12 = clock_12
cn_time = format_cn_time


def parse_date(text: str) -> dt.date | None:
    """A date as core systems write it: 2026-03-05 or 2026年3月5日; None if neither."""
    text = text.strip()
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        pass
    match = _CN_DATE.fullmatch(text)
    if match:
        try:
            return dt.date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            return None
    return None


def cn_date(day: dt.date) -> str:
    """2026年12月9日: no zero padding, as Chinese notices write dates."""
    return format_cn_date(day)


def _parse_datetime(text: str) -> dt.datetime | None:
    text = text.strip()
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(CHINA_TZ).replace(tzinfo=None)
    return moment


def _format(kind: str, value: str) -> str | None:
    """A parameter value in its kind's Chinese form; None when it is not of that kind."""
    if kind == "text":
        return value
    if kind == "date":
        day = parse_date(value)
        return cn_date(day) if day else None
    if kind == "time":
        return cn_time(value)
    if kind == "datetime":
        moment = _parse_datetime(value)
        if moment is None:
            if _CN_DATE.match(value.strip()):
                return value.strip()  # already written the Chinese way
            return None
        return cn_date(moment.date()) + _half_day(moment.hour) + _clock_12(moment.hour, moment.minute)
    if kind == "number":
        text = value.strip()
        if re.fullmatch(r"-?\d{1,12}", text):
            return str(int(text))
        if re.fullmatch(r"-?\d{1,12}\.0+", text):
            return str(int(float(text)))
        return None
    raise AssertionError(kind)


_EXPECTED = {
    "date": "a date (YYYY-MM-DD)",
    "time": "a time (HH:MM, HH:MM-HH:MM, 上午 or 下午)",
    "datetime": "a date and time (YYYY-MM-DD HH:MM)",
    "number": "a whole number",
}


def exam_start(date_value: str, session: str = "") -> dt.datetime | None:
    """When an exam begins (naive China time): its date at the session's first clock time;
    上午 08:00, 下午 13:00, otherwise 08:00.  None when the date is unreadable."""
    day = parse_date(date_value)
    if day is None:
        return None
    clock = _CLOCK.search(session)
    if clock:
        return dt.datetime.combine(day, dt.time(int(clock[1]), int(clock[2])))
    hour = 13 if session.strip() in ("下午", "中午") else 18 if session.strip() == "晚上" else 8
    return dt.datetime.combine(day, dt.time(hour, 0))


# --- derived sentences -------------------------------------------------------------------------


@dataclass(frozen=True)
class Derived:
    """A sentence computed from parameters; `needs` must be declared params of the type."""

    needs: tuple[str, ...]
    compute: Callable[[Mapping[str, str], float | None], str]


def _subject_number(subject: str) -> int | None:
    for number, words in ((1, ("1", "科目一")), (2, ("2", "科目二")), (3, ("3", "科目三"))):
        if subject.strip() in words:
            return number
    return None


def _no_show(params: Mapping[str, str], now: float | None) -> str:
    """Seeds 001 and 003: a no-show counts as absent; for subjects 2 and 3 it also uses
    one of the five booking chances."""
    subject = _subject_number(params.get("subject", ""))
    if subject in (2, 3):
        left = params.get("attempts_left", "").strip()
        tail = f"，您还有{int(left)}次" if left.isdigit() else ""
        return f"未参加考试按缺考处理，并占用一次预约机会（共5次{tail}）"
    return "未参加考试按缺考处理"


def _cancel_rule(params: Mapping[str, str], now: float | None) -> str:
    """Until the booking window closes: cancel online; after it: in person at the office
    at least one day before the exam (seed 001); on the exam day itself: no more."""
    deadline = _parse_datetime(params.get("cancel_deadline", ""))
    exam_day = parse_date(params.get("date", ""))
    today = dt.datetime.fromtimestamp(now, CHINA_TZ).replace(tzinfo=None) if now is not None else None
    if deadline is not None and (today is None or today < deadline):
        return f"{cn_date(deadline.date())}{_half_day(deadline.hour)}{_clock_12(deadline.hour, deadline.minute)}前可网上取消"
    if exam_day is not None and today is not None and today.date() >= exam_day:
        return "已不能取消"
    last = cn_date(exam_day - dt.timedelta(days=1)) if exam_day else "考试前一天"
    return f"网上取消已截止，如需取消请本人最迟于{last}到车管所办理"


DERIVED: Mapping[str, Derived] = {
    "no_show": Derived(("subject",), _no_show),
    "cancel_rule": Derived(("cancel_deadline", "date"), _cancel_rule),
}


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: str = "text"
    optional: bool = False


@dataclass(frozen=True)
class SenderService:
    """Who a notice comes from: its signature ("" = the text is signed by its author, as
    partners' are) and sender code (None: the carrier link's configured source_addr)."""

    name: str
    signature: str
    source_addr: str | None


@dataclass(frozen=True)
class SendBefore:
    """The message is due at least `days` days before the date in parameter `param`.

    From the exam-booking rule: the confirmation SMS reaches the candidate at least two
    days before the exam (seeds/001).  That is a duty on the sender, not a reason to stay
    silent: a later one is still sent, at once, and flagged late (gateway/push/intake.py).
    """

    param: str
    days: int


@dataclass(frozen=True)
class NotificationTemplate:
    type: str
    text: str
    params: tuple[str, ...]
    priority: Priority
    quiet_hours: bool
    validity_seconds: float
    send_before: SendBefore | None
    signature: str
    # (literal, placeholder or "") pairs, compiled from `text`.
    pieces: tuple[tuple[str, str], ...]
    specs: tuple[ParamSpec, ...] = ()
    category: str = "service"
    seed: str = ""
    service: SenderService = field(default_factory=lambda: SenderService(TRAFFIC_SERVICE, DEFAULT_SIGNATURE, None))
    derived: tuple[str, ...] = ()
    example: Mapping[str, str] = field(default_factory=dict)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs if not s.optional) if self.specs else self.params

    def format_params(self, params: Mapping[str, str], *, now: float | None = None) -> dict[str, str]:
        """The parameters as the text shows them (dates in Chinese, derived sentences);
        raises MissingParameter / BadParameter."""
        specs = self.specs or tuple(ParamSpec(name) for name in self.params)
        out: dict[str, str] = {}
        for spec in specs:
            value = params.get(spec.name) or ""
            if not value:
                if not spec.optional:
                    raise MissingParameter(spec.name)
                out[spec.name] = ""
                continue
            formatted = _format(spec.kind, value)
            if formatted is None:
                raise BadParameter(spec.name, _EXPECTED[spec.kind])
            out[spec.name] = formatted
        for name in self.derived:
            out[name] = DERIVED[name].compute(params, now)
        return out

    def render(self, params: Mapping[str, str], *, now: float | None = None) -> str:
        """The message text; raises MissingParameter for an absent or empty required
        parameter, BadParameter for a value not of its kind.  `now` (Unix seconds) is
        needed by derived sentences that depend on the time (``cancel_rule``)."""
        values = self.format_params(params, now=now)
        out: list[str] = []
        signature = self.signature
        for literal, name in self.pieces:
            out.append(literal)
            if name:
                value = values[name]
                # An already-signed value right after our signature is not signed twice.
                if signature and value.startswith(signature) and "".join(out) == signature:
                    value = value[len(signature):]
                out.append(value)
        return "".join(out)


@dataclass(frozen=True)
class TemplateSet:
    source: str
    signature: str
    templates: Mapping[str, NotificationTemplate]
    services: Mapping[str, SenderService] = field(default_factory=dict)

    def get(self, notification_type: str) -> NotificationTemplate | None:
        return self.templates.get(notification_type)

    def strip_signature(self, text: str) -> str:
        """The text without its leading signature (what a voice call reads out)."""
        for signature in {self.signature, *(s.signature for s in self.services.values())}:
            if signature and text.startswith(signature):
                return text[len(signature):]
        return text

    def source_addr(self, notification_type: str) -> str | None:
        """The sender code of a type's service (None: the carrier's configured one)."""
        template = self.templates.get(notification_type)
        return template.service.source_addr if template is not None else None


def parse_validity(value: Any) -> float:
    """Seconds from a number (seconds) or a string like "90s", "30m", "72h", "7d".

    Raises ValueError for anything else or for a value that is not positive.
    """
    if getattr(value, "is_bool", False) or isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _VALIDITY.match(value)
        if not match:
            raise ValueError(f"'{value}' is not a duration (e.g. 600, \"30m\", \"72h\", \"7d\")")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError("expected a duration (e.g. 600, \"30m\", \"72h\", \"7d\")")
    if seconds <= 0:
        raise ValueError("must be positive")
    return seconds


def _compile(text: str) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """Pieces of a template and the problems with its placeholders."""
    pieces: list[tuple[str, str]] = []
    problems: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        return (), [f"malformed placeholder: {e}"]
    for literal, name, spec, conversion in parsed:
        if name is None:
            pieces.append((literal, ""))
            continue
        if not _NAME.match(name):
            problems.append(f"placeholder {{{name}}} is not a plain name")
        elif spec or conversion:
            problems.append(f"placeholder {{{name}}} has a conversion or format spec; write {{{name}}}")
        pieces.append((literal, name))
    return tuple(pieces), problems


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or bool(getattr(value, "is_bool", False))


def _parse_params(raw: Any) -> tuple[tuple[ParamSpec, ...], str]:
    """``[a, b]`` (all text) or ``{a: date, b: "number?"}``; ("", problem) on error."""
    if isinstance(raw, list):
        if not all(isinstance(p, str) and _NAME.match(p) for p in raw):
            return (), "expected a list of parameter names or a mapping name: kind"
        return tuple(ParamSpec(p) for p in raw), ""
    if isinstance(raw, dict):
        specs: list[ParamSpec] = []
        for name, kind in raw.items():
            if not isinstance(name, str) or not _NAME.match(name):
                return (), f"'{name}' is not a parameter name"
            text = str(kind) if isinstance(kind, str) else ""
            optional = text.endswith("?")
            text = text.rstrip("?")
            if text not in PARAM_KINDS:
                return (), f"{name}: kind '{kind}' is not one of {', '.join(PARAM_KINDS)} (optional: add ?)"
            specs.append(ParamSpec(name, text, optional))
        return tuple(specs), ""
    return (), "expected a list of parameter names or a mapping name: kind"


def _parse_services(data: Any, signature: str, problem: Callable[[str, str], None]) -> dict[str, SenderService]:
    services = {TRAFFIC_SERVICE: SenderService(TRAFFIC_SERVICE, signature, None)}
    raw = data.get("services", {})
    if not isinstance(raw, dict):
        problem("services", "expected a mapping of service name -> {signature, source_addr}")
        return services
    for name, spec in raw.items():
        where = f"services.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            problem(where, "a service name is letters, digits and underscores")
            continue
        if not isinstance(spec, dict) or not set(spec) <= {"signature", "source_addr"}:
            problem(where, "expected {signature: 【...】, source_addr: <sender code>}")
            continue
        sig = spec.get("signature", "")
        if not isinstance(sig, str):
            problem(f"{where}.signature", "expected the signature text ('' for texts their author signs)")
            continue
        if sig and not (sig.startswith("【") and sig.endswith("】")):
            problem(f"{where}.signature", "a signature is written 【...】")
        source = spec.get("source_addr")
        if source is not None:
            source = str(getattr(source, "source", source))
            if not re.fullmatch(r"[0-9]{3,20}", source):
                problem(f"{where}.source_addr", "a sender code is 3-20 digits")
        if name == TRAFFIC_SERVICE and sig != signature:
            problem(f"{where}.signature", f"the traffic service's signature is the top-level signature {signature}")
        services[name] = SenderService(name, sig, source)
    return services


def parse_templates(data: Any, source: str) -> TemplateSet:
    """Check a parsed templates document; raises ConfigError listing every problem."""
    problems: list[str] = []

    def problem(path: str, message: str) -> None:
        problems.append(f"{source}: {path}: {message}")

    if not isinstance(data, dict):
        raise ConfigError([f"{source}: (top level): expected a mapping with 'signature' and 'types'"])
    for key in data:
        if key not in ("signature", "services", "types"):
            problem(str(key), "unknown key (expected 'signature', 'services' and 'types')")
    signature = data.get("signature", DEFAULT_SIGNATURE)
    if not isinstance(signature, str) or not signature:
        problem("signature", "expected the signature text, e.g. 【交管12123】")
        signature = DEFAULT_SIGNATURE
    services = _parse_services(data, signature, problem)
    types = data.get("types")
    if not isinstance(types, dict) or not types:
        problem("types", "expected a mapping of notification types")
        raise ConfigError(problems)

    templates: dict[str, NotificationTemplate] = {}
    for type_name, spec in types.items():
        where = f"types.{type_name}"
        if not isinstance(type_name, str) or not _NAME.match(type_name):
            problem(where, "a type name is letters, digits and underscores")
            continue
        if not isinstance(spec, dict):
            problem(where, "expected a mapping with text, params, priority, quiet_hours, validity")
            continue
        ok = True
        for key in spec:
            if key not in _TEMPLATE_KEYS:
                problem(f"{where}.{key}", "unknown key (expected " + ", ".join(sorted(_TEMPLATE_KEYS)) + ")")
                ok = False
        text = spec.get("text")
        if not isinstance(text, str) or not text:
            problem(f"{where}.text", "required text missing")
            continue
        service_name = spec.get("service", TRAFFIC_SERVICE)
        service = services.get(str(service_name))
        if service is None:
            problem(f"{where}.service", f"unknown service '{service_name}' (declare it under services:)")
            service = services[TRAFFIC_SERVICE]
            ok = False
        if not text.startswith(service.signature):
            problem(f"{where}.text", f"does not start with the signature {service.signature}")
            ok = False
        if service.name != TRAFFIC_SERVICE and signature in text:
            problem(f"{where}.text", f"{signature} is for traffic-safety notices only (service {service.name})")
            ok = False
        pieces, placeholder_problems = _compile(text)
        for message in placeholder_problems:
            problem(f"{where}.text", message)
        ok = ok and not placeholder_problems

        specs, params_problem = _parse_params(spec.get("params", []))
        if params_problem:
            problem(f"{where}.params", params_problem)
            ok = False
        params = tuple(s.name for s in specs)
        derived_raw = spec.get("derived", [])
        derived: tuple[str, ...] = ()
        if not isinstance(derived_raw, list) or not all(isinstance(d, str) for d in derived_raw):
            problem(f"{where}.derived", f"expected a list of: {', '.join(DERIVED)}")
            ok = False
        else:
            for name in derived_raw:
                if name not in DERIVED:
                    problem(f"{where}.derived", f"unknown derived placeholder '{name}' (known: {', '.join(DERIVED)})")
                    ok = False
                else:
                    missing = [n for n in DERIVED[name].needs if n not in params]
                    if missing:
                        problem(f"{where}.derived", f"'{name}' needs the parameter(s) {', '.join(missing)}")
                        ok = False
            derived = tuple(derived_raw)
        for _, name in pieces:
            if name and name not in params and name not in derived:
                problem(f"{where}.text", f"unknown placeholder {{{name}}} (not in params)")
                ok = False

        try:
            priority = Priority(str(spec.get("priority", "normal")))
        except ValueError:
            problem(f"{where}.priority", f"'{spec.get('priority')}' is not one of: high, normal, bulk")
            ok = False
            priority = Priority.NORMAL

        quiet = spec.get("quiet_hours", True)
        if not _is_bool(quiet):
            problem(f"{where}.quiet_hours", "expected true or false")
            ok = False

        if "validity" not in spec:
            problem(f"{where}.validity", "required value missing (seconds, or e.g. \"72h\")")
            ok = False
            validity = 0.0
        else:
            try:
                validity = parse_validity(spec["validity"])
            except ValueError as e:
                problem(f"{where}.validity", str(e))
                ok = False
                validity = 0.0

        send_before = None
        if "send_before" in spec:
            raw = spec["send_before"]
            if (not isinstance(raw, dict) or set(raw) != {"param", "days"}
                    or raw["param"] not in params or _is_bool(raw["days"])
                    or not isinstance(raw["days"], int) or raw["days"] < 0):
                problem(f"{where}.send_before", "expected {param: <one of params>, days: <whole number>}")
                ok = False
            else:
                send_before = SendBefore(param=str(raw["param"]), days=int(raw["days"]))

        category = str(spec.get("category", "service"))
        if category not in CATEGORIES:
            problem(f"{where}.category", f"'{category}' is not one of {', '.join(CATEGORIES)}")
            ok = False
        seed = spec.get("seed", "")
        example_raw = spec.get("example", {})
        example: dict[str, str] = {}
        if not isinstance(example_raw, dict):
            problem(f"{where}.example", "expected a mapping of parameter -> value")
            ok = False
        else:
            for name, value in example_raw.items():
                if name not in params:
                    problem(f"{where}.example.{name}", "not a parameter of this type")
                    ok = False
                else:
                    example[str(name)] = str(getattr(value, "source", value))

        if ok:
            template = NotificationTemplate(
                type=type_name, text=text, params=params, priority=priority,
                quiet_hours=bool(quiet), validity_seconds=validity, send_before=send_before,
                signature=service.signature, pieces=pieces, specs=specs, category=category,
                seed=str(getattr(seed, "source", seed)), service=service, derived=derived,
                example=example,
            )
            if example:
                try:
                    template.render(example, now=None)
                except (MissingParameter, BadParameter) as e:
                    problem(f"{where}.example", f"does not render: {e}")
                    continue
            templates[type_name] = template
    if problems:
        raise ConfigError(problems)
    return TemplateSet(source=source, signature=signature, templates=templates, services=services)


def load_templates(path: str | Path) -> TemplateSet:
    """Read and check a templates file; raises ConfigError naming file, key and problem."""
    path = Path(path)
    return parse_templates(read_yaml(path), str(path))


class TemplateCatalogue:
    """The templates in force; `reload()` swaps in a checked new set (SIGHUP)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.current = load_templates(self.path)

    def reload(self) -> TemplateSet:
        """Load and check the file again; on ConfigError keep the old set and re-raise."""
        fresh = load_templates(self.path)
        self.current = fresh
        return fresh


def check_templates_file(config: Any) -> list[str]:
    """Problems in the templates file a Config refers to (for `gateway check-config`)."""
    try:
        load_templates(config.resolve(config.push.templates_file))
    except ConfigError as e:
        return list(e.problems)
    return []
