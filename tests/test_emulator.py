"""The Graph emulator, exercised over real loopback HTTPS with real clients (MSAL, requests,
aiohttp): tokens, paging, Graph's argument rules, throttling, faults and the data's quirks."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import msal
import pytest
import requests
import yarl
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

import archiver
from archiver.emulator import (
    Emulator,
    EmulatorConfig,
    EmulatorState,
    Faults,
    RequestRecord,
    build_app,
)
from archiver.emulator.data import (
    BETA_ONLY,
    SENTINEL,
    TICKS_PER_DAY,
    DataParams,
    Dataset,
    parse_datetime,
)
from archiver.kinds import Kind

DAY = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
NEXT_DAY = DAY + dt.timedelta(days=1)
CALLS = "communications/callRecords"
PSTN_V1 = {
    "id", "callId", "userId", "userPrincipalName", "userDisplayName", "startDateTime",
    "endDateTime", "duration", "charge", "connectionCharge", "callType", "currency",
    "calleeNumber", "callerNumber", "usageCountryCode", "tenantCountryCode",
    "destinationContext", "destinationName", "conferenceId", "licenseCapability",
    "inventoryType", "operator", "callDurationSource",
}  # fmt: skip
DR_V1 = {
    "id", "correlationId", "userId", "userPrincipalName", "userDisplayName", "startDateTime",
    "endDateTime", "inviteDateTime", "failureDateTime", "duration", "callType",
    "successfulCall", "callerNumber", "calleeNumber", "mediaPathLocation", "signalingLocation",
    "finalSipCode", "callEndSubReason", "finalSipCodePhrase", "trunkFullyQualifiedDomainName",
    "mediaBypassEnabled",
}  # fmt: skip
KNOWN = {
    Kind.PSTN: PSTN_V1 | BETA_ONLY[Kind.PSTN],
    Kind.DIRECT_ROUTING: DR_V1 | BETA_ONLY[Kind.DIRECT_ROUTING],
}


# --- fixtures and helpers --------------------------------------------------------------


class VerifyingSession(requests.Session):
    """A requests session that trusts only the emulator's CA, whatever REQUESTS_CA_BUNDLE says."""

    def __init__(self, ca_file: Path) -> None:
        super().__init__()
        self.ca_file = str(ca_file)

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.ca_file)
        return super().request(*args, **kwargs)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def session(emulator: Emulator) -> Iterator[VerifyingSession]:
    with VerifyingSession(emulator.ca_file) as client:
        yield client


@pytest.fixture(scope="module")
def certificate() -> tuple[str, str, str]:
    """An RSA key, a self-signed certificate for it (PEM), and its SHA-1 thumbprint (hex)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "archiver test app")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return key_pem, cert_pem, cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - x5t is SHA-1


def msal_app(emulator: Emulator, credential: Any) -> msal.ConfidentialClientApplication:
    """A real MSAL app pointed at the emulator."""
    return msal.ConfidentialClientApplication(
        emulator.config.client_id,
        client_credential=credential,
        authority=f"{emulator.url}/{emulator.config.tenant_id}",
        instance_discovery=False,
        http_client=VerifyingSession(emulator.ca_file),
    )


def token(emulator: Emulator, session: requests.Session) -> str:
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
    access_token: str = response.json()["access_token"]
    return access_token


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


# --- tokens ----------------------------------------------------------------------------


def test_msal_gets_a_token_with_the_client_secret(emulator: Emulator) -> None:
    """Real MSAL, through OIDC discovery, gets a Bearer token that Graph then accepts."""
    result = msal_app(emulator, emulator.config.client_secret).acquire_token_for_client(
        scopes=[f"{emulator.url}/.default"]
    )
    assert "access_token" in result, result
    assert result["token_type"] == "Bearer"
    assert result["expires_in"] == 3600
    with VerifyingSession(emulator.ca_file) as session:
        assert get(session, call_url(emulator, Kind.PSTN), result["access_token"]).ok
    endpoints = [r.endpoint for r in emulator.requests]
    assert endpoints == ["discovery", "token", "graph"]


def test_msal_reports_a_wrong_secret_as_invalid_client(emulator: Emulator) -> None:
    """A wrong client secret gets AAD's invalid_client error with AADSTS7000215."""
    result = msal_app(emulator, "not-the-secret").acquire_token_for_client(
        scopes=[f"{emulator.url}/.default"]
    )
    assert result["error"] == "invalid_client"
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret")


def test_msal_discovery_fails_for_an_unknown_tenant(emulator: Emulator) -> None:
    """OIDC discovery for another tenant fails, so MSAL refuses to build the app."""
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        msal.ConfidentialClientApplication(
            emulator.config.client_id,
            client_credential=emulator.config.client_secret,
            authority=f"{emulator.url}/some-other-tenant",
            instance_discovery=False,
            http_client=VerifyingSession(emulator.ca_file),
        )


