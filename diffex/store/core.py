"""The attribution store: one DuckDB file, the single source of truth. Only this module
(and query.py's read-only sessions) talk to DuckDB.

Why one file of ~900 lines: every SQL statement that writes the store lives here, so the
rules that keep it consistent (integer keys behind the ids, uniqueness without primary keys,
the derived effect tables refreshed in the same transaction, the file shared with readers)
are kept in one place. It is one idea with several rooms; issue 11 splits it into a
`diffex/store/` package (connection, writes, reads for indexing, reads for users)."""

from __future__ import annotations

import errno
import functools
import json
import os
import threading
import time
import types
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import duckdb
import numpy as np

from . import derived, migrate
from .cache import ImageCache
from ..errors import DiffexError
from .locks import FileLocks
from ..types import EditRecord, ImageRecord, Taxonomy


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


class Store:
    """A diffex database. `Store.open(path)` creates or migrates it; `read_only=True` never writes.

    shared=True lets other processes use the file between this store's calls (docs/store.md):
    a reader (the default for read_only) closes it after every call; a writer keeps it open
    between calls only while nobody else queues for it (a watchdog thread lets it go within
    ~20 ms of a reader asking, even while the writer computes). shared=False holds the file
    until close()."""

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
                if self._depth == 0 and self.shared and (self.read_only or self._locks.someone_waiting()):
                    self.release()

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
                if self._depth == 0 and self._con is not None and self._locks.someone_waiting():
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

    # ------------------------------------------------------------------ writes
    def add_taxonomy(self, taxonomy: Taxonomy, source: str | None = None, *,
                     parent_taxonomy_id: str | None = None, note: str | None = None) -> None:
        """Register a taxonomy version (a no-op for one already stored). Node rows are kept in
        the taxonomy's order, which `taxonomy_node_rows` gives back."""
        with self.transaction():
            self.con.execute(
                """INSERT OR IGNORE INTO taxonomies (taxonomy_id, name, domain, source, parent_taxonomy_id, note)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                [taxonomy.taxonomy_id, taxonomy.name, taxonomy.domain, source, parent_taxonomy_id, note],
            )
            nodes = taxonomy.nodes
            # ON CONFLICT DO UPDATE, not INSERT OR REPLACE: a node keeps its node_key
            self.con.execute(
                """INSERT INTO nodes (node_id, parent_id, path, label, depth, prompt)
                   SELECT unnest(?), unnest(?), unnest(?), unnest(?), unnest(?), unnest(?)
                   ON CONFLICT (node_id) DO UPDATE SET parent_id = excluded.parent_id, path = excluded.path,
                       label = excluded.label, depth = excluded.depth, prompt = excluded.prompt""",
                [
                    [n.node_id for n in nodes],
                    [n.parent_id for n in nodes],
                    [" > ".join(n.path) for n in nodes],
                    [n.label for n in nodes],
                    [n.depth for n in nodes],
                    [n.prompt for n in nodes],
                ],
            )
            # a plain INSERT keeps the rows in the taxonomy's order (INSERT OR IGNORE reorders them),
            # and that order is part of the taxonomy id, so a stored version can be rebuilt exactly
            self.con.execute(
                """INSERT INTO taxonomy_nodes (taxonomy_id, node_id)
                   SELECT ?, node_id FROM (SELECT unnest(?) AS node_id)
                   WHERE node_id NOT IN (SELECT node_id FROM taxonomy_nodes WHERE taxonomy_id = ?)""",
                [taxonomy.taxonomy_id, [n.node_id for n in nodes], taxonomy.taxonomy_id],
            )

    def add_editor(self, editor) -> None:
        self.con.execute(
            "INSERT OR IGNORE INTO editors (editor_id, name, spec, config) VALUES (?, ?, ?, ?)",
            [editor.editor_id, editor.name, editor.spec, json.dumps(editor.config, sort_keys=True, default=str)],
        )

    def add_classifier(self, classifier, mark_indexed: bool = True) -> None:
        with self.transaction():
            self.con.execute(
                "INSERT OR IGNORE INTO classifiers (classifier_id, name, spec) VALUES (?, ?, ?)",
                [classifier.classifier_id, classifier.name, classifier.spec],
            )
            names = list(classifier.class_names)
            self.con.execute(
                "INSERT OR IGNORE INTO classes SELECT ?, unnest(?), unnest(?)",
                [classifier.classifier_id, list(range(len(names))), names],
            )
            if mark_indexed:
                self.mark_indexed(classifier.classifier_id)

    def mark_indexed(self, classifier_id: str) -> None:
        """Record that an index run with this classifier finished: unless a classifier is
        pinned (`pin_classifier`), the query macros default to the most recently indexed."""
        self.con.execute(
            "UPDATE classifiers SET indexed_at = ? WHERE classifier_id = ?",
            [datetime.now(timezone.utc).replace(tzinfo=None), classifier_id],
        )

    def pin_classifier(self, which: str | None) -> dict | None:
        """Make the classifier named by `which` the default of every query until another is
        pinned; None unpins (back to the most recently indexed). Returns the pinned row."""
        if which is None:
            self.con.execute("UPDATE classifiers SET pinned_at = NULL")
            return None
        clf = self.resolve_classifier(which)
        self.con.execute(
            "UPDATE classifiers SET pinned_at = ? WHERE classifier_id = ?",
            [datetime.now(timezone.utc).replace(tzinfo=None), clf["classifier_id"]],
        )
        return clf

    def add_images(self, records: Sequence[ImageRecord]) -> None:
        if not records:
            return
        self.con.execute(
            """INSERT OR IGNORE INTO images (image_id, uri, width, height)
               SELECT unnest(?), unnest(?), unnest(?), unnest(?)""",
            [[r.image_id for r in records], [r.uri for r in records], [r.width for r in records], [r.height for r in records]],
        )

    def add_edits(self, records: Sequence[EditRecord], known: Iterable[str] | None = None) -> None:
        """Insert (or update, for a recomputed edit) edits and their node links, atomically.
        known: the ids among `records` already stored, when the caller has just looked them
        up (ensure_edits), which saves a scan of the edits table."""
        if not records:
            return
        with self.transaction():
            ids = [r.edit_id for r in records]
            stored = set(known) & set(ids) if known is not None else set(self._keys("edits", "edit_id", "edit_key", ids))
            new = [r for r in records if r.edit_id not in stored]
            again = [r for r in records if r.edit_id in stored]
            if new:
                self.con.execute(
                    """INSERT INTO edits (edit_id, image_id, editor_id, kind, prompts, direction, seed,
                                          output_sha256, cache_path, status, seconds, edit_key, image_key, editor_key)
                       SELECT r.*, nextval('item_keys'), i.image_key, d.editor_key
                       FROM (SELECT unnest(?) AS edit_id, unnest(?) AS image_id, unnest(?) AS editor_id, unnest(?) AS kind,
                                    unnest(?) AS prompts, unnest(?) AS direction, unnest(?) AS seed, unnest(?) AS output_sha256,
                                    unnest(?) AS cache_path, unnest(?) AS status, unnest(?) AS seconds) r
                       JOIN images i ON i.image_id = r.image_id
                       JOIN editors d ON d.editor_id = r.editor_id""",
                    [
                        [r.edit_id for r in new], [r.image_id for r in new], [r.editor_id for r in new],
                        [r.kind for r in new], [list(r.prompts) for r in new], [r.direction for r in new],
                        [r.seed for r in new], [r.output_sha256 for r in new], [r.cache_path for r in new],
                        [r.status for r in new], [float(r.seconds) for r in new],
                    ],
                )
                inserted = self.con.execute("SELECT count(*) FROM edits WHERE edit_id IN (SELECT unnest(?))",
                                            [[r.edit_id for r in new]]).fetchone()[0]
                if inserted != len({r.edit_id for r in new}):
                    raise DiffexError("edits refer to an image or editor that is not registered (add_images / add_editor first)")
            for r in again:  # recomputed (failed before, or its cached file was lost): same id, same key
                self.con.execute(
                    "UPDATE edits SET output_sha256 = ?, cache_path = ?, status = ?, seconds = ? WHERE edit_id = ?",
                    [r.output_sha256, r.cache_path, r.status, float(r.seconds), r.edit_id],
                )
            # new edits have new keys and so no scores yet: linking them changes no effect
            self.link_edit_nodes([(r.edit_id, n) for r in records for n in r.node_ids], refresh=bool(again))
            if again:
                self.refresh_effects(self._keys("images", "image_id", "image_key", [r.image_id for r in again]).values())

    def link_edit_nodes(self, pairs: Iterable[tuple[str, str]], refresh: bool = True) -> None:
        """Record which nodes asked for which edits (each pair once); effects follow
        (refresh=False only where the edits cannot have scores yet)."""
        pairs = list(dict.fromkeys(pairs))
        if not pairs:
            return
        with self.transaction():
            edit_keys = self._keys("edits", "edit_id", "edit_key", [p[0] for p in pairs])
            node_keys = self._keys("nodes", "node_id", "node_key", [p[1] for p in pairs])
            links = [(edit_keys[e], node_keys[n]) for e, n in pairs if e in edit_keys and n in node_keys]
            if len(links) != len(pairs):
                raise DiffexError("edit links refer to an edit or node that is not stored")
            added = self.con.execute(
                """INSERT INTO edit_links
                   SELECT DISTINCT p.edit_key, p.node_key
                   FROM (SELECT unnest($e) AS edit_key, unnest($n) AS node_key) p
                   WHERE NOT EXISTS (SELECT 1 FROM edit_links l WHERE l.edit_key = p.edit_key AND l.node_key = p.node_key)
                   RETURNING edit_key""",
                {"e": [a for a, _ in links], "n": [b for _, b in links]},
            ).fetchall()
            if added and refresh:
                self.refresh_effects(self._image_keys_of_items([r[0] for r in added]))

    def add_scores(self, classifier_id: str, item_ids: Sequence[str], logits: np.ndarray, probs: np.ndarray,
                   item_keys: Mapping[str, int] | None = None) -> None:
        """Scores of every class for each item (replacing earlier ones), with the effects they
        change, in one transaction: a batch is all or nothing. item_keys: {item id: key} when
        the caller already looked them up (ensure_scores), which saves a scan."""
        if not len(item_ids):
            return
        with self.transaction():
            keys = item_keys if item_keys is not None else self.item_keys(list(item_ids))
            missing = [i for i in item_ids if i not in keys]
            if missing:
                raise DiffexError(f"scores for items that are not stored: {missing[0]}")
            row = self.con.execute("SELECT classifier_key FROM classifiers WHERE classifier_id = ?", [classifier_id]).fetchone()
            if row is None:
                raise DiffexError(f"classifier {classifier_id[:12]} is not registered (add_classifier first)")
            item_list = [int(keys[i]) for i in item_ids]
            logits64 = np.asarray(logits, dtype=np.float64)
            probs64 = np.asarray(probs, dtype=np.float64)
            self.con.execute("DELETE FROM item_scores WHERE classifier_key = ? AND item_key IN (SELECT unnest(?))",
                             [row[0], item_list])
            self.con.execute(
                "INSERT INTO item_scores SELECT ?, unnest(?), unnest(?), unnest(?)",
                [row[0], item_list, logits64.tolist(), probs64.tolist()],
            )
            self.refresh_effects(self._image_keys_of_items(item_list), classifier_key=row[0])

    def start_run(self, command: str, args: dict) -> str:
        run_id = uuid.uuid4().hex
        self.con.execute(
            "INSERT INTO runs (run_id, command, started_at, args) VALUES (?, ?, ?, ?)",
            [run_id, command, datetime.now(timezone.utc).replace(tzinfo=None), json.dumps(args, default=str)],
        )
        return run_id

    def finish_run(self, run_id: str, stats: dict) -> None:
        self.con.execute(
            "UPDATE runs SET finished_at = ?, stats = ? WHERE run_id = ?",
            [datetime.now(timezone.utc).replace(tzinfo=None), json.dumps(stats, default=str), run_id],
        )

    # ------------------------------------------------------------------ health
    def verify_effects(self, repair: bool = False) -> dict[str, int]:
        """Rows of the derived effect tables that disagree with a recomputation from the source
        rows ({table: count}); repair=True rebuilds them (a write) when any do."""
        found = derived.drift(self.con)
        if repair and any(found.values()):
            with self.transaction():
                derived.rebuild(self.con)
        return found

    # ------------------------------------------------------------------ reads used by indexing
    def edits_by_id(self, edit_ids: Sequence[str]) -> dict[str, dict]:
        if not edit_ids:
            return {}
        rows = self._rows(
            "SELECT edit_id, output_sha256, cache_path, status FROM edits WHERE edit_id IN (SELECT unnest(?))",
            [list(edit_ids)],
        )
        return {r["edit_id"]: r for r in rows}

    def scored_items(self, classifier_id: str, item_ids: Sequence[str], item_keys: Mapping[str, int] | None = None) -> set[str]:
        """The items among `item_ids` this classifier has scored."""
        if not item_ids:
            return set()
        keys = item_keys if item_keys is not None else self.item_keys(list(item_ids))
        rows = self.con.execute(
            """SELECT s.item_key FROM item_scores s JOIN classifiers k ON k.classifier_key = s.classifier_key
               WHERE k.classifier_id = ? AND s.item_key IN (SELECT unnest(?))""",
            [classifier_id, [int(keys[i]) for i in item_ids if i in keys]],
        ).fetchall()
        done = {r[0] for r in rows}
        return {i for i in item_ids if keys.get(i) in done}

    def node_effects_for(
        self, classifier_id: str, editor_id: str, node_ids: Sequence[str], image_ids: Sequence[str]
    ) -> dict[tuple[str, str, str], float]:
        """{(node_id, direction, class_name): mean over `image_ids` of the per-image mean delta P}.
        Restricted to this run's images, so the beam search ranks what it was asked about."""
        if not node_ids or not image_ids:
            return {}
        rows = self.con.execute(
            """SELECT node_id, direction, class_name, avg(mean_delta_prob)
               FROM image_effects
               WHERE classifier_id = ? AND editor_id = ?
                 AND node_id IN (SELECT unnest(?)) AND image_id IN (SELECT unnest(?))
               GROUP BY ALL""",
            [classifier_id, editor_id, list(node_ids), list(image_ids)],
        ).fetchall()
        # NULL: every edit of the node was judged invalid, so it has no measured effect
        return {(r[0], r[1], r[2]): float(r[3]) for r in rows if r[3] is not None}

    def joint_effects_for(
        self, classifier_id: str, editor_id: str, image_ids: Sequence[str]
    ) -> dict[tuple[tuple[tuple[str, str], ...], str], dict]:
        """{(((node_id, direction), ... sorted), class_name): row} of the joint edits on `image_ids`;
        a row has nodes, directions, mean_delta_prob, sum_single_delta_prob, interaction, n_images
        (see schema/views.sql `joint_image_effects`)."""
        if not image_ids:
            return {}
        rows = self._rows(
            """SELECT node_ids, directions, nodes, class_name,
                      avg(mean_delta_prob) AS mean_delta_prob,
                      avg(sum_single_delta_prob) AS sum_single_delta_prob,
                      avg(interaction) AS interaction, count(*) AS n_images
               FROM joint_image_effects
               WHERE classifier_id = ? AND editor_id = ? AND image_id IN (SELECT unnest(?))
               GROUP BY ALL""",
            [classifier_id, editor_id, list(image_ids)],
        )
        return {(tuple(sorted(zip(r["node_ids"], r["directions"]))), r.pop("class_name")): r for r in rows}

    def paired_image_effects(
        self, classifier_a: str, classifier_b: str, class_name: str | None = None, direction: str = "add"
    ) -> list[dict]:
        """Per (node, class, image): the effect under A and under B over the very same edits
        (see schema/views.sql `paired_image_effects`); `class_name` None = every shared class."""
        try:
            return self._paired_image_effects(classifier_a, classifier_b, class_name, direction)
        except duckdb.CatalogException:
            raise DiffexError(
                f"{self.path} was written by an older diffex without the compare macros; "
                f"open it once for writing (`diffex migrate --db {self.path}`) to add them"
            ) from None

    def _paired_image_effects(self, classifier_a: str, classifier_b: str, class_name: str | None, direction: str) -> list[dict]:
        return self._rows(
            """SELECT p.*, n.label AS node, n.path, n.depth, parent.label AS parent
               FROM paired_image_effects(?, ?) p
               JOIN nodes n ON n.node_id = p.node_id
               LEFT JOIN nodes parent ON parent.node_id = n.parent_id
               WHERE p.direction = ? AND (?::VARCHAR IS NULL OR p.class_name = ?)
               ORDER BY n.path, p.class_name, p.image_id""",
            [classifier_a, classifier_b, direction, class_name, class_name],
        )

    # ------------------------------------------------------------------ embeddings (see diffex/embedding/stage.py)
    def add_embedder(self, embedder) -> None:
        self.con.execute(
            "INSERT OR IGNORE INTO embedders (embedder_id, name, spec, dim, metric) VALUES (?, ?, ?, ?, ?)",
            [embedder.embedder_id, embedder.name, embedder.spec, int(embedder.dim), embedder.metric],
        )

    def embedders(self) -> list[dict]:
        """Registered embedders, the most recently registered first, with their vector counts."""
        return self._rows(
            """SELECT m.embedder_id, m.name, m.spec, m.dim, m.metric, m.created_at,
                      (SELECT count(*) FROM embeddings x WHERE x.embedder_id = m.embedder_id) AS n_vectors
               FROM embedders m ORDER BY m.created_at DESC, m.embedder_id"""
        )

    def resolve_embedder(self, which: str | None = None) -> dict:
        """The embedder named by id, id prefix, name or spec; else the most recently registered."""
        rows = self.embedders()
        if not rows:
            raise DiffexError(f"{self.path} has no embeddings (index it with `diffex index --embedder SPEC`)")
        if which is None:
            return rows[0]
        for r in rows:
            if which in (r["embedder_id"], r["spec"], r["name"]) or (len(which) >= 6 and r["embedder_id"].startswith(which)):
                return r
        raise DiffexError(f"embedder {which!r} has no vectors in {self.path}; known: {', '.join(r['spec'] or r['name'] for r in rows)}")

    def embedded_items(self, embedder_id: str, item_ids: Sequence[str]) -> set[str]:
        if not item_ids:
            return set()
        rows = self.con.execute(
            "SELECT item_id FROM embeddings WHERE embedder_id = ? AND item_id IN (SELECT unnest(?))",
            [embedder_id, list(item_ids)],
        ).fetchall()
        return {r[0] for r in rows}

    def add_embeddings(self, embedder_id: str, item_ids: Sequence[str], item_kinds: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or replace vectors (float32 [N, dim]) in one statement; the dimension must be the embedder's."""
        if not len(item_ids):
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        row = self.con.execute("SELECT dim FROM embedders WHERE embedder_id = ?", [embedder_id]).fetchone()
        if row is None or vectors.ndim != 2 or vectors.shape != (len(item_ids), row[0]):
            raise DiffexError(f"vectors of shape {vectors.shape} do not fit embedder {embedder_id[:12]} "
                              f"(dimension {row[0] if row else 'unregistered'})")
        n, d = vectors.shape
        # a registered dict of numpy columns is scanned in bulk (a list of lists is ~30x slower)
        flat = {"row": np.repeat(np.arange(n, dtype=np.int64), d), "pos": np.tile(np.arange(d, dtype=np.int32), n),
                "val": vectors.reshape(-1)}
        meta = {"row": np.arange(n, dtype=np.int64), "item_id": np.array(list(item_ids), dtype=object),
                "item_kind": np.array(list(item_kinds), dtype=object)}
        cur = self.con.cursor()  # register() refuses a connection with a pending result
        cur.register("_diffex_vec_flat", flat)
        cur.register("_diffex_vec_meta", meta)
        try:
            cur.execute("BEGIN TRANSACTION")
            cur.execute("DELETE FROM embeddings WHERE embedder_id = ? AND item_id IN (SELECT item_id FROM _diffex_vec_meta)",
                        [embedder_id])
            cur.execute(
                """INSERT INTO embeddings (embedder_id, item_id, item_kind, vector)
                   SELECT ?, m.item_id, m.item_kind, v.vector
                   FROM (SELECT row, list(val ORDER BY pos) AS vector FROM _diffex_vec_flat GROUP BY row) v
                   JOIN _diffex_vec_meta m USING (row)""",
                [embedder_id],
            )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()

    def copy_embeddings(self, embedder_id: str, pairs: Sequence[tuple[str, str]], item_kind: str) -> None:
        """For each (source item, target item), store the source's vector again under the target
        id (a node's vector is the vector of its prompt text)."""
        if not pairs:
            return
        with self.transaction():
            self.con.execute(
                """CREATE OR REPLACE TEMP TABLE _copied AS
                   SELECT e.embedder_id, p.target AS item_id, ? AS item_kind, e.vector
                   FROM (SELECT unnest(?) AS source, unnest(?) AS target) p
                   JOIN embeddings e ON e.embedder_id = ? AND e.item_id = p.source""",
                [item_kind, [p[0] for p in pairs], [p[1] for p in pairs], embedder_id],
            )
            self.con.execute("DELETE FROM embeddings WHERE embedder_id = ? AND item_id IN (SELECT item_id FROM _copied)",
                             [embedder_id])
            self.con.execute("INSERT INTO embeddings SELECT * FROM _copied")
            self.con.execute("DROP TABLE _copied")

    def embeddings(
        self, embedder_id: str, kinds: Sequence[str] | None = None, item_ids: Sequence[str] | None = None,
        exclude_ids: Sequence[str] | None = None,
    ) -> tuple[list[str], list[str], np.ndarray]:
        """(item ids, kinds, float32 [N, dim]) ordered by item id."""
        sql = "SELECT item_id, item_kind, vector FROM embeddings WHERE embedder_id = ?"
        params: list[Any] = [embedder_id]
        if kinds is not None:
            sql += " AND item_kind IN (SELECT unnest(?))"
            params.append(list(kinds))
        if item_ids is not None:
            sql += " AND item_id IN (SELECT unnest(?))"
            params.append(list(item_ids))
        if exclude_ids:
            sql += " AND item_id NOT IN (SELECT unnest(?))"
            params.append(list(exclude_ids))
        cols = self.con.execute(sql + " ORDER BY item_id", params).fetchnumpy()
        ids = [str(i) for i in cols["item_id"]]
        dim = self.con.execute("SELECT dim FROM embedders WHERE embedder_id = ?", [embedder_id]).fetchone()
        matrix = (np.stack([np.asarray(v, dtype=np.float32) for v in cols["vector"]]) if ids
                  else np.zeros((0, dim[0] if dim else 0), np.float32))
        return ids, [str(k) for k in cols["item_kind"]], matrix

    def embedding_fingerprint(self, embedder_id: str, kinds: Sequence[str], item_ids: Sequence[str] | None = None) -> tuple[int, str]:
        """(count, checksum over ids AND vectors) of stored vectors: what a derived vector index
        must match to be trusted."""
        sql = """SELECT count(*), coalesce(sum(hash(item_id, vector)), 0)::VARCHAR FROM embeddings
                 WHERE embedder_id = ? AND item_kind IN (SELECT unnest(?))"""
        params: list[Any] = [embedder_id, list(kinds)]
        if item_ids is not None:
            sql += " AND item_id IN (SELECT unnest(?))"
            params.append(list(item_ids))
        n, checksum = self.con.execute(sql, params).fetchone()
        return int(n), str(checksum)

    def validity_rows(self, embedder_id: str, edit_ids: Sequence[str]) -> dict[str, dict]:
        if not edit_ids:
            return {}
        rows = self._rows(
            "SELECT * FROM edit_validity WHERE embedder_id = ? AND edit_id IN (SELECT unnest(?))",
            [embedder_id, list(edit_ids)],
        )
        return {r["edit_id"]: r for r in rows}

    def add_validity(self, embedder_id: str, rows: Sequence[tuple[str, float, float, float, bool]]) -> None:
        """rows: (edit_id, direction_sim, baseline_sim, threshold, valid)."""
        if not rows:
            return
        cols = list(zip(*rows))
        with self.transaction():
            self.con.execute("DELETE FROM edit_validity WHERE embedder_id = ? AND edit_id IN (SELECT unnest(?))",
                             [embedder_id, list(cols[0])])
            self.con.execute(
                """INSERT INTO edit_validity (edit_id, embedder_id, direction_sim, baseline_sim, threshold, valid)
                   SELECT unnest(?), ?, unnest(?), unnest(?), unnest(?), unnest(?)""",
                [list(cols[0]), embedder_id, [float(x) for x in cols[1]], [float(x) for x in cols[2]],
                 [float(x) for x in cols[3]], [bool(x) for x in cols[4]]],
            )
            images = self.con.execute("SELECT DISTINCT image_key FROM edits WHERE edit_id IN (SELECT unnest(?))",
                                      [list(cols[0])]).fetchall()
            self.refresh_effects(r[0] for r in images)

    # ---- side effects (issue 13; diffex/embedding/side_effects.py computes them)
    def side_checked(self, embedder_id: str, edit_ids: Sequence[str]) -> dict[str, str | None]:
        """{edit id: side_fp} of the edits among `edit_ids` this embedder judged (None: not checked)."""
        if not edit_ids:
            return {}
        rows = self.con.execute("SELECT edit_id, side_fp FROM edit_validity WHERE embedder_id = ? AND edit_id IN (SELECT unnest(?))",
                                [embedder_id, list(edit_ids)]).fetchall()
        return dict(rows)

    def add_side_effects(self, embedder_id: str, side_fp: str, edit_ids: Sequence[str],
                         rows: Sequence[tuple[str, str, float, float]]) -> None:
        """Replace the side effects of `edit_ids` (which must have validity rows of this embedder)
        by `rows` (edit_id, node_id, direction_sim, threshold) and mark them checked against side_fp."""
        if not edit_ids:
            return
        with self.transaction():
            keys = self._keys("edits", "edit_id", "edit_key", list(edit_ids))
            nodes = self._keys("nodes", "node_id", "node_key", sorted({r[1] for r in rows}))
            self.con.execute("DELETE FROM edit_side_effects WHERE embedder_id = ? AND edit_key IN (SELECT unnest(?))",
                             [embedder_id, list(keys.values())])
            if rows:
                self.con.execute("INSERT INTO edit_side_effects SELECT ?, unnest(?), unnest(?), unnest(?), unnest(?)",
                                 [embedder_id, [keys[r[0]] for r in rows], [nodes[r[1]] for r in rows],
                                  [float(r[2]) for r in rows], [float(r[3]) for r in rows]])
            self.con.execute("UPDATE edit_validity SET side_fp = ? WHERE embedder_id = ? AND edit_id IN (SELECT unnest(?))",
                             [side_fp, embedder_id, list(edit_ids)])
            self.refresh_effects(self._image_keys_of_items(list(keys.values())))
    def edit_node_paths(self, edit_ids: Sequence[str]) -> dict[str, list[tuple[str, ...]]]:
        """{edit id: paths (label tuples) of the nodes it was made for}."""
        if not edit_ids:
            return {}
        rows = self.con.execute("SELECT en.edit_id, list(n.path) FROM edit_nodes en JOIN nodes n ON n.node_id = en.node_id "
                                "WHERE en.edit_id IN (SELECT unnest(?)) GROUP BY en.edit_id", [list(edit_ids)]).fetchall()
        return {r[0]: [tuple(p.split(" > ")) for p in r[1]] for r in rows}
    # ---- end side effects

    def edit_concepts(self, edit_ids: Sequence[str]) -> dict[str, list[str]]:
        """{edit id: prompts of the nodes it was made for and of all their descendants}: a group
        edit ("beard") shows one of its subtypes, so any of them is evidence that it worked."""
        if not edit_ids:
            return {}
        rows = self.con.execute(
            """WITH RECURSIVE d(edit_id, node_id, prompt) AS (
                   SELECT en.edit_id, n.node_id, n.prompt FROM edit_nodes en JOIN nodes n ON n.node_id = en.node_id
                   WHERE en.edit_id IN (SELECT unnest(?))
                   UNION
                   SELECT d.edit_id, c.node_id, c.prompt FROM d JOIN nodes c ON c.parent_id = d.node_id
               )
               SELECT edit_id, list(DISTINCT prompt ORDER BY prompt) FROM d GROUP BY edit_id""",
            [list(edit_ids)],
        ).fetchall()
        return {r[0]: list(r[1]) for r in rows}

    def single_edits(self, edit_ids: Sequence[str]) -> list[dict]:
        """Single edits among `edit_ids` with their image's null-edit baseline (for validity)."""
        if not edit_ids:
            return []
        return self._rows(
            """SELECT e.edit_id, e.image_id, e.prompts[1] AS prompt, e.direction, e.cache_path,
                      b.edit_id AS baseline_id
               FROM edits e
               JOIN edits b ON b.image_id = e.image_id AND b.editor_id = e.editor_id
                           AND b.kind = 'baseline' AND b.status = 'ok'
               WHERE e.kind = 'single' AND e.status = 'ok' AND e.edit_id IN (SELECT unnest(?))
               ORDER BY e.edit_id""",
            [list(edit_ids)],
        )

    # ------------------------------------------------------------------ taxonomy versions and VLM answers
    def taxonomy_versions(self) -> list[dict]:
        """Every taxonomy version, the newest first, with its lineage and node count."""
        return self._rows(
            """SELECT t.taxonomy_id, t.name, t.domain, t.source, t.created_at, t.parent_taxonomy_id, t.note,
                      (SELECT count(*) FROM taxonomy_nodes x WHERE x.taxonomy_id = t.taxonomy_id AND x.active) AS nodes
               FROM taxonomies t ORDER BY t.created_at DESC, t.rowid DESC"""
        )

    def resolve_taxonomy(self, which: str | None = None) -> dict:
        """The version named by id, id prefix (6+ characters) or name (its newest); else the newest."""
        rows = self.taxonomy_versions()
        if not rows:
            raise DiffexError(f"{self.path} has no taxonomy yet (run `diffex index` or `diffex taxonomy propose`)")
        if which is None:
            return rows[0]
        for r in rows:
            if which in (r["taxonomy_id"], r["name"]) or (len(which) >= 6 and r["taxonomy_id"].startswith(which)):
                return r
        raise DiffexError(f"unknown taxonomy {which!r}; see `diffex taxonomy versions --db {self.path}`")

    def taxonomy_node_rows(self, taxonomy_id: str) -> list[dict]:
        """The active nodes of one version, in the order they were added (parents before children)."""
        return self._rows(
            """SELECT n.node_id, n.parent_id, n.path, n.label, n.depth, n.prompt
               FROM taxonomy_nodes tn JOIN nodes n USING (node_id)
               WHERE tn.taxonomy_id = ? AND tn.active ORDER BY tn.rowid""",
            [taxonomy_id],
        )

    def promote_taxonomy(self, taxonomy_id: str) -> None:
        """Make an existing version the newest again (curation arrived back at it)."""
        self.con.execute("UPDATE taxonomies SET created_at = current_timestamp WHERE taxonomy_id = ?", [taxonomy_id])

    def vlm_response(self, response_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM vlm_responses WHERE response_id = ?", [response_id])
        return rows[0] if rows else None

    def put_vlm_response(self, response_id: str, model: str, prompt: str, image_ids: Sequence[str],
                         raw_text: str, parsed: Any, status: str) -> None:
        self.con.execute(
            """INSERT OR REPLACE INTO vlm_responses (response_id, model, prompt, image_ids, raw_text, parsed, status)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            [response_id, model, prompt, list(image_ids), raw_text,
             None if parsed is None else json.dumps(parsed, ensure_ascii=False), status],
        )

    # ------------------------------------------------------------------ reads for users
    def classifiers(self) -> list[dict]:
        return self._rows(
            """SELECT k.classifier_id, k.name, k.spec, k.indexed_at, k.pinned_at IS NOT NULL AS pinned,
                      (SELECT list(class_name ORDER BY class_index) FROM classes c
                       WHERE c.classifier_id = k.classifier_id) AS class_names
               FROM classifiers k ORDER BY pinned_at DESC NULLS LAST, indexed_at DESC NULLS LAST"""
        )

    def resolve_classifier(self, which: str | None = None) -> dict:
        """The classifier named by id, id prefix, name or spec; else the pinned one, else the most
        recently indexed (the rule of the SQL macro pick_classifier)."""
        rows = self.classifiers()
        if not rows:
            raise DiffexError(f"{self.path} has no classifiers yet (run `diffex index`)")
        if which is None:
            return rows[0]
        for r in rows:
            if which in (r["classifier_id"], r["spec"], r["name"]) or (len(which) >= 6 and r["classifier_id"].startswith(which)):
                return r
        raise DiffexError(f"unknown classifier {which!r}; known: {', '.join(r['spec'] or r['name'] for r in rows)}")

    def check_class(self, class_name: str, classifier: str | None = None) -> dict:
        clf = self.resolve_classifier(classifier)
        if class_name not in clf["class_names"]:
            raise DiffexError(
                f"unknown class {class_name!r} for classifier {clf['spec'] or clf['name']}; "
                f"classes: {', '.join(clf['class_names'])}"
            )
        return clf

    def top_subtypes(self, class_name: str, k: int = 10, classifier: str | None = None, direction: str = "add",
                     include_invalid: bool = False) -> list[dict]:
        """Ranked subtypes for `class_name` (see schema/views.sql `top_subtypes`); edits judged
        invalid by an embedder are left out (and counted in `n_invalid`) unless include_invalid."""
        clf = self.check_class(class_name, classifier)
        return self._rows(
            "SELECT * FROM top_subtypes(?, ?, classifier := ?, edit_direction := ?, include_invalid := ?)",
            [class_name, int(k), clf["classifier_id"], direction, bool(include_invalid)],
        )

    def effect_tree(self, class_name: str, classifier: str | None = None, direction: str = "add") -> list[dict]:
        clf = self.check_class(class_name, classifier)
        return self._rows(
            "SELECT * FROM effect_tree(?, classifier := ?, edit_direction := ?)", [class_name, clf["classifier_id"], direction]
        )

    def info(self) -> dict:
        count = lambda t: self.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: E731 (t from a fixed list)
        return {
            "db": str(self.path),
            "schema_version": migrate.database_version(self.con),
            "cache_dir": str(self.cache.root),
            "taxonomies": count("taxonomies"),
            "images": count("images"),
            "nodes": count("nodes"),
            "edits": count("edits"),
            "baselines": self.con.execute("SELECT count(*) FROM edits WHERE kind = 'baseline'").fetchone()[0],
            "edits_blocked": self.con.execute("SELECT count(*) FROM edits WHERE status = 'blocked'").fetchone()[0],
            "scores": self.con.execute("SELECT coalesce(sum(len(probs)), 0) FROM item_scores").fetchone()[0],
            "classifiers": [
                {k: (str(v) if k == "indexed_at" and v is not None else v) for k, v in r.items()} for r in self.classifiers()
            ],
            "editors": self._rows("SELECT editor_id, name, spec FROM editors ORDER BY created_at"),
            "embedders": [{k: v for k, v in r.items() if k != "created_at"} for r in self.embedders()],
        }


    # ------------------------------------------------------------------ reads for `diffex verify` (diffex/store/verify.py)
    def edit_files(self) -> list[dict]:
        """Every edit's edit_id, status, output_sha256 and cache_path, by edit id."""
        return self._rows("SELECT edit_id, status, output_sha256, cache_path FROM edits ORDER BY edit_id")

    def image_and_editor_ids(self) -> tuple[set[str], set[str]]:
        """The ids of every stored image and editor."""
        images = {r[0] for r in self.con.execute("SELECT image_id FROM images").fetchall()}
        editors = {r[0] for r in self.con.execute("SELECT editor_id FROM editors").fetchall()}
        return images, editors

    def dangling_rows(self, examples: int = 3) -> dict[str, dict]:
        """Rows that point at a row that is not there (diffex itself never writes them):
        {what: {"count": n, "examples": [up to `examples` descriptions]}} for edits whose image
        or editor is missing, item scores whose item (image or edit) or classifier is missing,
        and edit links whose edit or node is missing."""
        checks = {
            "edits_without_image": """SELECT e.edit_id AS x FROM edits e LEFT JOIN images i ON i.image_key = e.image_key
                                      WHERE i.image_key IS NULL OR i.image_id <> e.image_id""",
            "edits_without_editor": """SELECT e.edit_id AS x FROM edits e LEFT JOIN editors d ON d.editor_key = e.editor_key
                                       WHERE d.editor_key IS NULL OR d.editor_id <> e.editor_id""",
            "scores_without_item": """SELECT 'item_key ' || s.item_key AS x FROM item_scores s
                                      WHERE NOT EXISTS (SELECT 1 FROM images i WHERE i.image_key = s.item_key)
                                        AND NOT EXISTS (SELECT 1 FROM edits e WHERE e.edit_key = s.item_key)""",
            "scores_without_classifier": """SELECT 'classifier_key ' || s.classifier_key AS x FROM item_scores s
                                            WHERE NOT EXISTS (SELECT 1 FROM classifiers k WHERE k.classifier_key = s.classifier_key)""",
            "links_without_edit": """SELECT 'edit_key ' || l.edit_key AS x FROM edit_links l
                                     WHERE NOT EXISTS (SELECT 1 FROM edits e WHERE e.edit_key = l.edit_key)""",
            "links_without_node": """SELECT 'node_key ' || l.node_key AS x FROM edit_links l
                                     WHERE NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_key = l.node_key)""",
        }
        out = {}
        for what, sql in checks.items():  # sql from the fixed dict above
            n, first = self.con.execute(f"SELECT count(*), list(DISTINCT x ORDER BY x)[1:?] FROM ({sql})",
                                        [int(examples)]).fetchone()
            out[what] = {"count": int(n), "examples": list(first or [])}
        return out


# Every public method runs under hold(): in shared mode the file is open only while it runs.
for _name, _fn in list(vars(Store).items()):
    if isinstance(_fn, types.FunctionType) and not _name.startswith("_") and _name not in ("hold", "release", "close", "transaction"):
        setattr(Store, _name, _held(_fn))
