"""Curation: every change is a new version with its lineage; node identity by path means a
re-index of a curated taxonomy recomputes only the edits of nodes that really changed."""

from __future__ import annotations

import json

import pytest

from diffex.taxonomy.curation import add_node, export, merge_nodes, remove_node, rename_node, show, taxonomy_from_store
from diffex.errors import DiffexError
from diffex.indexing.indexer import run_index
from diffex.store.core import Store
from diffex.taxonomy.tree import load_taxonomy

from conftest import SMALL_NODES


@pytest.fixture
def stored(tmp_path, small_taxonomy):
    """A store holding the small taxonomy (no indexing needed to curate it)."""
    db = tmp_path / "c.duckdb"
    with Store.open(db) as store:
        store.add_taxonomy(load_taxonomy(small_taxonomy), source=str(small_taxonomy))
    return db


def labels(db, which=None):
    return [n["path"] for n in show(db, which)["nodes"]]


def test_rename_then_reindex_reuses_every_unchanged_edit(tmp_path, demo_images, small_taxonomy, brightness, cli_run):
    db = tmp_path / "r.duckdb"
    first = run_index(db, [str(demo_images)], small_taxonomy, brightness, beam=0, samples=1)
    assert first.edits_computed == 6 * (SMALL_NODES + 1)  # every node, plus the null-edit baselines

    result = cli_run("taxonomy", "rename", "--db", db, "facial hair > beard > goatee", "soul patch", "--json")
    assert result.exit_code == 0, result.output
    change = json.loads(result.output)
    assert change["parent_taxonomy_id"] == first.taxonomy_id and change["nodes"] == SMALL_NODES
    assert change["note"] == "rename 'facial hair > beard > goatee' to 'soul patch'"
    out = tmp_path / "curated.json"
    assert cli_run("taxonomy", "export", "--db", db, "--out", out).exit_code == 0
    assert json.loads(out.read_text())["categories"]["facial hair"]["beard"] == ["soul patch", "full beard"]

    again = run_index(db, [str(demo_images)], out, brightness, beam=0, samples=1)
    assert again.taxonomy_id == change["taxonomy_id"]  # the exported file IS the curated version
    assert again.edits_computed == 6  # only 'soul patch' (new path, new prompt), once per image
    assert again.edits_reused == 6 * SMALL_NODES and again.scores_computed == 6

    # renaming a group changes its descendants' paths but not their prompts: one new edit per image
    assert cli_run("taxonomy", "rename", "--db", db, "facial hair/beard", "whiskers").exit_code == 0
    assert cli_run("taxonomy", "export", "--db", db, "--out", out).exit_code == 0
    third = run_index(db, [str(demo_images)], out, brightness, beam=0, samples=1)
    assert (third.edits_computed, third.edits_reused) == (6, 6 * SMALL_NODES)
    with Store.open(db, read_only=True) as store:
        linked = store._rows(
            """SELECT n.path, count(*) AS edits FROM edit_nodes en JOIN nodes n USING (node_id)
               WHERE n.path LIKE 'facial hair > whiskers > %' GROUP BY ALL ORDER BY 1""")
    assert linked == [{"path": "facial hair > whiskers > full beard", "edits": 6},
                      {"path": "facial hair > whiskers > soul patch", "edits": 6}]


def test_every_change_is_a_new_version_with_lineage(stored):
    base = show(stored)["taxonomy_id"]
    added = add_node(stored, "Beanie ", parent="headwear > hat", prompt="a knitted beanie")
    removed = remove_node(stored, "hair colour")
    merged = merge_nodes(stored, "facial hair > mustache", "facial hair > beard")
    assert (added.parent_taxonomy_id, removed.parent_taxonomy_id, merged.parent_taxonomy_id) == (
        base, added.taxonomy_id, removed.taxonomy_id)
    assert removed.note == "remove 'hair colour' and 2 node(s) below it" and removed.nodes == SMALL_NODES + 1 - 3
    assert labels(stored) == [
        "facial hair", "facial hair > beard", "facial hair > beard > goatee", "facial hair > beard > full beard",
        "facial hair > beard > handlebar mustache", "headwear", "headwear > hat", "headwear > hat > top hat",
        "headwear > hat > cap", "headwear > hat > beanie"]
    info = show(stored)
    assert info["taxonomy_id"] == merged.taxonomy_id and info["note"] == "merge 'facial hair > mustache' into 'facial hair > beard'"
    assert {n["label"]: n["prompt"] for n in info["nodes"]}["beanie"] == "a knitted beanie"
    # the old versions are untouched and still readable by id prefix
    assert len(labels(stored, base[:8])) == SMALL_NODES
    with Store.open(stored, read_only=True) as store:
        versions = store.taxonomy_versions()
        assert [v["taxonomy_id"] for v in versions] == [merged.taxonomy_id, removed.taxonomy_id, added.taxonomy_id, base]
        assert [v["nodes"] for v in versions] == [10, 11, 14, 13]
        # the stored order rebuilds the very same id
        assert taxonomy_from_store(store, added.taxonomy_id)[0].taxonomy_id == added.taxonomy_id


