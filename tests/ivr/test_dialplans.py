"""The shipped dialplans and the docs that copy them agree with each other and with the
gateway (without Asterisk; tests/asterisk runs them on a real one)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
EXTENSIONS = (REPO / "dialplans" / "extensions.conf").read_text(encoding="utf-8")


def context(text: str, name: str) -> list[str]:
    """The non-comment lines of one [context] of a dialplan."""
    lines: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("["):
            inside = line.strip() == f"[{name}]"
            if inside:
                lines.append(line)
            continue
        if inside and line.strip() and not line.lstrip().startswith(";"):
            lines.append(line.rstrip())
    return lines


def test_fallback_hours_are_china_time_and_the_configured_hours() -> None:
    """GotoIfTime without a time zone uses the Asterisk host's; the hours are China time."""
    config = yaml.safe_load((REPO / "config" / "gateway.yaml").read_text(encoding="utf-8"))
    calls = re.findall(r"GotoIfTime\(([^?]*)\?", EXTENSIONS)
    assert calls
    for arguments in calls:
        times, weekdays, mdays, months, *zone = arguments.split(",")
        assert zone == ["Asia/Shanghai"], arguments
        assert times == config["ivr"]["service_hours"]


def test_every_queue_is_followed_by_the_apology() -> None:
    """A Queue() that returns (no agent, time out) plays system_error, as `agents` does."""
    lines = [line for line in EXTENSIONS.splitlines() if line.strip() and not line.lstrip().startswith(";")]
    queues = [i for i, line in enumerate(lines) if "Queue(" in line]
    assert len(queues) >= 2
    for i in queues:
        assert "Playback(12123/system_error)" in lines[i + 1], lines[i: i + 2]


def test_the_reminder_dialplan_in_docs_ami_is_the_shipped_one() -> None:
    """docs/ami.md shows [12123-reminder] as extensions.conf has it (the AGI passes the id)."""
    document = (REPO / "docs" / "ami.md").read_text(encoding="utf-8")
    block = re.search(r"```\n(\[12123-reminder\]\n.*?)```", document, re.DOTALL)
    assert block is not None
    assert context(block[1], "12123-reminder") == context(EXTENSIONS, "12123-reminder")
    assert "AGI(agi://127.0.0.1:4573/notify,${NOTIFICATION_ID})" in block[1]


def test_documented_prompts_build_options_exist() -> None:
    """docs/ivr.md documents only options `gateway prompts build` has."""
    from gateway.cli import build_parser

    document = (REPO / "docs" / "ivr.md").read_text(encoding="utf-8")
    usages = re.findall(r"`gateway prompts build ([^`]*)`", document)
    assert usages
    documented = {flag for usage in usages for flag in re.findall(r"--[a-z][a-z-]*", usage)}
    parser = build_parser()
    for name in ("prompts", "build"):
        [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = subparsers.choices[name]
    assert documented <= set(parser._option_string_actions), documented
