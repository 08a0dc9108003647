"""`diffex demo`: render the offline demo world, index it with a shipped demo classifier and
rank what moves it, next to the ground truth the classifier was trained with."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .indexer import run_index
from ..atomic import atomic_path
from ..store.core import Store, check_db_path
from ..demo.classifier import ground_truth
from ..demo.world import write_dataset

# Demo images use seeds far from the classifier's training seeds, so the demo explains the
# classifier on images it never saw.
DEMO_SEED = 100_000


@dataclass(frozen=True)
class DemoInputs:
    images_dir: Path  # `<db stem>-images/` beside the db: this store's own folder
    images: tuple[Path, ...]  # the files this run indexes (the folder may hold more from earlier runs)
    taxonomy: Path


def prepare_inputs(db: "str | Path", n_images: int) -> DemoInputs:
    """Write the demo images and taxonomy beside `db`, in files of its own: `data/demo.duckdb`
    gets `data/demo-images/` and `data/demo-taxonomy.json`. Files are only added or rewritten
    (atomically, with the same pixels), never deleted: the store, and any copy of it, points at them."""
    db = Path(db)
    images_dir = db.parent / f"{db.stem}-images"
    images = tuple(write_dataset(images_dir, n_images, start_seed=DEMO_SEED))
    taxonomy = db.parent / f"{db.stem}-taxonomy.json"
    with atomic_path(taxonomy) as tmp:
        shutil.copyfile(Path(__file__).resolve().parents[1] / "demo" / "taxonomy.json", tmp)
    return DemoInputs(images_dir, images, taxonomy)


def run_demo(
    db: "str | Path" = "data/demo.duckdb",
    n_images: int = 32,
    classifier: str = "demo:v1",
    samples: int = 2,
    k: int = 5,
    progress: bool = False,
    editor: str = "demo",
    **index_options: Any,
) -> dict[str, Any]:
    """Index the demo world (whole tree, beam 0) and return the ranking with the ground truth.
    editor: `demo`, or the demo editor with misbehaviour options (`demo?entangle=...`)."""
    db = Path(db)
    check_db_path(db, read_only=False)  # before writing images beside it
    version = classifier.split(":", 1)[1]
    truth = ground_truth()[version]
    inputs = prepare_inputs(db, n_images)
    stats = run_index(db, [str(p) for p in inputs.images], inputs.taxonomy, classifier, editor, beam=0, samples=samples,
                      classes=[truth["class"]], progress=progress,
                      # the shipped demo CLIP: vectors for `diffex search`, and edit validity
                      **{"embedder": "demo", **index_options})
    with Store.open(db, read_only=True) as store:
        rows = store.top_subtypes(truth["class"], k=k, classifier=stats.classifier_id)
        indexed = {c["spec"] for c in store.classifiers() if c["indexed_at"] is not None}
    # the HTML report (issue 14), compared with the other demo version when it is indexed too
    from ..report import write_report

    other = next((s for s in ("demo:v1", "demo:v2") if s != classifier and s in indexed), None)
    report = write_report(db, db.with_name(f"{db.stem}-report.html"), truth["class"], stats.classifier_id, compare=other)
    return {
        "db": str(db),
        "images": str(inputs.images_dir),
        "taxonomy": str(inputs.taxonomy),
        "classifier": classifier,
        "class": truth["class"],
        "planted": list(truth["planted"]),
        "rule": truth.get("rule"),
        "top": [r["node"] for r in rows],
        "rows": rows,
        "stats": stats.to_dict(),
        "report": str(report.path),
        "report_bytes": report.bytes,
    }
