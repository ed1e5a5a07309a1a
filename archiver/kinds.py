"""The logs the archiver copies: one declaration per Graph log function, in one place.

A log's declaration says everything the rest of the package needs to know of it: the
Graph function and the versions that serve it, the column a window's range applies to,
the row key, whether `toDateTime` is inclusive, how long Microsoft keeps it, and its
columns (name, type, the version that added it). Nothing outside this module branches
on the kind: schema, window filter, reconcile, status, verify, metrics and `run` read
these. Types are named, not Arrow types, so this module stays the lowest of all (the
emulator uses it too); `schema.py` maps the names to Arrow.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

V1 = "v1.0"
BETA = "beta"

# Column types, by name (schema.py maps them to Arrow types).
STRING = "string"
TIMESTAMP = "timestamp"  # µs, UTC; Graph's 0001-01-01 sentinel becomes null
INT = "int32"
MONEY = "decimal"  # decimal128(38, 10)
BOOL = "bool"
UNITS = "units"  # list<struct<id: string>>


@dataclass(frozen=True)
class Column:
    """One property of a log's rows: its name, type and the Graph version that added it."""

    name: str
    type: str = STRING
    since: str = V1


@dataclass(frozen=True)
class Log:
    """What one Graph log function is; see the module docstring."""

    function: str
    versions: tuple[str, ...]  # Graph versions that serve it, oldest first
    time_column: str  # the column fromDateTime/toDateTime apply to
    key: str  # the row key: unique per row, what repeated rows are dropped by
    end_inclusive: bool  # toDateTime inclusive (rows exactly at a window's end come back)
    retention_days: int  # Microsoft's documented retention, or the guard we assume
    retention_documented: bool  # False: Microsoft documents none (see README)
    columns: tuple[Column, ...]  # v1.0 first, then beta, each in the API page's order
    unique_columns: frozenset[str]  # columns whose values differ row by row (no dictionary)


def _columns(v1: str, beta: str, types: dict[str, str]) -> tuple[Column, ...]:
    """Columns from space-separated names; every name not in `types` is a string."""
    return tuple(
        Column(name, types.get(name, STRING), version)
        for version, names in ((V1, v1), (BETA, beta))
        for name in names.split()
    )


_PSTN = Log(
    function="getPstnCalls",
    versions=(V1, BETA),
    time_column="startDateTime",
    key="id",
    end_inclusive=True,
    retention_days=365,
    retention_documented=True,
    columns=_columns(
        "id callId userId userPrincipalName userDisplayName startDateTime endDateTime "
        "duration charge connectionCharge callType currency calleeNumber callerNumber "
        "usageCountryCode tenantCountryCode destinationContext destinationName conferenceId "
        "licenseCapability inventoryType operator callDurationSource",
        "otherPartyCountryCode administrativeUnitInfos clientPublicIpV4Address "
        "clientPublicIpV6Address clientLocalIpV4Address clientLocalIpV6Address",
        {
            "startDateTime": TIMESTAMP,
            "endDateTime": TIMESTAMP,
            "duration": INT,
            "charge": MONEY,
            "connectionCharge": MONEY,
            "administrativeUnitInfos": UNITS,
        },
    ),
    unique_columns=frozenset({"id", "callId", "startDateTime", "endDateTime"}),
)

_DIRECT_ROUTING = Log(
    function="getDirectRoutingCalls",
    versions=(V1, BETA),
    time_column="startDateTime",
    key="id",
    end_inclusive=False,
    retention_days=150,
    retention_documented=True,
    columns=_columns(
        "id correlationId userId userPrincipalName userDisplayName startDateTime "
        "endDateTime inviteDateTime failureDateTime duration callType successfulCall "
        "callerNumber calleeNumber mediaPathLocation signalingLocation finalSipCode "
        "callEndSubReason finalSipCodePhrase trunkFullyQualifiedDomainName mediaBypassEnabled",
        "userCountryCode otherPartyCountryCode transferorCorrelationId administrativeUnitInfos",
        {
            "startDateTime": TIMESTAMP,
            "endDateTime": TIMESTAMP,
            "inviteDateTime": TIMESTAMP,
            "failureDateTime": TIMESTAMP,
            "duration": INT,
            "finalSipCode": INT,
            "callEndSubReason": INT,
            "successfulCall": BOOL,
            "mediaBypassEnabled": BOOL,
            "administrativeUnitInfos": UNITS,
        },
    ),
    unique_columns=frozenset(
        {
            "id",
            "correlationId",
            "transferorCorrelationId",
            "startDateTime",
            "endDateTime",
            "inviteDateTime",
            "failureDateTime",
        }
    ),
)

