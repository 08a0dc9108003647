"""Every figure the README quotes about the demo, computed now, so the README is updated
from this output instead of by hand.

Runs in a temporary folder (data/ is left alone): `diffex demo` as a whole process (timed,
its table printed as the README shows it), `diffex demo --classifier demo:v2` (what a
retrained classifier costs), then `diffex compare` through the library (paired sign-flip
permutation test, `p_permutation_bh`) next to the SQL macro `compare_classifiers` (paired
t-test, its `p_t_test_bh`) for the nodes either flags. Last line: key=value pairs.

    python scripts/readme_numbers.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _diffex(*args: str) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "diffex.cli.main", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"diffex {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout, seconds


def main() -> None:
    from diffex import run_query
    from diffex.analysis.compare import compare_classifiers
    from diffex.demo.classifier import ground_truth

    truth = ground_truth()
    with tempfile.TemporaryDirectory(prefix="diffex-readme-") as work:
        db = str(Path(work) / "demo.duckdb")
        table, demo_s = _diffex("demo", "--db", db)
        print(f"## diffex demo (whole process, first run: {demo_s:.1f} s)\n")
        print(table.rstrip())
        v1 = json.loads(_diffex("demo", "--db", db, "--json")[0])  # cached: the ranking as data
        v2_json, v2_s = _diffex("demo", "--db", db, "--classifier", "demo:v2", "--json")
        v2 = json.loads(v2_json)
        s = v2["stats"]
        print(f"\n## diffex demo --classifier demo:v2 ({v2_s:.1f} s)\n")
        print(f"edits computed {s['edits_computed']}, edits reused {s['edits_reused']}, "
              f"scores computed {s['scores_computed']}; top: {', '.join(v2['top'][:3])} (planted: {', '.join(v2['planted'])})")

        lib = compare_classifiers(db, "demo:v1", "demo:v2", "old")
        sql = {r["node"]: r for r in run_query(
            db, "SELECT * FROM compare_classifiers('demo:v1', 'demo:v2', 'old')").dicts()}
        flagged = [r for r in lib.rows if r.significant or sql[r.node]["significant"]]
        print("\n## v1 vs v2, class old: the library's permutation test and the SQL macro's t-test\n")
        print(f"{'node':10s} {'diff':>8s} {'ci_low':>8s} {'ci_high':>8s} {'p_permutation_bh':>17s} {'sql p_t_test_bh':>22s}")
        for r in flagged:
            print(f"{r.node:10s} {r.diff:8.4f} {r.ci_low:8.4f} {r.ci_high:8.4f} {r.p_permutation_bh:17.4f} "
                  f"{sql[r.node]['p_t_test_bh']:22.4f}")
        slots = (truth["v1"]["slot"], truth["v2"]["slot"])
        unrelated = [r.node for r in lib.changed if not any(r.path == x or r.path.startswith(x + " > ") for x in slots)]
        print(f"flagged by the permutation test: {', '.join(r.node for r in lib.changed)}; "
              f"by the t-test: {', '.join(n for n, r in sql.items() if r['significant'])}; "
              f"unrelated nodes flagged: {len(unrelated)}")
        print(f"({lib.method})")

    rank_v1 = v1["top"].index(v1["planted"][0]) + 1 if v1["planted"][0] in v1["top"] else 0
    rank_v2 = v2["top"].index(v2["planted"][0]) + 1 if v2["planted"][0] in v2["top"] else 0
    by_node = {r.node: r for r in lib.rows}
    p_perm = {n: by_node[n].p_permutation_bh for n in (truth["v1"]["planted"][0], truth["v2"]["planted"][0])}
    print("\n" + " ".join([
        f"demo_s={demo_s:.1f}", f"rank_v1={rank_v1}", f"rank_v2={rank_v2}",
        f"v2_edits_computed={s['edits_computed']}", f"v2_scores_computed={s['scores_computed']}",
        *(f"p_permutation_bh_{n.replace(' ', '_')}={p:.3f}" for n, p in p_perm.items()),
        *(f"p_t_test_bh_{n.replace(' ', '_')}={sql[n]['p_t_test_bh']:.3f}" for n in p_perm),
        f"unrelated_flagged={len(unrelated)}",
    ]))


if __name__ == "__main__":
    main()
