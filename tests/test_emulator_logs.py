"""The emulator's beta-only logs, getSmsLog and getPstnBlockedUsersLog, over real loopback
HTTPS: paging and nextLinks, their range rules, v1.0's 400, faults and caps per function,
and the quirks of their rows."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from archiver.emulator import Emulator, EmulatorConfig, Faults
from archiver.emulator.data import parse_datetime
from archiver.kinds import Kind

DAY = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
NEXT_DAY = DAY + dt.timedelta(days=1)
CALLS = "communications/callRecords"
ROWS = {Kind.PSTN: 30, Kind.DIRECT_ROUTING: 30, Kind.SMS: 2500, Kind.PSTN_BLOCKED_USERS: 1200}
LOGS = (Kind.SMS, Kind.PSTN_BLOCKED_USERS)
SMS_PROPERTIES = {
    "id", "smsId", "userId", "userPrincipalName", "userDisplayName", "userCountryCode",
    "tenantCountryCode", "sourceNumber", "destinationNumber", "sentDateTime", "callCharge",
    "currency", "smsType", "destinationContext", "destinationName", "otherPartyCountryCode",
    "licenseCapability", "smsUnits", "administrativeUnitInfos",
}  # fmt: skip
BLOCKED_PROPERTIES = {
    "userId", "userPrincipalName", "userDisplayName", "blockDateTime", "userTelephoneNumber",
    "userBlockMode", "blockReason", "remediationId",
}  # fmt: skip
KNOWN = {Kind.SMS: SMS_PROPERTIES, Kind.PSTN_BLOCKED_USERS: BLOCKED_PROPERTIES}

pytestmark = pytest.mark.emulator(rows_per_day=ROWS)


# --- helpers ---------------------------------------------------------------------------


class VerifyingSession(requests.Session):
    """A requests session that trusts only the emulator's CA, whatever REQUESTS_CA_BUNDLE says."""

    def __init__(self, ca_file: Path) -> None:
        super().__init__()
        self.ca_file = str(ca_file)

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.ca_file)
        return super().request(*args, **kwargs)


@pytest.fixture
def session(emulator: Emulator) -> Iterator[VerifyingSession]:
    with VerifyingSession(emulator.ca_file) as client:
        yield client


@pytest.fixture
def access_token(emulator: Emulator, session: VerifyingSession) -> str:
    """An access token from the emulator's token endpoint, with the client secret."""
    response = session.post(
        f"{emulator.url}/{emulator.config.tenant_id}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": emulator.config.client_id,
            "client_secret": emulator.config.client_secret,
            "scope": f"{emulator.url}/.default",
        },
    )
    assert response.status_code == 200, response.text
    value: str = response.json()["access_token"]
    return value


def call_url(
    emulator: Emulator,
    kind: Kind,
    start: str = "2024-03-01",
    end: str = "2024-03-02",
    version: str = "beta",
) -> str:
    return (
        f"{emulator.url}/{version}/{CALLS}/{kind.function}(fromDateTime={start},toDateTime={end})"
    )


def get(session: requests.Session, url: str, access_token: str) -> requests.Response:
    return session.get(url, headers={"Authorization": f"Bearer {access_token}"})


