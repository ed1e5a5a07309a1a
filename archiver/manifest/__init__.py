"""What is archived, and who works on what: the manifest of archived windows
(`manifest`) and the leases workers take on a window before fetching it (`lease`).

The manifest's public names are importable from here; lease's from `archiver.manifest.lease`.
"""

from archiver.manifest.manifest import (
    JOURNAL_PREFIX,
    PREFIX,
    SNAPSHOT_KEY,
    KindSummary,
    Manifest,
    Record,
    RecordId,
    State,
    format_time,
    record_id,
    utcnow,
)

__all__ = [
    "JOURNAL_PREFIX",
    "PREFIX",
    "SNAPSHOT_KEY",
    "KindSummary",
    "Manifest",
    "Record",
    "RecordId",
    "State",
    "format_time",
    "record_id",
    "utcnow",
]
