"""The declared schemas and the conversion of Graph rows into typed record batches."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from archiver.errors import WindowError
from archiver.kinds import Kind
from archiver.schema import _careful, _fast, _Unclean, rows_to_batch, schema_for

Convert = Callable[[Kind, Sequence[dict[str, Any]]], pa.RecordBatch]
# Every conversion test runs through the public function and through each path on its own.
PATHS: list[Convert] = [rows_to_batch, _fast, _careful]
PATH_IDS = ["rows_to_batch", "fast", "careful"]

UTC = dt.UTC
TS = pa.timestamp("us", tz="UTC")
MONEY = pa.decimal128(38, 10)
UNITS = pa.list_(pa.struct([("id", pa.string())]))


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> dt.datetime:
    """A UTC datetime."""
    return dt.datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def one(convert: Convert, kind: Kind, **properties: Any) -> dict[str, Any]:
    """The single converted row of a page holding one row with `properties` (id added)."""
    row = {"id": "row-1", **properties}
    batch = convert(kind, [row])
    assert schema_for(kind) == batch.schema
    converted: dict[str, Any] = batch.to_pylist()[0]
    return converted


def realistic_rows(kind: Kind, count: int, seed: int = 7) -> list[dict[str, Any]]:
    """`count` rows shaped like Graph's beta answer, with the odd sentinel and unknown property."""
    rng = random.Random(seed)
    base = dt.datetime(2024, 3, 1, tzinfo=UTC)

    def uid() -> str:
        parts = [f"{rng.getrandbits(4 * n):0{n}x}" for n in (8, 4, 4, 4, 12)]
        return "-".join(parts)

    def stamp(at: dt.datetime) -> str:
        return at.strftime("%Y-%m-%dT%H:%M:%S") + f".{rng.randrange(10**7):07d}Z"

    rows = []
    for i in range(count):
        start = base + dt.timedelta(seconds=rng.randrange(86400))
        seconds = rng.randrange(1, 3600)
        end = start + dt.timedelta(seconds=seconds)
        units = [{"id": uid()} for _ in range(rng.choice((0, 1, 1, 2)))]
        common = {
            "id": uid(),
            "userId": uid(),
            "userPrincipalName": f"user{i}@contoso.com",
            "userDisplayName": rng.choice(["Richard Malk", "Zoë Ångström", "李小龙"]),
            "startDateTime": stamp(start),
            "endDateTime": stamp(end),
            "duration": seconds,
            "calleeNumber": f"+1{rng.randrange(10**9):09d}",
            "callerNumber": f"+4420{rng.randrange(10**4):04d}***",
            "otherPartyCountryCode": "US",
            "administrativeUnitInfos": units,
        }
        if kind is Kind.PSTN:
            row = {
                **common,
                "callId": f"{rng.randrange(10**10)}_{rng.randrange(10**9)}@61.221.3.176",
                "charge": round(rng.uniform(0, 5), 4),
                "callType": rng.choice(["user_in", "user_out", "conf_in"]),
                "currency": "USD",
                "usageCountryCode": "US",
                "tenantCountryCode": "US",
                "connectionCharge": rng.choice([0.0, 0.0215, 0.1, 1]),
                "destinationContext": None,
                "destinationName": "United States",
                "conferenceId": None,
                "licenseCapability": "MCOPSTNU",
                "inventoryType": "Subscriber",
                "operator": "Microsoft",
                "callDurationSource": "microsoft",
                "clientPublicIpV4Address": "99.76.33.16",
                "clientPublicIpV6Address": "1234:fd2:5621:1:89::4500",
                "clientLocalIpV4Address": "192.168.1.165",
                "clientLocalIpV6Address": "2600:1700:1dca:8110::40",
            }
            if i % 97 == 0:
                row["endDateTime"] = "0001-01-01T00:00:00Z"
        elif kind is Kind.SMS:
            row = {
                key: common[key] for key in ("id", "userId", "userPrincipalName", "userDisplayName")
            } | {
                "smsId": f"sms-{i // 3}",  # not unique
                "sentDateTime": stamp(start),
                "smsType": rng.choice(["outbound", "inbound"]),
                "smsUnits": rng.choice([1, 1, 2, 3]),
                "callCharge": rng.choice([0.0, 0.0075, 0.015, 1]),
                "currency": "USD",
                "sourceNumber": "+14255550100",
                "destinationNumber": f"+4420{rng.randrange(10**4):04d}***",
                "destinationContext": rng.choice(["International", "Domestic", None]),
                "destinationName": "United Kingdom",
                "licenseCapability": "MCOPSTNU",
                "otherPartyCountryCode": "GB",
                "tenantCountryCode": "US",
                "userCountryCode": "US",
                "administrativeUnitInfos": units,
            }
        elif kind is Kind.PSTN_BLOCKED_USERS:
            row = {  # no `id`: remediationId is the key
                "remediationId": uid(),
                "blockDateTime": stamp(start),
                "blockReason": rng.choice(["Fraud detected", "Admin action", None]),
                "userBlockMode": rng.choice(["blocked", "unblocked", "unknownFutureValue"]),
                "userId": common["userId"],
                "userPrincipalName": common["userPrincipalName"],
                "userDisplayName": common["userDisplayName"],
                "userTelephoneNumber": f"+1425555{rng.randrange(10**4):04d}",
            }
        else:
            ok = rng.random() < 0.8
            row = {
                **common,
                "correlationId": uid(),
                "endDateTime": stamp(end) if ok else "0001-01-01T00:00:00Z",
                "inviteDateTime": stamp(start - dt.timedelta(seconds=3)),
                "failureDateTime": "0001-01-01T00:00:00Z" if ok else stamp(start),
                "callType": rng.choice(["ByotIn", "ByotOut"]),
                "successfulCall": ok,
                "mediaPathLocation": "USWE",
                "signalingLocation": "EUNO",
                "finalSipCode": 0 if ok else 487,
                "callEndSubReason": 540000 if ok else 0,
                "finalSipCodePhrase": "BYE" if ok else "Request Terminated",
                "trunkFullyQualifiedDomainName": "tll-audiocodes01.adatum.biz",
                "mediaBypassEnabled": rng.random() < 0.5,
                "userCountryCode": "US",
                "transferorCorrelationId": uid(),
            }
        if i % 50 == 0:
            row["futureProperty"] = {"since": "beta", "n": i}
        if i % 200 == 0:
            row["@odata.type"] = "#microsoft.graph.callRecords.unknownRow"
        rows.append(row)
    return rows


