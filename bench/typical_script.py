"""The peer `bench/perf.py` measures the archiver against: the script most people write first.

A sequential loop with `requests`: get a token (client credentials), then per kind and
per window follow `@odata.nextLink` to the last page, collect every row in a list, and
write one Parquet file per window with `pyarrow.Table.from_pylist` (schema inferred,
pyarrow's default compression). No retries, no rate limiting, no manifest, no typing
of timestamps or money, no dedup, no boundary handling: just the happy path.

    python bench/typical_script.py --url URL --ca-file PEM --tenant T --client-id C \
        --client-secret S --start 2024-03-04 --end 2024-03-09 [--kind pstn ...] --out DIR

Prints one JSON line: rows, pages, windows, bytes written, seconds (after imports).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import requests

FUNCTIONS = {"pstn": "getPstnCalls", "direct_routing": "getDirectRoutingCalls"}


def main() -> None:
    """Archive [start, end) of the chosen kinds, one file per window, and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="authority host and Graph URL")
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--start", required=True, help="YYYY-MM-DD")
    parser.add_argument("--end", required=True, help="YYYY-MM-DD, exclusive")
    parser.add_argument("--kind", action="append", choices=sorted(FUNCTIONS))
    parser.add_argument("--window-hours", type=int, default=24)
    parser.add_argument("--version", default="v1.0")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    began = time.perf_counter()

    session = requests.Session()
    verify = args.ca_file  # per request: REQUESTS_CA_BUNDLE would override session.verify
    answer = session.post(
        f"{args.url}/{args.tenant}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": args.client_id,
            "client_secret": args.client_secret,
            "scope": f"{args.url}/.default",
        },
        verify=verify,
        timeout=60,
    )
    answer.raise_for_status()
    headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}

    start = datetime.fromisoformat(args.start).replace(tzinfo=UTC)
    end = datetime.fromisoformat(args.end).replace(tzinfo=UTC)
    step = timedelta(hours=args.window_hours)
    out = Path(args.out)
    rows_total = pages = windows = size = 0
    for kind in args.kind or sorted(FUNCTIONS):
        at = start
        while at < end:
            frm = at.strftime("%Y-%m-%dT%H:%M:%SZ")
            to = (at + step).strftime("%Y-%m-%dT%H:%M:%SZ")
            url = (
                f"{args.url}/{args.version}/communications/callRecords/"
                f"{FUNCTIONS[kind]}(fromDateTime={frm},toDateTime={to})"
            )
            rows: list[dict] = []
            while url:
                page = session.get(url, headers=headers, verify=verify, timeout=120)
                page.raise_for_status()
                body = page.json()
                rows.extend(body["value"])
                pages += 1
                url = body.get("@odata.nextLink")
            path = out / kind / f"date={at.date().isoformat()}" / f"{at:%Y%m%dT%H%M%SZ}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), path)
            size += path.stat().st_size
            rows_total += len(rows)
            windows += 1
            at += step
    seconds = time.perf_counter() - began
    print(
        json.dumps(
            {
                "rows": rows_total,
                "pages": pages,
                "windows": windows,
                "bytes": size,
                "seconds": seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
