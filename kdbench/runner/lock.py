"""One writer per run folder: a file lock held for the whole run.

The lock is an flock (filelock): the kernel drops it when its process dies,
so a lock left by a killed run is simply taken over by the next one. Who
holds it (pid, host, command, since when) is written beside it, so a second
writer is refused with a line that names the holder.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import datetime
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from kdbench.errors import KdbenchError

LOCK_FILE = ".kdbench.lock"
HOLDER_FILE = ".kdbench.lock.json"


class RunLock:
    """``with RunLock(folder):`` the caller is the folder's one writer."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = FileLock(str(folder / LOCK_FILE), timeout=0)

    def __enter__(self) -> RunLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KdbenchError(f"cannot create the run folder {self.folder}: {exc}") from None
        try:
            self._lock.acquire()
        except Timeout:
            raise KdbenchError(
                f"{self.folder} is in use by another kdbench run ({self.holder()}); wait for it "
                "to finish or choose another --out"
            ) from None
        except OSError as exc:
            raise KdbenchError(f"cannot lock the run folder {self.folder}: {exc}") from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(["kdbench", *sys.argv[1:]]),
            "since": datetime.now().isoformat(timespec="seconds"),
        }
        try:
            (self.folder / HOLDER_FILE).write_text(json.dumps(holder) + "\n")
        except OSError as exc:
            self._lock.release()
            raise KdbenchError(f"cannot write into the run folder {self.folder}: {exc}") from None
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lock.release()

    def holder(self) -> str:
        """Who holds the lock, as the holder wrote it."""
        try:
            info = json.loads((self.folder / HOLDER_FILE).read_text())
            return f"pid {info['pid']} on {info['host']} since {info['since']}: {info['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"
