"""Search and edit validity with the shipped demo CLIP, on demo faces where the truth is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffex.embedding.clip import DEMO_CLIP_DIR

pytestmark = pytest.mark.skipif(not (DEMO_CLIP_DIR / "model.safetensors").is_file(),
                                reason="demo CLIP not trained (scripts/train_demo_clip.py)")

TAXONOMY = {
    "domain": "cartoon faces",
    "categories": {
        "facial hair": {"beard": ["goatee", "full beard"]},
        "eyewear": {"glasses": ["round glasses"], "monocle": []},  # no monocle in the demo world
        "headwear": ["top hat", "cap"],
    },
}


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    from diffex.demo.world import OPTIONAL_SLOTS, sample_spec, save_png
    from diffex.indexing.indexer import run_index

    root = tmp_path_factory.mktemp("demo-search")
    # bare faces (no hat, beard or glasses yet), so an edit's concept is the edit's own
    bare = [s for s in range(700, 800) if all(sample_spec(s).attrs[slot] == "none" for slot in OPTIONAL_SLOTS)][:5]
    (root / "images").mkdir()
    for seed in bare:
        save_png(sample_spec(seed), root / "images" / f"face_{seed}.png")
    (root / "taxonomy.json").write_text(json.dumps(TAXONOMY))
    db = root / "demo.duckdb"
    stats = run_index(db, [str(root / "images")], root / "taxonomy.json", "demo:v1", "demo", beam=0, samples=1,
                      embedder="demo")
    return db, stats


def test_demo_clip_loads_through_the_clip_code_with_its_calibrated_threshold():
    from diffex.embedding import load_embedder

    demo = load_embedder("demo")
    same = load_embedder(f"clip:{DEMO_CLIP_DIR}")
    assert demo.embedder_id == same.embedder_id and demo.spec == "demo"
    calibration = json.loads((DEMO_CLIP_DIR / "diffex.json").read_text())
    assert demo.validity_threshold == same.validity_threshold == calibration["validity_threshold"]


def test_search_for_a_leaf_returns_edits_of_that_leaf(demo_db):
    from diffex.embedding.search import search

    db, _ = demo_db
    rows = search(db, text="a face with a top hat", k=5, class_name="old")
    assert sum(r["node"] == "top hat" for r in rows) >= 4, [r["node"] for r in rows]
    assert all(r["class_name"] == "old" and isinstance(r["delta_prob"], float) for r in rows)
    rows = search(db, text="a face with a full beard", k=5)
    # group edits ("beard", "facial hair") that drew a full beard are right answers too
    assert sum(r["node"] == "full beard" for r in rows) >= 2, [r["node"] for r in rows]
    assert sum(r["node"] in ("full beard", "beard", "facial hair") for r in rows) >= 4, [r["node"] for r in rows]


def test_failed_edits_are_invalid_and_left_out_of_top_subtypes(demo_db):
    from diffex.store.query import run_query

    db, stats = demo_db
    assert stats.edits_invalid >= 5  # every monocle edit at least
    monocle = run_query(db, """SELECT v.valid, v.direction_sim FROM edit_validity v JOIN edit_nodes USING (edit_id)
                               JOIN nodes n USING (node_id) WHERE n.label = 'monocle'""").rows
    assert len(monocle) == 5 and all(not valid and sim == 0 for valid, sim in monocle)
    top = {r["node"]: r for r in run_query(db, "SELECT * FROM top_subtypes('old', 20)").dicts()}
    assert top["monocle"]["n_edits"] == 0 and top["monocle"]["n_invalid"] == 5 and top["monocle"]["mean_delta_prob"] is None
    # edits that showed their concept stay: most top-hat edits are valid
    assert top["top hat"]["n_edits"] >= 4 and top["top hat"]["n_invalid"] <= 1
    every = {r["node"]: r for r in run_query(db, "SELECT * FROM top_subtypes('old', 20, include_invalid := TRUE)").dicts()}
    assert every["monocle"]["n_edits"] == 5 and every["monocle"]["mean_delta_prob"] == 0
    # the SQL search macros answer from stored vectors only
    near = run_query(db, "SELECT node FROM nearest_edits('top hat', 5)").rows
    assert sum(n == "top hat" for (n,) in near) >= 4
    assert run_query(db, "SELECT node FROM similar_nodes('goatee', 1)").rows[0][0] == "goatee"


def test_words_outside_the_taxonomy_map_to_nodes(demo_db):
    from diffex.embedding.search import nodes_like

    db, _ = demo_db
    rows = nodes_like(db, "a face with a hat", k=3)  # "hat" is not a node of this taxonomy
    assert rows[0]["node"] in {"top hat", "cap", "headwear"}, rows
    assert nodes_like(db, "facial hair", k=1)[0]["node"] == "facial hair"


def test_search_command_prints_rows_with_node_and_delta(demo_db, cli_run):
    import json

    db = demo_db[0] if isinstance(demo_db, tuple) else demo_db
    result = cli_run("search", "--db", db, "a face with a goatee", "--class", "old", "--k", "5", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 5 and [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert all({"node", "similarity", "delta_prob"} <= set(r) for r in rows)
    assert rows[0]["similarity"] >= rows[-1]["similarity"]
    table = cli_run("search", "--db", db, "--nodes", "headgear", "--k", "3")
    assert table.exit_code == 0 and len(table.output.strip().splitlines()) == 2 + 3
    bad = cli_run("search", "--db", db, "a face", "--class", "purple")
    assert bad.exit_code == 1 and "unknown class" in bad.output
    neither = cli_run("search", "--db", db)
    assert neither.exit_code == 2 and "--image or a query text: give exactly one" in neither.output
    from diffex import DiffexError
    from diffex.embedding.search import search

    with pytest.raises(DiffexError, match=r"^image or a query text: give exactly one$"):  # library terms, no flag
        search(db, text="a face", image=__file__)


def test_image_search_table_names_each_image(demo_db, cli_run):
    """Issue 9: `diffex search --kind image` printed no image id or path in its table."""
    db, _ = demo_db
    result = cli_run("search", "--db", db, "a face with a top hat", "--kind", "image", "--k", "3", "--class", "old")
    assert result.exit_code == 0, result.output
    header, rule, *lines = result.output.strip().splitlines()
    assert header.split() == ["rank", "similarity", "image_id", "image_path", "class_name", "prob"]
    full = json.loads(cli_run("search", "--db", db, "a face with a top hat", "--kind", "image", "--k", "3",
                              "--class", "old", "--format", "json").output)
    assert len(lines) == 3 == len(full)
    for line, row in zip(lines, full):
        cells = line.split()
        assert cells[2] == row["image_id"][:12] and cells[3] == row["uri"] and Path(cells[3]).is_file()
    plain = cli_run("search", "--db", db, "a face", "--kind", "image", "--k", "2")
    assert plain.output.splitlines()[0].split() == ["rank", "similarity", "image_id", "image_path"]
