"""The emulator serving many tenants of one multi-tenant app, over real loopback HTTPS:
tokens per tenant, unknown and revoked tenants, each tenant's own data (the default
tenant's unchanged), rate caps counted per tenant, and the tenant in the request log."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import archiver
from archiver.emulator import Emulator, EmulatorConfig, EmulatorState
from archiver.emulator.data import dumps
from archiver.kinds import Kind

DAY = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
NEXT_DAY = DAY + dt.timedelta(days=1)
TICK = dt.timedelta(microseconds=1)
CALLS = "communications/callRecords"
ROWS = {Kind.PSTN: 300, Kind.DIRECT_ROUTING: 200, Kind.SMS: 150, Kind.PSTN_BLOCKED_USERS: 60}
DEFAULT = "emulator-tenant"
TENANTS = ["tenant-b", "Tenant-C"]
REVOKED = "tenant-r"
C_CLIENT = ("c-client", "c-secret")
FORBIDDEN = (
    "Missing role permissions on the request. API requires one of "
    "'CallRecords.Read.All, CallRecord-PstnCalls.Read.All'. Roles on the request ''."
)
# sha256 of dumps(rows) for two days of each kind and version with ROWS and seed 1, as
# the emulator served them before it knew tenants: the default tenant must not change.
DEFAULT_DIGESTS = {
    (Kind.PSTN, "v1.0"): "e13eea3a644203ec40c33357fd83d75043d108b531ea1c496cef454c2f8ba651",
    (Kind.PSTN, "beta"): "fea2092d6e5603e987da387ae91b5b4e06b04080e8de3e4189a9c2dd4c978af1",
    (Kind.DIRECT_ROUTING, "v1.0"): (
        "ee829ea05d5072b6487d6c4b5814ff2fd8ac0f67509011a2d0997cb84349c6fb"
    ),
    (Kind.DIRECT_ROUTING, "beta"): (
        "c80fd8af250cecb3cca3fa27cba30c20f65f62474dbbbc13c5a3b3f20ac0325e"
    ),
    (Kind.SMS, "beta"): "1827118abfc79fdf9ad6cc3cbecf3e9f28470ca53e19e9e492e04945b2f8d41d",
    (Kind.PSTN_BLOCKED_USERS, "beta"): (
        "9fdb16425bc06f9a1dd51d17e039d596772573f0b3671e738aa9cef7c3e37d0f"
    ),
}

pytestmark = pytest.mark.emulator(
    rows_per_day=ROWS,
    page_size=120,
    tenants=TENANTS,
    revoked_tenants={REVOKED},
    tenant_rows_per_day={"tenant-c": {Kind.PSTN: 77}},
    tenant_clients={"TENANT-C": C_CLIENT},
)


# --- helpers ---------------------------------------------------------------------------


class VerifyingSession(requests.Session):
    """A requests session that trusts only the emulator's CA, whatever REQUESTS_CA_BUNDLE says."""

    def __init__(self, ca_file: str | Path) -> None:
        super().__init__()
        self.ca_file = str(ca_file)

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.ca_file)
        return super().request(*args, **kwargs)


@pytest.fixture
def session(emulator: Emulator) -> Iterator[requests.Session]:
    with VerifyingSession(emulator.ca_file) as client:
        yield client


def post_token(
    emulator: Emulator,
    session: requests.Session,
    tenant: str,
    client: tuple[str, str] | None = None,
) -> requests.Response:
    """The client-credentials grant for `tenant`, with the app's (or `client`'s) secret."""
    client_id, secret = client or (emulator.config.client_id, emulator.config.client_secret)
    return session.post(
        f"{emulator.url}/{tenant}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            "scope": f"{emulator.url}/.default",
        },
    )


def token(
    emulator: Emulator,
    session: requests.Session,
    tenant: str,
    client: tuple[str, str] | None = None,
) -> str:
    response = post_token(emulator, session, tenant, client)
    assert response.status_code == 200, response.text
    value: str = response.json()["access_token"]
    return value


