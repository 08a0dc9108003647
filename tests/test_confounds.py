"""Entangled edits (issue 13), end to end on the demo world: a misbehaving demo editor draws a
second concept with the one asked for, the demo CLIP sees it as a side effect, and the effect
rows say the innocent node's raw effect is borrowed, with clean and adjusted effects near zero."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest

from pathlib import Path

from diffex.demo.classifier import ground_truth
from diffex.demo.world import sample_spec, save_png
from diffex.embedding.side_effects import residual_scores
from diffex.indexing.indexer import run_index
from diffex.store.core import Store

TAXONOMY = Path(__file__).resolve().parents[1] / "diffex" / "demo" / "taxonomy.json"
IMAGES = 20


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Young faces with neither planted cue (the auditor's question: what makes a young face
    read old?), so an effect is not hidden by faces the classifier already calls old."""
    folder = tmp_path_factory.mktemp("faces")
    seeds = [s for s in range(100_000, 100_200) if sample_spec(s).age == "young"
             and sample_spec(s).attrs["headwear"] != "top hat" and sample_spec(s).attrs["facial hair"] != "goatee"]
    return [str(save_png(sample_spec(s), folder / f"face_{s}.png")) for s in seeds[:IMAGES]]


CASES = {  # classifier, misbehaving editor, innocent node, planted concept
    "v2": ("demo:v2", "demo?entangle=beanie:top hat:0.5", "beanie", "top hat"),
    "v1": ("demo:v1", "demo?spill=stubble:goatee:0.5", "stubble", "goatee"),
}


def _index(db, faces, classifier, editor):
    run_index(db, faces, TAXONOMY, classifier, editor, beam=0, samples=2, classes=["old"], embedder="demo")
    return db


def _rows(db, classifier):
    with Store.open(db, read_only=True) as store:
        clf = next(c["classifier_id"] for c in store.classifiers() if c["spec"] == classifier)
        rows = store.top_subtypes("old", k=100, classifier=clf)
        confounds = store._rows("SELECT * FROM confounds('old', classifier := ?)", [clf])
        problems = store.verify_effects()
    return {r["node"]: r for r in rows}, rows[0]["node"], confounds, problems


@pytest.fixture(scope="module")
def entangled(tmp_path_factory, faces):
    root = tmp_path_factory.mktemp("entangled")
    return {case: _index(root / f"{case}.duckdb", faces, c[0], c[1]) for case, c in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_a_borrowed_effect_names_its_confound_and_the_clean_effect_is_near_zero(entangled, case):
    classifier, editor, innocent, planted = CASES[case]
    assert ground_truth()[case]["planted"] == [planted]
    rows, first, confounds, problems = _rows(entangled[case], classifier)
    assert first == planted  # the planted concept still ranks first
    row = rows[innocent]
    # the innocent node's raw effect is clearly positive: it borrows the planted concept's
    assert row["mean_delta_prob"] > 0.08 and row["ci_low"] > 0, row
    assert row["confounded_with"] == planted and 0.25 <= row["confound_share"] <= 0.7, row
    assert abs(row["clean_delta_prob"]) < 0.05 and row["clean_n_images"] >= IMAGES // 4, row
    assert abs(row["adjusted_delta_prob"]) < 0.05, row
    # no other node is said to borrow from anything
    assert [r["node"] for r in rows.values() if r["confounded_with"]] == [innocent]
    assert [(r["node"], r["confounded_with"]) for r in confounds] == [(innocent, planted)]
    assert confounds[0]["borrowed"] > 0.08
    assert set(problems.values()) == {0}


def test_a_schema_6_store_has_its_side_charges_recomputed(entangled, tmp_path):
    """Schema 7 caps an edit's side charge at its own change: a store written by schema 6
    (uncapped charges in effect_images.side_corr and effect_nodes.s_corr) gets the effect rows
    of its images with side effects recomputed when first opened for writing."""
    db = tmp_path / "v6.duckdb"
    shutil.copyfile(entangled["v2"], db)
    before, *_ = _rows(db, "demo:v2")
    con = duckdb.connect(str(db))
    # what schema 6 held: every charged image charged more (consistently in both tables)
    con.execute("""UPDATE effect_nodes n SET s_corr = s_corr + 0.5 * x.k FROM (
                       SELECT classifier_key, editor_key, node_key, direction, class_index, count(*) AS k
                       FROM effect_images WHERE side_corr <> 0 AND valid_prob IS NOT NULL GROUP BY ALL) x
                   WHERE n.classifier_key = x.classifier_key AND n.editor_key = x.editor_key AND n.node_key = x.node_key
                     AND n.direction = x.direction AND n.class_index = x.class_index""")
    con.execute("UPDATE effect_images SET side_corr = side_corr + 0.5 WHERE side_corr <> 0 AND valid_prob IS NOT NULL")
    con.execute("UPDATE diffex_schema SET version = 6")
    con.close()
    with Store.open(db) as store:  # opening for writing migrates
        assert store.info()["schema_version"] == 7
    after, _, _, problems = _rows(db, "demo:v2")
    assert set(problems.values()) == {0}
    assert {n: r["adjusted_delta_prob"] for n, r in after.items()} == {n: r["adjusted_delta_prob"] for n, r in before.items()}


def test_the_exact_editor_names_no_confound(tmp_path, faces):
    rows, first, confounds, _ = _rows(_index(tmp_path / "exact.duckdb", faces, "demo:v2", "demo"), "demo:v2")
    assert first == "top hat" and confounds == []
    assert not [r["node"] for r in rows.values() if r["confounded_with"]]
    assert abs(rows["beanie"]["mean_delta_prob"]) < 0.05
    # with nothing borrowed, adjusted is the raw effect
    for r in rows.values():
        assert r["adjusted_delta_prob"] == pytest.approx(r["mean_delta_prob"], abs=0.02)


def test_residual_scores_remove_only_the_side_directions():
    own = np.array([[1.0, 0.0, 0.0]])
    side = np.array([[0.0, 1.0, 0.0]])
    base = np.zeros((3, 3))
    edits = np.array([[1.0, 1.0, 0.0],    # own concept and the side concept: half-way, then all own
                      [0.0, 1.0, 0.2],    # only the side concept (and noise): nothing left toward own
                      [0.0, 0.0, 0.0]])   # no change: no direction
    plain = residual_scores(edits, base, [own] * 3, [[]] * 3)
    kept = residual_scores(edits, base, [own] * 3, [side] * 3)
    assert plain == pytest.approx([np.sqrt(0.5), 0.0, 0.0])
    assert kept == pytest.approx([1.0, 0.0, 0.0])


def test_a_rare_side_effect_that_carries_the_effect_is_named(tmp_path, faces):
    """Below confound_floor() (30% of the edits) a side concept is still named when it carried
    half of the node's effect or more (confound_carry_floor())."""
    rows, first, _, _ = _rows(_index(tmp_path / "rare.duckdb", faces, "demo:v1", "demo?spill=stubble:goatee:0.2"), "demo:v1")
    row = rows["stubble"]
    assert first == "goatee"
    assert row["confound_share"] < 0.3 and row["confounded_with"] == "goatee", row
    assert row["mean_delta_prob"] - row["adjusted_delta_prob"] >= 0.5 * row["mean_delta_prob"], row
