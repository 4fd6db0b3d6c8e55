"""A token bucket for submit rates, clock-free: time is a number passed in.

Theory of operation
-------------------
Carriers grant an ESME a rate (TPS) and answer excess submits with ESME_RTHROTTLED or
ESME_RMSGQFUL.  The bucket holds up to ``burst`` tokens, refills at the current rate,
and ``take(now)`` either spends a token (returns 0) or says how long to wait.  The
link sends a part only when ``take`` returned 0, so the rate holds over all of a
carrier's sessions.

When the carrier still throttles us, its real limit is below the configured one (other
traffic shares it, or the contract changed): ``slow_down(factor, now)`` cuts the
current rate (never below ``min_rate_fraction`` of nominal) and the rate then climbs
back linearly to nominal over ``recovery_seconds`` (additive increase, multiplicative
decrease, as TCP congestion control does).  ``recover(now)`` restores it at once.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """Rate limiter; see the module docstring.

    Args:
        rate_per_second: nominal refill rate (tokens per second), > 0.
        burst: bucket size (tokens), >= 1; the bucket starts full.
        now: the current time.
        min_rate_fraction: slow_down never goes below this fraction of nominal.
        recovery_seconds: time to climb from a slowed rate back to nominal.
    """

    __slots__ = (
        "_last",
        "_tokens",
        "burst",
        "min_rate",
        "nominal_rate",
        "rate",
        "recovery_per_second",
    )

    def __init__(
        self,
        rate_per_second: float,
        burst: float,
        *,
        now: float = 0.0,
        min_rate_fraction: float = 0.05,
        recovery_seconds: float = 10.0,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        if burst < 1:
            raise ValueError("burst must be at least one token")
        self.nominal_rate = float(rate_per_second)
        self.rate = self.nominal_rate
        self.burst = float(burst)
        self.min_rate = self.nominal_rate * min_rate_fraction
        self.recovery_per_second = self.nominal_rate / recovery_seconds
        self._tokens = self.burst
        self._last = now

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed <= 0:
            return
        self._last = now
        tokens = self._tokens + elapsed * self.rate
        self._tokens = tokens if tokens < self.burst else self.burst
        if self.rate < self.nominal_rate:
            rate = self.rate + elapsed * self.recovery_per_second
            self.rate = rate if rate < self.nominal_rate else self.nominal_rate

    def take(self, now: float) -> float:
        """Spend one token and return 0, or return the seconds until one is available
        (nothing is spent then; call again after waiting)."""
        self._refill(now)
        # The epsilon absorbs float error: after waiting exactly the returned delay the
        # bucket may hold 0.9999999999 tokens, which must count as one.
        if self._tokens >= 1.0 - 1e-9:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def refund(self) -> None:
        """Give back the token just taken (another limiter said no to the same send)."""
        self._tokens = min(self.burst, self._tokens + 1.0)

    def slow_down(self, factor: float, now: float) -> None:
        """Multiply the current rate by ``factor`` (0 < factor < 1), after a throttling
        response; also empties the bucket so no burst follows the refusal."""
        self._refill(now)
        self.rate = max(self.min_rate, self.rate * factor)
        self._tokens = min(self._tokens, 0.0)

    def recover(self, now: float) -> None:
        """Back to the nominal rate at once."""
        self._refill(now)
        self.rate = self.nominal_rate
