"""Indexing on Ray (issue 15): edit throughput with 1, 2 and 4 actors against a plain run, and
the ceiling of the driver (edits per second it can commit), which bounds how many GPUs one
driver can feed (docs/scale-out.md).

    python bench/ray_scaling.py [--images 8] [--delay-ms 200] [--commit-images 20]

The editor is the demo editor with an artificial cost (`demo:?delay_ms=N`, a sleep per edit
standing for a diffusion edit), so this 2-core machine is not what limits the actors. What is
timed is the edit stage of the run (ensure_edits: work sent out, results committed), side by
side in one process, plain first; actor start-up is reported apart. On a busy shared machine
the figures are noisy: compare the ratios, not the seconds.

The driver's ceiling runs the driver's real commit path (ensure_edits then ensure_scores) with
an executor whose results are ready at once: 400 kB of PNG per edit (a 512 px Stable Diffusion
output) written to the cache, the edit rows, node links and scores committed group by group.
Last line:
    speedup_2=<x> speedup_4=<y> driver_max_edits_per_s=<z>
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import diffex.indexing.indexer as indexer
from diffex.demo.world import write_dataset
from diffex.editing.stage import EditRequest, EditResult, ensure_edits
from diffex.hashing import sha256_bytes
from diffex.indexing.indexer import run_index
from diffex.scoring.stage import ensure_scores
from diffex.store.core import Store
from diffex.types import Concept

TAXONOMY = {"domain": "cartoon faces", "categories": {
    "facial hair": ["goatee", "full beard"], "headwear": ["top hat", "cap"], "eyewear": ["sunglasses", "round glasses"]}}


def timed_edit_stage():
    """Wrap the indexer's ensure_edits to add up the seconds spent in it (bench only)."""
    spent = {"s": 0.0, "edits": 0}
    real = indexer.ensure_edits

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        counts = real(*args, **kwargs)
        spent["s"] += time.perf_counter() - t0
        spent["edits"] += counts.computed
        return counts

    indexer.ensure_edits = wrapper
    return spent, lambda: setattr(indexer, "ensure_edits", real)


def edit_rate(work: Path, images: Path, delay_ms: int, actors: int | None) -> tuple[float, float, int]:
    """(edits/s of the edit stage, seconds of the whole run, edits) for one fresh store."""
    db = work / f"run-{actors or 'plain'}.duckdb"
    spent, restore = timed_edit_stage()
    try:
        t0 = time.perf_counter()
        kw = dict(ray="local", ray_actors=actors) if actors else {}
        stats = run_index(db, [str(images)], TAXONOMY, "demo:v1", f"demo:?delay_ms={delay_ms}", beam=0, samples=1, **kw)
        total = time.perf_counter() - t0
    finally:
        restore()
    assert stats.edits_computed == spent["edits"] and stats.edits_failed == 0
    return spent["edits"] / spent["s"], total, stats.edits_computed


class Ready:
    """An executor whose results are already there: what the driver does with them is timed."""

    def __init__(self, png: bytes, n_classes: int):
        self.png, self.n_classes = png, n_classes

    def edit_groups(self, editor, images, groups, missing, cache_root, progress=None):
        for group in groups:
            out = [EditResult(req, "ok", 2.0, png=self.png, digest=sha256_bytes(f"{req}".encode()))
                   for i in group for req in missing[i]]
            yield group, out

    def map_chunks(self, kind, chunks, progress=None, desc=""):
        for chunk in chunks:
            logits = np.random.default_rng(len(chunk)).normal(size=(len(chunk), self.n_classes))
            probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            yield chunk, (logits, probs)


def driver_ceiling(work: Path, images: Path, commit_images: int, edits_per_image: int) -> tuple[float, int]:
    """Edits per second the driver stores (pixels, rows, links, scores), from ready results."""
    db = work / "ceiling.duckdb"
    write_dataset(work / "ceiling-images", commit_images, start_seed=900)
    run_index(db, [str(work / "ceiling-images")], TAXONOMY, "demo:v1", "demo", beam=0, samples=1, depth=1)
    from diffex.editing import load_editor
    from diffex.scoring import load_classifier

    editor, clf = load_editor("demo"), load_classifier("demo:v1")
    store = Store.open(db)
    try:
        image_ids = [r[0] for r in store.con.execute("SELECT image_id FROM images ORDER BY image_id").fetchall()]
        node = store.con.execute("SELECT node_id FROM nodes ORDER BY path LIMIT 1").fetchone()[0]
        reqs = [EditRequest(i, (Concept(f"bench concept {k % 40}", "add"),), seed=k // 40, node_ids=(node,))
                for i in image_ids for k in range(edits_per_image)]
        ready = Ready(os.urandom(400_000), len(clf.class_names))
        t0 = time.perf_counter()
        counts = ensure_edits(store, editor, {}, reqs, None, ready)
        rows = store.edits_by_id([r.edit_id(editor.editor_id) for r in reqs])
        items = [(eid, store.cache.loader(row["cache_path"])) for eid, row in rows.items()]
        ensure_scores(store, clf, items, None, ready)
        seconds = time.perf_counter() - t0
    finally:
        store.close()
    return counts.computed / seconds, counts.computed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--delay-ms", type=int, default=200, help="artificial cost of one edit")
    ap.add_argument("--commit-images", type=int, default=20, help="images in the driver-ceiling run")
    ap.add_argument("--edits-per-image", type=int, default=80, help="edits per image group in the ceiling run")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    with tempfile.TemporaryDirectory(prefix="diffex-ray-bench-") as tmp:
        work = Path(tmp)
        images = work / "images"
        write_dataset(images, args.images, start_seed=700)
        # one Ray for every pool of the bench (4 CPU slots on any machine: the edits sleep)
        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING", _temp_dir=str(work / "ray"))
        try:
            rates = {}
            for actors in (None, 1, 2, 4):
                rate, total, n = edit_rate(work, images, args.delay_ms, actors)
                rates[actors] = rate
                print(f"{'plain' if actors is None else f'{actors} actor(s)':>10}: {n} edits, edit stage {rate:6.2f} edits/s "
                      f"(ideal {1000 / args.delay_ms * (actors or 1):.1f}), whole run {total:.1f} s", file=sys.stderr)
        finally:
            ray.shutdown()
        ceiling, n = driver_ceiling(work, images, args.commit_images, args.edits_per_image)
        print(f"driver: {n} edits committed (400 kB PNG each, rows, links, scores) at {ceiling:.0f} edits/s",
              file=sys.stderr)
    for actors in (1, 2, 4):
        print(f"ratio_{actors}={rates[actors] / rates[None]:.2f}", file=sys.stderr)
    print(f"speedup_2={rates[2] / rates[None]:.2f} speedup_4={rates[4] / rates[None]:.2f} "
          f"driver_max_edits_per_s={ceiling:.0f}")


if __name__ == "__main__":
    main()
