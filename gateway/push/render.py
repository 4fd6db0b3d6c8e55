"""Notification templates: load, check and render config/templates.yaml.

Theory of operation
-------------------
Each notification type names one Chinese text with ``{placeholders}``, the parameters a
caller must give, its lane (`Priority`), whether quiet hours hold it, and how long it is
worth sending (``validity``: seconds as a number, or "90s", "30m", "72h", "7d").  Every
text starts with the signature ``【交管12123】``: carriers in China refuse unsigned
messages, and citizens are taught to trust only signed ones.

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

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, read_yaml
from gateway.push.queue import Priority

__all__ = [
    "DEFAULT_SIGNATURE",
    "MissingParameter",
    "NotificationTemplate",
    "SendBefore",
    "TemplateCatalogue",
    "TemplateSet",
    "check_templates_file",
    "load_templates",
    "parse_validity",
]

DEFAULT_SIGNATURE = "【交管12123】"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALIDITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_TEMPLATE_KEYS = frozenset({"text", "params", "priority", "quiet_hours", "validity", "send_before"})


class MissingParameter(KeyError):
    """A required parameter was not given (or was empty); `name` says which."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class SendBefore:
    """The message must go out at least `days` days before the date in parameter `param`.

    From the exam-booking rule: the confirmation SMS reaches the candidate at least two
    days before the exam (seeds/001).  The date parameter is YYYY-MM-DD (or YYYY年M月D日), local time.
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

    def render(self, params: Mapping[str, str]) -> str:
        """The message text; raises MissingParameter for an absent or empty parameter."""
        for name in self.params:
            if not params.get(name):
                raise MissingParameter(name)
        out: list[str] = []
        signature = self.signature
        for literal, name in self.pieces:
            out.append(literal)
            if name:
                value = params[name]
                # An already-signed value right after our signature is not signed twice.
                if value.startswith(signature) and "".join(out) == signature:
                    value = value[len(signature):]
                out.append(value)
        return "".join(out)


@dataclass(frozen=True)
class TemplateSet:
    source: str
    signature: str
    templates: Mapping[str, NotificationTemplate]

    def get(self, notification_type: str) -> NotificationTemplate | None:
        return self.templates.get(notification_type)

    def strip_signature(self, text: str) -> str:
        """The text without its leading signature (what a voice call reads out)."""
        return text[len(self.signature):] if text.startswith(self.signature) else text


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


def parse_templates(data: Any, source: str) -> TemplateSet:
    """Check a parsed templates document; raises ConfigError listing every problem."""
    problems: list[str] = []

    def problem(path: str, message: str) -> None:
        problems.append(f"{source}: {path}: {message}")

    if not isinstance(data, dict):
        raise ConfigError([f"{source}: (top level): expected a mapping with 'signature' and 'types'"])
    for key in data:
        if key not in ("signature", "types"):
            problem(str(key), "unknown key (expected 'signature' and 'types')")
    signature = data.get("signature", DEFAULT_SIGNATURE)
    if not isinstance(signature, str) or not signature:
        problem("signature", "expected the signature text, e.g. 【交管12123】")
        signature = DEFAULT_SIGNATURE
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
        if not text.startswith(signature):
            problem(f"{where}.text", f"does not start with the signature {signature}")
            ok = False
        pieces, placeholder_problems = _compile(text)
        for message in placeholder_problems:
            problem(f"{where}.text", message)
        ok = ok and not placeholder_problems

        raw_params = spec.get("params", [])
        if not isinstance(raw_params, list) or not all(isinstance(p, str) and _NAME.match(p) for p in raw_params):
            problem(f"{where}.params", "expected a list of parameter names")
            ok = False
            raw_params = []
        params = tuple(raw_params)
        for _, name in pieces:
            if name and name not in params:
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

        if ok:
            templates[type_name] = NotificationTemplate(
                type=type_name, text=text, params=params, priority=priority,
                quiet_hours=bool(quiet), validity_seconds=validity, send_before=send_before,
                signature=signature, pieces=pieces,
            )
    if problems:
        raise ConfigError(problems)
    return TemplateSet(source=source, signature=signature, templates=templates)


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
