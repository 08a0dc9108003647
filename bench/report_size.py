"""Size and time of `diffex report` (issue 14): the demo store's report, and a synthetic store
of 500 nodes x 200 images (256 px photos-like images, real files in the content-addressed
cache, written through the Store's write path), timed side by side in one run.

    python bench/report_size.py [--nodes 500] [--images 200] [--keep DIR]

Last line: demo_bytes=<n> demo_s=<x> large_bytes=<n> large_s=<x> large_thumbnails=<n>
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from diffex.indexing.demo_run import run_demo
from diffex.hashing import edit_id_for, hash_image
from diffex.report import write_report
from diffex.store import Store
from diffex.taxonomy.tree import load_taxonomy
from diffex.types import EditRecord, ImageRecord

POOL = 1500  # distinct edited pictures: more than the report ever shows, so none are shared by luck


def picture(rng: np.random.RandomState, size: int = 256) -> Image.Image:
    """A smooth random gradient with texture: compresses like a photo, not like flat colour."""
    y, x = np.mgrid[0:size, 0:size] / size
    c = rng.rand(3, 3)
    img = np.stack([c[i, 0] * x + c[i, 1] * y + c[i, 2] * np.sin(8 * x * c[i, 0] + 5 * y) for i in range(3)], -1)
    img = (img - img.min()) / (np.ptp(img) + 1e-9) * 200 + rng.rand(size, size, 3) * 55
    return Image.fromarray(img.astype(np.uint8))


def fill_large(db: Path, n_nodes: int, n_images: int) -> None:
    rng = np.random.RandomState(0)
    groups = max(2, round(n_nodes / 26))
    tax = load_taxonomy({"domain": "scenes", "categories": {
        f"group {g}": {f"kind {g}.{s}": [f"leaf {g}.{s}.{k}" for k in range(4)] for s in range(5)} for g in range(groups)}})
    store = Store.open(db)
    store.add_taxonomy(tax)
    editor = SimpleNamespace(editor_id="bench-editor", name="bench", spec="bench", config={})
    store.add_editor(editor)
    clf = SimpleNamespace(classifier_id="bench-clf", name="bench", spec="bench:v1", class_names=["a", "b"])
    store.add_classifier(clf)
    originals = db.parent / "originals"
    originals.mkdir(exist_ok=True)
    pool = [store.cache.put(picture(rng)) for _ in range(POOL)]
    effect = rng.normal(0, 0.3, len(tax.nodes)) * (rng.rand(len(tax.nodes)) < 0.05) + rng.normal(0, 0.02, len(tax.nodes))
    for i in range(n_images):
        im = picture(rng)
        path = originals / f"photo_{i:04d}.png"
        im.save(path)
        image_id = hash_image(im)
        store.add_images([ImageRecord(image_id, str(path), 256, 256)])
        sha, rel = store.cache.put(im)
        group = [EditRecord(edit_id_for(image_id, editor.editor_id, (), "none", 0), image_id, editor.editor_id,
                            "baseline", (), "none", 0, sha, rel, "ok", 0.0, ())]
        for k, node in enumerate(tax.nodes):
            sha, rel = pool[rng.randint(POOL)]
            group.append(EditRecord(edit_id_for(image_id, editor.editor_id, (node.prompt,), "add", 0), image_id,
                                    editor.editor_id, "single", (node.prompt,), "add", 0, sha, rel, "ok", 0.0, (node.node_id,)))
        with store.transaction():
            store.add_edits(group, known=())
        base = rng.normal(0, 1)
        logits = np.array([[0.0, base]] + [[0.0, base + 4 * effect[k] + rng.normal(0, 0.2)] for k in range(len(tax.nodes))])
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        ids = [image_id] + [r.edit_id for r in group]
        store.add_scores(clf.classifier_id, ids, np.vstack([logits[:1], logits]), np.vstack([probs[:1], probs]))
    store.mark_indexed(clf.classifier_id)
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        demo = root / "demo.duckdb"
        if not demo.exists():
            run_demo(demo)
        t0 = time.perf_counter()
        small = write_report(demo, root / "demo-report.html", "old", "demo:v1")
        demo_s = time.perf_counter() - t0
        large_db = root / "large.duckdb"
        if not large_db.exists():
            t0 = time.perf_counter()
            fill_large(large_db, args.nodes, args.images)
            print(f"filled {large_db} in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        large = write_report(large_db, root / "large-report.html", "b", "bench:v1")
        large_s = time.perf_counter() - t0
        for name, r, s in (("demo", small, demo_s), ("large", large, large_s)):
            print(f"{name}: {r.bytes / 1e6:.2f} MB, {r.nodes} nodes, {r.thumbnails} thumbnails "
                  f"({r.thumbnail_bytes / 1e6:.2f} MB encoded), {s:.1f} s")
        print(f"demo_bytes={small.bytes} demo_s={demo_s:.2f} large_bytes={large.bytes} large_s={large_s:.2f} "
              f"large_thumbnails={large.thumbnails}")


if __name__ == "__main__":
    main()
