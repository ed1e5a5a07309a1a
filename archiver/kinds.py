"""The two call logs the archiver copies, and what differs between their Graph functions."""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    """A call log: its value names the folder under the destination."""

    PSTN = "pstn"
    DIRECT_ROUTING = "direct_routing"

    @property
    def function(self) -> str:
        """The Graph function that serves this log."""
        return "getPstnCalls" if self is Kind.PSTN else "getDirectRoutingCalls"

    @property
    def end_inclusive(self) -> bool:
        """True when the function's toDateTime is inclusive (PSTN), False when exclusive."""
        return self is Kind.PSTN

    @property
    def retention_days(self) -> int:
        """How long Microsoft keeps this log by default."""
        return 365 if self is Kind.PSTN else 150

    @classmethod
    def parse(cls, text: str) -> Kind:
        """The kind named `text` (`pstn` or `direct_routing`); ValueError otherwise."""
        try:
            return cls(text)
        except ValueError:
            names = ", ".join(k.value for k in cls)
            raise ValueError(f"unknown kind {text!r} (expected one of: {names})") from None
