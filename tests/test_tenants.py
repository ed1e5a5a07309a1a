"""Many tenants from one deployment: each archived exactly under tenant=<id>/, paced by its
own limits, failing alone; sharding splits them between processes; status and verify
count per tenant and in total."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from helpers import (
    archiver_command,
    archiver_env,
    assert_archive_exact,
    backfill,
    free_port,
    read_local,
    wait_for,
)

from archiver.cli import main
from archiver.config import shard_of
from archiver.emulator import Emulator
from archiver.kinds import DEFAULT_KINDS, Kind

START, END = "2024-03-01", "2024-03-15"  # 14 days
FIRST = datetime(2024, 3, 1, tzinfo=UTC)
CONTOSO, FABRIKAM, REVOKED = "contoso.onmicrosoft.com", "fabrikam.onmicrosoft.com", "revoked-1"
ROWS = {Kind.PSTN: 40, Kind.DIRECT_ROUTING: 30, Kind.SMS: 0, Kind.PSTN_BLOCKED_USERS: 0}


def tenants_env(emu: Emulator, destination: Path, tenants: list[str], **extra: str) -> dict:
    """The single-tenant environment with ARCHIVER_TENANTS in place of ARCHIVER_TENANT_ID."""
    env = archiver_env(emu, destination, ARCHIVER_TENANTS=",".join(tenants), **extra)
    del env["ARCHIVER_TENANT_ID"]
    return env


def graph_requests(emu: Emulator) -> Counter[str | None]:
    """Graph requests per tenant since the log was last cleared."""
    return Counter(r.tenant for r in emu.requests if r.endpoint == "graph")


def assert_tenant_exact(emu: Emulator, root: Path, tenant: str, days: int = 14) -> None:
    """Both call logs of `tenant` under <root>/tenant=<id>/, exactly as the emulator serves
    that tenant."""
    end = FIRST + timedelta(days=days)
    for kind in DEFAULT_KINDS:
        truth = emu.rows(kind, FIRST, end, "v1.0", tenant=tenant)
        assert truth, "the tenant has rows"
        assert_archive_exact(kind, read_local(root / f"tenant={tenant}", kind), truth)


@pytest.mark.emulator(
    tenants=[CONTOSO, FABRIKAM, REVOKED], revoked_tenants={REVOKED}, rows_per_day=ROWS
)
def test_a_revoked_tenant_fails_alone_and_the_others_are_exact(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A 14-day backfill of three tenants, one with its consent revoked: exit 1 naming it
    and why; the other two exact under their tenant= prefixes, the revoked one without
    a Parquet object; DuckDB reads every tenant as one table with tenant and date."""
    env = tenants_env(emulator, tmp_path, [CONTOSO, FABRIKAM, REVOKED])
    assert 1 == backfill(monkeypatch, env, "--start", START, "--end", END)
    out, err = capsys.readouterr()
    assert [
        f"archiver: tenant {REVOKED} failed: Graph answered 403: Forbidden: Missing role "
        "permissions on "
        "the request. API requires one of 'CallRecords.Read.All, "
        "CallRecord-PstnCalls.Read.All'. Roles on the request ''. — the app lacks the Graph "
        "application permission CallRecords.Read.All (older tenants: "
        "CallRecord-PstnCalls.Read.All); grant it with admin consent"
    ] == [line for line in err.splitlines() if line.startswith("archiver:")]
    for tenant in (CONTOSO, FABRIKAM):
        assert_tenant_exact(emulator, tmp_path, tenant)
        assert f"tenant {tenant}: archived 28 windows" in out
    assert [] == list((tmp_path / f"tenant={REVOKED}").rglob("*.parquet"))
    assert "archived 56 windows" in out.splitlines()[-1]
    glob = f"{tmp_path}/tenant=*/pstn/**/*.parquet"
    counted = duckdb.sql(
        f"SELECT tenant, count(*) FROM read_parquet('{glob}', hive_partitioning=true) "
        "GROUP BY tenant ORDER BY tenant"
    ).fetchall()
    end = FIRST + timedelta(days=14)
    assert [
        (t, len(emulator.rows(Kind.PSTN, FIRST, end, "v1.0", tenant=t)))
        for t in (CONTOSO, FABRIKAM)
    ] == counted