def fetch_all(
    session: requests.Session, url: str, access_token: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Follow nextLinks verbatim; return every row and every page body."""
    pages: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url is not None:
        assert len(pages) < 100, "runaway paging"
        response = get(session, next_url, access_token)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page)
        next_url = page.get("@odata.nextLink")
    return [row for page in pages for row in page["value"]], pages


def _fraction_digits(text: str) -> int:
    match = re.search(r"\.(\d+)Z$", text)
    return len(match.group(1)) if match else 0


# --- paging, nextLinks and ranges ------------------------------------------------------


def test_sms_paging_includes_both_ends(
    emulator: Emulator, session: VerifyingSession, access_token: str
) -> None:
    """Paging an SMS day returns exactly rows() plus the row sent exactly at toDateTime, in
    1,000-row pages whose count is the page's; a range from one row's 7-digit sentDateTime to
    another's returns both."""
    rows, pages = fetch_all(session, call_url(emulator, Kind.SMS), access_token)
    expected = emulator.rows(Kind.SMS, DAY, NEXT_DAY)
    assert 2500 == len(expected)
    assert expected == rows[:-1]
    assert "2024-03-02T00:00:00Z" == rows[-1]["sentDateTime"]
    assert emulator.rows(Kind.SMS, NEXT_DAY, NEXT_DAY + dt.timedelta(hours=1))[0] == rows[-1]
    assert [1000, 1000, 501] == [p["@odata.count"] for p in pages]
    assert all(p["@odata.count"] == len(p["value"]) for p in pages)
    assert "@odata.nextLink" not in pages[-1]
    assert pages[0]["@odata.context"] == (
        f"{emulator.url}/beta/$metadata#Collection(microsoft.graph.callRecords.smsLogRow)"
    )
    assert [1000, 1000, 501] == [r.rows for r in emulator.requests if r.endpoint == "graph"]

    seven = [r for r in expected[100:] if _fraction_digits(r["sentDateTime"]) == 7]
    first, last = seven[0], seven[-1]
    url = call_url(emulator, Kind.SMS, first["sentDateTime"], last["sentDateTime"])
    between, _ = fetch_all(session, url, access_token)
    assert expected[expected.index(first) : expected.index(last) + 1] == between


def test_blocked_users_paging_includes_both_ends(
    emulator: Emulator, session: VerifyingSession, access_token: str
) -> None:
    """Paging a blocked-users day returns exactly rows() plus the row blocked exactly at
    toDateTime; fromDateTime is inclusive too."""
    rows, pages = fetch_all(session, call_url(emulator, Kind.PSTN_BLOCKED_USERS), access_token)
    expected = emulator.rows(Kind.PSTN_BLOCKED_USERS, DAY, NEXT_DAY)
    assert 1200 == len(expected)
    assert expected == rows[:-1]
    assert "2024-03-02T00:00:00Z" == rows[-1]["blockDateTime"]
    assert [1000, 201] == [p["@odata.count"] for p in pages]
    assert pages[0]["@odata.context"].endswith(
        "/beta/$metadata#Collection(microsoft.graph.callRecords.pstnBlockedUsersLogRow)"
    )
    noon = "2024-03-01T12:00:00Z"  # a generated row sits at every exact hour
    url = call_url(emulator, Kind.PSTN_BLOCKED_USERS, noon, "2024-03-01T13:00:00Z")
    hour, _ = fetch_all(session, url, access_token)
    assert noon == hour[0]["blockDateTime"]
    assert "2024-03-01T13:00:00Z" == hour[-1]["blockDateTime"]
    at = DAY + dt.timedelta(hours=12)
    assert emulator.rows(Kind.PSTN_BLOCKED_USERS, at, at + dt.timedelta(hours=1)) == hour[:-1]


def test_next_links_keep_the_functions_spelling(
    emulator: Emulator, session: VerifyingSession, access_token: str
) -> None:
    """nextLinks name the function as called (plain or namespace-qualified) with
    fromDateTime/toDateTime and a literal $skip; next_link_host replaces scheme and host."""
    sms = get(session, call_url(emulator, Kind.SMS), access_token).json()
    assert sms["@odata.nextLink"] == (
        f"{emulator.url}/beta/{CALLS}/getSmsLog(fromDateTime=2024-03-01,toDateTime=2024-03-02)"
        "?$skip=1000"
    )
    qualified = (
        f"{emulator.url}/beta/{CALLS}/microsoft.graph.callRecords.getPstnBlockedUsersLog"
        "(fromDateTime=2024-03-01T00:00:00Z,toDateTime=2024-03-02T00:00:00Z)"
    )
    page = get(session, qualified, access_token).json()
    assert qualified + "?$skip=1000" == page["@odata.nextLink"]
    plain = get(session, call_url(emulator, Kind.PSTN_BLOCKED_USERS), access_token).json()
    assert plain["value"] == page["value"]
    emulator.config.next_link_host = "https://localhost:1"
    moved = get(session, call_url(emulator, Kind.SMS), access_token).json()["@odata.nextLink"]
    assert moved.startswith(f"https://localhost:1/beta/{CALLS}/getSmsLog(fromDateTime=")


@pytest.mark.parametrize("kind", LOGS, ids=lambda k: k.value)
def test_v1_does_not_serve_the_beta_only_logs(
    emulator: Emulator, session: VerifyingSession, access_token: str, kind: Kind
) -> None:
    """Under v1.0 both functions are Graph's 400 "Resource not found for the segment", in
    Graph's error JSON; the ground truth refuses v1.0 too."""
    response = get(session, call_url(emulator, kind, version="v1.0"), access_token)
    assert 400 == response.status_code
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert "BadRequest" == error["code"]
    assert f"Resource not found for the segment '{kind.function}'." == error["message"]
    assert {"date", "request-id", "client-request-id"} == set(error["innerError"])
    assert 0 == sum(r.rows for r in emulator.requests)
    with pytest.raises(ValueError, match=kind.function):
        emulator.rows(kind, DAY, NEXT_DAY, version="v1.0")


def test_sms_message_names_the_segment_exactly(
    emulator: Emulator, session: VerifyingSession, access_token: str
) -> None:
    """The v1.0 message for getSmsLog is Graph's, word for word."""
    body = get(session, call_url(emulator, Kind.SMS, version="v1.0"), access_token).json()
    assert "Resource not found for the segment 'getSmsLog'." == body["error"]["message"]


@pytest.mark.parametrize("kind", LOGS, ids=lambda k: k.value)
def test_range_over_90_days_gets_406(
    emulator: Emulator, session: VerifyingSession, access_token: str, kind: Kind
) -> None:
    """A range of 90 days is served, one 100 ns longer gets 406; the from/to spelling of
    PSTN's nextLinks is not theirs (400)."""
    emulator.config.rows_per_day = {kind: 2}
    ok = get(session, call_url(emulator, kind, "2024-01-01", "2024-03-31"), access_token)
    assert 200 == ok.status_code
    over = call_url(emulator, kind, "2024-01-01", "2024-03-31T00:00:00.0000001Z")
    refused = get(session, over, access_token)
    assert 406 == refused.status_code
    assert "90 days" in refused.json()["error"]["message"]
    spelt = f"{emulator.url}/beta/{CALLS}/{kind.function}(from=2024-03-01,to=2024-03-02)"
    assert 400 == get(session, spelt, access_token).status_code


# --- faults, caps and the request log --------------------------------------------------


def test_rate_cap_counts_each_function_apart(
    emulator: Emulator, session: VerifyingSession, access_token: str
) -> None:
    """Past the per-function cap getSmsLog answers 429 "cap" while the blocked-users log and
    the call logs, each under its own cap, still answer; the log names the kind."""
    emulator.config.rate_cap_per_minute = 2
    sms = call_url(emulator, Kind.SMS)
    assert [200, 200, 429] == [get(session, sms, access_token).status_code for _ in range(3)]
    for kind in (Kind.PSTN_BLOCKED_USERS, Kind.PSTN, Kind.DIRECT_ROUTING):
        assert 200 == get(session, call_url(emulator, kind), access_token).status_code
    graph = [r for r in emulator.requests if r.endpoint == "graph"]
    assert [(Kind.SMS, None), (Kind.SMS, None), (Kind.SMS, "cap")] == [
        (r.kind, r.fault) for r in graph[:3]
    ]
    assert graph[2].retry_after is not None
    assert [Kind.PSTN_BLOCKED_USERS, Kind.PSTN, Kind.DIRECT_ROUTING] == [r.kind for r in graph[3:]]


def test_faults_hit_the_new_functions_like_the_others(
    emulator: Emulator, session: VerifyingSession, access_token: str
) -> None:
    """Truncation, server errors, throttling and no_value (with the log's own
    @odata.context) reach both functions."""
    sms, blocked = call_url(emulator, Kind.SMS), call_url(emulator, Kind.PSTN_BLOCKED_USERS)
    emulator.config.faults = Faults(truncated=1.0)  # first: logged once its handler returns
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(session, sms, access_token)
    emulator.config.faults = Faults(server_error=1.0)
    assert get(session, sms, access_token).status_code in (500, 502, 503, 504)
    emulator.config.faults = Faults(throttle=1.0, retry_after_seconds=3)
    throttled = get(session, blocked, access_token)
    assert (429, "3") == (throttled.status_code, throttled.headers.get("Retry-After"))
    emulator.config.faults = Faults(no_value=1.0)
    empty = get(session, blocked, access_token).json()
    assert {"@odata.context"} == set(empty)
    row_type = "microsoft.graph.callRecords.pstnBlockedUsersLogRow"
    assert empty["@odata.context"].endswith(f"Collection({row_type})")
    graph = [(r.kind, r.fault) for r in emulator.requests if r.endpoint == "graph"]
    assert [
        (Kind.SMS, "truncated"),
        (Kind.SMS, "server_error"),
        (Kind.PSTN_BLOCKED_USERS, "throttle"),
        (Kind.PSTN_BLOCKED_USERS, "no_value"),
    ] == graph


# --- the rows --------------------------------------------------------------------------


def test_default_config_adds_modest_days_for_the_new_logs() -> None:
    """EmulatorConfig() keeps the call logs' days and serves 500 SMS and 50 blocked users
    a day."""
    assert {
        Kind.PSTN: 2000,
        Kind.DIRECT_ROUTING: 1500,
        Kind.SMS: 500,
        Kind.PSTN_BLOCKED_USERS: 50,
    } == EmulatorConfig().rows_per_day
    emulator = Emulator()
    assert 500 == len(emulator.rows(Kind.SMS, DAY, NEXT_DAY))
    assert 50 == len(emulator.rows(Kind.PSTN_BLOCKED_USERS, DAY, NEXT_DAY))


def _assert_times_carry_the_quirks(rows: list[dict[str, Any]], time: str, key: str) -> None:
    """Midnight, every hour and the last 100 ns of the day; 0, 3 and 7 fractional digits,
    mostly 7; a shared time; order by (time, key); keys unique."""
    times = [r[time] for r in rows]
    assert "2024-03-01T00:00:00Z" == times[0]
    assert "2024-03-01T23:59:59.9999999Z" == times[-1]
    assert {f"2024-03-01T{h:02d}:00:00Z" for h in range(24)} <= set(times)
    assert {0, 3, 7} == {_fraction_digits(t) for t in times}
    assert 7 == Counter(_fraction_digits(t) for t in times).most_common(1)[0][0]
    assert max(Counter(times).values()) >= 2
    order = [(parse_datetime(r[time]), r[key]) for r in rows]
    assert sorted(order) == order
    assert len(rows) == len({r[key] for r in rows})


def _assert_unknown_properties(kind: Kind, rows: list[dict[str, Any]]) -> None:
    """Every 97th row carries one property no schema knows: a string, a number or an object."""
    unknown = [(k, v) for r in rows for k, v in r.items() if k not in KNOWN[kind]]
    assert len(rows) // 97 == len(unknown)
    assert {str, float, dict} == {type(v) for _, v in unknown}
    assert all(KNOWN[kind] <= r.keys() for r in rows)


def test_sms_rows_carry_the_real_quirks(emulator: Emulator) -> None:
    """An SMS day has the time quirks, unique GUID ids, repeated smsIds, masked external
    numbers on either side, non-ASCII names, decimal charges (free when inbound), Int32
    units above one now and then, nulls, admin units, and unknown properties."""
    rows = emulator.rows(Kind.SMS, DAY, NEXT_DAY)
    _assert_times_carry_the_quirks(rows, "sentDateTime", "id")
    guid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
    assert all(guid.fullmatch(r["id"]) and guid.fullmatch(r["smsId"]) for r in rows)
    assert max(Counter(r["smsId"] for r in rows).values()) >= 2
    masked = re.compile(r"\+\d+\*\*\*")
    assert any(masked.fullmatch(r["sourceNumber"]) for r in rows if r["smsType"] == "sms_in")
    assert any(masked.fullmatch(r["destinationNumber"]) for r in rows if r["smsType"] == "sms_out")
    assert {"sms_in", "sms_out"} == {r["smsType"] for r in rows}
    assert {"Zoë Müller", "José Ñúñez", "李雷"} <= {r["userDisplayName"] for r in rows}
    charges = [r["callCharge"] for r in rows]
    assert all(isinstance(c, int | float) and not isinstance(c, bool) for c in charges)
    assert all(round(c, 4) == c for c in charges)
    assert {0, 1.5, 0.0215} <= set(charges)
    assert all(0 == r["callCharge"] for r in rows if r["smsType"] == "sms_in")
    assert all(type(r["smsUnits"]) is int for r in rows)
    assert {1, 2, 3} == {r["smsUnits"] for r in rows}
    for name in ("destinationContext", "otherPartyCountryCode"):
        assert None in {r[name] for r in rows}
    assert {"Domestic", "International", None} == {r["destinationContext"] for r in rows}
    assert {0, 1, 2} == {len(r["administrativeUnitInfos"]) for r in rows}
    _assert_unknown_properties(Kind.SMS, rows)


def test_blocked_users_rows_carry_the_real_quirks(emulator: Emulator) -> None:
    """A blocked-users day has no `id`, unique remediationIds, every block mode, reasons and
    telephone numbers that may be null, non-ASCII names, the time quirks and unknown
    properties."""
    rows = emulator.rows(Kind.PSTN_BLOCKED_USERS, DAY, NEXT_DAY)
    assert not any("id" in r for r in rows)
    _assert_times_carry_the_quirks(rows, "blockDateTime", "remediationId")
    assert {"blocked", "unblocked", "unknownFutureValue"} == {r["userBlockMode"] for r in rows}
    assert None in {r["blockReason"] for r in rows}
    assert "High Overall Usage" in {r["blockReason"] for r in rows}
    numbers = [r["userTelephoneNumber"] for r in rows]
    assert None in numbers
    assert all(n is None or re.fullmatch(r"\+\d{11}", n) for n in numbers)
    assert {"Zoë Müller", "José Ñúñez", "李雷"} <= {r["userDisplayName"] for r in rows}
    assert max(Counter(r["userId"] for r in rows).values()) >= 2  # users blocked again
    _assert_unknown_properties(Kind.PSTN_BLOCKED_USERS, rows)


def test_rows_are_deterministic_per_seed() -> None:
    """The same seed gives the same SMS and blocked-users rows in another emulator; another
    seed gives others."""
    one, two, other = Emulator(), Emulator(), Emulator(EmulatorConfig(seed=2))
    for kind in LOGS:
        assert one.rows(kind, DAY, NEXT_DAY) == two.rows(kind, DAY, NEXT_DAY)
        assert one.rows(kind, DAY, NEXT_DAY) != other.rows(kind, DAY, NEXT_DAY)


def test_late_rows_are_placed_by_time_column_and_key(
    emulator: Emulator, session: VerifyingSession, access_token: str
) -> None:
    """A late blocked-users row (no id: remediationId and blockDateTime) is served at its
    place, ties broken by remediationId; a late row without the kind's key is refused."""
    before = emulator.rows(Kind.PSTN_BLOCKED_USERS, DAY, NEXT_DAY)
    late = dict(before[7], remediationId="00000000-0000-4000-8000-000000000001")
    late["blockDateTime"] = "2024-03-01T12:00:00Z"  # ties with the generated noon row
    emulator.add_rows(Kind.PSTN_BLOCKED_USERS, [late])
    after = emulator.rows(Kind.PSTN_BLOCKED_USERS, DAY, NEXT_DAY)
    assert len(before) + 1 == len(after)
    noon = [r for r in after if r["blockDateTime"] == "2024-03-01T12:00:00Z"]
    assert late in noon
    assert sorted(noon, key=lambda r: r["remediationId"]) == noon
    rows, _ = fetch_all(session, call_url(emulator, Kind.PSTN_BLOCKED_USERS), access_token)
    assert after == rows[:-1]
    with pytest.raises(ValueError, match="remediationId"):
        emulator.add_rows(Kind.PSTN_BLOCKED_USERS, [{"blockDateTime": "2024-03-01T00:00:00Z"}])
    sms = dict(emulator.rows(Kind.SMS, DAY, NEXT_DAY)[3], id="late-sms")
    sms["sentDateTime"] = "2024-03-01T23:59:59.9999999Z"
    emulator.add_rows(Kind.SMS, [sms])
    assert sms in emulator.rows(Kind.SMS, DAY, NEXT_DAY)[-2:]
