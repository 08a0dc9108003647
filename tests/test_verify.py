"""`diffex verify`: a healthy demo store passes untouched; each kind of damage (a missing or
corrupt cached image, stray files, a stale FAISS index, drifting effect tables, dangling
rows) is reported with exit 1, and --repair fixes what can be recomputed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import pytest
from PIL import Image

from diffex import DiffexError
from diffex.store.cache import ImageCache
from diffex.indexing.demo_run import run_demo
from diffex.editing.ledits import inversion_key
from diffex.hashing import hash_image
from diffex.store.locks import index_run_lock
from diffex.store.core import Store
from diffex.embedding.vectors import VectorIndex, index_path, index_status
from diffex.indexing.verify import verify_store

DEMO = {"n_images": 4, "samples": 1}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A demo store (demo editor, classifier and embedder) with its FAISS index built."""
    root = tmp_path_factory.mktemp("verify-demo")
    run_demo(root / "d.duckdb", **DEMO)
    with Store.open(root / "d.duckdb", read_only=True) as store:
        VectorIndex.open(store, store.resolve_embedder()["embedder_id"])
    return root


@pytest.fixture
def db(built, tmp_path) -> Path:
    """A private copy of the demo store and its cache, to damage."""
    shutil.copytree(built, tmp_path / "s")
    return tmp_path / "s" / "d.duckdb"


def verify_cli(cli_run, db: Path, *more: str) -> tuple[int, dict]:
    result = cli_run("verify", "--db", db, "--json", *more)
    return result.exit_code, json.loads(result.output)


def checks(report: dict) -> dict[str, dict]:
    return {c["check"]: c for c in report["checks"]}


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (lock files aside)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.parent.name.endswith(".locks")}


def edit_files(db: Path) -> dict[str, list[str]]:
    """{cache_path: [edit ids]} of the ok/blocked edits."""
    with Store.open(db, read_only=True) as store:
        rows = store.edit_files()
    out: dict[str, list[str]] = {}
    for r in rows:
        if r["status"] in ("ok", "blocked"):
            out.setdefault(r["cache_path"], []).append(r["edit_id"])
    return out


def shared_file(db: Path) -> tuple[str, list[str]]:
    """A cached file several edits point at (the demo editor gives some edits equal pixels)."""
    rel, ids = max(sorted(edit_files(db).items()), key=lambda kv: len(kv[1]))
    assert len(ids) >= 2
    return rel, ids


def test_healthy_store_passes_and_nothing_changes(db, cli_run):
    before = snapshot(db.parent)
    files = edit_files(db)
    code, report = verify_cli(cli_run, db)
    assert code == 0 and report["healthy"] is True and report["repair"] is False
    by = checks(report)
    assert list(by) == ["edit rows", "score rows", "edit links", "edit files", "cached edit images", "cached pixels",
                        "unreferenced files", "inversions", "vector index demo", "effect tables"]
    assert {c["status"] for c in report["checks"]} == {"ok"}
    assert all(c["count"] == 0 and c["repaired"] == 0 and c["examples"] == [] for c in report["checks"])
    n_edits = sum(len(v) for v in files.values())
    assert n_edits == 160 and len(files) < n_edits  # 4 images x (39 nodes + baseline); some share pixels
    assert by["cached edit images"]["detail"] == f"all 160 ok/blocked edits have their cached file ({len(files)} files)"
    assert by["cached pixels"]["detail"] == f"{len(files)} cached files hash to their edits' output_sha256"
    assert by["vector index demo"]["detail"] == "164 image and edit vectors; matches the database"
    assert report["cache_dir"] == str(db.parent / "d-cache")
    # a plain verify writes nothing: the database and every cache file are byte-identical
    assert snapshot(db.parent) == before
    assert not db.with_name("d.duckdb.wal").exists()
    # the table for people: one row per check and a verdict
    table = cli_run("verify", "--db", db)
    assert table.exit_code == 0
    assert table.output.splitlines()[0].split() == ["check", "status", "count", "detail"]
    assert table.output.rstrip().endswith(f"{db}: healthy")


def test_missing_image_is_recomputed_by_the_same_index(db, cli_run):
    rel, ids = shared_file(db)
    cache = ImageCache(db.parent / "d-cache")
    cache.path(rel).unlink()
    code, report = verify_cli(cli_run, db)
    assert code == 1 and report["healthy"] is False
    missing = checks(report)["cached edit images"]
    assert missing["status"] == "problem" and missing["count"] == len(ids)
    assert missing["detail"] == (f"{len(ids)} cached edit images missing (1 files); the next `diffex index` with the "
                                 "same arguments recomputes them bit-identically")
    assert missing["examples"] == [ids[0]]
    # verify cannot recompute an edit: --repair leaves it reported
    code, report = verify_cli(cli_run, db, "--repair")
    assert code == 1 and checks(report)["cached edit images"]["status"] == "problem"
    assert not cache.has(rel)
    stats = run_demo(db, **DEMO)["stats"]
    # the first tree level needing the file recomputes it; later levels find it back
    assert 1 <= stats["edits_computed"] <= len(ids) and stats["edits_computed"] + stats["edits_reused"] == 160
    assert hash_image(cache.load(rel)) == Path(rel).stem  # the same pixels again
    code, report = verify_cli(cli_run, db)
    assert code == 0 and {c["status"] for c in report["checks"]} == {"ok"}


