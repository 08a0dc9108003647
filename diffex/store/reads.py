"""Store reads for people and commands: taxonomy versions and VLM answers, classifiers and the
resolve rule, ranked effects, info, and the rows `diffex search` and `diffex verify` read.
Mixed into Store (core.py)."""

from __future__ import annotations

import json
from typing import Any, Sequence


from . import migrate
from ..errors import DiffexError


class UserReads:
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
        return self._resolve(self.taxonomy_versions(), "taxonomies", "taxonomy_id", which,
                             f"{self.path} has no taxonomy yet (run `diffex index` or `diffex taxonomy propose`)",
                             lambda rows: f"unknown taxonomy {which!r}; see `diffex taxonomy versions --db {self.path}`")

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
        recently indexed (the rule of the SQL macros named_by and pick_classifier)."""
        return self._resolve(self.classifiers(), "classifiers", "classifier_id", which,
                             f"{self.path} has no classifiers yet (run `diffex index`)",
                             lambda rows: f"unknown classifier {which!r}; known: {', '.join(r['spec'] or r['name'] for r in rows)}")

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


    # ------------------------------------------------------------------ reads for `diffex search`
    def edit_pixel_hashes(self, edit_ids: Sequence[str]) -> dict[str, str]:
        """edit id -> sha256 of its output pixels (two edits can make the same picture)."""
        with self.hold():
            return dict(self.con.execute(
                "SELECT edit_id, output_sha256 FROM edits WHERE edit_id IN (SELECT unnest(?))", [list(edit_ids)]
            ).fetchall())

    def item_kinds(self, item_ids: Sequence[str]) -> dict[str, str]:
        """item id -> 'image', the edit's kind ('baseline' | 'single' | 'joint'), or its status when
        it is not 'ok' (a blocked edit's blank pixels are never a search result)."""
        rows = self._rows(
            """SELECT edit_id AS item_id, CASE WHEN status = 'ok' THEN kind ELSE status END AS kind
               FROM edits WHERE edit_id IN (SELECT unnest($ids))
               UNION ALL SELECT image_id, 'image' FROM images WHERE image_id IN (SELECT unnest($ids))""",
            {"ids": list(item_ids)},
        )
        return {r["item_id"]: r["kind"] for r in rows}

    def describe_edits(self, edit_ids: Sequence[str], classifier_id: str | None, class_name: str | None) -> list[dict]:
        """Edits with their image, node, validity and (given a classifier and class) effect."""
        return self._rows(
            """SELECT e.edit_id, e.image_id, i.uri, e.direction, e.cache_path, array_to_string(e.prompts, ' + ') AS prompt,
                      (SELECT min(n.label) FROM edit_nodes en JOIN nodes n ON n.node_id = en.node_id WHERE en.edit_id = e.edit_id) AS node,
                      (SELECT min(n.path) FROM edit_nodes en JOIN nodes n ON n.node_id = en.node_id WHERE en.edit_id = e.edit_id) AS path,
                      coalesce(ev.valid, TRUE) AS valid, ev.direction_sim,
                      d.prob_edit AS prob, d.delta_prob
               FROM edits e JOIN images i ON i.image_id = e.image_id
               LEFT JOIN edit_validity_current ev ON ev.edit_id = e.edit_id
               LEFT JOIN (SELECT DISTINCT edit_id, prob_edit, delta_prob FROM edit_deltas
                          WHERE classifier_id = $clf AND class_name = $cls) d ON d.edit_id = e.edit_id
               WHERE e.edit_id IN (SELECT unnest($ids))""",
            {"ids": list(edit_ids), "clf": classifier_id, "cls": class_name},
        )

    def describe_images(self, image_ids: Sequence[str], classifier_id: str | None, class_name: str | None) -> list[dict]:
        """Original images in the row shape of describe_edits, with their score for the class."""
        return self._rows(
            """SELECT NULL AS edit_id, i.image_id, i.uri, NULL AS direction, NULL AS cache_path, NULL AS prompt,
                      NULL AS node, NULL AS path, NULL AS valid, NULL AS direction_sim, s.prob, NULL AS delta_prob
               FROM images i
               LEFT JOIN class_scores s ON s.item_id = i.image_id AND s.classifier_id = $clf AND s.class_name = $cls
               WHERE i.image_id IN (SELECT unnest($ids))""",
            {"ids": list(image_ids), "clf": classifier_id, "cls": class_name},
        )

    def newest_domain(self) -> str | None:
        rows = self._rows("SELECT domain FROM taxonomies ORDER BY created_at DESC LIMIT 1")
        return rows[0]["domain"] if rows else None

    def node_rows(self, node_ids: Sequence[str]) -> list[dict]:
        """node_id, label, path, depth and the parent's label of each node."""
        return self._rows(
            """SELECT n.node_id, n.label, n.path, n.depth, p.label AS parent FROM nodes n
               LEFT JOIN nodes p ON p.node_id = n.parent_id WHERE n.node_id IN (SELECT unnest(?))""",
            [list(node_ids)],
        )

    # ------------------------------------------------------------------ reads for `diffex verify` (diffex/indexing/verify.py)
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
