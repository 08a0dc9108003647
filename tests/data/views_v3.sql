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

-- Every single-node edit against its image's null-edit baseline, for every class.
-- `valid` is the edit's validity (TRUE when no embedder judged it).
CREATE OR REPLACE VIEW edit_deltas AS
SELECT e.edit_id, e.image_id, e.editor_id, en.node_id, e.direction, e.seed,
       s.classifier_id, s.class_index, c.class_name,
       b.prob AS prob_baseline, s.prob AS prob_edit,
       s.prob - b.prob AS delta_prob,
       s.logit - b.logit AS delta_logit,
       coalesce(ev.valid, TRUE) AS valid,
       ev.direction_sim
FROM edits e
LEFT JOIN edit_validity_current ev ON ev.edit_id = e.edit_id
JOIN edit_nodes en ON en.edit_id = e.edit_id
JOIN edits be ON be.image_id = e.image_id AND be.editor_id = e.editor_id
             AND be.kind = 'baseline' AND be.status = 'ok'
JOIN scores s ON s.item_id = e.edit_id
JOIN scores b ON b.item_id = be.edit_id AND b.classifier_id = s.classifier_id
             AND b.class_index = s.class_index
JOIN classes c ON c.classifier_id = s.classifier_id AND c.class_index = s.class_index
WHERE e.kind = 'single' AND e.status = 'ok';

-- Per image: the effect of a node averaged over its edit samples (seeds). Invalid edits
-- (the embedder saw no sign of the concept) are left out unless include_invalid; n_invalid
-- counts them either way. An image whose every edit is invalid keeps a row with NULL effect.
CREATE OR REPLACE MACRO image_effects_with(include_invalid) AS TABLE
SELECT d.classifier_id, d.class_name, d.editor_id, d.node_id, n.label AS node, n.path,
       d.direction, d.image_id, i.uri,
       avg(d.prob_baseline) AS prob_baseline,
       avg(d.delta_prob) FILTER (WHERE d.valid OR include_invalid) AS mean_delta_prob,
       avg(d.delta_logit) FILTER (WHERE d.valid OR include_invalid) AS mean_delta_logit,
       count(*) FILTER (WHERE d.valid OR include_invalid) AS n_edits,
       count(*) FILTER (WHERE NOT d.valid) AS n_invalid
FROM edit_deltas d
JOIN nodes n ON n.node_id = d.node_id
JOIN images i ON i.image_id = d.image_id
GROUP BY ALL;

CREATE OR REPLACE VIEW image_effects AS SELECT * FROM image_effects_with(FALSE);
CREATE OR REPLACE VIEW image_effects_all AS SELECT * FROM image_effects_with(TRUE);