def call_url(emulator: Emulator, kind: Kind, version: str = "beta") -> str:
    return (
        f"{emulator.url}/{version}/{CALLS}/{kind.function}"
        "(fromDateTime=2024-03-01,toDateTime=2024-03-02)"
    )


def get(session: requests.Session, url: str, access_token: str) -> requests.Response:
    return session.get(url, headers={"Authorization": f"Bearer {access_token}"})


def fetch_all(
    session: requests.Session, url: str, access_token: str
) -> tuple[list[dict[str, Any]], int]:
    """Follow nextLinks verbatim; every row, and how many pages held them."""
    rows: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        assert pages < 100, "runaway paging"
        response = get(session, next_url, access_token)
        assert response.status_code == 200, response.text
        page = response.json()
        rows.extend(page["value"])
        pages += 1
        next_url = page.get("@odata.nextLink")
    return rows, pages


def expected(
    emulator: Emulator, kind: Kind, tenant: str | None, version: str = "beta"
) -> list[dict[str, Any]]:
    """What call_url serves: the day, plus the rows at its end where toDateTime is
    inclusive."""
    rows = emulator.rows(kind, DAY, NEXT_DAY, version, tenant=tenant)
    if kind.end_inclusive:
        rows += emulator.rows(kind, NEXT_DAY, NEXT_DAY + TICK, version, tenant=tenant)
    return rows


# --- tokens and discovery --------------------------------------------------------------


def test_every_known_tenant_gets_a_token_for_itself_in_any_case(
    emulator: Emulator, session: requests.Session
) -> None:
    """The default, the further and the revoked tenants get tokens, whatever the case of
    the path; each token remembers its tenant as configured."""
    spellings = {
        DEFAULT: DEFAULT,
        "EMULATOR-TENANT": DEFAULT,
        "tenant-b": "tenant-b",
        "TENANT-B": "tenant-b",
        REVOKED: REVOKED,
    }
    for path_tenant, configured in spellings.items():
        issued = token(emulator, session, path_tenant)
        assert configured == emulator.state.token_tenant(issued)
    issued = token(emulator, session, "tenant-c", C_CLIENT)
    assert "Tenant-C" == emulator.state.token_tenant(issued)
    assert emulator.state.token_tenant("never-issued") is None


def test_a_tenant_with_its_own_app_takes_only_that_app(
    emulator: Emulator, session: requests.Session
) -> None:
    """tenant_clients: Tenant-C accepts its own registration and not the shared one; the
    other tenants accept only the shared one."""
    refused = post_token(emulator, session, "Tenant-C")
    assert 400 == refused.status_code
    assert [700016] == refused.json()["error_codes"]
    assert refused.json()["error_description"].startswith(
        "AADSTS700016: Application with identifier 'emulator-client' was not found in the "
        "directory 'Tenant-C'. "
    )
    wrong_secret = post_token(emulator, session, "Tenant-C", ("c-client", "emulator-secret"))
    assert (401, [7000215]) == (wrong_secret.status_code, wrong_secret.json()["error_codes"])
    elsewhere = post_token(emulator, session, "tenant-b", C_CLIENT)
    assert (400, [700016]) == (elsewhere.status_code, elsewhere.json()["error_codes"])


def test_an_unknown_tenant_is_not_found(emulator: Emulator, session: requests.Session) -> None:
    """The token endpoint and discovery answer Entra's 400 90002 for a tenant the app is
    not consented in."""
    response = post_token(emulator, session, "tenant-x")
    assert 400 == response.status_code
    body = response.json()
    assert ("invalid_request", [90002]) == (body["error"], body["error_codes"])
    assert body["error_description"].startswith("AADSTS90002: Tenant 'tenant-x' not found. ")
    discovery = session.get(f"{emulator.url}/tenant-x/v2.0/.well-known/openid-configuration")
    assert 400 == discovery.status_code
    assert ("invalid_tenant", [90002]) == (
        discovery.json()["error"],
        discovery.json()["error_codes"],
    )
    assert discovery.json()["error_description"].startswith(
        "AADSTS90002: Tenant 'tenant-x' not found. "
    )


