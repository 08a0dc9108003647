"""Indexing on Ray (diffex/indexing/ray_pool.py): a local Ray of 2 CPU workers gives the very
rows a plain run gives, survives a worker killed mid-run, and stores an editor's failure on one
image as 'failed' edits and goes on. Skipped, with the reason, where Ray cannot start."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import duckdb
import pytest

from conftest import SMALL_TAXONOMY

from diffex.indexing.indexer import run_index

# Every table an index run writes, by ids (keys are per-file surrogates: a Ray run commits in
# the order results arrive, so its keys may differ; ids, rows and numbers may not).
TABLES = {
    "edits": "SELECT edit_id, image_id, editor_id, kind, prompts, direction, seed, output_sha256, cache_path, status "
             "FROM edits ORDER BY edit_id",
    "edit_nodes": "SELECT * FROM edit_nodes ORDER BY ALL",
    "scores": "SELECT * FROM scores ORDER BY ALL",
    "embeddings": "SELECT embedder_id, item_id, item_kind, vector FROM embeddings ORDER BY embedder_id, item_id",
    "edit_validity": "SELECT * FROM edit_validity ORDER BY ALL",
    "images": "SELECT image_id, uri, width, height FROM images ORDER BY image_id",
    "node_effects": "SELECT * FROM node_effects ORDER BY ALL",
}


def same_tables(got: dict[str, list], expected: dict[str, list], names=tuple(TABLES)) -> None:
    """Equal, but node_effects' running sums (moved by differences as commits arrive, so their
    last bits depend on the commit order: docs/store.md) to 1e-9 relative, as `diffex verify`."""
    for name in names:
        if name == "node_effects":
            assert len(got[name]) == len(expected[name])
            for a, b in zip(got[name], expected[name]):
                assert len(a) == len(b)
                for x, y in zip(a, b):
                    assert x == (pytest.approx(y, rel=1e-9, abs=1e-12) if isinstance(y, float) else y), (name, a, b)
        else:
            assert got[name] == expected[name], name


def tables(db: Path) -> dict[str, list]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {name: con.execute(sql).fetchall() for name, sql in TABLES.items()}
    finally:
        con.close()


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One local Ray for the module (2 CPUs), its session files inside the test's tmp."""
    try:
        import ray
    except ImportError:
        pytest.skip("Ray is not installed (pip install -e '.[test]' pulls the ray extra)")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp = tmp_path_factory.mktemp("ray")
    try:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp), log_to_driver=False,
                 logging_level="WARNING")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Ray cannot start on this machine: {type(exc).__name__}: {exc}")
    yield ray
    ray.shutdown()


KNOBS = dict(beam=0, samples=1, embedder="demo")
# the runs below skip the embedder (each actor would load CLIP: seconds); these tables do not
# depend on it
WITHOUT_EMBEDDER = ("edits", "edit_nodes", "scores", "images")


@pytest.fixture(scope="module")
def plain(tmp_path_factory, demo_images, brightness):
    """The reference: a plain single-process run."""
    db = tmp_path_factory.mktemp("plain") / "plain.duckdb"
    stats = run_index(db, [str(demo_images)], SMALL_TAXONOMY, brightness, "demo", **KNOBS)
    return db, stats, tables(db)


def test_ray_run_stores_the_same_rows_as_a_plain_run(ray_local, plain, tmp_path, demo_images, brightness):
    plain_db, plain_stats, expected = plain
    db = tmp_path / "ray.duckdb"
    stats = run_index(db, [str(demo_images)], SMALL_TAXONOMY, brightness, "demo", ray="local", ray_actors=2, **KNOBS)
    assert (stats.edits_computed, stats.scores_computed, stats.embeddings_computed) == \
        (plain_stats.edits_computed, plain_stats.scores_computed, plain_stats.embeddings_computed)
    assert stats.edits_computed == 6 * (1 + 13)  # baselines + every node of the small taxonomy, one seed
    got = tables(db)
    same_tables(got, expected)
    # the workers saw the store's cache folder (same machine): files there, none twice
    assert len(list((tmp_path / "ray-cache").rglob("*.png"))) == len({r[7] for r in got["edits"]})
    assert not list((tmp_path / "ray-cache").glob(".diffex-ray-*"))  # the marker is cleaned up