@pytest.mark.parametrize("form", ["public_certificate", "thumbprint"])
def test_msal_certificate_assertion_is_verified(
    emulator: Emulator, certificate: tuple[str, str, str], form: str
) -> None:
    """MSAL's signed client assertion (PS256 + x5t#S256, or RS256 + x5t) from a trusted
    certificate gets a token; the same from an untrusted one is refused."""
    key_pem, cert_pem, sha1 = certificate
    credential = {"private_key": key_pem, form: cert_pem if form == "public_certificate" else sha1}
    scopes = [f"{emulator.url}/.default"]

    refused = msal_app(emulator, credential).acquire_token_for_client(scopes=scopes)
    assert refused["error"] == "invalid_client"
    assert "AADSTS700027" in refused["error_description"]

    emulator.config.trusted_certificates = [cert_pem.encode()]
    result = msal_app(emulator, credential).acquire_token_for_client(scopes=scopes)
    assert "access_token" in result, result
    form_sent = [r for r in emulator.requests if r.endpoint == "token"]
    assert [r.status for r in form_sent] == [401, 200]


def test_msal_federated_token_is_accepted(emulator: Emulator) -> None:
    """A workload-identity token passed as MSAL's client_assertion gets a token when listed."""
    emulator.config.federated_tokens = ["federated-token-from-kubernetes"]
    app = msal_app(emulator, {"client_assertion": lambda: "federated-token-from-kubernetes"})
    result = app.acquire_token_for_client(scopes=[f"{emulator.url}/.default"])
    assert "access_token" in result, result

    stale = msal_app(emulator, {"client_assertion": lambda: "some-other-token"})
    refused = stale.acquire_token_for_client(scopes=[f"{emulator.url}/.default"])
    assert refused["error"] == "invalid_client"


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({}, None),
        ({"aud": "https://login.microsoftonline.com/emulator-tenant/oauth2/v2.0/token"}, 700212),
        ({"iss": "someone-else", "sub": "someone-else"}, 700021),
        ({"exp": 1_000_000_000}, 700024),
    ],
)
def test_certificate_assertion_claims_are_checked(
    emulator: Emulator,
    session: VerifyingSession,
    certificate: tuple[str, str, str],
    claims: dict[str, Any],
    code: int | None,
) -> None:
    """A signed assertion needs aud = the token endpoint, iss = sub = client_id, exp ahead."""
    key_pem, cert_pem, _ = certificate
    emulator.config.trusted_certificates = [cert_pem.encode()]
    endpoint = f"{emulator.url}/{emulator.config.tenant_id}/oauth2/v2.0/token"
    payload = {
        "aud": endpoint,
        "iss": emulator.config.client_id,
        "sub": emulator.config.client_id,
        "exp": int(time.time()) + 600,
        "jti": "one",
    } | claims
    form = {
        "grant_type": "client_credentials",
        "client_id": emulator.config.client_id,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": jwt.encode(payload, key_pem, algorithm="RS256"),
        "scope": f"{emulator.url}/.default",
    }
    response = session.post(endpoint, data=form)
    if code is None:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 401
        assert response.json()["error_codes"] == [code]


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"client_id": "someone-else"}, 400, "unauthorized_client"),
        ({"client_secret": ""}, 401, "invalid_client"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"scope": "https://graph.microsoft.com/CallRecords.Read.All"}, 400, "invalid_scope"),
    ],
)
def test_token_endpoint_refuses_bad_requests_aad_style(
    emulator: Emulator,
    session: VerifyingSession,
    change: dict[str, str],
    status: int,
    error: str,
) -> None:
    """Bad token requests get AAD's status, error name and AADSTS-prefixed description."""
    form = {
        "grant_type": "client_credentials",
        "client_id": emulator.config.client_id,
        "client_secret": emulator.config.client_secret,
        "scope": f"{emulator.url}/.default",
    } | change
    url = f"{emulator.url}/{emulator.config.tenant_id}/oauth2/v2.0/token"
    response = session.post(url, data=form)
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error
    assert body["error_description"].startswith("AADSTS")


# --- Graph: auth -----------------------------------------------------------------------


def test_graph_requires_a_known_unexpired_bearer_token(
    emulator: Emulator, session: VerifyingSession
) -> None:
    """Missing, unknown and expired tokens all get Graph's 401 InvalidAuthenticationToken."""
    url = call_url(emulator, Kind.PSTN)
    good = token(emulator, session)
    assert get(session, url, good).status_code == 200
    emulator.expire_tokens()
    for response in (session.get(url), get(session, url, "made-up"), get(session, url, good)):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "InvalidAuthenticationToken"
        assert response.json()["error"]["message"] == (
            "Access token has expired or is not yet valid."
        )
    assert [r.authorized for r in emulator.requests if r.endpoint == "graph"] == [
        True,
        False,
        True,
        True,
    ]


def test_tokens_expire_after_token_lifetime() -> None:
    """A token whose lifetime has passed (here 0 s) is refused with 401."""
    short_lived = Emulator(EmulatorConfig(token_lifetime=0))
    with short_lived, VerifyingSession(short_lived.ca_file) as client:
        access_token = token(short_lived, client)
        assert get(client, call_url(short_lived, Kind.PSTN), access_token).status_code == 401


