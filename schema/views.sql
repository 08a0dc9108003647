-- Views and table macros for the questions users ask. They hold no data: they are
-- re-created (CREATE OR REPLACE) whenever a store is opened for writing, so they always
-- match this version of diffex, and they are stored in the file so read-only
-- `diffex query` sessions can use them.

-- Two-sided 95% Student-t quantile for df degrees of freedom (table up to 10, then the
-- Cornish-Fisher expansion, within 0.002 of the exact value).
CREATE OR REPLACE MACRO t975(df) AS
    CASE
        WHEN df IS NULL OR df < 1 THEN NULL
        WHEN df <= 10 THEN [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228][df::INTEGER]
        ELSE 1.959964 + (1.959964 ^ 3 + 1.959964) / (4 * df)
             + (5 * 1.959964 ^ 5 + 16 * 1.959964 ^ 3 + 3 * 1.959964) / (96 * df * df)
    END;

-- ------------------------------------------------------------------ the v3 shapes, by id
-- Every scored item by id: an original image or an edit (they share one key space).
-- x clipped to [lo, hi]; NULL stays NULL (least/greatest would skip it). A change in
-- probability lies in [-1, 1] (and a change of such changes in [-2, 2]), so its interval does too.
CREATE OR REPLACE MACRO clip(x, lo, hi) AS CASE WHEN x IS NULL THEN NULL ELSE least(hi, greatest(lo, x)) END;

-- How tables name a classifier: its spec (`demo:v1`, `hf:./my-vit`), else its name and a
-- short id, so two versions of one model never print the same name.
CREATE OR REPLACE MACRO classifier_label(spec, name, classifier_id) AS
    coalesce(spec, name || ' ' || left(classifier_id, 8));

CREATE OR REPLACE VIEW items AS
SELECT image_key AS item_key, image_id AS item_id, 'image' AS item_kind FROM images
UNION ALL
SELECT edit_key, edit_id, 'edit' FROM edits;

-- One row per (classifier, item, class), as the v3 table `scores` was.
CREATE OR REPLACE VIEW scores AS
SELECT k.classifier_id, it.item_id, u.class_index, u.logit, u.prob
FROM (SELECT classifier_key, item_key,
             unnest(range(len(probs)))::INTEGER AS class_index,
             unnest(logits)::DOUBLE AS logit, unnest(probs)::DOUBLE AS prob
      FROM item_scores) u
JOIN classifiers k ON k.classifier_key = u.classifier_key
JOIN items it ON it.item_key = u.item_key;

CREATE OR REPLACE VIEW class_scores AS
SELECT s.classifier_id, s.item_id, s.class_index, c.class_name, s.logit, s.prob
FROM scores s
JOIN classes c ON c.classifier_id = s.classifier_id AND c.class_index = s.class_index;

-- Which nodes asked for an edit, by id (the v3 table of that name).
CREATE OR REPLACE VIEW edit_nodes AS
SELECT e.edit_id, n.node_id
FROM edit_links l JOIN edits e ON e.edit_key = l.edit_key JOIN nodes n ON n.node_key = l.node_key;

-- Edit validity (diffex/embed.py): one verdict per edit, from the most recently registered
-- embedder that judged it. Edits never judged (indexed without an embedder) count as valid.
CREATE OR REPLACE VIEW edit_validity_current AS
SELECT v.edit_id,
       arg_max(v.valid, m.created_at) AS valid,
       arg_max(v.direction_sim, m.created_at) AS direction_sim,
       arg_max(v.baseline_sim, m.created_at) AS baseline_sim,
       arg_max(v.threshold, m.created_at) AS threshold,
       arg_max(v.embedder_id, m.created_at) AS embedder_id
FROM edit_validity v
JOIN embedders m ON m.embedder_id = v.embedder_id
GROUP BY v.edit_id;

-- ------------------------------------------------------------------ effects from the rows
-- Every single-node edit against its image's null-edit baseline, one row per class, by
-- keys: what the derived effect tables summarise, recomputed from the source rows.
-- image_keys: a list of images.image_key to restrict to, or NULL for all.
CREATE OR REPLACE MACRO edit_class_deltas_for(image_keys) AS TABLE
WITH wanted AS (
    -- an inner join with the asked keys, not `IN (...) OR keys IS NULL`: that became a mark
    -- join over every edit (140 ms at a million edits, even for no image)
    SELECT unnest(coalesce(image_keys, (SELECT list(image_key) FROM images))) AS image_key
), e AS (
    SELECT x.edit_key, x.edit_id, x.image_key, x.editor_key, x.direction, x.seed
    FROM edits x JOIN wanted w ON w.image_key = x.image_key
    WHERE x.kind = 'single' AND x.status = 'ok'
), b AS (
    SELECT x.image_key, x.editor_key, x.edit_key AS baseline_key
    FROM edits x JOIN wanted w ON w.image_key = x.image_key
    WHERE x.kind = 'baseline' AND x.status = 'ok'
), v AS (
    -- edit_validity_current restricted first: an aggregate over every verdict per refresh would not scale
    SELECT ev.edit_id, arg_max(ev.valid, m.created_at) AS valid, arg_max(ev.direction_sim, m.created_at) AS direction_sim,
           arg_max(ev.side_fp, m.created_at) AS side_fp, arg_max(ev.embedder_id, m.created_at) AS embedder_id
    FROM edit_validity ev JOIN embedders m ON m.embedder_id = ev.embedder_id
    WHERE ev.edit_id IN (SELECT edit_id FROM e)
    GROUP BY ev.edit_id
), se AS (
    -- the side concepts of each edit (v5), by the embedder whose verdict counts
    SELECT embedder_id, edit_key, list(node_key ORDER BY node_key) AS sides FROM edit_side_effects
    WHERE edit_key BETWEEN (SELECT min(edit_key) FROM e) AND (SELECT max(edit_key) FROM e)
    GROUP BY ALL
)
SELECT s.classifier_key, e.editor_key, l.node_key, e.direction, e.image_key, e.edit_key, e.edit_id, e.seed,
       coalesce(v.valid, TRUE) AS valid, v.direction_sim,
       -- clean: checked for side effects and none found (NULL: never checked)
       CASE WHEN v.side_fp IS NOT NULL THEN se.edit_key IS NULL END AS clean,
       CASE WHEN v.side_fp IS NOT NULL THEN coalesce(se.sides, []::INTEGER[]) END AS sides,
       unnest(range(len(s.probs)))::INTEGER AS class_index,
       unnest(bs.probs)::DOUBLE AS prob_baseline, unnest(s.probs)::DOUBLE AS prob_edit,
       unnest(bs.logits)::DOUBLE AS logit_baseline, unnest(s.logits)::DOUBLE AS logit_edit
-- the big tables are cut to the key ranges of the edits and baselines asked about before any
-- hash join, so a few images (or none) never build a hash table of every score
FROM e
JOIN (SELECT * FROM edit_links WHERE edit_key BETWEEN (SELECT min(edit_key) FROM e) AND (SELECT max(edit_key) FROM e)) l
     ON l.edit_key = e.edit_key
JOIN b ON b.image_key = e.image_key AND b.editor_key = e.editor_key
JOIN (SELECT * FROM item_scores WHERE item_key BETWEEN (SELECT min(edit_key) FROM e) AND (SELECT max(edit_key) FROM e)) s
     ON s.item_key = e.edit_key
JOIN (SELECT * FROM item_scores WHERE item_key BETWEEN (SELECT min(baseline_key) FROM b) AND (SELECT max(baseline_key) FROM b)) bs
     ON bs.item_key = b.baseline_key AND bs.classifier_key = s.classifier_key
LEFT JOIN v ON v.edit_id = e.edit_id
LEFT JOIN se ON se.edit_key = e.edit_key AND se.embedder_id = v.embedder_id;

