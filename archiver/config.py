"""Configuration: command-line flag > environment variable > TOML file > default.

The only module that reads the environment. Every key has one parser that turns
the raw value (a string from a flag or the environment, or a TOML value) into its
typed form or raises ValueError with a message naming what is wrong; `load`
turns that into a one-line `UsageError` that names the key and where it came from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from archiver.errors import UsageError
from archiver.kinds import DEFAULT_KINDS, Kind
from archiver.windows import parse_duration, parse_instant, parse_window

CLOUDS: dict[str, tuple[str, str]] = {
    # cloud: (authority_host, graph_url)
    "global": ("https://login.microsoftonline.com", "https://graph.microsoft.com"),
    "usgov": ("https://login.microsoftonline.us", "https://graph.microsoft.us"),
    "dod": ("https://login.microsoftonline.us", "https://dod-graph.microsoft.us"),
}


# A tenant id: a GUID or a verified domain (contoso.onmicrosoft.com), as Entra accepts in
# its authority URL; it also names the tenant's folder (`tenant=<id>`), so nothing else.
TENANT_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
CREDENTIAL_KEYS = ("client_secret", "client_certificate", "federated_token_file")
TENANT_KEYS = frozenset({"tenant_id", "name", "client_id", *CREDENTIAL_KEYS})
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - the metrics port must be reachable in a container
DERIVED_KEYS = frozenset({"metrics_host"})  # Config fields set by another key's parser


@dataclass(frozen=True)
class Tenant:
    """One customer tenant of a multi-tenant deployment: its id and, where it has its own
    app registration, its client and credential (else the top-level ones serve it)."""

    tenant_id: str
    name: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    client_certificate: Path | None = None
    federated_token_file: Path | None = None

    @property
    def has_credential(self) -> bool:
        """Whether the tenant names a credential of its own."""
        return any(getattr(self, key) for key in CREDENTIAL_KEYS)


@dataclass(frozen=True)
class Config:
    """Everything a run needs to know, typed and validated."""

    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    client_certificate: Path | None = None
    federated_token_file: Path | None = None
    authority_host: str = CLOUDS["global"][0]
    graph_url: str = CLOUDS["global"][1]
    graph_version: str = "v1.0"
    kinds: tuple[Kind, ...] = DEFAULT_KINDS  # what `run` keeps current, `backfill` archives
    destination: str = "./archive"
    window: timedelta = timedelta(days=1)
    table_format: str = "parquet"  # or "delta": each kind a Delta table (the [delta] extra)
    concurrency: int = 8
    requests_per_minute: float = 45.0
    tenant_requests_per_minute: float = 180.0
    ca_bundle: Path | None = None
    cloud: str = "global"
    start: datetime | None = None
    settle: timedelta = timedelta(hours=1)
    resweep: timedelta = timedelta(hours=72)
    resweep_interval: timedelta = timedelta(hours=6)
    grace: timedelta = timedelta(seconds=25)
    lease: timedelta = timedelta(minutes=2)
    metrics_port: int | None = None
    metrics_host: str = ALL_INTERFACES  # derived from metrics_port ("host:port"), not a key
    log_format: str = "auto"
    sse: str | None = None
    sse_kms_key_id: str | None = None
    object_lock_mode: str | None = None
    object_lock_days: int | None = None
    tenants: tuple[Tenant, ...] = ()  # many tenants, each under tenant=<id>/; () = one tenant
    max_windows: int = 64  # windows in flight in the whole process, all tenants together
    shard: tuple[int, int] | None = None  # (i, n): this process archives the i-th of n shares
    shards: int | None = None  # n, with i from JOB_COMPLETION_INDEX (Kubernetes Indexed Job)

    def require_credentials(self) -> None:
        """Raise UsageError unless a tenant, a client and one credential are configured
        (for every tenant, with `tenants`)."""
        if self.tenants:
            for tenant in self.tenants:
                if not (tenant.client_id or self.client_id):
                    raise UsageError(
                        f"configuration: tenant {tenant.tenant_id}: no client_id (set one in "
                        "its [[tenants]] table, or a top-level client_id / ARCHIVER_CLIENT_ID)"
                    )
                if not (tenant.has_credential or self.has_credential):
                    raise UsageError(
                        f"configuration: tenant {tenant.tenant_id}: no credential (set one in "
                        "its [[tenants]] table, or ARCHIVER_CLIENT_SECRET, "
                        "ARCHIVER_CLIENT_CERTIFICATE or AZURE_FEDERATED_TOKEN_FILE)"
                    )
            return
        for key in ("tenant_id", "client_id"):
            if not getattr(self, key):
                raise UsageError(
                    f"configuration: {key} is required (set {ENV_NAMES[key][0]} or {key} "
                    "in the config file)"
                )
        if not self.has_credential:
            raise UsageError(
                "configuration: no credential: set ARCHIVER_CLIENT_SECRET, "
                "ARCHIVER_CLIENT_CERTIFICATE or AZURE_FEDERATED_TOKEN_FILE"
            )

    @property
    def has_credential(self) -> bool:
        """Whether a top-level credential is configured."""
        return any(getattr(self, key) for key in CREDENTIAL_KEYS)

    def share(self) -> tuple[Tenant, ...]:
        """The tenants this process archives: all of them, or its shard's share."""
        if self.shard is None:
            return self.tenants
        index, count = self.shard
        return tuple(t for t in self.tenants if shard_of(t.tenant_id, count) == index)

    def for_tenant(self, tenant: Tenant) -> Config:
        """The single-tenant Config that archives `tenant` under `<destination>/tenant=<id>/`:
        its own client and credential where it names them, else the top-level ones."""
        own = tenant.has_credential
        return replace(
            self,
            tenant_id=tenant.tenant_id,
            client_id=tenant.client_id or self.client_id,
            client_secret=tenant.client_secret if own else self.client_secret,
            client_certificate=tenant.client_certificate if own else self.client_certificate,
            federated_token_file=(
                tenant.federated_token_file if own else self.federated_token_file
            ),
            destination=tenant_destination(self.destination, tenant.tenant_id),
            tenants=(),
            shard=None,
            shards=None,
        )


