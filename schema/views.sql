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

CREATE OR REPLACE VIEW class_scores AS
SELECT s.classifier_id, s.item_id, s.class_index, c.class_name, s.logit, s.prob
FROM scores s
JOIN classes c ON c.classifier_id = s.classifier_id AND c.class_index = s.class_index;

-- Every single-node edit against its image's null-edit baseline, for every class.
CREATE OR REPLACE VIEW edit_deltas AS
SELECT e.edit_id, e.image_id, e.editor_id, en.node_id, e.direction, e.seed,
       s.classifier_id, s.class_index, c.class_name,
       b.prob AS prob_baseline, s.prob AS prob_edit,
       s.prob - b.prob AS delta_prob,
       s.logit - b.logit AS delta_logit
FROM edits e
JOIN edit_nodes en ON en.edit_id = e.edit_id
JOIN edits be ON be.image_id = e.image_id AND be.editor_id = e.editor_id
             AND be.kind = 'baseline' AND be.status = 'ok'
JOIN scores s ON s.item_id = e.edit_id
JOIN scores b ON b.item_id = be.edit_id AND b.classifier_id = s.classifier_id
             AND b.class_index = s.class_index
JOIN classes c ON c.classifier_id = s.classifier_id AND c.class_index = s.class_index
WHERE e.kind = 'single' AND e.status = 'ok';

-- Per image: the effect of a node averaged over its edit samples (seeds).
CREATE OR REPLACE VIEW image_effects AS
SELECT d.classifier_id, d.class_name, d.editor_id, d.node_id, n.label AS node, n.path,
       d.direction, d.image_id, i.uri,
       avg(d.prob_baseline) AS prob_baseline,
       avg(d.delta_prob) AS mean_delta_prob,
       avg(d.delta_logit) AS mean_delta_logit,
       count(*) AS n_edits
FROM edit_deltas d
JOIN nodes n ON n.node_id = d.node_id
JOIN images i ON i.image_id = d.image_id
GROUP BY ALL;

-- Dataset level: every node x class x classifier x editor x direction. The unit of the
-- confidence interval is the image (samples of one image are not independent).
CREATE OR REPLACE VIEW node_effects AS
WITH per_node AS (
    SELECT classifier_id, class_name, editor_id, node_id, direction,
           count(*) AS n_images,
           sum(n_edits) AS n_edits,
           avg(mean_delta_prob) AS mean_delta_prob,
           stddev_samp(mean_delta_prob) AS sd_delta_prob,
           avg(mean_delta_logit) AS mean_delta_logit,
           avg(CASE WHEN mean_delta_prob > 0 THEN 1.0 WHEN mean_delta_prob < 0 THEN 0.0 ELSE 0.5 END) AS frac_up
    FROM image_effects
    GROUP BY ALL
)
SELECT p.classifier_id, k.name AS classifier_name, p.class_name, p.editor_id,
       p.node_id, n.label AS node, n.path, parent.label AS parent, n.depth, p.direction,
       p.mean_delta_prob,
       p.mean_delta_prob - t975(p.n_images - 1) * coalesce(p.sd_delta_prob, 0) / sqrt(p.n_images) AS ci_low,
       p.mean_delta_prob + t975(p.n_images - 1) * coalesce(p.sd_delta_prob, 0) / sqrt(p.n_images) AS ci_high,
       p.mean_delta_logit,
       p.n_images, p.n_edits,
       CASE WHEN p.mean_delta_prob > 0 THEN 'up' WHEN p.mean_delta_prob < 0 THEN 'down' ELSE 'none' END AS effect,
       -- share of images moved the same way as the mean: 1.0 = every image agrees
       CASE WHEN p.mean_delta_prob >= 0 THEN p.frac_up ELSE 1 - p.frac_up END AS sign_consistency
FROM per_node p
JOIN nodes n ON n.node_id = p.node_id
LEFT JOIN nodes parent ON parent.node_id = n.parent_id
JOIN classifiers k ON k.classifier_id = p.classifier_id;

