"""Windows: parsing instants and durations, and splitting ranges into aligned windows."""

from datetime import UTC, datetime, timedelta

import pytest

from archiver.kinds import Kind
from archiver.windows import (
    Window,
    format_instant,
    parse_duration,
    parse_instant,
    parse_window,
    plan,
)

T = datetime(2024, 3, 1, tzinfo=UTC)


def test_plan_splits_a_range_into_aligned_windows_of_each_kind() -> None:
    """Two days of 12h windows give four windows per kind, oldest first."""
    windows = list(
        plan([Kind.PSTN, Kind.DIRECT_ROUTING], T, T + timedelta(days=2), timedelta(hours=12))
    )
    expected = [
        Window(kind, T + timedelta(hours=12 * i), T + timedelta(hours=12 * (i + 1)))
        for i in range(4)
        for kind in (Kind.PSTN, Kind.DIRECT_ROUTING)
    ]
    assert expected == windows


def test_plan_widens_an_unaligned_range_to_whole_windows() -> None:
    """A range starting 10:30 and ending 13:10 with 1h windows covers 10:00..14:00."""
    windows = list(
        plan(
            [Kind.PSTN],
            T + timedelta(hours=10, minutes=30),
            T + timedelta(hours=13, minutes=10),
            timedelta(hours=1),
        )
    )
    assert [T + timedelta(hours=h) for h in (10, 11, 12, 13)] == [w.start for w in windows]
    assert T + timedelta(hours=14) == windows[-1].end


def test_window_key_uses_the_utc_date_and_a_colon_free_name() -> None:
    """Object keys are hive-partitioned by date and safe for Hadoop paths (no colons)."""
    window = Window(Kind.DIRECT_ROUTING, T + timedelta(hours=6), T + timedelta(hours=9))
    assert "direct_routing/date=2024-03-01/20240301T060000Z.parquet" == window.key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01", T),
        ("2024-03-01T06:00:00Z", T + timedelta(hours=6)),
        ("2024-03-01T07:00:00+01:00", T + timedelta(hours=6)),
        ("2024-03-01T06:00:00.5Z", T + timedelta(hours=6, microseconds=500000)),
    ],
)
def test_parse_instant_accepts_dates_and_iso_times_with_zone(text: str, expected: datetime) -> None:
    """Dates mean midnight UTC; offsets are converted to UTC."""
    assert expected == parse_instant(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2024-13-01", "'2024-13-01' is not a date or time"),
        ("yesterday", "'yesterday' is not a date or time"),
        ("2024-03-01T06:00:00", "'2024-03-01T06:00:00' has no time zone"),
    ],
)
def test_parse_instant_rejects_bad_input_with_a_clear_message(text: str, message: str) -> None:
    """A malformed or zone-less instant names itself in the error."""
    with pytest.raises(ValueError, match="^" + message):
        parse_instant(text)


def test_window_lengths_must_divide_a_day() -> None:
    """Only 1h 2h 3h 4h 6h 8h 12h 1d are windows."""
    assert [timedelta(hours=h) for h in (1, 2, 3, 4, 6, 8, 12, 24)] == [
        parse_window(t) for t in ("1h", "2h", "3h", "4h", "6h", "8h", "12h", "1d")
    ]
    for bad in ("5h", "30m", "90m", "2d", "7h"):
        with pytest.raises(ValueError, match="does not divide a day"):
            parse_window(bad)


def test_durations_and_instants_format_as_graph_and_users_write_them() -> None:
    """Durations parse from 30s/15m/6h/1d; instants format as whole-second ISO with Z."""
    assert timedelta(seconds=30) == parse_duration("30s")
    assert timedelta(days=1) == parse_duration("1d")
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration("6 hours")
    assert "2024-03-01T00:00:00Z" == format_instant(T)
