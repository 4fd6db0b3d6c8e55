"""`gateway run` freezes what start-up made and collects the young generation less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.commands import GC_YOUNG_THRESHOLD, tune_garbage_collection


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_start_up_objects_are_frozen_and_the_young_threshold_raised(restored_gc: None) -> None:
    gc.unfreeze()
    made_at_start_up = [{"n": n} for n in range(100)]  # containers the collector tracks
    tune_garbage_collection()
    assert gc.get_freeze_count() >= len(made_at_start_up)
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    assert GC_YOUNG_THRESHOLD > 700  # Python's default, which the gateway outgrew


def test_cyclic_garbage_made_after_start_up_is_still_collected(restored_gc: None) -> None:
    tune_garbage_collection()

    class Node:
        other: Node

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2
