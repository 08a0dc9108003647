-- The full current schema of a diffex store. A new database is created from this file;
-- an older one is brought here by the numbered files in migrations/ (append-only).
-- Every id is a content hash (see diffex/hashing.py), never a counter or a file name. The
-- integer *_key columns (v4) are local surrogates behind those ids: the big tables (edits,
-- edit_links, item_scores and the derived effect tables) join on them, which keeps them small
-- and fast. A key means nothing outside its own file; ids are what users and caches see.
-- The big tables carry no PRIMARY KEY: an ART index over millions of hash strings tripled the
-- file and made every commit rewrite it (docs/store.md); Store is their only writer and keeps
-- them unique.

CREATE TABLE diffex_schema (version INTEGER NOT NULL);
INSERT INTO diffex_schema VALUES (7);  -- 5: side effects; 6: schedule_nodes; 7: side_corr at most an edit's change

CREATE SEQUENCE item_keys START 1;  -- images and edits share one key space: a scored item is either
CREATE SEQUENCE entity_keys START 1;  -- nodes, editors, classifiers

-- A taxonomy version: its id hashes the normalised node list.
CREATE TABLE taxonomies (
    taxonomy_id VARCHAR PRIMARY KEY,
    name        VARCHAR NOT NULL,
    domain      VARCHAR,
    source      VARCHAR,
    created_at  TIMESTAMP DEFAULT current_timestamp,
    parent_taxonomy_id VARCHAR,        -- the version this one was curated from (v3)
    note        VARCHAR                -- what the curation changed (v3)
);

-- Semantic hierarchy nodes. node_id hashes the path, so a node keeps its identity
-- (and its cached edits) across taxonomy versions.
CREATE TABLE nodes (
    node_id   VARCHAR PRIMARY KEY,
    parent_id VARCHAR,
    path      VARCHAR NOT NULL,   -- 'facial hair > beard > goatee'
    label     VARCHAR NOT NULL,
    depth     INTEGER NOT NULL,   -- 1 = top-level group
    prompt    VARCHAR NOT NULL,   -- the text handed to the editor
    node_key  INTEGER NOT NULL DEFAULT nextval('entity_keys')  -- v4
);

CREATE TABLE taxonomy_nodes (
    taxonomy_id VARCHAR NOT NULL,
    node_id     VARCHAR NOT NULL,
    active      BOOLEAN NOT NULL DEFAULT TRUE,
    PRIMARY KEY (taxonomy_id, node_id)
);

-- image_id = sha256 of decoded RGB pixels and size.
CREATE TABLE images (
    image_id VARCHAR PRIMARY KEY,
    uri      VARCHAR NOT NULL,
    width    INTEGER NOT NULL,
    height   INTEGER NOT NULL,
    added_at TIMESTAMP DEFAULT current_timestamp,
    image_key BIGINT NOT NULL DEFAULT nextval('item_keys')  -- v4
);

-- editor_id = hash of everything in the editor's config that changes pixels.
CREATE TABLE editors (
    editor_id  VARCHAR PRIMARY KEY,
    name       VARCHAR NOT NULL,
    spec       VARCHAR,
    config     JSON,
    created_at TIMESTAMP DEFAULT current_timestamp,
    editor_key INTEGER NOT NULL DEFAULT nextval('entity_keys')  -- v4
);

-- classifier_id = hash of weights and preprocessing. indexed_at picks the default
-- classifier of the query macros (the most recently indexed one).
CREATE TABLE classifiers (
    classifier_id VARCHAR PRIMARY KEY,
    name          VARCHAR NOT NULL,
    spec          VARCHAR,
    created_at    TIMESTAMP DEFAULT current_timestamp,
    indexed_at    TIMESTAMP,
    classifier_key INTEGER NOT NULL DEFAULT nextval('entity_keys'),  -- v4
    pinned_at     TIMESTAMP   -- v4: `diffex use` made it the default (the latest pin wins)
);

CREATE TABLE classes (
    classifier_id VARCHAR NOT NULL,
    class_index   INTEGER NOT NULL,
    class_name    VARCHAR NOT NULL,
    PRIMARY KEY (classifier_id, class_index)
);

