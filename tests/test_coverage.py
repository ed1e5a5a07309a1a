"""`archiver status`'s coverage report on a real archive made through the emulator: the
text and the JSON of an archive with a failed range, gaps and a pending range; the
calendar on a pseudo-terminal and its absence when piped; one answer for a destination
without a manifest, from `status` and `verify` alike, and per tenant; and the report's
rules for windows shorter than a day, on records made by hand."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from helpers import archiver_command, archiver_env, backfill

from archiver import cli
from archiver.cli import main
from archiver.emulator import Emulator
from archiver.kinds import Kind
from archiver.manifest import KindSummary, Manifest, Record, State
from archiver.ops.coverage import SYMBOLS, Day, calendar_column
from archiver.ops.coverage import report as coverage_report
from archiver.store import LocalStore

pytestmark = pytest.mark.emulator(rows_per_day={Kind.PSTN: 3, Kind.DIRECT_ROUTING: 2})

NOW = datetime(2024, 1, 8, 12, 0, tzinfo=UTC)  # the clock `status` reads in these tests
REFUSED = "Graph answered 400: BadRequest: The requested range cannot be served."


def add_plan(destination: Path, kind: Kind, start: datetime, end: datetime) -> None:
    """Record a backfill's range without archiving any of it: what a backfill stopped
    before it reached that range leaves behind."""

    async def plan() -> None:
        manifest = Manifest(LocalStore(destination))
        await manifest.load()
        await manifest.add_plan([kind], start, end)

    anyio.run(plan)


@pytest.fixture
def archive(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pstn archive kept current from 2024-01-01 (`start`): 01-01 archived, 01-02 and
    01-03 failed alike, 01-04 never asked of a backfill (a gap in `run`'s range), 01-05
    and 01-06 archived, 01-07 missing, 01-08 and 01-09 planned and not closed yet."""
    env = archiver_env(emulator, tmp_path, ARCHIVER_KINDS="pstn", ARCHIVER_START="2024-01-01")
    emulator.config.refused_ranges = [("2024-01-02T00:00:00Z", "2024-01-04T00:00:00Z")]
    assert 1 == backfill(monkeypatch, env, "--start", "2024-01-01", "--end", "2024-01-04")
    assert 0 == backfill(monkeypatch, env, "--start", "2024-01-05", "--end", "2024-01-07")
    add_plan(
        tmp_path, Kind.PSTN, datetime(2024, 1, 8, tzinfo=UTC), datetime(2024, 1, 10, tzinfo=UTC)
    )
    monkeypatch.setattr(cli, "utcnow", lambda: NOW)
    return tmp_path


def parquet_bytes(root: Path, kind: Kind) -> int:
    """The size of every archived object of `kind`."""
    return sum(p.stat().st_size for p in (root / kind.value).rglob("*.parquet"))


