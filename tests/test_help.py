"""`--help` serves users: every option a command reads, with its environment variable
and default, checked against the keys README documents (written out here by hand, not
taken from the table the help is generated from)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

# README, "Configuration": key -> its environment variables, and its default as shown.
DOCUMENTED = {
    "tenant_id": (["ARCHIVER_TENANT_ID", "AZURE_TENANT_ID"], "required, unless tenants"),
    "client_id": (["ARCHIVER_CLIENT_ID", "AZURE_CLIENT_ID"], "required"),
    "client_certificate": (["ARCHIVER_CLIENT_CERTIFICATE"], "none"),
    "federated_token_file": (["AZURE_FEDERATED_TOKEN_FILE"], "none"),
    "authority_host": (["ARCHIVER_AUTHORITY_HOST", "AZURE_AUTHORITY_HOST"], "the cloud's"),
    "graph_url": (["ARCHIVER_GRAPH_URL"], "the cloud's"),
    "graph_version": (["ARCHIVER_GRAPH_VERSION"], "v1.0"),
    "kinds": (["ARCHIVER_KINDS"], "pstn,direct_routing"),
    "destination": (["ARCHIVER_DESTINATION"], "./archive"),
    "window": (["ARCHIVER_WINDOW"], "1d"),
    "table_format": (["ARCHIVER_TABLE_FORMAT"], "parquet"),
    "concurrency": (["ARCHIVER_CONCURRENCY"], "8"),
    "requests_per_minute": (["ARCHIVER_REQUESTS_PER_MINUTE"], "45"),
    "tenant_requests_per_minute": (["ARCHIVER_TENANT_REQUESTS_PER_MINUTE"], "180"),
    "lease": (["ARCHIVER_LEASE"], "2m"),
    "ca_bundle": (["ARCHIVER_CA_BUNDLE"], "the system's"),
    "cloud": (["ARCHIVER_CLOUD"], "global"),
    "log_format": (["ARCHIVER_LOG_FORMAT"], "auto"),
    "sse": (["ARCHIVER_SSE"], "none"),
    "sse_kms_key_id": (["ARCHIVER_SSE_KMS_KEY_ID"], "none"),
    "object_lock_mode": (["ARCHIVER_OBJECT_LOCK_MODE"], "none"),
    "object_lock_days": (["ARCHIVER_OBJECT_LOCK_DAYS"], "none"),
    "start": (["ARCHIVER_START"], "as far back as Microsoft keeps each log"),
    "settle": (["ARCHIVER_SETTLE"], "1h"),
    "resweep": (["ARCHIVER_RESWEEP"], "3d"),
    "resweep_interval": (["ARCHIVER_RESWEEP_INTERVAL"], "6h"),
    "grace": (["ARCHIVER_GRACE"], "25s"),
    "metrics_port": (["ARCHIVER_METRICS_PORT"], "none"),
    "tenants": (["ARCHIVER_TENANTS"], "none"),
    "max_windows": (["ARCHIVER_MAX_WINDOWS"], "64"),
    "shard": (["ARCHIVER_SHARD"], "none"),
    "shards": (["ARCHIVER_SHARDS"], "none"),
}
SECRET = ("client_secret", "ARCHIVER_CLIENT_SECRET")
RUN_ONLY = {"settle", "resweep", "resweep_interval"}
# What each command reads.
READS = {
    "backfill": set(DOCUMENTED) - RUN_ONLY - {"start"},
    "run": set(DOCUMENTED),
    "status": {"destination", "kinds", "start", "settle", "tenants", "shard", "shards",
               "log_format"},
    "verify": {"destination", "concurrency", "tenants", "shard", "shards", "log_format"},
}  # fmt: skip


def help_of(*command: str) -> str:
    """`archiver COMMAND --help` as a user sees it, in a wide terminal, one line per option."""
    done = subprocess.run(
        [sys.executable, "-m", "archiver", *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"},
    )
    return done.stdout


@pytest.mark.parametrize("command", sorted(READS))
def test_every_option_a_command_reads_is_listed_with_its_variable_and_default(
    command: str,
) -> None:
    text = help_of(command)
    entries = re.findall(r"^  (--[a-z-]+) [A-Z_]+\s+(.*?)(?=^  \S|^\S|\Z)", text, re.M | re.S)
    options = {flag: " ".join(words.split()) for flag, words in entries}
    for key in sorted(READS[command]):
        flag = "--" + key.replace("_", "-")
        names, default = DOCUMENTED[key]
        assert flag in options, f"{command} --help lacks {flag}"
        variables = " or ".join(f"${name}" for name in names)
        assert f"({variables}; default: {default})" in options[flag], options[flag]
    unread = set(DOCUMENTED) - READS[command]
    if command == "backfill":
        unread -= {"start"}  # backfill's own --start: the range, not the key
    assert [] == sorted(k for k in unread if "--" + k.replace("_", "-") in options)
    assert "--client-secret" not in text


@pytest.mark.parametrize("command", ["backfill", "run"])
def test_the_secret_is_named_with_its_variable_and_has_no_flag(command: str) -> None:
    text = " ".join(help_of(command).split())
    key, variable = SECRET
    assert (
        f"{key}: the client secret (${variable}; default: none); no flag: from the "
        "environment or the config file only, never a process list." in text
    )


def test_the_top_level_help_says_what_it_does_and_shows_three_examples() -> None:
    text = help_of()
    lines = text.splitlines()
    assert lines[2].startswith("Copy Microsoft Graph's call logs")
    assert lines[2].endswith("with a manifest of what is archived.")
    examples = text.split("examples:\n", 1)[1]
    assert ["archiver demo", "archiver backfill", "archiver run"] == re.findall(
        r"(archiver (?:demo|backfill|run))", examples
    )
    assert "parses arguments" not in text  # no developer docstring