# --- declared schemas -------------------------------------------------------------------


def test_pstn_schema_is_declared_exactly() -> None:
    """The PSTN columns, their order (v1.0, beta, additionalData), types and nullability."""
    s = pa.string()
    expected = [
        ("id", s, False), ("callId", s, True), ("userId", s, True),
        ("userPrincipalName", s, True), ("userDisplayName", s, True),
        ("startDateTime", TS, True), ("endDateTime", TS, True), ("duration", pa.int32(), True),
        ("charge", MONEY, True), ("connectionCharge", MONEY, True), ("callType", s, True),
        ("currency", s, True), ("calleeNumber", s, True), ("callerNumber", s, True),
        ("usageCountryCode", s, True), ("tenantCountryCode", s, True),
        ("destinationContext", s, True), ("destinationName", s, True),
        ("conferenceId", s, True), ("licenseCapability", s, True), ("inventoryType", s, True),
        ("operator", s, True), ("callDurationSource", s, True),
        ("otherPartyCountryCode", s, True), ("administrativeUnitInfos", UNITS, True),
        ("clientPublicIpV4Address", s, True), ("clientPublicIpV6Address", s, True),
        ("clientLocalIpV4Address", s, True), ("clientLocalIpV6Address", s, True),
        ("additionalData", s, True),
    ]  # fmt: skip
    actual = [(f.name, f.type, f.nullable) for f in schema_for(Kind.PSTN)]
    assert expected == actual


