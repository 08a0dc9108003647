"""Beam search as the paper intends: per-class beams, width, min_delta, require_gain, and the
joint step (combinations of the best semantics edited together); per-image and dataset-level
explanations read from the same stored edits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffex import UsageError, open_store, run_index, run_query
from diffex.analysis.beam import compatible, joint_candidates, joint_combinations, select_beam
from diffex.hashing import node_id_for
from diffex.types import Node

from conftest import SMALL_NODES, SMALL_TAXONOMY


def node(*path: str) -> Node:
    return Node(node_id_for(path), path, path[-1], node_id_for(path[:-1]) if len(path) > 1 else None)


FACIAL, HAT = node("facial hair"), node("headwear")
BEARD, GOATEE, FULL = node("facial hair", "beard"), node("facial hair", "beard", "goatee"), node("facial hair", "beard", "full beard")
MUSTACHE = node("facial hair", "mustache")
TOP_HAT = node("headwear", "hat", "top hat")


def test_select_beam_is_per_class_with_width_and_threshold():
    frontier = [FACIAL, HAT, node("background")]
    effects = {
        (FACIAL.node_id, "add", "old"): 0.30, (HAT.node_id, "add", "old"): -0.10, (node("background").node_id, "add", "old"): 0.01,
        (FACIAL.node_id, "add", "young"): 0.02, (HAT.node_id, "add", "young"): 0.40,
    }
    kept = select_beam(frontier, effects, ["old", "young"], beam=1)
    assert [n.label for n in kept["old"]] == ["facial hair"] and [n.label for n in kept["young"]] == ["headwear"]
    # |delta| ranks: a strong negative effect counts as much as a positive one
    assert [n.label for n in select_beam(frontier, effects, ["old"], beam=2)["old"]] == ["facial hair", "headwear"]
    assert [n.label for n in select_beam(frontier, effects, ["old"], beam=0, min_delta=0.05)["old"]] == ["facial hair", "headwear"]
    assert [n.label for n in select_beam(frontier, effects, ["old"], beam=0)["old"]] == ["facial hair", "headwear", "background"]
    # with two directions a node counts with its stronger one
    effects[(node("background").node_id, "remove", "old")] = -0.5
    assert select_beam(frontier, effects, ["old"], beam=1, directions=("add", "remove"))["old"][0].label == "background"


def test_require_gain_keeps_only_children_that_explain_more_than_their_parent():
    parent = {(BEARD.node_id, "add", "old"): 0.20}
    effects = {(GOATEE.node_id, "add", "old"): 0.35, (FULL.node_id, "add", "old"): 0.15}
    assert [n.label for n in select_beam([GOATEE, FULL], effects, ["old"], 0, require_gain=True, parent_effects=parent)["old"]] == ["goatee"]
    assert len(select_beam([GOATEE, FULL], effects, ["old"], 0, require_gain=False, parent_effects=parent)["old"]) == 2


def test_joint_rule_skips_ancestors_and_alternative_siblings():
    assert compatible(GOATEE, TOP_HAT) and compatible(FACIAL, HAT) and compatible(GOATEE, MUSTACHE)
    assert not compatible(GOATEE, BEARD) and not compatible(GOATEE, FACIAL)  # a node and its ancestors
    assert not compatible(GOATEE, FULL)  # sub-types of one parent are alternatives
    assert not compatible(BEARD, MUSTACHE)  # siblings at any depth
    effects = {(n.node_id, "add", "old"): e for n, e in [(GOATEE, 0.4), (BEARD, 0.3), (TOP_HAT, -0.2), (FULL, 0.1), (HAT, 0.0)]}
    cands = joint_candidates([HAT, FULL, TOP_HAT, BEARD, GOATEE], effects, "old", top=4)
    # no-effect nodes never combine; a lineage (beard > goatee) is represented by its strongest
    assert [n.label for n, _ in cands] == ["goatee", "top hat", "full beard"]
    assert [n.label for n, _ in joint_candidates([BEARD, FULL, TOP_HAT], effects, "old", top=2)] == ["beard", "top hat"]
    pairs = [tuple(n.label for n, _ in c) for c in joint_combinations(cands, 2)]
    assert pairs == [("goatee", "top hat"), ("top hat", "full beard")]
    assert [tuple(n.label for n, _ in c) for c in joint_combinations(cands, 3)] == []
    assert [n.label for n, _ in joint_candidates([GOATEE, TOP_HAT, FULL], effects, "old", top=4, min_delta=0.15)] == ["goatee", "top hat"]


@pytest.fixture(scope="module")
def joint_db(tmp_path_factory, demo_images):
    """demo:v1 (planted: goatee -> old) on 6 demo faces, beam 2 for `old`, then pairs."""
    db = tmp_path_factory.mktemp("joint") / "x.duckdb"
    stats = run_index(db, [str(demo_images)], SMALL_TAXONOMY, "demo:v1", beam=2, samples=1, classes=["old"], joint=2)
    return db, stats


def test_joint_step_scores_combinations_and_returns_the_best_per_class(joint_db, demo_images):
    db, stats = joint_db
    best = stats.best_joint["old"]
    assert "goatee" in best["nodes"] and best["n_images"] == 6
    assert best["interaction"] == pytest.approx(best["mean_delta_prob"] - best["sum_single_delta_prob"])
    with open_store(db, read_only=True) as store:
        kinds = dict(store.con.execute("SELECT kind, count(*) FROM edits GROUP BY ALL").fetchall())
        links = store.con.execute(
            "SELECT count(*) FROM edits e JOIN edit_nodes USING (edit_id) WHERE e.kind = 'joint'").fetchone()[0]
        singles = {r["node"]: r["mean_delta_prob"] for r in store.top_subtypes("old", 20) + []}
        groups = {r[0]: r[1] for r in store.con.execute(
            "SELECT node, mean_delta_prob FROM node_effects WHERE class_name = 'old'").fetchall()}
    assert kinds["joint"] == stats.joint_combinations * 6 and links == 2 * kinds["joint"]  # a row per node
    rows = run_query(db, "SELECT * FROM top_combinations('old', 10)").dicts()
    assert len(rows) == stats.joint_combinations and rows[0]["rank"] == 1
    top = rows[0]
    assert top["nodes"] == best["nodes"] and top["mean_delta_prob"] == pytest.approx(best["mean_delta_prob"], abs=1e-4)
    # the sum of singles is the sum of the nodes' own dataset-level effects (same images)
    for r in rows:
        assert r["sum_single_delta_prob"] == pytest.approx(sum(groups[n] for n in r["nodes"]), abs=2e-4)
        assert r["interaction"] == pytest.approx(r["mean_delta_prob"] - r["sum_single_delta_prob"], abs=2e-4)
        assert r["ci_low"] <= r["mean_delta_prob"] <= r["ci_high"]
    # goatee alone decides v1's "old": adding anything else beside it changes nothing
    assert top["mean_delta_prob"] == pytest.approx(singles["goatee"], abs=0.01) and abs(top["interaction"]) < 0.01
    again = run_index(db, [str(demo_images)], SMALL_TAXONOMY, "demo:v1", beam=2, samples=1, classes=["old"], joint=2)
    assert (again.edits_computed, again.scores_computed) == (0, 0) and again.best_joint == stats.best_joint


def test_per_image_and_dataset_explanations_come_from_the_same_edits(joint_db):
    db, _ = joint_db
    raw = run_query(db, "SELECT image_id, node, mean_delta_prob FROM image_effects WHERE class_name = 'old'").rows
    per_image: dict[str, dict[str, float]] = {}
    for image_id, name, value in raw:
        per_image.setdefault(image_id, {})[name] = value
    assert len(per_image) == 6
    for image_id, effects in per_image.items():
        # one image, like the reference code: every scored node, strongest first
        rows = run_query(db, "SELECT * FROM image_explanation($img, 'old')", {"img": image_id[:12]}).dicts()
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        assert {r["node"]: r["mean_delta_prob"] for r in rows} == {n: round(v, 4) for n, v in effects.items()}
        assert all(abs(a["mean_delta_prob"]) >= abs(b["mean_delta_prob"]) for a, b in zip(rows, rows[1:]))
    # the dataset level aggregates exactly those per-image effects
    dataset = {r["node"]: r for r in run_query(db, "SELECT * FROM node_effects WHERE class_name = 'old'").dicts()}
    for name, d in dataset.items():
        values = np.array([effects[name] for effects in per_image.values()])
        assert d["n_images"] == len(values) == 6
        assert d["mean_delta_prob"] == pytest.approx(values.mean(), abs=1e-12)
        half = 2.571 * values.std(ddof=1) / np.sqrt(6)
        assert (d["ci_low"], d["ci_high"]) == pytest.approx((values.mean() - half, values.mean() + half), abs=1e-3)
        sign = 1 if d["mean_delta_prob"] >= 0 else -1
        agree = np.where(values == 0, 0.5, (np.sign(values) == sign).astype(float))
        assert d["sign_consistency"] == pytest.approx(agree.mean(), abs=1e-12)
    # the planted goatee makes young faces old wherever it can, and never the other way
    goatee = np.array([effects["goatee"] for effects in per_image.values()])
    assert dataset["goatee"]["effect"] == "up" and goatee.mean() > 0.2 and np.all(goatee > -1e-3)
    assert dataset["goatee"]["sign_consistency"] == 1.0 and dataset["goatee"]["node"] == "goatee"


def test_min_delta_and_require_gain_prune_the_walk(tmp_path, demo_images, brightness):
    stopped = run_index(tmp_path / "a.duckdb", [str(demo_images)], SMALL_TAXONOMY, brightness, beam=0, samples=1,
                        min_delta=0.99)
    assert stopped.nodes_scored == 3 and stopped.depth_reached == 1 and stopped.beam == {"dark": [], "bright": []}
    free = run_index(tmp_path / "b.duckdb", [str(demo_images)], SMALL_TAXONOMY, brightness, beam=0, samples=1,
                     classes=["bright"])
    gain = run_index(tmp_path / "b.duckdb", [str(demo_images)], SMALL_TAXONOMY, brightness, beam=0, samples=1,
                     classes=["bright"], require_gain=True)
    assert free.nodes_scored == SMALL_NODES and gain.edits_computed == 0  # same edits, fewer kept
    with open_store(tmp_path / "b.duckdb", read_only=True) as store:
        rows = store.con.execute(
            """SELECT ne.node, abs(ne.mean_delta_prob), abs(pe.mean_delta_prob) FROM node_effects ne
               JOIN nodes n USING (node_id) LEFT JOIN node_effects pe ON pe.node_id = n.parent_id
                AND pe.class_name = ne.class_name AND pe.classifier_id = ne.classifier_id
               WHERE ne.class_name = 'bright'""").fetchall()
    strength = {r[0]: (r[1], r[2]) for r in rows}
    kept = set(gain.beam["bright"])
    for name, (own, parent) in strength.items():
        if name in kept and parent is not None:
            assert own > parent, name
    dropped = {n for n, (own, parent) in strength.items() if parent is not None and own <= parent}
    assert dropped and not dropped & kept and kept < set(free.beam["bright"])


def test_joint_cli_and_bad_values(cli_run, tmp_path, demo_images, small_taxonomy):
    db = tmp_path / "x.duckdb"
    args = ["index", "--db", db, "--images", demo_images, "--taxonomy", small_taxonomy, "--classifier", "demo:v1",
            "--beam", "1", "--samples", "1", "--classes", "old"]
    result = cli_run(*args, "--joint", "2", "--joint-top", "3", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["joint_combinations"] >= 1 and "goatee" in stats["best_joint"]["old"]["nodes"]
    text = cli_run(*args, "--joint", "2", "--joint-top", "3")
    assert "best joint for old: " in text.output and "goatee" in text.output
    for bad, message in [(["--joint", "1"], "--joint must be 0 (off) or 2 to 5"),
                         (["--joint", "2", "--joint-top", "1"], "--joint-top must be at least")]:
        result = cli_run(*args, *bad)
        assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    with pytest.raises(UsageError):
        run_index(db, [str(demo_images)], SMALL_TAXONOMY, "demo:v1", joint=9)
