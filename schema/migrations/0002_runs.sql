-- v1 -> v2: log each index run with its arguments and what it computed or reused.
CREATE TABLE runs (
    run_id      VARCHAR PRIMARY KEY,
    command     VARCHAR NOT NULL,
    started_at  TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    args        JSON,
    stats       JSON
);
UPDATE diffex_schema SET version = 2;
