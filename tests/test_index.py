"""Indexing: what is computed, what is reused, and that effects are measured right."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest

from diffex import open_store, run_index
from diffex.demo.world import write_dataset

from conftest import SMALL_NODES, SMALL_TAXONOMY


def test_first_run_computes_everything_and_second_run_nothing(tmp_path, demo_images, small_taxonomy, brightness):
    db = tmp_path / "x.duckdb"
    first = run_index(db, [str(demo_images)], small_taxonomy, brightness, "demo", beam=0, samples=2)
    n_img = 6
    assert first.images == n_img and first.nodes_scored == SMALL_NODES
    assert first.edits_computed == n_img * (1 + SMALL_NODES * 2)  # baseline + nodes x samples
    assert first.scores_computed == n_img + first.edits_computed  # originals + baselines + edits
    again = run_index(db, [str(demo_images)], small_taxonomy, brightness, "demo", beam=0, samples=2)
    assert (again.edits_computed, again.scores_computed) == (0, 0)
    assert again.edits_reused == first.edits_computed
    with open_store(db, read_only=True) as store:
        info = store.info()
    assert info["edits"] == first.edits_computed and info["images"] == n_img and info["nodes"] == SMALL_NODES
    # every class is scored for every item, so any class can be asked about later
    assert info["scores"] == 2 * first.scores_computed


def test_new_classifier_rescores_cached_edits_without_editing(tmp_path, demo_images, small_taxonomy, classifier_file):
    db = tmp_path / "x.duckdb"
    v1 = run_index(db, [str(demo_images)], small_taxonomy, f"python:{classifier_file}:make", beam=0, samples=2)
    v2 = run_index(db, [str(demo_images)], small_taxonomy, f"python:{classifier_file}:make_retrained", beam=0, samples=2)
    assert v2.classifier_id != v1.classifier_id
    assert v2.edits_computed == 0 and v2.edits_reused == v1.edits_computed
    assert v2.scores_computed == v1.scores_computed
    with open_store(db, read_only=True) as store:
        # the default classifier of the query macros is the most recently indexed one
        assert store.resolve_classifier()["classifier_id"] == v2.classifier_id
        a = {r["node"]: r["mean_delta_prob"] for r in store.top_subtypes("bright", 20, classifier=v1.classifier_id)}
        b = {r["node"]: r["mean_delta_prob"] for r in store.top_subtypes("bright", 20)}
    assert set(a) == set(b) and a != b
    # both versions read brightness: the strongest node moves P(bright) the same way
    top = max(a, key=lambda n: abs(a[n]))
    assert np.sign(a[top]) == np.sign(b[top])


def test_adding_images_and_nodes_computes_only_what_is_missing(tmp_path, small_taxonomy, brightness):
    db = tmp_path / "x.duckdb"
    imgs = tmp_path / "imgs"
    write_dataset(imgs, 3, start_seed=10)
    run_index(db, [str(imgs)], small_taxonomy, brightness, beam=0, samples=1)
    write_dataset(imgs, 2, start_seed=13)  # two new images
    more = run_index(db, [str(imgs)], small_taxonomy, brightness, beam=0, samples=1)
    assert more.edits_computed == 2 * (1 + SMALL_NODES)
    assert more.edits_reused == 3 * (1 + SMALL_NODES)
    tax = json.loads(small_taxonomy.read_text())
    tax["categories"]["headwear"]["hat"].append("beanie")  # a new taxonomy version with one more node
    small_taxonomy.write_text(json.dumps(tax))
    grown = run_index(db, [str(imgs)], small_taxonomy, brightness, beam=0, samples=1)
    assert grown.edits_computed == 5 and grown.nodes_scored == SMALL_NODES + 1
    with open_store(db, read_only=True) as store:
        assert store.info()["taxonomies"] == 2


def test_same_prompt_from_another_node_reuses_the_edit(tmp_path, demo_images, brightness):
    db = tmp_path / "x.duckdb"
    a = {"categories": {"facial hair": ["goatee"]}}
    b = {"categories": {"beards": ["goatee"]}}  # different path, same editing prompt
    first = run_index(db, [str(demo_images)], a, brightness, beam=0, samples=1)
    second = run_index(db, [str(demo_images)], b, brightness, beam=0, samples=1)
    # "beards" is a new prompt; the baselines and "goatee" edits are reused
    assert first.edits_computed == 18
    assert second.edits_computed == 6 and second.edits_reused == 12
    with open_store(db, read_only=True) as store:
        rows = store.con.execute(
            "SELECT count(DISTINCT node_id) FROM edit_nodes en JOIN edits e USING (edit_id) WHERE e.prompts = ['goatee']"
        ).fetchone()
    assert rows[0] == 2


def test_effects_are_measured_against_the_null_edit_baseline(tmp_path, demo_images, small_taxonomy, brightness):
    db = tmp_path / "x.duckdb"
    run_index(db, [str(demo_images)], small_taxonomy, brightness, beam=0, samples=2)
    with open_store(db, read_only=True) as store:
        # recompute one node's effect by hand from the raw scores
        node = "grey hair"
        raw = store.con.execute(
            """SELECT e.image_id, s.prob - b.prob
               FROM edits e JOIN edit_nodes en USING (edit_id) JOIN nodes n USING (node_id)
               JOIN edits be ON be.image_id = e.image_id AND be.kind = 'baseline'
               JOIN scores s ON s.item_id = e.edit_id JOIN classes c ON c.classifier_id = s.classifier_id AND c.class_index = s.class_index
               JOIN scores b ON b.item_id = be.edit_id AND b.class_index = s.class_index
               WHERE n.label = ? AND c.class_name = 'bright'""",
            [node],
        ).fetchall()
        rows = {r["node"]: r for r in store.top_subtypes("bright", 50)}
    per_image: dict[str, list[float]] = {}
    for image_id, delta in raw:
        per_image.setdefault(image_id, []).append(delta)
    means = np.array([np.mean(v) for v in per_image.values()])
    r = rows[node]
    assert r["n_images"] == 6 and r["n_edits"] == 12
    assert r["mean_delta_prob"] == pytest.approx(means.mean(), abs=1e-4)
    half = 2.571 * means.std(ddof=1) / np.sqrt(6)  # t(0.975, df=5)
    assert r["ci_low"] == pytest.approx(means.mean() - half, abs=1e-3)
    assert r["ci_high"] == pytest.approx(means.mean() + half, abs=1e-3)
    # grey hair brightens a dark-haired face: the brightness classifier must say "up"
    assert r["effect"] == "up" and r["mean_delta_prob"] > 0


def test_beam_search_prunes_and_beam_zero_expands_all(tmp_path, demo_images, small_taxonomy, brightness):
    pruned = run_index(tmp_path / "a.duckdb", [str(demo_images)], small_taxonomy, brightness, beam=1, samples=1, classes=["bright"])
    full = run_index(tmp_path / "b.duckdb", [str(demo_images)], small_taxonomy, brightness, beam=0, samples=1)
    assert full.nodes_scored == SMALL_NODES and full.depth_reached == 3
    assert pruned.nodes_scored < SMALL_NODES
    # level 1 scores all 3 groups; each later level only the children of the one node kept
    kept = pruned.beam["bright"]
    assert len(kept) == pruned.depth_reached
    depth1 = run_index(tmp_path / "c.duckdb", [str(demo_images)], small_taxonomy, brightness, beam=0, samples=1, depth=1)
    assert depth1.nodes_scored == 3 and depth1.depth_reached == 1


def test_remove_direction_is_stored_separately(tmp_path, demo_images, brightness):
    db = tmp_path / "x.duckdb"
    tax = {"categories": {"facial hair": ["goatee", "full beard"]}}
    stats = run_index(db, [str(demo_images)], tax, brightness, beam=0, samples=1, directions=("add", "remove"))
    assert stats.edits_computed == 6 * (1 + 3 * 2)
    with open_store(db, read_only=True) as store:
        dirs = dict(store.con.execute("SELECT direction, count(*) FROM edits GROUP BY ALL").fetchall())
        assert dirs == {"none": 6, "add": 18, "remove": 18}
        assert store.top_subtypes("bright", 5, direction="remove")


def test_deleted_cache_file_is_recomputed_identically(tmp_path, demo_images, brightness):
    db = tmp_path / "x.duckdb"
    tax = {"categories": {"hair colour": ["red hair"]}}
    run_index(db, [str(demo_images)], tax, brightness, beam=0, samples=1)
    with open_store(db, read_only=True) as store:
        rel, sha = store.con.execute("SELECT cache_path, output_sha256 FROM edits WHERE kind = 'single' LIMIT 1").fetchone()
        path = store.cache.path(rel)
    path.unlink()
    again = run_index(db, [str(demo_images)], tax, brightness, beam=0, samples=1)
    assert again.edits_computed == 1 and path.exists()
    with open_store(db, read_only=True) as store:
        assert store.con.execute("SELECT count(*) FROM edits WHERE output_sha256 = ?", [sha]).fetchone()[0] >= 1


def test_edited_images_are_content_addressed(tmp_path, demo_images, brightness):
    from diffex.hashing import hash_image
    from PIL import Image

    db = tmp_path / "x.duckdb"
    run_index(db, [str(demo_images)], {"categories": {"eyewear": ["sunglasses"]}}, brightness, beam=0, samples=1)
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT cache_path, output_sha256 FROM edits").fetchall()
    con.close()
    cache = tmp_path / "x-cache"
    for rel, sha in rows:
        assert rel == f"{sha[:2]}/{sha}.png"
        with Image.open(cache / rel) as im:
            assert hash_image(im) == sha
