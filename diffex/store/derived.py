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
         "a_images", "a_edits", "a_sum", "a_sumsq", "a_sum_logit", "a_up", "a_down", "n_invalid",
         "c_images", "c_edits", "c_sum", "c_sumsq", "s_corr")
_KEY = ("classifier_key", "editor_key", "node_key", "direction", "class_index")
_IMAGE_KEY = _KEY[:4] + ("image_key", "class_index")
_IMAGE_VALUES = ("prob_baseline", "valid_prob", "valid_logit", "all_prob", "all_logit", "clean_prob", "side_corr")
_IMAGE_EXACT = ("n_valid", "n_all", "edits_fp", "n_clean")

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
       coalesce(sum(sign * (n_all - n_valid)), 0) AS n_invalid,
       coalesce(sum(sign) FILTER (WHERE clean_prob IS NOT NULL), 0) AS c_images,
       coalesce(sum(sign * n_clean), 0) AS c_edits,
       coalesce(sum(sign * clean_prob), 0) AS c_sum,
       coalesce(sum(sign * clean_prob * clean_prob), 0) AS c_sumsq,
       coalesce(sum(sign * side_corr) FILTER (WHERE valid_prob IS NOT NULL), 0) AS s_corr
FROM {{rows}}
GROUP BY {", ".join(_KEY)}"""


# Pairs of classifiers over one set of effect rows (with a `sign` column: +1 new, -1 old, and
# the class's name): the same image, editor, node, direction and class name.
_PAIRED = """
FROM {rows} a
JOIN {rows} b ON b.image_key = a.image_key AND b.editor_key = a.editor_key AND b.node_key = a.node_key
             AND b.direction = a.direction AND b.class_name = a.class_name AND b.sign = a.sign
             AND b.classifier_key <> a.classifier_key
WHERE a.n_valid > 0 AND b.n_valid > 0"""


def _named(con, rows: str, table: str) -> str:
    """Materialise `rows` with each row's class name as temp `table`. Naming the rows before the
    pair join, in a table of its own, leaves the join nothing to reorder: joined in one query
    with the class tables, a temp table created in the same transaction has no statistics and
    the planner matched every class of A with every class of B (2 billion rows, 145 s per image
    at 1,000 classes)."""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE {table} AS SELECT r.*, c.class_name FROM {rows} r
                    JOIN classifiers k ON k.classifier_key = r.classifier_key
                    JOIN classes c ON c.classifier_id = k.classifier_id AND c.class_index = r.class_index""")
    return table


_SAME = "(a.n_valid = b.n_valid AND a.edits_fp = b.edits_fp)"
_PAIR_SUMS_COLS = ("n_images", "n_edits", "n_differing", "sum_a", "sum_b", "sum_diff", "sumsq_diff")
_PAIR_KEY = ("classifier_a", "classifier_b", "editor_key", "node_key", "direction", "class_a", "class_b")
_PAIR_SUMS = f"""
SELECT a.classifier_key AS classifier_a, b.classifier_key AS classifier_b, a.editor_key, a.node_key, a.direction,
       a.class_index AS class_a, b.class_index AS class_b,
       coalesce(sum(a.sign) FILTER (WHERE {_SAME}), 0) AS n_images,
       coalesce(sum(a.sign * a.n_valid) FILTER (WHERE {_SAME}), 0) AS n_edits,
       coalesce(sum(a.sign) FILTER (WHERE NOT {_SAME}), 0) AS n_differing,
       coalesce(sum(a.sign * a.valid_prob) FILTER (WHERE {_SAME}), 0) AS sum_a,
       coalesce(sum(a.sign * b.valid_prob) FILTER (WHERE {_SAME}), 0) AS sum_b,
       coalesce(sum(a.sign * (b.valid_prob - a.valid_prob)) FILTER (WHERE {_SAME}), 0) AS sum_diff,
       coalesce(sum(a.sign * ((b.valid_prob - a.valid_prob) ^ 2)) FILTER (WHERE {_SAME}), 0) AS sumsq_diff
{{paired}}
GROUP BY ALL"""
_DIFFERING = f"""
SELECT DISTINCT a.classifier_key, b.classifier_key, a.editor_key, a.node_key, a.direction, a.image_key
{{paired}} AND NOT {_SAME}"""


