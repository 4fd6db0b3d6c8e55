"""The ledger's scripts (gateway/push/lua/) as steps run in the gateway instead of in Redis.

Why: the Lua interpreter is most of what the ledger's scripts cost Redis (stops 39-40,
docs/benchmarks.md), and Redis's CPU per notification is what issue 11 asks to halve.  A
step reads what its script would have read, runs the script's logic in Python against
those values (`Overlay`, sans-IO: no I/O in this package's logic), and gives back the
writes the script would have made, as Redis commands, with the script's reply.

A step is only correct while nothing else writes the keys it read until its writes are
sent: the partition's owner (gateway/push/ownership.py) is that single writer.  The
driver that fences the owner (MULTI/EXEC under WATCH of the partition's epoch) is the next
part of this work; `driver.StepScript` sends the writes in MULTI/EXEC without a fence.

Each step is its script line for line where it can be; tests/push/test_steps.py runs the
scripts and the steps side by side on two real redis-servers, through the ledger's own
API, and compares every key they leave.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.push.steps import accept, change, claim, outcomes, sweeps
from gateway.push.steps.ledger import Ledger
from gateway.push.steps.reads import Reads


@dataclass(frozen=True)
class Step:
    """A script's reads and its logic."""

    reads: Callable[[Ledger], Reads]
    run: Callable[[Ledger], list[Any]]


STEPS: dict[str, Step] = {
    "accept.lua": Step(accept.reads, accept.run),
    "claim.lua": Step(claim.reads, claim.run),
    "outcomes.lua": Step(outcomes.reads, outcomes.run),
    "promote.lua": Step(sweeps.promote_reads, sweeps.promote),
    "recover.lua": Step(sweeps.recover_reads, sweeps.recover),
    "receipts_overdue.lua": Step(sweeps.overdue_reads, sweeps.receipts_overdue),
    "transition.lua": Step(change.reads, change.transition),
    "change_if.lua": Step(change.reads, change.change_if),
}