def test_missing_permission_gets_403_naming_the_role(
    emulator: Emulator, session: VerifyingSession
) -> None:
    """Without the permission every Graph call gets 403 naming CallRecords.Read.All."""
    emulator.config.permission = False
    response = get(session, call_url(emulator, Kind.DIRECT_ROUTING), token(emulator, session))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "Forbidden"
    assert "CallRecords.Read.All" in response.json()["error"]["message"]


# --- Graph: paging and arguments -------------------------------------------------------


def test_pstn_paging_returns_rows_with_inclusive_end(emulator: Emulator) -> None:
    """Paging a PSTN day returns exactly rows(), plus the row starting exactly at toDateTime."""
    emulator.config.page_size = 700
    with VerifyingSession(emulator.ca_file) as session:
        rows, pages = fetch_all(session, call_url(emulator, Kind.PSTN), token(emulator, session))
    expected = emulator.rows(Kind.PSTN, DAY, NEXT_DAY)
    assert len(expected) == 2000
    assert rows[:-1] == expected
    assert rows[-1]["startDateTime"] == "2024-03-02T00:00:00Z"
    assert rows[-1] == emulator.rows(Kind.PSTN, NEXT_DAY, NEXT_DAY + dt.timedelta(hours=1))[0]
    assert [p["@odata.count"] for p in pages] == [700, 700, 601]
    assert all(p["@odata.count"] == len(p["value"]) for p in pages)
    assert "@odata.nextLink" not in pages[-1]
    assert pages[0]["@odata.context"].endswith(
        "/beta/$metadata#Collection(microsoft.graph.callRecords.pstnCallLogRow)"
    )
    assert [r.rows for r in emulator.requests if r.endpoint == "graph"] == [700, 700, 601]


def test_direct_routing_paging_excludes_to(emulator: Emulator, session: VerifyingSession) -> None:
    """Paging a Direct Routing day returns exactly rows(): the row at toDateTime is excluded."""
    rows, pages = fetch_all(
        session, call_url(emulator, Kind.DIRECT_ROUTING), token(emulator, session)
    )
    assert rows == emulator.rows(Kind.DIRECT_ROUTING, DAY, NEXT_DAY)
    assert len(rows) == 1500
    assert [p["@odata.count"] for p in pages] == [1000, 500]


def test_paging_across_days_matches_rows(emulator: Emulator, session: VerifyingSession) -> None:
    """Pages that straddle midnight, over a range starting and ending mid-day, match rows()."""
    emulator.config.page_size = 900
    start, end = DAY + dt.timedelta(hours=13), DAY + dt.timedelta(days=2, hours=7)
    url = call_url(emulator, Kind.DIRECT_ROUTING, "2024-03-01T13:00:00Z", "2024-03-03T07:00:00Z")
    rows, pages = fetch_all(session, url, token(emulator, session))
    assert rows == emulator.rows(Kind.DIRECT_ROUTING, start, end)
    assert len(pages) == -(-len(rows) // 900)


def test_next_link_spelling(emulator: Emulator, session: VerifyingSession) -> None:
    """PSTN nextLinks spell from=/to=, Direct Routing keeps the client's spelling, both add
    a literal $skip, and next_link_host replaces the request's scheme and host."""
    access_token = token(emulator, session)
    pstn = get(session, call_url(emulator, Kind.PSTN), access_token).json()
    assert pstn["@odata.nextLink"] == (
        f"{emulator.url}/beta/{CALLS}/getPstnCalls(from=2024-03-01,to=2024-03-02)?$skip=1000"
    )
    qualified = (
        f"{emulator.url}/v1.0/{CALLS}/microsoft.graph.callRecords.getDirectRoutingCalls"
        "(fromDateTime=2024-03-01T00:00:00Z,toDateTime=2024-03-02T00:00:00Z)"
    )
    assert get(session, qualified, access_token).json()["@odata.nextLink"] == (
        qualified + "?$skip=1000"
    )
    emulator.config.next_link_host = "https://localhost:1"
    moved = get(session, call_url(emulator, Kind.PSTN), access_token).json()["@odata.nextLink"]
    assert moved.startswith(f"https://localhost:1/beta/{CALLS}/getPstnCalls(from=")


def test_namespace_qualified_function_names_are_accepted(
    emulator: Emulator, session: VerifyingSession
) -> None:
    """The SDKs' microsoft.graph.callRecords.getPstnCalls(...) serves the same rows."""
    access_token = token(emulator, session)
    qualified = (
        f"{emulator.url}/beta/{CALLS}/microsoft.graph.callRecords.getPstnCalls"
        "(fromDateTime=2024-03-01,toDateTime=2024-03-02)"
    )
    plain = get(session, call_url(emulator, Kind.PSTN), access_token).json()
    assert get(session, qualified, access_token).json()["value"] == plain["value"]
    assert {r.kind for r in emulator.requests if r.endpoint == "graph"} == {Kind.PSTN}


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-03-01T00:00:00Z", "2024-03-01T06:00:00Z"),
        ("2024-03-01T00:00:00.0000000Z", "2024-03-01T06:00:00.000Z"),
        ("2024-03-01T01:00:00%2B01:00", "2024-03-01T07:00:00+01:00"),
        ("2024-02-29T23:00:00-01:00", "2024-03-01T06%3A00%3A00Z"),
    ],
)
def test_date_time_forms_are_equivalent(
    emulator: Emulator, session: VerifyingSession, start: str, end: str
) -> None:
    """Dates with 0-7 fractional digits, offsets and percent-encoding select the same rows."""
    url = call_url(emulator, Kind.DIRECT_ROUTING, start, end)
    rows, _ = fetch_all(session, url, token(emulator, session))
    assert rows == emulator.rows(Kind.DIRECT_ROUTING, DAY, DAY + dt.timedelta(hours=6))


