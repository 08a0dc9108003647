-- v3 -> v4: the store at audit scale (docs/store.md).
-- * integer surrogate keys behind the content-hash ids (images, nodes, editors, classifiers,
--   edits), which the big tables join on;
-- * one score row per (classifier, item) holding every class's logit and probability
--   (item_scores; the view `scores` keeps the v3 shape), and edit_links by key (the view
--   `edit_nodes` keeps the v3 shape);
-- * no PRIMARY KEY on the big tables (edits, edit_links, item_scores, embeddings,
--   edit_validity): Store keeps them unique;
-- * the derived tables effect_images / effect_nodes, filled right after this migration from
--   the rows (Store.rebuild_effects) and kept current by every later write.
CREATE SEQUENCE item_keys START 1;
CREATE SEQUENCE entity_keys START 1;

-- rows an older diffex could leave without their parent (a test store, a hand-made row)
INSERT INTO editors (editor_id, name)
SELECT DISTINCT editor_id, editor_id FROM edits WHERE editor_id NOT IN (SELECT editor_id FROM editors);
INSERT INTO images (image_id, uri, width, height)
SELECT DISTINCT image_id, '(unknown)', 0, 0 FROM edits WHERE image_id NOT IN (SELECT image_id FROM images);
INSERT INTO classifiers (classifier_id, name)
SELECT DISTINCT classifier_id, classifier_id FROM scores WHERE classifier_id NOT IN (SELECT classifier_id FROM classifiers);

ALTER TABLE nodes ADD COLUMN node_key INTEGER DEFAULT nextval('entity_keys');
ALTER TABLE images ADD COLUMN image_key BIGINT DEFAULT nextval('item_keys');
ALTER TABLE editors ADD COLUMN editor_key INTEGER DEFAULT nextval('entity_keys');
ALTER TABLE classifiers ADD COLUMN classifier_key INTEGER DEFAULT nextval('entity_keys');
ALTER TABLE classifiers ADD COLUMN pinned_at TIMESTAMP;

CREATE TABLE edits_v4 (
    edit_id       VARCHAR NOT NULL,
    image_id      VARCHAR NOT NULL,
    editor_id     VARCHAR NOT NULL,
    kind          VARCHAR NOT NULL,
    prompts       VARCHAR[] NOT NULL,
    direction     VARCHAR NOT NULL,
    seed          INTEGER NOT NULL,
    output_sha256 VARCHAR,
    cache_path    VARCHAR,
    status        VARCHAR NOT NULL,
    seconds       DOUBLE,
    created_at    TIMESTAMP DEFAULT current_timestamp,
    edit_key      BIGINT NOT NULL,
    image_key     BIGINT NOT NULL,
    editor_key    INTEGER NOT NULL
);
INSERT INTO edits_v4
SELECT e.edit_id, e.image_id, e.editor_id, e.kind, e.prompts, e.direction, e.seed, e.output_sha256,
       e.cache_path, e.status, e.seconds, e.created_at, nextval('item_keys'), i.image_key, d.editor_key
FROM (SELECT * FROM edits ORDER BY image_id, created_at, edit_id) e
JOIN images i ON i.image_id = e.image_id
JOIN editors d ON d.editor_id = e.editor_id;

CREATE TABLE edit_links (
    edit_key BIGINT NOT NULL,
    node_key INTEGER NOT NULL
);
INSERT INTO edit_links
SELECT DISTINCT e.edit_key, n.node_key
FROM edit_nodes en JOIN edits_v4 e ON e.edit_id = en.edit_id JOIN nodes n ON n.node_id = en.node_id;

CREATE TABLE item_scores (
    classifier_key INTEGER NOT NULL,
    item_key       BIGINT NOT NULL,
    logits         DOUBLE[] NOT NULL,
    probs          DOUBLE[] NOT NULL
);
INSERT INTO item_scores
SELECT k.classifier_key, it.item_key,
       list(s.logit ORDER BY s.class_index), list(s.prob ORDER BY s.class_index)
FROM scores s
JOIN classifiers k ON k.classifier_id = s.classifier_id
JOIN (SELECT image_key AS item_key, image_id AS item_id FROM images
      UNION ALL SELECT edit_key, edit_id FROM edits_v4) it ON it.item_id = s.item_id
