"""How fast is asking the store compared with recomputing the answer?

Builds the demo database (offline), then in one run measures:
  * a cold `top_subtypes` query through the library (new read-only sandboxed connection each time),
  * the same through the `diffex query` CLI (process start included),
  * a from-scratch index of the same data (what a tool without the store would redo),
and prints the ratios. Last line: `query_ms=<x> cli_ms=<y> recompute_s=<z> speedup=<recompute/query>`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffex import run_index, run_query
from diffex.indexing.demo_run import prepare_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="diffex-bench-"))
    try:
        inputs = prepare_inputs(work / "demo.duckdb", args.images)
        t0 = time.perf_counter()
        stats = run_index(work / "demo.duckdb", [str(p) for p in inputs.images], inputs.taxonomy, "demo:v1", "demo",
                          beam=0, samples=2)
        recompute = time.perf_counter() - t0
        sql = "SELECT * FROM top_subtypes('old', 10)"
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            rows = run_query(work / "demo.duckdb", sql).rows
            times.append(time.perf_counter() - t)
        query = statistics.median(times)
        cli = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "diffex.cli.main", "query", "--db", str(work / "demo.duckdb"), sql],
                           check=True, capture_output=True)
            cli.append(time.perf_counter() - t)
        print(f"store: {stats.images} images, {stats.edits_computed} edits, {len(rows)} rows answered")
        print(f"{'what':<40}{'seconds':>12}")
        print(f"{'index from scratch (edit + classify)':<40}{recompute:>12.3f}")
        print(f"{'top_subtypes via library (median)':<40}{query:>12.4f}")
        print(f"{'top_subtypes via CLI (median, w/ start)':<40}{statistics.median(cli):>12.3f}")
        print(f"query_ms={query * 1000:.1f} cli_ms={statistics.median(cli) * 1000:.0f} "
              f"recompute_s={recompute:.2f} speedup={recompute / query:.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
