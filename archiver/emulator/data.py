"""Deterministic log rows with the quirks real Graph data has: PSTN and Direct Routing
calls, SMS, PSTN blocked users.

Each (seed, kind, UTC day) holds exactly `rows_per_day` rows. A row is a pure
function of (seed, kind, day, index): only each day's sorted times (of the kind's
time column: startDateTime, sentDateTime, blockDateTime) are computed and cached
(cheap); row texts are built for the slice being served, in (time, key) order.

Times are integers in 100 ns ticks since 0001-01-01T00:00:00Z (.NET ticks), the
resolution Graph writes (7 fractional digits).

Quirks present every day (given enough rows per day):
- rows at 00:00:00Z, at every exact hour, and at 23:59:59.9999999Z;
- times with 7, 3 or no fractional digits, and two rows sharing a time;
- the `0001-01-01T00:00:00Z` sentinel (Direct Routing `failureDateTime` on
  successful calls, `endDateTime` on failed ones);
- nulls, empty and 1-2 element `administrativeUnitInfos`, non-ASCII names,
  masked numbers, Direct Routing callee numbers that are not E.164;
- money as JSON numbers with up to 4 decimals, int durations, SIP codes and SMS
  units, booleans;
- every Nth row a property no schema knows (a string, a number or an object);
- unique keys (`id`; `remediationId` for blocked users, which have no `id`); repeated
  `callId`s (PSTN), `correlationId`s (Direct Routing) and `smsId`s (SMS);
- SMS: masked external numbers on either side, inbound messages free, 1-3 units;
- blocked users: `blocked`, `unblocked` and now and then `unknownFutureValue`, a
  reason that may be null, users without a telephone number.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import hashlib
import json
import random
import re
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from archiver.kinds import Kind

TICKS_PER_SECOND = 10_000_000
TICKS_PER_DAY = 86_400 * TICKS_PER_SECOND
SENTINEL = "0001-01-01T00:00:00Z"

BETA_ONLY: dict[Kind, frozenset[str]] = {
    Kind.PSTN: frozenset(
        {
            "otherPartyCountryCode",
            "administrativeUnitInfos",
            "clientPublicIpV4Address",
            "clientPublicIpV6Address",
            "clientLocalIpV4Address",
            "clientLocalIpV6Address",
        }
    ),
    Kind.DIRECT_ROUTING: frozenset(
        {
            "userCountryCode",
            "otherPartyCountryCode",
            "transferorCorrelationId",
            "administrativeUnitInfos",
        }
    ),
    # beta only as a whole: v1.0 does not serve these logs at all
    Kind.SMS: frozenset(),
    Kind.PSTN_BLOCKED_USERS: frozenset(),
}

ROW_TYPE: dict[Kind, str] = {
    Kind.PSTN: "microsoft.graph.callRecords.pstnCallLogRow",
    Kind.DIRECT_ROUTING: "microsoft.graph.callRecords.directRoutingLogRow",
    Kind.SMS: "microsoft.graph.callRecords.smsLogRow",
    Kind.PSTN_BLOCKED_USERS: "microsoft.graph.callRecords.pstnBlockedUsersLogRow",
}

# The name each kind's rows are derived under (`_digest(f"{prefix}/{seed}/{day}/{index}")`).
_PREFIX: dict[Kind, str] = {
    Kind.PSTN: "pstn",
    Kind.DIRECT_ROUTING: "dr",
    Kind.SMS: "sms",
    Kind.PSTN_BLOCKED_USERS: "pbu",
}

_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?(Z|[+-]\d{2}:\d{2}))?"
)
_MAX_ORDINAL = dt.date.max.toordinal()


# --- time ------------------------------------------------------------------------------


def parse_datetime(text: str) -> int:
    """Ticks of a Graph DateTimeOffset literal (`2019-11-01`, `...T00:00:00.1234567Z`, `+hh:mm`).

    Raises ValueError when `text` is not one.
    """
    match = _DATETIME.fullmatch(text)
    if match is None:
        raise ValueError(f"not a DateTimeOffset: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    ordinal = dt.date(int(year), int(month), int(day)).toordinal()
    seconds = 0
    if hour is not None:
        h, m, s = int(hour), int(minute), int(second or 0)
        if h > 23 or m > 59 or s > 59:
            raise ValueError(f"time out of range: {text!r}")
        seconds = h * 3600 + m * 60 + s
        if zone != "Z":
            oh, om = int(zone[1:3]), int(zone[4:6])
            if oh > 14 or om > 59:
                raise ValueError(f"offset out of range: {text!r}")
            offset = oh * 3600 + om * 60
            seconds -= offset if zone[0] == "+" else -offset
    ticks = (ordinal * 86_400 + seconds) * TICKS_PER_SECOND
    if fraction:
        ticks += int(fraction.ljust(7, "0"))
    if not TICKS_PER_DAY <= ticks < (_MAX_ORDINAL + 1) * TICKS_PER_DAY:
        raise ValueError(f"out of range: {text!r}")
    return ticks


def ticks_from_datetime(value: dt.datetime) -> int:
    """Ticks of a datetime; a naive one is taken as UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    seconds = value.toordinal() * 86_400 + value.hour * 3600 + value.minute * 60 + value.second
    return seconds * TICKS_PER_SECOND + value.microsecond * 10