-- One edited image (kind 'single' or 'joint') or the per-image null-edit baseline
-- (kind 'baseline': the editor's reconstruction, which effects are measured against).
-- edit_id = hash(image, editor, prompts, direction, seed): no node id, so any node or
-- taxonomy asking for the same edit reuses it. Unique per edit_id (kept so by Store.add_edits).
CREATE TABLE edits (
    edit_id       VARCHAR NOT NULL,
    image_id      VARCHAR NOT NULL,
    editor_id     VARCHAR NOT NULL,
    kind          VARCHAR NOT NULL,
    prompts       VARCHAR[] NOT NULL,
    direction     VARCHAR NOT NULL,
    seed          INTEGER NOT NULL,
    output_sha256 VARCHAR,            -- sha256 of the edited image's pixels
    cache_path    VARCHAR,            -- relative to the store's cache dir: 'ab/abcdef....png'
    status        VARCHAR NOT NULL,   -- 'ok' | 'failed' | 'blocked' (pixels withheld by a safety checker)
    seconds       DOUBLE,
    created_at    TIMESTAMP DEFAULT current_timestamp,
    edit_key      BIGINT NOT NULL,    -- v4: from item_keys
    image_key     BIGINT NOT NULL,    -- v4: images.image_key
    editor_key    INTEGER NOT NULL    -- v4: editors.editor_key
);

-- Which nodes asked for an edit (several rows for a joint edit); the view edit_nodes
-- gives them by id. v4 (was the table edit_nodes).
CREATE TABLE edit_links (
    edit_key BIGINT NOT NULL,
    node_key INTEGER NOT NULL
);

-- One row per (classifier, scored item) with the logits and softmax probabilities of EVERY
-- class: a question about any class never needs a
-- forward pass. item_key is an images.image_key (original) or an edits.edit_key. The view
-- `scores` gives the v3 shape, one row per class. v4 (was the table scores).
CREATE TABLE item_scores (
    classifier_key INTEGER NOT NULL,
    item_key       BIGINT NOT NULL,
    logits         DOUBLE[] NOT NULL,
    probs          DOUBLE[] NOT NULL
);

-- Added in version 2: a log of index runs and what each computed or reused.
CREATE TABLE runs (
    run_id      VARCHAR PRIMARY KEY,
    command     VARCHAR NOT NULL,
    started_at  TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    args        JSON,
    stats       JSON
);

-- Added in version 3: CLIP embeddings, edit validity, cached VLM answers.
CREATE TABLE embedders (
    embedder_id VARCHAR PRIMARY KEY,   -- hash of the model weights and preprocessing
    name        VARCHAR NOT NULL,
    spec        VARCHAR,
    dim         INTEGER NOT NULL,
    metric      VARCHAR NOT NULL,      -- 'cosine' (vectors stored L2-normalised)
    created_at  TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE embeddings (
    embedder_id VARCHAR NOT NULL,
    item_id     VARCHAR NOT NULL,      -- image_id, edit_id, node_id, or a text hash
    item_kind   VARCHAR NOT NULL,      -- 'image' | 'edit' | 'node' | 'text'
    vector      FLOAT[] NOT NULL       -- unique per (embedder_id, item_id), kept so by Store
);
CREATE TABLE edit_validity (
    edit_id       VARCHAR NOT NULL,
    embedder_id   VARCHAR NOT NULL,
    direction_sim DOUBLE,              -- cos(E(edit) - E(baseline), T(concept) - T(neutral))
    baseline_sim  DOUBLE,              -- cos(E(edit), E(baseline)): how much else stayed
    threshold     DOUBLE NOT NULL,
    valid         BOOLEAN NOT NULL,     -- unique per (edit_id, embedder_id), kept so by Store
    side_fp       VARCHAR               -- v5: the concepts and thresholds side effects were checked against; NULL = not checked
);
-- v5: what else an edit changed (diffex/embedding/side_effects.py): one row per concept (a
-- leaf or a top-level group, never the edit's own node, its ancestors or descendants) the
-- edit moved toward above that concept's calibrated threshold. Sparse: a checked edit with
-- no row is clean.
CREATE TABLE edit_side_effects (
    embedder_id   VARCHAR NOT NULL,
    edit_key      BIGINT NOT NULL,
    node_key      INTEGER NOT NULL,
    direction_sim DOUBLE NOT NULL,     -- cos(E(edit) - E(baseline), T(concept) - T(neutral))
    threshold     DOUBLE NOT NULL
);
CREATE TABLE vlm_responses (
    response_id VARCHAR PRIMARY KEY,   -- hash of (model, prompt, image ids)
    model       VARCHAR NOT NULL,
    prompt      VARCHAR NOT NULL,
    image_ids   VARCHAR[] NOT NULL,
    raw_text    VARCHAR NOT NULL,
    parsed      JSON,
    status      VARCHAR NOT NULL,      -- 'ok' | 'repaired' | 'rejected'
    created_at  TIMESTAMP DEFAULT current_timestamp
);

-- ------------------------------------------------------------------ derived (v4)
-- Effects kept up to date in the same transaction as the rows they summarise (Store.refresh
-- _effects), so the query macros never scan scores. `diffex verify` recomputes them from the
-- rows above and reports any drift; they can always be rebuilt (`diffex verify --repair`).

-- Per (classifier, editor, node, direction, image, class): the mean change against the
-- image's null-edit baseline over the valid edits (NULL when every edit was judged invalid)
-- and over all edits; edits_fp fingerprints which valid edits were averaged, so two
-- classifiers' rows are paired only over the very same edits.
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
    edits_fp       UBIGINT,
    n_clean        INTEGER DEFAULT 0,  -- v5: valid edits checked for side effects that had none
    clean_prob     DOUBLE,             -- v5: their mean change (NULL when none)
    side_corr      DOUBLE              -- v5: mean over valid edits of their side concepts' own effect here (v7: at most the edit's change)
);

-- Per (classifier, editor, node, direction, class): running sums over images of the
-- per-image means above, for the valid edits (v_*) and for all edits (a_*): counts, sums,
-- sums of squares (for the CI over images) and the signs (for sign consistency).
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
    n_invalid BIGINT NOT NULL,  -- one row per key, kept so by diffex/derived.py
    -- v5: the same sums over the images' clean means (effect_images.clean_prob)
    c_images BIGINT DEFAULT 0, c_edits BIGINT DEFAULT 0, c_sum DOUBLE DEFAULT 0, c_sumsq DOUBLE DEFAULT 0,
    s_corr DOUBLE DEFAULT 0   -- v5: sum of effect_images.side_corr over the images with a valid effect
);