# Microsoft documents no retention for the SMS and blocked-users logs. The guard
# assumes the shortest of the documented call logs' (Direct Routing's 150 days): `run`
# starts there by default and warns as a backlog nears it, and a window older than
# that is still asked for, never written off, since Graph may keep more.
UNDOCUMENTED_RETENTION_DAYS = 150

_SMS = Log(
    function="getSmsLog",
    versions=(BETA,),
    time_column="sentDateTime",
    key="id",
    end_inclusive=True,
    retention_days=UNDOCUMENTED_RETENTION_DAYS,
    retention_documented=False,
    columns=_columns(
        "",
        "id smsId userId userPrincipalName userDisplayName sentDateTime smsType smsUnits "
        "callCharge currency sourceNumber destinationNumber destinationContext "
        "destinationName licenseCapability otherPartyCountryCode tenantCountryCode "
        "userCountryCode administrativeUnitInfos",
        {
            "sentDateTime": TIMESTAMP,
            "smsUnits": INT,
            "callCharge": MONEY,
            "administrativeUnitInfos": UNITS,
        },
    ),
    unique_columns=frozenset({"id", "sentDateTime"}),
)

_PSTN_BLOCKED_USERS = Log(
    function="getPstnBlockedUsersLog",
    versions=(BETA,),
    time_column="blockDateTime",
    key="remediationId",
    end_inclusive=True,
    retention_days=UNDOCUMENTED_RETENTION_DAYS,
    retention_documented=False,
    columns=_columns(
        "",
        "remediationId blockDateTime blockReason userBlockMode userId userPrincipalName "
        "userDisplayName userTelephoneNumber",
        {"blockDateTime": TIMESTAMP},
    ),
    unique_columns=frozenset({"remediationId", "blockDateTime"}),
)


class Kind(enum.Enum):
    """A log: its value names the folder under the destination; `log` declares it."""

    PSTN = "pstn"
    DIRECT_ROUTING = "direct_routing"
    SMS = "sms"
    PSTN_BLOCKED_USERS = "pstn_blocked_users"

    @property
    def log(self) -> Log:
        """This kind's declaration."""
        return _LOGS[self]

    @property
    def function(self) -> str:
        """The Graph function that serves this log."""
        return _LOGS[self].function

    @property
    def versions(self) -> tuple[str, ...]:
        """The Graph versions that serve this log."""
        return _LOGS[self].versions

    @property
    def time_column(self) -> str:
        """The column a window's range applies to."""
        return _LOGS[self].time_column

    @property
    def key(self) -> str:
        """The row key: unique per row."""
        return _LOGS[self].key

    @property
    def end_inclusive(self) -> bool:
        """True when the function's toDateTime is inclusive."""
        return _LOGS[self].end_inclusive

    @property
    def retention_days(self) -> int:
        """How long Microsoft keeps this log (or the guard assumed; see `Log`)."""
        return _LOGS[self].retention_days

    def version_for(self, configured: str) -> str:
        """The Graph version to fetch this log from: the configured one where it serves
        the log, else the newest that does (the beta-only logs always come from beta)."""
        return configured if configured in self.versions else self.versions[-1]

    @classmethod
    def parse(cls, text: str) -> Kind:
        """The kind named `text` (e.g. `pstn`); ValueError otherwise."""
        try:
            return cls(text)
        except ValueError:
            names = ", ".join(k.value for k in cls)
            raise ValueError(f"unknown kind {text!r} (expected one of: {names})") from None


_LOGS: dict[Kind, Log] = {
    Kind.PSTN: _PSTN,
    Kind.DIRECT_ROUTING: _DIRECT_ROUTING,
    Kind.SMS: _SMS,
    Kind.PSTN_BLOCKED_USERS: _PSTN_BLOCKED_USERS,
}

# What `run` keeps current and `backfill` archives when no kind is named (`kinds`):
# the two call logs, as before the other logs were added.
DEFAULT_KINDS: tuple[Kind, ...] = (Kind.PSTN, Kind.DIRECT_ROUTING)