@functools.lru_cache(maxsize=4096)
def _date_text(ordinal: int) -> str:
    return dt.date.fromordinal(ordinal).isoformat()


_HOUR_MINUTE = tuple(f"T{h:02d}:{m:02d}:" for h in range(24) for m in range(60))
_SECOND = tuple(f"{s:02d}" for s in range(60))


def format_ticks(ticks: int) -> str:
    """Graph's text for a time: no fraction, 3 digits, or 7 digits, whichever is exact."""
    ordinal, rest = divmod(ticks, TICKS_PER_DAY)
    seconds, fraction = divmod(rest, TICKS_PER_SECOND)
    minutes, second = divmod(seconds, 60)
    head = _date_text(ordinal) + _HOUR_MINUTE[minutes] + _SECOND[second]
    if fraction == 0:
        return head + "Z"
    if fraction % 10_000 == 0:
        return f"{head}.{fraction // 10_000:03d}Z"
    return f"{head}.{fraction:07d}Z"


# --- fixed vocabularies ----------------------------------------------------------------


def _q(text: str) -> str:
    """`text` as a JSON string literal, non-ASCII kept as is (Graph sends UTF-8)."""
    return json.dumps(text, ensure_ascii=False)


def _qs(*texts: str) -> tuple[str, ...]:
    return tuple(_q(t) for t in texts)


