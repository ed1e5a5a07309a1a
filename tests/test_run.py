"""`archiver run`: the container job, against the emulator, stopped by SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import archiver_command, archiver_env, assert_archive_exact, free_port, wait_for

from archiver.emulator import Emulator, EmulatorConfig
from archiver.kinds import DEFAULT_KINDS, Kind
from archiver.manifest import Manifest
from archiver.metrics import Metrics
from archiver.store import LocalStore
from archiver.windows import Window, align_down, format_instant

ROWS = {Kind.PSTN: 2400, Kind.DIRECT_ROUTING: 1200}  # 100 and 50 an hour
HOUR = timedelta(hours=1)
TENANT = EmulatorConfig().tenant_id  # the tenant label of every series


def done_windows(dest: Path) -> dict[Window, str]:
    """The windows the manifest records as done, with their object keys."""
    manifest = Manifest(LocalStore(dest))
    anyio.run(manifest.load)
    return {r.window: (r.key or "") for r in manifest.records.values() if r.done}


def get(port: int, path: str) -> tuple[str, str]:
    """(status, body) of a GET on the metrics port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return str(answer.status), answer.read().decode()


def scrape(port: int) -> dict[str, float]:
    """The metrics port's samples, by name and labels."""
    return samples_of(get(port, "/metrics")[1])


def scrape_text(metrics: Metrics) -> dict[str, float]:
    """A Metrics registry's samples, by name and labels."""
    return samples_of(metrics.render()[0].decode())


def samples_of(text: str) -> dict[str, float]:
    """Prometheus text format as {name{labels}: value}."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def start_run(emu: Emulator, dest: Path, start: datetime, **extra: str) -> subprocess.Popen[str]:
    """`archiver run` as its own process, as a container would run it."""
    env = {
        **os.environ,
        **archiver_env(
            emu,
            dest,
            ARCHIVER_WINDOW="1h",
            ARCHIVER_SETTLE="1s",
            ARCHIVER_START=format_instant(start),
            ARCHIVER_GRACE="10s",
            ARCHIVER_LEASE="5s",
            **extra,
        ),
    }
    return subprocess.Popen(
        archiver_command("run"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_run_archives_closed_windows_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`run` archives every closed window since `start`, exits 0 soon after SIGTERM, and
    leaves a consistent manifest and an exact archive."""
    now = datetime.now(UTC)
    start = align_down(now, HOUR) - 4 * HOUR
    closed = [
        Window(kind, start + i * HOUR, start + (i + 1) * HOUR)
        for i in range(4)
        for kind in DEFAULT_KINDS
    ]
    port = free_port()
    with Emulator(EmulatorConfig(rows_per_day=dict(ROWS))) as emu:
        dest = tmp_path / "archive"
        process = start_run(emu, dest, start, ARCHIVER_METRICS_PORT=f"127.0.0.1:{port}")
        try:
            wait_for(lambda: set(closed) <= set(done_windows(dest)), "the closed windows")
            done_gauge = 'archiver_windows{{kind="{}",state="done",tenant="{}"}}'
            wait_for(  # the round ends by publishing the manifest's counts
                lambda: all(
                    scrape(port).get(done_gauge.format(k.value, TENANT), 0) >= 4
                    for k in DEFAULT_KINDS
                ),
                "the windows gauge",
            )
            metrics = scrape(port)
            assert ("200", "ready") == (get(port, "/healthz")[0], get(port, "/readyz")[1])
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=15)  # well within the 10 s grace + exit
        finally:
            process.kill()
        assert 0 == process.returncode, err
        done = done_windows(dest)
        for kind in DEFAULT_KINDS:  # the counters moved with what was archived by the scrape
            rows = {w: len(emu.rows(kind, w.start, w.end)) for w in done if w.kind is kind}
            counted = metrics[f'archiver_rows_total{{kind="{kind.value}",tenant="{TENANT}"}}']
            assert sum(rows[w] for w in closed if w.kind is kind) <= counted <= sum(rows.values())
            assert (
                metrics[
                    f'archiver_graph_requests_total{{kind="{kind.value}",status="200",'
                    f'tenant="{TENANT}"}}'
                ]
                >= 4
            )
        for window, key in done.items():
            table = pq.read_table(dest / key, partitioning=None)
            truth = emu.rows(window.kind, window.start, window.end, version="v1.0")
            assert_archive_exact(window.kind, table, truth)
        verified = subprocess.run(
            archiver_command("verify", "--destination", str(dest)),
            capture_output=True,
            text=True,
            check=False,
        )
        assert 0 == verified.returncode, verified.stdout
    assert [] == [p for p in (dest / "_manifest" / "spool").rglob("*") if p.is_file()]
    assert '"message": "stopped"' in err


def test_resweep_adds_late_rows_and_never_drops_archived_ones(tmp_path: Path) -> None:
    """A row Graph adds after the first archive of its window arrives with the re-sweep, and
    rows Graph no longer returns stay in the archive."""
    now = datetime.now(UTC)
    start = align_down(now, HOUR) - 2 * HOUR
    window = Window(Kind.PSTN, start, start + HOUR)
    with Emulator(EmulatorConfig(rows_per_day=dict(ROWS))) as emu:
        first = emu.rows(Kind.PSTN, window.start, window.end, version="v1.0")
        dest = tmp_path / "archive"
        process = start_run(emu, dest, start, ARCHIVER_RESWEEP_INTERVAL="1s")
        try:
            wait_for(lambda: window in done_windows(dest), "the first archive")
            late = dict(
                first[0],
                id="late-row-0001",
                startDateTime=format_instant(window.start + timedelta(minutes=30)),
            )
            emu.add_rows(Kind.PSTN, [late])
            emu.config.seed = 99  # Graph now returns other rows for the window: keep ours too
            second = emu.rows(Kind.PSTN, window.start, window.end, version="v1.0")
            key = dest / done_windows(dest)[window]

            def has_late_row() -> bool:
                try:
                    ids = pq.read_table(key, columns=["id"]).column("id").to_pylist()
                except OSError:
                    return False
                return "late-row-0001" in ids

            wait_for(has_late_row, "the re-sweep")
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=15)
        finally:
            process.kill()
        assert 0 == process.returncode
    table = pq.read_table(key, partitioning=None)
    union = {row["id"]: row for row in first} | {row["id"]: row for row in second}
    assert_archive_exact(Kind.PSTN, table, union.values())