@pytest.mark.emulator(tenants=["t-1", "t-2"], revoked_tenants={"t-1", "t-2"}, rows_per_day=ROWS)
def test_when_every_tenant_is_refused_the_exit_is_2(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    env = tenants_env(emulator, tmp_path, ["t-1", "t-2"])
    assert 2 == backfill(monkeypatch, env, "--start", START, "--end", "2024-03-02")
    err = capsys.readouterr().err
    assert ["t-1", "t-2"] == [
        line.split()[2] for line in err.splitlines() if line.startswith("archiver: tenant")
    ]


@pytest.mark.emulator(tenants=["t-1", "t-2"], rows_per_day=ROWS)
def test_every_log_line_and_metric_names_its_tenant(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    env = tenants_env(emulator, tmp_path, ["t-1", "t-2"])
    assert 0 == backfill(monkeypatch, env, "--start", START, "--end", "2024-03-03")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    archived = [line for line in lines if line["message"].startswith("archived")]
    assert 8 == len(archived)
    assert Counter({"t-1": 4, "t-2": 4}) == Counter(line["tenant"] for line in archived)
    assert all("tenant" in line for line in lines if line["logger"].startswith("archiver"))


@pytest.mark.emulator(tenants=["alpha", "bravo", "charlie", "delta"], rows_per_day=ROWS)
def test_two_shards_archive_each_tenant_once_in_full(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """shard 0/2 and 1/2 over four tenants: each tenant archived by exactly one of them,
    in full; the shares are the hash's."""
    tenants = ["alpha", "bravo", "charlie", "delta"]
    env = tenants_env(emulator, tmp_path, tenants)
    served: list[set[str | None]] = []
    for shard in ("0/2", "1/2"):
        emulator.clear_requests()
        assert 0 == backfill(monkeypatch, env, "--start", START, "--end", END, "--shard", shard)
        served.append(set(graph_requests(emulator)))
    assert [{t for t in tenants if shard_of(t, 2) == i} for i in (0, 1)] == served
    assert set(tenants) == served[0] | served[1]
    assert all(served), "each shard has a tenant (else the test proves little)"
    for tenant in tenants:
        assert_tenant_exact(emulator, tmp_path, tenant)


@pytest.mark.emulator(tenants=["t-1", "t-2"], rows_per_day=ROWS)
def test_status_and_verify_per_tenant_and_in_total(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    env = tenants_env(emulator, tmp_path, ["t-1", "t-2"])
    assert 0 == backfill(monkeypatch, env, "--start", START, "--end", "2024-03-03")
    assert 0 == backfill(
        monkeypatch, env, "--start", "2024-03-03", "--end", "2024-03-04", "--tenant", "t-2"
    )
    capsys.readouterr()
    assert 0 == main(["status", "--json"])
    status = json.loads(capsys.readouterr().out)
    assert {"t-1": 2, "t-2": 3} == {
        t: s["kinds"]["pstn"]["done"] for t, s in status["tenants"].items()
    }
    assert 5 == status["kinds"]["pstn"]["done"]
    assert str(tmp_path / "tenant=t-2") == status["tenants"]["t-2"]["destination"]
    assert 0 == main(["status", "--tenant", "T-2"])
    out = capsys.readouterr().out.splitlines()
    assert ["tenant t-2", "all tenants"] == [line for line in out if not line.startswith(" ")][1:]
    assert 0 == main(["verify"])
    assert "verified 10 objects: 0 problems" == capsys.readouterr().out.splitlines()[-1]


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"ARCHIVER_TENANTS": "a,b", "ARCHIVER_TENANT_ID": "c"},
            "archiver: configuration: tenant_id from ARCHIVER_TENANT_ID beside tenants: give "
            "every tenant in tenants, or use tenant_id alone",
        ),
        (
            {"ARCHIVER_TENANTS": "a,b/c"},
            "archiver: configuration: tenants from ARCHIVER_TENANTS: 'b/c' is not a tenant id "
            "(a GUID or a domain name)",
        ),
        (
            {"ARCHIVER_TENANTS": "a,A"},
            "archiver: configuration: tenants from ARCHIVER_TENANTS: tenant A is listed twice",
        ),
        (
            {"ARCHIVER_TENANTS": "a,b", "ARCHIVER_SHARDS": "3"},
            "archiver: configuration: shards = 3 needs JOB_COMPLETION_INDEX from 0 to 2 (a "
            "Kubernetes Indexed Job sets it); it is not set",
        ),
        (
            {"ARCHIVER_SHARD": "0/2"},
            "archiver: configuration: shard from ARCHIVER_SHARD needs tenants to share",
        ),
    ],
)
def test_a_bad_tenant_configuration_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, env: dict[str, str], line: str
) -> None:
    base = {"ARCHIVER_CLIENT_ID": "c", "ARCHIVER_CLIENT_SECRET": "s", "ARCHIVER_TENANT_ID": "x"}
    if "ARCHIVER_TENANTS" in env:
        del base["ARCHIVER_TENANT_ID"]
    code = backfill(
        monkeypatch,
        {**base, "ARCHIVER_DESTINATION": str(tmp_path), **env},
        "--start",
        START,
        "--end",
        END,
    )
    assert (2, [line]) == (code, capsys.readouterr().err.splitlines())
    assert [] == list(tmp_path.iterdir())


