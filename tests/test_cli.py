"""The command line: help everywhere, JSON outputs, and one-line errors for bad input that
never lose what is stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from diffex.cli.main import cli

IDX = ("--beam", "0", "--samples", "1")


def test_every_command_has_help(cli_run):
    for name, command in cli.commands.items():
        assert command.help, f"{name} has no help text"
        result = cli_run(name, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_index_json_and_info_json(tmp_path, demo_images, small_taxonomy, brightness, cli_run):
    db = tmp_path / "x.duckdb"
    result = cli_run("index", "--db", db, "--images", demo_images, "--taxonomy", small_taxonomy, "--classifier", brightness, *IDX, "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert {"images", "nodes_scored", "edits_computed", "edits_reused", "scores_computed", "seconds"} <= set(stats)
    assert stats["images"] == 6 and stats["edits_computed"] == 6 * 14
    info = json.loads(cli_run("info", "--db", db, "--json").output)
    assert (info["images"], info["nodes"], info["edits"]) == (6, 13, 84)
    assert info["scores"] == 2 * (6 + 84)
    assert info["classifiers"][0]["class_names"] == ["dark", "bright"] and info["editors"][0]["name"] == "demo"
    # globs and several --images work and are deduplicated by pixel content
    result = cli_run("index", "--db", db, "--images", f"{demo_images}/face_0050*.png", "--images", demo_images,
                     "--taxonomy", small_taxonomy, "--classifier", brightness, *IDX, "--json")
    assert json.loads(result.output)["images"] == 6 and json.loads(result.output)["edits_computed"] == 0


def _state(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("images", "nodes", "edits", "scores", "classifiers")]
    finally:
        con.close()


@pytest.fixture
def populated(tmp_path, demo_images, small_taxonomy, brightness, cli_run):
    db = tmp_path / "keep.duckdb"
    assert cli_run("index", "--db", db, "--images", demo_images, "--taxonomy", small_taxonomy, "--classifier", brightness, *IDX).exit_code == 0
    return db


def _bad_inputs(tmp_path, demo_images, small_taxonomy, brightness, classifier_file):
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"facial hair": ["goatee",]')
    dup = tmp_path / "dup.json"
    dup.write_text('{"facial hair": ["goatee"], "facial hair": ["stubble"]}')
    dup_leaf = tmp_path / "dup_leaf.json"
    dup_leaf.write_text('{"facial hair": ["goatee", "Goatee "]}')
    cycle = tmp_path / "cycle.json"
    cycle.write_text('{"beard": {"goatee": {"beard": []}}}')
    base = ["--images", str(demo_images), "--taxonomy", str(small_taxonomy), "--classifier", brightness]
    return {
        "missing image": (["--images", str(tmp_path / "nope.png"), "--taxonomy", str(small_taxonomy), "--classifier", brightness], 1, "image not found"),
        "not an image": (["--images", str(text), "--taxonomy", str(small_taxonomy), "--classifier", brightness], 1, "not an image file"),
        "empty glob": (["--images", str(tmp_path / "*.jpg"), "--taxonomy", str(small_taxonomy), "--classifier", brightness], 1, "no images match"),
        "invalid json": (["--images", str(demo_images), "--taxonomy", str(bad_json), "--classifier", brightness], 1, "not valid JSON"),
        "duplicate key": (["--images", str(demo_images), "--taxonomy", str(dup), "--classifier", brightness], 1, "duplicate key"),
        "duplicate label": (["--images", str(demo_images), "--taxonomy", str(dup_leaf), "--classifier", brightness], 1, "appears twice"),
        "cycle": (["--images", str(demo_images), "--taxonomy", str(cycle), "--classifier", brightness], 1, "cycle"),
        "missing taxonomy": (["--images", str(demo_images), "--taxonomy", str(tmp_path / "t.json"), "--classifier", brightness], 1, "taxonomy file not found"),
        "unknown class": (base + ["--classes", "purple"], 1, "unknown class 'purple'"),
        "unknown classifier spec": (["--images", str(demo_images), "--taxonomy", str(small_taxonomy), "--classifier", "resnet"], 1, "unknown classifier spec"),
        "unknown demo version": (["--images", str(demo_images), "--taxonomy", str(small_taxonomy), "--classifier", "demo:v9"], 1, "demo:v9"),
        "unknown editor spec": (base + ["--editor", "photoshop"], 1, "unknown editor spec"),
        "wrong shape": (["--images", str(demo_images), "--taxonomy", str(small_taxonomy), "--classifier", f"python:{classifier_file}:make_wrong_shape"], 1, "returned shape (1, 3), expected (1, 2)"),
        "nan": (["--images", str(demo_images), "--taxonomy", str(small_taxonomy), "--classifier", f"python:{classifier_file}:make_nan"], 1, "NaN"),
        "missing factory": (["--images", str(demo_images), "--taxonomy", str(small_taxonomy), "--classifier", f"python:{classifier_file}:nothing"], 1, "has no attribute 'nothing'"),
        "bad samples": (base + ["--samples", "0"], 2, "--samples"),
        "bad beam": (base + ["--beam", "-1"], 2, "--beam"),
    }


CASES = ["missing image", "not an image", "empty glob", "invalid json", "duplicate key", "duplicate label", "cycle",
         "missing taxonomy", "unknown class", "unknown classifier spec", "unknown demo version", "unknown editor spec",
         "wrong shape", "nan", "missing factory", "bad samples", "bad beam"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_loses_nothing(case, populated, tmp_path, demo_images, small_taxonomy, brightness, classifier_file, cli_run):
    args, code, needle = _bad_inputs(tmp_path, demo_images, small_taxonomy, brightness, classifier_file)[case]
    before = _state(populated)
    result = cli_run("index", "--db", populated, *args)
    assert result.exit_code == code, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert _state(populated) == before


def test_database_path_that_is_a_directory(tmp_path, demo_images, small_taxonomy, brightness, cli_run):
    for args in (["info", "--db", tmp_path], ["query", "--db", tmp_path, "SELECT 1"],
                 ["index", "--db", tmp_path, "--images", demo_images, "--taxonomy", small_taxonomy, "--classifier", brightness]):
        result = cli_run(*args)
        assert result.exit_code == 1 and "is a directory" in result.output and result.output.count("\n") == 1


def test_missing_database_for_reading(tmp_path, cli_run):
    result = cli_run("query", "--db", tmp_path / "none.duckdb", "SELECT 1")
    assert result.exit_code == 1 and "no database at" in result.output
    assert not (tmp_path / "none.duckdb").exists()


def test_missing_required_option_is_a_usage_error(cli_run):
    result = cli_run("index", "--db", "x.duckdb")
    assert result.exit_code == 2 and "Missing option" in result.output


def _diffex(*args):
    return [sys.executable, "-m", "diffex.cli.main", *map(str, args)]


@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_interrupted_run_keeps_committed_work_and_resumes(how, tmp_path, brightness):
    from diffex.demo.world import write_dataset

    imgs = tmp_path / "imgs"
    write_dataset(imgs, 24, start_seed=700)
    from conftest import DEMO_TAXONOMY

    db = tmp_path / "x.duckdb"
    args = ["index", "--db", db, "--images", imgs, "--taxonomy", DEMO_TAXONOMY, "--classifier", brightness, "--beam", "0", "--samples", "2", "--json"]
    # SIGINT back to its default in the child: pytest started as a background job by a
    # non-interactive shell has it ignored, the child would inherit that and run to the end
    proc = subprocess.Popen(_diffex(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    cache = tmp_path / "x-cache"
    deadline = time.time() + 120
    # wait until a few images' edits are on disk (each image's edits are committed together)
    while time.time() < deadline and proc.poll() is None:
        if cache.exists() and sum(1 for _ in cache.rglob("*.png")) > 250:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    if how == "sigint":
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    kept = _state(db)[2]
    assert kept > 0
    resumed = subprocess.run(_diffex(*args), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    stats = json.loads(resumed.stdout)
    total = 24 * (1 + 39 * 2)
    assert stats["edits_reused"] >= kept - 24 and stats["edits_computed"] + stats["edits_reused"] == total
    assert stats["edits_computed"] < total
    assert _state(db)[2] == total
