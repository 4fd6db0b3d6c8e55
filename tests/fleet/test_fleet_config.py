"""The fleet-wide limits' config keys: check-config names the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from tests.test_config import CARRIER, problems, write


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("    account_tps: -5\n", "carriers[0].account_tps: -5.0 is out of range [0, 100000] 1/s"),
        ("    account_tps: 0.5\n", "carriers[0].account_tps: 0.5 is below 1 per second (0 switches the limit off)"),
        ("    max_binds: many\n", "carriers[0].max_binds: expected a number, got 'many'"),
        ("    max_binds: 2.5\n", "carriers[0].max_binds: expected a whole number, got 2.5"),
        ("    bind_lease_seconds: 0\n", "carriers[0].bind_lease_seconds: 0.0 is out of range [1, 600] s"),
    ],
)
def test_bad_fleet_limit_names_its_key(tmp_path: Path, extra: str, expected: str) -> None:
    """A bad carriers[].account_tps / max_binds / bind_lease_seconds is named in the error."""
    assert any(expected in p for p in problems(tmp_path, CARRIER + extra)), problems(tmp_path, CARRIER + extra)


def test_account_name_may_not_break_its_hash_tag(tmp_path: Path) -> None:
    """The carrier name is the account's hash tag: braces are refused when limits are set."""
    text = CARRIER.replace("name: cmcc", "name: 'c{m}cc'") + "    max_binds: 2\n"
    assert any("carriers[0].name: may not contain { or }" in p for p in problems(tmp_path, text))


def test_fleet_limits_load(tmp_path: Path) -> None:
    """Valid limits load; voice has its own fleet-wide key."""
    text = CARRIER + "    account_tps: 4500\n    max_binds: 3\n    bind_lease_seconds: 10\n" \
        + "ami:\n  trunk_max_calls: 30\n  call_slot_lease_seconds: 20\n"
    config = load_config(write(tmp_path, text), environ={})
    carrier = config.carriers[0]
    assert (carrier.account_tps, carrier.max_binds, carrier.bind_lease_seconds) == (4500.0, 3, 10.0)
    assert (config.ami.trunk_max_calls, config.ami.call_slot_lease_seconds) == (30, 20.0)
