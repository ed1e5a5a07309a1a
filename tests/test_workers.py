"""Crashes and several workers on one destination: every row exactly once, little waste."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from helpers import archiver_command, archiver_env, assert_archive_exact, read_local, read_s3

from archiver.cli import main
from archiver.emulator import Emulator, EmulatorConfig
from archiver.kinds import DEFAULT_KINDS, Kind
from archiver.manifest import Manifest, Record, State, record_id
from archiver.manifest.lease import AlreadyDone, Busy, Claimed, Leases, claim_key
from archiver.store import LocalStore, open_store
from archiver.windows import Window

START = datetime(2024, 3, 4, tzinfo=UTC)
ROWS = {Kind.PSTN: 1500, Kind.DIRECT_ROUTING: 1100}


@pytest.mark.slow
def test_sigkill_at_random_moments_then_a_full_run_leaves_an_exact_archive(
    tmp_path: Path,
) -> None:
    """Five SIGKILLs at random moments of a two-week backfill, then a run to the end:
    every id exactly once and `verify` finds nothing wrong."""
    # A window takes two pages of 0.4 s each, longer than the (at most 0.4 s) wait for the
    # kill, so after its first object a run can finish only the windows its two workers
    # then have in flight: five runs store at most 20 of the 28 windows, and each is
    # killed whatever its random moment.
    config = EmulatorConfig(rows_per_day=dict(ROWS), latency=0.4)
    rng = random.Random(20241124)
    with Emulator(config) as emu:
        dest = tmp_path / "archive"
        env = {
            **os.environ,
            **archiver_env(emu, dest, ARCHIVER_CONCURRENCY="2", ARCHIVER_LEASE="2s"),
        }
        args = archiver_command("backfill", "--start", "2024-03-04", "--end", "2024-03-18")
        stored = 0
        kills = 0
        ended: list[int] = []  # exit codes of runs that ended before their kill
        for _ in range(5):
            process = subprocess.Popen(
                args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + 60
            while (
                len(list(dest.rglob("*.parquet"))) <= stored
                and process.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.01)  # until this run has stored something
            time.sleep(rng.uniform(0, 0.4))  # then a random moment, not a timing assertion
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            else:
                ended.append(process.returncode)
            process.wait()
            stored = len(list(dest.rglob("*.parquet")))
        assert 5 == kills, f"runs ended before their kill, exit codes {ended}"
        assert stored < 28, "the killed runs archived everything: nothing was left to resume"
        emu.config.latency = 0.0  # the run to the end need not be slow
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        assert 0 == done.returncode, done.stderr
        for kind in DEFAULT_KINDS:
            truth = emu.rows(kind, START, START + timedelta(days=14), version="v1.0")
            assert_archive_exact(kind, read_local(dest, kind), truth)
        verified = subprocess.run(
            archiver_command("verify"), env=env, capture_output=True, text=True, check=False
        )
        assert 0 == verified.returncode, verified.stdout
        assert [] == [p for p in (dest / "_manifest" / "spool").rglob("*") if p.is_file()]


def pages_fetched(emu: Emulator) -> int:
    """Graph pages the emulator served."""
    return sum(1 for r in emu.requests if r.endpoint == "graph" and r.status == 200)


@pytest.mark.slow
def test_three_workers_on_one_destination_share_the_work(
    tmp_path: Path, s3_destination: str
) -> None:
    """Three processes on the same range and S3 destination: the exact archive, and at most
    1.3 times the pages one process needs."""
    config = EmulatorConfig(rows_per_day=dict(ROWS), latency=0.02)
    with Emulator(config) as emu:
        single = subprocess.run(
            archiver_command("backfill", "--start", "2024-03-04", "--end", "2024-03-18"),
            env={**os.environ, **archiver_env(emu, tmp_path / "single")},
            capture_output=True,
            text=True,
            check=False,
        )
        assert 0 == single.returncode, single.stderr
        needed = pages_fetched(emu)
        emu.clear_requests()
        env = {**os.environ, **archiver_env(emu, s3_destination, ARCHIVER_CONCURRENCY="3")}
        args = archiver_command("backfill", "--start", "2024-03-04", "--end", "2024-03-18")
        workers = [
            subprocess.Popen(
                args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(3)
        ]
        outputs = [w.communicate(timeout=300) for w in workers]
        assert [0, 0, 0] == [w.returncode for w in workers], outputs
        fetched = pages_fetched(emu)
        for kind in DEFAULT_KINDS:
            truth = emu.rows(kind, START, START + timedelta(days=14), version="v1.0")
            assert_archive_exact(kind, read_s3(s3_destination, kind, tmp_path), truth)
    assert fetched <= 1.3 * needed, f"{fetched} pages fetched, one worker needs {needed}"


def test_claims_keep_a_live_workers_window_and_hand_over_a_dead_ones(tmp_path: Path) -> None:
    """A held window is BUSY for others until its lease expires, then taken over; a finished
    one is DONE for everybody."""
    store = LocalStore(tmp_path / "archive")
    store.check()
    window = Window(Kind.PSTN, START, START + timedelta(hours=1))
    now = [1000.0]
    alive = Leases(store, "alive", 60, clock=lambda: now[0])
    other = Leases(store, "other", 60, clock=lambda: now[0])
    outcome = alive.claim(window)
    assert isinstance(outcome, Claimed) and not outcome.taken_over
    claim = outcome.claim
    assert Busy(1060.0) == other.claim(window)
    now[0] = 1050.0
    assert alive.renew(claim)
    now[0] = 1100.0
    assert Busy(1110.0) == other.claim(window)
    now[0] = 1111.0  # "alive" died without renewing
    taken = other.claim(window)
    assert isinstance(taken, Claimed) and taken.taken_over
    assert not alive.renew(claim)
    other.finish(taken.claim)
    assert AlreadyDone() == alive.claim(window)
    held = json.loads(store.get_bytes(claim_key(window))[0])  # type: ignore[index]
    assert ("other", "done") == (held["owner"], held["state"])


def test_status_over_years_of_hourly_windows_reads_a_handful_of_objects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ~20,000 hourly windows recorded, `status` reads the compacted snapshot and a few
    journal entries — not one object per window — and counts them all."""
    dest = tmp_path / "archive"
    store = LocalStore(dest)
    store.check()
    manifest = Manifest(store)
    hours = 10_000
    first = datetime(2023, 1, 1, tzinfo=UTC)

    async def fill() -> None:
        await manifest.fix_window(timedelta(hours=1))
        for i in range(hours):
            for kind in DEFAULT_KINDS:
                start = first + timedelta(hours=i)
                manifest.records[record_id(kind, start)] = Record(
                    kind=kind,
                    start=start,
                    end=start + timedelta(hours=1),
                    state=State.DONE,
                    recorded_at=datetime(2024, 1, 1, tzinfo=UTC),
                    key=f"{kind.value}/x.parquet",
                    rows=10,
                    bytes=1000,
                    sha256="0" * 64,
                )
        await manifest.compact()
        for kind in DEFAULT_KINDS:  # and a few journal entries on top
            start = first + timedelta(hours=hours)
            await manifest.record(
                Record(
                    kind=kind,
                    start=start,
                    end=start + timedelta(hours=1),
                    state=State.FAILED,
                    recorded_at=datetime(2024, 1, 2, tzinfo=UTC),
                    error="Graph answered 500",
                )
            )

    anyio.run(fill)
    reads: list[str] = []
    original = LocalStore.get_bytes

    def counting(self: LocalStore, key: str) -> tuple[bytes, str] | None:
        reads.append(key)
        return original(self, key)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalStore, "get_bytes", counting)
        capsys.readouterr()
        assert 0 == main(["status", "--json", "--destination", str(dest)])
    status = json.loads(capsys.readouterr().out)["kinds"]
    archived = {k.value: (hours, 1, hours * 10) for k in DEFAULT_KINDS}
    never = {k.value: (0, 0, 0) for k in Kind if k not in DEFAULT_KINDS}  # listed, at 0
    assert archived | never == {k: (v["done"], v["failed"], v["rows"]) for k, v in status.items()}
    assert len(reads) <= 5, reads


