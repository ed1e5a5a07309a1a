"""`archiver demo`: the README's first command, as a new user runs it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest


def run_demo(cwd: Path) -> subprocess.CompletedProcess[str]:
    """`archiver demo` in a fresh folder, with none of the developer's ARCHIVER_/AWS_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVER_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "archiver", "demo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.slow
def test_demo_archives_a_sample_week_and_says_where(tmp_path: Path) -> None:
    """The demo archives seven days of both kinds into ./archive-demo, prints what it wrote
    and a query that works, and a second run fetches nothing again."""
    first = run_demo(tmp_path)
    assert 0 == first.returncode, first.stderr
    lines = first.stdout.splitlines()
    assert "archived 14 windows (24,500 rows, 35 Graph requests); 0 were already archived" in lines
    assert any(line.split()[:5] == ["pstn", "7", "windows", "14,000", "rows"] for line in lines)
    assert "files: archive-demo/<kind>/date=YYYY-MM-DD/<window-start>.parquet" in lines
    root = tmp_path / "archive-demo"
    assert 14 == len(list(root.rglob("*.parquet")))
    query = next(line for line in lines if "import duckdb" in line).strip()
    assert query.startswith('python -c "import duckdb;')
    query = query.replace("python", shlex.quote(sys.executable), 1)  # the venv's python
    shown = subprocess.run(  # noqa: S602 - the printed command, run as a user would
        query, shell=True, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert 0 == shown.returncode, shown.stderr
    assert 7 == shown.stdout.count(" 2000 ")  # one line per day, 2,000 PSTN calls each
    count = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{root}/direct_routing/**/*.parquet', "
        "hive_partitioning=true)"
    ).fetchall()
    assert [(10_500,)] == count
    second = run_demo(tmp_path)
    assert 0 == second.returncode, second.stderr
    assert "archived 0 windows (0 rows, 0 Graph requests); 14 were already archived" in (
        second.stdout.splitlines()
    )