# v5: side-effect counts (side_effect_images / side_effect_nodes): not per classifier, so a
# refresh for new scores alone leaves them be.
_SIDE_KEY = ("editor_key", "node_key", "direction", "side_key")
_SIDE_IMAGE_KEY = ("editor_key", "node_key", "direction", "image_key", "side_key")
_SIDE_SUMS = ("n_edits", "n_images")
_SIDE_NODE_SUMS = """
SELECT editor_key, node_key, direction, side_key,
       coalesce(sum(sign * n_edits), 0) AS n_edits, coalesce(sum(sign), 0) AS n_images
FROM {rows}
GROUP BY ALL"""
# the most frequent side concept per (editor, node, direction) of side_effect_nodes
_CONFOUNDS = """
SELECT c.editor_key, c.node_key, c.direction, c.n_edits AS n_checked,
       arg_min(sn.label, (-s.n_edits, -sn.depth, sn.label)) AS side_label, coalesce(max(s.n_edits), 0) AS n_side
FROM side_effect_nodes c
LEFT JOIN side_effect_nodes s ON s.editor_key = c.editor_key AND s.node_key = c.node_key
                             AND s.direction = c.direction AND s.side_key <> 0
LEFT JOIN nodes sn ON sn.node_key = s.side_key
WHERE c.side_key = 0 AND c.n_edits > 0 {where}
GROUP BY ALL"""


def _refresh_side(con, keys: list[int], in_keys: str) -> None:
    con.execute(f"CREATE OR REPLACE TEMP TABLE _side_old AS SELECT * FROM side_effect_images WHERE {in_keys}")
    con.execute(f"DELETE FROM side_effect_images WHERE {in_keys}")
    con.execute(f"INSERT INTO side_effect_images SELECT * FROM side_effect_images_for([{', '.join(map(str, keys))}])")
    rows = (f"(SELECT *, 1 AS sign FROM side_effect_images WHERE {in_keys} "
            "UNION ALL SELECT *, -1 AS sign FROM _side_old)")
    _add(con, "side_effect_nodes", _SIDE_KEY, _SIDE_SUMS, _SIDE_NODE_SUMS.format(rows=rows), None)
    con.execute("DELETE FROM side_effect_nodes WHERE n_images = 0")
    # the touched nodes' confound rows, recomputed from their (small) side_effect_nodes rows
    touched = ("AND (c.editor_key, c.node_key, c.direction) IN "
               "(SELECT DISTINCT editor_key, node_key, direction FROM _side_touched)")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _side_touched AS SELECT editor_key, node_key, direction FROM {rows}")
    con.execute("DELETE FROM confound_nodes WHERE (editor_key, node_key, direction) IN "
                "(SELECT DISTINCT editor_key, node_key, direction FROM _side_touched)")
    con.execute("INSERT INTO confound_nodes " + _CONFOUNDS.format(where=touched))
    con.execute("DROP TABLE _side_touched")
    con.execute("DROP TABLE _side_old")