def test_direct_routing_schema_is_declared_exactly() -> None:
    """The Direct Routing columns, their order (v1.0, beta, additionalData), types, nullability."""
    s, i32, b = pa.string(), pa.int32(), pa.bool_()
    expected = [
        ("id", s, False), ("correlationId", s, True), ("userId", s, True),
        ("userPrincipalName", s, True), ("userDisplayName", s, True),
        ("startDateTime", TS, True), ("endDateTime", TS, True), ("inviteDateTime", TS, True),
        ("failureDateTime", TS, True), ("duration", i32, True), ("callType", s, True),
        ("successfulCall", b, True), ("callerNumber", s, True), ("calleeNumber", s, True),
        ("mediaPathLocation", s, True), ("signalingLocation", s, True),
        ("finalSipCode", i32, True), ("callEndSubReason", i32, True),
        ("finalSipCodePhrase", s, True), ("trunkFullyQualifiedDomainName", s, True),
        ("mediaBypassEnabled", b, True), ("userCountryCode", s, True),
        ("otherPartyCountryCode", s, True), ("transferorCorrelationId", s, True),
        ("administrativeUnitInfos", UNITS, True), ("additionalData", s, True),
    ]  # fmt: skip
    actual = [(f.name, f.type, f.nullable) for f in schema_for(Kind.DIRECT_ROUTING)]
    assert expected == actual


def test_units_element_is_a_struct_of_one_string_id() -> None:
    """administrativeUnitInfos is exactly list<struct<id: string>>, as the contract spells it."""
    expected = pa.list_(pa.struct([("id", pa.string())]))
    assert expected == schema_for(Kind.PSTN).field("administrativeUnitInfos").type


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("convert", PATHS, ids=PATH_IDS)
def test_empty_page_gives_empty_batch_with_declared_schema(kind: Kind, convert: Convert) -> None:
    """No rows give a batch of no rows that still carries the declared schema."""
    batch = convert(kind, [])
    expected_rows = 0
    assert schema_for(kind) == batch.schema
    assert expected_rows == batch.num_rows


# --- timestamps -------------------------------------------------------------------------

TIMESTAMPS = [
    ("2019-11-01T00:00:08Z", utc(2019, 11, 1, 0, 0, 8)),
    ("2019-11-01T00:00:08.105Z", utc(2019, 11, 1, 0, 0, 8, 105000)),
    ("2019-11-01T00:00:08.2589935Z", utc(2019, 11, 1, 0, 0, 8, 258993)),
    ("2019-11-01T00:00:08.5Z", utc(2019, 11, 1, 0, 0, 8, 500000)),
    ("2019-11-01T23:59:59.9999999Z", utc(2019, 11, 1, 23, 59, 59, 999999)),
    ("2019-11-01T23:59:59.9999990Z", utc(2019, 11, 1, 23, 59, 59, 999999)),
    ("2019-11-01T01:30:00.1234567+01:00", utc(2019, 11, 1, 0, 30, 0, 123456)),
    ("2019-11-01T00:00:00-05:30", utc(2019, 11, 1, 5, 30)),
    ("2019-11-01T00:30:00+01:00", utc(2019, 10, 31, 23, 30)),
    ("2024-02-29T12:00:00Z", utc(2024, 2, 29, 12)),
    # before 1970 the digits beyond microseconds are still dropped (floor, not toward 1970)
    ("1969-12-31T23:59:59.9999999Z", utc(1969, 12, 31, 23, 59, 59, 999999)),
    ("1950-06-01T12:00:00.0000005Z", utc(1950, 6, 1, 12)),
    ("1970-01-01T00:00:00.0000001+00:01", utc(1969, 12, 31, 23, 59)),
    ("0001-01-01T00:00:00Z", None),
    ("0001-01-01T00:00:00.0000000Z", None),
    ("0001-01-01T00:00:00", None),
    (None, None),
]


