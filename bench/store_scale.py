"""The store at a real audit's size (issue 10): fill a store through the write path indexing
uses (Store.add_edits / add_scores / add_validity, in the indexer's batch sizes, so the
derived effect tables are maintained exactly as in real use), then time the questions.

    python bench/store_scale.py [--rows 10M] [--nodes 260] [--classes 5] [--reps 15] [--keep DIR]

Realistic distributions: a few nodes with strong effects, most near zero, per-image noise;
two classifiers (the second a "retrained" one that moves some nodes), both directions, two
seeds, 10% of edits judged invalid by an embedder. Times are p50/p95 over --reps runs of
each question: in the library (`diffex.run_query`, which opens the file each time, as a
notebook or CI step would) and as a whole `diffex query` process. Last line:
    scores=<n> top_subtypes_p50_ms=<x> image_explanation_p50_ms=<y> bytes_per_score=<z> write_rows_per_s=<w>
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from diffex import run_query
from diffex.scoring.stage import COMMIT_ITEMS
from diffex.hashing import edit_id_for
from diffex.store.core import Store
from diffex.taxonomy.tree import load_taxonomy
from diffex.types import EditRecord, ImageRecord

SEEDS, DIRECTIONS, CLASSIFIERS = 2, ("add", "remove"), 2
IMAGES_PER_COMMIT = 1  # the indexer commits each image group's edits together (editor batch 1)
BLOCK = 8  # images whose scores and verdicts are written together, like one level of the beam search


def parse_rows(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1], 1)
    return int(float(text.rstrip("KMG")) * scale)


def taxonomy(n_nodes: int):
    """Groups of subgroups of leaves, about n_nodes in all."""
    groups = max(2, round(n_nodes / 26))
    return load_taxonomy({"domain": "scenes", "categories": {
        f"group {g}": {f"kind {g}.{s}": [f"leaf {g}.{s}.{leaf}" for leaf in range(4)] for s in range(5)}
        for g in range(groups)}})


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fill(db: Path, n_images: int, tax, n_classes: int, seed: int = 0) -> dict:
    rng = np.random.RandomState(seed)
    nodes = [n for n in tax.nodes]
    strong = rng.rand(len(nodes)) < 0.04
    effect = rng.normal(0, 0.05, size=(len(nodes), n_classes)) + strong[:, None] * rng.normal(0, 1.5, size=(len(nodes), n_classes))
    retrained = effect.copy()
    retrained[rng.rand(len(nodes)) < 0.05] *= -1  # the second classifier relies on other things
    store = Store.open(db, shared=True)  # as run_index opens it
    store.add_taxonomy(tax)
    editor = SimpleNamespace(editor_id="bench-editor", name="bench", spec="bench", config={})
    store.add_editor(editor)
    classifiers = [SimpleNamespace(classifier_id=f"bench-clf-{v}", name=f"bench v{v}", spec=f"bench:v{v}",
                                   class_names=[f"class {c}" for c in range(n_classes)]) for v in (1, 2)]
    for c in classifiers:
        store.add_classifier(c)
    store.add_embedder(SimpleNamespace(embedder_id="bench-embedder", name="bench", spec="bench", dim=2, metric="cosine"))
    images = [ImageRecord(f"{i:064x}", f"/data/photo_{i:06d}.jpg", 512, 512) for i in range(n_images)]
    store.add_images(images)
    t_edits = t_scores = t_valid = 0.0
    n_edits = n_scores = 0
    for start in range(0, n_images, BLOCK):
        block = images[start : start + BLOCK]
        base_logits = rng.normal(0, 1, size=(len(block), n_classes))
        records, logits = [], {c.classifier_id: [] for c in classifiers}
        for b, img in enumerate(block):
            group = [EditRecord(edit_id_for(img.image_id, editor.editor_id, (), "none", 0), img.image_id,
                                editor.editor_id, "baseline", (), "none", 0, "0" * 64, "00/0.png", "ok", 0.0, ())]
            for c, clf in enumerate(classifiers):
                logits[clf.classifier_id].append(base_logits[b])
            for k, node in enumerate(nodes):
                for d, direction in enumerate(DIRECTIONS):
                    for s in range(SEEDS):
                        group.append(EditRecord(edit_id_for(img.image_id, editor.editor_id, (node.prompt,), direction, s),
                                                img.image_id, editor.editor_id, "single", (node.prompt,), direction, s,
                                                "0" * 64, "00/0.png", "ok", 0.0, (node.node_id,)))
                        noise = rng.normal(0, 0.3, size=n_classes)
                        sign = 1 if d == 0 else -0.5
                        for clf, eff in zip(classifiers, (effect, retrained)):
                            logits[clf.classifier_id].append(base_logits[b] + sign * eff[k] + noise)
            t0 = time.perf_counter()
            store.add_edits(group, known=())  # ensure_edits has just looked them up: all new
            t_edits += time.perf_counter() - t0
            n_edits += len(group)
            records.extend(group)
        # originals are scored too (the indexer scores them first)
        ids = [img.image_id for img in block]
        t0 = time.perf_counter()
        keys = store.item_keys(ids + [r.edit_id for r in records])
        for clf in classifiers:
            orig = base_logits
            store.add_scores(clf.classifier_id, ids, orig, softmax(orig), item_keys=keys)
            lg = np.asarray(logits[clf.classifier_id])
            items = [r.edit_id for r in records]
            for c0 in range(0, len(items), COMMIT_ITEMS):  # as ensure_scores commits
                store.add_scores(clf.classifier_id, items[c0 : c0 + COMMIT_ITEMS], lg[c0 : c0 + COMMIT_ITEMS],
                                 softmax(lg[c0 : c0 + COMMIT_ITEMS]), item_keys=keys)
            n_scores += (len(ids) + len(items)) * n_classes
        t_scores += time.perf_counter() - t0
        singles = [r.edit_id for r in records if r.kind == "single"]
        invalid = rng.rand(len(singles)) < 0.1
        t0 = time.perf_counter()
        # ensure_validity stores one call's verdicts together
        store.add_validity("bench-embedder", [(e, 0.1, 0.9, 0.2, not bad) for e, bad in zip(singles, invalid)])
        t_valid += time.perf_counter() - t0
        done = start + len(block)
        if done % max(1, n_images // 10) < len(block):
            print(f"  {done}/{n_images} images, {n_scores / 1e6:.1f}M score rows, "
                  f"{n_scores / max(t_scores, 1e-9):,.0f} score rows/s, {n_edits / max(t_edits, 1e-9):,.0f} edits/s",
                  file=sys.stderr, flush=True)
    for clf in classifiers:
        store.mark_indexed(clf.classifier_id)
    store.close()
    return {"edits": n_edits, "scores": n_scores, "t_edits": t_edits, "t_scores": t_scores, "t_valid": t_valid}


def timed(fn, reps: int) -> tuple[float, float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 95) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="10M", help="score rows to fill (10M default; 100M optional)")
    ap.add_argument("--nodes", type=int, default=260)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--cli-reps", type=int, default=5)
    ap.add_argument("--keep", help="fill this db (or reuse it if it exists) instead of a temporary one")
    args = ap.parse_args()

    tax = taxonomy(args.nodes)
    per_image = (len(tax.nodes) * len(DIRECTIONS) * SEEDS + 2) * args.classes * CLASSIFIERS
    n_images = max(4, round(parse_rows(args.rows) / per_image))
    tmp = tempfile.TemporaryDirectory()
    db = Path(args.keep) if args.keep else Path(tmp.name) / "scale.duckdb"
    saved = db.with_suffix(".fill.json")  # the fill's figures, for timing a kept store again
    if not db.exists():
        print(f"filling {db}: {n_images} images x {len(tax.nodes)} nodes x {len(DIRECTIONS)} directions x {SEEDS} seeds "
              f"x {args.classes} classes x {CLASSIFIERS} classifiers", file=sys.stderr)
        stats = fill(db, n_images, tax, args.classes)
        saved.write_text(json.dumps(stats))
    else:
        stats = json.loads(saved.read_text()) if saved.exists() else None
        Store.open(db).close()  # once for writing: this diffex's views and macros
    with Store.open(db, read_only=True) as store:
        info = store.info()
    size = db.stat().st_size + sum(p.stat().st_size for p in db.parent.glob(db.name + ".wal"))
    image = run_query(db, "SELECT image_id FROM images ORDER BY image_key LIMIT 1").rows[0][0]
    questions = {
        "top_subtypes": "SELECT * FROM top_subtypes('class 1', 10)",
        "top_nodes": "SELECT * FROM top_nodes('class 1', 10, classifier := 'bench:v1', edit_direction := 'remove')",
        "effect_tree": "SELECT * FROM effect_tree('class 1')",
        "compare_classifiers": "SELECT * FROM compare_classifiers('bench:v1', 'bench:v2', 'class 1') LIMIT 20",
        "image_explanation": f"SELECT * FROM image_explanation('{image}', 'class 1')",
    }
    lib, cli = {}, {}
    for name, sql in questions.items():
        assert run_query(db, sql).rows, name
        lib[name] = timed(lambda sql=sql: run_query(db, sql), args.reps)
        cmd = [sys.executable, "-m", "diffex.cli.main", "query", "--db", str(db), sql, "--format", "csv"]
        cli[name] = timed(lambda cmd=cmd: subprocess.run(cmd, check=True, capture_output=True), args.cli_reps)
    print(f"\nstore: {info['scores']:,} score rows, {info['edits']:,} edits, {info['images']:,} images, "
          f"{info['nodes']} nodes; {size / 1e6:.0f} MB = {size / info['scores']:.1f} bytes per score row, "
          f"{size / info['edits']:.0f} bytes per edit")
    if stats:
        print(f"write: {stats['scores']:,} score rows in {stats['t_scores']:.0f} s ({stats['scores'] / stats['t_scores']:,.0f}/s), "
              f"{stats['edits']:,} edits in {stats['t_edits']:.0f} s ({stats['edits'] / stats['t_edits']:,.0f}/s), "
              f"validity verdicts in {stats['t_valid']:.0f} s")
    print(f"{'question':<22}{'library p50':>12}{'p95':>8}{'process p50':>13}{'p95':>8}   (ms)")
    for name in questions:
        print(f"{name:<22}{lib[name][0]:>12.0f}{lib[name][1]:>8.0f}{cli[name][0]:>13.0f}{cli[name][1]:>8.0f}")
    rate = stats["scores"] / (stats["t_scores"] + stats["t_edits"] + stats["t_valid"]) if stats else float("nan")
    print(f"scores={info['scores']} top_subtypes_p50_ms={lib['top_subtypes'][0]:.0f} "
          f"image_explanation_p50_ms={lib['image_explanation'][0]:.0f} bytes_per_score={size / info['scores']:.1f} "
          f"write_rows_per_s={rate:.0f}")
    tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("DIFFEX_LOCK_TIMEOUT", "600")
    main()
