"""A carrier account's fleet-wide limits, built from its config section for a carrier link."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from gateway.config import CarrierConfig
from gateway.fleet.leases import BindLeases, LeaseTable, bind_leases_key
from gateway.fleet.tps import AccountRateLimiter, account_key

__all__ = ["AccountLimits", "account_limits"]


@dataclass
class AccountLimits:
    """What a CarrierLink asks before it submits (``rate``) and before it binds
    (``binds``); either is None when the carrier sets no such limit."""

    rate: AccountRateLimiter | None = None
    binds: BindLeases | None = None
    # Retry delay of a bind slot whose lease was refused: a place frees when a process
    # unbinds (at once) or dies (after bind_lease_seconds), so a third of that.
    bind_retry_seconds: float = 5.0


def account_limits(carrier: CarrierConfig, redis: Any, prefix: str, clock: IReactorTime) -> AccountLimits | None:
    """The limits of ``carrier`` (None when it sets neither account_tps nor max_binds).

    The account is named after the carrier (``carriers[].name``): every process with
    the same carrier section shares its keys ``<prefix>{acct:<name>}:gcra`` and ``:binds``.
    """
    if not carrier.account_tps and not carrier.max_binds:
        return None
    limits = AccountLimits(bind_retry_seconds=max(0.5, carrier.bind_lease_seconds / 3))
    if carrier.account_tps:
        limits.rate = AccountRateLimiter(redis, account_key(prefix, carrier.name), carrier.account_tps, clock,
                                         account=carrier.name, own_tps=carrier.tps_limit)
    if carrier.max_binds:
        table = LeaseTable(redis, bind_leases_key(prefix, carrier.name), carrier.max_binds,
                           carrier.bind_lease_seconds)
        limits.binds = BindLeases(table, clock, account=carrier.name)
    return limits
