"""Result records: the typed, versioned schema, the store on disk, the table view.

``load_runs`` and ``to_frame`` (pandas) load on first use, so a cell's
process, which only writes a record, never imports pandas.
"""

from typing import Any

from kdbench.records.schema import SCHEMA_VERSION, Record, column, upgrade
from kdbench.records.store import (
    RESULTS_FILE,
    append_record,
    latest,
    read_records,
    results_path,
)

__all__ = [
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "Record",
    "append_record",
    "column",
    "latest",
    "load_runs",
    "read_records",
    "results_path",
    "to_frame",
    "upgrade",
]


def __getattr__(name: str) -> Any:
    if name in ("load_runs", "to_frame"):
        from kdbench.records import frame

        return getattr(frame, name)
    raise AttributeError(f"module 'kdbench.records' has no attribute {name!r}")