def test_a_tenant_table_without_a_credential_is_exit_2_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """[[tenants]] tables: each may have its own app; one with no credential anywhere
    stops the run before a request."""
    config = tmp_path / "archiver.toml"
    config.write_text(
        'client_id = "shared-app"\n'
        '[[tenants]]\ntenant_id = "t-1"\nclient_secret = "own"\n'
        '[[tenants]]\ntenant_id = "t-2"\nname = "Fabrikam"\n'
    )
    code = backfill(
        monkeypatch,
        {"ARCHIVER_DESTINATION": str(tmp_path / "out"), "AZURE_TENANT_ID": "ignored"},
        "--start",
        START,
        "--end",
        END,
        "--config",
        str(config),
    )
    assert 2 == code
    assert [
        "archiver: configuration: tenant t-2: no credential (set one in its [[tenants]] "
        "table, or ARCHIVER_CLIENT_SECRET, ARCHIVER_CLIENT_CERTIFICATE or "
        "AZURE_FEDERATED_TOKEN_FILE)"
    ] == capsys.readouterr().err.splitlines()


@pytest.mark.emulator(
    tenants=["t-1", "t-2", "t-3"],
    rows_per_day={Kind.PSTN: 300, Kind.DIRECT_ROUTING: 0, Kind.SMS: 0, Kind.PSTN_BLOCKED_USERS: 0},
    page_size=20,
    latency=0.02,
    rate_cap_per_minute=4,
    rate_cap_window=1.0,
)
def test_tenants_are_paced_in_parallel_each_at_its_own_allowance(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each tenant capped at 4 requests a second of its own (Graph's per-app-per-tenant
    limit, compressed; low enough that a busy CI machine's CPU is not what limits): while
    a tenant has windows left, it uses at least 75 % of its own allowance, all three at
    once — not one after another at a shared pace."""
    env = tenants_env(
        emulator,
        tmp_path,
        ["t-1", "t-2", "t-3"],
        ARCHIVER_REQUESTS_PER_MINUTE="228",
        ARCHIVER_KINDS="pstn",
    )
    assert 0 == backfill(monkeypatch, env, "--start", START, "--end", "2024-03-03")
    served = [r for r in emulator.requests if r.endpoint == "graph"]
    began = min(r.at for r in served)
    for tenant in ("t-1", "t-2", "t-3"):
        mine = [r for r in served if r.tenant == tenant]
        pages = [r for r in mine if r.status == 200]
        assert len(pages) >= 2 * 15  # 2 days of 300 rows, 20 a page (and PSTN's end row)
        used = len(mine) / (max(r.at for r in mine) - began)
        assert used >= 0.75 * 4, f"{tenant}: {used:.1f} requests/s of 4"


@pytest.mark.emulator(tenants=["t-1", "t-2"], revoked_tenants={"t-2"}, rows_per_day=ROWS)
def test_run_keeps_the_consented_tenants_current_and_names_the_one_that_stopped(
    emulator: Emulator, tmp_path: Path
) -> None:
    """`archiver run` over two tenants, one revoked: the other's closed windows are
    archived and counted under its tenant label while the revoked one has stopped; on
    SIGTERM the job exits 1 naming the revoked tenant and why."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    port = free_port()
    env = {
        **os.environ,
        **tenants_env(
            emulator,
            tmp_path,
            ["t-1", "t-2"],
            ARCHIVER_WINDOW="1h",
            ARCHIVER_SETTLE="1s",
            ARCHIVER_START=start.isoformat(),
            ARCHIVER_METRICS_PORT=f"127.0.0.1:{port}",
        ),
    }
    process = subprocess.Popen(
        archiver_command("run"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    done = 'archiver_windows{kind="pstn",state="done",tenant="t-1"} 3.0'
    try:
        wait_for(lambda: done in scrape(port), "t-1's three closed pstn windows")
        text = scrape(port)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert 'archiver_windows{kind="pstn",state="done",tenant="t-2"} 0.0' in text
    assert 1 == process.returncode, err
    assert [
        "archiver: tenant t-2 stopped: Graph answered 403: Forbidden: Missing role permissions "
        "on the request. API requires one of 'CallRecords.Read.All, "
        "CallRecord-PstnCalls.Read.All'. Roles on the request ''. — the app lacks the Graph "
        "application permission CallRecords.Read.All (older tenants: "
        "CallRecord-PstnCalls.Read.All); grant it with admin consent"
    ] == [line for line in err.splitlines() if line.startswith("archiver:")]
    assert [] == list((tmp_path / "tenant=t-2").rglob("*.parquet"))
    assert 6 == len(list((tmp_path / "tenant=t-1").rglob("*.parquet")))


def scrape(port: int) -> str:
    """The metrics text, or "" while the server is not up yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""