_NAMES: tuple[tuple[str, str], ...] = (
    ("Zoë Müller", "zoe.muller"),
    ("José Ñúñez", "jose.nunez"),
    ("李雷", "li.lei"),
    ("Richard Malk", "richard.malk"),
    ("Ana Lima", "ana.lima"),
    ("Søren Østergaard", "soren.ostergaard"),
    ("Aylin Çelik", "aylin.celik"),
    ("Priya Raman", "priya.raman"),
    ("Tomasz Wójcik", "tomasz.wojcik"),
    ("Fatima Zahra", "fatima.zahra"),
    ("Mateo García", "mateo.garcia"),
    ("Hannah Schmidt", "hannah.schmidt"),
    ("Kenji Sato", "kenji.sato"),
    ("Olga Ivanova", "olga.ivanova"),
    ("Liam O'Brien", "liam.obrien"),
    ('Chloé "Coco" Martin', "chloe.martin"),
    ("Noah Smith", "noah.smith"),
    ("Emma Johansson", "emma.johansson"),
    ("Björn Nilsson", "bjorn.nilsson"),
    ("Amara Okafor", "amara.okafor"),
)
_COUNTRIES = _qs("US", "DE", "GB", "FR", "ES", "JP", "IN", "BR", "SE", "AU")
_DESTINATIONS = _qs(
    "United States",
    "Germany",
    "United Kingdom",
    "France",
    "Spain",
    "Japan",
    "India",
    "Brazil",
    "Sweden",
    "Australia",
)
_CURRENCIES = _qs("USD", "EUR", "GBP")
_PSTN_CALL_TYPES = (
    "user_in",
    "user_out",
    "ucap_in",
    "ucap_out",
    "conf_in",
    "conf_out",
    "emergency",
)
_PSTN_CALL_TYPES_Q = _qs(*_PSTN_CALL_TYPES)
_LICENSES = _qs("MCOPSTNU", "MCOPSTN1", "MCOPSTN2", "MCOPSTNEAU", "MCOMEETADD")
_INVENTORY = _qs("Subscriber", "Service", "User", "Toll free")
_OPERATORS = _qs("Microsoft", "Microsoft", "Microsoft", "Telstra", "Orange")
_DR_CALL_TYPES = (
    "ByotIn",
    "ByotOut",
    "ByotOutUserForwarding",
    "ByotOutUserTransfer",
    "ByotInVoicemail",
)
_DR_CALL_TYPES_Q = _qs(*_DR_CALL_TYPES)
_LOCATIONS = _qs("USWE", "USEA", "EUNO", "EUWE", "APSE", "APEA")
_TRUNKS = _qs("sbc1.contoso.com", "sbc2.contoso.com", "tll-audiocodes01.adatum.biz")
_SUCCESS = ((0, _q("BYE"), 540000), (0, _q("BYE"), 540200), (200, _q("OK"), 540200))
_FAILURE = (
    (404, _q("Not Found"), 560404),
    (408, _q("Request Timeout"), 560408),
    (480, _q("Temporarily Unavailable"), 560480),
    (486, _q("Busy Here"), 560486),
    (487, _q("Request Terminated"), 540487),
    (500, _q("Internal Server Error"), 569002),
    (503, _q("Service Unavailable"), 560503),
)
_SMS_LICENSES = _qs("MCOSMS1", "MCOSMS1", "MCOPSTNU", "MCOPSTN1")
_BLOCK_REASONS = _qs(
    "High Overall Usage",
    "High International Usage",
    "Suspicious Call Pattern",
    "Fraud Suspected",
)
_UNBLOCK_REASONS = _qs("Tenant Requested", "Block Expired", "Admin Override")
_COUNTRY_PREFIXES = ("+1425555", "+4930123", "+4420794", "+3721234", "+8190123")
_NOT_E164 = _qs("anonymous", "sip:reception@contoso.com", "sip:+14255550100@sbc1.contoso.com")
_Q_SENTINEL = _q(SENTINEL)
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class _User:
    """A user, its text fields already JSON-quoted."""

    id: str
    upn: str
    name: str
    country: str


def _uuid_text(digest: bytes) -> str:
    """A version-4-shaped UUID string from the first 16 bytes of a digest."""
    h = digest[:16].hex()
    variant = "89ab"[digest[8] & 3]
    return f"{h[0:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=64).digest()


@functools.lru_cache(maxsize=64)
def _users(seed: int) -> tuple[_User, ...]:
    users = []
    for i, (name, local) in enumerate(_NAMES):
        d = _digest(f"user/{seed}/{i}")
        users.append(
            _User(_q(_uuid_text(d)), _q(f"{local}@contoso.com"), _q(name), _COUNTRIES[d[20] % 10])
        )
    return tuple(users)


@functools.lru_cache(maxsize=64)
def _admin_unit_lists(seed: int) -> tuple[tuple[str, ...], ...]:
    """JSON for administrativeUnitInfos, by [first unit][count]: 0, 1 or 2 of 5 units."""
    units = [f'{{"id":"{_uuid_text(_digest(f"au/{seed}/{i}"))}"}}' for i in range(5)]
    return tuple(
        tuple(
            "[" + ",".join(units[(first + k) % 5] for k in range(count)) + "]" for count in range(3)
        )
        for first in range(5)
    )


_DEC = tuple(str(i) for i in range(256))
_HEX = tuple(f"{i:x}" for i in range(256))


def _mix(seed: int, ordinal: int, index: int) -> int:
    """A 64-bit call key; rows whose index is 5 mod 13 share their call with the row before."""
    group = index - 1 if index % 13 == 5 else index
    return (
        (ordinal * 1_000_003 + group) * 0x9E3779B97F4A7C15 + seed * 0xBF58476D1CE4E5B9
    ) & _MASK64


def _phone(a: int, b: int, c: int, masked: bool) -> str:
    if masked:
        return f'"+{a % 9 + 1}{b % 900 + 100:03d}{c % 1000:03d}***"'
    return f'"+1{b % 800 + 200:03d}555{(a << 8 | c) % 10000:04d}"'