-- Per (classifier, editor, node, direction, image, class), recomputed: what the table
-- effect_images must hold (Store.refresh_effects writes it, `diffex verify` compares).
CREATE OR REPLACE MACRO effect_images_for(image_keys) AS TABLE
WITH d AS MATERIALIZED (
    SELECT * FROM edit_class_deltas_for(image_keys)
), g AS (
    SELECT classifier_key, editor_key, node_key, direction, image_key, class_index,
           any_value(prob_baseline) AS prob_baseline,
           (count(*) FILTER (WHERE valid))::INTEGER AS n_valid,
           count(*)::INTEGER AS n_all,
           avg(prob_edit - prob_baseline) FILTER (WHERE valid) AS valid_prob,
           avg(logit_edit - logit_baseline) FILTER (WHERE valid) AS valid_logit,
           avg(prob_edit - prob_baseline) AS all_prob,
           avg(logit_edit - logit_baseline) AS all_logit,
           bit_xor(hash(edit_key)) FILTER (WHERE valid) AS edits_fp,
           (count(*) FILTER (WHERE valid AND clean))::INTEGER AS n_clean,
           avg(prob_edit - prob_baseline) FILTER (WHERE valid AND clean) AS clean_prob
    FROM d
    GROUP BY classifier_key, editor_key, node_key, direction, image_key, class_index
), per_edit AS (
    -- v5: each valid edit with side effects is charged its side concepts' own effect on the
    -- same image (0 where that concept was not edited there); v7: but never more than the
    -- edit's own change in that direction, nor against it. A side effect drawn into another
    -- edit is rarely a full standalone edit (a top hat perched on a beanie moves the demo v2
    -- classifier to 0.68, a top hat alone to 1.0), and a false alarm on an edit that changed
    -- nothing must not be charged a side concept's whole effect.
    SELECT x.classifier_key, x.editor_key, x.node_key, x.direction, x.image_key, x.class_index, x.edit_key,
           any_value(x.prob_edit - x.prob_baseline) AS delta, sum(coalesce(o.valid_prob, 0)) AS own
    FROM (SELECT *, unnest(sides) AS side_key FROM d WHERE valid AND len(sides) > 0) x
    LEFT JOIN g o ON o.classifier_key = x.classifier_key AND o.editor_key = x.editor_key AND o.node_key = x.side_key
                 AND o.direction = x.direction AND o.image_key = x.image_key AND o.class_index = x.class_index
    GROUP BY x.classifier_key, x.editor_key, x.node_key, x.direction, x.image_key, x.class_index, x.edit_key
), charged AS (
    -- side_corr is the mean charge over the image's valid edits
    SELECT classifier_key, editor_key, node_key, direction, image_key, class_index,
           sum(CASE WHEN own > 0 THEN least(own, greatest(delta, 0))
                    WHEN own < 0 THEN greatest(own, least(delta, 0)) ELSE 0 END) AS charge
    FROM per_edit
    GROUP BY ALL
)
SELECT g.*, CASE WHEN g.n_valid > 0 THEN coalesce(c.charge, 0) / g.n_valid END AS side_corr
FROM g
LEFT JOIN charged c ON c.classifier_key = g.classifier_key AND c.editor_key = g.editor_key AND c.node_key = g.node_key
                   AND c.direction = g.direction AND c.image_key = g.image_key AND c.class_index = g.class_index;

-- Per (editor, node, direction, image), recomputed (v5): what side_effect_images must hold.
-- Counts the valid single edits checked for side effects (side_key 0) and, per side concept
-- (side_key = its node_key), those that showed it, by the embedder whose verdict counts.
CREATE OR REPLACE MACRO side_effect_images_for(image_keys) AS TABLE
WITH wanted AS (
    SELECT unnest(coalesce(image_keys, (SELECT list(image_key) FROM images))) AS image_key
), e AS (
    SELECT x.edit_key, x.edit_id, x.image_key, x.editor_key, x.direction
    FROM edits x JOIN wanted w ON w.image_key = x.image_key
    WHERE x.kind = 'single' AND x.status = 'ok'
), v AS (
    SELECT ev.edit_id, arg_max(ev.valid, m.created_at) AS valid, arg_max(ev.side_fp, m.created_at) AS side_fp,
           arg_max(ev.embedder_id, m.created_at) AS embedder_id
    FROM edit_validity ev JOIN embedders m ON m.embedder_id = ev.embedder_id
    WHERE ev.edit_id IN (SELECT edit_id FROM e)
    GROUP BY ev.edit_id
), checked AS (
    SELECT e.*, v.embedder_id FROM e JOIN v ON v.edit_id = e.edit_id WHERE v.valid AND v.side_fp IS NOT NULL
), linked AS (
    SELECT c.*, l.node_key FROM checked c
    JOIN (SELECT * FROM edit_links WHERE edit_key BETWEEN (SELECT min(edit_key) FROM checked) AND (SELECT max(edit_key) FROM checked)) l
         ON l.edit_key = c.edit_key
), flagged AS (
    SELECT c.editor_key, c.node_key, c.direction, c.image_key, s.node_key AS side_key
    FROM linked c
    JOIN (SELECT * FROM edit_side_effects WHERE edit_key BETWEEN (SELECT min(edit_key) FROM checked) AND (SELECT max(edit_key) FROM checked)) s
         ON s.edit_key = c.edit_key AND s.embedder_id = c.embedder_id
)
SELECT editor_key, node_key, direction, image_key, side_key, count(*)::INTEGER AS n_edits
FROM (SELECT editor_key, node_key, direction, image_key, 0 AS side_key FROM linked UNION ALL SELECT * FROM flagged)
GROUP BY ALL;

-- Every single-node edit against its image's null-edit baseline, for every class, by id.
-- `valid` is the edit's validity (TRUE when no embedder judged it).
CREATE OR REPLACE VIEW edit_deltas AS
SELECT d.edit_id, i.image_id, ed.editor_id, n.node_id, d.direction, d.seed,
       k.classifier_id, d.class_index, c.class_name,
       d.prob_baseline, d.prob_edit,
       d.prob_edit - d.prob_baseline AS delta_prob,
       d.logit_edit - d.logit_baseline AS delta_logit,
       d.valid, d.direction_sim
FROM edit_class_deltas_for(NULL) d
JOIN images i ON i.image_key = d.image_key
JOIN editors ed ON ed.editor_key = d.editor_key
JOIN nodes n ON n.node_key = d.node_key
JOIN classifiers k ON k.classifier_key = d.classifier_key
JOIN classes c ON c.classifier_id = k.classifier_id AND c.class_index = d.class_index;

-- ------------------------------------------------------------------ effects, from the derived tables
-- Per image: the effect of a node averaged over its edit samples (seeds). Invalid edits
-- (the embedder saw no sign of the concept) are left out unless include_invalid; n_invalid
-- counts them either way. An image whose every edit is invalid keeps a row with NULL effect.
CREATE OR REPLACE MACRO image_effects_with(include_invalid) AS TABLE
SELECT k.classifier_id, c.class_name, ed.editor_id, n.node_id, n.label AS node, n.path,
       x.direction, i.image_id, i.uri,
       x.prob_baseline,
       CASE WHEN include_invalid THEN x.all_prob ELSE x.valid_prob END AS mean_delta_prob,
       CASE WHEN include_invalid THEN x.all_logit ELSE x.valid_logit END AS mean_delta_logit,
       (CASE WHEN include_invalid THEN x.n_all ELSE x.n_valid END)::BIGINT AS n_edits,
       (x.n_all - x.n_valid)::BIGINT AS n_invalid
FROM effect_images x
JOIN classifiers k ON k.classifier_key = x.classifier_key
JOIN classes c ON c.classifier_id = k.classifier_id AND c.class_index = x.class_index
JOIN editors ed ON ed.editor_key = x.editor_key
JOIN nodes n ON n.node_key = x.node_key
JOIN images i ON i.image_key = x.image_key;

CREATE OR REPLACE VIEW image_effects AS SELECT * FROM image_effects_with(FALSE);
CREATE OR REPLACE VIEW image_effects_all AS SELECT * FROM image_effects_with(TRUE);

