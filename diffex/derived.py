"""The derived effect tables (effect_images, effect_nodes; schema/schema.sql): kept current
inside the same transaction as the rows they summarise, rebuilt from those rows, and checked
against them. Store is the only caller; this module only runs SQL on the connection it is
handed (the SQL that computes effects lives in schema/views.sql).

Why per image: every write that can change an effect (an edit stored or replaced, a node
linked to an edit, a score, a validity verdict) touches known images, and an image's effect
rows depend only on that image's edits and baseline. So a refresh recomputes those images'
rows exactly from the source rows and moves the per-node running sums by the difference."""

from __future__ import annotations

from typing import Iterable

# effect_nodes columns that are sums (all but the key); the upsert adds the difference.
_SUMS = ("v_images", "v_edits", "v_sum", "v_sumsq", "v_sum_logit", "v_up", "v_down",
         "a_images", "a_edits", "a_sum", "a_sumsq", "a_sum_logit", "a_up", "a_down", "n_invalid")
_KEY = ("classifier_key", "editor_key", "node_key", "direction", "class_index")
_IMAGE_KEY = _KEY[:4] + ("image_key", "class_index")
_IMAGE_VALUES = ("prob_baseline", "valid_prob", "valid_logit", "all_prob", "all_logit")
_IMAGE_EXACT = ("n_valid", "n_all", "edits_fp")

_NODE_SUMS = f"""
SELECT classifier_key, editor_key, node_key, direction, class_index,
       coalesce(sum(sign) FILTER (WHERE valid_prob IS NOT NULL), 0) AS v_images,
       coalesce(sum(sign * n_valid), 0) AS v_edits,
       coalesce(sum(sign * valid_prob), 0) AS v_sum,
       coalesce(sum(sign * valid_prob * valid_prob), 0) AS v_sumsq,
       coalesce(sum(sign * valid_logit), 0) AS v_sum_logit,
       coalesce(sum(sign) FILTER (WHERE valid_prob > 0), 0) AS v_up,
       coalesce(sum(sign) FILTER (WHERE valid_prob < 0), 0) AS v_down,
       coalesce(sum(sign), 0) AS a_images,
       coalesce(sum(sign * n_all), 0) AS a_edits,
       coalesce(sum(sign * all_prob), 0) AS a_sum,
       coalesce(sum(sign * all_prob * all_prob), 0) AS a_sumsq,
       coalesce(sum(sign * all_logit), 0) AS a_sum_logit,
       coalesce(sum(sign) FILTER (WHERE all_prob > 0), 0) AS a_up,
       coalesce(sum(sign) FILTER (WHERE all_prob < 0), 0) AS a_down,
       coalesce(sum(sign * (n_all - n_valid)), 0) AS n_invalid
FROM {{rows}}
GROUP BY {", ".join(_KEY)}"""


def refresh(con, image_keys: Iterable[int]) -> None:
    """Recompute the effect rows of these images and move the node sums by the difference.
    Call inside the transaction that changed their source rows."""
    keys = sorted({int(k) for k in image_keys})
    if not keys:
        return
    con.execute("CREATE OR REPLACE TEMP TABLE _effect_old AS SELECT * FROM effect_images WHERE image_key IN (SELECT unnest(?))", [keys])
    con.execute("DELETE FROM effect_images WHERE image_key IN (SELECT unnest(?))", [keys])
    con.execute("INSERT INTO effect_images SELECT * FROM effect_images_for(?)", [keys])
    rows = ("(SELECT *, 1 AS sign FROM effect_images WHERE image_key IN (SELECT unnest($keys)) "
            "UNION ALL SELECT *, -1 AS sign FROM _effect_old)")
    _add_node_sums(con, _NODE_SUMS.format(rows=rows), {"keys": keys})
    con.execute("DROP TABLE _effect_old")


def rebuild(con) -> None:
    """Recompute both tables from the source rows (after a migration, or `verify --repair`)."""
    con.execute("DELETE FROM effect_images")
    con.execute("DELETE FROM effect_nodes")
    con.execute("INSERT INTO effect_images SELECT * FROM effect_images_for(NULL)")
    _add_node_sums(con, _NODE_SUMS.format(rows="(SELECT *, 1 AS sign FROM effect_images)"), None)


def _add_node_sums(con, sums_sql: str, params) -> None:
    updates = ", ".join(f"{c} = effect_nodes.{c} + excluded.{c}" for c in _SUMS)
    con.execute(f"INSERT INTO effect_nodes {sums_sql} ON CONFLICT DO UPDATE SET {updates}", params)
    con.execute("DELETE FROM effect_nodes WHERE a_images = 0")  # a node with no image left


def drift(con, tolerance: float = 1e-9) -> dict[str, int]:
    """How many rows of each derived table disagree with a recomputation from the source rows
    (missing, extra, or a value off by more than `tolerance` relative to its size)."""
    con.execute("CREATE OR REPLACE TEMP TABLE _effect_truth AS SELECT * FROM effect_images_for(NULL)")
    try:
        image_drift = _count_drift(con, "effect_images", "_effect_truth", _IMAGE_KEY, _IMAGE_VALUES, _IMAGE_EXACT, tolerance)
        con.execute("CREATE OR REPLACE TEMP TABLE _node_truth AS " +
                    _NODE_SUMS.format(rows="(SELECT *, 1 AS sign FROM _effect_truth)"))
        exact = tuple(c for c in _SUMS if c.endswith(("images", "edits", "_up", "_down", "invalid")))
        values = tuple(c for c in _SUMS if c not in exact)
        node_drift = _count_drift(con, "effect_nodes", "_node_truth", _KEY, values, exact, tolerance)
    finally:
        con.execute("DROP TABLE IF EXISTS _effect_truth")
        con.execute("DROP TABLE IF EXISTS _node_truth")
    return {"effect_images": image_drift, "effect_nodes": node_drift}


def _count_drift(con, stored: str, truth: str, key, values, exact, tolerance: float) -> int:
    on = " AND ".join(f"s.{k} IS NOT DISTINCT FROM t.{k}" for k in key)
    off = [f"s.{k} IS NULL" for k in key[:1]] + [f"t.{k} IS NULL" for k in key[:1]]
    off += [f"s.{c} IS DISTINCT FROM t.{c}" for c in exact]
    off += [f"((s.{c} IS NULL) <> (t.{c} IS NULL) OR abs(s.{c} - t.{c}) > {tolerance} * (1 + abs(t.{c})))" for c in values]
    return con.execute(f"SELECT count(*) FROM {stored} s FULL OUTER JOIN {truth} t ON {on} WHERE {' OR '.join(off)}").fetchone()[0]
