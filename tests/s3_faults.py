"""A fault-injecting HTTP reverse proxy for S3, on loopback, in front of moto or SeaweedFS.

    with S3FaultProxy(upstream_url, FaultRates(slowdown=0.05), seed=7) as proxy:
        env["AWS_ENDPOINT_URL_S3"] = proxy.url   # clients talk to the proxy
        proxy.rates = FaultRates(internal=0.5)   # rates change at runtime
        proxy.injected("slowdown", "PUT")         # what it did, by fault and method

Each request draws one number from `random.Random(seed)` and, by the current rates,
gets one of:

    slowdown      503 with S3's XML error body, Code SlowDown
    internal      500, Code InternalError
    reset_before  the connection is closed (RST) before anything is forwarded
    reset_after   the request is forwarded and answered upstream (the write happened),
                  then the connection is closed (RST) without a byte of the answer
    (none)        forwarded as is

Forwarding is byte for byte: the request line, the header block exactly as received
(the Host header too: SigV4 signs it, and SeaweedFS checks signatures) and the body,
whatever its framing (Content-Length, or chunked with trailers as aws-chunked uploads
send it). `Expect: 100-continue` is relayed as the upstream answers it. The response
(status, headers, body) is streamed back as it comes. Every request gets a fresh
upstream connection, so a client's keep-alive never meets an upstream that went idle.
Only plain-HTTP upstreams (what moto and SeaweedFS serve in the tests) are supported.
"""

from __future__ import annotations

import contextlib
import io
import random
import select
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import urlsplit

FAULTS = ("slowdown", "internal", "reset_before", "reset_after")
MAX_LINE = 65536  # bytes: a longer request/status/header/chunk-size line is a protocol error
MAX_HEADERS = 200
PIECE = 65536  # bytes relayed per read
CONTINUE_WAIT = 1.0  # seconds to wait for upstream's answer to Expect: 100-continue
IO_TIMEOUT = 300.0  # seconds a socket may stay silent mid-message before it is given up
_ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
}


class ProtocolError(Exception):
    """Raised when a message on either side is not HTTP/1.1 the proxy can relay."""


@dataclass(frozen=True)
class FaultRates:
    """Probabilities per request of each fault; `methods` limits faults to those methods."""

    slowdown: float = 0.0
    internal: float = 0.0
    reset_before: float = 0.0
    reset_after: float = 0.0
    methods: frozenset[str] | None = None  # None: any method

    @classmethod
    def moderate(cls, slowdown: float, internal: float, reset: float) -> FaultRates:
        """`reset` split evenly between resets before and after forwarding."""
        return cls(slowdown, internal, reset / 2, reset / 2)

    def pick(self, draw: float, method: str) -> str | None:
        """The fault a uniform `draw` in [0, 1) selects for a request, or None."""
        if self.methods is not None and method not in self.methods:
            return None
        total = 0.0
        for name in FAULTS:
            total += getattr(self, name)
            if draw < total:
                return name
        return None


@dataclass
class _Message:
    """A request or response head: its raw bytes and what the relay needs from it."""

    raw: bytes
    start: list[str]  # the start line split in three
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        """The last value of header `name` (case-insensitive)."""
        found = None
        for key, value in self.headers:
            if key.lower() == name.lower():
                found = value
        return found

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of every `name` header, lower-cased."""
        return {
            token.strip().lower()
            for key, value in self.headers
            if key.lower() == name.lower()
            for token in value.split(",")
            if token.strip()
        }


def _read_head(reader: io.BufferedReader, first: bool) -> _Message | None:
    """A message head from `reader`; None on a clean EOF before its first byte."""
    line = reader.readline(MAX_LINE + 1)
    if not line:
        if first:
            return None
        raise ProtocolError("connection closed before a message")
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise ProtocolError("start line too long or cut")
    raw = [line]
    start = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(start) < 2:
        raise ProtocolError(f"bad start line {line[:80]!r}")
    headers: list[tuple[str, str]] = []
    while True:
        line = reader.readline(MAX_LINE + 1)
        if not line or len(line) > MAX_LINE or not line.endswith(b"\n"):
            raise ProtocolError("header block cut or too long")
        raw.append(line)
        if line in (b"\r\n", b"\n"):
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or len(headers) >= MAX_HEADERS:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return _Message(b"".join(raw), start, headers)


def _body_length(message: _Message) -> int | None:
    """Content-Length of a message, None when absent; ProtocolError when unusable."""
    text = message.get("Content-Length")
    if text is None:
        return None
    if not text.isdigit():
        raise ProtocolError(f"bad Content-Length {text!r}")
    return int(text)


def _relay_exact(reader: io.BufferedReader, length: int, send: _Sink) -> None:
    """Copy `length` bytes from `reader` to `send`."""
    left = length
    while left > 0:
        piece = reader.read(min(PIECE, left))
        if not piece:
            raise ProtocolError("connection closed mid-body")
        send(piece)
        left -= len(piece)


def _relay_chunked(reader: io.BufferedReader, send: _Sink) -> None:
    """Copy a chunked body (chunk framing, extensions and trailers) verbatim."""
    while True:
        line = reader.readline(MAX_LINE + 1)
        if not line or len(line) > MAX_LINE or not line.endswith(b"\n"):
            raise ProtocolError("chunk size line cut or too long")
        send(line)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            break
        _relay_exact(reader, size + 2, send)  # the data and its CRLF
    while True:  # trailers, then the empty line
        line = reader.readline(MAX_LINE + 1)
        if not line or len(line) > MAX_LINE or not line.endswith(b"\n"):
            raise ProtocolError("trailer cut or too long")
        send(line)
        if line in (b"\r\n", b"\n"):
            return


class _Sink:
    """Where relayed bytes go: a socket, or nowhere once that socket failed (the rest of
    the message is still read, so the other side stays in step)."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.failed = sock is None

    def __call__(self, data: bytes) -> None:
        if self.failed or self.sock is None:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            self.failed = True