GROUP BY k.classifier_key, it.item_key;

CREATE TABLE embeddings_v4 (
    embedder_id VARCHAR NOT NULL,
    item_id     VARCHAR NOT NULL,
    item_kind   VARCHAR NOT NULL,
    vector      FLOAT[] NOT NULL
);
INSERT INTO embeddings_v4 SELECT * FROM embeddings;
CREATE TABLE edit_validity_v4 (
    edit_id       VARCHAR NOT NULL,
    embedder_id   VARCHAR NOT NULL,
    direction_sim DOUBLE,
    baseline_sim  DOUBLE,
    threshold     DOUBLE NOT NULL,
    valid         BOOLEAN NOT NULL
);
INSERT INTO edit_validity_v4 SELECT * FROM edit_validity;

-- the v3 views read the tables being replaced; views.sql re-creates them all after this file
DROP VIEW IF EXISTS compare_view_placeholder;
DROP TABLE edits;
DROP TABLE edit_nodes;
DROP TABLE scores;
DROP TABLE embeddings;
DROP TABLE edit_validity;
ALTER TABLE edits_v4 RENAME TO edits;
ALTER TABLE embeddings_v4 RENAME TO embeddings;
ALTER TABLE edit_validity_v4 RENAME TO edit_validity;

CREATE TABLE effect_images (
    classifier_key INTEGER NOT NULL,
    editor_key     INTEGER NOT NULL,
    node_key       INTEGER NOT NULL,
    direction      VARCHAR NOT NULL,
    image_key      BIGINT NOT NULL,
    class_index    INTEGER NOT NULL,
    prob_baseline  DOUBLE,
    n_valid        INTEGER NOT NULL,
    n_all          INTEGER NOT NULL,
    valid_prob     DOUBLE,
    valid_logit    DOUBLE,
    all_prob       DOUBLE,
    all_logit      DOUBLE,
    edits_fp       UBIGINT
);
CREATE TABLE effect_nodes (
    classifier_key INTEGER NOT NULL,
    editor_key     INTEGER NOT NULL,
    node_key       INTEGER NOT NULL,
    direction      VARCHAR NOT NULL,
    class_index    INTEGER NOT NULL,
    v_images BIGINT NOT NULL, v_edits BIGINT NOT NULL, v_sum DOUBLE NOT NULL, v_sumsq DOUBLE NOT NULL,
    v_sum_logit DOUBLE NOT NULL, v_up BIGINT NOT NULL, v_down BIGINT NOT NULL,
    a_images BIGINT NOT NULL, a_edits BIGINT NOT NULL, a_sum DOUBLE NOT NULL, a_sumsq DOUBLE NOT NULL,
    a_sum_logit DOUBLE NOT NULL, a_up BIGINT NOT NULL, a_down BIGINT NOT NULL,
    n_invalid BIGINT NOT NULL   -- one row per key, kept so by diffex/derived.py
);
-- Per (classifier A, classifier B, editor, node, direction, class of A, same-named class of B):
-- sums over the images where both classifiers averaged the very same valid edits (their
-- effect_images fingerprints agree) of A's and B's effects and of B - A, for
-- compare_classifiers; n_differing counts images where both have effects over different
-- edits (listed in effect_pair_differing and paired edit by edit at query time).
CREATE TABLE effect_pairs (
    classifier_a INTEGER NOT NULL,
    classifier_b INTEGER NOT NULL,
    editor_key   INTEGER NOT NULL,
    node_key     INTEGER NOT NULL,
    direction    VARCHAR NOT NULL,
    class_a      INTEGER NOT NULL,
    class_b      INTEGER NOT NULL,
    n_images BIGINT NOT NULL, n_edits BIGINT NOT NULL, n_differing BIGINT NOT NULL,
    sum_a DOUBLE NOT NULL, sum_b DOUBLE NOT NULL, sum_diff DOUBLE NOT NULL, sumsq_diff DOUBLE NOT NULL
);
CREATE TABLE effect_pair_differing (
    classifier_a INTEGER NOT NULL,
    classifier_b INTEGER NOT NULL,
    editor_key   INTEGER NOT NULL,
    node_key     INTEGER NOT NULL,
    direction    VARCHAR NOT NULL,
    image_key    BIGINT NOT NULL
);
UPDATE diffex_schema SET version = 4;
