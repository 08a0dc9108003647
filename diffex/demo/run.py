"""`diffex demo`: render the offline demo world, index it with a shipped demo classifier and
rank what moves it, next to the ground truth the classifier was trained with."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..indexer import run_index
from ..store import Store
from .classifier import ground_truth
from .world import write_dataset

# Demo images use seeds far from the classifier's training seeds, so the demo explains the
# classifier on images it never saw.
DEMO_SEED = 100_000


def prepare_inputs(data_dir: Path, n_images: int) -> tuple[Path, Path]:
    """Write the demo images and taxonomy under `data_dir`; returns (images folder, taxonomy file)."""
    images_dir = data_dir / "demo-images"
    wanted = {p.name for p in write_dataset(images_dir, n_images, start_seed=DEMO_SEED)}
    for stale in images_dir.glob("face_*.png"):
        if stale.name not in wanted:  # left by an earlier run with more images
            stale.unlink()
    taxonomy = data_dir / "demo-taxonomy.json"
    shutil.copyfile(Path(__file__).with_name("taxonomy.json"), taxonomy)
    return images_dir, taxonomy


def run_demo(
    db: "str | Path" = "data/demo.duckdb",
    n_images: int = 32,
    classifier: str = "demo:v1",
    samples: int = 2,
    k: int = 5,
    progress: bool = False,
    **index_options: Any,
) -> dict[str, Any]:
    """Index the demo world (whole tree, beam 0) and return the ranking with the ground truth."""
    db = Path(db)
    version = classifier.split(":", 1)[1]
    truth = ground_truth()[version]
    images_dir, taxonomy = prepare_inputs(db.parent, n_images)
    stats = run_index(db, [str(images_dir)], taxonomy, classifier, "demo", beam=0, samples=samples,
                      classes=[truth["class"]], progress=progress,
                      # the shipped demo CLIP: vectors for `diffex search`, and edit validity
                      **{"embedder": "demo", **index_options})
    with Store.open(db, read_only=True) as store:
        rows = store.top_subtypes(truth["class"], k=k, classifier=stats.classifier_id)
    return {
        "db": str(db),
        "images": str(images_dir),
        "taxonomy": str(taxonomy),
        "classifier": classifier,
        "class": truth["class"],
        "planted": list(truth["planted"]),
        "rule": truth.get("rule"),
        "top": [r["node"] for r in rows],
        "rows": rows,
        "stats": stats.to_dict(),
    }
