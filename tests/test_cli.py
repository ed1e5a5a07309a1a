"""The command line: bad input gets one clear line and exit 2, and nothing is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import archiver_env, free_port

from archiver.cli import main
from archiver.emulator import Emulator, EmulatorConfig
from archiver.kinds import Kind

pytestmark = pytest.mark.emulator(rows_per_day={Kind.PSTN: 50, Kind.DIRECT_ROUTING: 50})


def files_under(path: Path) -> list[Path]:
    """Every file below `path` (none if it does not exist)."""
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def run_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    *args: str,
) -> tuple[int, list[str]]:
    """Run the command in-process; its exit code and its stderr lines."""
    capsys.readouterr()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.splitlines()


RANGE = ("--start", "2024-03-04", "--end", "2024-03-05")


@pytest.mark.parametrize(
    ("extra_env", "args", "line"),
    [
        (
            {},
            ("backfill", "--start", "2024-03-05", "--end", "2024-03-04"),
            "archiver: --end 2024-03-04 is not after --start 2024-03-05",
        ),
        (
            {},
            ("backfill", "--start", "2024-02-30", "--end", "2024-03-04"),
            "archiver: --start: '2024-02-30' is not a date or time (write YYYY-MM-DD or "
            "ISO-8601 like 2024-01-31T06:00:00Z)",
        ),
        (
            {"ARCHIVER_WINDOW": "5h"},
            ("backfill", *RANGE),
            "archiver: configuration: window from ARCHIVER_WINDOW: '5h' does not divide a day "
            "into whole hours (use one of 1h 2h 3h 4h 6h 8h 12h 1d)",
        ),
        (
            {},
            ("backfill", *RANGE, "--window", "90m"),
            "archiver: configuration: window from --window: '90m' does not divide a day "
            "into whole hours (use one of 1h 2h 3h 4h 6h 8h 12h 1d)",
        ),
        (
            {"ARCHIVER_CLIENT_SECRET": ""},
            ("backfill", *RANGE),
            "archiver: configuration: no credential: set ARCHIVER_CLIENT_SECRET, "
            "ARCHIVER_CLIENT_CERTIFICATE or AZURE_FEDERATED_TOKEN_FILE",
        ),
        (
            {"ARCHIVER_TENANT_ID": ""},
            ("backfill", *RANGE),
            "archiver: configuration: tenant_id is required (set ARCHIVER_TENANT_ID or "
            "tenant_id in the config file)",
        ),
        (
            {},
            ("backfill", *RANGE, "--kind", "voicemail"),
            "archiver: --kind: unknown kind 'voicemail' (expected one of: pstn, "
            "direct_routing, sms, pstn_blocked_users)",
        ),
        (
            {"ARCHIVER_KINDS": "pstn,faxes"},
            ("backfill", *RANGE),
            "archiver: configuration: kinds from ARCHIVER_KINDS: unknown kind 'faxes' "
            "(expected one of: pstn, direct_routing, sms, pstn_blocked_users)",
        ),
        (
            {"ARCHIVER_CLIENT_SECRET": "wrong"},
            ("backfill", *RANGE),
            "archiver: token request refused: invalid_client: AADSTS7000215: Invalid client "
            "secret provided.",
        ),
    ],
    ids=[
        "end-before-start",
        "bad-date",
        "window-env",
        "window-flag",
        "no-credential",
        "no-tenant",
        "bad-kind",
        "bad-kinds-env",
        "wrong-secret",
    ],
)
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra_env: dict[str, str],
    args: tuple[str, ...],
    line: str,
) -> None:
    """Each bad input is named in one line on stderr; the destination stays empty."""
    dest = tmp_path / "archive"
    env = archiver_env(emulator, dest) | extra_env
    code, err = run_cli(monkeypatch, capsys, env, *args)
    assert (2, [line]) == (code, [e[: len(line)] for e in err])
    assert [] == files_under(dest)
    assert [] == [r for r in emulator.requests if r.endpoint == "graph" and dest.name in r.path_qs]


def test_unknown_config_key_is_named(
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A misspelt key in the TOML file stops the run with exit 2 before anything is written."""
    toml = tmp_path / "archiver.toml"
    toml.write_text("concurency = 4\n")
    dest = tmp_path / "archive"
    code, err = run_cli(
        monkeypatch, capsys, archiver_env(emulator, dest), "backfill", *RANGE, "--config", str(toml)
    )
    assert (2, [f"archiver: configuration: unknown key 'concurency' in {toml}"]) == (code, err)
    assert [] == files_under(dest)


