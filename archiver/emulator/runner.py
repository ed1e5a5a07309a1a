"""Running the emulator: `build_app` routes requests to Entra (entra.py) and Graph
(graph.py) and logs each one; `Emulator` serves that app over HTTPS on 127.0.0.1 from a
daemon thread with its own event loop.

Routes (any host; the emulator is both the authority and Graph): OIDC discovery and the
token endpoint (entra.py), `/{version}/communications/callRecords/{function}` (graph.py);
anything else is Graph's 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web

from archiver.emulator import entra, graph, tls
from archiver.emulator.responses import graph_error
from archiver.emulator.state import EmulatorConfig, EmulatorState, RequestRecord
from archiver.kinds import Kind

_DISCOVERY = re.compile(r"/([^/]+)(?:/v2\.0)?/\.well-known/openid-configuration")
_TOKEN = re.compile(r"/([^/]+)/oauth2/v2\.0/token")
_GRAPH = re.compile(r"/([^/]+)/communications/callRecords/([^/]+)")


def build_app(state: EmulatorState) -> web.Application:
    """The emulator as an aiohttp Application over `state`, for use in any event loop."""

    async def handle(request: web.Request) -> web.StreamResponse:
        arrived = time.time()
        raw = request.raw_path
        path = urllib.parse.unquote(raw.split("?", 1)[0])
        reply = graph.Reply()
        endpoint = "other"
        response: web.StreamResponse
        if (match := _DISCOVERY.fullmatch(path)) and request.method == "GET":
            endpoint = "discovery"
            reply.tenant = state.tenant(match.group(1)) or match.group(1)
            response = entra.discovery(state, request, match.group(1))
        elif (match := _TOKEN.fullmatch(path)) and request.method == "POST":
            endpoint = "token"
            reply.tenant = state.tenant(match.group(1)) or match.group(1)
            response = await entra.token(state, request, match.group(1))
        elif match := _GRAPH.fullmatch(path):
            endpoint = "graph"
            response = await graph.handle(state, request, match.group(1), match.group(2), reply)
        else:
            response = graph_error(404, "NotFound", f"No such endpoint: {request.method} {path}")
        state.record(
            RequestRecord(
                at=arrived,
                method=request.method,
                host=request.headers.get("Host", ""),
                path_qs=raw,
                endpoint=endpoint,
                kind=reply.kind,
                status=0 if reply.fault == "reset" else response.status,
                authorized="Authorization" in request.headers,
                fault=reply.fault,
                retry_after=response.headers.get("Retry-After"),
                rows=reply.rows,
                tenant=reply.tenant,
            )
        )
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class Emulator:
    """The emulator served over HTTPS on 127.0.0.1 from a daemon thread with its own loop."""

    def __init__(self, config: EmulatorConfig | None = None, *, port: int = 0) -> None:
        self.state = EmulatorState(config)
        self._tls = tls.material()
        self.ca_file: Path = self._tls.ca_file
        self.url = ""
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None

    @property
    def config(self) -> EmulatorConfig:
        """The live config: changes apply to the next request."""
        return self.state.config

    @config.setter
    def config(self, value: EmulatorConfig) -> None:
        self.state.config = value

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request seen since start or the last clear_requests()."""
        return self.state.requests()

    def clear_requests(self) -> None:
        """Forget the request log."""
        self.state.clear_requests()

    def expire_tokens(self) -> None:
        """Make every token issued so far expired, as if its lifetime had passed."""
        self.state.expire_tokens()

    def rows(
        self,
        kind: Kind,
        start: dt.datetime,
        end: dt.datetime,
        version: str = "beta",
        tenant: str | None = None,
    ) -> list[dict[str, Any]]:
        """Ground truth: every row of `tenant` (None: the default, `tenant_id`) whose time
        (`kind.time_column`) lies in [start, end), exactly as served, in served order.
        Half-open for every kind, like an archived window: a function with an inclusive
        end (`kind.end_inclusive`) also returns the rows exactly at its toDateTime, which
        are this call's rows(kind, end, ...). ValueError for an unknown tenant."""
        return self.state.rows(kind, start, end, version, tenant)

    def add_rows(self, kind: Kind, rows: list[dict[str, Any]], tenant: str | None = None) -> None:
        """Late rows of `tenant` (None: the default), each with the kind's key and time
        column: from now on served, in order, like generated ones. ValueError for an
        unknown tenant."""
        known = self.state.tenant(tenant)
        if known is None:
            raise ValueError(f"unknown tenant {tenant!r}")
        self.state.dataset_for(known).add_rows(kind, rows)

    def start(self) -> Emulator:
        """Listen on 127.0.0.1 (HTTPS) and return once ready."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        self._error = None
        thread = threading.Thread(
            target=self._serve, args=(ready,), name="graph-emulator", daemon=True
        )
        thread.start()
        ready.wait()
        if self._error is not None:
            thread.join()
            raise RuntimeError(f"the Graph emulator could not start: {self._error}") from (
                self._error
            )
        self._thread = thread
        return self

    def stop(self) -> None:
        """Shut down cleanly and join the thread; a no-op when not running."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None
        self._loop = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(
            build_app(self.state), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(
                runner, "127.0.0.1", self._port, ssl_context=self._tls.server_context()
            )
            loop.run_until_complete(site.start())
            port = runner.addresses[0][1]
            self.url = f"https://127.0.0.1:{port}"
            self._loop = loop
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._error = exc
            with contextlib.suppress(Exception):
                loop.run_until_complete(runner.cleanup())
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(_shutdown(runner))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _shutdown(runner: web.AppRunner) -> None:
    """Drop every open connection at once (no TLS goodbye to wait for), then clean up."""
    server = runner.server
    for handler in server.connections if server is not None else []:
        if handler.transport is not None:
            handler.transport.abort()
    await asyncio.sleep(0)  # let the aborted transports report connection_lost
    await runner.cleanup()
