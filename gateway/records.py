"""`hot_record`: a dataclass that mypy treats as frozen and Python builds as a plain one.

Use it for the records made once per notification or per PDU: the intake request, the
validated request, the accept item and outcome, the claim, the outbound SMS, the message
plan and its parts, the session's PDU events and the receipts.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, and its
class-level ``__setattr__`` refuses every other assignment. A plain one stores its fields
with the interpreter's own attribute store. For 12 fields, on this 2-core VM with Python
3.11, that is 1.26 µs frozen against 0.25 µs plain.

A Chinese notification passes through 15 such records: about 100 fields. Frozen, they cost
10.5 % of the gateway's instructions: 1,136.7 thousand per notification frozen, 1,017.6
thousand plain (``bench/redis_instructions.py --process gateway``, docs/benchmarks.md).

What stays the same:
- ``mypy gateway`` still rejects an assignment to a field (``dataclass_transform``'s
  ``frozen_default``), and nothing in the gateway assigns to one.
- Equality is unchanged.
- Hashing is unchanged: ``unsafe_hash`` hashes by the fields, as frozen does.

What is lost is the error at run time if someone assigns to a field anyway, so code must
copy with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar, dataclass_transform, overload

_T = TypeVar("_T")


@overload
def hot_record(cls: type[_T], /) -> type[_T]: ...


@overload
def hot_record(*, slots: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def hot_record(cls: type[_T] | None = None, /, *, slots: bool = False) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """``@dataclass(frozen=True)`` to the type checker; ``@dataclass(unsafe_hash=True)`` at run time."""

    def build(c: type[_T]) -> type[_T]:
        return dataclasses.dataclass(c, unsafe_hash=True, slots=slots)

    return build(cls) if cls is not None else build