def test_discovery_answers_for_every_known_tenant(
    emulator: Emulator, session: requests.Session
) -> None:
    """Each known tenant's OpenID configuration names its own token endpoint."""
    for tenant in (DEFAULT, "tenant-b", "TENANT-C", REVOKED):
        response = session.get(f"{emulator.url}/{tenant}/v2.0/.well-known/openid-configuration")
        assert 200 == response.status_code, response.text
        document = response.json()
        assert f"{emulator.url}/{tenant}/oauth2/v2.0/token" == document["token_endpoint"]
        assert f"{emulator.url}/{tenant}/v2.0" == document["issuer"]


# --- revoked consent -------------------------------------------------------------------


def test_a_revoked_tenant_gets_403_while_another_is_served(
    emulator: Emulator, session: requests.Session
) -> None:
    """A revoked tenant's token is issued, but every Graph call answers Graph's 403; the
    same call with another tenant's token is served."""
    revoked = token(emulator, session, REVOKED)
    for kind in Kind:
        response = get(session, call_url(emulator, kind), revoked)
        assert 403 == response.status_code
        error = response.json()["error"]
        assert ("Forbidden", FORBIDDEN) == (error["code"], error["message"])
    served = get(session, call_url(emulator, Kind.PSTN), token(emulator, session, "tenant-b"))
    assert 200 == served.status_code
    assert 120 == len(served.json()["value"])


# --- data per tenant -------------------------------------------------------------------


