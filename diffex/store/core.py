"""The attribution store: one DuckDB file, the single source of truth. Only diffex/store/
talks to DuckDB. This module holds the connection (open, checks, migration, the shared-file
protocol of docs/store.md, transactions); the Store's rows live in mixins by what they serve:
writes.py (every statement that writes, each keeping the derived tables current),
effects.py (reads of the index run), embeddings.py (the embed stage's rows) and reads.py
(people, search and verify)."""

from __future__ import annotations

import errno
import functools
import os
import threading
import time
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Sequence

import duckdb

from . import derived, migrate
from .cache import ImageCache
from ..errors import DiffexError
from .locks import FileLocks
from .effects import EffectReads
from .embeddings import EmbeddingRows
from .reads import UserReads
from .report_reads import ReportReads  # issue 14
from .writes import Writes


def default_cache_dir(db_path: Path) -> Path:
    """Edited images and inversions of `data/demo.duckdb` live in `data/demo-cache/`."""
    return db_path.parent / f"{db_path.stem}-cache"


def check_db_path(path: Path, read_only: bool) -> None:
    """One-line errors for a database path that cannot work, before anything is created: a
    directory, a missing file (reading), or (writing) a folder that is a file or not writable."""
    if path.is_dir():
        raise DiffexError(f"database path {path} is a directory; give a file such as {path / 'diffex.duckdb'}")
    if read_only:
        if not path.exists():
            raise DiffexError(f"no database at {path} (run `diffex index` or `diffex demo` first)")
        return
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest existing ancestor: where the folders would be created
    if not folder.is_dir():
        raise DiffexError(f"cannot create database {path}: {folder} is a file, not a folder")
    # DuckDB also writes `<db>.wal` beside the file, so the folder itself must be writable
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DiffexError(f"cannot write database {path}: no write permission in {folder}")
    if path.exists() and not os.access(path, os.W_OK):
        raise DiffexError(f"cannot write database {path}: the file is read-only")


_check_path = check_db_path  # the name query.py imports


def check_intact(con, path: Path) -> None:
    """Refuse a file too short to hold the blocks its header says are in use (a truncated copy
    or download): reading it fails later, mid-run, and writing would build on missing data.
    Only used blocks count: DuckDB itself cuts free blocks off the end of a file."""
    wal = Path(f"{path}.wal")
    if not path.is_file() or wal.exists():  # a WAL may hold blocks not yet in the file
        return
    row = con.execute("SELECT block_size, used_blocks FROM pragma_database_size() "
                      "WHERE database_name = current_database()").fetchone()
    expected = _HEADER_BYTES + int(row[0]) * int(row[1])
    size = path.stat().st_size
    if size < expected:
        raise DiffexError(f"database {path} is damaged: {size} bytes, but its header lists {row[1]} blocks in use "
                          f"({expected} bytes); it was truncated, restore it from a copy")


_HEADER_BYTES = 3 * 4096  # DuckDB's main header and its two database headers


def storage_error(exc: BaseException) -> DiffexError | None:
    """A one-line DiffexError for a failed database or cache write (disk full, file size limit,
    I/O error), or None for anything else. DuckDB has committed or rolled back whole transactions,
    so what was committed before is kept and the same command resumes."""
    if isinstance(exc, (duckdb.IOException, duckdb.FatalException)) or (
        isinstance(exc, duckdb.TransactionException) and "Failed to commit" in str(exc)
    ):
        detail = " ".join(str(exc).split())
    elif isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        detail = f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc.strerror)
    else:
        return None
    return DiffexError(f"storage failed: {detail}; everything committed before it is kept: fix the cause "
                       "(disk space, permissions, a damaged file) and run the same command again to resume")


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def connect(path: Path, read_only: bool, config: dict | None = None, retry_s: float = 0.0):
    """Open DuckDB with a one-line error for the usual failures (locked, not a database).
    retry_s: how long to keep retrying while another process holds the file (a process that
    does not take diffex's locks, e.g. the duckdb shell)."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config or {})
        except duckdb.IOException as exc:
            msg = str(exc).splitlines()[0]
            if "lock" in msg.lower():
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                raise DiffexError(f"database {path} is in use by another process (an index run?): {msg}") from None
            raise DiffexError(f"cannot open database {path}: {msg}") from None
        except duckdb.Error as exc:
            raise DiffexError(f"cannot open database {path}: {str(exc).splitlines()[0]}") from None


def _held(method):
    """Public Store methods run with the file open and let it go afterwards in shared mode."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.hold():
            return method(self, *args, **kwargs)

    return wrapper


