"""Claims: which worker is archiving which window, so several workers share one destination.

One small object per window, `_manifest/claims/<kind>/<window>.json`, written only
with conditional writes (S3 `If-None-Match`/`If-Match`; exclusive create and a lock
with atomic rename on a local folder):

    absent ──create──▶ working (owner, expires_at) ──finish──▶ done
                          │  ▲ renew (same owner)
                          └──┴─ taken over by another worker once expired

A worker claims a window before fetching it and holds it (`async with
leases.hold(claim)`) while it works: the lease is renewed, and the work is cancelled
with `LeaseLost` if another worker took the window over. A worker that dies stops
renewing, and its window is taken over when the lease expires. A claim never
decides what is archived — the manifest does — it only keeps two workers from
fetching the same window at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from archiver.errors import ArchiverError, LeaseLost, unwrapped
from archiver.manifest.manifest import PREFIX
from archiver.store import Store
from archiver.windows import Window

log = logging.getLogger("archiver.lease")  # the name its lines always carried

CLAIMS_PREFIX = PREFIX + "claims/"


@dataclass
class Claim:
    """A window this worker holds."""

    window: Window
    etag: str
    expires_at: float


@dataclass(frozen=True)
class Claimed:
    """The window is ours until the lease expires; `taken_over`: a worker held it before
    and died, so the manifest may know it done by now."""

    claim: Claim
    taken_over: bool = False


@dataclass(frozen=True)
class Busy:
    """Another live worker holds the window; look again at `until` (wall-clock seconds)."""

    until: float


@dataclass(frozen=True)
class AlreadyDone:
    """Another worker archived the window since we read the manifest."""


ClaimOutcome = Claimed | Busy | AlreadyDone


def claim_key(window: Window) -> str:
    """The claim object of a window."""
    return f"{CLAIMS_PREFIX}{window.kind.value}/{window.name}.json"


class Leases:
    """Claims windows for one worker (`owner`) with leases of `duration` seconds.

    `claim`, `renew`, `finish` and `release` block (store calls): callers run them in
    worker threads. `hold` is the async context a claimed window is worked in.
    """

    def __init__(
        self, store: Store, owner: str, duration: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.owner = owner
        self.duration = duration
        self._clock = clock

    def _body(self, window: Window, state: str, expires_at: float) -> bytes:
        return json.dumps(
            {
                "window": str(window),
                "owner": self.owner,
                "state": state,
                "expires_at": expires_at,
            },
            sort_keys=True,
        ).encode()

    def claim(self, window: Window, redo: bool = False) -> ClaimOutcome:
        """Try to claim `window`; `redo` claims a window that is already done (a re-archive)."""
        key = claim_key(window)
        for _ in range(5):  # lost races: somebody wrote between our read and our write
            expires_at = self._clock() + self.duration
            body = self._body(window, "working", expires_at)
            etag = self.store.put_bytes_if_absent(key, body)
            if etag is not None:
                return Claimed(Claim(window, etag, expires_at))
            current = self.store.get_bytes(key)
            if current is None:
                continue
            data, old_etag = current
            held = json.loads(data)
            if held["state"] == "done" and not redo:
                return AlreadyDone()
            live = held["state"] == "working" and held["expires_at"] > self._clock()
            if live and held["owner"] != self.owner:
                return Busy(float(held["expires_at"]))
            etag = self.store.put_bytes_if_match(key, body, old_etag)
            if etag is not None:
                # Taken over: another worker was at it (our own claim, whose answer was
                # lost, is not).
                taken_over = held["state"] != "done" and held["owner"] != self.owner
                return Claimed(Claim(window, etag, expires_at), taken_over)
        return Busy(self._clock() + 1.0)

    def renew(self, claim: Claim) -> bool:
        """Extend the lease; False if another worker took the window over meanwhile."""
        expires_at = self._clock() + self.duration
        body = self._body(claim.window, "working", expires_at)
        key = claim_key(claim.window)
        etag = self.store.put_bytes_if_match(key, body, claim.etag)
        if etag is None:
            # A write whose answer was lost may have landed: then the claim is still ours.
            current = self.store.get_bytes(key)
            if current is None or current[0] != body:
                return False
            etag = current[1]
        claim.etag, claim.expires_at = etag, expires_at
        return True

    def finish(self, claim: Claim) -> None:
        """Mark the window archived (after the manifest recorded it)."""
        self.store.put_bytes_if_match(
            claim_key(claim.window), self._body(claim.window, "done", 0.0), claim.etag
        )

    def release(self, claim: Claim) -> None:
        """Give the window up at once (it failed, or we stop): any worker may take it."""
        self.store.put_bytes_if_match(
            claim_key(claim.window), self._body(claim.window, "working", 0.0), claim.etag
        )

    async def confirm(self, claim: Claim) -> None:
        """Renew the lease now, or raise LeaseLost: called right before the window's object
        is replaced, so no other worker can take the window over while it is stored."""
        if not await anyio.to_thread.run_sync(self.renew, claim):
            raise LeaseLost(f"{claim.window}: another worker took it over")

    @asynccontextmanager
    async def hold(self, claim: Claim) -> AsyncIterator[Claim]:
        """Work on a claimed window: the lease is renewed every third of its duration; if
        another worker takes the window over, the work is cancelled and LeaseLost raised.
        A renewal the store fails is tried again at the next tick (the lease outlives
        two missed renewals)."""
        lost = False
        with unwrapped():  # the work's own error, not an exception group
            async with anyio.create_task_group() as group:

                async def keep() -> None:
                    nonlocal lost
                    while True:
                        await anyio.sleep(self.duration / 3)
                        try:
                            renewed = await anyio.to_thread.run_sync(self.renew, claim)
                        except ArchiverError as exc:
                            log.warning("could not renew the lease of %s: %s", claim.window, exc)
                            continue
                        if not renewed:
                            lost = True
                            group.cancel_scope.cancel()
                            return

                group.start_soon(keep)
                try:
                    yield claim
                finally:
                    group.cancel_scope.cancel()
        if lost:
            raise LeaseLost(f"{claim.window}: another worker took it over")
