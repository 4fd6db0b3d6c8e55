"""What a carrier's non-zero command_status means for the message: the error-class table.

Theory of operation
-------------------
SMPP 3.4 table 5-2 names the command_status values but says nothing about which are
worth retrying: that is SMSC practice, and it differs per carrier.  Each status falls
into one of four classes:

* ``throttled``: we are sending too fast; the link slows its token bucket and sends the
  *same* part again after a short, growing delay (ESME_RTHROTTLED);
* ``temporary``: the SMSC could not take the message now; the pipeline retries it later
  with backoff, on the same carrier (ESME_RSYSERR, which most SMSCs use for transient
  faults; ESME_RMSGQFUL; ESME_RX_T_APPN; ESME_RDELIVERYFAILURE);
* ``bind``: the SMSC no longer treats our session as bound (ESME_RINVBNDSTS; a
  ESME_RBINDFAIL to a submit): the link closes that session, ClientService binds again,
  and the message is retried without spending an attempt;
* ``permanent``: the carrier refuses this message; the pipeline fails over to another
  carrier where the routing policy allows, else the message fails.  Every status not
  in the table, ESME_RSUBMITFAIL (0x45) included, is permanent.

``carriers[].error_classes`` overrides single entries per carrier.  The table applies to
submit_sm_resp; bind_resp refusals have their own rule (gateway.smpp.link: only
ESME_RINVPASWD / ESME_RINVSYSID wait ``bind_rejected_retry_seconds``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Final

from gateway.smpp.pdu import CommandStatus, status_name

__all__ = ["DEFAULT_STATUS_CLASSES", "StatusClass", "StatusClassifier"]


class StatusClass(enum.Enum):
    TEMPORARY = "temporary"
    PERMANENT = "permanent"
    THROTTLED = "throttled"
    BIND = "bind"


DEFAULT_STATUS_CLASSES: Final[Mapping[int, StatusClass]] = {
    CommandStatus.ESME_RTHROTTLED: StatusClass.THROTTLED,
    CommandStatus.ESME_RSYSERR: StatusClass.TEMPORARY,
    CommandStatus.ESME_RMSGQFUL: StatusClass.TEMPORARY,
    CommandStatus.ESME_RX_T_APPN: StatusClass.TEMPORARY,
    CommandStatus.ESME_RDELIVERYFAILURE: StatusClass.TEMPORARY,
    CommandStatus.ESME_RINVBNDSTS: StatusClass.BIND,
    CommandStatus.ESME_RBINDFAIL: StatusClass.BIND,
}


class StatusClassifier:
    """The defaults with one carrier's overrides; ``classify(status)`` for a non-zero status.

    Args:
        overrides: (command_status, class name) pairs, e.g. ``[(0x45, "temporary")]``;
            raises ValueError for a class name not in `StatusClass`.
    """

    def __init__(self, overrides: Iterable[tuple[int, str]] = ()) -> None:
        self._table: dict[int, StatusClass] = dict(DEFAULT_STATUS_CLASSES)
        for status, name in overrides:
            self._table[int(status)] = StatusClass(name)

    def classify(self, status: int) -> StatusClass:
        return self._table.get(status, StatusClass.PERMANENT)

    def describe(self) -> list[tuple[str, str]]:
        """(status name, class) rows, for docs and logs."""
        return [(status_name(s), c.value) for s, c in sorted(self._table.items())]