def test_round_skips_windows_past_retention_and_reports_them_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With `start` older than Microsoft keeps PSTN logs, those windows are never fetched,
    they are reported once (not every round), and the backlog warning names the margin."""
    from archiver.config import load
    from archiver.ops.continuous import Round, plan_round

    now = datetime(2025, 6, 1, 12, tzinfo=UTC)
    config = load({}, {"ARCHIVER_START": "2024-05-30", "ARCHIVER_WINDOW": "1d"})
    manifest = Manifest(LocalStore(tmp_path))
    this = Round(config, manifest, now)
    due, lost = this.due(Kind.PSTN)
    cutoff = now - timedelta(days=365)  # 2024-06-01T12:00
    assert [datetime(2024, 5, 30, tzinfo=UTC), datetime(2024, 5, 31, tzinfo=UTC)] == [
        w.start for w in lost
    ]
    assert datetime(2024, 6, 1, tzinfo=UTC) == due[0].start  # still partly served
    assert all(w.end > cutoff for w in due)
    assert datetime(2025, 5, 31, tzinfo=UTC) == due[-1].start  # the last window closed 1 h ago

    caplog.set_level(logging.INFO, logger="archiver")
    reported: set[Window] = set()
    metrics = Metrics()
    first = plan_round(this, reported, metrics)
    again = plan_round(this, reported, metrics)
    assert (
        due
        == [w for w in first if w.kind is Kind.PSTN]
        == [w for w in again if w.kind is Kind.PSTN]
    )
    lost_lines = [r.getMessage() for r in caplog.records if "past Microsoft" in r.getMessage()]
    assert [
        "2 pstn windows (2024-05-30T00:00:00Z .. 2024-06-01T00:00:00Z) were never archived "
        "and are past Microsoft's 365-day retention: they cannot be fetched any more",
        "217 direct_routing windows (2024-05-30T00:00:00Z .. 2025-01-02T00:00:00Z) were never "
        "archived and are past Microsoft's 150-day retention: they cannot be fetched any more",
    ] == lost_lines
    warnings = [r.getMessage() for r in caplog.records if "backlog" in r.getMessage()]
    assert 2 == sum("pstn backlog" in w for w in warnings)  # every round
    assert (
        "pstn backlog: the oldest window not yet archived (2024-06-01T00:00:00Z) is -0.5 "
        "days from Microsoft's retention cut-off" == warnings[0]
    )
    margin = next(
        v
        for k, v in scrape_text(metrics).items()
        if k.startswith('archiver_retention_margin_days{kind="pstn"')
    )
    # the metric counts from the real clock at scrape time, not from the round's `now`
    expected = (due[0].start - (datetime.now(UTC) - timedelta(days=365))) / timedelta(days=1)
    assert abs(expected - margin) < 0.01


@pytest.mark.slow
def test_second_signal_stops_at_once_and_leaves_nothing_half_done(tmp_path: Path) -> None:
    """SIGTERM starts a graceful stop; a second one abandons the windows in flight at once
    (exit 130 for a backfill), removing their spool files and releasing their claims, so
    the next run takes them straight away and ends with the exact archive."""
    start = datetime(2024, 3, 4, tzinfo=UTC)
    with Emulator(EmulatorConfig(rows_per_day=dict(ROWS), latency=5.0)) as emu:
        dest = tmp_path / "archive"
        env = {**os.environ, **archiver_env(emu, dest, ARCHIVER_GRACE="10m")}
        args = archiver_command("backfill", "--start", "2024-03-04", "--end", "2024-03-06")
        process = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(process.stderr or []), daemon=True)
        reader.start()
        try:
            wait_for(lambda: any(r.endpoint == "graph" for r in emu.requests), "a page request")
            process.send_signal(signal.SIGTERM)
            # a second signal sent before the first is handled would merge with it
            wait_for(
                lambda: any("finishing windows in flight" in line for line in lines),
                "the graceful stop to begin",
            )
            process.send_signal(signal.SIGTERM)
            out = process.stdout.read() if process.stdout else ""
            process.wait(timeout=60)  # far below the 10-minute grace
            reader.join(timeout=10)
            err = "".join(lines)
        finally:
            process.kill()
            for stream in (process.stdout, process.stderr):
                if stream:
                    stream.close()
        assert 130 == process.returncode, err
        assert "stopped by a signal with 4 windows not archived: run again to finish" in out
        assert "again: stopping now" in err
        assert [] == list(dest.rglob("*.parquet"))
        assert [] == [p for p in (dest / "_manifest" / "spool").rglob("*") if p.is_file()]
        emu.config.latency = 0.0
        done = subprocess.run(
            args, env=env, capture_output=True, text=True, check=False, timeout=60
        )  # a claim left held would wait out its 2-minute lease
        assert 0 == done.returncode, done.stderr
        for kind in DEFAULT_KINDS:
            truth = emu.rows(kind, start, start + timedelta(days=2), version="v1.0")
            table = pa.concat_tables(
                pq.read_table(p, partitioning=None)
                for p in sorted((dest / kind.value).rglob("*.parquet"))
            )
            assert_archive_exact(kind, table, truth)
