"""The emulator's per-function rate cap, both models, driven with explicit clock values."""

from __future__ import annotations

import pytest

from archiver.emulator import EmulatorConfig, EmulatorState
from archiver.emulator.faults import BUCKET_RETRY_AFTER
from archiver.kinds import Kind


def bucket(per_minute: int = 300, window: float = 60.0, **extra: float) -> EmulatorState:
    """A state whose cap is a leaky bucket of `per_minute` per `window` seconds."""
    config = EmulatorConfig(
        rate_cap_per_minute=per_minute, rate_cap_window=window, rate_cap_model="bucket"
    )
    for name, value in extra.items():
        setattr(config, name, value)
    return EmulatorState(config)


def passed(state: EmulatorState, times: list[float], kind: Kind = Kind.PSTN) -> list[bool]:
    """Which of the requests arriving at `times` the cap lets through."""
    return [state.over_cap(kind, t) is None for t in times]


def test_no_cap_lets_everything_through() -> None:
    """Without rate_cap_per_minute every request passes, whatever the model."""
    state = EmulatorState(EmulatorConfig(rate_cap_model="bucket"))
    assert all(passed(state, [0.0] * 1000))


def test_bucket_holds_one_second_of_burst() -> None:
    """At 5/s (300/min), five requests at one instant pass and the sixth is refused with
    the bucket's fixed Retry-After of 2 s."""
    state = bucket()
    assert [True] * 5 == passed(state, [100.0] * 5)
    assert BUCKET_RETRY_AFTER == state.over_cap(Kind.PSTN, 100.0)
    assert 2.0 == BUCKET_RETRY_AFTER


def test_bucket_drains_at_the_cap_rate() -> None:
    """Requests spaced exactly at the cap's rate all pass, indefinitely; 10 % faster, the
    bucket fills by 0.1 request per request and overflows after about one burst's worth."""
    state = bucket()
    assert all(passed(state, [10 + i * 0.2 for i in range(2000)]))
    state = bucket()
    faster = passed(state, [10 + i * 0.2 / 1.1 for i in range(100)])
    assert all(faster[:44])
    assert not faster[46]


def test_bucket_counts_throttled_requests() -> None:
    """A request refused still pours into the bucket: hammering it keeps it full."""
    state = bucket()
    assert 5 == sum(passed(state, [0.0] * 20))  # level now 20: 15 over the brim
    assert not any(passed(state, [2.0]))  # 2 s drained 10: still over
    state = bucket()
    assert 5 == sum(passed(state, [0.0] * 5))
    assert [True] == passed(state, [0.2])  # one request drained, one slot free


def test_bucket_waits_out_retry_after_then_passes() -> None:
    """After the 429's Retry-After the bucket has drained: a burst passes again."""
    state = bucket()
    assert 5 == sum(passed(state, [0.0] * 6))
    assert [True] * 5 + [False] == passed(state, [BUCKET_RETRY_AFTER] * 6)


def test_bucket_rate_is_per_window_and_per_function() -> None:
    """50 per 10 s drains 5 a second, like 300 a minute; each function has its own bucket."""
    state = bucket(50, 10.0)
    assert [True] * 5 + [False] == passed(state, [0.0] * 6)
    assert [True] * 5 == passed(state, [0.0] * 5, Kind.DIRECT_ROUTING)
    assert [True] * 4 + [False] == passed(state, [1.0] * 5)  # 6 poured, 5 drained


def test_bucket_below_one_a_second_holds_one_request() -> None:
    """At Graph's own 50 a minute one second's worth is under one request: the bucket still
    takes one, so requests must be spaced by 1.2 s."""
    state = bucket(50, 60.0)
    assert [True, False, True, False, True] == passed(state, [0.0, 1.1, 2.4, 3.5, 4.8])


def test_bucket_retry_after_is_configurable() -> None:
    """cap_retry_after_seconds replaces the bucket's 2 s."""
    state = bucket(cap_retry_after_seconds=7.0)
    passed(state, [0.0] * 5)
    assert 7.0 == state.over_cap(Kind.PSTN, 0.0)


def test_window_allows_the_cap_in_any_window_and_names_when_a_slot_frees() -> None:
    """The sliding window (the default model) lets `cap` requests through in any window,
    counts refused requests too, and names the time until the oldest leaves the window."""
    state = EmulatorState(EmulatorConfig(rate_cap_per_minute=3, rate_cap_window=10.0))
    assert [True, True, True] == passed(state, [0.0, 1.0, 2.0])
    assert 8.0 == state.over_cap(Kind.PSTN, 3.0)  # counted: now 0, 1, 2, 3 in the window
    assert 3.0 == state.over_cap(Kind.PSTN, 9.0)  # passes once 0, 1 and 2 have left
    assert [True] == passed(state, [12.5])  # only 3 and 9 still count
    fixed = EmulatorState(
        EmulatorConfig(rate_cap_per_minute=1, rate_cap_window=10.0, cap_retry_after_seconds=2)
    )
    assert [True] == passed(fixed, [0.0])
    assert 2 == fixed.over_cap(Kind.PSTN, 1.0)


def test_unknown_model_is_refused() -> None:
    """A misspelt model is an error, not a silent sliding window."""
    state = EmulatorState(EmulatorConfig(rate_cap_per_minute=3, rate_cap_model="buckets"))
    with pytest.raises(ValueError, match="buckets"):
        state.over_cap(Kind.PSTN, 0.0)