def shard_of(tenant_id: str, shards: int) -> int:
    """The share (0 .. shards-1) a tenant belongs to: a hash of its id, so a tenant stays in
    its share whatever other tenants are added or removed."""
    digest = hashlib.sha256(tenant_id.lower().encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def tenant_destination(destination: str, tenant_id: str) -> str:
    """`<destination>/tenant=<id>`, for a folder or an s3:// address."""
    return f"{destination.rstrip('/')}/tenant={tenant_id}"


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a non-empty string")
    return value.strip()


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value)
        if text not in allowed:
            raise ValueError(f"{text!r} is not one of: {', '.join(allowed)}")
        return text

    return parse


def _kinds(value: Any) -> tuple[Kind, ...]:
    """Kinds as a comma-separated text or a TOML list, each once, in the order given."""
    items = value if isinstance(value, list) else _text(value).split(",")
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{value!r} is not a list of kind names")
    names = [item.strip() for item in items]
    kinds = tuple(dict.fromkeys(Kind.parse(name) for name in names if name))
    if not kinds:
        raise ValueError("names no kind")
    return kinds


def _optional_choice(*allowed: str) -> Callable[[Any], str | None]:
    parse = _choice("none", *allowed)

    def optional(value: Any) -> str | None:
        text = parse(value)
        return None if text == "none" else text

    return optional


def _positive(kind: type[int] | type[float]) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a {kind.__name__}") from None
        if isinstance(value, bool) or number <= 0 or number != float(value):
            raise ValueError(f"{value!r} is not a positive {kind.__name__}")
        return number

    return parse


def _port(value: Any) -> int:
    number = _positive(int)(value)
    if number > 65535:
        raise ValueError(f"{value!r} is not a TCP port")
    return int(number)


def _listen(value: Any) -> tuple[str, int]:
    """`9464`, `host:9464` or `[IPv6]:9464` as (host, port); the host defaults to all interfaces."""
    if isinstance(value, int):
        return ALL_INTERFACES, _port(value)
    text = _text(value)
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [::1]:9464")
    try:
        number = _port(port)
    except ValueError:
        raise ValueError(f"{text!r} is not a port, host:port or [IPv6]:port") from None
    return host or ALL_INTERFACES, number