-- Dataset level: every node x class x classifier x editor x direction, from the running
-- sums in effect_nodes. The unit of the confidence interval is the image (samples of one
-- image are not independent); intervals of a change in probability are clipped to [-1, 1].
-- n_invalid: edits left out because the embedder saw no sign of the concept in them
-- (node_effects_all and include_invalid := TRUE count them in).
-- A node is reported confounded when at least this share of its checked edits showed one
-- side concept (below it, calibrated thresholds' false alarms could name one: up to 12.5% of
-- a node's edits with the exact demo editor and the demo CLIP, 20 images x 2 seeds) ...
CREATE OR REPLACE MACRO confound_floor() AS 0.3;
-- ... or at least this share when the side effects carried half of the node's valid effect or
-- more (and at least 0.02): a side effect in one edit of five that makes most of an effect
-- is what an auditor must hear about, and a false alarm carries nothing (an edit's charge is
-- at most its own change, effect_images_for).
CREATE OR REPLACE MACRO confound_carry_floor() AS 0.1;

CREATE OR REPLACE MACRO node_effects_with(include_invalid) AS TABLE
WITH p AS (
    SELECT classifier_key, editor_key, node_key, direction, class_index, a_images, n_invalid,
           CASE WHEN include_invalid THEN a_images ELSE v_images END AS n_images,
           CASE WHEN include_invalid THEN a_edits ELSE v_edits END AS n_edits,
           CASE WHEN include_invalid THEN a_sum ELSE v_sum END AS s1,
           CASE WHEN include_invalid THEN a_sumsq ELSE v_sumsq END AS s2,
           CASE WHEN include_invalid THEN a_sum_logit ELSE v_sum_logit END AS s1_logit,
           CASE WHEN include_invalid THEN a_up ELSE v_up END AS n_up,
           CASE WHEN include_invalid THEN a_down ELSE v_down END AS n_down,
           v_images, v_sum, c_images, c_edits, c_sum, c_sumsq, s_corr
    FROM effect_nodes
    WHERE a_images > 0
), m AS (
    SELECT *,
           CASE WHEN n_images > 0 THEN s1 / n_images END AS mean_delta_prob,
           CASE WHEN n_images > 1 THEN sqrt(greatest(0, (s2 - s1 * s1 / n_images) / (n_images - 1))) END AS sd_delta_prob,
           CASE WHEN n_images > 0 THEN s1_logit / n_images END AS mean_delta_logit,
           CASE WHEN n_images > 0 THEN (n_up + 0.5 * (n_images - n_up - n_down)) / n_images END AS frac_up,
           CASE WHEN c_images > 0 THEN c_sum / c_images END AS clean_mean,
           CASE WHEN c_images > 1 THEN sqrt(greatest(0, (c_sumsq - c_sum * c_sum / c_images) / (c_images - 1))) END AS clean_sd
    FROM p
)
SELECT k.classifier_id, classifier_label(k.spec, k.name, k.classifier_id) AS classifier_name, c.class_name, ed.editor_id,
       n.node_id, n.label AS node, n.path, parent.label AS parent, n.depth, m.direction,
       m.mean_delta_prob,
       clip(m.mean_delta_prob - t975(m.n_images - 1) * coalesce(m.sd_delta_prob, 0) / sqrt(m.n_images), -1.0, 1.0) AS ci_low,
       clip(m.mean_delta_prob + t975(m.n_images - 1) * coalesce(m.sd_delta_prob, 0) / sqrt(m.n_images), -1.0, 1.0) AS ci_high,
       m.mean_delta_logit,
       m.n_images, m.n_edits,
       CASE WHEN m.mean_delta_prob > 0 THEN 'up' WHEN m.mean_delta_prob < 0 THEN 'down' ELSE 'none' END AS effect,
       -- share of images moved the same way as the mean: 1.0 = every image agrees
       CASE WHEN m.mean_delta_prob >= 0 THEN m.frac_up ELSE 1 - m.frac_up END AS sign_consistency,
       m.n_invalid::BIGINT AS n_invalid,
       -- v5 (issue 13): side effects. confounded_with names the side concept of at least
       -- confound_floor() of the node's checked edits, or of confound_carry_floor() when the
       -- side effects carried half of the valid effect or more; clean_*: over the edits with no side
       -- effect; adjusted: the valid effect less what its side concepts do on their own, at
       -- most each edit's own change (effect_images_for).
       CASE WHEN cf.n_side >= confound_floor() * cf.n_checked
                 OR (cf.n_side >= confound_carry_floor() * cf.n_checked AND m.v_images > 0
                     AND abs(m.s_corr) >= 0.5 * abs(m.v_sum) AND abs(m.s_corr) >= 0.02 * m.v_images)
            THEN cf.side_label END AS confounded_with,
       cf.n_side / cf.n_checked AS confound_share,
       m.clean_mean AS clean_delta_prob,
       clip(m.clean_mean - t975(m.c_images - 1) * coalesce(m.clean_sd, 0) / sqrt(m.c_images), -1.0, 1.0) AS clean_ci_low,
       clip(m.clean_mean + t975(m.c_images - 1) * coalesce(m.clean_sd, 0) / sqrt(m.c_images), -1.0, 1.0) AS clean_ci_high,
       m.c_images AS clean_n_images, m.c_edits AS clean_n_edits,
       CASE WHEN m.v_images > 0 THEN (m.v_sum - m.s_corr) / m.v_images END AS adjusted_delta_prob
FROM m
LEFT JOIN confound_nodes cf ON cf.editor_key = m.editor_key AND cf.node_key = m.node_key AND cf.direction = m.direction
JOIN classifiers k ON k.classifier_key = m.classifier_key
JOIN classes c ON c.classifier_id = k.classifier_id AND c.class_index = m.class_index
JOIN editors ed ON ed.editor_key = m.editor_key
JOIN nodes n ON n.node_key = m.node_key
LEFT JOIN nodes parent ON parent.node_id = n.parent_id;

CREATE OR REPLACE VIEW node_effects AS SELECT * FROM node_effects_with(FALSE);
CREATE OR REPLACE VIEW node_effects_all AS SELECT * FROM node_effects_with(TRUE);

-- The one resolve rule of stored things (classifiers, embedders, taxonomy versions): `which`
-- names a row by its id, an id prefix of 6+ characters, its name or its spec. The pick_*
-- macros below and Store.resolve_* in Python all call this macro; "else the newest" is the
-- order each one lists its rows in.
CREATE OR REPLACE MACRO named_by(which, id, spec, name) AS
    coalesce(id = which OR spec = which OR name = which OR (length(which) >= 6 AND starts_with(id, which)), FALSE);

-- The classifier a macro talks about: the one named (named_by), else the pinned one
-- (`diffex use`), else the most recently indexed. Unknown names raise an error instead of an
-- empty answer.
CREATE OR REPLACE MACRO pick_classifier(which) AS TABLE
SELECT classifier_id FROM (
    SELECT classifier_id, pinned_at, indexed_at FROM classifiers
    WHERE which IS NULL OR named_by(which, classifier_id, spec, name)
    UNION ALL
    SELECT error('unknown classifier ' || which || ' (see diffex info)')::VARCHAR, NULL, NULL
    WHERE which IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM classifiers WHERE named_by(which, classifier_id, spec, name))
)
ORDER BY pinned_at DESC NULLS LAST, indexed_at DESC NULLS LAST
LIMIT 1;

-- `cls` itself if the chosen classifier has that class, else an error listing its classes.
-- (Used as a scalar subquery so it is evaluated even when no effect row would match.)
CREATE OR REPLACE MACRO checked_class(cls, which) AS (
    SELECT CASE WHEN count(*) > 0 THEN cls
                ELSE error('unknown class ' || coalesce(cls, 'NULL') || '; classes: ' ||
                           (SELECT string_agg(c2.class_name, ', ' ORDER BY c2.class_index)
                            FROM classes c2, pick_classifier(which) p2 WHERE c2.classifier_id = p2.classifier_id)) END
    FROM classes c, pick_classifier(which) p
    WHERE c.classifier_id = p.classifier_id AND c.class_name = cls
);

-- The chosen classifier's integer key and the class's index (an error for an unknown
-- classifier or class): what the effect tables are keyed by.
CREATE OR REPLACE MACRO pick_class(target_class, which) AS TABLE
SELECT k.classifier_key, k.classifier_id, c.class_index
FROM pick_classifier(which) pc
JOIN classifiers k ON k.classifier_id = pc.classifier_id
JOIN classes c ON c.classifier_id = k.classifier_id AND c.class_name = checked_class(target_class, which);

-- The image a macro talks about: its id, an id prefix (4+ characters), its path or its file
-- name. No match, or several, is an error naming what matched.
CREATE OR REPLACE MACRO pick_image(which) AS TABLE
WITH hits AS (
    SELECT image_key, image_id, uri FROM images
    WHERE image_id = which OR uri = which OR uri LIKE '%/' || which
       OR (length(which) >= 4 AND starts_with(image_id, which))
), n AS (SELECT count(*) AS n FROM hits)
SELECT image_key, image_id, uri FROM hits, n WHERE n.n = 1
UNION ALL
SELECT error('unknown image ' || coalesce(which, 'NULL')
             || ' (give an image id, an id prefix of 4+ characters, a path or a file name; see the images table)')::BIGINT, NULL, NULL