def test_corrupt_image_is_deleted_by_repair_then_recomputed(db, cli_run):
    rel, ids = shared_file(db)
    cache = ImageCache(db.parent / "d-cache")
    Image.new("RGB", (64, 64), (255, 0, 0)).save(cache.path(rel), format="PNG")  # other pixels, same name
    # existence alone does not see it
    code, report = verify_cli(cli_run, db, "--no-pixels")
    assert code == 0 and checks(report)["cached pixels"]["status"] == "skipped"
    code, report = verify_cli(cli_run, db)
    corrupt = checks(report)["cached pixels"]
    assert code == 1 and corrupt["status"] == "problem" and corrupt["count"] == 1 and corrupt["examples"] == [rel]
    assert corrupt["detail"].startswith(f"1 cached files ({len(ids)} edits) whose pixels differ from output_sha256")
    assert cache.has(rel)  # reported, not deleted
    code, report = verify_cli(cli_run, db, "--repair")
    by = checks(report)
    assert by["cached pixels"]["status"] == "repaired" and by["cached pixels"]["repaired"] == 1
    assert not cache.has(rel)
    # now missing, which only an index run can fix
    assert code == 1 and by["cached edit images"]["count"] == len(ids)
    stats = run_demo(db, **DEMO)["stats"]
    assert 1 <= stats["edits_computed"] <= len(ids) and stats["edits_computed"] + stats["edits_reused"] == 160
    assert hash_image(cache.load(rel)) == Path(rel).stem
    assert verify_cli(cli_run, db)[0] == 0


def test_unreferenced_files_and_inversions_are_deleted_by_repair(db, cli_run):
    root = db.parent / "d-cache"
    _, stray_rel = ImageCache(root).put(Image.new("RGB", (64, 64), (1, 2, 3)))  # a PNG no edit points at
    prefix = sorted(p for p in root.iterdir() if len(p.name) == 2)[0]
    (prefix / "tmpabc123.tmp").write_bytes(b"half a png")  # a killed run's temporary file
    (root / "vectors" / "0123abcd.faiss").write_bytes(b"x")  # the index of an embedder the store lacks
    with Store.open(db, read_only=True) as store:
        image_id = store._rows("SELECT image_id FROM images ORDER BY image_id LIMIT 1")[0]["image_id"]
        editor_id = store.info()["editors"][0]["editor_id"]

    def inversion(image: str, editor: str, seed: int, sidecar: bool = True) -> Path:
        key = inversion_key(image, editor, seed)
        path = root / "inversions" / key[:2] / f"{key}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"tensors")
        if sidecar:
            record = {"key": key, "image_id": image, "editor_id": editor, "seed": seed}
            path.with_suffix(".json").write_text(json.dumps(record))
        return path

    kept = inversion(image_id, editor_id, 3)  # of a stored image and editor: an interrupted run's, kept
    orphan = inversion("f" * 64, editor_id, 0)  # of an image the store does not have
    torn = inversion(image_id, editor_id, 4, sidecar=False)
    code, report = verify_cli(cli_run, db)
    by = checks(report)
    assert code == 1
    assert by["unreferenced files"]["count"] == 3
    assert by["unreferenced files"]["detail"] == ("2 image-cache files no edit points at; 1 vector files of no stored "
                                                  "embedder; --repair deletes them")
    assert set(by["unreferenced files"]["examples"]) == {stray_rel, f"{prefix.name}/tmpabc123.tmp", "vectors/0123abcd.faiss"}
    assert by["inversions"]["count"] == 3  # the orphan's two files and the torn one
    assert by["inversions"]["status"] == "problem"
    assert (root / stray_rel).exists() and orphan.exists()
    code, report = verify_cli(cli_run, db, "--repair")
    by = checks(report)
    assert code == 0 and report["healthy"] is True
    assert by["unreferenced files"]["status"] == by["inversions"]["status"] == "repaired"
    assert by["unreferenced files"]["repaired"] == by["inversions"]["repaired"] == 3
    assert not (root / stray_rel).exists() and not (prefix / "tmpabc123.tmp").exists()
    assert not orphan.exists() and not orphan.with_suffix(".json").exists() and not torn.exists()
    assert kept.exists() and kept.with_suffix(".json").exists()
    code, report = verify_cli(cli_run, db)
    assert code == 0 and checks(report)["inversions"]["detail"] == "1 cached inversions, all of stored images and editors"
    assert len(edit_files(db)) == sum(1 for d in root.iterdir() if len(d.name) == 2 for _ in d.iterdir())


