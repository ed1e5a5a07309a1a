"""Claims: which worker is archiving which window, so several workers share one destination.

One small object per window, `_manifest/claims/<kind>/<window>.json`, written only
with conditional writes (S3 `If-None-Match`/`If-Match`; exclusive create and a lock
with atomic rename on a local folder):

    absent ──create──▶ working (owner, expires_at) ──finish──▶ done
                          │  ▲ renew (same owner)
                          └──┴─ taken over by another worker once expired

A worker claims a window before fetching it and renews the lease while it works; a
worker that dies stops renewing, and its window is taken over when the lease
expires. A claim never decides what is archived — the manifest does — it only
keeps two workers from fetching the same window at once.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from archiver.manifest import PREFIX
from archiver.store import Store
from archiver.windows import Window

CLAIMS_PREFIX = PREFIX + "claims/"


class Outcome(enum.Enum):
    """What came of trying to claim a window."""

    CLAIMED = "claimed"  # it is ours until the lease expires; renew it while working
    TAKEN_OVER = "taken_over"  # ours, but a worker held it before and died: check the manifest
    BUSY = "busy"  # another live worker holds it; try again after `expires_at`
    DONE = "done"  # another worker archived it since we read the manifest


@dataclass
class Claim:
    """A window this worker holds."""

    window: Window
    etag: str
    expires_at: float


def claim_key(window: Window) -> str:
    """The claim object of a window."""
    return f"{CLAIMS_PREFIX}{window.kind.value}/{window.name}.json"


class Leases:
    """Claims windows for one worker (`owner`) with leases of `duration` seconds.

    Blocking (store calls): callers run these methods in worker threads.
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

    def claim(self, window: Window, redo: bool = False) -> tuple[Outcome, Claim | float | None]:
        """Try to claim `window`; `redo` claims a window that is already done (a re-archive).

        Returns (CLAIMED or TAKEN_OVER, Claim), (BUSY, expires_at) or (DONE, None).
        """
        key = claim_key(window)
        for _ in range(5):  # lost races: somebody wrote between our read and our write
            expires_at = self._clock() + self.duration
            body = self._body(window, "working", expires_at)
            etag = self.store.put_bytes_if_absent(key, body)
            if etag is not None:
                return Outcome.CLAIMED, Claim(window, etag, expires_at)
            current = self.store.get_bytes(key)
            if current is None:
                continue
            data, old_etag = current
            held = json.loads(data)
            if held["state"] == "done" and not redo:
                return Outcome.DONE, None
            live = held["state"] == "working" and held["expires_at"] > self._clock()
            if live and held["owner"] != self.owner:
                return Outcome.BUSY, float(held["expires_at"])
            etag = self.store.put_bytes_if_match(key, body, old_etag)
            if etag is not None:
                outcome = Outcome.CLAIMED if held["state"] == "done" else Outcome.TAKEN_OVER
                return outcome, Claim(window, etag, expires_at)
        return Outcome.BUSY, self._clock() + 1.0

    def renew(self, claim: Claim) -> bool:
        """Extend the lease; False if another worker took the window over meanwhile."""
        expires_at = self._clock() + self.duration
        etag = self.store.put_bytes_if_match(
            claim_key(claim.window), self._body(claim.window, "working", expires_at), claim.etag
        )
        if etag is None:
            return False
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