FROM n WHERE n.n = 0
UNION ALL
SELECT error('ambiguous image ' || which || ': ' || n.n || ' images match ('
             || (SELECT string_agg(left(image_id, 12) || ' ' || uri, ', ') FROM (SELECT * FROM hits ORDER BY uri LIMIT 5))
             || CASE WHEN n.n > 5 THEN ', ...' ELSE '' END || '); give more of the id or the full path')::BIGINT, NULL, NULL
FROM n WHERE n.n > 1;

-- Node effects for one class of one classifier (default: pinned, else most recently indexed).
-- (DuckDB refuses a macro parameter named like a column it reads or returns, hence
-- `edit_direction` and `classifier_name`; parameters are copied into `args` first.)
-- include_invalid := TRUE also counts edits the embedder judged invalid.
CREATE OR REPLACE MACRO effects_for(target_class, classifier := NULL, edit_direction := 'add', include_invalid := FALSE) AS TABLE
WITH args AS (
    SELECT edit_direction AS want_direction, pc.classifier_id AS want_classifier
    FROM pick_classifier(classifier) pc
)
SELECT ne.*
FROM node_effects_with(include_invalid) ne, args
WHERE ne.classifier_id = args.want_classifier
  AND ne.class_name = checked_class(target_class, classifier)
  AND ne.direction = args.want_direction;

-- The question users ask first: which subtypes (nodes below a top-level group) move
-- class X the most, ranked by |mean delta of P(class)|.
CREATE OR REPLACE MACRO top_subtypes(target_class, k, classifier := NULL, edit_direction := 'add', include_invalid := FALSE) AS TABLE
SELECT row_number() OVER (ORDER BY abs(mean_delta_prob) DESC NULLS LAST, path) AS rank,
       node, parent, depth, path,
       round(mean_delta_prob, 4) AS mean_delta_prob,
       round(ci_low, 4) AS ci_low, round(ci_high, 4) AS ci_high,
       round(mean_delta_logit, 4) AS mean_delta_logit,
       n_images, n_edits, effect, round(sign_consistency, 3) AS sign_consistency,
       class_name, classifier_name, n_invalid,
       confounded_with, round(confound_share, 3) AS confound_share,
       round(clean_delta_prob, 4) AS clean_delta_prob, round(clean_ci_low, 4) AS clean_ci_low,
       round(clean_ci_high, 4) AS clean_ci_high, clean_n_images, clean_n_edits,
       round(adjusted_delta_prob, 4) AS adjusted_delta_prob
FROM effects_for(target_class, classifier := classifier, edit_direction := edit_direction, include_invalid := include_invalid)
WHERE depth >= 2
ORDER BY rank
LIMIT k;

-- Same ranking over every node, top-level groups included.
CREATE OR REPLACE MACRO top_nodes(target_class, k, classifier := NULL, edit_direction := 'add', include_invalid := FALSE) AS TABLE
SELECT row_number() OVER (ORDER BY abs(mean_delta_prob) DESC NULLS LAST, path) AS rank,
       node, parent, depth, path,
       round(mean_delta_prob, 4) AS mean_delta_prob,
       round(ci_low, 4) AS ci_low, round(ci_high, 4) AS ci_high,
       n_images, n_edits, effect, class_name, classifier_name, n_invalid,
       confounded_with, round(confound_share, 3) AS confound_share,
       round(clean_delta_prob, 4) AS clean_delta_prob, round(clean_ci_low, 4) AS clean_ci_low,
       round(clean_ci_high, 4) AS clean_ci_high, clean_n_images, clean_n_edits,
       round(adjusted_delta_prob, 4) AS adjusted_delta_prob
FROM effects_for(target_class, classifier := classifier, edit_direction := edit_direction, include_invalid := include_invalid)
ORDER BY rank
LIMIT k;

-- The hierarchy as an indented tree with each node's effect on one class (NULL where
-- the beam search never expanded a node).
CREATE OR REPLACE MACRO effect_tree(target_class, classifier := NULL, edit_direction := 'add') AS TABLE
WITH RECURSIVE eff AS (
    SELECT node_id, mean_delta_prob, ci_low, ci_high, n_images, classifier_name,
           confounded_with, confound_share, clean_delta_prob, clean_ci_low, clean_ci_high, clean_n_images, clean_n_edits,
           adjusted_delta_prob
    FROM effects_for(target_class, classifier := classifier, edit_direction := edit_direction)
), tree AS (
    SELECT n.node_id, n.label, n.path, n.depth, n.path AS sort_key
    FROM nodes n WHERE n.parent_id IS NULL
    UNION ALL
    SELECT c.node_id, c.label, c.path, c.depth, t.sort_key || ' > ' || c.label
    FROM nodes c JOIN tree t ON c.parent_id = t.node_id
)
SELECT repeat('  ', t.depth - 1) || t.label AS tree,
       round(e.mean_delta_prob, 4) AS mean_delta_prob,
       round(e.ci_low, 4) AS ci_low, round(e.ci_high, 4) AS ci_high,
       e.n_images, t.depth, t.path,
       e.confounded_with, round(e.confound_share, 3) AS confound_share,
       round(e.clean_delta_prob, 4) AS clean_delta_prob, round(e.clean_ci_low, 4) AS clean_ci_low,
       round(e.clean_ci_high, 4) AS clean_ci_high, e.clean_n_images, e.clean_n_edits,
       round(e.adjusted_delta_prob, 4) AS adjusted_delta_prob
FROM tree t LEFT JOIN eff e ON e.node_id = t.node_id
ORDER BY t.sort_key;

-- Per-image explanation: the nodes that moved class X most on one image (an image id, id
-- prefix, path or file name; unknown or ambiguous is an error).
CREATE OR REPLACE MACRO image_explanation(image, target_class, classifier := NULL, edit_direction := 'add') AS TABLE
WITH args AS (
    SELECT edit_direction AS want_direction, k.classifier_key AS want_classifier, k.classifier_id,
           pi.image_key AS want_image, k.class_index AS want_class
    FROM pick_class(target_class, classifier) k, pick_image(image) pi
), side AS (
    -- v5: this image's side effects per node: checked edits (side_key 0) and the most frequent side concept
    SELECT s.editor_key, s.node_key,
           max(s.n_edits) FILTER (WHERE s.side_key = 0) AS n_checked,
           arg_min(sn.label, (-s.n_edits, -sn.depth, sn.label)) FILTER (WHERE s.side_key <> 0) AS side_label,
           max(s.n_edits) FILTER (WHERE s.side_key <> 0) AS n_top
    FROM side_effect_images s JOIN args ON s.image_key = args.want_image AND s.direction = args.want_direction
    LEFT JOIN nodes sn ON sn.node_key = s.side_key
    GROUP BY ALL
)
SELECT row_number() OVER (ORDER BY abs(x.valid_prob) DESC, n.path) AS rank,
       n.label AS node, n.path, round(x.prob_baseline, 4) AS prob_baseline,
       round(x.valid_prob, 4) AS mean_delta_prob, x.n_valid::BIGINT AS n_edits, i.image_id, i.uri,
       CASE WHEN sd.n_top >= confound_floor() * sd.n_checked THEN sd.side_label END AS confounded_with,
       round(coalesce(sd.n_top, 0) / sd.n_checked, 3) AS confound_share,
       round(x.clean_prob, 4) AS clean_delta_prob, x.n_clean::BIGINT AS clean_n_edits,
       round(x.valid_prob - x.side_corr, 4) AS adjusted_delta_prob
FROM effect_images x
JOIN args ON x.classifier_key = args.want_classifier
JOIN nodes n ON n.node_key = x.node_key
JOIN images i ON i.image_key = x.image_key
LEFT JOIN side sd ON sd.editor_key = x.editor_key AND sd.node_key = x.node_key
WHERE x.image_key = args.want_image
  AND x.class_index = args.want_class AND x.direction = args.want_direction
ORDER BY rank;

