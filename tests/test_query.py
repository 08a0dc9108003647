"""`diffex query`: read-only, sandboxed SQL with the shipped views and macros."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import pytest

from diffex import DiffexError, run_index, run_query


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, demo_images, classifier_file):
    db = tmp_path_factory.mktemp("q") / "q.duckdb"
    tax = {"categories": {"hair colour": ["grey hair", "black hair"], "background": ["blue background", "purple background"]}}
    run_index(db, [str(demo_images)], tax, f"python:{classifier_file}:make", beam=0, samples=1)
    return db


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "sql",
    [
        "COPY nodes TO '{tmp}/x.csv'",
        "ATTACH '{tmp}/other.duckdb' AS o",
        "SELECT * FROM read_csv('/etc/passwd')",
        "INSERT INTO nodes VALUES ('x', NULL, 'x', 'x', 1, 'x')",
        "DROP TABLE scores",
        "DELETE FROM edits",
        "SET enable_external_access = true",
        "INSTALL httpfs",
        "EXPORT DATABASE '{tmp}/dump'",
    ],
)
def test_writes_and_file_access_are_refused(indexed, tmp_path, cli_run, sql):
    before = _digest(indexed)
    result = cli_run("query", "--db", indexed, sql.format(tmp=tmp_path))
    assert result.exit_code == 1
    assert result.output.startswith("Error: query refused:") and result.output.count("\n") == 1
    assert "Traceback" not in result.output
    assert _digest(indexed) == before
    assert list(tmp_path.iterdir()) == []


def test_top_subtypes_formats(indexed, cli_run):
    as_json = json.loads(cli_run("query", "--db", indexed, "SELECT * FROM top_subtypes('bright', 3)", "--format", "json").output)
    assert [r["rank"] for r in as_json] == [1, 2, 3]
    assert {"node", "parent", "depth", "mean_delta_prob", "ci_low", "ci_high", "n_images", "n_edits", "effect"} <= set(as_json[0])
    assert abs(as_json[0]["mean_delta_prob"]) >= abs(as_json[1]["mean_delta_prob"]) >= abs(as_json[2]["mean_delta_prob"])
    assert all(r["ci_low"] <= r["mean_delta_prob"] <= r["ci_high"] for r in as_json)
    as_csv = list(csv.DictReader(io.StringIO(cli_run("query", "--db", indexed, "SELECT * FROM top_subtypes('bright', 3)", "--format", "csv").output)))
    assert [r["node"] for r in as_csv] == [r["node"] for r in as_json]
    md = cli_run("query", "--db", indexed, "SELECT node FROM top_subtypes('bright', 3)", "--format", "markdown").stdout.splitlines()
    assert md[0] == "| node |" and md[1] == "|---|" and len(md) == 5
    table = cli_run("query", "--db", indexed, "SELECT node, depth FROM top_subtypes('bright', 3)").output
    assert as_json[0]["node"] in table.splitlines()[2]


def test_parameters_and_stdin(indexed, cli_run):
    result = cli_run("query", "--db", indexed, "SELECT count(*) AS n FROM nodes WHERE depth = $d", "-p", "d", "2", "--format", "json")
    assert json.loads(result.output) == [{"n": 4}]
    result = cli_run("query", "--db", indexed, "-", "--format", "json", input="SELECT count(*) AS n FROM images")
    assert json.loads(result.output) == [{"n": 6}]


def test_unknown_class_or_classifier_is_an_error(indexed):
    with pytest.raises(DiffexError, match="unknown class 'nope'|unknown class nope"):
        run_query(indexed, "SELECT * FROM top_subtypes('nope', 3)")
    with pytest.raises(DiffexError, match="unknown classifier"):
        run_query(indexed, "SELECT * FROM top_subtypes('bright', 3, classifier := 'missing')")


def test_tree_image_and_library_views_agree(indexed):
    tree = run_query(indexed, "SELECT * FROM effect_tree('bright')").dicts()
    assert [r["tree"] for r in tree][:3] == ["background", "  blue background", "  purple background"]
    top = run_query(indexed, "SELECT node, mean_delta_prob FROM top_nodes('bright', 10)").dicts()
    by_tree = {r["tree"].strip(): r["mean_delta_prob"] for r in tree}
    assert all(by_tree[r["node"]] == pytest.approx(r["mean_delta_prob"], abs=1e-4) for r in top)
    one = run_query(indexed, "SELECT * FROM image_explanation('face_00500.png', 'bright')").dicts()
    assert len(one) == 6 and one[0]["uri"].endswith("face_00500.png")
    # dark and bright are complementary: effects are exact mirrors
    dark = {r["node"]: r["mean_delta_prob"] for r in run_query(indexed, "SELECT * FROM top_nodes('dark', 10)").dicts()}
    assert all(dark[r["node"]] == pytest.approx(-r["mean_delta_prob"], abs=1e-3) for r in top)


def test_query_while_another_process_writes_is_a_clear_error(indexed):
    import subprocess
    import sys

    from diffex.store.query import _POOL

    # a process that does not take diffex's locks (the duckdb shell) cannot queue for the file,
    # so this process's warm connection (kept up to 2 s) is closed first, as it would be by then
    _POOL.close_all()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); time.sleep(60)", str(indexed)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(DiffexError, match="in use by another process"):
            run_query(indexed, "SELECT 1")
    finally:
        holder.kill()
        holder.wait()
    assert run_query(indexed, "SELECT 1 AS one").rows == [(1,)]


def test_classifiers_are_named_apart_and_a_pinned_one_stays_the_default(tmp_path, demo_images, classifier_file, cli_run):
    """Two versions of one model print different names; `diffex use` pins the default that
    a new index run would otherwise move; the table says which classifier answered."""
    db = tmp_path / "pin.duckdb"
    tax = {"categories": {"hair colour": ["grey hair", "black hair"]}}
    for factory in ("make", "make_retrained"):
        run_index(db, [str(demo_images)], tax, f"python:{classifier_file}:{factory}", beam=0, samples=1)
    names = {r[0] for r in run_query(db, "SELECT DISTINCT classifier_name FROM node_effects").rows}
    assert names == {f"python:{classifier_file}:make", f"python:{classifier_file}:make_retrained"}
    newest = run_query(db, "SELECT classifier_name FROM top_nodes('bright', 1)").rows[0][0]
    assert newest.endswith(":make_retrained")
    pinned = cli_run("use", "--db", db, "--classifier", f"python:{classifier_file}:make")
    assert pinned.exit_code == 0 and "pinned python:" in pinned.output
    run_index(db, [str(demo_images)], tax, f"python:{classifier_file}:make_retrained", beam=0, samples=1)  # indexed last
    assert run_query(db, "SELECT classifier_name FROM top_nodes('bright', 1)").rows[0][0].endswith(":make")
    shown = cli_run("query", "--db", db, "SELECT * FROM effect_tree('bright')")
    assert shown.exit_code == 0 and f"(classifier: python:{classifier_file}:make, pinned with `diffex use`; editors: demo" in shown.stderr
    assert cli_run("use", "--db", db, "--unpin").exit_code == 0
    assert run_query(db, "SELECT classifier_name FROM top_nodes('bright', 1)").rows[0][0].endswith(":make_retrained")
    bad = cli_run("use", "--db", db, "--classifier", "nosuch")
    assert bad.exit_code == 1 and "unknown classifier 'nosuch'" in bad.output
    assert cli_run("use", "--db", db).exit_code == 2
