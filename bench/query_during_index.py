"""Readers while a writer writes: index the demo in one process while this one asks questions
in a loop (issue 10: 100 queries during one index run, 0 failures, p95 under 1 s).

    python bench/query_during_index.py [--images 32] [--queries 100] [--cli]

--cli runs every query as a whole `diffex query` process instead of the library call. Every
answer must also be consistent: edits never without their nodes, derived sums matching their
rows (a reader never sees half of a commit). Last line:
    queries=<n> failed=<f> p95_ms=<x>
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from diffex import run_query
from diffex.indexing.demo_run import prepare_inputs

QUESTIONS = [
    "SELECT count(*) AS edits FROM edits",
    "SELECT * FROM top_subtypes('old', 5)",
    "SELECT count(*) FROM effect_tree('old')",
    # invariants: an edit is committed with its node links, derived sums with their rows
    "SELECT count(*) FROM edits e WHERE kind <> 'baseline' AND NOT EXISTS (SELECT 1 FROM edit_links l WHERE l.edit_key = e.edit_key)",
    "SELECT coalesce((SELECT sum(a_images) FROM effect_nodes), 0) - (SELECT count(*) FROM effect_images)",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--queries", type=int, default=100, help="at least this many (more while the index runs)")
    ap.add_argument("--cli", action="store_true", help="each query as a whole `diffex query` process")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "demo.duckdb"
        made = prepare_inputs(db, args.images)
        images, taxonomy = made.images_dir, made.taxonomy
        cmd = [sys.executable, "-m", "diffex.cli.main", "index", "--db", str(db), "--images", str(images),
               "--taxonomy", str(taxonomy), "--classifier", "demo:v1", "--editor", "demo", "--beam", "0",
               "--samples", "2", "--embedder", "demo", "--json"]
        t0 = time.perf_counter()
        writer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while not db.exists() and writer.poll() is None:
            time.sleep(0.05)
        times, failures, during, inconsistent, seen = [], [], 0, 0, []
        i = 0
        while writer.poll() is None or len(times) + len(failures) < args.queries:
            sql = QUESTIONS[i % len(QUESTIONS)]
            i += 1
            start = time.perf_counter()
            try:
                if args.cli:
                    out = subprocess.run([sys.executable, "-m", "diffex.cli.main", "query", "--db", str(db), sql,
                                          "--format", "csv"], capture_output=True, text=True)
                    if out.returncode:
                        raise RuntimeError(out.stderr.strip())
                    rows = [out.stdout.strip().splitlines()[1:]]
                    value = rows[0][0] if rows[0] else None
                else:
                    result = run_query(db, sql)
                    value = result.rows[0][0] if result.rows else None
            except Exception as exc:  # noqa: BLE001 (a benchmark counts every failure)
                failures.append(str(exc).splitlines()[0])
                continue
            times.append(time.perf_counter() - start)
            during += writer.poll() is None
            if sql.startswith("SELECT count(*) AS edits"):
                seen.append(int(value))
            elif "NOT EXISTS" in sql or "sum(a_images)" in sql:
                inconsistent += int(float(value)) != 0
        _, err = writer.communicate()
        if writer.returncode:
            sys.exit(f"index run failed: {err.strip().splitlines()[-1] if err.strip() else writer.returncode}")
        wall = time.perf_counter() - t0

    p95 = float(np.percentile(times, 95) * 1000) if times else float("nan")
    print(f"index run {wall:.1f} s; {len(times)} answers ({during} while it ran), {len(failures)} failures, "
          f"{inconsistent} inconsistent snapshots; edit counts seen grew {seen[:1]} -> {seen[-1:]}, "
          f"never shrank: {all(a <= b for a, b in zip(seen, seen[1:]))}")
    print(f"p50 {np.percentile(times, 50) * 1000:.0f} ms, p95 {p95:.0f} ms, max {max(times) * 1000:.0f} ms"
          + (f"; first failure: {failures[0]}" if failures else ""))
    print(f"queries={len(times) + len(failures)} failed={len(failures) + inconsistent} p95_ms={p95:.0f}")


if __name__ == "__main__":
    main()