def refresh(con, image_keys: Iterable[int], classifier_key: int | None = None) -> None:
    """Recompute the effect rows of these images (only one classifier's, when only its scores
    changed) and move the node and pair sums by the difference. Call inside the transaction
    that changed their source rows."""
    keys = sorted({int(k) for k in image_keys})
    if not keys:
        return
    # integer literals, not a bound list: the scans then skip row groups by their min/max
    in_keys = f"image_key IN ({', '.join(map(str, keys))}) AND image_key BETWEEN {keys[0]} AND {keys[-1]}"
    only = "" if classifier_key is None else f" AND classifier_key = {int(classifier_key)}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _effect_old AS SELECT * FROM effect_images WHERE {in_keys}{only}")
    con.execute(f"DELETE FROM effect_images WHERE {in_keys}{only}")
    con.execute(f"INSERT INTO effect_images SELECT * FROM effect_images_for([{', '.join(map(str, keys))}]) "
                f"WHERE TRUE{only}")
    rows = (f"(SELECT *, 1 AS sign FROM effect_images WHERE {in_keys}{only} "
            "UNION ALL SELECT *, -1 AS sign FROM _effect_old)")
    _add_node_sums(con, _NODE_SUMS.format(rows=rows), None)
    if classifier_key is None:
        _refresh_side(con, keys, in_keys)
    if con.execute("SELECT count(*) FROM classifiers").fetchone()[0] > 1:  # pairs need two
        # the changed rows (new +1, old -1), and the other classifiers' rows of these images
        # once with each sign: pairs of changed with unchanged rows move by new - old, pairs of
        # two unchanged rows cancel out
        others = "" if classifier_key is None else (
            f" UNION ALL SELECT *, 1 AS sign FROM effect_images WHERE {in_keys} AND classifier_key <> {int(classifier_key)}"
            f" UNION ALL SELECT *, -1 AS sign FROM effect_images WHERE {in_keys} AND classifier_key <> {int(classifier_key)}")
        both = _named(con, f"(SELECT * FROM {rows}{others})", "_effect_both")
        _add_pair_sums(con, _PAIR_SUMS.format(paired=_PAIRED.format(rows=both)))
        touched = "" if classifier_key is None else f" AND {int(classifier_key)} IN (classifier_a, classifier_b)"
        con.execute(f"DELETE FROM effect_pair_differing WHERE {in_keys}{touched}")
        current = "(SELECT * FROM _effect_both WHERE sign = 1)"
        con.execute("INSERT INTO effect_pair_differing " + _DIFFERING.format(paired=_PAIRED.format(rows=current))
                    + ("" if classifier_key is None else f" AND {int(classifier_key)} IN (a.classifier_key, b.classifier_key)"))
        con.execute("DROP TABLE _effect_both")
    con.execute("DROP TABLE _effect_old")


def rebuild(con) -> None:
    """Recompute both tables from the source rows (after a migration, or `verify --repair`)."""
    for table in ("effect_images", "effect_nodes", "effect_pairs", "effect_pair_differing",
                  "side_effect_images", "side_effect_nodes", "confound_nodes"):
        con.execute(f"DELETE FROM {table}")
    con.execute("INSERT INTO side_effect_images SELECT * FROM side_effect_images_for(NULL)")
    con.execute("INSERT INTO side_effect_nodes " + _SIDE_NODE_SUMS.format(rows="(SELECT *, 1 AS sign FROM side_effect_images)"))
    con.execute("INSERT INTO confound_nodes " + _CONFOUNDS.format(where=""))
    con.execute("INSERT INTO effect_images SELECT * FROM effect_images_for(NULL)")
    all_rows = "(SELECT *, 1 AS sign FROM effect_images)"
    _add_node_sums(con, _NODE_SUMS.format(rows=all_rows), None)
    named = _named(con, all_rows, "_effect_named")
    _add_pair_sums(con, _PAIR_SUMS.format(paired=_PAIRED.format(rows=named)))
    con.execute("INSERT INTO effect_pair_differing " + _DIFFERING.format(paired=_PAIRED.format(rows=named)))
    con.execute("DROP TABLE _effect_named")


def _add_node_sums(con, sums_sql: str, params) -> None:
    _add(con, "effect_nodes", _KEY, _SUMS, sums_sql, params)
    con.execute("DELETE FROM effect_nodes WHERE a_images = 0")  # a node with no image left


