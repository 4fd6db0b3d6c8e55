"""Layers point down (STYLE.md 13): nothing under gateway/<area>/ imports the command layer."""

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