def test_pstn_from_to_spelling_is_accepted_only_for_pstn(
    emulator: Emulator, session: VerifyingSession
) -> None:
    """getPstnCalls(from=,to=) works, as its nextLinks need; getDirectRoutingCalls(from=,to=)
    is a 400."""
    access_token = token(emulator, session)
    pstn = f"{emulator.url}/beta/{CALLS}/getPstnCalls(from=2024-03-01,to=2024-03-02)"
    assert get(session, pstn, access_token).status_code == 200
    direct = f"{emulator.url}/beta/{CALLS}/getDirectRoutingCalls(from=2024-03-01,to=2024-03-02)"
    assert get(session, direct, access_token).status_code == 400


@pytest.mark.parametrize(
    "url_tail",
    [
        "getPstnCalls(fromDateTime=2024-13-01,toDateTime=2024-03-02)",
        "getPstnCalls(fromDateTime=yesterday,toDateTime=2024-03-02)",
        "getPstnCalls(fromDateTime=2024-03-01T00:00:00,toDateTime=2024-03-02)",
        "getPstnCalls(fromDateTime=2024-03-01T00:00:00.12345678Z,toDateTime=2024-03-02)",
        "getPstnCalls(fromDateTime=2024-03-02,toDateTime=2024-03-01)",
        "getPstnCalls(fromDateTime=2024-03-01)",
        "getDirectRoutingCalls(fromDateTime=2024-03-01,toDateTime=2024-03-02)?$skip=-1",
        "getSomethingElse(fromDateTime=2024-03-01,toDateTime=2024-03-02)",
    ],
)
def test_malformed_calls_get_400(
    emulator: Emulator, session: VerifyingSession, url_tail: str
) -> None:
    """Malformed dates, a reversed range, missing arguments and bad $skip get Graph's 400."""
    response = get(session, f"{emulator.url}/beta/{CALLS}/{url_tail}", token(emulator, session))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"


def test_unknown_version_gets_400(emulator: Emulator, session: VerifyingSession) -> None:
    """Only v1.0 and beta are served."""
    url = call_url(emulator, Kind.PSTN, version="v2.0")
    assert get(session, url, token(emulator, session)).status_code == 400


def test_refused_ranges_get_400_for_the_calls_starting_there(
    emulator: Emulator, session: VerifyingSession
) -> None:
    """A call whose fromDateTime lies in a refused range gets 400; the days around it are
    served (how tests make exactly one window fail)."""
    emulator.config.rows_per_day = {Kind.PSTN: 5}
    emulator.config.refused_ranges = [("2024-03-02", "2024-03-03")]
    access_token = token(emulator, session)
    refused = get(session, call_url(emulator, Kind.PSTN, "2024-03-02", "2024-03-03"), access_token)
    assert (400, "BadRequest") == (refused.status_code, refused.json()["error"]["code"])
    assert "The requested range cannot be served." == refused.json()["error"]["message"]
    for day, end in (("2024-03-01", "2024-03-02"), ("2024-03-03", "2024-03-04")):
        served = get(session, call_url(emulator, Kind.PSTN, day, end), access_token)
        assert 200 == served.status_code


def test_pstn_range_over_90_days_gets_406(emulator: Emulator, session: VerifyingSession) -> None:
    """A PSTN range of 90 days is served, a longer one gets 406; Direct Routing has no limit."""
    emulator.config.rows_per_day = {Kind.PSTN: 30, Kind.DIRECT_ROUTING: 30}
    access_token = token(emulator, session)
    ok = get(session, call_url(emulator, Kind.PSTN, "2024-01-01", "2024-03-31"), access_token)
    assert ok.status_code == 200
    over = "2024-03-31T00:00:00.0000001Z"
    refused = get(session, call_url(emulator, Kind.PSTN, "2024-01-01", over), access_token)
    assert refused.status_code == 406
    assert "90 days" in refused.json()["error"]["message"]
    direct = call_url(emulator, Kind.DIRECT_ROUTING, "2024-01-01", "2024-06-01")
    assert get(session, direct, access_token).status_code == 200


