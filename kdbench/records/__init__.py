"""Result records: the typed, versioned schema, the store on disk, the table view."""

from kdbench.records.frame import load_runs, to_frame
from kdbench.records.schema import SCHEMA_VERSION, Record, column, upgrade
from kdbench.records.store import RESULTS_FILE, append_record, read_records, results_path

__all__ = [
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "Record",
    "append_record",
    "column",
    "load_runs",
    "read_records",
    "results_path",
    "to_frame",
    "upgrade",
]