def _relay_request_body(request: _Message, reader: io.BufferedReader, send: _Sink) -> None:
    if "chunked" in request.tokens("Transfer-Encoding"):
        _relay_chunked(reader, send)
    else:
        _relay_exact(reader, _body_length(request) or 0, send)


def _abort(sock: socket.socket) -> None:
    """Close with RST: the peer sees a reset connection, not an orderly end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class S3FaultProxy:
    """The proxy: `url` to point clients at; `rates` (settable any time); counters."""

    def __init__(
        self, upstream: str, rates: FaultRates | None = None, seed: int = 0, delay: float = 0.0
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.rates = rates or FaultRates()
        self.delay = delay  # seconds every answer is held back: a store far away
        self.url = ""
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._injected: Counter[tuple[str, str]] = Counter()
        self._seen: Counter[str] = Counter()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: dict[int, tuple[threading.Thread, list[socket.socket]]] = {}

    # --- counters -------------------------------------------------------------------

    def injected(self, fault: str | None = None, method: str | None = None) -> int:
        """How many requests got `fault` (any fault: None), of `method` (any: None)."""
        with self._lock:
            return sum(
                n
                for (f, m), n in self._injected.items()
                if fault in (None, f) and method in (None, m)
            )

    def counts(self) -> dict[str, dict[str, int]]:
        """Injected faults: fault -> method -> count."""
        with self._lock:
            found: dict[str, dict[str, int]] = {}
            for (fault, method), n in sorted(self._injected.items()):
                found.setdefault(fault, {})[method] = n
            return found

    def seen(self, method: str | None = None) -> int:
        """Requests received (faulted or not), of `method` (any: None)."""
        with self._lock:
            return sum(n for m, n in self._seen.items() if method in (None, m))

    def requests(self) -> dict[str, int]:
        """Requests received (faulted or not) by method."""
        with self._lock:
            return dict(sorted(self._seen.items()))

    def _draw(self, method: str) -> str | None:
        with self._lock:
            self._seen[method] += 1
            fault = self.rates.pick(self._random.random(), method)
            if fault is not None:
                self._injected[(fault, method)] += 1
            return fault

    # --- life cycle -----------------------------------------------------------------

    def start(self) -> S3FaultProxy:
        """Listen on 127.0.0.1 (an ephemeral port) and serve from a daemon thread."""
        if self._thread is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self._listener = listener
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, drop every open connection, join the threads (bounded)."""
        thread, listener = self._thread, self._listener
        if thread is None or listener is None:
            return
        self._stopping.set()
        thread.join(5)
        with contextlib.suppress(OSError):
            listener.close()
        with self._lock:
            connections = list(self._connections.values())
        for _, sockets in connections:
            for sock in list(sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for worker, _ in connections:
            worker.join(5)
        self._thread = self._listener = None

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            ready, _, _ = select.select([listener], [], [], 0.1)
            if not ready:
                continue
            try:
                client, _ = listener.accept()
            except OSError:
                continue
            sockets = [client]
            worker = threading.Thread(
                target=self._serve, args=(client, sockets), name="s3-fault-proxy-conn", daemon=True
            )
            with self._lock:
                self._connections[id(sockets)] = (worker, sockets)
            worker.start()

    def _serve(self, client: socket.socket, sockets: list[socket.socket]) -> None:
        """One client connection, request after request, until either side ends it."""
        client.settimeout(IO_TIMEOUT)
        reader = client.makefile("rb", buffering=PIECE)
        try:
            while not self._stopping.is_set():
                request = _read_head(reader, first=True)
                if request is None or not self._one(request, reader, client, sockets):
                    break
        except (OSError, ProtocolError, ValueError):
            pass  # a broken or closed connection: nothing to answer
        finally:
            with contextlib.suppress(OSError):
                reader.close()
            with contextlib.suppress(OSError):
                client.close()
            with self._lock:
                self._connections.pop(id(sockets), None)

    # --- one request ----------------------------------------------------------------

    def _one(
        self,
        request: _Message,
        reader: io.BufferedReader,
        client: socket.socket,
        sockets: list[socket.socket],
    ) -> bool:
        """Answer (or not) one request; False when the client connection is done."""
        method = request.start[0]
        expects = "100-continue" in request.tokens("Expect")
        closing = "close" in request.tokens("Connection")
        fault = self._draw(method)
        if fault == "reset_before":
            _abort(client)
            return False
        if fault in _ERRORS:
            if expects:  # answer at once, as S3 does; the client then sends no body
                client.sendall(self._error(fault, request, close=True))
                return False
            _relay_request_body(request, reader, _Sink(None))
            client.sendall(self._error(fault, request, close=closing))
            return not closing
        if self.delay:
            time.sleep(self.delay)
        upstream = socket.create_connection(self.upstream, timeout=IO_TIMEOUT)
        sockets.append(upstream)
        try:
            return self._forward(request, reader, client, upstream, fault == "reset_after")
        finally:
            sockets.remove(upstream)
            with contextlib.suppress(OSError):
                upstream.close()

    def _forward(
        self,
        request: _Message,
        reader: io.BufferedReader,
        client: socket.socket,
        upstream: socket.socket,
        swallow: bool,
    ) -> bool:
        """Relay the request upstream and its answer back (none if `swallow`: reset)."""
        upstream.sendall(request.raw)
        to_upstream = _Sink(upstream)
        answers = upstream.makefile("rb", buffering=PIECE)
        early: _Message | None = None  # a final answer that came before the body
        try:
            if "100-continue" in request.tokens("Expect"):
                ready, _, _ = select.select([upstream], [], [], CONTINUE_WAIT)
                if ready:
                    head = _read_head(answers, first=False)
                    if head is not None and head.start[1] == "100":
                        client.sendall(head.raw)  # even when swallowing: the body must come
                    else:
                        early = head
            if early is None:
                _relay_request_body(request, reader, to_upstream)
                response = _read_head(answers, first=False)
                while response is not None and response.start[1].startswith("1"):
                    response = _read_head(answers, first=False)  # interim answers: skip
            else:
                response = early
            if response is None:
                raise ProtocolError("upstream closed without an answer")
            to_client = _Sink(None if swallow else client)
            to_client(response.raw)
            ends_with_close = self._relay_response_body(request, response, answers, to_client)
            if swallow:
                _abort(client)
                return False
            if to_client.failed:
                return False
            closing = "close" in request.tokens("Connection") | response.tokens("Connection")
            return not (ends_with_close or closing or early is not None)
        finally:
            with contextlib.suppress(OSError):
                answers.close()

    @staticmethod
    def _relay_response_body(
        request: _Message, response: _Message, answers: io.BufferedReader, send: _Sink
    ) -> bool:
        """Relay the body of `response`; True when it was framed by closing the connection."""
        status = response.start[1]
        if request.start[0] == "HEAD" or status in ("204", "304") or status.startswith("1"):
            return False
        if "chunked" in response.tokens("Transfer-Encoding"):
            _relay_chunked(answers, send)
            return False
        length = _body_length(response)
        if length is not None:
            _relay_exact(answers, length, send)
            return False
        while piece := answers.read1(PIECE):
            send(piece)
        return True

    @staticmethod
    def _error(fault: str, request: _Message, close: bool) -> bytes:
        """S3's answer for an injected error: status, XML body, request id."""
        status, reason, code, message = _ERRORS[fault]
        request_id = uuid.uuid4().hex[:16].upper()
        resource = request.start[1].split("?", 1)[0]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId>"
            f"<HostId>s3-fault-proxy</HostId></Error>"
        ).encode()
        head = [
            f"HTTP/1.1 {status} {reason}",
            "Content-Type: application/xml",
            f"Content-Length: {len(body)}",
            f"x-amz-request-id: {request_id}",
            f"Date: {formatdate(usegmt=True)}",
            "Server: AmazonS3",
            f"Connection: {'close' if close else 'keep-alive'}",
        ]
        text = "\r\n".join(head) + "\r\n\r\n"
        return text.encode("latin-1") + (b"" if request.start[0] == "HEAD" else body)
