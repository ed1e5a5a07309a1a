"""Graph's log functions: parsing a call, serving its pages, writing its nextLinks.

    GET /{version}/communications/callRecords/getPstnCalls(fromDateTime=X,toDateTime=Y)
    GET /{version}/communications/callRecords/getDirectRoutingCalls(fromDateTime=X,toDateTime=Y)
    GET /beta/communications/callRecords/getSmsLog(fromDateTime=X,toDateTime=Y)
    GET /beta/communications/callRecords/getPstnBlockedUsersLog(fromDateTime=X,toDateTime=Y)

One function per `Kind` (`kind.function`), served in the versions `kind.versions` names
(v1.0 answers the beta-only ones 400 "Resource not found for the segment"), its range
on `kind.time_column`, `toDateTime` inclusive where `kind.end_inclusive`. Ranges over 90
days are refused with 406 where Graph limits them (all but Direct Routing). The SDKs'
namespace-qualified names (`microsoft.graph.callRecords.getPstnCalls(...)`) are accepted
too. Each request goes through, in order: auth (401), permission or a revoked tenant
(403), the token's tenant's rate cap (429 "cap"), random faults, latency, then parsing
(400 also for a range the config's `refused_ranges` names) and serving that tenant's
rows (faults.py supplies the misbehaviour).
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
from dataclasses import dataclass

from aiohttp import web

from archiver.emulator import faults
from archiver.emulator.data import ROW_TYPE, TICKS_PER_DAY, dumps, parse_datetime
from archiver.emulator.responses import JSON_CONTENT_TYPE, base_url, graph_error
from archiver.emulator.state import VERSIONS, EmulatorState
from archiver.kinds import Kind

PSTN_MAX_DAYS = 90
# The longest range each function serves (406 beyond); Direct Routing documents none.
MAX_RANGE_DAYS: dict[Kind, int] = {
    Kind.PSTN: PSTN_MAX_DAYS,
    Kind.SMS: 90,
    Kind.PSTN_BLOCKED_USERS: 90,
}
_MAX_RANGE_DAYS = 3660  # the emulator's own guard against walking millennia of days
_FUNCTIONS = {kind.function: kind for kind in Kind}
_FUNCTION = re.compile(
    r"(?P<name>(?:microsoft\.graph\.callRecords\.)?(?P<function>[A-Za-z]+))\((?P<args>[^()]*)\)"
)


class Reply:
    """What the Graph handler found out, for the log: the kind, the token's tenant, the
    fault, the rows served."""

    def __init__(self) -> None:
        self.kind: Kind | None = None
        self.tenant: str | None = None
        self.fault: str | None = None
        self.rows = 0


# --- parsing a call --------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """A parsed call of one of the log functions."""

    kind: Kind
    version: str
    name: str  # the function as the client spelled it (maybe namespace-qualified)
    from_text: str
    to_text: str
    low: int  # ticks, inclusive
    high: int  # ticks, exclusive
    skip: int


class _BadCall(Exception):
    """Raised when a Graph request cannot be served; carries the error response."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _bad_request(message: str) -> _BadCall:
    return _BadCall(graph_error(400, "BadRequest", message))


def _parse_call(request: web.Request, version: str, segment: str) -> _Call:
    if request.method != "GET":
        raise _BadCall(
            graph_error(405, "Request_BadRequest", f"{request.method} is not allowed here.")
        )
    if version not in VERSIONS:
        raise _bad_request(f"Invalid version: {version}")
    match = _FUNCTION.fullmatch(segment)
    kind = _FUNCTIONS.get(match.group("function")) if match else None
    if match is None or kind is None or version not in kind.versions:
        raise _bad_request(f"Resource not found for the segment '{segment.split('(')[0]}'.")
    names = ("fromDateTime", "toDateTime")
    allowed = {names, ("from", "to")} if kind is Kind.PSTN else {names}
    arguments: dict[str, str] = {}
    for part in match.group("args").split(","):
        name, sep, value = part.partition("=")
        if not sep or name.strip() in arguments:
            raise _bad_request(f"Invalid function arguments '{match.group('args')}'.")
        arguments[name.strip()] = value.strip().strip("'")
    spelling = tuple(arguments)
    if spelling not in allowed:
        raise _bad_request(
            f"The function '{match.group('function')}' takes parameters fromDateTime and "
            f"toDateTime; got '{match.group('args')}'."
        )
    from_text, to_text = arguments[spelling[0]], arguments[spelling[1]]
    try:
        low = parse_datetime(from_text)
    except ValueError:
        raise _bad_request(
            f"Invalid DateTimeOffset value '{from_text}' for fromDateTime."
        ) from None
    try:
        to = parse_datetime(to_text)
    except ValueError:
        raise _bad_request(f"Invalid DateTimeOffset value '{to_text}' for toDateTime.") from None
    if low > to:
        raise _bad_request("fromDateTime must not be later than toDateTime.")
    limit = MAX_RANGE_DAYS.get(kind)
    if limit is not None and to - low > limit * TICKS_PER_DAY:
        raise _BadCall(
            graph_error(
                406,
                "NotAcceptable",
                f"The range between fromDateTime and toDateTime cannot exceed {limit} days.",
            )
        )
    if to - low > _MAX_RANGE_DAYS * TICKS_PER_DAY:
        raise _bad_request(f"The emulator serves ranges of at most {_MAX_RANGE_DAYS} days.")
    skip_text = request.query.get("$skip", "0")
    if not skip_text.isdigit():
        raise _bad_request(f"Invalid value '{skip_text}' for $skip.")
    return _Call(
        kind=kind,
        version=version,
        name=match.group("name"),
        from_text=from_text,
        to_text=to_text,
        low=low,
        high=to + 1 if kind.end_inclusive else to,
        skip=int(skip_text),
    )