def _url(value: Any) -> str:
    text = _text(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError(f"{text!r} is not an https:// URL")
    return text


def _file(value: Any) -> Path:
    path = Path(_text(value)).expanduser()
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a readable file")
    return path


def _duration(value: Any) -> timedelta:
    return parse_duration(_text(value))


def _window(value: Any) -> timedelta:
    return parse_window(_text(value))


def _table_format(value: Any) -> str:
    """`parquet` or `delta`; delta only where the deltalake package is installed, so a run
    that cannot write its tables stops before it writes anything."""
    text = _choice("parquet", "delta")(value)
    if text == "delta":
        try:
            found = importlib.util.find_spec("deltalake") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ValueError(
                "'delta' needs the deltalake package: pip install 'callrec-archiver[delta]'"
            )
    return text


def _instant(value: Any) -> datetime:
    if isinstance(value, datetime):  # TOML offset date-times arrive parsed
        if value.tzinfo is None:
            raise ValueError(f"{value.isoformat()!r} has no time zone")
        return parse_instant(value.isoformat())
    return parse_instant(str(value))


def _cloud(value: Any) -> str:
    text = _text(value)
    if text == "china":
        raise ValueError(
            "'china': Microsoft does not offer getPstnCalls/getDirectRoutingCalls in the "
            "China cloud (21Vianet)"
        )
    return _choice(*CLOUDS)(text)


def _tenant_id(value: Any) -> str:
    text = _text(value)
    if not TENANT_ID.fullmatch(text):
        raise ValueError(f"{text!r} is not a tenant id (a GUID or a domain name)")
    return text


_TENANT_PARSERS: dict[str, Callable[[Any], Any]] = {
    "tenant_id": _tenant_id,
    "name": _text,
    "client_id": _text,
    "client_secret": _text,
    "client_certificate": _file,
    "federated_token_file": _file,
}


def _tenant(value: Any) -> Tenant:
    """One `[[tenants]]` table, or a bare id."""
    if not isinstance(value, dict):
        return Tenant(_tenant_id(value))
    unknown = sorted(set(value) - TENANT_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in a [[tenants]] table")
    if "tenant_id" not in value:
        raise ValueError("a [[tenants]] table without tenant_id")
    parsed: dict[str, Any] = {}
    for key, raw in value.items():
        try:
            parsed[key] = _TENANT_PARSERS[key](raw)
        except ValueError as exc:
            where = value["tenant_id"] if key != "tenant_id" else "?"
            raise ValueError(f"tenant {where}: {key}: {exc}") from None
    return Tenant(**parsed)


def _tenants(value: Any) -> tuple[Tenant, ...]:
    """Tenants as a comma-separated list of ids, or TOML `[[tenants]]` tables; each once."""
    items = value if isinstance(value, list) else _text(value).split(",")
    tenants = [_tenant(item.strip() if isinstance(item, str) else item) for item in items]
    if not tenants:
        raise ValueError("names no tenant")
    seen: set[str] = set()
    for tenant in tenants:
        if tenant.tenant_id.lower() in seen:
            raise ValueError(f"tenant {tenant.tenant_id} is listed twice")
        seen.add(tenant.tenant_id.lower())
    return tuple(tenants)


def _shard(value: Any) -> tuple[int, int]:
    """`i/n`: the i-th (from 0) of n shares of the tenants."""
    index, sep, count = _text(value).partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()):
        raise ValueError(f"{value!r} is not i/n (e.g. 0/4)")
    i, n = int(index), int(count)
    if not 0 <= i < n:
        raise ValueError(f"{value!r}: i must be at least 0 and less than n")
    return i, n


PARSERS: dict[str, Callable[[Any], Any]] = {
    "tenant_id": _tenant_id,
    "client_id": _text,
    "client_secret": _text,
    "client_certificate": _file,
    "federated_token_file": _file,
    "authority_host": _url,
    "graph_url": _url,
    "graph_version": _choice("v1.0", "beta"),
    "kinds": _kinds,
    "destination": _text,
    "window": _window,
    "table_format": _table_format,
    "concurrency": _positive(int),
    "requests_per_minute": _positive(float),
    "tenant_requests_per_minute": _positive(float),
    "ca_bundle": _file,
    "cloud": _cloud,
    "start": _instant,
    "settle": _duration,
    "resweep": _duration,
    "resweep_interval": _duration,
    "grace": _duration,
    "lease": _duration,
    "metrics_port": _listen,  # load() splits its (host, port) into metrics_host, metrics_port
    "log_format": _choice("auto", "text", "json"),
    "sse": _optional_choice("AES256", "aws:kms"),
    "sse_kms_key_id": _text,
    "object_lock_mode": _optional_choice("GOVERNANCE", "COMPLIANCE"),
    "object_lock_days": _positive(int),
    "tenants": _tenants,
    "max_windows": _positive(int),
    "shard": _shard,
    "shards": _positive(int),
}

# Environment variables per key, first match wins (AKS workload identity injects AZURE_*).
ENV_NAMES: dict[str, tuple[str, ...]] = {key: (f"ARCHIVER_{key.upper()}",) for key in PARSERS} | {
    "tenant_id": ("ARCHIVER_TENANT_ID", "AZURE_TENANT_ID"),
    "client_id": ("ARCHIVER_CLIENT_ID", "AZURE_CLIENT_ID"),
    "federated_token_file": ("AZURE_FEDERATED_TOKEN_FILE",),
    "authority_host": ("ARCHIVER_AUTHORITY_HOST", "AZURE_AUTHORITY_HOST"),
}

SECRET_KEYS = frozenset({"client_secret"})
SHARD_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes in each pod of an Indexed Job

assert set(PARSERS) == {f.name for f in fields(Config)} - DERIVED_KEYS, "every key needs a parser"


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """Build the Config from flags, the environment and the TOML file, in that precedence.

    `flags` holds only the options the user gave. `config_file` is `--config`; when
    absent, `ARCHIVER_CONFIG` names the file. Raises UsageError naming the bad key.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, tuple[Any, str]] = {}
    path = config_file or environ.get("ARCHIVER_CONFIG")
    if path:
        for key, value in _read_toml(path).items():
            raw[key] = (value, f"in {path}")
        if "tenants" in raw and "tenant_id" in raw:  # before the environment can hide it
            _check_tenant_keys(raw)
    for key, names in ENV_NAMES.items():
        for name in names:
            if environ.get(name, "").strip():
                raw[key] = (environ[name], f"from {name}")
                break
    for key, value in (flags or {}).items():
        if value is not None:
            raw[key] = (value, f"from --{key.replace('_', '-')}")
    _check_tenant_keys(raw)

    values: dict[str, Any] = {}
    for key, (value, source) in raw.items():
        try:
            values[key] = PARSERS[key](value)
        except ValueError as exc:
            raise UsageError(f"configuration: {key} {source}: {exc}") from None
    if "shards" in values:
        values["shard"] = _shard_from_index(values["shards"], environ)
    if "metrics_port" in values:
        values["metrics_host"], values["metrics_port"] = values["metrics_port"]
    cloud = values.get("cloud", "global")
    authority, graph = CLOUDS[cloud]
    values.setdefault("authority_host", authority)
    values.setdefault("graph_url", graph)
    config = replace(Config(), **values)
    _check_combinations(config)
    return config


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise UsageError(f"configuration: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"configuration: {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(PARSERS))
    if unknown:
        raise UsageError(f"configuration: unknown key {unknown[0]!r} in {path}")
    return data


def _check_tenant_keys(raw: dict[str, tuple[Any, str]]) -> None:
    """Beside `tenants`, a tenant_id is a mistake, except AZURE_TENANT_ID (workload identity
    injects it into every pod), which is ignored; shard and shards need tenants, and
    exclude each other."""
    if "tenants" in raw:
        if "tenant_id" in raw:
            source = raw["tenant_id"][1]
            if source == "from AZURE_TENANT_ID":
                del raw["tenant_id"]
            else:
                raise UsageError(
                    f"configuration: tenant_id {source} beside tenants: give every tenant in "
                    "tenants, or use tenant_id alone"
                )
    else:
        for key in ("shard", "shards"):
            if key in raw:
                raise UsageError(f"configuration: {key} {raw[key][1]} needs tenants to share")
    if "shard" in raw and "shards" in raw:
        raise UsageError("configuration: set shard or shards, not both")


def _shard_from_index(count: int, environ: Mapping[str, str]) -> tuple[int, int]:
    """shards = n: this pod's share is JOB_COMPLETION_INDEX (an Indexed Job's pod index)."""
    index = environ.get(SHARD_INDEX, "").strip()
    if not index.isdigit() or int(index) >= count:
        shown = repr(index) if index else "not set"
        raise UsageError(
            f"configuration: shards = {count} needs {SHARD_INDEX} from 0 to {count - 1} "
            f"(a Kubernetes Indexed Job sets it); it is {shown}"
        )
    return int(index), count


def _check_combinations(config: Config) -> None:
    if config.sse == "aws:kms" and not config.sse_kms_key_id:
        raise UsageError("configuration: sse = aws:kms needs sse_kms_key_id")
    if bool(config.object_lock_mode) != bool(config.object_lock_days):
        raise UsageError(
            "configuration: object_lock_mode and object_lock_days must be set together"
        )
