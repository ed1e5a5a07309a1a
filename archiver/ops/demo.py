"""`archiver demo`: the whole pipeline against the built-in emulator, no credentials needed.

Starts the Graph emulator in-process (HTTPS on 127.0.0.1 with its own CA, token
endpoint included), archives the last seven full UTC days of both kinds through
the same code path as a real backfill, then prints what was written and how to
query it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

from archiver.config import Config
from archiver.emulator import Emulator, EmulatorConfig
from archiver.kinds import Kind
from archiver.manifest import KindSummary
from archiver.pipeline import backfill, open_destination

DEMO_DAYS = 7


def run_demo(directory: str) -> int:
    """Archive a sample week into `directory`; returns the exit code."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = today - timedelta(days=DEMO_DAYS), today
    emulated = EmulatorConfig()
    with Emulator(emulated) as emulator:
        config = Config(
            tenant_id=emulated.tenant_id,
            client_id=emulated.client_id,
            client_secret=emulated.client_secret,
            authority_host=emulator.url,
            graph_url=emulator.url,
            ca_bundle=emulator.ca_file,
            destination=directory,
            requests_per_minute=6000,  # the emulator has no Graph limits to respect
            tenant_requests_per_minute=12000,
        )
        print(f"Graph emulator listening on {emulator.url}")
        names = ", ".join(k.value for k in config.kinds)
        print(f"archiving {start:%Y-%m-%d} .. {end:%Y-%m-%d} ({names}) into {directory}")
        result = anyio.run(backfill, config, list(config.kinds), start, end)
    summary = anyio.run(_summary, config)
    print(
        f"\narchived {len(result.archived)} windows ({result.rows:,} rows, "
        f"{result.requests} Graph requests); {result.already} were already archived"
    )
    for kind in config.kinds:
        s = summary[kind]
        print(f"  {kind.value:15} {s.done:>3} windows {s.rows:>9,} rows {s.bytes:>11,} bytes")
    root = Path(directory)
    print(f"\nfiles: {root}/<kind>/date=YYYY-MM-DD/<window-start>.parquet")
    print(f"manifest: {root}/_manifest/ (archiver status --destination {root})")
    # Printed for the user to run, never executed here:
    query = (
        "SELECT date, count(*) AS calls, sum(charge) AS charge "  # noqa: S608
        f"FROM read_parquet('{root}/pstn/**/*.parquet', hive_partitioning=true) "
        "GROUP BY date ORDER BY date"
    )
    print("query it with DuckDB (pip install duckdb):")
    print(f'  python -c "import duckdb; duckdb.sql(\\"{query}\\").show()"')
    for window, error in result.failed:
        print(f"FAILED {window}: {error}")
    return 1 if result.failed else 0


async def _summary(config: Config) -> dict[Kind, KindSummary]:
    _, manifest = await open_destination(config)
    return manifest.summary()
