"""The offline demo world end to end: the planted dependency is recovered, and a retrained
classifier is explained from the cached edits alone."""

from __future__ import annotations

import json

import pytest

from diffex import run_query
from diffex.demo.classifier import ground_truth
from diffex.taxonomy.tree import load_taxonomy


def test_demo_taxonomy_is_rich_enough():
    tax = load_taxonomy(json.loads((__import__("pathlib").Path(__file__).parents[1] / "diffex/demo/taxonomy.json").read_text()))
    groups = [n for n in tax.nodes if n.depth == 1]
    leaves = [n for n in tax.nodes if not tax.children(n.node_id)]
    assert len(groups) >= 6 and len(leaves) >= 25


def test_demo_recovers_planted_subtypes_and_reuses_edits_for_v2(tmp_path, cli_run):
    db = tmp_path / "demo.duckdb"
    truth = ground_truth()
    first = cli_run("demo", "--db", db, "--images", "16", "--samples", "1", "--json")
    assert first.exit_code == 0, first.output
    v1 = json.loads(first.output)
    assert {"db", "images", "taxonomy", "class", "planted", "top"} <= set(v1)
    assert v1["class"] == truth["v1"]["class"] and v1["planted"] == truth["v1"]["planted"]
    assert v1["top"][0] in v1["planted"]
    assert v1["rows"][0]["ci_low"] > 0.05  # clearly non-zero, not a fluke of 16 images

    second = cli_run("demo", "--db", db, "--images", "16", "--samples", "1", "--classifier", "demo:v2", "--json")
    v2 = json.loads(second.output)
    assert v2["stats"]["edits_computed"] == 0 and v2["stats"]["edits_reused"] == v1["stats"]["edits_computed"]
    assert v2["top"][0] in truth["v2"]["planted"] and v2["top"][0] != v1["top"][0]

    # the outputs are usable as inputs: re-index with them computes nothing
    again = cli_run("index", "--db", db, "--images", v2["images"], "--taxonomy", v2["taxonomy"],
                    "--classifier", "demo:v1", "--beam", "0", "--samples", "1", "--json")
    assert json.loads(again.output)["edits_computed"] == 0 and json.loads(again.output)["scores_computed"] == 0

    # the store answers for both versions by name
    for spec, planted in (("demo:v1", truth["v1"]["planted"]), ("demo:v2", truth["v2"]["planted"])):
        rows = run_query(db, "SELECT node FROM top_subtypes('old', 1, classifier := $c)", {"c": spec}).rows
        assert rows[0][0] in planted


def test_demo_text_output_names_the_ground_truth(tmp_path, cli_run):
    result = cli_run("demo", "--db", tmp_path / "d.duckdb", "--images", "8", "--samples", "1")
    assert result.exit_code == 0, result.output
    assert "Planted dependency (ground truth): goatee" in result.output
    assert "top_subtypes('old', 10)" in result.output


def test_each_demo_store_keeps_its_own_images(tmp_path):
    """Issue 9: `diffex demo --db data/other.duckdb --images 8` deleted images data/demo.duckdb
    still pointed at. Each store now has `<db stem>-images/` and files are only ever added."""
    from pathlib import Path

    from diffex.indexing.demo_run import run_demo

    a, b = tmp_path / "demo.duckdb", tmp_path / "other.duckdb"
    first = run_demo(a, n_images=4, samples=1, embedder=None)
    uris = [r[0] for r in run_query(a, "SELECT uri FROM images ORDER BY uri").rows]
    assert first["images"] == str(tmp_path / "demo-images") and len(uris) == 4
    assert {Path(u).parent for u in uris} == {tmp_path / "demo-images"}
    pixels = {u: Path(u).read_bytes() for u in uris}

    second = run_demo(b, n_images=2, samples=1, embedder=None)
    assert second["images"] == str(tmp_path / "other-images") and second["taxonomy"] == str(tmp_path / "other-taxonomy.json")
    assert {Path(r[0]).parent for r in run_query(b, "SELECT uri FROM images").rows} == {tmp_path / "other-images"}
    again = run_demo(a, n_images=2, samples=1, embedder=None)  # fewer images into the same store: nothing removed
    assert again["stats"]["edits_computed"] == 0 and again["stats"]["images"] == 2

    assert {u: Path(u).read_bytes() for u in uris} == pixels  # every file of the first store, unchanged
    for uri in uris:  # and the first store still answers about each of its images by path
        rows = run_query(a, "SELECT node FROM image_explanation($p, 'old')", {"p": uri}).rows
        assert len(rows) > 10
    top = run_query(a, "SELECT node FROM top_subtypes('old', 3, classifier := 'demo:v1')").rows
    assert [r[0] for r in top] == first["top"][:3]