def _money(choice: int, low: int, high: int) -> str:
    """JSON for an amount: 0, 0.0, 1.5, 0.0215, or up to 4.9999 with at most 4 decimals."""
    if choice == 0:
        return "0"
    if choice == 1:
        return "0.0"
    if choice == 2:
        return "1.5"
    if choice == 3:
        return "0.0215"
    return repr(((high << 8 | low) % 50_000) / 10_000)


def _unknown_property(index: int, every: int) -> str:
    """`,"name":value` for a property no schema knows, on every `every`-th row; else ``."""
    if every <= 0 or index % every != every - 1:
        return ""
    variant = (index // every) % 3
    if variant == 0:
        return f',"routingTag":"rt-{index:05d}"'
    if variant == 1:
        return f',"qualityScore":{1 + (index % 400) / 100!r}'
    return f',"networkInfo":{{"jitterMs":{index % 37},"region":"emea","hops":[1,2]}}'


# --- rows ------------------------------------------------------------------------------


def pstn_row(seed: int, ordinal: int, index: int, tick: int, beta: bool, every: int) -> str:
    """JSON text of PSTN row `index` of day `ordinal`, starting `tick` ticks into the day."""
    d = _digest(f"pstn/{seed}/{ordinal}/{index}")
    users = _users(seed)
    user = users[index % 20] if index < 40 else users[d[16] % 20]
    start = ordinal * TICKS_PER_DAY + tick
    duration = (d[17] << 8 | d[18]) % 3600 if d[19] % 10 else 0
    call_type = d[20] % 7
    inbound = _PSTN_CALL_TYPES[call_type].endswith("_in")
    end = start + duration * TICKS_PER_SECOND + (10_000 if duration == 0 or d[28] & 1 else 0)
    x = _mix(seed, ordinal, index)
    user_number = f'"+1425555{(d[22] << 8 | d[23]) % 10000:04d}"'
    other_number = _phone(d[24], d[25], d[26], index % 11 == 3 or d[21] % 15 == 0)
    if inbound:
        charge = connection_charge = "0"
        callee, caller = user_number, other_number
    else:
        charge = _money(d[29] % 6, d[30], d[31])
        connection_charge = _money(d[33] % 5, d[34], d[35])
        callee, caller = other_number, user_number
    context = "null" if index % 4 else ('"International"' if d[36] & 1 else '"Domestic"')
    conference = f'"{(x >> 12) % 1_000_000_000:09d}"' if call_type in (4, 5) else "null"
    text = (
        f'{{"id":"{_uuid_text(d)}",'
        f'"callId":"{x % 10**10}_{(x >> 34) % 10**9}@61.221.{x >> 8 & 255}.{x & 255}",'
        f'"userId":{user.id},"userPrincipalName":{user.upn},"userDisplayName":{user.name},'
        f'"startDateTime":"{format_ticks(start)}",'
        f'"endDateTime":"{format_ticks(end)}",'
        f'"duration":{duration},"charge":{charge},'
        f'"callType":{_PSTN_CALL_TYPES_Q[call_type]},"currency":{_CURRENCIES[d[32] % 3]},'
        f'"calleeNumber":{callee},"usageCountryCode":{user.country},"tenantCountryCode":"US",'
        f'"connectionCharge":{connection_charge},"callerNumber":{caller},'
        f'"destinationContext":{context},"destinationName":{_DESTINATIONS[d[27] % 10]},'
        f'"conferenceId":{conference},"licenseCapability":{_LICENSES[d[37] % 5]},'
        f'"inventoryType":{_INVENTORY[d[38] % 4]},"operator":{_OPERATORS[d[39] % 5]},'
        f'"callDurationSource":"{"operator" if d[40] % 7 == 0 else "microsoft"}"'
    )
    if beta:
        dec, hx = _DEC, _HEX
        public4 = (
            "null"
            if index % 5 == 1
            else '"' + dec[d[43] % 200 + 20] + "." + dec[d[44]] + "." + dec[d[45]] + '.1"'
        )
        public6 = "null" if index % 3 == 2 else '"2001:db8:' + hx[d[47]] + ":" + hx[d[48]] + '::1"'
        local4 = "null" if index % 7 == 4 else '"192.168.' + dec[d[50]] + "." + dec[d[51]] + '"'
        local6 = "null" if index % 2 else '"fe80::' + hx[d[52]] + ":" + hx[d[54]] + '"'
        units = _admin_unit_lists(seed)[d[42] % 5][index % 3 if index < 40 else d[41] % 3]
        text += (
            f',"otherPartyCountryCode":{_COUNTRIES[d[27] % 10]},'
            f'"administrativeUnitInfos":{units},'
            f'"clientPublicIpV4Address":{public4},"clientPublicIpV6Address":{public6},'
            f'"clientLocalIpV4Address":{local4},"clientLocalIpV6Address":{local6}'
        )
    return text + _unknown_property(index, every) + "}"


def direct_routing_row(
    seed: int, ordinal: int, index: int, tick: int, beta: bool, every: int
) -> str:
    """JSON text of Direct Routing row `index` of day `ordinal`, starting `tick` into the day."""
    d = _digest(f"dr/{seed}/{ordinal}/{index}")
    users = _users(seed)
    user = users[index % 20] if index < 40 else users[d[16] % 20]
    start = ordinal * TICKS_PER_DAY + tick
    successful = index % 6 != 2 and d[17] % 9 != 0
    call_type = d[18] % 5
    inbound = call_type in (0, 4)
    x = _mix(seed, ordinal, index)
    if successful:
        duration = 1 + (d[19] << 8 | d[20]) % 3599
        code, phrase, sub_reason = _SUCCESS[d[21] % 3]
        end = f'"{format_ticks(start + duration * TICKS_PER_SECOND)}"'
        failure = _Q_SENTINEL
    else:
        duration = 0
        code, phrase, sub_reason = _FAILURE[d[21] % 7]
        end = _Q_SENTINEL
        failure = f'"{format_ticks(start + (d[22] % 30) * TICKS_PER_SECOND + 1_230_000)}"'
    user_number = f'"+1425555{(d[23] << 8 | d[24]) % 10000:04d}"'
    if index % 29 == 7:
        other_number = _NOT_E164[(index // 29) % 3]
    else:
        other_number = _phone(d[25], d[26], d[27], index % 11 == 3 or d[28] % 15 == 0)
    caller, callee = (other_number, user_number) if inbound else (user_number, other_number)
    correlation = _uuid_text(
        x.to_bytes(8, "little") + (x * 0xD6E8FEB86659FD93 & _MASK64).to_bytes(8, "little")
    )
    invite = start - (d[29] % 8 + 1) * TICKS_PER_SECOND - d[30] * 10_000
    text = (
        f'{{"id":"{_uuid_text(d)}","correlationId":"{correlation}",'
        f'"userId":{user.id},"userPrincipalName":{user.upn},"userDisplayName":{user.name},'
        f'"startDateTime":"{format_ticks(start)}","endDateTime":{end},'
        f'"inviteDateTime":"{format_ticks(invite)}","failureDateTime":{failure},'
        f'"duration":{duration},"callType":{_DR_CALL_TYPES_Q[call_type]},'
        f'"successfulCall":{"true" if successful else "false"},'
        f'"callerNumber":{caller},"calleeNumber":{callee},'
        f'"mediaPathLocation":{_LOCATIONS[d[31] % 6]},"signalingLocation":{_LOCATIONS[d[32] % 6]},'
        f'"finalSipCode":{code},"callEndSubReason":{sub_reason},"finalSipCodePhrase":{phrase},'
        f'"trunkFullyQualifiedDomainName":{_TRUNKS[d[33] % 3]},'
        f'"mediaBypassEnabled":{"true" if d[34] % 4 == 0 else "false"}'
    )
    if beta:
        other_country = "null" if index % 9 == 4 else _COUNTRIES[d[36] % 10]
        transferor = (
            f'"{_uuid_text(_digest(f"xfer/{seed}/{ordinal}/{index}"))}"'
            if call_type == 3
            else "null"
        )
        units = _admin_unit_lists(seed)[d[37] % 5][index % 3 if index < 40 else d[35] % 3]
        text += (
            f',"userCountryCode":{user.country},"otherPartyCountryCode":{other_country},'
            f'"transferorCorrelationId":{transferor},"administrativeUnitInfos":{units}'
        )
    return text + _unknown_property(index, every) + "}"


def sms_row(seed: int, ordinal: int, index: int, tick: int, beta: bool, every: int) -> str:
    """JSON text of SMS row `index` of day `ordinal`, sent `tick` ticks into the day.

    Beta only: `beta` is ignored (v1.0 does not serve the SMS log)."""
    d = _digest(f"sms/{seed}/{ordinal}/{index}")
    users = _users(seed)
    user = users[index % 20] if index < 40 else users[d[16] % 20]
    inbound = d[17] % 3 == 0
    # Rows whose index is 5 mod 13 repeat the smsId of the row before (smsId is not unique).
    x = _mix(seed, ordinal, index) ^ 0x5D5_5D5_5D5
    sms_id = _uuid_text(
        x.to_bytes(8, "little") + (x * 0xD6E8FEB86659FD93 & _MASK64).to_bytes(8, "little")
    )
    user_number = f'"+1425555{(d[18] << 8 | d[19]) % 10000:04d}"'
    other_number = _phone(d[20], d[21], d[22], index % 11 == 3 or d[23] % 15 == 0)
    if inbound:
        source, destination, charge = other_number, user_number, "0"
    else:
        source, destination, charge = user_number, other_number, _money(d[24] % 6, d[25], d[26])
    country = d[27] % 10
    context = "null" if index % 7 == 6 else ('"Domestic"' if country == 0 else '"International"')
    other_country = "null" if index % 9 == 4 else _COUNTRIES[country]
    units = 1 + (d[28] % 10 == 0) + (d[28] % 30 == 0)
    admin_units = _admin_unit_lists(seed)[d[29] % 5][index % 3 if index < 40 else d[30] % 3]
    text = (
        f'{{"id":"{_uuid_text(d)}","smsId":"{sms_id}",'
        f'"userId":{user.id},"userPrincipalName":{user.upn},"userDisplayName":{user.name},'
        f'"userCountryCode":{user.country},"tenantCountryCode":"US",'
        f'"sourceNumber":{source},"destinationNumber":{destination},'
        f'"sentDateTime":"{format_ticks(ordinal * TICKS_PER_DAY + tick)}",'
        f'"callCharge":{charge},"currency":{_CURRENCIES[d[31] % 3]},'
        f'"smsType":"{"sms_in" if inbound else "sms_out"}",'
        f'"destinationContext":{context},"destinationName":{_DESTINATIONS[country]},'
        f'"otherPartyCountryCode":{other_country},'
        f'"licenseCapability":{_SMS_LICENSES[d[32] % 4]},"smsUnits":{units},'
        f'"administrativeUnitInfos":{admin_units}'
    )
    return text + _unknown_property(index, every) + "}"


def pstn_blocked_users_row(
    seed: int, ordinal: int, index: int, tick: int, beta: bool, every: int
) -> str:
    """JSON text of PSTN blocked-users row `index` of day `ordinal`, `tick` ticks into the
    day. No `id`: `remediationId` (the block or unblock action) is the key.

    Beta only: `beta` is ignored (v1.0 does not serve the blocked-users log)."""
    d = _digest(f"pbu/{seed}/{ordinal}/{index}")
    users = _users(seed)
    user = users[index % 20] if index < 40 else users[d[16] % 20]
    if index % 23 == 11:
        mode, reason = "unknownFutureValue", "null"
    elif d[17] % 3:
        mode, reason = "blocked", _BLOCK_REASONS[d[18] % 4]
    else:
        mode, reason = "unblocked", _UNBLOCK_REASONS[d[18] % 3]
    if index % 10 == 7:
        reason = "null"
    number = (
        "null"
        if index % 17 == 9
        else f'"{_COUNTRY_PREFIXES[d[19] % 5]}{(d[20] << 8 | d[21]) % 10000:04d}"'
    )
    text = (
        f'{{"userId":{user.id},"userPrincipalName":{user.upn},"userDisplayName":{user.name},'
        f'"blockDateTime":"{format_ticks(ordinal * TICKS_PER_DAY + tick)}",'
        f'"userTelephoneNumber":{number},"userBlockMode":"{mode}","blockReason":{reason},'
        f'"remediationId":"{_uuid_text(d)}"'
    )
    return text + _unknown_property(index, every) + "}"


_BUILDERS: dict[Kind, Callable[[int, int, int, int, bool, int], str]] = {
    Kind.PSTN: pstn_row,
    Kind.DIRECT_ROUTING: direct_routing_row,
    Kind.SMS: sms_row,
    Kind.PSTN_BLOCKED_USERS: pstn_blocked_users_row,
}


def row_key(kind: Kind, seed: int, ordinal: int, index: int) -> str:
    """The key (`kind.key`: `id`, or `remediationId`) of a generated row, without building
    the row."""
    return _uuid_text(_digest(f"{_PREFIX[kind]}/{seed}/{ordinal}/{index}"))


def dumps(value: Any) -> str:
    """Compact JSON the way the emulator writes it (UTF-8 kept, no spaces)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- days ------------------------------------------------------------------------------


def day_ticks(seed: int, kind: Kind, ordinal: int, count: int) -> list[int]:
    """Ticks within the day (of the kind's time column) of rows 0..count-1, in index order,
    quirks first."""
    rng = random.Random(f"{seed}/{kind.value}/{ordinal}")
    quirks = [h * 3600 * TICKS_PER_SECOND for h in range(24)] + [TICKS_PER_DAY - 1]
    tie = rng.randrange(TICKS_PER_DAY // 10_000) * 10_000
    quirks += [tie, tie]
    ticks = quirks[:count]
    for _ in range(len(ticks), count):
        tick = rng.randrange(TICKS_PER_DAY)
        shape = rng.random()
        if shape < 0.05:
            tick -= tick % TICKS_PER_SECOND
        elif shape < 0.20:
            tick -= tick % 10_000
        ticks.append(tick)
    return ticks


@dataclass(frozen=True)
class DataParams:
    """What the data of one kind depends on, read from the config per request."""

    seed: int
    rows_per_day: int
    unknown_property_every: int


@dataclass(frozen=True)
class _Day:
    ticks: array[int]  # ticks within the day, ascending (ties broken by key)
    refs: array[int]  # per position: a generated row's index, or -1-k for late row k
    late: tuple[dict[str, Any], ...]


class Dataset:
    """Generated rows plus late rows, served in (time, key) order. Thread-safe."""

    def __init__(self, cache_days: int = 1024, cache_rows: int = 0) -> None:
        self._lock = threading.Lock()
        self._late: dict[tuple[Kind, int], list[dict[str, Any]]] = {}
        self._days: OrderedDict[tuple[Any, ...], _Day] = OrderedDict()
        self._cache_days = cache_days
        # Texts of served slices, so a benchmark's emulator spends its CPU serving pages,
        # not generating them again (about 7 µs a row) on the archiver's cores.
        self._texts: OrderedDict[tuple[Any, ...], list[str]] = OrderedDict()
        self._cache_rows = cache_rows
        self._cached_rows = 0

    def add_rows(self, kind: Kind, rows: list[dict[str, Any]]) -> None:
        """Serve `rows` (Graph's JSON form, each with the kind's key and time column, e.g.
        `id` and `startDateTime`) from now on."""
        key, time = kind.key, kind.time_column
        parsed = []
        for row in rows:
            if not isinstance(row.get(key), str) or not isinstance(row.get(time), str):
                raise ValueError(f"a late row needs string {key!r} and {time!r}")
            copy = json.loads(dumps(row))
            parsed.append((parse_datetime(copy[time]), copy))
        with self._lock:
            for ticks, copy in parsed:
                self._late.setdefault((kind, ticks // TICKS_PER_DAY), []).append(copy)

    def _day_size(self, kind: Kind, params: DataParams, ordinal: int) -> int:
        with self._lock:
            return params.rows_per_day + len(self._late.get((kind, ordinal), ()))

    def _day(self, kind: Kind, params: DataParams, ordinal: int) -> _Day:
        with self._lock:
            late = tuple(self._late.get((kind, ordinal), ()))
            key = (params.seed, kind, ordinal, params.rows_per_day, len(late))
            day = self._days.get(key)
            if day is not None:
                self._days.move_to_end(key)
                return day
        day = self._build_day(kind, params, ordinal, late)
        with self._lock:
            self._days[key] = day
            while len(self._days) > self._cache_days:
                self._days.popitem(last=False)
        return day

    @staticmethod
    def _build_day(
        kind: Kind, params: DataParams, ordinal: int, late: tuple[dict[str, Any], ...]
    ) -> _Day:
        ticks = day_ticks(params.seed, kind, ordinal, params.rows_per_day)
        entries: list[tuple[int, int]] = list(zip(ticks, range(len(ticks)), strict=True))
        base = ordinal * TICKS_PER_DAY
        for k, row in enumerate(late):
            entries.append((parse_datetime(row[kind.time_column]) - base, -1 - k))
        entries.sort(key=lambda e: e[0])

        def ident(entry: tuple[int, int]) -> str:
            ref = entry[1]
            if ref >= 0:
                return row_key(kind, params.seed, ordinal, ref)
            return str(late[-1 - ref][kind.key])

        i = 0
        while i < len(entries):  # break ties in time by key
            j = i + 1
            while j < len(entries) and entries[j][0] == entries[i][0]:
                j += 1
            if j - i > 1:
                entries[i:j] = sorted(entries[i:j], key=ident)
            i = j
        return _Day(
            ticks=array("q", (e[0] for e in entries)),
            refs=array("i", (e[1] for e in entries)),
            late=late,
        )

    def select(
        self,
        kind: Kind,
        params: DataParams,
        beta: bool,
        low: int,
        high: int,
        skip: int = 0,
        limit: int | None = None,
    ) -> tuple[list[str], int]:
        """JSON texts of the rows whose time lies in [low, high) ticks, from position `skip`,
        at most `limit` of them; and how many rows the whole range holds."""
        total = 0
        picked: list[tuple[int, _Day, int, int]] = []
        end = None if limit is None else skip + limit
        if high > low:
            for ordinal in range(low // TICKS_PER_DAY, (high - 1) // TICKS_PER_DAY + 1):
                base = ordinal * TICKS_PER_DAY
                day: _Day | None = None
                if low <= base and base + TICKS_PER_DAY <= high:  # whole day: count, don't build
                    a, b = 0, self._day_size(kind, params, ordinal)
                else:
                    day = self._day(kind, params, ordinal)
                    a = bisect.bisect_left(day.ticks, low - base) if low > base else 0
                    b = (
                        bisect.bisect_left(day.ticks, high - base)
                        if high < base + TICKS_PER_DAY
                        else len(day.ticks)
                    )
                first = max(skip, total)
                last = total + (b - a) if end is None else min(end, total + (b - a))
                if first < last:
                    if day is None:
                        day = self._day(kind, params, ordinal)
                    picked.append((ordinal, day, a + first - total, a + last - total))
                total += b - a
        rows: list[str] = []
        for ordinal, day, i, j in picked:
            rows.extend(self._slice(kind, params, beta, ordinal, day, i, j))
        return rows, total

    def _slice(
        self, kind: Kind, params: DataParams, beta: bool, ordinal: int, day: _Day, i: int, j: int
    ) -> list[str]:
        """JSON texts of positions [i, j) of one day, from the cache when it holds them."""
        key = (params, kind, beta, ordinal, len(day.late), i, j)
        if self._cache_rows:
            with self._lock:
                cached = self._texts.get(key)
                if cached is not None:
                    self._texts.move_to_end(key)
                    return cached
        build = _BUILDERS[kind]
        hidden = frozenset() if beta else BETA_ONLY[kind]
        seed, every = params.seed, params.unknown_property_every
        ticks, refs = day.ticks, day.refs
        texts: list[str] = []
        for pos in range(i, j):
            ref = refs[pos]
            if ref >= 0:
                texts.append(build(seed, ordinal, ref, ticks[pos], beta, every))
            else:
                late_row = day.late[-1 - ref]
                texts.append(dumps({k: v for k, v in late_row.items() if k not in hidden}))
        if self._cache_rows and len(texts) <= self._cache_rows:
            with self._lock:
                if key not in self._texts:
                    self._texts[key] = texts
                    self._cached_rows += len(texts)
                while self._cached_rows > self._cache_rows:
                    _, old = self._texts.popitem(last=False)
                    self._cached_rows -= len(old)
        return texts
