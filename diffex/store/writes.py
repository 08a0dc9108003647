"""Store writes: taxonomies, editors, classifiers, images, edits, scores, runs; each keeps the
derived effect tables current in the same transaction (derived.py). Mixed into Store (core.py)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Iterable, Mapping, Sequence

import numpy as np

from . import derived
from ..errors import DiffexError
from ..types import EditRecord, ImageRecord, Taxonomy


class Writes:
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
