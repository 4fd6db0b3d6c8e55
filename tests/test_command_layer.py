"""The command layer: layers point down (STYLE.md 13), nothing under gateway/<area>/ imports
it; and what it does with the arguments before any command runs."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[1] / "gateway"
COMMAND_LAYER = {"gateway.cli", "gateway.commands"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_part_imports_the_command_layer() -> None:
    """gateway/ivr, push, smpp, http, ops, store, fleet, domain never import gateway.cli or gateway.commands."""
    offenders = []
    for path in sorted(GATEWAY.glob("*/**/*.py")):
        if imported_modules(path) & COMMAND_LAYER:
            offenders.append(str(path.relative_to(GATEWAY.parent)))
    assert offenders == []


def test_every_command_line_argument_has_help() -> None:
    """`gateway <command> --help` explains every option and positional argument."""
    import argparse

    from gateway.cli import build_parser

    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif action.help is None and not isinstance(action, argparse._HelpAction):
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(None), "gateway")
    assert missing == []


def test_an_argument_that_is_not_utf8_is_a_usage_error_not_a_traceback(tmp_path: Path) -> None:
    """`gateway status $'x\\xff'`: the octets reach Python as lone surrogates, which no
    Redis command can carry.  Exit 2 naming the argument, before any command runs."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable.encode(), b"-m", b"gateway", b"status", b"booking-\xff\xfe"],
                          capture_output=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert b"Traceback" not in done.stderr
    assert b"argument b'booking-\\xff\\xfe' is not UTF-8 text" in done.stderr