def _check_refused(ranges: list[tuple[str, str]], call: _Call) -> None:
    """400 for a call whose fromDateTime lies in one of `refused_ranges` (a window Graph
    will not serve, for tests of failed windows)."""
    for low, high in ranges:
        if parse_datetime(low) <= call.low < parse_datetime(high):
            raise _bad_request("The requested range cannot be served.")


# --- pages and nextLinks ---------------------------------------------------------------


def _next_link(state: EmulatorState, request: web.Request, call: _Call, skip: int) -> str:
    host = state.config.next_link_host
    base = host.rstrip("/") if host else base_url(request)
    quote = urllib.parse.quote
    x, y = quote(call.from_text, safe=":+-."), quote(call.to_text, safe=":+-.")
    if call.kind is Kind.PSTN:
        function = f"getPstnCalls(from={x},to={y})"
    else:
        function = f"{call.name}(fromDateTime={x},toDateTime={y})"
    return f"{base}/{call.version}/communications/callRecords/{function}?$skip={skip}"


def _context(request: web.Request, version: str, kind: Kind) -> str:
    return f"{base_url(request)}/{version}/$metadata#Collection({ROW_TYPE[kind]})"


def _page(
    state: EmulatorState, request: web.Request, call: _Call, tenant: str
) -> tuple[bytes, int]:
    """The body of one page of `tenant`'s rows, and how many rows it holds."""
    size = max(1, state.config.page_size)
    # Paging over live data: a page may start with rows the previous page already held.
    overlap = min(max(0, state.config.page_overlap), call.skip)
    texts, total = state.dataset_for(tenant).select(
        call.kind,
        state.params(call.kind, tenant),
        call.version == "beta",
        call.low,
        call.high,
        call.skip - overlap,
        size + overlap,
    )
    context = _context(request, call.version, call.kind)
    head = f'{{"@odata.context":{dumps(context)},"@odata.count":{len(texts)},'
    if call.skip + len(texts) - overlap < total:
        head += f'"@odata.nextLink":{dumps(_next_link(state, request, call, call.skip + size))},'
    return (head + '"value":[' + ",".join(texts) + "]}").encode(), len(texts)


# --- the handler -----------------------------------------------------------------------


async def handle(
    state: EmulatorState, request: web.Request, version: str, segment: str, reply: Reply
) -> web.StreamResponse:
    """Answer one Graph request for `/{version}/communications/callRecords/{segment}`,
    noting in `reply` what the request log needs."""
    config = state.config
    match = _FUNCTION.fullmatch(segment)
    reply.kind = _FUNCTIONS.get(match.group("function")) if match else None

    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    tenant = state.token_tenant(token.strip()) if scheme.lower() == "bearer" else None
    reply.tenant = tenant
    if tenant is None:
        return graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
            {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'},
        )
    if not config.permission or state.revoked(tenant):
        return graph_error(
            403,
            "Forbidden",
            "Missing role permissions on the request. API requires one of "
            "'CallRecords.Read.All, CallRecord-PstnCalls.Read.All'. Roles on the request ''.",
        )
    if reply.kind is not None:
        wait = state.over_cap(reply.kind, time.monotonic(), tenant)
        if wait is not None:
            reply.fault = "cap"
            return faults.cap_response(config.cap_retry_after, wait)

    fault, detail = state.draw_fault()
    reply.fault = fault
    injected = faults.fault_response(request, fault, detail, config.faults)
    if injected is not None:
        return injected

    if config.latency > 0:
        await asyncio.sleep(config.latency)

    try:
        call = _parse_call(request, version, segment)
        _check_refused(config.refused_ranges, call)
    except _BadCall as bad:
        response: web.Response = bad.response
    else:
        if fault == "no_value":
            response = faults.no_value_response(_context(request, version, call.kind))
        else:
            body, rows = _page(state, request, call, tenant)
            if fault != "truncated":
                reply.rows = rows
            response = web.Response(
                status=200, body=body, headers={"Content-Type": JSON_CONTENT_TYPE}
            )
    if fault == "truncated":
        return await faults.truncate(request, response)
    return response
