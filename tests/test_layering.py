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
