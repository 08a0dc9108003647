"""Sharing one store file between an index run and its readers (docs/store.md).

DuckDB lets one process hold a file for writing, and while it does no other process may even
open it read-only. So nobody holds the file longer than a question or a commit: readers open,
ask and close; the index run opens it to commit and closes it again while it computes. These
advisory locks (flock, beside the database) make the waiting orderly instead of a retry storm:

- `rw`:    shared for a reader, exclusive for the writer, held exactly while DuckDB has the
           file open;
- `queue`: a turnstile taken briefly before `rw`, so a waiting reader stops a busy writer from
           taking the file straight back (no starvation either way);
- `index`: held by an index run from start to end, so a second one refuses at once.

A store on a read-only location has no lock files: its readers just open it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import DiffexError

POLL_S = 0.005
READ_TIMEOUT_S = float(os.environ.get("DIFFEX_LOCK_TIMEOUT", "60"))
WRITE_TIMEOUT_S = float(os.environ.get("DIFFEX_WRITE_LOCK_TIMEOUT", "600"))


def lock_dir(db_path: Path) -> Path:
    return db_path.parent / f".{db_path.name}.locks"


class _LockFile:
    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def _open(self) -> bool:
        if self.fd is not None:
            return True
        try:
            self.path.parent.mkdir(exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            try:
                self.fd = os.open(self.path, os.O_RDONLY)  # someone else's lock dir: flock works read-only
            except OSError:
                return False  # read-only location without lock files: nothing to coordinate with
        return True

    def try_lock(self, exclusive: bool) -> bool:
        if not self._open():
            return True
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise

    def lock(self, exclusive: bool, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not self.try_lock(exclusive):
            if time.monotonic() > deadline:
                raise DiffexError(f"{what}: still busy after {timeout:.0f} s")
            time.sleep(POLL_S)

    def unlock(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class FileLocks:
    """The `rw` and `queue` locks of one database file. Several Store objects of one process
    share its hold (DuckDB itself shares one database instance within a process), so only the
    first acquire locks and the last release unlocks."""

    _held: dict[str, list] = {}  # resolved db path -> [holders in this process, its _LockFile]

    def __init__(self, db_path: Path):
        root = lock_dir(db_path)
        self.db_path = db_path
        self.key = str(Path(db_path).resolve())
        self.rw = _LockFile(root / "rw")
        self.queue = _LockFile(root / "queue")
        self.holding = False

    def acquire(self, exclusive: bool) -> None:
        if self.holding:
            return
        entry = self._held.get(self.key)
        if entry is None:
            who = "writing to" if exclusive else "reading"
            timeout = WRITE_TIMEOUT_S if exclusive else READ_TIMEOUT_S
            self.queue.lock(True, timeout, f"waiting to start {who} {self.db_path}")
            try:
                self.rw.lock(exclusive, timeout, f"{self.db_path} is in use by another process")
            finally:
                self.queue.unlock()
            entry = self._held[self.key] = [0, self.rw]
        entry[0] += 1
        self.holding = True

    def release(self) -> None:
        if not self.holding:
            return
        self.holding = False
        entry = self._held[self.key]
        entry[0] -= 1
        if entry[0] == 0:
            del self._held[self.key]
            entry[1].unlock()

    def someone_waiting(self) -> bool:
        """True while another process queues for the file (it holds the turnstile)."""
        if not self.queue.try_lock(True):
            return True
        self.queue.unlock()
        return False

    def close(self) -> None:
        self.rw.close()
        self.queue.close()


@contextmanager
def index_run_lock(db_path: Path) -> Iterator[None]:
    """Held by an index run for its whole length; a second run on the same store refuses."""
    lock = _LockFile(lock_dir(db_path) / "index")
    if not lock.try_lock(True):
        lock.close()
        raise DiffexError(
            f"another `diffex index` is writing to {db_path}; wait for it to finish (queries work meanwhile)"
        )
    try:
        yield
    finally:
        lock.unlock()
        lock.close()
