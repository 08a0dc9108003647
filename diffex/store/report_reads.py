"""Store reads for `diffex report` (diffex/report/) and `diffex check` (diffex/analysis/policy.py),
issue 14: thin wrappers over the macros of schema/views.sql's "report and policy checks" block.
Mixed into Store (core.py)."""

from __future__ import annotations

import json
from typing import Sequence

import duckdb

from ..errors import DiffexError


class ReportReads:
    # ------------------------------------------------------------------ reads for `diffex report` and `diffex check` (issue 14)
    # Thin wrappers over the macros of schema/views.sql's "report and policy checks" block;
    # the classifier is resolved (and the class checked) first, so a bad name is one line.
    def _report_rows(self, sql: str, params: Sequence | dict) -> list[dict]:
        try:
            return self._rows(sql, params)
        except duckdb.CatalogException:
            raise DiffexError(
                f"{self.path} was written by an older diffex without the report macros; "
                f"open it once for writing (`diffex migrate --db {self.path}`) to add them"
            ) from None

    def node_effects(self, class_name: str, classifier: str | None = None, direction: str = "add",
                     include_invalid: bool = False) -> list[dict]:
        """Every node's effect on `class_name` (the `effects_for` macro: mean delta P, 95% CI over
        images, n_images, n_edits, n_invalid, editor_id), unranked."""
        clf = self.check_class(class_name, classifier)
        return self._rows("SELECT * FROM effects_for(?, classifier := ?, edit_direction := ?, include_invalid := ?)",
                          [class_name, clf["classifier_id"], direction, bool(include_invalid)])

    def node_edit_status(self) -> list[dict]:
        """Per (node, editor, direction): single edits in all, blocked and failed (view node_edit_status)."""
        return self._report_rows("SELECT * FROM node_edit_status", [])

    def report_images(self, class_name: str, classifier: str | None = None, direction: str = "add") -> list[dict]:
        """Every image with P(class) of its original and baseline, the baseline's cached file and
        its strongest node effect, the most affected first (macro report_images)."""
        clf = self.check_class(class_name, classifier)
        return self._report_rows("SELECT * FROM report_images(?, classifier := ?, edit_direction := ?)",
                                 [class_name, clf["classifier_id"], direction])

    def report_edits(self, class_name: str, node_ids: Sequence[str], image_ids: Sequence[str],
                     classifier: str | None = None) -> list[dict]:
        """Every single edit of these nodes on these images, any status, with its cached file,
        validity and P(class) (macro report_edits)."""
        clf = self.check_class(class_name, classifier)
        if not node_ids or not image_ids:
            return []
        return self._report_rows("SELECT * FROM report_edits(?, ?, ?, classifier := ?)",
                                 [class_name, list(node_ids), list(image_ids), clf["classifier_id"]])

    def image_effects_of(self, class_name: str, node_ids: Sequence[str], classifier: str | None = None,
                         direction: str = "add") -> list[dict]:
        """Per (node, image): the node's effect on that image (view image_effects), for these nodes."""
        clf = self.check_class(class_name, classifier)
        if not node_ids:
            return []
        return self._rows(
            """SELECT node_id, image_id, editor_id, prob_baseline, mean_delta_prob, n_edits, n_invalid
               FROM image_effects WHERE classifier_id = ? AND class_name = ? AND direction = ?
                 AND node_id IN (SELECT unnest(?))""",
            [clf["classifier_id"], class_name, direction, list(node_ids)])

    def image_explanation(self, image: str, class_name: str, classifier: str | None = None,
                          direction: str = "add") -> list[dict]:
        """One image's nodes ranked by |effect| (macro image_explanation)."""
        clf = self.check_class(class_name, classifier)
        return self._rows("SELECT * FROM image_explanation(?, ?, classifier := ?, edit_direction := ?)",
                          [image, class_name, clf["classifier_id"], direction])

    def last_index_args(self) -> dict | None:
        """The arguments of the most recent `diffex index` run (editor, beam, samples, ...), or None."""
        rows = self._rows("SELECT args FROM runs WHERE command = 'index' ORDER BY started_at DESC LIMIT 1")
        return json.loads(rows[0]["args"]) if rows and rows[0]["args"] else None
