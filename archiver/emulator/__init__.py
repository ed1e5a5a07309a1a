"""A Graph emulator for `archiver demo` and the tests: Entra ID's token endpoint and
Graph's call-log functions, with deterministic data and injectable faults.

    with Emulator(EmulatorConfig(page_size=500)) as emulator:
        emulator.url        # https://127.0.0.1:PORT, both the authority host and graph_url
        emulator.ca_file    # the PEM a client must trust
        emulator.rows(Kind.PSTN, start, end)   # ground truth, exactly as served

Many tenants of one multi-tenant app: `EmulatorConfig(tenants=["t2", "t3"])` also serves
tokens for t2 and t3; Graph serves each token's tenant its own rows under its own rate
cap (`emulator.rows(kind, start, end, tenant="t2")`); `revoked_tenants` get tokens, but
403 from Graph. `tenant_id` stays the default tenant, its data as without tenants.

Modules, one job each, lowest first (each imports only those above it, and `kinds`):

    data.py       the rows: deterministic per seed, with real Graph data's quirks
    tls.py        a throwaway CA and server certificate for HTTPS on loopback
    responses.py  Graph's and Entra's error JSON, the OData content type
    faults.py     fault injection: Faults, their draws, Retry-After, truncation, rate caps
    state.py      EmulatorConfig, RequestRecord, EmulatorState (what all handlers share)
    entra.py      Entra ID: OIDC discovery, the token endpoint, client-assertion checks
    graph.py      the Graph functions: parsing calls, pages, nextLinks
    runner.py     build_app (routing, request log) and Emulator (the HTTPS thread)
"""

from archiver.emulator.faults import Faults
from archiver.emulator.runner import Emulator, build_app
from archiver.emulator.state import EmulatorConfig, EmulatorState, RequestRecord

__all__ = ["Emulator", "EmulatorConfig", "EmulatorState", "Faults", "RequestRecord", "build_app"]
