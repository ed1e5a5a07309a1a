"""The shapes of the emulator's answers that Entra ID and Graph share with every caller:
Graph's error JSON, Entra's (AADSTS) error JSON, the OData content type, the base URL."""

from __future__ import annotations

import datetime as dt
import uuid

from aiohttp import web

from archiver.emulator.data import dumps

JSON_CONTENT_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;"
    "IEEE754Compatible=false;charset=utf-8"
)


def graph_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """Graph's error response: `{"error": {"code", "message", "innerError"}}`."""
    request_id = str(uuid.uuid4())
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": request_id,
            },
        }
    }
    all_headers = {"Content-Type": JSON_CONTENT_TYPE, "request-id": request_id}
    all_headers.update(headers or {})
    return web.Response(status=status, body=dumps(body).encode(), headers=all_headers)


def aad_error(status: int, error: str, code: int, description: str) -> web.Response:
    """Entra ID's OAuth error response, with its AADSTS code."""
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    body = {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {correlation} "
            f"Timestamp: {stamp}"
        ),
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    return web.json_response(body, status=status)


def base_url(request: web.Request) -> str:
    """Scheme and host the request came to: the emulator is whatever host it is called by."""
    return f"{request.scheme}://{request.host}"