def test_v1_omits_beta_properties(emulator: Emulator, session: VerifyingSession) -> None:
    """v1.0 rows lack the beta-only properties; beta rows carry them."""
    access_token = token(emulator, session)
    for kind in (Kind.PSTN, Kind.DIRECT_ROUTING):  # the logs v1.0 serves
        v1 = get(session, call_url(emulator, kind, version="v1.0"), access_token).json()["value"]
        beta = get(session, call_url(emulator, kind), access_token).json()["value"]
        assert all(not BETA_ONLY[kind] & row.keys() for row in v1)
        assert all(BETA_ONLY[kind] <= row.keys() for row in beta)
        assert v1 == emulator.rows(kind, DAY, NEXT_DAY, "v1.0")[:1000]
        assert [r["id"] for r in v1] == [r["id"] for r in beta]


def test_late_rows_are_served_in_order(emulator: Emulator, session: VerifyingSession) -> None:
    """Rows added later appear in rows() and in the pages, at their place in the sort order."""
    before = emulator.rows(Kind.DIRECT_ROUTING, DAY, NEXT_DAY)
    late = dict(before[100], id="00000000-0000-4000-8000-000000000001")
    late["startDateTime"] = "2024-03-01T12:00:00Z"  # ties with the generated noon row
    emulator.add_rows(Kind.DIRECT_ROUTING, [late])
    after = emulator.rows(Kind.DIRECT_ROUTING, DAY, NEXT_DAY)
    assert len(after) == len(before) + 1
    position = after.index(late)
    noon = [r for r in after if r["startDateTime"] == "2024-03-01T12:00:00Z"]
    assert noon == sorted(noon, key=lambda r: r["id"])
    assert after[position - 1]["startDateTime"] <= late["startDateTime"]
    rows, _ = fetch_all(session, call_url(emulator, Kind.DIRECT_ROUTING), token(emulator, session))
    assert rows == after
    v1 = emulator.rows(Kind.DIRECT_ROUTING, DAY, NEXT_DAY, "v1.0")
    assert not BETA_ONLY[Kind.DIRECT_ROUTING] & v1[position].keys()


def test_data_is_deterministic_per_seed() -> None:
    """The same seed gives the same rows in another emulator; another seed gives others."""
    one, two, other = Emulator(), Emulator(), Emulator(EmulatorConfig(seed=2))
    hour = DAY + dt.timedelta(hours=1)
    assert one.rows(Kind.PSTN, DAY, hour) == two.rows(Kind.PSTN, DAY, hour)
    assert one.rows(Kind.PSTN, DAY, hour) != other.rows(Kind.PSTN, DAY, hour)


# --- Graph: throttling and faults ------------------------------------------------------


@pytest.mark.parametrize("mode", ["seconds", "date", "none"])
def test_rate_cap_throttles_per_function(
    emulator: Emulator, session: VerifyingSession, mode: str
) -> None:
    """Past the per-function cap Graph answers 429 (counting throttled requests too), with
    Retry-After as configured, while the other function still answers."""
    emulator.config.rate_cap_per_minute = 2
    emulator.config.cap_retry_after = mode
    access_token = token(emulator, session)
    url = call_url(emulator, Kind.PSTN)
    statuses = [get(session, url, access_token).status_code for _ in range(2)]
    throttled = [get(session, url, access_token) for _ in range(2)]
    assert statuses == [200, 200]
    assert [r.status_code for r in throttled] == [429, 429]
    assert throttled[0].json()["error"]["code"] == "TooManyRequests"
    assert get(session, call_url(emulator, Kind.DIRECT_ROUTING), access_token).status_code == 200
    retry_after = throttled[0].headers.get("Retry-After")
    if mode == "seconds":
        assert retry_after is not None
        assert 1 <= int(retry_after) <= 60
    elif mode == "date":
        assert retry_after is not None
        when = email.utils.parsedate_to_datetime(retry_after)
        now = dt.datetime.now(dt.UTC)
        assert now - dt.timedelta(seconds=2) <= when <= now + dt.timedelta(seconds=62)
    else:
        assert retry_after is None
    caps = [r for r in emulator.requests if r.fault == "cap"]
    assert [(r.status, r.kind, r.retry_after) for r in caps] == [
        (429, Kind.PSTN, retry_after),
        (429, Kind.PSTN, throttled[1].headers.get("Retry-After")),
    ]


def test_throttle_fault_sends_each_retry_after_form(
    emulator: Emulator, session: VerifyingSession
) -> None:
    """Random 429s carry Retry-After in seconds, as an HTTP-date, or not at all ("mixed")."""
    emulator.config.faults = Faults(throttle=1.0, retry_after="mixed", retry_after_seconds=2)
    access_token = token(emulator, session)
    forms = set()
    for _ in range(30):
        response = get(session, call_url(emulator, Kind.PSTN), access_token)
        assert response.status_code == 429
        value = response.headers.get("Retry-After")
        if value is None:
            forms.add("none")
        elif value == "2":
            forms.add("seconds")
        else:
            email.utils.parsedate_to_datetime(value)
            forms.add("date")
    assert forms == {"seconds", "date", "none"}
    assert {r.fault for r in emulator.requests if r.endpoint == "graph"} == {"throttle"}