-- v5 (issue 13): the nodes whose effect on class X may be borrowed from a side effect: every
-- node with a named confound, its raw effect beside the clean and adjusted ones, and
-- `borrowed` = raw - adjusted (what the side concepts carried).
CREATE OR REPLACE MACRO confounds(target_class, classifier := NULL, edit_direction := 'add') AS TABLE
SELECT row_number() OVER (ORDER BY confound_share DESC, abs(mean_delta_prob) DESC NULLS LAST, path) AS rank,
       node, confounded_with, round(confound_share, 3) AS confound_share,
       round(mean_delta_prob, 4) AS mean_delta_prob, round(ci_low, 4) AS ci_low, round(ci_high, 4) AS ci_high,
       round(clean_delta_prob, 4) AS clean_delta_prob, round(clean_ci_low, 4) AS clean_ci_low,
       round(clean_ci_high, 4) AS clean_ci_high, clean_n_images, clean_n_edits,
       round(adjusted_delta_prob, 4) AS adjusted_delta_prob,
       round(mean_delta_prob - adjusted_delta_prob, 4) AS borrowed,
       n_images, n_edits, path, class_name, classifier_name
FROM effects_for(target_class, classifier := classifier, edit_direction := edit_direction)
WHERE confounded_with IS NOT NULL
ORDER BY rank;

-- ---------------------------------------------------------------- embeddings (diffex/embed.py)
-- The embedder a macro talks about: the one named (named_by), else the most recently
-- registered. Unknown names raise an error instead of an empty answer.
CREATE OR REPLACE MACRO pick_embedder(which) AS TABLE
SELECT embedder_id FROM (
    SELECT embedder_id, created_at FROM embedders
    WHERE which IS NULL OR named_by(which, embedder_id, spec, name)
    UNION ALL
    SELECT error('unknown embedder ' || which || ' (see diffex info)')::VARCHAR, NULL
    WHERE which IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM embedders WHERE named_by(which, embedder_id, spec, name))
)
ORDER BY created_at DESC NULLS LAST
LIMIT 1;

-- The vector of a taxonomy node's concept text ("a face with goatee"), by label or node id.
CREATE OR REPLACE MACRO node_vector(query_node, embedder := NULL) AS TABLE
SELECT x.vector AS query_vector, pe.embedder_id AS query_embedder
FROM embeddings x, pick_embedder(embedder) pe, nodes n
WHERE x.embedder_id = pe.embedder_id AND x.item_kind = 'node' AND x.item_id = n.node_id
  AND (n.label = lower(trim(query_node)) OR n.node_id = query_node)
UNION ALL
SELECT error('no node vector for ' || coalesce(query_node, 'NULL')
             || ' (give the label of a node indexed with --embedder)')::FLOAT[], NULL
WHERE NOT EXISTS (
    SELECT 1 FROM embeddings x, pick_embedder(embedder) pe, nodes n
    WHERE x.embedder_id = pe.embedder_id AND x.item_kind = 'node' AND x.item_id = n.node_id
      AND (n.label = lower(trim(query_node)) OR n.node_id = query_node))
LIMIT 1;

-- Exact-cosine search in SQL (FAISS cannot run inside a sandboxed query; `diffex search`
-- uses FAISS, for free text and images): the k single edits that look most like a node's
-- concept, with the node each edit was made for and its validity. Join edit_deltas on
-- edit_id for classifier effects, e.g.
--   SELECT s.*, d.delta_prob FROM nearest_edits('goatee', 20) s
--   JOIN edit_deltas d USING (edit_id) WHERE d.class_name = 'old' ORDER BY d.delta_prob DESC
CREATE OR REPLACE MACRO nearest_edits(query_node, k, embedder := NULL) AS TABLE
WITH q AS (SELECT * FROM node_vector(query_node, embedder := embedder)),
hits AS (
    SELECT x.item_id AS hit_id, list_cosine_similarity(x.vector, q.query_vector) AS sim
    FROM embeddings x, q
    WHERE x.embedder_id = q.query_embedder AND x.item_kind = 'edit'
)
SELECT row_number() OVER (ORDER BY h.sim DESC, e.edit_id) AS rank,
       round(h.sim, 4) AS similarity,
       (SELECT min(n.label) FROM edit_nodes en JOIN nodes n ON n.node_id = en.node_id WHERE en.edit_id = e.edit_id) AS node,
       (SELECT min(n.path) FROM edit_nodes en JOIN nodes n ON n.node_id = en.node_id WHERE en.edit_id = e.edit_id) AS path,
       e.direction, e.edit_id, e.image_id, coalesce(ev.valid, TRUE) AS valid, e.cache_path
FROM hits h
JOIN edits e ON e.edit_id = h.hit_id AND e.kind = 'single'
LEFT JOIN edit_validity_current ev ON ev.edit_id = e.edit_id
ORDER BY rank
LIMIT k;

-- The k original images that look most like a node's concept.
CREATE OR REPLACE MACRO nearest_images(query_node, k, embedder := NULL) AS TABLE
WITH q AS (SELECT * FROM node_vector(query_node, embedder := embedder))
SELECT row_number() OVER (ORDER BY list_cosine_similarity(x.vector, q.query_vector) DESC, i.image_id) AS rank,
       round(list_cosine_similarity(x.vector, q.query_vector), 4) AS similarity,
       i.image_id, i.uri
FROM embeddings x, q, images i
WHERE x.embedder_id = q.query_embedder AND x.item_kind = 'image' AND i.image_id = x.item_id
ORDER BY rank
LIMIT k;

-- Nodes whose concept texts lie nearest to another node's (`diffex search --nodes TEXT`
-- does the same for free text, e.g. a word that is not in the taxonomy).
CREATE OR REPLACE MACRO similar_nodes(query_node, k, embedder := NULL) AS TABLE
WITH q AS (SELECT * FROM node_vector(query_node, embedder := embedder))
SELECT row_number() OVER (ORDER BY list_cosine_similarity(x.vector, q.query_vector) DESC, n.path) AS rank,
       round(list_cosine_similarity(x.vector, q.query_vector), 4) AS similarity,
       n.label AS node, n.path, n.depth
FROM embeddings x, q, nodes n
WHERE x.embedder_id = q.query_embedder AND x.item_kind = 'node' AND n.node_id = x.item_id
ORDER BY rank
LIMIT k;

-- ------------------------------------------------------------------ joint semantics
-- (diffex/beam.py: after the hierarchy walk, combinations of the strongest semantics are
-- edited together, kind 'joint', one edit_nodes row per node.)

-- Every joint edit with each of its nodes and the direction that node's concept was
-- edited in (a 'mixed' joint edit keeps each direction in its prompts, 'remove:goatee').
CREATE OR REPLACE VIEW joint_edit_nodes AS
SELECT e.edit_id, e.image_id, e.editor_id, n.node_id, n.label, n.path, e.edit_key, e.image_key, e.editor_key,
       CASE WHEN e.direction <> 'mixed' THEN e.direction
            WHEN list_contains(e.prompts, 'remove:' || n.prompt) THEN 'remove' ELSE 'add' END AS node_direction
FROM edits e
JOIN edit_links l ON l.edit_key = e.edit_key
JOIN nodes n ON n.node_key = l.node_key
WHERE e.kind = 'joint' AND e.status = 'ok';

