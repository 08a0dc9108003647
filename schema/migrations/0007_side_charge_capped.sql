-- v6 -> v7: effect_images.side_corr charges an edit with a side effect the side concepts' own
-- effect on its image, but at most the edit's own change in that direction (issue 13; the
-- reasons are in views.sql, effect_images_for). No table changes: Store.open recomputes the
-- effect rows of the images with side effects once, after this migration.
UPDATE diffex_schema SET version = 7;