@pytest.mark.parametrize(("text", "expected"), TIMESTAMPS)
@pytest.mark.parametrize("convert", PATHS, ids=PATH_IDS)
def test_timestamps_are_truncated_to_microseconds_in_utc(
    convert: Convert, text: str | None, expected: dt.datetime | None
) -> None:
    """Timestamps with 0-7 fractional digits and any offset become UTC microseconds, truncated."""
    actual = one(convert, Kind.DIRECT_ROUTING, startDateTime=text, failureDateTime=text)
    assert (expected, expected) == (actual["startDateTime"], actual["failureDateTime"])
    assert actual["additionalData"] is None


@pytest.mark.parametrize("convert", PATHS, ids=PATH_IDS)
def test_last_100ns_of_a_day_stay_on_that_day(convert: Convert) -> None:
    """A start in the last 100 ns of a day is never rounded into the next day."""
    actual = one(convert, Kind.PSTN, startDateTime="2019-12-31T23:59:59.9999999Z")
    expected = (dt.date(2019, 12, 31), 999999)
    assert expected == (actual["startDateTime"].date(), actual["startDateTime"].microsecond)


@pytest.mark.parametrize("convert", PATHS, ids=PATH_IDS)
def test_missing_timestamp_is_null(convert: Convert) -> None:
    """A timestamp property that is absent is null, and nothing is added to additionalData."""
    actual = one(convert, Kind.DIRECT_ROUTING, startDateTime="2019-11-01T00:00:00Z")
    expected = (None, None, None, None)
    got = ("endDateTime", "inviteDateTime", "failureDateTime", "additionalData")
    assert expected == tuple(actual[name] for name in got)


ODD_TIMESTAMPS = [
    "2019-11-01T00:00:08",  # no zone: not guessed
    "2019-11-01",
    "2019-11-01 00:00:08Z",
    "2019-11-01T00:00:08z",
    "2019-11-01T00:00:08+0100",
    "2019-11-01T00:00:08+01",
    "2019-11-01T00Z",
    "2019-11-01T00:00Z",
    "2019-11-01T00:00:08.123+0100",
    "2019-11-01T00:00:08.1234567+01",
    "2019-11-01T00:00:08.Z",
    "2019-11-01T00:00:08.12345678Z",
    "2019-02-30T00:00:00Z",
    "2019-11-01T24:00:00Z",
    "2019-11-01T23:59:60Z",
    "2019-11-01T00:00:00+24:00",
    "2019-11-01T00:00:00+05:60",
    "0000-01-01T00:00:00Z",
    "1500-01-01T00:00:00.1234567Z",  # valid, but outside Arrow's nanosecond range
    "9999-12-31T23:59:59.9999999-01:00",
    "2019-11-01T00:00:08Z\n",
    "\uff12\uff10\uff11\uff19-11-01T00:00:08Z",  # full-width digits
    "",
    "yesterday",
]


@pytest.mark.parametrize("text", ODD_TIMESTAMPS)
def test_fast_path_never_disagrees_on_odd_timestamps(text: str) -> None:
    """For any timestamp text the fast path either hands over or agrees with the careful path."""
    rows = [{"id": "a", "startDateTime": text}]
    careful = _careful(Kind.PSTN, rows)
    try:
        fast = _fast(Kind.PSTN, rows)
    except (_Unclean, pa.ArrowException):  # handing the page over is always allowed
        return
    assert careful.to_pylist() == fast.to_pylist()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1500-01-01T00:00:00.1234567Z", utc(1500, 1, 1, 0, 0, 0, 123456)),
        ("2300-06-01T12:00:00+02:00", utc(2300, 6, 1, 10)),
    ],
)
def test_timestamps_outside_nanosecond_range_still_convert(
    text: str, expected: dt.datetime
) -> None:
    """A valid time outside Arrow's nanosecond range is still converted (by the careful path)."""
    assert expected == one(rows_to_batch, Kind.PSTN, startDateTime=text)["startDateTime"]


