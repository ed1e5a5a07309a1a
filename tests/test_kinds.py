"""All four logs end to end: the call logs, the SMS log and the PSTN blocked-users log,
each by its own time column and key, archived exactly and read back as users read them."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from helpers import archiver_env, assert_archive_exact, backfill, read_local

from archiver.cli import main
from archiver.emulator import Emulator
from archiver.kinds import DEFAULT_KINDS, Kind
from archiver.schema import schema_for

START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 10
END = START + timedelta(days=DAYS)
RANGE = ("--start", "2024-03-01", "--end", "2024-03-11")
ROWS = {Kind.PSTN: 120, Kind.DIRECT_ROUTING: 90, Kind.SMS: 150, Kind.PSTN_BLOCKED_USERS: 40}
ALL = ",".join(kind.value for kind in Kind)

pytestmark = pytest.mark.emulator(rows_per_day=ROWS, page_size=50)


def graph_calls(emu: Emulator) -> Counter[str]:
    """Graph requests so far, by function name."""
    return Counter(
        next(k.function for k in Kind if f"/{k.function}(" in r.path_qs)
        for r in emu.requests
        if r.endpoint == "graph"
    )


def test_ten_days_of_all_four_logs_on_beta_are_exact(
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every row of every log once by its key, each column as the source (the time column
    to the microsecond, unknown properties in additionalData); DuckDB reads each kind as
    one hive-partitioned table; a re-run asks Graph nothing; status and verify name all
    four kinds."""
    dest = tmp_path / "archive"
    env = archiver_env(emulator, dest, ARCHIVER_GRAPH_VERSION="beta", ARCHIVER_KINDS=ALL)
    assert 0 == backfill(monkeypatch, env, *RANGE)
    for kind in Kind:
        truth = emulator.rows(kind, START, END, version="beta")
        assert len(truth) == ROWS[kind] * DAYS
        assert_archive_exact(kind, read_local(dest, kind), truth)
        counted = duckdb.sql(
            f"SELECT count(*), count(DISTINCT {kind.key}), min(date), max(date) "
            f"FROM read_parquet('{dest}/{kind.value}/**/*.parquet', hive_partitioning=true)"
        ).fetchall()[0]
        assert (ROWS[kind] * DAYS, ROWS[kind] * DAYS) == counted[:2]
        assert ("2024-03-01", "2024-03-10") == tuple(str(d) for d in counted[2:])
    blocked = pq.read_table(next((dest / "pstn_blocked_users").rglob("*.parquet")))
    assert "id" not in blocked.schema.names
    assert not blocked.schema.field("remediationId").nullable

    asked = len(emulator.requests)
    capsys.readouterr()
    assert 0 == backfill(monkeypatch, env, *RANGE)
    assert asked == len(emulator.requests)  # nothing new to fetch: not even a token
    assert f"({4 * DAYS} already archived, 0 failed" in capsys.readouterr().out

    assert 0 == main(["status", "--json", "--destination", str(dest)])
    kinds = json.loads(capsys.readouterr().out)["kinds"]
    assert {k.value: (DAYS, ROWS[k] * DAYS) for k in Kind} == {
        name: (entry["done"], entry["rows"]) for name, entry in kinds.items()
    }
    assert 0 == main(["verify", "--destination", str(dest)])
    assert f"verified {4 * DAYS} objects: 0 problems" in capsys.readouterr().out


def test_sms_with_graph_version_v1_is_fetched_from_beta(
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """graph_version v1.0 serves no SMS log: it is fetched from beta, exactly, and the
    Parquet metadata and the manifest say beta."""
    dest = tmp_path / "archive"
    env = archiver_env(emulator, dest, ARCHIVER_GRAPH_VERSION="v1.0")
    assert 0 == backfill(monkeypatch, env, *RANGE, "--kind", "sms")
    truth = emulator.rows(Kind.SMS, START, END, version="beta")
    assert_archive_exact(Kind.SMS, read_local(dest, Kind.SMS), truth)
    paths = {
        r.path_qs.split("/communications/")[0] for r in emulator.requests if r.endpoint == "graph"
    }
    assert {"/beta"} == paths
    first = next((dest / "sms").rglob("*.parquet"))
    assert b"beta" == pq.read_metadata(first).metadata[b"archiver.graph_version"]
    assert {Kind.SMS: DAYS} == Counter(k for k in Kind for _ in (dest / k.value).rglob("*.parquet"))


def test_default_kinds_stay_the_two_call_logs(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without `kinds` or --kind, a backfill archives the two call logs, as before, and
    asks Graph for nothing else."""
    dest = tmp_path / "archive"
    assert 0 == backfill(
        monkeypatch, archiver_env(emulator, dest), "--start", "2024-03-01", "--end", "2024-03-02"
    )
    assert set(DEFAULT_KINDS) == {k for k in Kind if (dest / k.value).exists()}
    assert {"getPstnCalls": 1, "getDirectRoutingCalls": 1} == {
        name: 1 for name in graph_calls(emulator)
    }


def test_every_kind_declares_its_key_and_time_column_in_its_schema() -> None:
    """The declaration is consistent: key and time column are columns of the kind's
    schema, the key is never null, the time column is a UTC microsecond timestamp."""
    for kind in Kind:
        schema = schema_for(kind)
        assert not schema.field(kind.key).nullable
        assert "timestamp[us, tz=UTC]" == str(schema.field(kind.time_column).type)
        assert "additionalData" == schema.names[-1]