def test_each_tenant_is_served_exactly_its_own_rows(
    emulator: Emulator, session: requests.Session
) -> None:
    """For every kind and version, each tenant's pages are exactly emulator.rows(...,
    tenant=...); the tenants' rows, their keys and their users differ."""
    tokens = {
        DEFAULT: token(emulator, session, DEFAULT),
        "tenant-b": token(emulator, session, "tenant-b"),
        "Tenant-C": token(emulator, session, "tenant-c", C_CLIENT),
    }
    for kind in Kind:
        for version in kind.versions:
            served: dict[str, list[dict[str, Any]]] = {}
            for tenant, access_token in tokens.items():
                rows, pages = fetch_all(session, call_url(emulator, kind, version), access_token)
                assert expected(emulator, kind, tenant, version) == rows
                per_day = 77 if (tenant, kind) == ("Tenant-C", Kind.PSTN) else ROWS[kind]
                assert per_day + kind.end_inclusive == len(rows)
                assert -(-len(rows) // 120) == pages
                served[tenant] = rows
            keys = {t: {r[kind.key] for r in rows} for t, rows in served.items()}
            users = {t: {r["userId"] for r in rows} for t, rows in served.items()}
            for tenant, rows in served.items():
                assert len(rows) == len(keys[tenant])
            assert set() == keys[DEFAULT] & keys["tenant-b"]
            assert set() == keys[DEFAULT] & keys["Tenant-C"]
            assert set() == keys["tenant-b"] & keys["Tenant-C"]
            assert set() == users[DEFAULT] & users["tenant-b"]


def test_the_default_tenants_data_is_unchanged() -> None:
    """With further tenants configured, the default tenant's rows are byte for byte those
    of an emulator without them, and those served before tenants existed; None, the id
    and its other case name the same rows."""
    with_tenants = EmulatorState(EmulatorConfig(rows_per_day=ROWS, tenants=TENANTS))
    alone = EmulatorState(EmulatorConfig(rows_per_day=ROWS))
    end = DAY + dt.timedelta(days=2)
    for kind in Kind:
        for version in kind.versions:
            rows = with_tenants.rows(kind, DAY, end, version)
            assert alone.rows(kind, DAY, end, version) == rows
            assert with_tenants.rows(kind, DAY, end, version, DEFAULT.upper()) == rows
            digest = hashlib.sha256(dumps(rows).encode()).hexdigest()
            assert DEFAULT_DIGESTS[kind, version] == digest
            other = with_tenants.rows(kind, DAY, end, version, "tenant-b")
            assert 2 * ROWS[kind] == len(other)
            assert rows != other
    assert 1 == with_tenants.tenant_seed()
    assert with_tenants.tenant_seed("tenant-b") == with_tenants.tenant_seed("TENANT-B")
    assert with_tenants.tenant_seed("tenant-b") != with_tenants.tenant_seed("Tenant-C")


def test_late_rows_belong_to_one_tenant(emulator: Emulator, session: requests.Session) -> None:
    """add_rows(..., tenant=...) adds to that tenant's rows only; an unknown tenant is a
    ValueError for rows and add_rows."""
    late = {
        "id": "00000000-0000-4000-8000-00000000b001",
        "startDateTime": "2024-03-01T12:00:00.5Z",
        "duration": 1,
    }
    before = emulator.rows(Kind.PSTN, DAY, NEXT_DAY)
    emulator.add_rows(Kind.PSTN, [late], tenant="TENANT-B")
    assert before == emulator.rows(Kind.PSTN, DAY, NEXT_DAY)
    rows_b = emulator.rows(Kind.PSTN, DAY, NEXT_DAY, tenant="tenant-b")
    assert 1 == sum(r == late for r in rows_b)
    assert ROWS[Kind.PSTN] + 1 == len(rows_b)
    served, _ = fetch_all(
        session, call_url(emulator, Kind.PSTN), token(emulator, session, "tenant-b")
    )
    assert late in served
    served_default, _ = fetch_all(
        session, call_url(emulator, Kind.PSTN), token(emulator, session, DEFAULT)
    )
    assert late not in served_default
    with pytest.raises(ValueError, match="unknown tenant 'tenant-x'"):
        emulator.rows(Kind.PSTN, DAY, NEXT_DAY, tenant="tenant-x")
    with pytest.raises(ValueError, match="unknown tenant 'tenant-x'"):
        emulator.add_rows(Kind.PSTN, [late], tenant="tenant-x")


# --- rate caps -------------------------------------------------------------------------


def test_rate_caps_count_per_tenant(emulator: Emulator, session: requests.Session) -> None:
    """rate_cap_per_minute applies to each tenant apart, tenant_rate_caps overrides it for
    one: a tenant at its cap gets 429 "cap" while the others are served."""
    emulator.config.rate_cap_per_minute = 3
    emulator.config.tenant_rate_caps = {"TENANT-C": 1}
    url = call_url(emulator, Kind.SMS)
    tokens = {
        DEFAULT: token(emulator, session, DEFAULT),
        "tenant-b": token(emulator, session, "tenant-b"),
        "Tenant-C": token(emulator, session, "Tenant-C", C_CLIENT),
    }
    statuses = [get(session, url, tokens[DEFAULT]).status_code for _ in range(4)]
    assert [200, 200, 200, 429] == statuses
    assert [200, 429] == [get(session, url, tokens["Tenant-C"]).status_code for _ in range(2)]
    statuses = [get(session, url, tokens["tenant-b"]).status_code for _ in range(4)]
    assert [200, 200, 200, 429] == statuses
    assert 200 == get(session, call_url(emulator, Kind.PSTN), tokens[DEFAULT]).status_code
    graph = [r for r in emulator.requests if r.endpoint == "graph"]
    assert Counter(
        {
            (DEFAULT, None): 3,
            (DEFAULT, "cap"): 1,
            ("Tenant-C", None): 1,
            ("Tenant-C", "cap"): 1,
            ("tenant-b", None): 3,
            ("tenant-b", "cap"): 1,
        }
    ) == Counter((r.tenant, r.fault) for r in graph if r.kind is Kind.SMS)


def test_bucket_caps_count_per_tenant() -> None:
    """The leaky bucket too fills per tenant: one tenant's burst leaves another's empty."""
    state = EmulatorState(
        EmulatorConfig(tenants=["tenant-b"], rate_cap_per_minute=60, rate_cap_model="bucket")
    )
    assert state.over_cap(Kind.PSTN, 10.0) is None
    assert 2.0 == state.over_cap(Kind.PSTN, 10.0, DEFAULT.upper())
    assert state.over_cap(Kind.PSTN, 10.0, "tenant-b") is None
    assert 2.0 == state.over_cap(Kind.PSTN, 10.0, "tenant-b")
    assert state.over_cap(Kind.SMS, 10.0, "tenant-b") is None
    assert state.over_cap(Kind.PSTN, 12.0) is None  # two poured in at 10.0, one a second out


# --- the request log -------------------------------------------------------------------


def test_the_request_log_names_each_requests_tenant(
    emulator: Emulator, session: requests.Session
) -> None:
    """Token and discovery requests carry the path's tenant (as configured when known),
    Graph requests the token's; a Graph request without a valid token carries none."""
    access_b = token(emulator, session, "TENANT-B")
    session.get(f"{emulator.url}/tenant-c/.well-known/openid-configuration")
    post_token(emulator, session, "tenant-x")
    get(session, call_url(emulator, Kind.PSTN), access_b)
    get(session, call_url(emulator, Kind.PSTN), token(emulator, session, REVOKED))
    get(session, call_url(emulator, Kind.PSTN), "not-a-token")
    seen = [(r.endpoint, r.tenant, r.status) for r in emulator.requests]
    assert [
        ("token", "tenant-b", 200),
        ("discovery", "Tenant-C", 200),
        ("token", "tenant-x", 400),
        ("graph", "tenant-b", 200),
        ("token", REVOKED, 200),
        ("graph", REVOKED, 403),
        ("graph", None, 401),
    ] == seen


# --- the command -----------------------------------------------------------------------


def test_module_command_serves_the_tenants_it_is_given() -> None:
    """`python -m archiver.emulator --tenant --revoked-tenant` lists them and serves
    tokens for them; Graph answers the revoked one 403."""
    root = Path(archiver.__file__).resolve().parents[1]
    command = [sys.executable, "-m", "archiver.emulator", "--port", "0"]
    command += ["--tenant", "t-one", "--tenant", "t-two", "--revoked-tenant", "t-gone"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(root))
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("Ctrl-C"):
            line = process.stdout.readline()
            assert line, f"the command ended early: {lines}"
            lines.append(line)
        url, ca_file = lines[0].split()[-1], lines[1].split()[-1]
        assert "  tenant id:     emulator-tenant\n" == lines[2]
        assert "  more tenants:  t-one, t-two\n" == lines[3]
        assert "  revoked:       t-gone\n" == lines[4]
        with VerifyingSession(ca_file) as client:
            statuses = {}
            for tenant in ("t-one", "t-two", "t-gone", "t-three"):
                response = client.post(
                    f"{url}/{tenant}/oauth2/v2.0/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": "emulator-client",
                        "client_secret": "emulator-secret",
                        "scope": f"{url}/.default",
                    },
                )
                statuses[tenant] = response.status_code
                if response.status_code == 200:
                    graph = client.get(
                        f"{url}/beta/{CALLS}/getSmsLog(fromDateTime=2024-03-01,"
                        "toDateTime=2024-03-01T00:00:01Z)",
                        headers={"Authorization": f"Bearer {response.json()['access_token']}"},
                    )
                    statuses[f"{tenant} graph"] = graph.status_code
        assert {
            "t-one": 200,
            "t-one graph": 200,
            "t-two": 200,
            "t-two graph": 200,
            "t-gone": 200,
            "t-gone graph": 403,
            "t-three": 400,
        } == statuses
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)
    assert 0 == process.returncode