def test_unreachable_s3_endpoint_is_named(
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An S3 endpoint that does not answer is one line naming the destination, exit 2."""
    port = free_port()  # nothing listens there
    env = archiver_env(emulator, "s3://bucket/prefix") | {
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    code, err = run_cli(monkeypatch, capsys, env, "backfill", *RANGE)
    assert 2 == code
    assert 1 == len(err)
    assert err[0].startswith(
        f"archiver: destination s3://bucket/prefix: cannot reach the S3 endpoint "
        f"http://127.0.0.1:{port}"
    ), err


def test_missing_bucket_is_named(
    emulator: Emulator,
    s3_env: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bucket that does not exist is one line naming it, exit 2."""
    env = archiver_env(emulator, "s3://no-such-bucket-here/x")
    code, err = run_cli(monkeypatch, capsys, env, "backfill", *RANGE)
    assert (
        2,
        [
            "archiver: destination s3://no-such-bucket-here/x: bucket "
            "'no-such-bucket-here' does not exist"
        ],
    ) == (code, err)


def test_local_destination_that_is_a_file_is_named(
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A destination below a regular file cannot be created: one line, exit 2."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run_cli(
        monkeypatch, capsys, archiver_env(emulator, blocker / "archive"), "backfill", *RANGE
    )
    assert 2 == code
    assert 1 == len(err)
    assert err[0].startswith(f"archiver: destination {blocker / 'archive'}"), err


def test_missing_permission_stops_the_run_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Graph's 403 stops the run at once (exit 2) and names CallRecords.Read.All."""
    with Emulator(EmulatorConfig(permission=False)) as emu:
        dest = tmp_path / "archive"
        code, err = run_cli(
            monkeypatch,
            capsys,
            archiver_env(emu, dest),
            "backfill",
            "--start",
            "2024-03-01",
            "--end",
            "2024-03-08",
        )
        graph = [r for r in emu.requests if r.endpoint == "graph"]
    assert 2 == code
    assert 1 == len(err)
    assert "CallRecords.Read.All" in err[0]
    assert err[0].startswith("archiver: Graph answered 403: Forbidden: Missing role permissions")
    assert len(graph) <= 8, "the run went on after the first 403"
    assert [] == list(dest.rglob("*.parquet"))


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    """The installed command, given a bad date, prints one line and exits 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVER_", "AWS_"))}
    done = subprocess.run(
        [sys.executable, "-m", "archiver", "backfill", "--start", "last week", "--end", "now"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert (2, "", 1) == (done.returncode, done.stdout, len(done.stderr.splitlines()))
    assert done.stderr.startswith("archiver: --start: 'last week' is not a date or time")


def test_progress_line_counts_windows_rows_and_estimates_the_rest() -> None:
    """On a terminal, backfill redraws one line: windows done of planned, rows, and ETA."""
    import io

    from archiver.manifest import Record
    from archiver.ops.progress import Progress

    now = [0.0]
    out = io.StringIO()
    progress = Progress(out, enabled=True, clock=lambda: now[0])
    from datetime import UTC, datetime

    from archiver.kinds import Kind
    from archiver.manifest import State

    when = datetime(2024, 1, 1, tzinfo=UTC)
    record = Record(
        kind=Kind.PSTN, start=when, end=when, state=State.DONE, recorded_at=when, rows=1500
    )
    now[0] = 30.0
    progress.update(record, 10)
    now[0] = 60.0
    progress.update(record, 10)
    progress.close()
    assert (
        "\r\033[K1/10 windows  1,500 rows  ETA 4m30s\r\033[K2/10 windows  3,000 rows  ETA 4m00s\n"
        == (out.getvalue())
    )
    quiet = io.StringIO()
    Progress(quiet, enabled=False).update(record, 10)
    assert "" == quiet.getvalue()


def test_wrong_s3_credentials_are_access_denied_in_one_line(
    emulator: Emulator,
    seaweed_destination: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real S3 server refusing our keys gives one line naming the destination, exit 2,
    and nothing is written."""
    env = archiver_env(emulator, seaweed_destination) | {"AWS_SECRET_ACCESS_KEY": "not-the-key"}
    code, err = run_cli(monkeypatch, capsys, env, "backfill", *RANGE)
    assert (
        2,
        [
            f"archiver: destination {seaweed_destination}: access denied (check the AWS "
            "credentials and the bucket policy)"
        ],
    ) == (code, err)


def test_a_reader_that_goes_away_stops_the_command_quietly(tmp_path: Path) -> None:
    """`archiver status | head`: when stdout's reader has gone, the command stops with
    128 + SIGPIPE and says nothing, as `yes | head` does, never 'internal error'."""
    with Emulator(EmulatorConfig(rows_per_day={Kind.PSTN: 10, Kind.DIRECT_ROUTING: 10})) as emu:
        env = {**os.environ, **archiver_env(emu, tmp_path)}
        done = subprocess.run(
            [sys.executable, "-m", "archiver", "backfill", "--start", "2024-03-01", "--end",
             "2024-03-02"],
            env=env, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert 0 == done.returncode, done.stderr
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes a byte
    try:
        status = subprocess.run(
            [sys.executable, "-m", "archiver", "status"],
            env=env, stdout=write, stderr=subprocess.PIPE, text=True, check=False, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write)
    assert (141, "") == (status.returncode, status.stderr)