class Store(Writes, EffectReads, EmbeddingRows, UserReads, ReportReads):
    """A diffex database. `Store.open(path)` creates or migrates it; `read_only=True` never writes.

    shared=True lets other processes use the file between this store's calls (docs/store.md):
    a reader (the default for read_only) closes it after every call; a writer keeps it open
    between calls only while nobody else queues for it (a watchdog thread lets it go within
    ~20 ms of a reader asking, even while the writer computes), but keeps each opening for at
    least WRITER_SLICE_S: a reader asking in a tight loop otherwise took the file back after
    every call and slowed a demo index run 17x (16.6 s alone, 282 s beside one; 33 s with the
    slice, the reader's p95 64 ms, bench/query_during_index.py).
    shared=False holds the file until close()."""

    WRITER_SLICE_S = 0.5  # a reader waits at most this (plus the commit under way) for a writer

    def __init__(self, con, path: Path, read_only: bool, cache_dir: Path | None = None, shared: bool = False):
        self._con = con
        self.path = path
        self.read_only = read_only
        self.cache = ImageCache(cache_dir or default_cache_dir(path))
        self.shared = shared
        self._locks = FileLocks(path)
        self._depth = 0
        self._in_tx = False
        self._mutex = threading.RLock()  # the caller's thread vs the watchdog
        self._closed = False
        self._opened_at = time.monotonic()
        if con is not None:
            self._locks.acquire(exclusive=not read_only)
        if shared and not read_only:
            threading.Thread(target=self._watchdog, name="diffex-store-watchdog", daemon=True).start()

    @classmethod
    def open(cls, path: "str | Path", read_only: bool = False, cache_dir: "str | Path | None" = None,
             shared: bool | None = None) -> "Store":
        path = Path(path)
        check_db_path(path, read_only)
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        store = cls(None, path, read_only, Path(cache_dir) if cache_dir else None,
                    shared=read_only if shared is None else shared)
        try:
            store._check_and_migrate()
        except BaseException:
            store.close()
            raise
        return store

    def _check_and_migrate(self) -> None:
        path, read_only, store = self.path, self.read_only, self
        with store.hold():
            con = store._con
            check_intact(con, path)
            if read_only:
                version = migrate.database_version(con)
                migrate.check_readable(version)
                if version is None:
                    raise DiffexError(f"{path} is an empty database, not a diffex store")
                if version < migrate.current_version():
                    raise DiffexError(
                        f"database schema version {version} is older than this diffex ({migrate.current_version()}); "
                        "open it once for writing (e.g. `diffex migrate --db PATH`) to upgrade"
                    )
            else:
                before = migrate.migrate(con)
                if before is not None and before < 5:
                    with store.transaction():
                        derived.rebuild(con)  # v4 added the derived tables, v5 their clean/side-effect parts: fill them once
                elif before is not None and before < 7:
                    with store.transaction():  # v7 caps side_corr: recompute the images it can change
                        store.refresh_effects(store.images_with_side_effects())

    # ------------------------------------------------------------------ the connection
    @property
    def con(self):
        """The DuckDB connection, opened on demand (shared mode) under the file locks."""
        if self._con is None:
            from .query import _POOL  # (query imports store)

            _POOL.evict(self.path)  # this process's warm query connection would refuse our config
            self._locks.acquire(exclusive=not self.read_only)
            try:
                self._con = connect(self.path, self.read_only, retry_s=5.0)
                self._opened_at = time.monotonic()
            except BaseException:
                self._locks.release()
                raise
        return self._con

    @contextmanager
    def hold(self):
        """Keep the file open for a group of calls; in shared mode it may be let go at the end."""
        with self._mutex:
            self._depth += 1
            try:
                self.con
                yield self
            finally:
                self._depth -= 1
                if self._depth == 0 and self.shared and (self.read_only or self._yield_to_reader()):
                    self.release()

    def _yield_to_reader(self) -> bool:
        """A writer lets the file go once its slice is used and another process queues."""
        return time.monotonic() - self._opened_at >= self.WRITER_SLICE_S and self._locks.someone_waiting()

    def release(self) -> None:
        """Close the file now (outside any transaction) so other processes get it."""
        with self._mutex:
            if self._con is not None and self._depth == 0:
                con, self._con = self._con, None
                try:
                    con.close()
                finally:
                    self._locks.release()

    def _watchdog(self) -> None:
        """A shared writer's file goes to a queued reader while the writer computes."""
        while not self._closed:
            time.sleep(0.02)
            if self._con is None or not self._mutex.acquire(blocking=False):
                continue
            try:
                if self._depth == 0 and self._con is not None and self._yield_to_reader():
                    self.release()
            finally:
                self._mutex.release()

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            self._depth = 0
            self.release()
            self._locks.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _rows(self, sql: str, params: Sequence | dict | None = None) -> list[dict]:
        with self.hold():
            cur = self.con.execute(sql, params or [])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    @contextmanager
    def transaction(self):
        """All or nothing; nested uses join the outer transaction."""
        with self.hold():
            if self._in_tx:
                yield self
                return
            self.con.execute("BEGIN TRANSACTION")
            self._in_tx = True
            try:
                yield self
            except BaseException:
                self._in_tx = False
                self.con.execute("ROLLBACK")
                raise
            self._in_tx = False
            self.con.execute("COMMIT")

    def _named(self, rows: list[dict], table: str, id_col: str, which: str | None) -> dict | None:
        """The first of `rows` (listed newest first) that `which` names by the one resolve rule,
        the SQL macro named_by (schema/views.sql); the first row when `which` is None."""
        if which is None:
            return rows[0] if rows else None
        spec = "spec" if table != "taxonomies" else "NULL"
        with self.hold():
            ids = {r[0] for r in self.con.execute(
                f"SELECT {id_col} FROM {table} WHERE named_by(?, {id_col}, {spec}, name)", [str(which)]).fetchall()}
        return next((r for r in rows if r[id_col] in ids), None)

    def _resolve(self, rows: list[dict], table: str, id_col: str, which: str | None, empty: str, unknown) -> dict:
        """_named's row; DiffexError(empty) when there are no rows, DiffexError(unknown(rows)) when
        `which` names none."""
        if not rows:
            raise DiffexError(empty)
        found = self._named(rows, table, id_col, which)
        if found is None:
            raise DiffexError(unknown(rows))
        return found

    def _keys(self, table: str, id_col: str, key_col: str, ids: Sequence[str]) -> dict[str, int]:
        """{id: surrogate key} for the ids present (table and columns from fixed call sites)."""
        if not ids:
            return {}
        rows = self.con.execute(
            f"SELECT {id_col}, {key_col} FROM {table} WHERE {id_col} IN (SELECT unnest(?))", [list(set(ids))]
        ).fetchall()
        return dict(rows)

    def item_keys(self, item_ids: Sequence[str]) -> dict[str, int]:
        """{item id: key} for stored images and edits (an item is an original or an edit)."""
        keys = self._keys("images", "image_id", "image_key", item_ids)
        rest = [i for i in item_ids if i not in keys]
        keys.update(self._keys("edits", "edit_id", "edit_key", rest))
        return keys

    def _image_keys_of_items(self, item_keys: Sequence[int]) -> set[int]:
        if not item_keys:
            return set()
        rows = self.con.execute(
            """SELECT image_key FROM images WHERE image_key IN (SELECT unnest($k))
               UNION SELECT DISTINCT image_key FROM edits WHERE edit_key IN (SELECT unnest($k))""",
            {"k": [int(k) for k in item_keys]},
        ).fetchall()
        return {r[0] for r in rows}

    def refresh_effects(self, image_keys: Iterable[int], classifier_key: int | None = None) -> None:
        """Bring the derived effect rows of these images up to date (inside a transaction);
        classifier_key: only that classifier's rows changed (new scores)."""
        with self.transaction():
            derived.refresh(self.con, image_keys, classifier_key)

# Every public method runs under hold(): in shared mode the file is open only while it runs.
for _name, _fn in [(n, f) for klass in reversed(Store.__mro__[:-1]) for n, f in vars(klass).items()]:
    if isinstance(_fn, types.FunctionType) and not _name.startswith("_") and _name not in ("hold", "release", "close", "transaction"):
        setattr(Store, _name, _held(_fn))
