-- v5 -> v6: what an index run's schedule drew per node and why it stopped (issue 12;
-- diffex/analysis/adaptive.py). Every drawn edit is stored as any edit is; this table only says
-- how many samples the schedule gave each node and its stop reason, so an answer from an
-- adaptive run can be read with its evidence.
CREATE TABLE schedule_nodes (
    run_id          VARCHAR NOT NULL,
    classifier_key  INTEGER NOT NULL,
    editor_key      INTEGER NOT NULL,
    node_key        INTEGER NOT NULL,
    direction       VARCHAR NOT NULL,
    class_index     INTEGER NOT NULL,
    schedule        VARCHAR NOT NULL,   -- 'auto' | 'fixed'
    n_images        INTEGER NOT NULL,   -- images with at least one sample drawn by this run
    n_samples       INTEGER NOT NULL,   -- samples drawn by this run (0: pruned or never reached)
    mean_delta_prob DOUBLE,             -- from this run's own draws
    ci_low          DOUBLE,
    ci_high         DOUBLE,
    stop_reason     VARCHAR NOT NULL    -- in | out | cap | budget | pruned | fixed
);
UPDATE diffex_schema SET version = 6;