def test_object_lock_keeps_data_objects_from_deletion(
    tmp_path: Path, s3_locked_destination: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Object Lock retention configured, an archived object's version cannot be deleted
    before its retain-until date."""
    import boto3

    with Emulator(EmulatorConfig(rows_per_day={Kind.PSTN: 100, Kind.DIRECT_ROUTING: 100})) as emu:
        env = archiver_env(
            emu,
            s3_locked_destination,
            ARCHIVER_OBJECT_LOCK_MODE="COMPLIANCE",
            ARCHIVER_OBJECT_LOCK_DAYS="30",
        )
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert 0 == main(["backfill", "--start", "2024-03-04", "--end", "2024-03-05"])
    bucket, _, prefix = s3_locked_destination.removeprefix("s3://").partition("/")
    key = f"{prefix}/pstn/date=2024-03-04/20240304T000000Z.parquet"
    client = boto3.client("s3")
    head = client.head_object(Bucket=bucket, Key=key)
    assert "COMPLIANCE" == head["ObjectLockMode"]
    retain = head["ObjectLockRetainUntilDate"]
    assert timedelta(days=29) < retain - datetime.now(UTC) <= timedelta(days=30)
    with pytest.raises(client.exceptions.ClientError) as refused:
        client.delete_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])
    assert "AccessDenied" == refused.value.response["Error"]["Code"]
    store = open_store(s3_locked_destination)
    assert store.head("pstn/date=2024-03-04/20240304T000000Z.parquet") is not None