# --- money ------------------------------------------------------------------------------

MONEY_VALUES = [
    (0.1, Decimal("0.1")),
    (0.0215, Decimal("0.0215")),
    (1.5, Decimal("1.5")),
    (0, Decimal(0)),
    (0.0, Decimal(0)),
    (12.3456789, Decimal("12.3456789")),
    (1234567.891, Decimal("1234567.891")),  # Arrow's float->decimal cast gets this wrong
    (99999999999.99, Decimal("99999999999.99")),
    (-2.75, Decimal("-2.75")),
    (-0.0, Decimal(0)),
    (5e-10, Decimal("0.0000000005")),
    (None, None),
]


@pytest.mark.parametrize(("value", "expected"), MONEY_VALUES)
@pytest.mark.parametrize("convert", PATHS, ids=PATH_IDS)
def test_money_is_the_decimal_as_written(
    convert: Convert, value: float | None, expected: Decimal | None
) -> None:
    """Money given as a JSON number becomes exactly the decimal that was written."""
    actual = one(convert, Kind.PSTN, charge=value, connectionCharge=value)
    assert (expected, expected) == (actual["charge"], actual["connectionCharge"])
    assert actual["additionalData"] is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.0215", Decimal("0.0215")), ("12.3456789", Decimal("12.3456789")), ("2E+1", Decimal(20))],
)
def test_money_as_numeric_string_is_exact(text: str, expected: Decimal) -> None:
    """Money given as a numeric string (OData's IEEE754Compatible form) is converted exactly."""
    actual = one(rows_to_batch, Kind.PSTN, charge=text)
    assert (expected, None) == (actual["charge"], actual["additionalData"])


@pytest.mark.parametrize("convert", [rows_to_batch, _careful], ids=["rows_to_batch", "careful"])
def test_money_integer_beyond_float_precision_is_exact(convert: Convert) -> None:
    """An integer amount too large for float64 to hold exactly still becomes the exact decimal."""
    expected = (Decimal(2**60), None)
    actual = one(convert, Kind.PSTN, charge=2**60)
    assert expected == (actual["charge"], actual["additionalData"])


def test_money_floats_agree_between_paths() -> None:
    """For floats with up to 15 significant digits, or up to 10 decimals, both paths are exact."""
    rng = random.Random(11)
    values = []
    for _ in range(2000):
        digits = rng.randrange(1, 16)
        scale = rng.randrange(0, min(10, digits) + 1)
        values.append(float(Decimal(rng.randrange(10**digits)).scaleb(-scale)))
    for _ in range(2000):  # any magnitude up to 10**17, at most 10 decimals
        values.append(round(rng.uniform(-1, 1) * 10 ** rng.randrange(18), rng.randrange(11)))
    rows = [{"id": str(i), "charge": v} for i, v in enumerate(values)]
    expected = [Decimal(repr(v)) for v in values]
    assert expected == _fast(Kind.PSTN, rows).column("charge").to_pylist()
    assert expected == _careful(Kind.PSTN, rows).column("charge").to_pylist()


# --- administrativeUnitInfos, text, unknown properties ----------------------------------


@pytest.mark.parametrize(
    "units",
    [[], [{"id": "639b616c"}], [{"id": "639b616c"}, {"id": "cc6ea167"}], None],
    ids=["empty", "one", "two", "null"],
)
@pytest.mark.parametrize("convert", PATHS, ids=PATH_IDS)
def test_administrative_units_keep_every_element(
    convert: Convert, units: list[dict[str, str]] | None
) -> None:
    """administrativeUnitInfos keeps 0, 1 or 2 elements as given, and null as null."""
    actual = one(convert, Kind.DIRECT_ROUTING, administrativeUnitInfos=units)
    assert (units, None) == (actual["administrativeUnitInfos"], actual["additionalData"])


