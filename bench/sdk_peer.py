"""A peer `bench/perf.py --whole` measures the archiver against: the Microsoft Graph SDK for
Python (msgraph-sdk) with its PageIterator, the rows to Parquet with pyarrow, one file per
window, as a user of the SDK would write it.

Not a dependency of the project: run it with an interpreter that has `msgraph-sdk`,
`azure-identity` and `pyarrow` (`bench/perf.py --sdk-python PATH`; perf.py skips it,
saying so, when there is none).

    python bench/sdk_peer.py --url URL --ca-file PEM --tenant T --client-id C \
        --client-secret S --start 2024-03-04 --end 2024-03-07 [--kind pstn ...] \
        [--version beta] --out DIR

The SDK's v1.0 models read the beta rows too (properties they lack go to their
`additional_data`). Each row model becomes a dict (enums as their values, nested models
as dicts); `pa.Table.from_pylist`; `pq.write_table`. Prints one JSON line: rows,
windows, bytes written, seconds (after imports).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def plain(value: Any) -> Any:
    """A model (or a value inside one) as plain Python: what Table.from_pylist can take."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):  # the SDK reads GUID-shaped text as UUID
        return str(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if hasattr(value, "get_field_deserializers"):
        row = {
            k: plain(v)
            for k, v in vars(value).items()
            if k not in ("additional_data", "backing_store", "odata_type")
        }
        extra = getattr(value, "additional_data", None) or {}
        row.update({k: json.dumps(plain(v), default=str) for k, v in extra.items()})
        return row
    return value


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    import pyarrow as pa
    import pyarrow.parquet as pq
    from azure.identity import ClientSecretCredential
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from msgraph import GraphRequestAdapter, GraphServiceClient
    from msgraph_core import GraphClientFactory
    from msgraph_core.tasks.page_iterator import PageIterator

    began = time.perf_counter()
    credential = ClientSecretCredential(
        args.tenant,
        args.client_id,
        args.client_secret,
        authority=args.url,
        disable_instance_discovery=True,
        connection_verify=args.ca_file,
    )
    host = args.url.split("://", 1)[1].split(":")[0]
    auth = AzureIdentityAuthenticationProvider(
        credential, scopes=[f"{args.url}/.default"], allowed_hosts=[host]
    )
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(verify=args.ca_file, timeout=120)
    )
    adapter = GraphRequestAdapter(auth, http)
    adapter.base_url = f"{args.url}/{args.version}"
    client = GraphServiceClient(request_adapter=adapter)
    records = client.communications.call_records
    start = datetime.fromisoformat(args.start).replace(tzinfo=UTC)
    end = datetime.fromisoformat(args.end).replace(tzinfo=UTC)
    out = Path(args.out)
    total = windows = size = 0
    for kind in args.kind or ["direct_routing", "pstn"]:
        at = start
        while at < end:
            nxt = at + timedelta(days=1)
            if kind == "pstn":
                builder = records.microsoft_graph_call_records_get_pstn_calls_with_from_date_time_with_to_date_time(  # noqa: E501
                    at, nxt
                )
            else:
                builder = records.microsoft_graph_call_records_get_direct_routing_calls_with_from_date_time_with_to_date_time(  # noqa: E501
                    at, nxt
                )
            # The SDK's own URL template writes the two instants with `+00:00` offsets and
            # no separator the emulator (and Graph's documented form) reads; Graph's form:
            function = "getPstnCalls" if kind == "pstn" else "getDirectRoutingCalls"
            builder = builder.with_url(
                f"{args.url}/{args.version}/communications/callRecords/{function}"
                f"(fromDateTime={at:%Y-%m-%dT%H:%M:%SZ},toDateTime={nxt:%Y-%m-%dT%H:%M:%SZ})"
            )
            first = await builder.get()
            rows: list[dict[str, Any]] = []

            def keep(item: Any, rows: list[dict[str, Any]] = rows) -> bool:  # one per row
                rows.append(plain(item))
                return True

            iterator = PageIterator(first, adapter)  # pages parsed as type(first)
            await iterator.iterate(keep)
            path = out / kind / f"date={at.date().isoformat()}" / f"{at:%Y%m%dT%H%M%SZ}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), path)
            size += path.stat().st_size
            total += len(rows)
            windows += 1
            at = nxt
    return {
        "rows": total,
        "windows": windows,
        "bytes": size,
        "seconds": time.perf_counter() - began,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--start", required=True)
    parser.add_argument("--end", required=True)
    parser.add_argument("--kind", action="append", choices=["pstn", "direct_routing"])
    parser.add_argument("--version", default="v1.0")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ.setdefault("REQUESTS_CA_BUNDLE", args.ca_file)
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