-- Per image: a combination's effect (mean over seeds, against the null-edit baseline)
-- beside the sum of its nodes' single effects on the same image (valid single edits, as in
-- image_effects); interaction = joint - sum of singles (0 = the semantics add up).
-- A combination is identified by its node ids and their directions (both in path order).
CREATE OR REPLACE VIEW joint_image_effects AS
WITH combos AS (
    SELECT edit_key, image_key, editor_key, image_id, editor_id,
           list(node_id ORDER BY path) AS node_ids,
           list(node_direction ORDER BY path) AS directions,
           list(label ORDER BY path) AS nodes
    FROM joint_edit_nodes
    GROUP BY edit_key, image_key, editor_key, image_id, editor_id
), unnested AS (
    SELECT c.image_id, c.editor_id, c.node_ids, c.directions, c.nodes, s.classifier_key,
           unnest(range(len(s.probs)))::INTEGER AS class_index,
           unnest(bs.probs)::DOUBLE AS prob_baseline, unnest(s.probs)::DOUBLE AS prob_edit,
           unnest(bs.logits)::DOUBLE AS logit_baseline, unnest(s.logits)::DOUBLE AS logit_edit
    FROM combos c
    JOIN edits be ON be.image_key = c.image_key AND be.editor_key = c.editor_key
                 AND be.kind = 'baseline' AND be.status = 'ok'
    JOIN item_scores s ON s.item_key = c.edit_key
    JOIN item_scores bs ON bs.item_key = be.edit_key AND bs.classifier_key = s.classifier_key
), deltas AS (
    SELECT u.image_id, u.editor_id, u.node_ids, u.directions, u.nodes, k.classifier_id, cl.class_name,
           u.prob_baseline, u.prob_edit - u.prob_baseline AS delta_prob, u.logit_edit - u.logit_baseline AS delta_logit
    FROM unnested u
    JOIN classifiers k ON k.classifier_key = u.classifier_key
    JOIN classes cl ON cl.classifier_id = k.classifier_id AND cl.class_index = u.class_index
), per_image AS (
    SELECT classifier_id, class_name, editor_id, node_ids, directions, nodes, image_id,
           avg(prob_baseline) AS prob_baseline,
           avg(delta_prob) AS mean_delta_prob,
           avg(delta_logit) AS mean_delta_logit,
           count(*) AS n_edits
    FROM deltas
    GROUP BY ALL
), parts AS (
    SELECT classifier_id, class_name, editor_id, node_ids, directions, image_id,
           unnest(node_ids) AS part_node, unnest(directions) AS part_direction
    FROM per_image
), singles AS (
    SELECT p.classifier_id, p.class_name, p.editor_id, p.node_ids, p.directions, p.image_id,
           -- NULL unless every node has a measured single effect on this image
           CASE WHEN count(ie.mean_delta_prob) = count(*) THEN sum(ie.mean_delta_prob) END AS sum_single_delta_prob
    FROM parts p
    LEFT JOIN image_effects ie
           ON ie.classifier_id = p.classifier_id AND ie.class_name = p.class_name
          AND ie.editor_id = p.editor_id AND ie.node_id = p.part_node
          AND ie.direction = p.part_direction AND ie.image_id = p.image_id
    GROUP BY ALL
)
SELECT pi.classifier_id, pi.class_name, pi.editor_id, pi.node_ids, pi.directions, pi.nodes,
       pi.image_id, pi.prob_baseline, pi.mean_delta_prob, pi.mean_delta_logit, pi.n_edits,
       s.sum_single_delta_prob,
       pi.mean_delta_prob - s.sum_single_delta_prob AS interaction
FROM per_image pi
JOIN singles s ON s.classifier_id = pi.classifier_id AND s.class_name = pi.class_name
              AND s.editor_id = pi.editor_id AND s.node_ids = pi.node_ids
              AND s.directions = pi.directions AND s.image_id = pi.image_id;

-- Dataset level: every combination x class x classifier x editor, with the 95% CI over
-- images as in node_effects, the sum of its nodes' single effects, and the interaction
-- (joint - sum of singles, averaged over the images where both are measured) with its CI.
CREATE OR REPLACE VIEW joint_effects AS
WITH per_combo AS (
    SELECT classifier_id, class_name, editor_id, node_ids, directions, nodes,
           count(*) AS n_images,
           sum(n_edits) AS n_edits,
           avg(mean_delta_prob) AS mean_delta_prob,
           stddev_samp(mean_delta_prob) AS sd_delta_prob,
           avg(mean_delta_logit) AS mean_delta_logit,
           avg(sum_single_delta_prob) AS sum_single_delta_prob,
           avg(interaction) AS interaction,
           stddev_samp(interaction) AS sd_interaction,
           count(interaction) AS n_interaction,
           avg(CASE WHEN mean_delta_prob > 0 THEN 1.0 WHEN mean_delta_prob < 0 THEN 0.0 ELSE 0.5 END) AS frac_up
    FROM joint_image_effects
    GROUP BY ALL
)
SELECT p.classifier_id, classifier_label(clf.spec, clf.name, clf.classifier_id) AS classifier_name, p.class_name, p.editor_id,
       array_to_string(p.nodes, ' + ') AS combination,
       p.nodes, p.directions, p.node_ids, len(p.node_ids) AS n_nodes,
       p.mean_delta_prob,
       clip(p.mean_delta_prob - t975(p.n_images - 1) * coalesce(p.sd_delta_prob, 0) / sqrt(p.n_images), -1.0, 1.0) AS ci_low,
       clip(p.mean_delta_prob + t975(p.n_images - 1) * coalesce(p.sd_delta_prob, 0) / sqrt(p.n_images), -1.0, 1.0) AS ci_high,
       p.mean_delta_logit,
       p.sum_single_delta_prob,
       p.interaction,
       p.interaction - t975(p.n_interaction - 1) * coalesce(p.sd_interaction, 0) / sqrt(p.n_interaction) AS interaction_ci_low,
       p.interaction + t975(p.n_interaction - 1) * coalesce(p.sd_interaction, 0) / sqrt(p.n_interaction) AS interaction_ci_high,
       p.n_images, p.n_edits,
       CASE WHEN p.mean_delta_prob > 0 THEN 'up' WHEN p.mean_delta_prob < 0 THEN 'down' ELSE 'none' END AS effect,
       CASE WHEN p.mean_delta_prob >= 0 THEN p.frac_up ELSE 1 - p.frac_up END AS sign_consistency
FROM per_combo p
JOIN classifiers clf ON clf.classifier_id = p.classifier_id;

-- The best combinations of semantics for class X, ranked by |mean delta P(class)|.
CREATE OR REPLACE MACRO top_combinations(target_class, k, classifier := NULL) AS TABLE
WITH args AS (SELECT pc.classifier_id AS want_classifier FROM pick_classifier(classifier) pc)
SELECT row_number() OVER (ORDER BY abs(je.mean_delta_prob) DESC, je.combination) AS rank,
       je.combination, je.nodes, je.directions, je.n_nodes,
       round(je.mean_delta_prob, 4) AS mean_delta_prob,
       round(je.ci_low, 4) AS ci_low, round(je.ci_high, 4) AS ci_high,
       round(je.sum_single_delta_prob, 4) AS sum_single_delta_prob,
       round(je.interaction, 4) AS interaction,
       round(je.interaction_ci_low, 4) AS interaction_ci_low,
       round(je.interaction_ci_high, 4) AS interaction_ci_high,
       je.n_images, je.n_edits, je.effect, round(je.sign_consistency, 3) AS sign_consistency,
       je.class_name, je.classifier_name
FROM joint_effects je, args
WHERE je.classifier_id = args.want_classifier
  AND je.class_name = checked_class(target_class, classifier)
ORDER BY rank
LIMIT k;

-- ------------------------------------------------------------------ comparing classifiers
-- Two-sided p-value of a standard normal z: erfc(|z|/sqrt 2) by Abramowitz & Stegun 7.1.26
-- (absolute error below 1.5e-7; DuckDB has no erf).
CREATE OR REPLACE MACRO normal_p2(z) AS (
    WITH q AS (SELECT abs(z) / sqrt(2) AS x, 1 / (1 + 0.3275911 * abs(z) / sqrt(2)) AS u)
    SELECT (0.254829592 * u - 0.284496736 * u ^ 2 + 1.421413741 * u ^ 3
            - 1.453152027 * u ^ 4 + 1.061405429 * u ^ 5) * exp(-x * x)
    FROM q
);