@pytest.mark.parametrize("convert", PATHS, ids=PATH_IDS)
def test_text_is_kept_as_given(convert: Convert) -> None:
    """Non-ASCII names and masked numbers are stored exactly as Graph sent them."""
    actual = one(
        convert, Kind.PSTN, userDisplayName="Zoë 李 Ångström 🙂", callerNumber="+1234567***"
    )
    expected = ("Zoë 李 Ångström 🙂", "+1234567***")
    assert expected == (actual["userDisplayName"], actual["callerNumber"])


@pytest.mark.parametrize("convert", PATHS, ids=PATH_IDS)
def test_unknown_properties_go_to_additional_data_as_json(convert: Convert) -> None:
    """Properties the schema does not know are kept as compact, key-sorted JSON text."""
    actual = one(
        convert,
        Kind.PSTN,
        zNew="Zoë",
        aCount=3,
        mPrice=1.5,
        nested={"b": [1, None, True], "a": {"é": "ü"}},
        additionalData="a property of that name is kept too",
    )
    expected = (
        '{"aCount":3,"additionalData":"a property of that name is kept too","mPrice":1.5,'
        '"nested":{"a":{"é":"ü"},"b":[1,null,true]},"zNew":"Zoë"}'
    )
    assert expected == actual["additionalData"]


@pytest.mark.parametrize("convert", PATHS, ids=PATH_IDS)
def test_additional_data_is_null_only_for_rows_without_unknowns(convert: Convert) -> None:
    """Each row gets its own additionalData: null when it has no unknown property."""
    rows: list[dict[str, Any]] = [{"id": "a"}, {"id": "b", "x": 1}, {"id": "c", "callType": None}]
    actual = convert(Kind.PSTN, rows).column("additionalData").to_pylist()
    expected = [None, '{"x":1}', None]
    assert expected == actual


@pytest.mark.parametrize("convert", PATHS, ids=PATH_IDS)
def test_v1_row_without_beta_properties(convert: Convert) -> None:
    """A v1.0-shaped row converts with nulls in the beta columns and nothing in additionalData."""
    row = {
        "id": "9c4984c7",
        "callId": "1835317186_112562680@61.221.3.176",
        "startDateTime": "2019-11-01T00:00:08.2589935Z",
        "endDateTime": "2019-11-01T00:03:47.2589935Z",
        "duration": 219,
        "charge": 0.0,
        "connectionCharge": 0.0,
        "callType": "user_in",
        "callDurationSource": "microsoft",
    }
    actual = convert(Kind.PSTN, [row]).to_pylist()[0]
    beta = [
        "otherPartyCountryCode", "administrativeUnitInfos", "clientPublicIpV4Address",
        "clientPublicIpV6Address", "clientLocalIpV4Address", "clientLocalIpV6Address",
        "additionalData",
    ]  # fmt: skip
    assert [None] * len(beta) == [actual[name] for name in beta]
    assert (utc(2019, 11, 1, 0, 3, 47, 258993), 219, Decimal(0)) == (
        actual["endDateTime"],
        actual["duration"],
        actual["charge"],
    )


# --- values that do not convert ---------------------------------------------------------

