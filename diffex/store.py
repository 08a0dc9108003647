"""The attribution store: one DuckDB file, the single source of truth. Only this module
(and query.py's read-only sessions) talk to DuckDB."""

from __future__ import annotations

import errno
import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import duckdb
import numpy as np

from . import migrate
from .cache import ImageCache
from .errors import DiffexError
from .types import EditRecord, ImageRecord, Taxonomy


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


def connect(path: Path, read_only: bool, config: dict | None = None):
    """Open DuckDB with a one-line error for the usual failures (locked, not a database)."""
    try:
        return duckdb.connect(str(path), read_only=read_only, config=config or {})
    except duckdb.IOException as exc:
        msg = str(exc).splitlines()[0]
        if "lock" in msg.lower():
            raise DiffexError(f"database {path} is in use by another process (an index run?): {msg}") from None
        raise DiffexError(f"cannot open database {path}: {msg}") from None
    except duckdb.Error as exc:
        raise DiffexError(f"cannot open database {path}: {str(exc).splitlines()[0]}") from None


class Store:
    """A diffex database. `Store.open(path)` creates or migrates it; `read_only=True` never writes."""

    def __init__(self, con, path: Path, read_only: bool, cache_dir: Path | None = None):
        self.con = con
        self.path = path
        self.read_only = read_only
        self.cache = ImageCache(cache_dir or default_cache_dir(path))

    @classmethod
    def open(cls, path: "str | Path", read_only: bool = False, cache_dir: "str | Path | None" = None) -> "Store":
        path = Path(path)
        check_db_path(path, read_only)
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        con = connect(path, read_only)
        try:
            check_intact(con, path)
            if read_only:
                version = migrate.database_version(con)
                migrate.check_readable(version)
                if version is None:
                    raise DiffexError(f"{path} is an empty database, not a diffex store")
                if version < migrate.current_version():
                    raise DiffexError(
                        f"database schema version {version} is older than this diffex ({migrate.current_version()}); "
                        "open it once for writing (e.g. `diffex info --migrate`) to upgrade"
                    )
            else:
                migrate.migrate(con)
        except BaseException:
            con.close()
            raise
        return cls(con, path, read_only, Path(cache_dir) if cache_dir else None)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _rows(self, sql: str, params: Sequence | dict | None = None) -> list[dict]:
        cur = self.con.execute(sql, params or [])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def transaction(self):
        return _Transaction(self.con)

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
            self.con.execute(
                """INSERT OR REPLACE INTO nodes (node_id, parent_id, path, label, depth, prompt)
                   SELECT unnest(?), unnest(?), unnest(?), unnest(?), unnest(?), unnest(?)""",
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
        """Make this classifier the default of the query macros (the most recently indexed)."""
        self.con.execute(
            "UPDATE classifiers SET indexed_at = ? WHERE classifier_id = ?",
            [datetime.now(timezone.utc).replace(tzinfo=None), classifier_id],
        )

    def add_images(self, records: Sequence[ImageRecord]) -> None:
        if not records:
            return
        self.con.execute(
            """INSERT OR IGNORE INTO images (image_id, uri, width, height)
               SELECT unnest(?), unnest(?), unnest(?), unnest(?)""",
            [[r.image_id for r in records], [r.uri for r in records], [r.width for r in records], [r.height for r in records]],
        )

    def add_edits(self, records: Sequence[EditRecord]) -> None:
        """Insert (or replace, for a recomputed edit) edits and their node links, atomically."""
        if not records:
            return
        with self.transaction():
            self.con.execute(
                """INSERT OR REPLACE INTO edits (edit_id, image_id, editor_id, kind, prompts, direction, seed,
                                                 output_sha256, cache_path, status, seconds)
                   SELECT unnest(?), unnest(?), unnest(?), unnest(?), unnest(?), unnest(?), unnest(?),
                          unnest(?), unnest(?), unnest(?), unnest(?)""",
                [
                    [r.edit_id for r in records],
                    [r.image_id for r in records],
                    [r.editor_id for r in records],
                    [r.kind for r in records],
                    [list(r.prompts) for r in records],
                    [r.direction for r in records],
                    [r.seed for r in records],
                    [r.output_sha256 for r in records],
                    [r.cache_path for r in records],
                    [r.status for r in records],
                    [float(r.seconds) for r in records],
                ],
            )
            self.link_edit_nodes([(r.edit_id, n) for r in records for n in r.node_ids])

    def link_edit_nodes(self, pairs: Iterable[tuple[str, str]]) -> None:
        pairs = list(pairs)
        if pairs:
            self.con.execute(
                "INSERT OR IGNORE INTO edit_nodes SELECT unnest(?), unnest(?)",
                [[p[0] for p in pairs], [p[1] for p in pairs]],
            )

    def add_scores(self, classifier_id: str, item_ids: Sequence[str], logits: np.ndarray, probs: np.ndarray) -> None:
        """Scores of every class for each item; one transaction, so a batch is all or nothing."""
        if not len(item_ids):
            return
        n, c = logits.shape
        self.con.execute(
            """INSERT OR REPLACE INTO scores (classifier_id, item_id, class_index, logit, prob)
               SELECT ?, unnest(?), unnest(?), unnest(?), unnest(?)""",
            [
                classifier_id,
                [i for i in item_ids for _ in range(c)],
                list(range(c)) * n,
                logits.reshape(-1).tolist(),
                probs.reshape(-1).tolist(),
            ],
        )

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

    # ------------------------------------------------------------------ reads used by indexing
    def edits_by_id(self, edit_ids: Sequence[str]) -> dict[str, dict]:
        if not edit_ids:
            return {}
        rows = self._rows(
            "SELECT edit_id, output_sha256, cache_path, status FROM edits WHERE edit_id IN (SELECT unnest(?))",
            [list(edit_ids)],
        )
        return {r["edit_id"]: r for r in rows}

    def scored_items(self, classifier_id: str, item_ids: Sequence[str]) -> set[str]:
        if not item_ids:
            return set()
        rows = self.con.execute(
            "SELECT DISTINCT item_id FROM scores WHERE classifier_id = ? AND item_id IN (SELECT unnest(?))",
            [classifier_id, list(item_ids)],
        ).fetchall()
        return {r[0] for r in rows}

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

    # ------------------------------------------------------------------ embeddings (see diffex/embed.py)
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
            cur.execute(
                """INSERT OR REPLACE INTO embeddings (embedder_id, item_id, item_kind, vector)
                   SELECT ?, m.item_id, m.item_kind, v.vector
                   FROM (SELECT row, list(val ORDER BY pos) AS vector FROM _diffex_vec_flat GROUP BY row) v
                   JOIN _diffex_vec_meta m USING (row)""",
                [embedder_id],
            )
        finally:
            cur.close()

    def copy_embeddings(self, embedder_id: str, pairs: Sequence[tuple[str, str]], item_kind: str) -> None:
        """For each (source item, target item), store the source's vector again under the target
        id (a node's vector is the vector of its prompt text)."""
        if not pairs:
            return
        self.con.execute(
            """INSERT OR REPLACE INTO embeddings (embedder_id, item_id, item_kind, vector)
               SELECT e.embedder_id, p.target, ?, e.vector
               FROM (SELECT unnest(?) AS source, unnest(?) AS target) p
               JOIN embeddings e ON e.embedder_id = ? AND e.item_id = p.source""",
            [item_kind, [p[0] for p in pairs], [p[1] for p in pairs], embedder_id],
        )

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
        self.con.execute(
            """INSERT OR REPLACE INTO edit_validity (edit_id, embedder_id, direction_sim, baseline_sim, threshold, valid)
               SELECT unnest(?), ?, unnest(?), unnest(?), unnest(?), unnest(?)""",
            [list(cols[0]), embedder_id, [float(x) for x in cols[1]], [float(x) for x in cols[2]],
             [float(x) for x in cols[3]], [bool(x) for x in cols[4]]],
        )

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
            """SELECT k.classifier_id, k.name, k.spec, k.indexed_at,
                      (SELECT list(class_name ORDER BY class_index) FROM classes c
                       WHERE c.classifier_id = k.classifier_id) AS class_names
               FROM classifiers k ORDER BY indexed_at DESC NULLS LAST"""
        )

    def resolve_classifier(self, which: str | None = None) -> dict:
        """The classifier named by id, id prefix, name or spec; else the most recently indexed."""
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
            "scores": count("scores"),
            "classifiers": [
                {k: (str(v) if k == "indexed_at" and v is not None else v) for k, v in r.items()} for r in self.classifiers()
            ],
            "editors": self._rows("SELECT editor_id, name, spec FROM editors ORDER BY created_at"),
            "embedders": [{k: v for k, v in r.items() if k != "created_at"} for r in self.embedders()],
        }


class _Transaction:
    def __init__(self, con):
        self.con = con

    def __enter__(self):
        self.con.execute("BEGIN TRANSACTION")
        return self

    def __exit__(self, exc_type, exc, tb):
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
