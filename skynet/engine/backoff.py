"""The one back-off of skynet: capped exponential delays with jitter.

Every loop that waits before trying again uses this (the handler's retry of
one action and its reconnection loop, the notifier's reconnection to
PostgreSQL), so they share one formula and one set of knobs instead of each
growing its own: the n-th failure in a row waits

    min(cap, initial * 2 ** (n - 1) + uniform(0, jitter))

seconds (tenacity's `wait_exponential_jitter`, its public API). Jitter keeps
many daemons (or many workers) that lost the same remote from all knocking at
the same instant; the cap (`backoff_cap` in the config) bounds how late a
recovered remote is noticed.

tenacity is imported only when a delay is first needed: a daemon that never
meets a failure does not pay its import (~10 ms) at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import tenacity


@dataclass(frozen=True)
class Backoff:
    """The delays of one kind of retry: `initial` seconds after the first
    failure, doubling, never above `cap`, plus up to `jitter` seconds."""

    initial: float = 0.5
    cap: float = 60.0
    jitter: float = 1.0

    def wait(self) -> "tenacity.wait.wait_base":
        """The same delays as a tenacity wait strategy (for tenacity.Retrying)."""
        import tenacity

        return tenacity.wait_exponential_jitter(multiplier=self.initial, max=self.cap, jitter=self.jitter)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th failure in a row (1 = the first)."""
        import tenacity

        state = tenacity.RetryCallState(None, None, (), {})
        state.attempt_number = max(1, attempt)
        return float(self.wait()(state))

    def retrying(self, sleep: Callable[[float], None],
                 before_sleep: "Callable[[tenacity.RetryCallState], None] | None" = None) -> "tenacity.Retrying":
        """Retry on any exception, forever, waiting these delays through `sleep`
        (which may raise to stop the loop); the last exception is re-raised."""
        import tenacity

        kw: dict[str, Any] = {} if before_sleep is None else {"before_sleep": before_sleep}
        return tenacity.Retrying(retry=tenacity.retry_if_exception_type(Exception), wait=self.wait(),
                                 stop=tenacity.stop_never, sleep=sleep, reraise=True, **kw)


@dataclass
class BackoffCounter:
    """Failures in a row of one loop that is not itself a tenacity loop (it
    runs other work between tries): `failed()` counts one more and says how
    long to wait; `reset()` after a success starts over from `initial`."""

    backoff: Backoff
    attempts: int = field(default=0)

    def failed(self) -> float:
        self.attempts += 1
        return self.backoff.delay(self.attempts)

    def reset(self) -> None:
        self.attempts = 0