BAD_VALUES = [
    (Kind.PSTN, "duration", "abc"),
    (Kind.PSTN, "duration", 5.5),
    (Kind.PSTN, "duration", 5.0),
    (Kind.PSTN, "duration", True),
    (Kind.PSTN, "duration", 2**31),
    (Kind.PSTN, "duration", 2**70),
    (Kind.DIRECT_ROUTING, "callEndSubReason", -(2**31) - 1),
    (Kind.PSTN, "callType", {"x": 1}),
    (Kind.PSTN, "callerNumber", 1234567),
    (Kind.PSTN, "startDateTime", "yesterday"),
    (Kind.PSTN, "startDateTime", "2019-11-01T00:00:08"),
    (Kind.PSTN, "startDateTime", 1572566408),
    (Kind.PSTN, "startDateTime", "9999-12-31T23:59:59-01:00"),  # year 10000 in UTC
    (Kind.PSTN, "charge", "ten"),
    (Kind.PSTN, "charge", True),
    (Kind.PSTN, "charge", float("nan")),
    (Kind.PSTN, "charge", 0.30000000000000004),  # more decimals than the column holds
    (Kind.PSTN, "charge", 1e30),  # more digits than decimal(38, 10) holds
    (Kind.PSTN, "connectionCharge", [1]),
    (Kind.DIRECT_ROUTING, "successfulCall", "yes"),
    (Kind.DIRECT_ROUTING, "mediaBypassEnabled", 1),
    (Kind.DIRECT_ROUTING, "administrativeUnitInfos", [{"id": "x", "name": "y"}]),
    (Kind.DIRECT_ROUTING, "administrativeUnitInfos", [{"name": "y"}]),
    (Kind.DIRECT_ROUTING, "administrativeUnitInfos", [{"id": 5}]),
    (Kind.DIRECT_ROUTING, "administrativeUnitInfos", ["639b616c"]),
    (Kind.DIRECT_ROUTING, "administrativeUnitInfos", {"id": "x"}),
]


@pytest.mark.parametrize(("kind", "name", "value"), BAD_VALUES)
@pytest.mark.parametrize("convert", [rows_to_batch, _careful], ids=["rows_to_batch", "careful"])
def test_value_that_does_not_convert_is_nulled_and_kept(
    convert: Convert, kind: Kind, name: str, value: Any
) -> None:
    """A known property whose value does not fit its type is null and kept in additionalData."""
    actual = one(convert, kind, **{name: value}, extra="e")
    expected = json.dumps({name: value, "extra": "e"}, ensure_ascii=False, sort_keys=True)
    expected = json.dumps(json.loads(expected), separators=(",", ":"), ensure_ascii=False)
    assert (None, expected) == (actual[name], actual["additionalData"])


@pytest.mark.parametrize(("kind", "name", "value"), BAD_VALUES)
def test_fast_path_hands_bad_values_over(kind: Kind, name: str, value: Any) -> None:
    """The fast path never converts a value the careful path would refuse."""
    with pytest.raises((_Unclean, pa.ArrowException)):
        _fast(kind, [{"id": "a", name: value}])


def test_one_bad_value_leaves_the_other_rows_intact() -> None:
    """A page with one bad value converts every other row exactly as a clean page would."""
    rows = realistic_rows(Kind.DIRECT_ROUTING, 50)
    dirty = [dict(r) for r in rows]
    dirty[10]["duration"] = "abc"
    expected = _fast(Kind.DIRECT_ROUTING, rows).to_pylist()
    actual = rows_to_batch(Kind.DIRECT_ROUTING, dirty).to_pylist()
    assert expected[:10] + expected[11:] == actual[:10] + actual[11:]
    expected_10 = (None, '{"duration":"abc"}')
    assert expected_10 == (actual[10]["duration"], actual[10]["additionalData"])


# --- rows that cannot be archived -------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"callId": "c"}, "has no 'id' property"),
        ({"id": None}, "has 'id' None: expected a non-empty string"),
        ({"id": 42}, "has 'id' 42: expected a non-empty string"),
        ({"id": ""}, "has 'id' '': expected a non-empty string"),
        (["id", "x"], "is not a JSON object but list"),
    ],
    ids=["missing", "null", "number", "empty", "not-an-object"],
)
def test_row_without_id_fails_the_window(row: Any, words: str) -> None:
    """A row without an id string raises WindowError naming the kind, the row and the problem."""
    rows = [{"id": "fine"}, row]
    with pytest.raises(WindowError) as caught:
        rows_to_batch(Kind.PSTN, rows)
    assert f"pstn row 1 {words}" == str(caught.value)[: len(f"pstn row 1 {words}")]


