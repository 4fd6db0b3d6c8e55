"""Every key of the shipped config files replaced by values of the wrong kind, or deleted:
loading gives the config or a ConfigError whose every line names the file and the key
path, never another exception (a traceback instead of `file: key: problem`).

A deterministic sweep rather than hypothesis: the documents are small enough to try
every key, and an exhaustive run of 24 values per key over the three files (31,000
documents, about 8 minutes) found the one crash these values now cover: a file name
longer than the file system allows (pathlib raises instead of answering False).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, inspect_config
from gateway.ivr.menus import load_menus
from gateway.push.render import load_templates

REPO = Path(__file__).resolve().parents[2]

# Wrong kinds, an empty value, a name over NAME_MAX (255), a path through a file, an unset
# variable and a placeholder left open (a suite-sized cut of the exhaustive run's 24).
ODD_VALUES: list[Any] = [None, [], {"a": 1}, "", -1, "x" * 300, "/etc/passwd/x", "${UNSET_Q}{"]
DELETE = object()
# libyaml's emitter when PyYAML has it (its wheels do): the same documents, the sweep's
# own writing no longer a third of its time.
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def key_paths(node: Any, prefix: tuple[Any, ...] = (), *, first: int) -> Iterator[tuple[Any, ...]]:
    """Every path into the document: every top-level key, below it the first `first`
    entries of each mapping and list (their siblings are checked by the same code)."""
    if prefix:
        yield prefix
    keep = first if prefix else None
    children = list(node.items())[:keep] if isinstance(node, dict) else \
        list(enumerate(node))[:keep] if isinstance(node, list) else []
    for key, child in children:
        yield from key_paths(child, (*prefix, key), first=first)


def mutated(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    copied = copy.deepcopy(document)
    parent = copied
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return copied


def _gateway_yaml(path: Path) -> list[str]:
    return inspect_config(path, environ={})[1]


def _raises_or_loads(loader: Callable[[Path], Any], path: Path) -> list[str]:
    try:
        loader(path)
    except ConfigError as e:
        return list(e.problems)
    return []


@pytest.mark.parametrize(("name", "check", "first"), [
    ("gateway.yaml", _gateway_yaml, 50),
    ("templates.yaml", lambda p: _raises_or_loads(load_templates, p), 2),
    ("ivr.yaml", lambda p: _raises_or_loads(load_menus, p), 3),
])
def test_every_key_of_a_wrong_kind_is_a_problem_naming_file_and_key(
        tmp_path: Path, name: str, check: Callable[[Path], list[str]], first: int) -> None:
    document = yaml.safe_load((REPO / "config" / name).read_text(encoding="utf-8"))
    for sibling in ("templates.yaml", "ivr.yaml"):
        (tmp_path / sibling).write_text((REPO / "config" / sibling).read_text(encoding="utf-8"), encoding="utf-8")
    target = tmp_path / name
    tried = 0
    for path in key_paths(document, first=first):
        for value in [*ODD_VALUES, DELETE]:
            target.write_text(yaml.dump(mutated(document, path, value), Dumper=DUMPER, allow_unicode=True),
                              encoding="utf-8")
            try:
                problems = check(target)
            except Exception as e:  # noqa: BLE001 - any other exception is the failure looked for
                pytest.fail(f"{name}: {'.'.join(map(str, path))} = {value!r:.40}: {type(e).__name__}: {e}")
            for problem in problems:
                assert problem.startswith(f"{target}:"), problem
            tried += 1
    assert tried > 150  # the sweep reached the documents' keys