-- v5: per (editor, node, direction, image) how many valid edits were checked for side
-- effects (side_key 0) and how many showed each side concept (side_key = its node_key);
-- side_effect_nodes sums them over images (n_images: images with such an edit). Not per
-- classifier: side effects belong to the edit and the embedder.
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
-- v5: per (editor, node, direction) with checked edits, its most frequent side concept (ties:
-- the deeper node, then the label; NULL when none), so the effect views join one small table.
CREATE TABLE confound_nodes (
    editor_key INTEGER NOT NULL,
    node_key   INTEGER NOT NULL,
    direction  VARCHAR NOT NULL,
    n_checked  BIGINT NOT NULL,
    side_label VARCHAR,
    n_side     BIGINT NOT NULL
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

-- Added in version 6: per index run, how many samples the schedule drew for each node and why
-- it stopped (in | out | cap | budget | pruned | fixed); see migrations/0006_schedule_nodes.sql.
CREATE TABLE schedule_nodes (
    run_id          VARCHAR NOT NULL,
    classifier_key  INTEGER NOT NULL,
    editor_key      INTEGER NOT NULL,
    node_key        INTEGER NOT NULL,
    direction       VARCHAR NOT NULL,
    class_index     INTEGER NOT NULL,
    schedule        VARCHAR NOT NULL,
    n_images        INTEGER NOT NULL,
    n_samples       INTEGER NOT NULL,
    mean_delta_prob DOUBLE,
    ci_low          DOUBLE,
    ci_high         DOUBLE,
    stop_reason     VARCHAR NOT NULL
);
