-- The full current schema of a diffex store. A new database is created from this file;
-- an older one is brought here by the numbered files in migrations/ (append-only).
-- Every id is a content hash (see diffex/hashing.py), never a counter or a file name.

CREATE TABLE diffex_schema (version INTEGER NOT NULL);
INSERT INTO diffex_schema VALUES (3);

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
    prompt    VARCHAR NOT NULL    -- the text handed to the editor
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
    added_at TIMESTAMP DEFAULT current_timestamp
);

-- editor_id = hash of everything in the editor's config that changes pixels.
CREATE TABLE editors (
    editor_id  VARCHAR PRIMARY KEY,
    name       VARCHAR NOT NULL,
    spec       VARCHAR,
    config     JSON,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- classifier_id = hash of weights and preprocessing. indexed_at picks the default
-- classifier of the query macros (the most recently indexed one).
CREATE TABLE classifiers (
    classifier_id VARCHAR PRIMARY KEY,
    name          VARCHAR NOT NULL,
    spec          VARCHAR,
    created_at    TIMESTAMP DEFAULT current_timestamp,
    indexed_at    TIMESTAMP
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
-- taxonomy asking for the same edit reuses it.
CREATE TABLE edits (
    edit_id       VARCHAR PRIMARY KEY,
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
    created_at    TIMESTAMP DEFAULT current_timestamp
);

-- Which nodes asked for an edit (several rows for a joint edit).
CREATE TABLE edit_nodes (
    edit_id VARCHAR NOT NULL,
    node_id VARCHAR NOT NULL,
    PRIMARY KEY (edit_id, node_id)
);

-- One row per (classifier, scored item, class), for EVERY class: a question about any
-- class never needs a forward pass. item_id is an image_id (original) or an edit_id.
CREATE TABLE scores (
    classifier_id VARCHAR NOT NULL,
    item_id       VARCHAR NOT NULL,
    class_index   INTEGER NOT NULL,
    logit         DOUBLE NOT NULL,
    prob          DOUBLE NOT NULL,
    PRIMARY KEY (classifier_id, item_id, class_index)
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
    vector      FLOAT[] NOT NULL,
    PRIMARY KEY (embedder_id, item_id)
);
CREATE TABLE edit_validity (
    edit_id       VARCHAR NOT NULL,
    embedder_id   VARCHAR NOT NULL,
    direction_sim DOUBLE,              -- cos(E(edit) - E(baseline), T(concept) - T(neutral))
    baseline_sim  DOUBLE,              -- cos(E(edit), E(baseline)): how much else stayed
    threshold     DOUBLE NOT NULL,
    valid         BOOLEAN NOT NULL,
    PRIMARY KEY (edit_id, embedder_id)
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