def _worker_pids(title: str) -> list[int]:
    """Processes whose title (Ray sets `ray::Class.method`) starts with `title`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(title.encode()):
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def test_a_worker_killed_mid_run_changes_nothing(ray_local, plain, tmp_path, demo_images, brightness):
    """SIGKILL an actor's process while it edits: Ray restarts it and re-runs the lost group;
    the store ends identical to the plain run (pixels sent as bytes here, not through the cache)."""
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("needs /proc to find the Ray worker's process")
    _, _, expected = plain
    killed: list[int] = []

    def kill_one_editing_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            pids = _worker_pids("ray::DiffexWorker.edit")
            if pids:
                time.sleep(0.3)  # mid-group: some of its edits made, none returned
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_editing_worker, daemon=True)
    killer.start()
    db = tmp_path / "killed.duckdb"
    stats = run_index(db, [str(demo_images)], SMALL_TAXONOMY, brightness, "demo:?delay_ms=60", ray="local",
                      ray_actors=2, ray_shared_cache=False, beam=0, samples=1)
    killer.join(timeout=5)
    assert killed, "no Ray worker was seen editing, so none was killed"
    assert stats.edits_failed == 0
    same_tables(tables(db), expected, WITHOUT_EMBEDDER)


def test_an_editor_failing_on_one_image_fails_its_edits_and_the_run_goes_on(ray_local, plain, tmp_path, demo_images,
                                                                              brightness):
    _, _, expected = plain
    bad = sorted(r[1] for r in expected["edits"])[0]  # one image id
    db = tmp_path / "failing.duckdb"
    with pytest.warns(Warning, match=f"the editor failed on image {bad[:12]}: RuntimeError: demo editor asked to fail"):
        stats = run_index(db, [str(demo_images)], SMALL_TAXONOMY, brightness, f"demo:?fail_image={bad[:16]}",
                          ray="local", ray_actors=2, beam=0, samples=1)
    assert stats.edits_failed == 14  # its baseline and 13 node edits, at two levels
    assert {f["image_id"] for f in stats.failures} == {bad}
    got = tables(db)
    failed = [r for r in got["edits"] if r[9] == "failed"]
    assert len(failed) == 14 and {r[1] for r in failed} == {bad} and all(r[7] is None and r[8] is None for r in failed)
    assert [r for r in got["edits"] if r[1] != bad] == [r for r in expected["edits"] if r[1] != bad]
    assert not [r for r in got["scores"] if r[1] in {f[0] for f in failed}]  # no pixels: nothing scored
    # the same command without the fault (here in one process) retries exactly the failed edits
    again = run_index(db, [str(demo_images)], SMALL_TAXONOMY, brightness, "demo", beam=0, samples=1)
    assert (again.edits_computed, again.edits_failed) == (14, 0)
    same_tables(tables(db), expected, WITHOUT_EMBEDDER)


def test_ray_options_are_checked_before_any_work(tmp_path, demo_images, brightness, cli_run, monkeypatch):
    from diffex.errors import DiffexError, OptionError
    import diffex.indexing.ray_pool as ray_pool

    with pytest.raises(OptionError, match="ray_actors must be at least 1"):
        run_index(tmp_path / "x.duckdb", [str(demo_images)], {"categories": {"a": ["b"]}}, brightness, ray="local",
                  ray_actors=0)
    with pytest.raises(OptionError, match="ray_actors needs ray"):
        run_index(tmp_path / "x.duckdb", [str(demo_images)], {"categories": {"a": ["b"]}}, brightness, ray_actors=2)
    monkeypatch.setattr(ray_pool, "ray_available", lambda: False)
    with pytest.raises(DiffexError, match=r"pip install 'diffex\[ray\]'"):
        run_index(tmp_path / "x.duckdb", [str(demo_images)], {"categories": {"a": ["b"]}}, brightness, ray="local")
    result = cli_run("index", "--db", str(tmp_path / "x.duckdb"), "--images", str(demo_images), "--taxonomy",
                     str(Path(__file__).parents[1] / "diffex" / "demo" / "taxonomy.json"), "--classifier", brightness,
                     "--ray")
    assert result.exit_code == 1 and "pip install 'diffex[ray]'" in result.output, result.output
    assert not (tmp_path / "x.duckdb").exists()
