"""Time: parsing the user's instants and durations, and splitting a range into aligned windows.

Knows nothing of HTTP, Parquet or storage: a window is a kind and a half-open UTC
interval [start, end) whose bounds are multiples of the window length since midnight.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from archiver.kinds import Kind

DAY = timedelta(days=1)
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """`30s`, `15m`, `6h`, `1d` → timedelta; ValueError naming the expected form otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (write it like 30s, 15m, 6h or 1d)")
    return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])


def format_duration(value: timedelta) -> str:
    """The shortest `Nd`/`Nh`/`Nm`/`Ns` spelling of a whole number of seconds."""
    seconds = int(value.total_seconds())
    for unit in "dhm":
        if seconds and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


def parse_window(text: str) -> timedelta:
    """A window length that divides a day evenly (1h 2h 3h 4h 6h 8h 12h 1d)."""
    value = parse_duration(text)
    allowed = "1h 2h 3h 4h 6h 8h 12h 1d"
    if value < timedelta(hours=1) or value > DAY or DAY % value or value % timedelta(hours=1):
        raise ValueError(f"{text!r} does not divide a day into whole hours (use one of {allowed})")
    return value


def parse_instant(text: str) -> datetime:
    """`YYYY-MM-DD` (midnight UTC) or ISO-8601 with `Z` or an offset → aware UTC datetime."""
    raw = text.strip()
    try:
        if len(raw) == 10:
            return datetime.combine(date.fromisoformat(raw), datetime.min.time(), UTC)
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date or time (write YYYY-MM-DD or ISO-8601 like "
            "2024-01-31T06:00:00Z)"
        ) from None
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z for UTC, or an offset like +01:00)")
    return value.astimezone(UTC)


def format_instant(value: datetime) -> str:
    """ISO-8601 in UTC with `Z` and whole seconds, as Graph's function parameters take it."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, order=True)
class Window:
    """One unit of work: the rows of `kind` whose start time lies in [start, end)."""

    kind: Kind
    start: datetime
    end: datetime

    @property
    def date(self) -> date:
        """The UTC date of the window start, which names its `date=` partition."""
        return self.start.date()

    @property
    def name(self) -> str:
        """Window start in ISO basic form (`20240131T060000Z`): safe in S3 keys and Hadoop paths."""
        return self.start.strftime("%Y%m%dT%H%M%SZ")

    @property
    def key(self) -> str:
        """Where the window's Parquet object lives, relative to the destination."""
        return f"{self.kind.value}/date={self.date.isoformat()}/{self.name}.parquet"

    def __str__(self) -> str:
        return f"{self.kind.value} {format_instant(self.start)}..{format_instant(self.end)}"


def align_down(value: datetime, length: timedelta) -> datetime:
    """The window boundary at or before `value`."""
    midnight = datetime.combine(value.date(), datetime.min.time(), UTC)
    return midnight + ((value - midnight) // length) * length


def align_up(value: datetime, length: timedelta) -> datetime:
    """The window boundary at or after `value`."""
    down = align_down(value, length)
    return down if down == value else down + length


def plan(
    kinds: Iterable[Kind], start: datetime, end: datetime, length: timedelta
) -> Iterator[Window]:
    """Every window of `length` that covers [start, end), oldest first, kinds interleaved.

    A range that does not fall on window boundaries is widened to whole windows: a
    window is only ever archived whole, so its object holds all of its rows.
    """
    kinds = list(kinds)
    at = align_down(start, length)
    stop = align_up(end, length)
    while at < stop:
        for kind in kinds:
            yield Window(kind, at, at + length)
        at += length