def test_server_error_fault_sends_graph_errors(
    emulator: Emulator, session: VerifyingSession
) -> None:
    """Random server errors are 500/502/503/504 with Graph's error JSON."""
    emulator.config.faults = Faults(server_error=1.0)
    access_token = token(emulator, session)
    statuses = set()
    for _ in range(30):
        response = get(session, call_url(emulator, Kind.PSTN), access_token)
        statuses.add(response.status_code)
        assert set(response.json()["error"]) >= {"code", "message"}
    assert statuses == {500, 502, 503, 504}


def test_reset_fault_closes_without_a_response(
    emulator: Emulator, session: VerifyingSession
) -> None:
    """A reset closes the connection with no response; the next request works again."""
    access_token = token(emulator, session)
    emulator.config.faults = Faults(reset=1.0)
    with pytest.raises(requests.ConnectionError):
        get(session, call_url(emulator, Kind.PSTN), access_token)
    emulator.config.faults = Faults()
    assert get(session, call_url(emulator, Kind.PSTN), access_token).status_code == 200
    graph = [r for r in emulator.requests if r.endpoint == "graph"]
    assert [(r.status, r.fault) for r in graph] == [(0, "reset"), (200, None)]


def test_body_faults_are_visible_to_a_client(emulator: Emulator, session: VerifyingSession) -> None:
    """Truncated bodies fail to read; not_json is HTML; no_value is JSON without "value"."""
    access_token = token(emulator, session)
    url = call_url(emulator, Kind.PSTN)
    emulator.config.faults = Faults(truncated=1.0)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(session, url, access_token)
    emulator.config.faults = Faults(not_json=1.0)
    html = get(session, url, access_token)
    assert html.status_code == 200
    assert html.headers["Content-Type"].startswith("text/html")
    with pytest.raises(json.JSONDecodeError):
        json.loads(html.text)
    emulator.config.faults = Faults(no_value=1.0)
    empty = get(session, url, access_token)
    assert empty.status_code == 200
    assert "value" not in empty.json()
    graph = [(r.status, r.fault) for r in emulator.requests if r.endpoint == "graph"]
    assert graph == [(200, "truncated"), (200, "not_json"), (200, "no_value")]


@pytest.mark.anyio
async def test_aiohttp_sees_truncation_and_resets(emulator: Emulator) -> None:
    """An aiohttp client sees a truncated body as ClientPayloadError and a reset as a disconnect."""
    context = ssl.create_default_context(cafile=str(emulator.ca_file))
    with VerifyingSession(emulator.ca_file) as session:
        access_token = token(emulator, session)
    headers = {"Authorization": f"Bearer {access_token}"}
    url = yarl.URL(call_url(emulator, Kind.DIRECT_ROUTING), encoded=True)
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as client:
        emulator.config.faults = Faults(truncated=1.0)
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(url, headers=headers) as response:
                await response.read()
        emulator.config.faults = Faults(reset=1.0)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with client.get(url, headers=headers) as response:
                await response.read()
        emulator.config.faults = Faults()
        async with client.get(url, headers=headers) as response:
            page = await response.json()
    assert page["value"] == emulator.rows(Kind.DIRECT_ROUTING, DAY, NEXT_DAY)[:1000]


def test_faults_are_reproducible_from_their_seed() -> None:
    """Two emulators with the same Faults seed fail the same requests the same way."""
    sequences = []
    for _ in range(2):
        config = EmulatorConfig(
            faults=Faults(throttle=0.2, server_error=0.2, no_value=0.2, seed=7),
            rows_per_day={Kind.PSTN: 30, Kind.DIRECT_ROUTING: 30},
        )
        with Emulator(config) as running, VerifyingSession(running.ca_file) as client:
            access_token = token(running, client)
            for _ in range(20):
                get(client, call_url(running, Kind.PSTN), access_token)
            sequences.append([r.fault for r in running.requests if r.endpoint == "graph"])
    assert sequences[0] == sequences[1]
    assert len(set(sequences[0])) == 4


def test_latency_delays_graph_pages(emulator: Emulator, session: VerifyingSession) -> None:
    """Configured latency is added to each Graph page (a lower bound only, never flaky)."""
    access_token = token(emulator, session)
    emulator.config.latency = 0.05
    response = get(session, call_url(emulator, Kind.PSTN), access_token)
    assert response.status_code == 200
    assert response.elapsed >= dt.timedelta(seconds=0.04)


# --- data quirks -----------------------------------------------------------------------


def _fraction_digits(text: str) -> int:
    match = re.search(r"\.(\d+)Z$", text)
    return len(match.group(1)) if match else 0