def test_status_reports_complete_span_gaps_failures_and_pending(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report names each range with its dates, the failures with their error, and the
    retention margin of the oldest window not archived; kinds with nothing say nothing."""
    capsys.readouterr()
    assert 0 == main(["status"])
    out = capsys.readouterr().out
    stamps = re.findall(r"last success (\S+)", out)
    assert "-" != stamps[0] and ["-", "-", "-"] == stamps[1:]
    out = out.replace(stamps[0], "<time>")
    size = parquet_bytes(archive, Kind.PSTN)
    assert [
        f"destination: {archive}",
        "pstn               done      3  failed    2  pending      2  rows            9  "
        f"bytes {size:>14,}  last success <time>",
        "    complete   2024-01-05 → 2024-01-06 (2 windows)",
        "    newest     2024-01-06 (ended 36 hours ago)",
        "    gap        2024-01-04 (1 window)",
        "    gap        2024-01-07 (1 window)",
        f"    failed     2024-01-02 → 2024-01-03 (2 windows): {REFUSED}",
        "    planned    7 windows by backfills, 2 pending",
        "    pending    2024-01-08 → 2024-01-09 (2 windows)",
        "    retention  358 days left before Microsoft's 365-day retention reaches "
        "2024-01-02, the oldest window not archived",
        "direct_routing     done      0  failed    0  pending      0  rows            0  "
        "bytes              0  last success -",
        "sms                done      0  failed    0  pending      0  rows            0  "
        "bytes              0  last success -",
        "pstn_blocked_users done      0  failed    0  pending      0  rows            0  "
        "bytes              0  last success -",
    ] == out.splitlines()


def test_status_json_carries_the_same_typed(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --json` keeps today's keys and adds the report's, typed: ISO-8601 instants
    (end exclusive), ints, null where there is nothing."""
    capsys.readouterr()
    assert 0 == main(["status", "--json"])
    document = json.loads(capsys.readouterr().out)
    pstn = document["kinds"]["pstn"]
    assert pstn.pop("bytes") == parquet_bytes(archive, Kind.PSTN)
    assert datetime.fromisoformat(pstn.pop("last_success")) > NOW
    day = "2024-01-{:02d}T00:00:00Z".format
    assert {
        "done": 3,
        "failed": 2,
        "pending": 2,
        "rows": 9,
        "newest_window": day(7),
        "failures": [
            f"{day(2)} pstn {day(2)}..{day(3)}: {REFUSED}",
            f"{day(3)} pstn {day(3)}..{day(4)}: {REFUSED}",
        ],
        "complete": {"start": day(5), "end": day(7)},
        "newest_window_age_seconds": 36 * 3600,
        "gaps": [
            {"start": day(4), "end": day(5), "windows": 1},
            {"start": day(7), "end": day(8), "windows": 1},
        ],
        "failed_ranges": [{"start": day(2), "end": day(4), "windows": 2, "error": REFUSED}],
        "planned": 7,
        "pending_ranges": [{"start": day(8), "end": day(10), "windows": 2}],
        "asked_ranges": [{"start": day(1), "end": day(10)}],
        "retention_days": 365,
        "retention_documented": True,
        "oldest_behind": day(2),
        "retention_margin_days": 358,
        "lost_windows": 0,
    } == pstn
    assert {
        "done": 0,
        "failed": 0,
        "pending": 0,
        "rows": 0,
        "bytes": 0,
        "last_success": None,
        "newest_window": None,
        "failures": [],
        "complete": None,
        "newest_window_age_seconds": None,
        "gaps": [],
        "failed_ranges": [],
        "planned": 0,
        "pending_ranges": [],
        "asked_ranges": [],
        "retention_days": 150,
        "retention_documented": False,
        "oldest_behind": None,
        "retention_margin_days": None,
        "lost_windows": 0,
    } == document["kinds"]["sms"]
    assert {"destination": str(archive)} == {k: v for k, v in document.items() if k != "kinds"}


def test_retention_margin_counts_windows_past_retention_as_lost(
    archive: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A year on, the cut-off is 2024-01-04 12:00: the failed windows ended before it and
    are lost; the oldest window behind that Graph still serves (in part) is the gap of
    2024-01-04, whose start the retention passed half a day ago."""
    monkeypatch.setattr(cli, "utcnow", lambda: datetime(2025, 1, 3, 12, tzinfo=UTC))
    capsys.readouterr()
    assert 0 == main(["status", "--json"])
    pstn = json.loads(capsys.readouterr().out)["kinds"]["pstn"]
    assert (2, "2024-01-04T00:00:00Z", -1) == (
        pstn["lost_windows"],
        pstn["oldest_behind"],
        pstn["retention_margin_days"],
    )


# --- the calendar -------------------------------------------------------------------------


def run_in_terminal(env: dict[str, str], *args: str) -> str:
    """Run the archiver under a pseudo-terminal; everything it wrote, line ends as `\\n`."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        archiver_command(*args),
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        close_fds=True,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert 0 == process.wait(timeout=60)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def cells(output: str, title: str) -> dict[date, str]:
    """The calendar titled `title` in `output`, as one character per day."""
    lines = output.splitlines()
    at = lines.index(title) + 2  # the title, the day numbers, then a row per month
    found: dict[date, str] = {}
    while at < len(lines) and re.match(r"\d{4}-\d\d ", lines[at]):
        year, month = map(int, lines[at][:7].split("-"))
        for day in range(1, 32):
            column = calendar_column(day)
            if column < len(lines[at]):
                found[date(year, month, day)] = lines[at][column]
        at += 1
    return found


@pytest.fixture
def recent(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An archive of 12-hour windows of days counted back from today (the subprocess reads
    the real clock): -8 archived, -7 half (the other half never asked for), -6 failed, -5
    not asked for, -4 and -3 missing, -2 not asked for, -1 not closed yet (settle is 2
    days: whatever the hour, both its windows end after now - 2 days)."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day = lambda n: (today + timedelta(days=n)).isoformat()  # noqa: E731
    env = archiver_env(
        emulator, tmp_path, ARCHIVER_KINDS="pstn", ARCHIVER_WINDOW="12h", ARCHIVER_SETTLE="2d"
    )
    emulator.config.refused_ranges = [(day(-6), day(-5))]
    assert 0 == backfill(monkeypatch, env, "--start", day(-8), "--end", day(-7)[:10] + "T12:00:00Z")
    assert 1 == backfill(monkeypatch, env, "--start", day(-6), "--end", day(-5))
    add_plan(tmp_path, Kind.PSTN, today - timedelta(days=4), today - timedelta(days=2))
    add_plan(tmp_path, Kind.PSTN, today - timedelta(days=1), today)
    return {**os.environ, **env, "COLUMNS": "100", "TERM": "xterm-256color"}


def test_calendar_on_a_terminal_marks_each_day(recent: dict[str, str]) -> None:
    """On a terminal the report ends with a calendar per kind that has anything: a row per
    month, a cell per day; with NO_COLOR, plain characters without escape sequences."""
    output = run_in_terminal({**recent, "NO_COLOR": "1"}, "status")
    today = datetime.now(UTC).date()
    assert "\x1b" not in output
    shown = cells(output, "pstn")
    symbol = {state: SYMBOLS[state][0] for state in (*Day, None)}
    assert [
        symbol[None],
        symbol[Day.ARCHIVED],
        symbol[Day.PARTIAL],
        symbol[Day.FAILED],
        symbol[None],
        symbol[Day.MISSING],
        symbol[Day.MISSING],
        symbol[None],
        symbol[Day.NOT_CLOSED],
    ] == [shown.get(today + timedelta(days=n), " ") for n in range(-9, 0)]
    assert "direct_routing" not in [line.strip() for line in output.splitlines()]
    legend = "█ archived  ▒ partial  X failed  - missing  · not closed yet  (blank: not asked for)"
    assert legend == output.splitlines()[-1]


def test_calendar_has_colours_without_no_color(recent: dict[str, str]) -> None:
    """Without NO_COLOR the cells are coloured (an archived day green)."""
    output = run_in_terminal(recent, "status")
    assert "\x1b[32m█" in output


def test_no_calendar_when_piped(recent: dict[str, str]) -> None:
    """Piped, the report is plain lines: no calendar, no legend, no escape sequences."""
    done = subprocess.run(
        archiver_command("status"), env=recent, capture_output=True, text=True, check=False
    )
    assert (0, "") == (done.returncode, done.stderr)
    assert "\x1b" not in done.stdout
    assert not [line for line in done.stdout.splitlines() if re.match(r"\d{4}-\d\d ", line)]
    assert "archived  ▒ partial" not in done.stdout
    assert done.stdout.startswith(f"destination: {recent['ARCHIVER_DESTINATION']}\n")


def test_rich_is_imported_only_to_draw(recent: dict[str, str]) -> None:
    """The terminal library is loaded only when a calendar is drawn: not by other commands,
    not by a piped `status`."""
    code = (
        "import sys; from archiver.cli import main; code = main(['status']); "
        "sys.stderr.write(repr((code, 'rich' in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=recent, capture_output=True, text=True, check=False
    )
    assert "(0, False)" == done.stderr


# --- nothing archived ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "verify"])
def test_a_destination_without_manifest_is_one_line_and_exit_2(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` and `verify` give the same answer for a folder with no manifest."""
    assert 2 == main([command, "--destination", str(tmp_path)])
    out, err = capsys.readouterr()
    assert ("", f"archiver: destination {tmp_path}: nothing archived here (no manifest)\n") == (
        out,
        err,
    )


def test_a_tenant_without_manifest_is_shown_and_skipped(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """With tenants, one not archived yet is named by `status` and `verify` and the others
    are reported; when none has a manifest, the destination as a whole has nothing."""
    emulator.config.tenants = ["t-1", "t-2"]
    env = archiver_env(emulator, tmp_path, ARCHIVER_TENANTS="t-1,t-2", ARCHIVER_KINDS="pstn")
    del env["ARCHIVER_TENANT_ID"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert 2 == main(["status"])
    assert 2 == main(["verify"])
    line = f"archiver: destination {tmp_path}: nothing archived here (no manifest)\n"
    assert ("", line * 2) == capsys.readouterr()
    assert 0 == backfill(
        monkeypatch, env, "--start", "2024-01-01", "--end", "2024-01-02", "--tenant", "t-1"
    )
    capsys.readouterr()
    assert 0 == main(["status"])
    out = capsys.readouterr().out.splitlines()
    assert ["tenant t-2", "  nothing archived yet (no manifest)", "all tenants"] == out[
        out.index("tenant t-2") : out.index("all tenants") + 1
    ]
    assert 0 == main(["status", "--json"])
    tenants = json.loads(capsys.readouterr().out)["tenants"]
    assert {"t-1": (False, 1), "t-2": (True, 0)} == {
        t: (s["nothing_archived"], s["kinds"]["pstn"]["done"]) for t, s in tenants.items()
    }
    assert 0 == main(["verify"])
    assert [
        "tenant t-2: nothing archived yet (no manifest)",
        "verified 1 objects: 0 problems",
    ] == capsys.readouterr().out.splitlines()


# --- the report's rules, on records made by hand ------------------------------------------


def test_hourly_windows_read_as_instants_and_only_equal_errors_merge() -> None:
    """With hourly windows, ranges that are not whole days read as UTC instants; failed
    windows merge only while their error (less the window's own name) is the same; a day
    with some windows archived and the rest missing is partial."""
    hour = timedelta(hours=1)
    base = datetime(2024, 3, 1, tzinfo=UTC)

    def record(i: int, error: str | None = None) -> Record:
        start = base + i * hour
        window = f"pstn {start:%Y-%m-%dT%H:%M:%SZ}..{start + hour:%Y-%m-%dT%H:%M:%SZ}"
        return Record(
            Kind.PSTN,
            start,
            start + hour,
            State.FAILED if error else State.DONE,
            NOW,
            error=f"{window}: {error}" if error else None,
        )

    records = [record(i) for i in range(6)]
    records += [record(6, "boom"), record(7, "boom"), record(8, "other")]
    records += [record(i) for i in range(10, 14)]
    report = coverage_report(
        Kind.PSTN,
        KindSummary(),
        records,
        [(base, base + 20 * hour)],
        hour,
        None,
        False,
        base + 20 * hour,
        base + 21 * hour,
    )
    assert "2024-03-01T10:00Z → 2024-03-01T14:00Z" == str(report.complete)
    assert [
        ("2024-03-01T06:00Z → 2024-03-01T08:00Z", 2, "boom"),
        ("2024-03-01T08:00Z → 2024-03-01T09:00Z", 1, "other"),
    ] == [(str(s), s.windows, s.error) for s in report.failed]
    assert ["2024-03-01T09:00Z → 2024-03-01T10:00Z", "2024-03-01T14:00Z → 2024-03-01T20:00Z"] == [
        str(s) for s in report.gaps
    ]
    assert Day.FAILED == report.day(base.date())
    assert [Day.ARCHIVED, Day.PARTIAL] == [
        coverage_report(
            Kind.PSTN, KindSummary(), [record(i) for i in range(n)], [], hour, None, False, NOW, NOW
        ).day(base.date())
        for n in (24, 5)
    ]
