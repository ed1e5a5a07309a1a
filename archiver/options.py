"""The configuration keys as the command line offers them: which commands read each key,
under which heading `--help` lists it, and what it says there — written for users, with
the key's environment variable and its default (taken from `Config`, so they never
drift). `cli` builds the flags from this table.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from archiver.config import ENV_NAMES, PARSERS, SECRET_KEYS, Config
from archiver.kinds import Kind
from archiver.windows import format_duration, format_instant

WHAT = "what to archive"
WHERE = "where the archive goes"
GRAPH = "Graph and credentials"
TENANTS = "many tenants"
PACING = "pacing"
RUN = "the container job (run)"
WATCH = "metrics and logs"
GROUPS = (WHAT, WHERE, GRAPH, TENANTS, PACING, RUN, WATCH)

BACKFILL = frozenset({"backfill"})
ARCHIVING = frozenset({"backfill", "run"})
EVERY = frozenset({"backfill", "run", "status", "verify"})


@dataclass(frozen=True)
class Option:
    """One configuration key on the command line."""

    group: str
    text: str
    commands: frozenset[str] = ARCHIVING
    default: str | None = None  # shown instead of Config's default


OPTIONS: dict[str, Option] = {
    "kinds": Option(
        WHAT,
        "the logs to archive, comma-separated: pstn, direct_routing, sms, pstn_blocked_users",
        ARCHIVING | {"status"},
    ),
    "window": Option(
        WHAT,
        "length of one archived window: 1h 2h 3h 4h 6h 8h 12h 1d; fixed "
        "per destination at its first run",
    ),
    "destination": Option(
        WHERE,
        "a folder, or s3://bucket/prefix (S3 endpoint, region and "
        "keys from the standard AWS variables)",
        EVERY,
    ),
    "table_format": Option(
        WHERE,
        "parquet (loose files) or delta (each kind a Delta Lake table, one commit per "
        "window; pip install 'callrec-archiver[delta]'); fixed per destination at its first run",
    ),
    "sse": Option(WHERE, "S3 server-side encryption: none, AES256 or aws:kms"),
    "sse_kms_key_id": Option(WHERE, "the KMS key for sse = aws:kms"),
    "object_lock_mode": Option(
        WHERE,
        "S3 Object Lock on each object: none, GOVERNANCE or COMPLIANCE (with object_lock_days)",
    ),
    "object_lock_days": Option(WHERE, "days each object stays locked"),
    "tenant_id": Option(
        GRAPH, "the Entra tenant (GUID or domain)", default="required, unless tenants"
    ),
    "client_id": Option(GRAPH, "the app (client) id", default="required"),
    "client_secret": Option(GRAPH, "the client secret"),
    "client_certificate": Option(
        GRAPH, "a PEM file with the app's certificate and its unencrypted key"
    ),
    "federated_token_file": Option(GRAPH, "a federated token file (workload identity)"),
    "cloud": Option(GRAPH, "global, usgov or dod: sets the two hosts below"),
    "authority_host": Option(GRAPH, "the Entra authority", default="the cloud's"),
    "graph_url": Option(GRAPH, "Graph's base URL", default="the cloud's"),
    "graph_version": Option(
        GRAPH, "v1.0 or beta (more columns; the SMS and blocked-users logs always come from beta)"
    ),
    "ca_bundle": Option(
        GRAPH,
        "a PEM of CAs to trust for Graph and Entra (wins over REQUESTS_CA_BUNDLE/SSL_CERT_FILE)",
        default="the system's",
    ),
    "tenants": Option(
        TENANTS,
        "archive these tenants, each under tenant=<id>/ (comma-"
        "separated ids; [[tenants]] tables in the config file)",
        EVERY,
    ),
    "max_windows": Option(TENANTS, "windows in flight in the whole process, all tenants"),
    "shard": Option(
        TENANTS, "i/n: archive only the i-th (from 0) of n shares of the tenants", EVERY
    ),
    "shards": Option(
        TENANTS, "n: the share is JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)", EVERY
    ),
    "concurrency": Option(PACING, "windows in flight (per tenant)", ARCHIVING | {"verify"}),
    "requests_per_minute": Option(
        PACING, "Graph requests a minute per log function (Graph allows 50)"
    ),
    "tenant_requests_per_minute": Option(
        PACING, "Graph requests a minute across functions (Graph allows 200 per app in a tenant)"
    ),
    "lease": Option(PACING, "how long a claim on a window lasts unrenewed (several workers)"),
    "grace": Option(PACING, "time windows in flight get after SIGTERM"),
    "start": Option(
        RUN,
        "the first window run keeps current",
        frozenset({"run", "status"}),
        default="as far back as Microsoft keeps each log",
    ),
    "settle": Option(
        RUN,
        "how long a window must be closed before its first archive",
        frozenset({"run", "status"}),
    ),
    "resweep": Option(
        RUN, "windows younger than this are archived again for late rows", frozenset({"run"})
    ),
    "resweep_interval": Option(
        RUN, "how often a young window is archived again", frozenset({"run"})
    ),
    "metrics_port": Option(
        WATCH, "serve Prometheus /metrics, /healthz, /readyz on PORT or HOST:PORT"
    ),
    "log_format": Option(WATCH, "auto (text on a terminal, else JSON lines), text or json", EVERY),
}

assert set(OPTIONS) == set(PARSERS), "every key needs its place on the command line"


def default_text(key: str) -> str:
    """The default of `key` as help shows it."""
    option = OPTIONS[key]
    if option.default is not None:
        return option.default
    value: Any = {f.name: getattr(Config(), f.name) for f in fields(Config)}[key]
    if value is None or value == ():
        return "none"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, datetime):
        return format_instant(value)
    if isinstance(value, tuple) and all(isinstance(v, Kind) for v in value):
        return ",".join(kind.value for kind in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def help_text(key: str) -> str:
    """`TEXT (ENV; default: D)`, argparse-escaped."""
    option = OPTIONS[key]
    env = " or ".join(f"${name}" for name in ENV_NAMES[key])
    text = f"{option.text} ({env}; default: {default_text(key)})"
    if key in SECRET_KEYS:
        text += "; no flag: from the environment or the config file only, never a process list"
    return text.replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser, command: str, *own: str) -> None:
    """`--config` and a flag for every key `command` reads, grouped as users look for them.

    `own` names keys whose flag the command uses for its own meaning (`backfill --start`).
    """
    parser.add_argument(
        "--config", metavar="FILE", help="a TOML file of these keys ($ARCHIVER_CONFIG)"
    )
    groups = {
        name: parser.add_argument_group(name)
        for name in GROUPS
        if any(name == o.group and command in o.commands for o in OPTIONS.values())
    }
    for key, option in OPTIONS.items():
        if command not in option.commands or key in own:
            continue
        group = groups[option.group]
        if key in SECRET_KEYS:  # no flag: a process list would show it
            group.description = (group.description or "") + f"{key}: {help_text(key)}."
            continue
        flag = "--" + key.replace("_", "-")
        group.add_argument(flag, dest=f"cfg_{key}", metavar=key.upper(), help=help_text(key))