-- Two-sided p-value of Student's t with df degrees of freedom, through Wallace's (1959)
-- normal approximation z = (8df+1)/(8df+3) * sqrt(df * ln(1 + t^2/df)) (within 0.003 of
-- the exact p for df >= 3, tested; the library's permutation test needs no approximation).
CREATE OR REPLACE MACRO t_test_p2(t, df) AS
    CASE WHEN t IS NULL OR df IS NULL OR df < 1 THEN NULL
         WHEN isinf(t) THEN 0.0
         ELSE normal_p2((8 * df + 1) / (8 * df + 3) * sqrt(df * ln(1 + t * t / df))) END;

-- Per (node, direction, class, image): a node's effect under classifier A and under B,
-- PAIRED over the very same cached edits (each edit and its image's baseline scored by
-- both; classes matched by name; edits judged invalid left out, as in node_effects). Where
-- both classifiers scored the same valid edits (the usual case: edits_fp and n_valid agree)
-- this reads effect_images; elsewhere it pairs the edits themselves.
CREATE OR REPLACE MACRO paired_image_effects(classifier_a, classifier_b, only_class := NULL) AS TABLE
WITH args AS (
    SELECT ka.classifier_key AS key_a, kb.classifier_key AS key_b, ka.classifier_id AS id_a, kb.classifier_id AS id_b
    FROM pick_classifier(classifier_a) pa, pick_classifier(classifier_b) pb, classifiers ka, classifiers kb
    WHERE ka.classifier_id = pa.classifier_id AND kb.classifier_id = pb.classifier_id
), class_pairs AS (
    SELECT ca.class_name, ca.class_index AS index_a, cb.class_index AS index_b
    FROM args
    JOIN classes ca ON ca.classifier_id = args.id_a
    JOIN classes cb ON cb.classifier_id = args.id_b AND cb.class_name = ca.class_name
    WHERE only_class IS NULL OR ca.class_name = only_class
), both_rows AS (
    SELECT cp.class_name, xa.editor_key, xa.node_key, xa.direction, xa.image_key,
           xa.valid_prob AS effect_a, xb.valid_prob AS effect_b, xa.n_valid,
           xa.n_valid = xb.n_valid AND xa.edits_fp = xb.edits_fp AS same_edits
    FROM args
    JOIN effect_images xa ON xa.classifier_key = args.key_a
    JOIN class_pairs cp ON cp.index_a = xa.class_index
    JOIN effect_images xb ON xb.classifier_key = args.key_b AND xb.class_index = cp.index_b
                         AND xb.editor_key = xa.editor_key AND xb.node_key = xa.node_key
                         AND xb.direction = xa.direction AND xb.image_key = xa.image_key
    WHERE xa.n_valid > 0 AND xb.n_valid > 0
), differing AS (
    SELECT DISTINCT image_key FROM both_rows WHERE NOT same_edits
), by_edit AS (
    SELECT cp.class_name, da.editor_key, da.node_key, da.direction, da.image_key,
           avg(da.prob_edit - da.prob_baseline) AS effect_a,
           avg(db.prob_edit - db.prob_baseline) AS effect_b,
           avg((db.prob_edit - db.prob_baseline) - (da.prob_edit - da.prob_baseline)) AS diff,
           count(*) AS n_edits
    FROM args
    JOIN edit_class_deltas_for((SELECT coalesce(list(image_key), []::BIGINT[]) FROM differing)) da ON da.classifier_key = args.key_a
    JOIN class_pairs cp ON cp.index_a = da.class_index
    JOIN edit_class_deltas_for((SELECT coalesce(list(image_key), []::BIGINT[]) FROM differing)) db
         ON db.classifier_key = args.key_b AND db.class_index = cp.index_b
        AND db.edit_key = da.edit_key AND db.node_key = da.node_key
    WHERE da.valid AND db.valid
    GROUP BY ALL
), paired AS (
    SELECT class_name, editor_key, node_key, direction, image_key, effect_a, effect_b,
           effect_b - effect_a AS diff, n_valid::BIGINT AS n_edits
    FROM both_rows WHERE same_edits
    UNION ALL
    SELECT b.class_name, b.editor_key, b.node_key, b.direction, b.image_key, b.effect_a, b.effect_b, b.diff, b.n_edits
    FROM by_edit b
    SEMI JOIN both_rows r ON r.class_name = b.class_name AND r.editor_key = b.editor_key AND r.node_key = b.node_key
                         AND r.direction = b.direction AND r.image_key = b.image_key AND NOT r.same_edits
)
SELECT p.class_name, ed.editor_id, n.node_id, p.direction, i.image_id,
       p.effect_a, p.effect_b, p.diff, p.n_edits
FROM paired p
JOIN editors ed ON ed.editor_key = p.editor_key
JOIN nodes n ON n.node_key = p.node_key
JOIN images i ON i.image_key = p.image_key;

-- What changed between two classifier versions for class X: every node's effect under A
-- and B over the same edits, the difference B - A with its 95% CI over images, a paired
-- t-test p-value (normal approximation above; `diffex compare` / diffex.compare use an
-- exact-or-Monte-Carlo paired sign-flip permutation test instead), Benjamini-Hochberg
-- adjusted p over the nodes listed, and `significant` = adjusted p < alpha AND
-- |diff| >= min_diff (a change too small to matter is never flagged).
CREATE OR REPLACE MACRO compare_classifiers(classifier_a, classifier_b, target_class,
                                            edit_direction := 'add', alpha := 0.05, min_diff := 0.02) AS TABLE
WITH args AS (
    SELECT checked_class(target_class, classifier_a) AS want_class,
           checked_class(target_class, classifier_b) AS want_class_b,
           edit_direction AS want_direction, alpha AS want_alpha, min_diff AS want_min_diff
), keys AS (
    SELECT ka.classifier_key AS key_a, kb.classifier_key AS key_b, ca.class_index AS index_a, cb.class_index AS index_b
    FROM pick_classifier(classifier_a) pa, pick_classifier(classifier_b) pb, args
    JOIN classifiers ka ON ka.classifier_id = pa.classifier_id
    JOIN classifiers kb ON kb.classifier_id = pb.classifier_id
    JOIN classes ca ON ca.classifier_id = ka.classifier_id AND ca.class_name = args.want_class
    JOIN classes cb ON cb.classifier_id = kb.classifier_id AND cb.class_name = args.want_class_b
), summed AS (
    -- images where both classifiers averaged the very same edits: the running pair sums
    SELECT p.node_key, p.direction, sum(p.n_images) AS n, sum(p.n_edits) AS n_edits,
           sum(p.sum_a) AS s_a, sum(p.sum_b) AS s_b, sum(p.sum_diff) AS s_d, sum(p.sumsq_diff) AS s_dd
    FROM effect_pairs p, keys, args
    WHERE p.classifier_a = keys.key_a AND p.classifier_b = keys.key_b AND p.class_a = keys.index_a
      AND p.class_b = keys.index_b AND p.direction = args.want_direction
    GROUP BY ALL
), differing AS (
    SELECT d.* FROM effect_pair_differing d, keys, args
    WHERE d.classifier_a = keys.key_a AND d.classifier_b = keys.key_b AND d.direction = args.want_direction
), deltas AS MATERIALIZED (
    SELECT * FROM edit_class_deltas_for((SELECT coalesce(list(DISTINCT image_key), []::BIGINT[]) FROM differing))
), by_edit AS (
    -- the (rare) images where they scored different edits: paired edit by edit
    SELECT da.node_key, da.editor_key, da.image_key,
           avg(da.prob_edit - da.prob_baseline) AS effect_a, avg(db.prob_edit - db.prob_baseline) AS effect_b,
           avg((db.prob_edit - db.prob_baseline) - (da.prob_edit - da.prob_baseline)) AS diff, count(*) AS n_edits
    FROM keys, args
    JOIN deltas da ON da.classifier_key = keys.key_a AND da.class_index = keys.index_a AND da.direction = args.want_direction
    JOIN deltas db ON db.classifier_key = keys.key_b AND db.class_index = keys.index_b
        AND db.edit_key = da.edit_key AND db.node_key = da.node_key
    SEMI JOIN differing d ON d.node_key = da.node_key AND d.editor_key = da.editor_key AND d.image_key = da.image_key
    WHERE da.valid AND db.valid
    GROUP BY ALL
), extra AS (
    SELECT node_key, args.want_direction AS direction, count(*) AS n, sum(n_edits) AS n_edits,
           sum(effect_a) AS s_a, sum(effect_b) AS s_b, sum(diff) AS s_d, sum(diff * diff) AS s_dd
    FROM by_edit, args GROUP BY ALL
), per_node AS (
    SELECT n.node_id, t.direction, args.want_class AS class_name,
           sum(t.n) AS n_images, sum(t.n_edits) AS n_edits,
           sum(t.s_a) / sum(t.n) AS mean_a, sum(t.s_b) / sum(t.n) AS mean_b, sum(t.s_d) / sum(t.n) AS mean_diff,
           CASE WHEN sum(t.n) > 1 THEN sqrt(greatest(0, (sum(t.s_dd) - sum(t.s_d) ^ 2 / sum(t.n)) / (sum(t.n) - 1))) END AS sd_diff
    FROM (SELECT * FROM summed UNION ALL SELECT * FROM extra) t
    JOIN nodes n ON n.node_key = t.node_key, args
    GROUP BY n.node_id, t.direction, args.want_class
    HAVING sum(t.n) > 0
), tested AS (
    SELECT *,
           CASE WHEN n_images < 2 THEN NULL
                WHEN sd_diff = 0 THEN CASE WHEN mean_diff = 0 THEN 1.0 ELSE 0.0 END
                ELSE t_test_p2(mean_diff / (sd_diff / sqrt(n_images)), n_images - 1) END AS p_raw
    FROM per_node
), ranked AS (
    SELECT *, row_number() OVER (ORDER BY p_raw NULLS LAST, node_id) AS p_rank,
           count(p_raw) OVER () AS n_tests
    FROM tested
), adjusted AS (
    -- BH step-up: min over ranks >= i of p_(j) * m / j
    SELECT *, least(1.0, min(p_raw * n_tests / p_rank) OVER (
               ORDER BY p_raw DESC NULLS FIRST, node_id DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS p_adj
    FROM ranked
)
SELECT n.label AS node, parent.label AS parent, n.depth, n.path, a.direction, a.class_name,
       round(a.mean_a, 4) AS effect_a, round(a.mean_b, 4) AS effect_b, round(a.mean_diff, 4) AS diff,
       round(clip(a.mean_diff - t975(a.n_images - 1) * coalesce(a.sd_diff, 0) / sqrt(a.n_images), -2.0, 2.0), 4) AS ci_low,
       round(clip(a.mean_diff + t975(a.n_images - 1) * coalesce(a.sd_diff, 0) / sqrt(a.n_images), -2.0, 2.0), 4) AS ci_high,
       a.p_raw AS p_t_test, a.p_adj AS p_t_test_bh,
       coalesce(a.p_adj < args.want_alpha AND abs(a.mean_diff) >= args.want_min_diff, FALSE) AS significant,
       a.n_images, a.n_edits
FROM adjusted a
JOIN nodes n ON n.node_id = a.node_id
LEFT JOIN nodes parent ON parent.node_id = n.parent_id, args
ORDER BY significant DESC, abs(a.mean_diff) DESC, n.path;

-- ------------------------------------------------------------------ schedules (v6)
-- Per (classifier, editor, node, direction, class): what the latest index run that reached the
-- node drew for it and why it stopped (diffex/analysis/adaptive.py): 'in' / 'out' (its interval
-- cleared the answer's cut-off), 'cap' (every image at the most seeds), 'budget', 'pruned'
-- (its parent could not enter the beam: never edited), 'fixed' (a --samples N run).
CREATE OR REPLACE VIEW node_schedule AS
SELECT k.classifier_id, c.class_name, ed.editor_id, n.node_id, n.label AS node, n.path, n.depth,
       s.direction, s.run_id, s.schedule, s.n_images AS schedule_images, s.n_samples, s.mean_delta_prob,
       s.ci_low, s.ci_high, s.stop_reason
FROM (SELECT x.*, row_number() OVER (PARTITION BY x.classifier_key, x.editor_key, x.node_key, x.direction, x.class_index
                                     ORDER BY r.started_at DESC, x.run_id DESC) AS latest
      FROM schedule_nodes x JOIN runs r ON r.run_id = x.run_id) s
JOIN classifiers k ON k.classifier_key = s.classifier_key
JOIN classes c ON c.classifier_id = k.classifier_id AND c.class_index = s.class_index
JOIN editors ed ON ed.editor_key = s.editor_key
JOIN nodes n ON n.node_key = s.node_key
WHERE s.latest = 1;

-- node_effects (every stored sample) with the latest schedule's sample count and stop reason.
CREATE OR REPLACE VIEW node_effects_schedule AS
SELECT e.*, s.schedule, s.n_samples AS schedule_samples, s.stop_reason
FROM node_effects e
LEFT JOIN node_schedule s ON s.classifier_id = e.classifier_id AND s.class_name = e.class_name
     AND s.editor_id = e.editor_id AND s.node_id = e.node_id AND s.direction = e.direction;

-- ------------------------------------------------------------------ report and policy checks (issue 14)
-- Read by diffex/report/ (`diffex report`) and diffex/analysis/policy.py (`diffex check`)
-- through Store.report_* methods. They only read; nothing here is recomputed from scores.

-- Per (node, editor, direction): single edits by status, so a report can say how many edits
-- were blocked by a safety checker or failed (never averaged into an effect).
CREATE OR REPLACE VIEW node_edit_status AS
SELECT n.node_id, ed.editor_id, e.direction,
       count(*) AS n_edits_all,
       count(*) FILTER (WHERE e.status = 'blocked') AS n_blocked,
       count(*) FILTER (WHERE e.status = 'failed') AS n_failed
FROM edits e
JOIN edit_links l ON l.edit_key = e.edit_key
JOIN nodes n ON n.node_key = l.node_key
JOIN editors ed ON ed.editor_key = e.editor_key
WHERE e.kind = 'single'
GROUP BY ALL;

-- Every image with its original's and its null-edit baseline's P(class) under one classifier,
-- the baseline's cached file (per editor), and its strongest per-node effect (|mean delta P|
-- of valid edits in `edit_direction`), so a report can show the most affected images first.
CREATE OR REPLACE MACRO report_images(target_class, classifier := NULL, edit_direction := 'add') AS TABLE
WITH args AS (
    SELECT k.classifier_key AS want_key, k.class_index AS want_index
    FROM pick_class(target_class, classifier) k
), strongest AS (
    SELECT x.image_key, x.editor_key, max(abs(x.valid_prob)) AS strongest_effect
    FROM effect_images x, args
    WHERE x.classifier_key = args.want_key AND x.class_index = args.want_index AND x.direction = edit_direction
    GROUP BY ALL
)
SELECT i.image_id, i.uri, i.width, i.height, ed.editor_id,
       b.cache_path AS baseline_path, b.status AS baseline_status,
       so.probs[args.want_index + 1] AS prob_original,     -- lists are 1-based, class_index 0-based
       sb.probs[args.want_index + 1] AS prob_baseline,
       st.strongest_effect
FROM images i CROSS JOIN args
LEFT JOIN edits b ON b.image_key = i.image_key AND b.kind = 'baseline'
LEFT JOIN editors ed ON ed.editor_key = b.editor_key
LEFT JOIN item_scores so ON so.item_key = i.image_key AND so.classifier_key = args.want_key
LEFT JOIN item_scores sb ON sb.item_key = b.edit_key AND sb.classifier_key = args.want_key
LEFT JOIN strongest st ON st.image_key = i.image_key AND st.editor_key = b.editor_key
ORDER BY st.strongest_effect DESC NULLS LAST, i.uri;

-- Every single edit of the given nodes on the given images (lists of ids), whatever its
-- status ('ok' | 'failed' | 'blocked'), with its cached file, its validity verdict and P(class)
-- of the edit under one classifier (NULL where it has no pixels or was not scored).
CREATE OR REPLACE MACRO report_edits(target_class, node_ids, image_ids, classifier := NULL) AS TABLE
WITH args AS (
    SELECT k.classifier_key AS want_key, k.class_index AS want_index
    FROM pick_class(target_class, classifier) k
), e AS (
    SELECT x.edit_key, x.edit_id, x.image_id, x.editor_id, x.direction, x.seed, x.status, x.cache_path
    FROM edits x
    WHERE x.kind = 'single' AND x.image_id IN (SELECT unnest(image_ids))
), v AS (
    SELECT ev.edit_id, arg_max(ev.valid, m.created_at) AS valid, arg_max(ev.direction_sim, m.created_at) AS direction_sim
    FROM edit_validity ev JOIN embedders m ON m.embedder_id = ev.embedder_id
    WHERE ev.edit_id IN (SELECT edit_id FROM e)
    GROUP BY ev.edit_id
)
SELECT n.node_id, e.image_id, e.editor_id, e.edit_id, e.direction, e.seed, e.status, e.cache_path,
       coalesce(v.valid, TRUE) AS valid, v.direction_sim,
       s.probs[args.want_index + 1] AS prob_edit
FROM e CROSS JOIN args
JOIN edit_links l ON l.edit_key = e.edit_key
JOIN nodes n ON n.node_key = l.node_key
LEFT JOIN item_scores s ON s.item_key = e.edit_key AND s.classifier_key = args.want_key
LEFT JOIN v ON v.edit_id = e.edit_id
WHERE n.node_id IN (SELECT unnest(node_ids))
ORDER BY n.node_id, e.image_id, e.direction, e.seed;