def _add(con, table: str, key, sums, sums_sql: str, params) -> None:
    """table += the rows of sums_sql (matched on key; absent keys inserted). An UPDATE ... FROM
    and an anti-join INSERT, not INSERT ... ON CONFLICT DO UPDATE: that took 220 ms for 5,000
    rows, this takes a few."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE _delta AS {sums_sql}", params)
    match = " AND ".join(f"t.{k} = d.{k}" for k in key)
    sets = ", ".join(f"{c} = t.{c} + d.{c}" for c in sums)
    con.execute(f"UPDATE {table} AS t SET {sets} FROM _delta d WHERE {match}")
    con.execute(f"INSERT INTO {table} SELECT d.* FROM _delta d WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {match})")
    con.execute("DROP TABLE _delta")


def _add_pair_sums(con, sums_sql: str) -> None:
    _add(con, "effect_pairs", _PAIR_KEY, _PAIR_SUMS_COLS, sums_sql, None)
    con.execute("DELETE FROM effect_pairs WHERE n_images = 0 AND n_differing = 0")


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
        truth = _named(con, "(SELECT *, 1 AS sign FROM _effect_truth)", "_truth_named")
        con.execute("CREATE OR REPLACE TEMP TABLE _pair_truth AS " + _PAIR_SUMS.format(paired=_PAIRED.format(rows=truth)))
        con.execute("DELETE FROM _pair_truth WHERE n_images = 0 AND n_differing = 0")
        pair_drift = _count_drift(con, "effect_pairs", "_pair_truth", _PAIR_KEY, _PAIR_SUMS_COLS[3:],
                                  _PAIR_SUMS_COLS[:3], tolerance)
        con.execute("CREATE OR REPLACE TEMP TABLE _differing_truth AS " + _DIFFERING.format(paired=_PAIRED.format(rows=truth)))
        pair_drift += con.execute(
            "SELECT count(*) FROM (SELECT * FROM effect_pair_differing EXCEPT ALL SELECT * FROM _differing_truth "
            "UNION ALL (SELECT * FROM _differing_truth EXCEPT ALL SELECT * FROM effect_pair_differing))").fetchone()[0]
        con.execute("CREATE OR REPLACE TEMP TABLE _side_truth AS SELECT * FROM side_effect_images_for(NULL)")
        side_drift = _count_drift(con, "side_effect_images", "_side_truth", _SIDE_IMAGE_KEY, (), ("n_edits",), tolerance)
        con.execute("CREATE OR REPLACE TEMP TABLE _side_node_truth AS "
                    + _SIDE_NODE_SUMS.format(rows="(SELECT *, 1 AS sign FROM _side_truth)"))
        side_drift += _count_drift(con, "side_effect_nodes", "_side_node_truth", _SIDE_KEY, (), _SIDE_SUMS, tolerance)
        # confound_nodes against a recomputation from the stored (just checked) node counts
        side_drift += con.execute(
            "SELECT count(*) FROM (SELECT * FROM confound_nodes EXCEPT ALL (" + _CONFOUNDS.format(where="") + ") "
            "UNION ALL ((" + _CONFOUNDS.format(where="") + ") EXCEPT ALL SELECT * FROM confound_nodes))").fetchone()[0]
    finally:
        for table in ("_effect_truth", "_truth_named", "_node_truth", "_pair_truth", "_differing_truth",
                      "_side_truth", "_side_node_truth"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    return {"effect_images": image_drift, "effect_nodes": node_drift, "effect_pairs": pair_drift,
            "side_effects": side_drift}


def _count_drift(con, stored: str, truth: str, key, values, exact, tolerance: float) -> int:
    on = " AND ".join(f"s.{k} IS NOT DISTINCT FROM t.{k}" for k in key)
    off = [f"s.{k} IS NULL" for k in key[:1]] + [f"t.{k} IS NULL" for k in key[:1]]
    off += [f"s.{c} IS DISTINCT FROM t.{c}" for c in exact]
    off += [f"((s.{c} IS NULL) <> (t.{c} IS NULL) OR abs(s.{c} - t.{c}) > {tolerance} * (1 + abs(t.{c})))" for c in values]
    return con.execute(f"SELECT count(*) FROM {stored} s FULL OUTER JOIN {truth} t ON {on} WHERE {' OR '.join(off)}").fetchone()[0]