-- Dataset level: every node x class x classifier x editor x direction. The unit of the
-- confidence interval is the image (samples of one image are not independent).
-- n_invalid: edits left out because the embedder saw no sign of the concept in them
-- (node_effects_all and include_invalid := TRUE count them in).
CREATE OR REPLACE MACRO node_effects_with(include_invalid) AS TABLE
WITH per_node AS (
    SELECT classifier_id, class_name, editor_id, node_id, direction,
           count(mean_delta_prob) AS n_images,
           sum(n_edits) AS n_edits,
           sum(n_invalid) AS n_invalid,
           avg(mean_delta_prob) AS mean_delta_prob,
           stddev_samp(mean_delta_prob) AS sd_delta_prob,
           avg(mean_delta_logit) AS mean_delta_logit,
           avg(CASE WHEN mean_delta_prob > 0 THEN 1.0 WHEN mean_delta_prob < 0 THEN 0.0
                    WHEN mean_delta_prob = 0 THEN 0.5 END) AS frac_up
    FROM image_effects_with(include_invalid)
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
       CASE WHEN p.mean_delta_prob >= 0 THEN p.frac_up ELSE 1 - p.frac_up END AS sign_consistency,
       p.n_invalid::BIGINT AS n_invalid
FROM per_node p
JOIN nodes n ON n.node_id = p.node_id
LEFT JOIN nodes parent ON parent.node_id = n.parent_id
JOIN classifiers k ON k.classifier_id = p.classifier_id;

CREATE OR REPLACE VIEW node_effects AS SELECT * FROM node_effects_with(FALSE);
CREATE OR REPLACE VIEW node_effects_all AS SELECT * FROM node_effects_with(TRUE);

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
       class_name, classifier_name, n_invalid
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
       n_images, n_edits, effect, class_name, classifier_name, n_invalid
FROM effects_for(target_class, classifier := classifier, edit_direction := edit_direction, include_invalid := include_invalid)
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

-- ---------------------------------------------------------------- embeddings (diffex/embed.py)
-- The embedder a macro talks about: the one named (id, id prefix, name or spec), else the
-- most recently registered. Unknown names raise an error instead of an empty answer.
CREATE OR REPLACE MACRO pick_embedder(which) AS TABLE
SELECT embedder_id FROM (
    SELECT embedder_id, created_at FROM embedders
    WHERE which IS NULL OR embedder_id = which OR spec = which OR name = which
       OR (length(which) >= 6 AND starts_with(embedder_id, which))
    UNION ALL
    SELECT error('unknown embedder ' || which || ' (see diffex info)')::VARCHAR, NULL
    WHERE which IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM embedders
        WHERE embedder_id = which OR spec = which OR name = which
           OR (length(which) >= 6 AND starts_with(embedder_id, which)))
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
SELECT e.edit_id, e.image_id, e.editor_id, en.node_id, n.label, n.path,
       CASE WHEN e.direction <> 'mixed' THEN e.direction
            WHEN list_contains(e.prompts, 'remove:' || n.prompt) THEN 'remove' ELSE 'add' END AS node_direction
FROM edits e
JOIN edit_nodes en ON en.edit_id = e.edit_id
JOIN nodes n ON n.node_id = en.node_id
WHERE e.kind = 'joint' AND e.status = 'ok';

-- Per image: a combination's effect (mean over seeds, against the null-edit baseline)
-- beside the sum of its nodes' single effects on the same image (valid single edits, as in
-- image_effects); interaction = joint - sum of singles (0 = the semantics add up).
-- A combination is identified by its node ids and their directions (both in path order).
CREATE OR REPLACE VIEW joint_image_effects AS
WITH combos AS (
    SELECT edit_id, image_id, editor_id,
           list(node_id ORDER BY path) AS node_ids,
           list(node_direction ORDER BY path) AS directions,
           list(label ORDER BY path) AS nodes
    FROM joint_edit_nodes
    GROUP BY edit_id, image_id, editor_id
), deltas AS (
    SELECT c.image_id, c.editor_id, c.node_ids, c.directions, c.nodes, s.classifier_id, cl.class_name,
           b.prob AS prob_baseline, s.prob - b.prob AS delta_prob, s.logit - b.logit AS delta_logit
    FROM combos c
    JOIN edits be ON be.image_id = c.image_id AND be.editor_id = c.editor_id
                 AND be.kind = 'baseline' AND be.status = 'ok'
    JOIN scores s ON s.item_id = c.edit_id
    JOIN scores b ON b.item_id = be.edit_id AND b.classifier_id = s.classifier_id
                 AND b.class_index = s.class_index
    JOIN classes cl ON cl.classifier_id = s.classifier_id AND cl.class_index = s.class_index
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
SELECT p.classifier_id, clf.name AS classifier_name, p.class_name, p.editor_id,
       array_to_string(p.nodes, ' + ') AS combination,
       p.nodes, p.directions, p.node_ids, len(p.node_ids) AS n_nodes,
       p.mean_delta_prob,
       p.mean_delta_prob - t975(p.n_images - 1) * coalesce(p.sd_delta_prob, 0) / sqrt(p.n_images) AS ci_low,
       p.mean_delta_prob + t975(p.n_images - 1) * coalesce(p.sd_delta_prob, 0) / sqrt(p.n_images) AS ci_high,
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
-- both; classes matched by name; edits judged invalid left out, as in node_effects).
CREATE OR REPLACE MACRO paired_image_effects(classifier_a, classifier_b) AS TABLE
WITH args AS (
    SELECT pa.classifier_id AS id_a, pb.classifier_id AS id_b
    FROM pick_classifier(classifier_a) pa, pick_classifier(classifier_b) pb
)
SELECT ea.class_name, ea.editor_id, ea.node_id, ea.direction, ea.image_id,
       avg(ea.delta_prob) AS effect_a,
       avg(eb.delta_prob) AS effect_b,
       avg(eb.delta_prob - ea.delta_prob) AS diff,
       count(*) AS n_edits
FROM args
JOIN edit_deltas ea ON ea.classifier_id = args.id_a
JOIN edit_deltas eb ON eb.classifier_id = args.id_b AND eb.edit_id = ea.edit_id
                   AND eb.node_id = ea.node_id AND eb.class_name = ea.class_name
WHERE ea.valid AND eb.valid
GROUP BY ea.class_name, ea.editor_id, ea.node_id, ea.direction, ea.image_id;

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
), per_node AS (
    SELECT p.node_id, p.direction, p.class_name,
           count(*) AS n_images, sum(p.n_edits) AS n_edits,
           avg(p.effect_a) AS mean_a, avg(p.effect_b) AS mean_b,
           avg(p.diff) AS mean_diff, stddev_samp(p.diff) AS sd_diff
    FROM paired_image_effects(classifier_a, classifier_b) p, args
    WHERE p.class_name = args.want_class AND p.class_name = args.want_class_b
      AND p.direction = args.want_direction
    GROUP BY ALL
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
       round(a.mean_diff - t975(a.n_images - 1) * coalesce(a.sd_diff, 0) / sqrt(a.n_images), 4) AS ci_low,
       round(a.mean_diff + t975(a.n_images - 1) * coalesce(a.sd_diff, 0) / sqrt(a.n_images), 4) AS ci_high,
       a.p_raw AS p_value, a.p_adj AS p_adjusted,
       coalesce(a.p_adj < args.want_alpha AND abs(a.mean_diff) >= args.want_min_diff, FALSE) AS significant,
       a.n_images, a.n_edits
FROM adjusted a
JOIN nodes n ON n.node_id = a.node_id
LEFT JOIN nodes parent ON parent.node_id = n.parent_id, args
ORDER BY significant DESC, abs(a.mean_diff) DESC, n.path;