-- The classifier a macro talks about: the one named (id, id prefix, name or spec), else
-- the most recently indexed. Unknown names raise an error instead of an empty answer.
CREATE OR REPLACE MACRO pick_classifier(which) AS TABLE
SELECT classifier_id FROM (
    SELECT classifier_id, indexed_at FROM classifiers
    WHERE which IS NULL OR classifier_id = which OR spec = which OR name = which
       OR (length(which) >= 6 AND starts_with(classifier_id, which))
    UNION ALL
    SELECT error('unknown classifier ' || which || ' (see diffex info)')::VARCHAR, NULL
    WHERE which IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM classifiers
        WHERE classifier_id = which OR spec = which OR name = which
           OR (length(which) >= 6 AND starts_with(classifier_id, which)))
)
ORDER BY indexed_at DESC NULLS LAST
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

-- Node effects for one class of one classifier (default: the most recently indexed).
-- (DuckDB refuses a macro parameter named like a column it reads or returns, hence
-- `edit_direction` and `classifier_name`; parameters are copied into `args` first.)
CREATE OR REPLACE MACRO effects_for(target_class, classifier := NULL, edit_direction := 'add') AS TABLE
WITH args AS (
    SELECT edit_direction AS want_direction, pc.classifier_id AS want_classifier
    FROM pick_classifier(classifier) pc
)
SELECT ne.*
FROM node_effects ne, args
WHERE ne.classifier_id = args.want_classifier
  AND ne.class_name = checked_class(target_class, classifier)
  AND ne.direction = args.want_direction;

-- The question users ask first: which subtypes (nodes below a top-level group) move
-- class X the most, ranked by |mean delta of P(class)|.
CREATE OR REPLACE MACRO top_subtypes(target_class, k, classifier := NULL, edit_direction := 'add') AS TABLE
SELECT row_number() OVER (ORDER BY abs(mean_delta_prob) DESC, path) AS rank,
       node, parent, depth, path,
       round(mean_delta_prob, 4) AS mean_delta_prob,
       round(ci_low, 4) AS ci_low, round(ci_high, 4) AS ci_high,
       round(mean_delta_logit, 4) AS mean_delta_logit,
       n_images, n_edits, effect, round(sign_consistency, 3) AS sign_consistency,
       class_name, classifier_name
FROM effects_for(target_class, classifier := classifier, edit_direction := edit_direction)
WHERE depth >= 2
ORDER BY rank
LIMIT k;

-- Same ranking over every node, top-level groups included.
CREATE OR REPLACE MACRO top_nodes(target_class, k, classifier := NULL, edit_direction := 'add') AS TABLE
SELECT row_number() OVER (ORDER BY abs(mean_delta_prob) DESC, path) AS rank,
       node, parent, depth, path,
       round(mean_delta_prob, 4) AS mean_delta_prob,
       round(ci_low, 4) AS ci_low, round(ci_high, 4) AS ci_high,
       n_images, n_edits, effect, class_name, classifier_name
FROM effects_for(target_class, classifier := classifier, edit_direction := edit_direction)
ORDER BY rank
LIMIT k;

-- The hierarchy as an indented tree with each node's effect on one class (NULL where
-- the beam search never expanded a node).
CREATE OR REPLACE MACRO effect_tree(target_class, classifier := NULL, edit_direction := 'add') AS TABLE
WITH RECURSIVE eff AS (
    SELECT node_id, mean_delta_prob, ci_low, ci_high, n_images
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
       e.n_images, t.depth, t.path
FROM tree t LEFT JOIN eff e ON e.node_id = t.node_id
ORDER BY t.sort_key;

-- Per-image explanation: the nodes that moved class X most on one image.
CREATE OR REPLACE MACRO image_explanation(image, target_class, classifier := NULL, edit_direction := 'add') AS TABLE
WITH args AS (
    SELECT image AS want_image, edit_direction AS want_direction, pc.classifier_id AS want_classifier
    FROM pick_classifier(classifier) pc
)
SELECT row_number() OVER (ORDER BY abs(ie.mean_delta_prob) DESC, ie.path) AS rank,
       ie.node, ie.path, round(ie.prob_baseline, 4) AS prob_baseline,
       round(ie.mean_delta_prob, 4) AS mean_delta_prob, ie.n_edits, ie.image_id, ie.uri
FROM image_effects ie, args
WHERE ie.classifier_id = args.want_classifier
  AND ie.class_name = checked_class(target_class, classifier) AND ie.direction = args.want_direction
  AND (ie.image_id = args.want_image OR starts_with(ie.image_id, args.want_image)
       OR ie.uri = args.want_image OR ie.uri LIKE '%/' || args.want_image)
ORDER BY rank;
