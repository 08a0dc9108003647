"""The README's side-effect figures (issue 13): over several entanglement rates, how often the
confound is named and how close the clean and adjusted effects come to the exact editor's.

    python scripts/entanglement_figures.py [--images 20] [--sets 3] [--rates 0.25,0.5,1.0]

Two planted cases, each on `--sets` disjoint sets of young demo faces with neither planted cue
(as tests/test_confounds.py; all runs in a temporary folder, data/ is left alone), with the
demo embedder:
  v2: `demo?entangle=beanie:top hat:P` - a beanie edit also draws a top hat (v2 calls top hats old);
  v1: `demo?spill=stubble:goatee:P`   - an edit that lands on stubble also draws a goatee (v1's cue).
For each image set the exact editor (`demo`) is indexed too; the innocent node's effect there
(beanie, stubble) is the truth the clean and adjusted effects should recover. A run "names"
the confound when the innocent node's row has confounded_with = the planted concept. The
table prints, per case and rate, the share of runs naming it and the mean absolute gaps
|raw - exact|, |clean - exact|, |adjusted - exact|; the last line gives the totals:
named=<share of misbehaving runs that named it> clean_gap_max=<..> adjusted_gap_max=<..> raw_gap_max=<..>
exact_false_named=<node rows the exact editor's runs called confounded>/<node rows>
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffex.demo.world import sample_spec, save_png  # noqa: E402
from diffex.indexing.indexer import run_index  # noqa: E402
from diffex.store.core import Store  # noqa: E402

CASES = {  # classifier, innocent node, planted concept, editor option
    "v2": ("demo:v2", "beanie", "top hat", "entangle=beanie:top hat:{p}"),
    "v1": ("demo:v1", "stubble", "goatee", "spill=stubble:goatee:{p}"),
}
TAXONOMY = Path(__file__).resolve().parents[1] / "diffex" / "demo" / "taxonomy.json"


def young_faces(folder: Path, n: int, start: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    out, seed = [], start
    while len(out) < n:
        spec = sample_spec(seed)
        if spec.age == "young" and spec.attrs["headwear"] != "top hat" and spec.attrs["facial hair"] != "goatee":
            out.append(str(save_png(spec, folder / f"face_{seed}.png")))
        seed += 1
    return out


def row_for(db: Path, images: list[str], classifier: str, editor: str, node: str) -> dict:
    stats = run_index(db, images, TAXONOMY, classifier, editor, beam=0, samples=2, classes=["old"], embedder="demo")
    with Store.open(db, read_only=True) as store:
        rows = store.top_subtypes("old", k=100, classifier=stats.classifier_id)
    named = [r["node"] for r in rows if r["confounded_with"]]
    return next(r for r in rows if r["node"] == node) | {"rank1": rows[0]["node"], "named": named, "nodes": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--sets", type=int, default=3)
    ap.add_argument("--rates", default="0.25,0.5,1.0")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    t0 = time.time()
    results = []  # (case, rate, named, raw gap, clean gap, adjusted gap, planted ranked first)
    false_named, rows_exact = [], 0  # nodes the exact editor's runs call confounded (should be none)
    with tempfile.TemporaryDirectory(prefix="diffex-entangle-") as work:
        for case, (classifier, node, planted, option) in CASES.items():
            for s in range(args.sets):
                images = young_faces(Path(work) / f"images-{s}", args.images, start=200_000 + 10_000 * s)
                exact = row_for(Path(work) / f"{case}-{s}-exact.duckdb", images, classifier, "demo", node)
                false_named += exact["named"]
                rows_exact += exact["nodes"]
                for rate in rates:
                    editor = "demo?" + option.format(p=rate)
                    r = row_for(Path(work) / f"{case}-{s}-{rate}.duckdb", images, classifier, editor, node)
                    gap = lambda v: abs(v - exact["mean_delta_prob"]) if v is not None else None  # noqa: E731
                    results.append((case, rate, r["confounded_with"] == planted, gap(r["mean_delta_prob"]),
                                    gap(r["clean_delta_prob"]), gap(r["adjusted_delta_prob"]), r["rank1"] == planted))
                    print(f"{case} set {s} rate {rate}: raw {r['mean_delta_prob']:+.3f} clean {r['clean_delta_prob']} "
                          f"adjusted {r['adjusted_delta_prob']} exact {exact['mean_delta_prob']:+.3f} "
                          f"confound {r['confounded_with']} ({r['confound_share']}) rank1 {r['rank1']}", flush=True)
    print("\n| case | rate | confound named | mean abs gap to the exact editor: raw / clean / adjusted | planted concept ranked first |")
    print("|---|---|---|---|---|")
    for case in CASES:
        for rate in rates:
            got = [x for x in results if x[0] == case and x[1] == rate]
            print(f"| {case} `{CASES[case][3].format(p=rate)}` | {rate} | {sum(x[2] for x in got)}/{len(got)} "
                  f"| {fmt(mean(x[3] for x in got))} / {fmt(mean(x[4] for x in got))} / {fmt(mean(x[5] for x in got))} "
                  f"| {sum(x[6] for x in got)}/{len(got)} |")
    print(f"({args.images} images x {args.sets} sets x 2 samples, {time.time() - t0:.0f} s; clean n/a: every edit had the side effect)")
    print(f"named={sum(x[2] for x in results) / len(results):.2f} clean_gap_max={fmt(top(x[4] for x in results))} "
          f"adjusted_gap_max={fmt(top(x[5] for x in results))} raw_gap_max={fmt(top(x[3] for x in results))} "
          f"exact_false_named={len(false_named)}/{rows_exact}")


def mean(values) -> float | None:
    """Mean of the values that exist (None: a clean effect with no clean edit)."""
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got else None


def top(values) -> float | None:
    got = [v for v in values if v is not None]
    return max(got) if got else None


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
