"""skynet.engine.backoff: the one back-off every retry loop uses (bounds, cap, jitter, reset)."""
from __future__ import annotations

import random

import pytest

from skynet.engine.backoff import Backoff, BackoffCounter


def test_delays_double_within_their_jitter() -> None:
    b = Backoff(initial=0.5, cap=1000.0, jitter=0.25)
    saved = random.getstate()  # tenacity's jitter draws from the global random: seed it here only
    random.seed(1)
    try:
        _check_doubling(b)
    finally:
        random.setstate(saved)  # a seeded global random made every later test's random draws the same


def _check_doubling(b: Backoff) -> None:
    for n in range(1, 10):
        base = 0.5 * 2 ** (n - 1)
        for _ in range(50):
            assert base <= b.delay(n) <= base + 0.25


def test_cap_bounds_every_delay_jitter_included() -> None:
    b = Backoff(initial=0.5, cap=3.0, jitter=1.0)
    delays = [b.delay(n) for n in range(1, 60) for _ in range(20)]
    assert max(delays) <= 3.0
    assert b.delay(10_000) == 3.0  # no overflow far out: the cap


def test_jitter_spreads_delays_and_zero_jitter_is_exact() -> None:
    spread = {Backoff(initial=1.0, cap=100.0, jitter=1.0).delay(3) for _ in range(50)}
    assert len(spread) > 10 and all(4.0 <= d <= 5.0 for d in spread)
    assert {Backoff(initial=1.0, cap=100.0, jitter=0.0).delay(3) for _ in range(5)} == {4.0}


def test_counter_counts_failures_in_a_row_and_reset_starts_over() -> None:
    c = BackoffCounter(Backoff(initial=1.0, cap=100.0, jitter=0.0))
    assert [c.failed() for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    c.reset()
    assert c.attempts == 0
    assert c.failed() == 1.0


def test_retrying_waits_the_same_delays_and_reraises_on_stop() -> None:
    waited: list[float] = []

    class Stop(Exception):
        pass

    def sleep(seconds: float) -> None:
        waited.append(seconds)
        if len(waited) == 4:
            raise Stop()

    b = Backoff(initial=0.5, cap=1.5, jitter=0.0)
    with pytest.raises(Stop):
        for attempt in b.retrying(sleep):
            with attempt:
                raise OSError("down")
    assert waited == [0.5, 1.0, 1.5, 1.5]


def test_handler_and_notifier_use_it() -> None:
    """The loops that used to carry their own formula now take skynet.engine.backoff's
    (the handler's retries and reconnection, the notifier's reconnection, and the S3
    client's one quick retry of a 5xx/429)."""
    import inspect

    from connections.s3 import rest
    from skynet.engine import handler
    from skynet.reporting import notifier

    for mod in (handler, notifier, rest):
        src = inspect.getsource(mod)
        assert "skynet.engine.backoff import" in src
        assert "wait_exponential" not in src and "random.uniform" not in src and "2 **" not in src
        assert "time.monotonic() % 1" not in src  # the S3 client's own jitter, before
    assert all(0.05 <= rest.QUICK_RETRY.delay(1) <= 0.25 for _ in range(100))
