"""The coverage report of `archiver status`: per kind, is the archive complete and since
when, where are its holes, what failed and why, what is still to come, and how long
before Microsoft deletes what is not archived yet.

Pure functions of the manifest (records, plans, window length), the configuration (the
kinds `run` keeps current, its `start` and `settle`), each kind's retention and the
clock. The calendar picture is drawn with rich, imported only when a terminal shows it.

Definitions (README's "Coverage report" says the same to users):
- asked ranges: every backfill's plan; and, for a kind `run` keeps current, `run`'s
  range up to now: from `start` when it is configured, else from the first window
  archived outside every plan (only `run` archives those; without any, the archive is
  a backfill's only). Nothing before the first asked window counts as missing.
- complete: the contiguous run of archived windows that ends at the newest archived one.
- gap: consecutive windows inside the asked ranges, closed for `settle`, neither
  archived nor failed.
- failed range: consecutive failed windows that failed with the same error.
- pending: planned windows with no record yet (not attempted), closed or not.
- retention margin: whole days, rounded down, from Microsoft's retention cut-off to the
  start of the oldest window behind (a gap or a failure) that Graph still serves; None
  when nothing is behind. Windows behind that are past a documented retention are lost.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import IO, Any

from archiver.config import Config
from archiver.kinds import Kind
from archiver.manifest import KindSummary, Manifest, Record
from archiver.ops.continuous import retention_cutoff
from archiver.windows import DAY, align_down, align_up, format_instant, parse_instant

SHOWN = 10  # ranges listed per kind and category in the text report; the rest are counted
CALENDAR_MONTHS = 13  # months the calendar shows, ending at the newest one with anything


@dataclass(frozen=True)
class Span:
    """Consecutive windows [start, end)."""

    start: datetime
    end: datetime
    windows: int

    def to_json(self) -> dict[str, Any]:
        """The `status --json` form: ISO-8601 instants, end exclusive."""
        return {
            "start": format_instant(self.start),
            "end": format_instant(self.end),
            "windows": self.windows,
        }

    def __str__(self) -> str:
        return span_text(self.start, self.end)


@dataclass(frozen=True)
class FailedSpan(Span):
    """Consecutive failed windows and the error they failed with."""

    error: str

    def to_json(self) -> dict[str, Any]:
        """The `status --json` form, with the error."""
        return super().to_json() | {"error": self.error}


class Day(enum.Enum):
    """What the calendar shows for one day (no value: outside the asked ranges)."""

    ARCHIVED = "archived"  # every window of the day is archived
    PARTIAL = "partial"  # some are, some asked for are not (or the rest was never asked)
    FAILED = "failed"  # a window of the day failed
    MISSING = "missing"  # asked for, closed, nothing archived
    NOT_CLOSED = "not closed yet"  # asked for, not closed for `settle` yet (today, the future)


@dataclass
class Coverage:
    """The coverage report of one kind in one destination."""

    kind: Kind
    summary: KindSummary  # today's counts: done, failed, pending, rows, bytes, ...
    length: timedelta  # the window length
    now: datetime
    settled: datetime  # windows that end by then are closed
    asked: list[Span]  # the asked ranges, up to now
    complete: Span | None
    newest: Span | None  # the newest archived window
    gaps: list[Span]
    failed: list[FailedSpan]
    planned: int  # windows of the backfills' plans
    pending: list[Span]  # planned windows without a record
    oldest_behind: datetime | None  # start of the oldest window behind that Graph serves
    margin_days: int | None  # days from the retention cut-off to `oldest_behind`
    lost: int  # windows behind, past a documented retention
    _done: set[datetime] = field(default_factory=set, repr=False)
    _failed: set[datetime] = field(default_factory=set, repr=False)
    _asked: set[datetime] = field(default_factory=set, repr=False)

    @property
    def newest_age(self) -> timedelta | None:
        """How long ago the newest archived window ended."""
        return None if self.newest is None else self.now - self.newest.end

    @property
    def shown(self) -> bool:
        """Whether there is anything to report beyond today's counts."""
        return bool(self._done or self._failed or self._asked)

    def to_json(self) -> dict[str, Any]:
        """`status --json`'s form: today's keys, then the coverage beside them."""
        age = self.newest_age
        return self.summary.to_json() | {
            "complete": _range_json(self.complete),
            "newest_window_age_seconds": None if age is None else int(age.total_seconds()),
            "gaps": [s.to_json() for s in self.gaps],
            "failed_ranges": [s.to_json() for s in self.failed],
            "planned": self.planned,
            "pending_ranges": [s.to_json() for s in self.pending],
            "asked_ranges": [_range_json(s) for s in self.asked],
            "retention_days": self.kind.retention_days,
            "retention_documented": self.kind.log.retention_documented,
            "oldest_behind": format_instant(self.oldest_behind) if self.oldest_behind else None,
            "retention_margin_days": self.margin_days,
            "lost_windows": self.lost,
        }

    def day(self, day: date) -> Day | None:
        """The calendar's cell for `day` (None: blank, nothing asked or archived)."""
        midnight = datetime.combine(day, time(), UTC)
        starts = [midnight + i * self.length for i in range(DAY // self.length)]
        if any(s in self._failed for s in starts):
            return Day.FAILED
        done = sum(s in self._done for s in starts)
        wanted = [s for s in starts if s in self._asked and s not in self._done]
        if any(s + self.length <= self.settled for s in wanted):
            return Day.PARTIAL if done else Day.MISSING
        if done == len(starts):
            return Day.ARCHIVED
        if wanted:
            return Day.NOT_CLOSED
        return Day.PARTIAL if done else None

    def calendar(self, months: int = CALENDAR_MONTHS) -> list[tuple[date, list[Day | None]]]:
        """One row per month (its first day and a cell per day), the last `months` months
        up to the newest one with anything to show (never past the current month)."""
        marked = self._done | self._failed | self._asked
        if not marked:
            return []
        last = min(max(marked), self.now).date().replace(day=1)
        first = max(min(marked).date().replace(day=1), _add_months(last, 1 - months))
        rows = []
        month = first
        while month <= last:
            following = _add_months(month, 1)
            days = [month + timedelta(days=i) for i in range((following - month).days)]
            rows.append((month, [self.day(d) for d in days]))
            month = following
        return rows


def coverage(manifest: Manifest, config: Config, now: datetime) -> dict[Kind, Coverage]:
    """The coverage report of every kind in the destination `manifest` reads."""
    length = manifest.window or config.window
    summaries = manifest.summary()
    return {
        kind: report(
            kind,
            summaries[kind],
            [r for r in manifest.records.values() if r.kind is kind],
            _planned_ranges(manifest.plans, kind),
            length,
            config.start,
            kind in config.kinds,
            now - config.settle,
            now,
        )
        for kind in Kind
    }


def report(
    kind: Kind,
    summary: KindSummary,
    records: Sequence[Record],
    plans: Sequence[tuple[datetime, datetime]],
    length: timedelta,
    start: datetime | None,
    kept_current: bool,
    settled: datetime,
    now: datetime,
) -> Coverage:
    """The coverage report of one kind from its records, its backfills' ranges, `run`'s
    `start` (when `kept_current`), the window length and the clock (see the module doc)."""
    done = {r.start for r in records if r.done}
    failed = {r.start: r for r in records if not r.done}
    planned: set[datetime] = set()
    for low, high in plans:
        planned.update(_starts(low, high, length))
    asked = set(planned)
    outside = [s for s in done if s not in planned]
    run_start = start if start is not None else min(outside, default=None)
    if kept_current and run_start is not None:
        asked.update(_starts(run_start, now, length))
    missing = sorted(
        s for s in asked if s not in done and s not in failed and s + length <= settled
    )
    behind = sorted([*missing, *failed])
    cutoff = retention_cutoff(kind, now)
    documented = kind.log.retention_documented
    served = [s for s in behind if not (documented and s + length <= cutoff)]
    oldest = served[0] if served else None
    newest = max(done, default=None)
    complete = None
    if newest is not None:
        first = newest
        while first - length in done:
            first -= length
        complete = Span(first, newest + length, (newest - first) // length + 1)
    return Coverage(
        kind=kind,
        summary=summary,
        length=length,
        now=now,
        settled=settled,
        asked=_spans(sorted(asked), length),
        complete=complete,
        newest=None if newest is None else Span(newest, newest + length, 1),
        gaps=_spans(missing, length),
        failed=_failed_spans([failed[s] for s in sorted(failed)]),
        planned=len(planned),
        pending=_spans(sorted(s for s in planned if s not in done and s not in failed), length),
        oldest_behind=oldest,
        margin_days=None if oldest is None else math.floor((oldest - cutoff) / DAY),
        lost=len(behind) - len(served),
        _done=done,
        _failed=set(failed),
        _asked=asked,
    )


def _planned_ranges(plans: Iterable[dict[str, Any]], kind: Kind) -> list[tuple[datetime, datetime]]:
    """The ranges the backfills of `kind` asked for, from the manifest's plans."""
    return [
        (parse_instant(p["start"]), parse_instant(p["end"]))
        for p in plans
        if kind.value in p["kinds"]
    ]


def _starts(low: datetime, high: datetime, length: timedelta) -> Iterator[datetime]:
    """The starts of the windows covering [low, high)."""
    at, stop = align_down(low, length), align_up(high, length)
    while at < stop:
        yield at
        at += length


def _spans(starts: Sequence[datetime], length: timedelta) -> list[Span]:
    """Sorted window starts merged into spans of consecutive windows."""
    spans: list[Span] = []
    for s in starts:
        if spans and spans[-1].end == s:
            last = spans[-1]
            spans[-1] = Span(last.start, s + length, last.windows + 1)
        else:
            spans.append(Span(s, s + length, 1))
    return spans


def cause(record: Record) -> str:
    """A failed window's error without the window it names first (so that consecutive
    windows failing alike merge into one range)."""
    return (record.error or "unknown error").removeprefix(f"{record.window}: ")


def _failed_spans(records: Sequence[Record]) -> list[FailedSpan]:
    """Failed records, oldest first, merged where consecutive with the same error."""
    spans: list[FailedSpan] = []
    for r in records:
        error = cause(r)
        if spans and spans[-1].end == r.start and spans[-1].error == error:
            last = spans[-1]
            spans[-1] = FailedSpan(last.start, r.end, last.windows + 1, error)
        else:
            spans.append(FailedSpan(r.start, r.end, 1, error))
    return spans


def _range_json(span: Span | None) -> dict[str, str] | None:
    return None if span is None else {k: v for k, v in span.to_json().items() if k != "windows"}


def _add_months(month: date, count: int) -> date:
    """The first day of the month `count` months after `month`'s."""
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


# ---------------------------------------------------------------- text


def span_text(start: datetime, end: datetime) -> str:
    """A range as people read it: whole days as dates, the last one included
    (`2024-01-01 → 2024-01-31`), others as UTC instants (`…T06:00Z → …T09:00Z`)."""
    if start.timetz() == end.timetz() == time(tzinfo=UTC):
        last = (end - DAY).date()
        return f"{start.date()}" if last == start.date() else f"{start.date()} → {last}"
    return f"{_moment(start)} → {_moment(end)}"


def _moment(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def _windows(count: int) -> str:
    return f"{count:,} window{'' if count == 1 else 's'}"


def age_text(age: timedelta) -> str:
    """`3 days ago`, `5 hours ago`, `12 minutes ago`."""
    seconds = max(0, int(age.total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600)):
        if seconds >= 2 * size:
            return f"{seconds // size} {unit}s ago"
    minutes = seconds // 60
    return f"{minutes} minute{'' if minutes == 1 else 's'} ago"


def lines(report: Coverage) -> list[str]:
    """The report's plain lines below the kind's counts (none when nothing is asked or
    archived): `label  text`, most important first."""
    if not report.shown:
        return []
    out: list[str] = []

    def add(label: str, items: Sequence[Any], text: Any) -> None:
        for item in items[:SHOWN]:
            out.append(f"{label:10} {text(item)}")
        if len(items) > SHOWN:
            rest = sum(s.windows for s in items[SHOWN:])
            out.append(f"{label:10} … and {len(items) - SHOWN} more ({_windows(rest)})")

    if report.complete is None:
        out.append(f"{'complete':10} nothing archived yet")
    else:
        out.append(f"{'complete':10} {report.complete} ({_windows(report.complete.windows)})")
    if report.newest is not None and report.newest_age is not None:
        out.append(f"{'newest':10} {report.newest} (ended {age_text(report.newest_age)})")
    add("gap", report.gaps, lambda s: f"{s} ({_windows(s.windows)})")
    add("failed", report.failed, lambda s: f"{s} ({_windows(s.windows)}): {s.error}")
    if report.planned:
        pending = sum(s.windows for s in report.pending)
        out.append(f"{'planned':10} {_windows(report.planned)} by backfills, {pending:,} pending")
        add("pending", report.pending, lambda s: f"{s} ({_windows(s.windows)})")
    out.append(f"{'retention':10} {retention_text(report)}")
    if report.lost:
        out.append(
            f"{'lost':10} {_windows(report.lost)} not archived are past the retention: "
            "Graph no longer serves them"
        )
    return out


def retention_text(report: Coverage) -> str:
    """The retention margin in words."""
    kind = report.kind
    if kind.log.retention_documented:
        retention = f"Microsoft's {kind.retention_days}-day retention"
    else:
        retention = f"the {kind.retention_days}-day retention assumed (Microsoft documents none)"
    if report.oldest_behind is None or report.margin_days is None:
        return f"nothing behind ({retention})"
    days = report.margin_days
    oldest = span_text(report.oldest_behind, report.oldest_behind + DAY)
    if report.length != DAY:
        oldest = _moment(report.oldest_behind)
    if days < 0:
        return (
            f"{-days} day{'' if days == -1 else 's'} past {retention} for {oldest}, the "
            "oldest window not archived"
        )
    return (
        f"{days} day{'' if days == 1 else 's'} left before {retention} reaches {oldest}, "
        "the oldest window not archived"
    )


# ---------------------------------------------------------------- the calendar

SYMBOLS: dict[Day | None, tuple[str, str]] = {  # what a cell shows: its character and colour
    Day.ARCHIVED: ("█", "green"),
    Day.PARTIAL: ("▒", "yellow"),
    Day.FAILED: ("X", "red"),
    Day.MISSING: ("-", "red"),
    Day.NOT_CLOSED: ("·", "bright_black"),
    None: (" ", ""),
}
_LABEL = 8  # "2024-03 "


def draw_calendars(sections: Sequence[tuple[str, Coverage]], file: IO[str]) -> None:
    """Draw a calendar per titled report on a terminal: a row per month, a cell per day,
    the last CALENDAR_MONTHS months. rich handles colour, NO_COLOR and the terminal's
    width; it is imported here only, so commands that draw nothing do not load it."""
    from rich.console import Console
    from rich.text import Text

    console = Console(file=file, highlight=False, emoji=False, markup=False)
    drawn = False
    for title, report in sections:
        rows = report.calendar()
        if not rows:
            continue
        console.print()
        console.print(Text(title), no_wrap=True, overflow="crop")
        console.print(Text(_day_numbers()), no_wrap=True, overflow="crop")
        for month, cells in rows:
            line = Text(f"{month:%Y-%m}".ljust(_LABEL))
            for cell in cells:
                symbol, style = SYMBOLS[cell]
                line.append(symbol, style=style or None)
                line.append(" ")
            line.rstrip()
            console.print(line, no_wrap=True, overflow="crop")
        drawn = True
    if drawn:
        legend = Text()
        for day in Day:
            symbol, style = SYMBOLS[day]
            legend.append(symbol, style=style)
            legend.append(f" {day.value}  ")
        legend.append("(blank: not asked for)")
        console.print()
        console.print(legend, no_wrap=True, overflow="crop")


def _day_numbers() -> str:
    """The header above the cells: day numbers 1, 5, 10, … over their columns."""
    header = [" "] * (_LABEL + 62)
    for day in (1, 5, 10, 15, 20, 25, 30):
        at = _LABEL + 2 * (day - 1)
        header[at : at + len(str(day))] = str(day)
    return "".join(header).rstrip()


def calendar_column(day: int) -> int:
    """The column of day `day`'s cell in a calendar row (for readers of the picture)."""
    return _LABEL + 2 * (day - 1)
