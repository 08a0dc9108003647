"""One store, an index run writing it and other processes reading it (docs/store.md): readers
are answered between the writer's commits and never see half of one; a second index run
refuses; a run killed with SIGKILL at any point leaves derived effects equal to a
recomputation, and the same command resumes to the answer of an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffex import run_index, run_query
from diffex.indexing.demo_run import prepare_inputs
from diffex.store.core import Store


def _index_cmd(db: Path, images: Path, taxonomy: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "diffex.cli.main", "index", "--db", str(db), "--images", str(images),
            "--taxonomy", str(taxonomy), "--classifier", "demo:v1", "--editor", "demo", "--beam", "0",
            "--samples", "2", "--json", *extra]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    made = prepare_inputs(tmp_path_factory.mktemp("demo-inputs") / "demo.duckdb", 8)
    return made.images_dir, made.taxonomy


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_readers_are_answered_while_an_index_run_writes(tmp_path, inputs):
    images, taxonomy = inputs
    db = tmp_path / "shared.duckdb"
    writer = subprocess.Popen(_index_cmd(db, images, taxonomy, "--embedder", "demo"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(db, writer)
        # a second index run on the same store refuses at once, with the reason
        second = subprocess.run(_index_cmd(db, images, taxonomy), capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "another `diffex index` is writing to" in second.stderr
        assert "Traceback" not in second.stderr
        answered, counts = 0, []
        while writer.poll() is None:
            edits = run_query(db, "SELECT count(*) FROM edits").rows[0][0]
            # committed together: an edit with its node links, derived rows with their sums
            orphans = run_query(db, "SELECT count(*) FROM edits e WHERE kind <> 'baseline' AND NOT EXISTS "
                                    "(SELECT 1 FROM edit_links l WHERE l.edit_key = e.edit_key)").rows[0][0]
            drift = run_query(db, "SELECT coalesce((SELECT sum(a_images) FROM effect_nodes), 0) "
                                  "- (SELECT count(*) FROM effect_images)").rows[0][0]
            with Store.open(db, read_only=True) as store:  # the Python API reads too
                store.info()
            assert orphans == 0 and drift == 0
            counts.append(edits)
            answered += writer.poll() is None
        out, err = writer.communicate()
        assert writer.returncode == 0, err
    finally:
        if writer.poll() is None:
            writer.kill()
    assert answered >= 3, answered  # questions answered while the run was writing
    assert counts == sorted(counts) and counts[-1] > counts[0]  # partial results, growing
    with Store.open(db, read_only=True) as store:
        assert not any(store.verify_effects().values())


def test_sigkill_anywhere_keeps_effects_exact_and_the_run_resumes(tmp_path, inputs):
    images, taxonomy = inputs
    db = tmp_path / "killed.duckdb"
    rng = random.Random(20261130)
    for attempt in range(2):
        proc = subprocess.Popen(_index_cmd(db, images, taxonomy), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        _wait_for(db, proc)
        time.sleep(rng.uniform(0.2, 2.5) * (attempt + 1))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with Store.open(db) as store:  # recovers DuckDB's WAL; our locks died with the process
            assert not any(store.verify_effects().values())
            partial = store.info()["edits"]
    resumed = subprocess.run(_index_cmd(db, images, taxonomy), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    clean = tmp_path / "clean.duckdb"
    run_index(clean, [str(images)], taxonomy, "demo:v1", "demo", beam=0, samples=2)
    sql = "SELECT node_id, direction, class_name, mean_delta_prob, ci_low, ci_high, n_images, n_edits FROM node_effects ORDER BY ALL"
    got, want = run_query(db, sql).rows, run_query(clean, sql).rows
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):  # sums accumulated in another order: equal up to rounding
        assert a[:3] == b[:3] and a[6:] == b[6:] and a[3:6] == pytest.approx(b[3:6], abs=1e-12)
    with Store.open(db, read_only=True) as store:
        assert not any(store.verify_effects().values())
        assert partial <= store.info()["edits"]
