"""Store reads the index run and the comparison need: edits by id, what is scored, node and
joint effects of a set of images. Mixed into Store (core.py)."""

from __future__ import annotations

from typing import Mapping, Sequence

import duckdb

from ..errors import DiffexError


class EffectReads:
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