# --- both paths on realistic pages ------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_fast_and_careful_paths_agree_on_realistic_pages(kind: Kind) -> None:
    """On clean realistic pages the fast path succeeds and gives exactly the careful result."""
    rows = realistic_rows(kind, 1000)
    fast = _fast(kind, rows)
    careful = _careful(kind, rows)
    assert careful.schema == fast.schema
    assert careful.to_pylist() == fast.to_pylist()
    assert careful.equals(fast)


@pytest.mark.parametrize("kind", list(Kind))
def test_realistic_page_round_trips_every_property(kind: Kind) -> None:
    """Every property of a realistic page is either in its column or in additionalData."""
    rows = realistic_rows(kind, 300)
    names = set(schema_for(kind).names)
    for row, out in zip(rows, rows_to_batch(kind, rows).to_pylist(), strict=True):
        kept = json.loads(out["additionalData"]) if out["additionalData"] else {}
        assert {k for k in row if k not in names} == set(kept)
        assert {k: v for k, v in row.items() if k not in names} == kept


PLAUSIBLE: dict[pa.DataType, list[Any]] = {
    pa.string(): [None, "", "abc", "Zoë 李", "+1234567***", "0.0215"],
    TS: [
        None, "2019-11-01T00:00:08Z", "2019-11-01T00:00:08.2589935Z",
        "2019-11-01T23:59:59.9999999Z",
        "2019-11-01T00:00:08.1+01:00", "2019-11-01T00:00:08.123456-05:30", "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00.0000000Z", "1970-01-01T00:00:00Z", "2262-04-11T23:47:16.8547758Z",
    ],
    pa.int32(): [None, 0, 1, -1, 219, 540000, 2**31 - 1, -(2**31)],
    MONEY: [None, 0, 0.0, -0.0, 0.1, 0.0215, 1.5, 12.3456789, 1234567.891, 5e-10, 1e27, 2**53],
    pa.bool_(): [None, True, False],
    UNITS: [None, [], [None], [{"id": "x"}], [{"id": None}], [{"id": "x"}, None, {"id": "y"}]],
}  # fmt: skip
ODD: list[Any] = [
    True, 2**31, 2**64, 5.0, 1e-11, 1e30, float("nan"), float("inf"), "1e3", "+1",
    "2019-11-01 00:00:08Z", [{"id": "x", "y": 1}], [{}], ["x"], [["id", "x"]], {}, {"x": [1]},
]  # fmt: skip


@pytest.mark.parametrize("kind", list(Kind))
def test_paths_agree_on_random_pages(kind: Kind) -> None:
    """On random pages of edge values, the fast path hands over or gives the careful result."""
    rng = random.Random(3)
    fields = [f for f in schema_for(kind) if f.name not in (kind.key, "additionalData")]
    fast_pages = 0
    for page in range(300):
        odd = rng.random() < 0.3  # about a third of the pages hold one value of the wrong shape
        rows = [
            {kind.key: f"{page}-{i}", **{f.name: rng.choice(PLAUSIBLE[f.type]) for f in fields}}
            for i in range(rng.choice((1, 5, 20)))
        ]
        if odd:
            rng.choice(rows)[rng.choice(fields).name] = rng.choice(ODD)
        careful = _careful(kind, rows)
        assert careful.to_pylist() == rows_to_batch(kind, rows).to_pylist()
        try:
            fast = _fast(kind, rows)
        except (_Unclean, pa.ArrowException):
            continue
        fast_pages += 1
        assert careful.equals(fast), rows
    assert fast_pages > 150