@pytest.mark.parametrize("damage", ["truncated file", "row deleted from the database"])
def test_stale_vector_index_is_reported_then_rebuilt(damage, db, cli_run):
    with Store.open(db, read_only=True) as store:
        embedder_id = store.resolve_embedder()["embedder_id"]
        path = index_path(store, embedder_id)
    if damage == "truncated file":
        path.write_bytes(path.read_bytes()[:100])
        vectors_left = 164  # 4 images and 160 edits (node and text vectors stay in SQL)
    else:
        con = duckdb.connect(str(db))
        con.execute("DELETE FROM embeddings WHERE item_id = (SELECT min(item_id) FROM embeddings WHERE item_kind = 'edit')")
        con.close()
        vectors_left = 163
    damaged = path.read_bytes()
    code, report = verify_cli(cli_run, db)
    vec = checks(report)["vector index demo"]
    assert code == 1 and vec["status"] == "problem" and vec["count"] == 1
    assert vec["examples"] == [f"vectors/{embedder_id}.faiss"]
    assert path.read_bytes() == damaged  # reported, not rebuilt
    code, report = verify_cli(cli_run, db, "--repair")
    assert code == 0 and checks(report)["vector index demo"]["status"] == "repaired"
    with Store.open(db, read_only=True) as store:
        assert index_status(store, embedder_id) == "ok"
        assert len(VectorIndex.open(store, embedder_id)) == vectors_left
    code, report = verify_cli(cli_run, db)
    assert code == 0 and checks(report)["vector index demo"]["detail"] == f"{vectors_left} image and edit vectors; matches the database"


def test_drifting_effect_tables_are_rebuilt(db, cli_run):
    with Store.open(db, read_only=True) as store:
        truth = store.top_subtypes("old", k=5)
    con = duckdb.connect(str(db))
    n_nodes = con.execute("SELECT count(*) FROM effect_nodes").fetchone()[0]
    con.execute("UPDATE effect_nodes SET v_sum = v_sum + 1")
    con.close()
    before = snapshot(db.parent)
    with Store.open(db, read_only=True) as store:
        assert store.top_subtypes("old", k=5) != truth  # the damage shows in answers
    code, report = verify_cli(cli_run, db)
    eff = checks(report)["effect tables"]
    assert code == 1 and eff["status"] == "problem" and eff["count"] == n_nodes > 0
    assert eff["detail"] == f"0 effect_images rows and {n_nodes} effect_nodes rows and 0 effect_pairs rows and 0 side-effect count rows differ from a recomputation; --repair rebuilds them"
    assert snapshot(db.parent) == before  # a plain verify leaves the damaged file as it was
    code, report = verify_cli(cli_run, db, "--repair")
    assert code == 0 and checks(report)["effect tables"]["status"] == "repaired"
    assert checks(report)["effect tables"]["repaired"] == n_nodes
    with Store.open(db, read_only=True) as store:
        assert not any(store.verify_effects().values())
        assert store.top_subtypes("old", k=5) == truth
    assert verify_cli(cli_run, db)[0] == 0


def test_dangling_rows_are_reported_and_not_repaired(db, cli_run):
    con = duckdb.connect(str(db))
    classifier_key = con.execute("SELECT classifier_key FROM classifiers").fetchone()[0]
    con.execute("INSERT INTO item_scores VALUES (?, 999999999, [0.5, -0.5]::FLOAT[], [0.7, 0.3]::FLOAT[])", [classifier_key])
    con.execute("DELETE FROM images WHERE image_id = (SELECT min(image_id) FROM images)")
    con.close()
    code, report = verify_cli(cli_run, db)
    by = checks(report)
    assert code == 1
    # the image's 40 edits lost their image; its own score row and its edits' scores are fine
    # (they are edits), only the original's score and the planted row have no item
    assert by["edit rows"]["count"] == 40 and by["edit rows"]["detail"].startswith("40 of a missing image")
    assert by["score rows"]["count"] == 2 and "item_key 999999999" in by["score rows"]["examples"]
    assert by["edit links"]["count"] == 0 and by["edit links"]["status"] == "ok"
    code, report = verify_cli(cli_run, db, "--repair")
    assert code == 1
    assert checks(report)["score rows"]["status"] == "problem" and checks(report)["score rows"]["repaired"] == 0
    assert checks(report)["edit rows"]["count"] == 40


def test_bad_input_is_one_line_and_exit_1(tmp_path, cli_run):
    text = tmp_path / "notes.duckdb"
    text.write_text("not a database\n")
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    cases = {
        tmp_path / "absent.duckdb": "no database at",
        tmp_path: "is a directory",
        text: "cannot open database",
        other: "not a diffex store",
    }
    for path, message in cases.items():
        result = cli_run("verify", "--db", path)
        assert result.exit_code == 1, (path, result.output)
        assert len(result.output.strip().splitlines()) == 1 and message in result.output
    assert not (tmp_path / "absent.duckdb").exists()
    assert cli_run("verify").exit_code == 2  # no --db: a usage error
    assert cli_run("verify", "--db", text, "--bogus").exit_code == 2


def test_verify_waits_for_no_index_run(db):
    with index_run_lock(db):
        with pytest.raises(DiffexError, match="an index run is writing to .*; verify it when the run has finished"):
            verify_store(db)
    report = verify_store(db)
    assert report.healthy and report.check("effect tables").status == "ok"
