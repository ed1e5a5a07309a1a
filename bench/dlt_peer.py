"""A peer `bench/perf.py --whole` measures the archiver against: dlt's REST API source to
Parquet files in a local folder, configured as its documentation shows.

Not a dependency of the project: run it with an interpreter that has `dlt[parquet]`
(`bench/perf.py --dlt-python PATH`; perf.py skips it, saying so, when there is none).

    python bench/dlt_peer.py --url URL --ca-file PEM --tenant T --client-id C \
        --client-secret S --start 2024-03-04 --end 2024-03-07 [--kind pstn ...] \
        [--version beta] --out DIR

One resource per kind and day (table = kind), OAuth2 client credentials, `value` as the
data, `@odata.nextLink` followed; dlt's defaults otherwise (schema inferred, nested
lists as child tables). Prints one JSON line: rows (of the kinds' own tables), windows,
bytes written, seconds (after imports).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

FUNCTIONS = {"pstn": "getPstnCalls", "direct_routing": "getDirectRoutingCalls"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--start", required=True)
    parser.add_argument("--end", required=True)
    parser.add_argument("--kind", action="append", choices=sorted(FUNCTIONS))
    parser.add_argument("--version", default="v1.0")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ["REQUESTS_CA_BUNDLE"] = args.ca_file  # dlt's requests session trusts env
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    work = tempfile.mkdtemp(prefix="dlt-peer-")
    os.environ.setdefault("DLT_DATA_DIR", work)

    import dlt
    from dlt.sources.helpers.rest_client.auth import OAuth2ClientCredentials
    from dlt.sources.rest_api import rest_api_source

    began = time.perf_counter()
    start = datetime.fromisoformat(args.start).replace(tzinfo=UTC)
    end = datetime.fromisoformat(args.end).replace(tzinfo=UTC)
    kinds = args.kind or sorted(FUNCTIONS)
    resources = []
    at = start
    while at < end:
        frm = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        to = (at + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for kind in kinds:
            resources.append(
                {
                    "name": f"{kind}_{at:%Y%m%d}",
                    "table_name": kind,
                    "endpoint": {
                        "path": f"{args.version}/communications/callRecords/"
                        f"{FUNCTIONS[kind]}(fromDateTime={frm},toDateTime={to})",
                        "data_selector": "value",
                        "paginator": {
                            "type": "json_link",
                            "next_url_path": "['@odata.nextLink']",
                        },
                    },
                }
            )
        at += timedelta(days=1)
    auth = OAuth2ClientCredentials(
        access_token_url=f"{args.url}/{args.tenant}/oauth2/v2.0/token",
        client_id=args.client_id,
        client_secret=args.client_secret,
        access_token_request_data={"scope": f"{args.url}/.default"},
    )
    source = rest_api_source(
        {
            "client": {"base_url": args.url + "/", "auth": auth},
            "resource_defaults": {"write_disposition": "append"},
            "resources": resources,  # type: ignore[typeddict-item]
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="graph_call_records",
        destination=dlt.destinations.filesystem(bucket_url=Path(args.out).resolve().as_uri()),
        dataset_name="calls",
        pipelines_dir=str(Path(work) / "pipelines"),
    )
    pipeline.run(source, loader_file_format="parquet")
    counts = pipeline.last_trace.last_normalize_info.row_counts
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*.parquet"))
    print(
        json.dumps(
            {
                "rows": sum(counts.get(kind, 0) for kind in kinds),
                "windows": len(resources),
                "bytes": size,
                "seconds": time.perf_counter() - began,
            }
        )
    )


if __name__ == "__main__":
    main()
