-- v6 -> v7: adjusted_delta_prob from a regression with image fixed effects (issue 13). The
-- v5 estimate charged each edit with a side effect the side concept's own effect on the same
-- image; but a side effect is drawn differently from a standalone edit of that concept (a top
-- hat perched on a beanie moves the demo v2 classifier to 0.68, a top hat alone to 1.0), so it
-- over-corrected. Three running sums let the views estimate the side effect's in-context
-- effect from the node's own edits (schema.sql documents them); the old charge stays as the
-- fallback where no image has edits both with and without a side effect. They are filled
-- here from effect_images, as diffex/store/derived.py keeps them from now on.
ALTER TABLE effect_nodes ADD COLUMN side_w DOUBLE DEFAULT 0;
ALTER TABLE effect_nodes ADD COLUMN side_wb DOUBLE DEFAULT 0;
ALTER TABLE effect_nodes ADD COLUMN side_f DOUBLE DEFAULT 0;
UPDATE effect_nodes SET side_w = s.side_w, side_wb = s.side_wb, side_f = s.side_f
FROM (
    SELECT classifier_key, editor_key, node_key, direction, class_index,
           coalesce(sum(n_clean * (n_valid - n_clean) / n_valid) FILTER (WHERE valid_prob IS NOT NULL AND n_clean > 0), 0) AS side_w,
           coalesce(sum(n_clean * (valid_prob - clean_prob)) FILTER (WHERE valid_prob IS NOT NULL AND n_clean > 0), 0) AS side_wb,
           coalesce(sum((n_valid - n_clean) / n_valid) FILTER (WHERE valid_prob IS NOT NULL), 0) AS side_f
    FROM effect_images
    GROUP BY ALL
) s
WHERE effect_nodes.classifier_key = s.classifier_key AND effect_nodes.editor_key = s.editor_key
  AND effect_nodes.node_key = s.node_key AND effect_nodes.direction = s.direction
  AND effect_nodes.class_index = s.class_index;
UPDATE diffex_schema SET version = 7;
