-- v4 -> v5: side effects of edits (issue 13; diffex/embedding/side_effects.py).
-- * edit_side_effects: the concepts an edit moved toward besides its own (sparse: only those
--   above the embedder's calibrated per-concept threshold), per embedder;
-- * edit_validity.side_fp: which concept set and thresholds the edit was checked against
--   (NULL: never checked), so "no rows" can mean "clean";
-- * the derived tables gain the clean effect (edits with no side effect) and per-node counts
--   of side effects (side_effect_images / side_effect_nodes), rebuilt right after this migration.
CREATE TABLE edit_side_effects (
    embedder_id   VARCHAR NOT NULL,
    edit_key      BIGINT NOT NULL,
    node_key      INTEGER NOT NULL,
    direction_sim DOUBLE NOT NULL,
    threshold     DOUBLE NOT NULL
);
ALTER TABLE edit_validity ADD COLUMN side_fp VARCHAR;
ALTER TABLE effect_images ADD COLUMN n_clean INTEGER DEFAULT 0;
ALTER TABLE effect_images ADD COLUMN clean_prob DOUBLE;
ALTER TABLE effect_images ADD COLUMN side_corr DOUBLE;
ALTER TABLE effect_nodes ADD COLUMN c_images BIGINT DEFAULT 0;
ALTER TABLE effect_nodes ADD COLUMN c_edits BIGINT DEFAULT 0;
ALTER TABLE effect_nodes ADD COLUMN c_sum DOUBLE DEFAULT 0;
ALTER TABLE effect_nodes ADD COLUMN c_sumsq DOUBLE DEFAULT 0;
ALTER TABLE effect_nodes ADD COLUMN s_corr DOUBLE DEFAULT 0;
CREATE TABLE side_effect_images (
    editor_key INTEGER NOT NULL,
    node_key   INTEGER NOT NULL,
    direction  VARCHAR NOT NULL,
    image_key  BIGINT NOT NULL,
    side_key   INTEGER NOT NULL,
    n_edits    INTEGER NOT NULL
);
CREATE TABLE side_effect_nodes (
    editor_key INTEGER NOT NULL,
    node_key   INTEGER NOT NULL,
    direction  VARCHAR NOT NULL,
    side_key   INTEGER NOT NULL,
    n_edits    BIGINT NOT NULL,
    n_images   BIGINT NOT NULL
);
CREATE TABLE confound_nodes (
    editor_key INTEGER NOT NULL,
    node_key   INTEGER NOT NULL,
    direction  VARCHAR NOT NULL,
    n_checked  BIGINT NOT NULL,
    side_label VARCHAR,
    n_side     BIGINT NOT NULL
);
UPDATE diffex_schema SET version = 5;
