"""The attribution store: one DuckDB file, the single source of truth. Only this module
(and query.py's read-only sessions) talk to DuckDB."""

from __future__ import annotations

import json
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


def _check_path(path: Path, read_only: bool) -> None:
    if path.is_dir():
        raise DiffexError(f"database path {path} is a directory; give a file such as {path / 'diffex.duckdb'}")
    if read_only and not path.exists():
        raise DiffexError(f"no database at {path} (run `diffex index` or `diffex demo` first)")


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
        _check_path(path, read_only)
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        con = connect(path, read_only)
        try:
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
    def add_taxonomy(self, taxonomy: Taxonomy, source: str | None = None) -> None:
        with self.transaction():
            self.con.execute(
                "INSERT OR IGNORE INTO taxonomies (taxonomy_id, name, domain, source) VALUES (?, ?, ?, ?)",
                [taxonomy.taxonomy_id, taxonomy.name, taxonomy.domain, source],
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
            self.con.execute(
                "INSERT OR IGNORE INTO taxonomy_nodes (taxonomy_id, node_id) SELECT ?, unnest(?)",
                [taxonomy.taxonomy_id, [n.node_id for n in nodes]],
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
        return {(r[0], r[1], r[2]): float(r[3]) for r in rows}

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

    def top_subtypes(self, class_name: str, k: int = 10, classifier: str | None = None, direction: str = "add") -> list[dict]:
        """Ranked subtypes for `class_name` (see schema/views.sql `top_subtypes`)."""
        clf = self.check_class(class_name, classifier)
        return self._rows(
            "SELECT * FROM top_subtypes(?, ?, classifier := ?, edit_direction := ?)",
            [class_name, int(k), clf["classifier_id"], direction],
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
            "scores": count("scores"),
            "classifiers": [
                {k: (str(v) if k == "indexed_at" and v is not None else v) for k, v in r.items()} for r in self.classifiers()
            ],
            "editors": self._rows("SELECT editor_id, name, spec FROM editors ORDER BY created_at"),
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