def test_merge_combines_children_that_share_a_label(stored):
    add_node(stored, "stubble", parent="facial hair > mustache")
    add_node(stored, "pencil", parent="facial hair > beard")
    rename_node(stored, "facial hair > beard > pencil", "pencil mustache")
    result = merge_nodes(stored, "facial hair > beard", "facial hair > mustache")
    assert result.notes == ()
    assert [p for p in labels(stored) if p.startswith("facial hair")] == [
        "facial hair", "facial hair > mustache", "facial hair > mustache > handlebar mustache",
        "facial hair > mustache > stubble", "facial hair > mustache > goatee", "facial hair > mustache > full beard",
        "facial hair > mustache > pencil mustache"]


def test_returning_to_an_earlier_version_makes_it_newest(stored):
    base = show(stored)["taxonomy_id"]
    rename_node(stored, "headwear", "hats")
    back = rename_node(stored, "hats", "headwear")
    assert back.taxonomy_id == base and back.existed
    assert show(stored)["taxonomy_id"] == base


@pytest.mark.parametrize("args,code,needle", [
    (["rename", "facial hair > beard > nope", "x"], 1, "no node 'facial hair > beard > nope': 'nope' is not under facial hair > beard (there: 'goatee', 'full beard')"),
    (["rename", "facial hair > beard", "mustache"], 1, "'facial hair > mustache' already exists; use `merge`"),
    (["rename", "headwear > hat > cap", "goatee"], 1, "'goatee' appears twice"),
    (["rename", "headwear", "Headwear "], 1, "nothing changed"),
    (["add", "--parent", "headwear > hat", "cap"], 1, "'headwear > hat > cap' already exists"),
    (["add", "--parent", "shoes", "boots"], 1, "no parent 'shoes'"),
    (["merge", "facial hair", "facial hair > beard"], 1, "into its own descendant"),
    (["merge", "headwear", "headwear"], 2, "cannot merge a node into itself"),
    (["remove", " > "], 2, "bad node path"),
    (["show", "--taxonomy", "ffffffff"], 1, "unknown taxonomy 'ffffffff'"),
])
def test_bad_changes_are_one_line_and_change_nothing(stored, cli_run, args, code, needle):
    before = show(stored)["taxonomy_id"]
    result = cli_run("taxonomy", args[0], "--db", stored, *args[1:])
    assert result.exit_code == code, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert needle in result.output
    assert show(stored)["taxonomy_id"] == before


def test_remove_everything_and_empty_store(stored, tmp_path, cli_run):
    for group in ("facial hair", "headwear"):
        remove_node(stored, group)
    with pytest.raises(DiffexError, match="would leave the taxonomy empty"):
        remove_node(stored, "hair colour")
    empty = tmp_path / "empty.duckdb"
    Store.open(empty).close()
    result = cli_run("taxonomy", "show", "--db", empty)
    assert result.exit_code == 1 and "has no taxonomy yet" in result.output
    result = cli_run("taxonomy", "show", "--db", tmp_path / "missing.duckdb")
    assert result.exit_code == 1 and "no database at" in result.output
    assert cli_run("taxonomy", "show").exit_code == 2  # --db is required


def test_show_formats_and_export_to_stdout(stored, cli_run):
    add_node(stored, "beanie", parent="headwear > hat", prompt="a knitted beanie")
    tree = cli_run("taxonomy", "show", "--db", stored)
    assert tree.exit_code == 0
    lines = tree.output.splitlines()
    assert lines[0].startswith("taxonomy ") and "(cartoon faces, 14 nodes)" in lines[0]
    assert "from " in lines[1] and "add 'headwear > hat > beanie'" in lines[1]
    assert "    beanie   [prompt: a knitted beanie]" in lines and "  beard" in lines
    as_json = json.loads(cli_run("taxonomy", "show", "--db", stored, "--format", "json").output)
    assert as_json["tree"]["categories"]["headwear"]["hat"][-1] == {"label": "beanie", "prompt": "a knitted beanie"}
    assert as_json["nodes"][2] == {**as_json["nodes"][2], "path": "facial hair > beard > goatee", "depth": 3}
    csv = cli_run("taxonomy", "show", "--db", stored, "--format", "csv").output.splitlines()
    assert csv[0] == "path,label,depth,prompt,node_id,parent_id" and len(csv) == 15
    printed = json.loads(cli_run("taxonomy", "export", "--db", stored).output)
    assert printed == export(stored) and load_taxonomy(printed).taxonomy_id == as_json["taxonomy_id"]
    versions = cli_run("taxonomy", "versions", "--db", stored, "--format", "json")
    assert [v["nodes"] for v in json.loads(versions.output)] == [14, 13]


def test_help_everywhere(cli_run):
    from diffex.cli.main import cli

    group = cli.commands["taxonomy"]
    assert set(group.commands) == {"propose", "show", "versions", "add", "remove", "rename", "merge", "export"}
    for name, command in group.commands.items():
        assert command.help, name
        result = cli_run("taxonomy", name, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output