def test_pstn_rows_carry_the_real_quirks(emulator: Emulator) -> None:
    """A PSTN day has midnight, hourly and last-100-ns rows, mixed precision, nulls, admin units,
    non-ASCII names, masked numbers, 4-decimal money, unknown properties and repeated callIds."""
    rows = emulator.rows(Kind.PSTN, DAY, NEXT_DAY)
    starts = [r["startDateTime"] for r in rows]
    assert starts[0] == "2024-03-01T00:00:00Z"
    assert starts[-1] == "2024-03-01T23:59:59.9999999Z"
    assert {f"2024-03-01T{h:02d}:00:00Z" for h in range(24)} <= set(starts)
    assert {_fraction_digits(s) for s in starts} == {0, 3, 7}
    assert Counter(_fraction_digits(s) for s in starts).most_common(1)[0][0] == 7
    assert max(Counter(starts).values()) >= 2  # equal start times, ordered by id
    keys = [(parse_datetime(r["startDateTime"]), r["id"]) for r in rows]
    assert keys == sorted(keys)
    assert all(parse_datetime(r["endDateTime"]) > parse_datetime(r["startDateTime"]) for r in rows)
    for name in ("destinationContext", "conferenceId", "clientPublicIpV4Address"):
        values = [r[name] for r in rows]
        assert None in values
        assert any(v is not None for v in values)
    assert {len(r["administrativeUnitInfos"]) for r in rows} == {0, 1, 2}
    names = {r["userDisplayName"] for r in rows}
    assert {"Zoë Müller", "José Ñúñez", "李雷"} <= names
    numbers = {n for r in rows for n in (r["callerNumber"], r["calleeNumber"])}
    assert any(re.fullmatch(r"\+\d+\*\*\*", n) for n in numbers)
    money = [r[k] for r in rows for k in ("charge", "connectionCharge")]
    assert all(isinstance(m, int | float) and not isinstance(m, bool) for m in money)
    assert all(round(m, 4) == m for m in money)
    assert {0, 1.5, 0.0215} <= set(money)
    assert all(type(r["duration"]) is int for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert max(Counter(r["callId"] for r in rows).values()) >= 2
    _assert_unknown_properties(Kind.PSTN, rows)


def test_direct_routing_rows_carry_the_real_quirks(emulator: Emulator) -> None:
    """A Direct Routing day has the 0001-01-01 sentinel, non-E.164 callees, int SIP codes,
    booleans, unknown properties and repeated correlationIds."""
    rows = emulator.rows(Kind.DIRECT_ROUTING, DAY, NEXT_DAY)
    assert rows[0]["startDateTime"] == "2024-03-01T00:00:00Z"
    assert rows[-1]["startDateTime"] == "2024-03-01T23:59:59.9999999Z"
    succeeded = [r for r in rows if r["successfulCall"] is True]
    failed = [r for r in rows if r["successfulCall"] is False]
    assert len(succeeded) + len(failed) == len(rows)
    assert succeeded and failed
    assert all(r["failureDateTime"] == SENTINEL for r in succeeded)
    assert all(r["endDateTime"] == SENTINEL for r in failed)
    assert all(
        parse_datetime(r["endDateTime"]) > parse_datetime(r["startDateTime"]) for r in succeeded
    )
    assert all(
        parse_datetime(r["inviteDateTime"]) < parse_datetime(r["startDateTime"]) for r in rows
    )
    callees = {r["calleeNumber"] for r in rows}
    assert {n for n in callees if not re.fullmatch(r"\+\d+(\*\*\*)?", n)} >= {"anonymous"}
    assert any(n.startswith("sip:") for n in callees)
    assert any(n.endswith("***") for n in callees)
    for name in ("finalSipCode", "callEndSubReason", "duration"):
        assert all(type(r[name]) is int for r in rows)
    assert {type(r["mediaBypassEnabled"]) for r in rows} == {bool}
    assert {len(r["administrativeUnitInfos"]) for r in rows} == {0, 1, 2}
    assert None in {r["transferorCorrelationId"] for r in rows}
    assert len({r["id"] for r in rows}) == len(rows)
    assert max(Counter(r["correlationId"] for r in rows).values()) >= 2
    _assert_unknown_properties(Kind.DIRECT_ROUTING, rows)


def _assert_unknown_properties(kind: Kind, rows: list[dict[str, Any]]) -> None:
    unknown = [(k, v) for r in rows for k, v in r.items() if k not in KNOWN[kind]]
    assert len(unknown) == len(rows) // 97
    assert {type(v) for _, v in unknown} == {str, float, dict}


# --- the request log, the runner, build_app, the command -------------------------------


def test_request_log_records_what_was_seen(emulator: Emulator, session: VerifyingSession) -> None:
    """Each request is logged with host, raw path, endpoint, kind, status and rows."""
    access_token = token(emulator, session)
    get(session, call_url(emulator, Kind.DIRECT_ROUTING) + "?$skip=1400", access_token)
    session.get(f"{emulator.url}/nothing/here")
    token_record, graph_record, other_record = emulator.requests
    assert token_record.endpoint == "token"
    assert token_record.method == "POST"
    assert graph_record == RequestRecord(
        at=graph_record.at,
        method="GET",
        host=emulator.url.removeprefix("https://"),
        path_qs=f"/beta/{CALLS}/getDirectRoutingCalls"
        "(fromDateTime=2024-03-01,toDateTime=2024-03-02)?$skip=1400",
        endpoint="graph",
        kind=Kind.DIRECT_ROUTING,
        status=200,
        authorized=True,
        fault=None,
        retry_after=None,
        rows=100,
        tenant=emulator.config.tenant_id,
    )
    assert token_record.at <= graph_record.at <= other_record.at
    assert (other_record.endpoint, other_record.status) == ("other", 404)
    emulator.clear_requests()
    assert emulator.requests == []


def test_stop_is_idempotent_and_restartable() -> None:
    """stop() twice is harmless, a stopped emulator no longer listens, and start() again works."""
    running = Emulator().start()
    url = running.url
    running.stop()
    running.stop()
    with VerifyingSession(running.ca_file) as client:
        with pytest.raises(requests.ConnectionError):
            client.get(f"{url}/x", timeout=5)
        with running:
            assert client.get(f"{running.url}/x", timeout=5).status_code == 404


@pytest.mark.anyio
async def test_build_app_serves_in_the_callers_loop() -> None:
    """build_app() runs inside an existing event loop (here over plain HTTP on loopback)."""
    state = EmulatorState(EmulatorConfig(rows_per_day={Kind.PSTN: 40, Kind.DIRECT_ROUTING: 40}))
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as client:
            form = {
                "grant_type": "client_credentials",
                "client_id": "emulator-client",
                "client_secret": "emulator-secret",
                "scope": f"{base}/.default",
            }
            async with client.post(f"{base}/emulator-tenant/oauth2/v2.0/token", data=form) as r:
                access_token = (await r.json())["access_token"]
            url = yarl.URL(
                f"{base}/beta/{CALLS}/getPstnCalls(fromDateTime=2024-03-01,toDateTime=2024-03-02)",
                encoded=True,
            )
            headers = {"Authorization": f"Bearer {access_token}"}
            async with client.get(url, headers=headers) as r:
                page = await r.json()
    finally:
        await runner.cleanup()
    assert len(page["value"]) == 41
    assert page["value"][:40] == state.rows(Kind.PSTN, DAY, NEXT_DAY, "beta")


def test_module_command_prints_how_to_connect_and_stops_on_ctrl_c() -> None:
    """`python -m archiver.emulator` prints URL, CA file and credentials, serves, and exits 0
    on SIGINT."""
    root = Path(archiver.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    process = subprocess.Popen(
        [sys.executable, "-m", "archiver.emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("Ctrl-C"):
            line = process.stdout.readline()
            assert line, f"the command ended early: {lines}"
            lines.append(line)
        url = lines[0].split()[-1]
        ca_file = lines[1].split()[-1]
        assert url.startswith("https://127.0.0.1:")
        with VerifyingSession(Path(ca_file)) as client:
            discovery = client.get(f"{url}/emulator-tenant/v2.0/.well-known/openid-configuration")
        assert discovery.json()["token_endpoint"] == f"{url}/emulator-tenant/oauth2/v2.0/token"
        text = "".join(lines)
        assert "emulator-client" in text
        assert "emulator-secret" in text
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)
    assert process.returncode == 0


def test_cached_slices_are_served_exactly_as_generated() -> None:
    """With cache_rows, a slice served again is the same text; a new seed, a late row or
    the other version is never answered from the cache; the cache keeps to its bound."""
    low = parse_datetime("2024-03-04T00:00:00Z")
    high = low + TICKS_PER_DAY
    params = DataParams(seed=1, rows_per_day=300, unknown_property_every=97)
    plain, cached = Dataset(), Dataset(cache_rows=250)
    for _ in range(2):  # the second round comes from the cache where it can
        for beta in (False, True):
            for skip in (0, 100, 200):
                expected = plain.select(Kind.PSTN, params, beta, low, high, skip, 100)
                assert expected == cached.select(Kind.PSTN, params, beta, low, high, skip, 100)
    other = DataParams(seed=2, rows_per_day=300, unknown_property_every=97)
    assert plain.select(Kind.PSTN, other, False, low, high, 0, 100) == cached.select(
        Kind.PSTN, other, False, low, high, 0, 100
    )
    late = {"id": "late-1", "startDateTime": "2024-03-04T00:00:00Z"}
    for dataset in (plain, cached):
        dataset.add_rows(Kind.PSTN, [late])
    texts, total = cached.select(Kind.PSTN, params, False, low, high, 0, 100)
    assert (texts, total) == plain.select(Kind.PSTN, params, False, low, high, 0, 100)
    assert 301 == total and any('"late-1"' in text for text in texts)
    assert cached._cached_rows <= 250
