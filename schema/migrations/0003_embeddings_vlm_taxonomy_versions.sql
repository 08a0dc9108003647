-- v2 -> v3: CLIP embeddings and edit validity; cached VLM answers; taxonomy lineage.
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
ALTER TABLE taxonomies ADD COLUMN parent_taxonomy_id VARCHAR;
ALTER TABLE taxonomies ADD COLUMN note VARCHAR;
UPDATE diffex_schema SET version = 3;
