"""`hot_record`: frozen to mypy, a plain dataclass at run time, equal and hashed as frozen."""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.ports import DeliveryReceipt, OutboundSms, SubmitAccepted
from gateway.privacy import PhoneNumber
from gateway.push.state import AcceptOutcome, Claimed
from gateway.records import hot_record
from gateway.smpp.text import MessagePart
from gateway.smpp.tlv import Tlv

REPO = Path(__file__).resolve().parent.parent


@hot_record
class _Plain:
    name: str
    parts: tuple[int, ...] = ()
    extra: dict[str, str] = dataclasses.field(default_factory=dict)


@hot_record(slots=True)
class _Slotted:
    name: str
    count: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class _FrozenTwin:
    name: str
    count: int = 0


def test_equality_and_hash_are_by_fields_as_for_a_frozen_dataclass() -> None:
    a, b = _Slotted("x", 2), _Slotted("x", 2)
    assert a == b and a is not b
    assert hash(a) == hash(b) == hash(_FrozenTwin("x", 2))
    assert _Slotted("x", 2) != _Slotted("x", 3)
    assert _Plain("x", (1, 2)) == _Plain("x", (1, 2)) != _Plain("x", (1, 3))
    assert len({_Slotted("a", 1), _Slotted("a", 1), _Slotted("a", 2)}) == 2


def test_a_field_holding_a_dict_is_unhashable_as_when_frozen() -> None:
    with pytest.raises(TypeError):
        hash(_Plain("x", (), {"k": "v"}))
    with pytest.raises(TypeError):
        hash(dataclasses.make_dataclass("F", [("d", dict)], frozen=True)({}))


def test_defaults_factories_and_replace() -> None:
    one, two = _Plain("a"), _Plain("b")
    assert one.extra == {} and one.extra is not two.extra
    changed = dataclasses.replace(one, name="c")
    assert (changed.name, one.name) == ("c", "a")
    assert not hasattr(_Slotted("a"), "__dict__")
    assert _Slotted.__slots__ == ("name", "count")


def test_the_gateway_records_hash_and_compare_as_before() -> None:
    made = [
        lambda: Tlv(0x001E, b"abc\0"),
        lambda: MessagePart(b"\x05\x00\x03\x01\x02\x01hi", 0x40, 8),
        lambda: SubmitAccepted("cmcc", ("a1", "a2"), 1),
        lambda: DeliveryReceipt("cmcc", "a1", "DELIVRD"),
        lambda: AcceptOutcome("n1", "queued", False),
        lambda: Claimed("n1", "13800138000", "text", 1, (), 0.0, "exam_reminder", "normal"),
        lambda: OutboundSms("n1", PhoneNumber("13800138000"), "text"),
    ]
    for make in made:
        first, second = make(), make()
        assert first == second and hash(first) == hash(second), type(first).__name__
        assert dataclasses.is_dataclass(first)


def test_mypy_rejects_an_assignment_to_a_field(tmp_path: Path) -> None:
    """The immutability that run time no longer enforces is the type checker's."""
    api = pytest.importorskip("mypy.api", reason="mypy is a dev dependency (make install)")
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""
        from gateway.records import hot_record

        @hot_record
        class Item:
            name: str

        @hot_record(slots=True)
        class Slotted:
            count: int = 0

        item = Item("a")
        print(item.name)
        item.name = "b"
        Slotted().count = 1
    """))
    env_path = os.environ.get("MYPYPATH")
    os.environ["MYPYPATH"] = str(REPO)
    try:
        out, err, status = api.run([
            str(probe), "--cache-dir", str(tmp_path / "cache"), "--no-error-summary",
            "--python-executable", sys.executable, "--config-file", "/dev/null",
        ])
    finally:
        if env_path is None:
            del os.environ["MYPYPATH"]
        else:
            os.environ["MYPYPATH"] = env_path
    lines = [line for line in out.splitlines() if "error" in line]
    assert status == 1, (out, err)
    assert len(lines) == 2, out
    assert 'probe.py:14: error: Property "name" defined in "Item" is read-only' in lines[0]
    assert 'probe.py:15: error: Property "count" defined in "Slotted" is read-only' in lines[1]
