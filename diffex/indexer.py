"""`diffex index` as a library call: taxonomy -> plan -> edit -> classify -> store, walking the
hierarchy with the beam search. Everything is keyed by content hashes, so a second run with the
same inputs computes nothing and a new classifier only re-scores the cached edits."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .beam import select_beam
from .classifiers import Classifier, load_classifier, score_images
from .classify import ensure_scores
from .edit import EditRequest, baseline_request, ensure_edits
from .editors import Editor, load_editor
from .errors import DiffexError, UsageError
from .images import load_images
from .store import Store
from .taxonomy import load_taxonomy
from .types import DIRECTIONS, Concept, Node, Taxonomy


@dataclass
class IndexStats:
    """What one index run did. `edits_reused` counts cached edits it needed and did not recompute."""

    images: int = 0
    nodes_scored: int = 0
    edits_computed: int = 0
    edits_reused: int = 0
    scores_computed: int = 0
    seconds: float = 0.0
    depth_reached: int = 0
    classifier_id: str = ""
    editor_id: str = ""
    taxonomy_id: str = ""
    beam: dict[str, list[str]] = field(default_factory=dict)  # class -> labels kept at any level

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _progress_factory(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return lambda **kw: tqdm(leave=False, file=sys.stderr, **kw)


def run_index(
    db: "str | Path | Store",
    images: Sequence[str],
    taxonomy: "str | Path | Taxonomy | dict",
    classifier: "str | Classifier",
    editor: "str | Editor" = "demo",
    *,
    beam: int = 8,
    samples: int = 4,
    depth: int | None = None,
    min_delta: float = 0.0,
    classes: Sequence[str] | None = None,
    directions: Sequence[str] = ("add",),
    require_gain: bool = False,
    cache_dir: "str | Path | None" = None,
    progress: bool = False,
) -> IndexStats:
    """Index `images` against `taxonomy` with `editor` and `classifier` into the store at `db`.

    beam: nodes kept per class at each level (0 = expand the whole tree); samples: edit seeds per
    (image, node); depth: deepest level to score (None = all); classes: target classes of the
    beam search (default all; every class is scored regardless). Raises DiffexError on bad input.
    """
    t0 = time.perf_counter()
    # 1. check inputs before any compute
    if samples < 1:
        raise UsageError(f"--samples must be at least 1, got {samples}")
    if beam < 0:
        raise UsageError(f"--beam must be 0 (whole tree) or positive, got {beam}")
    if depth is not None and depth < 1:
        raise UsageError(f"--depth must be at least 1, got {depth}")
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise UsageError(f"unknown direction {bad[0] if bad else ''!r}; valid: {', '.join(DIRECTIONS)}")
    tax = load_taxonomy(taxonomy)
    clf = load_classifier(classifier)
    ed = load_editor(editor)
    targets = list(classes) if classes else list(clf.class_names)
    unknown = [c for c in targets if c not in clf.class_names]
    if unknown:
        raise DiffexError(f"unknown class {unknown[0]!r}; {clf.spec or clf.name} has: {', '.join(clf.class_names)}")
    loaded = load_images(images)
    # a classifier that returns the wrong shape or NaN fails here, before anything is stored
    score_images(clf, [loaded[0][1]])
    pictures = {rec.image_id: im for rec, im in loaded}
    image_ids = [rec.image_id for rec, _ in loaded]

    owns_store = not isinstance(db, Store)
    store = Store.open(db, cache_dir=cache_dir) if owns_store else db
    progress_bar = _progress_factory(progress)
    stats = IndexStats(images=len(loaded), classifier_id=clf.classifier_id, editor_id=ed.editor_id, taxonomy_id=tax.taxonomy_id)
    try:
        run_id = store.start_run("index", {
            "images": [str(i) for i in images], "taxonomy": tax.taxonomy_id, "classifier": clf.spec,
            "editor": ed.spec, "beam": beam, "samples": samples, "depth": depth, "min_delta": min_delta,
            "classes": targets, "directions": list(directions),
        })
        # 2. register what this run is about
        store.add_taxonomy(tax, source=str(taxonomy) if isinstance(taxonomy, (str, Path)) else None)
        store.add_editor(ed)
        store.add_classifier(clf, mark_indexed=False)
        store.add_images([rec for rec, _ in loaded])

        def count_edits(reqs: list[EditRequest]) -> list[str]:
            c = ensure_edits(store, ed, pictures, reqs, progress_bar)
            stats.edits_computed += c.computed
            stats.edits_reused += c.reused
            return [r.edit_id(ed.editor_id) for r in reqs]

        def score(edit_ids: list[str]) -> None:
            rows = store.edits_by_id(edit_ids)
            items = [(eid, (lambda rel=rows[eid]["cache_path"]: store.cache.load(rel))) for eid in edit_ids]
            stats.scores_computed += ensure_scores(store, clf, items, progress_bar)

        # 3. originals and null-edit baselines (the reference every effect is measured against)
        stats.scores_computed += ensure_scores(
            store, clf, [(rec.image_id, (lambda im=im: im)) for rec, im in loaded], progress_bar
        )
        score(count_edits([baseline_request(i) for i in image_ids]))

        # 4. beam search down the hierarchy
        frontier: list[Node] = tax.children(None)
        parent_effects: dict = {}
        level = 1
        scored_nodes: set[str] = set()
        while frontier and (depth is None or level <= depth):
            reqs = [
                EditRequest(image_id=i, concepts=(Concept(n.prompt, d),), seed=s, node_ids=(n.node_id,))
                for n in frontier for i in image_ids for d in directions for s in range(samples)
            ]
            score(count_edits(reqs))
            scored_nodes.update(n.node_id for n in frontier)
            effects = store.node_effects_for(clf.classifier_id, ed.editor_id, [n.node_id for n in frontier], image_ids)
            kept = select_beam(frontier, effects, targets, beam, directions, min_delta, require_gain, parent_effects)
            for cls, nodes in kept.items():
                stats.beam.setdefault(cls, []).extend(n.label for n in nodes)
            expand = {n.node_id for nodes in kept.values() for n in nodes}
            stats.depth_reached = level
            parent_effects = effects
            frontier = [c for n in frontier if n.node_id in expand for c in tax.children(n.node_id)]
            level += 1
        stats.nodes_scored = len(scored_nodes)
        stats.seconds = round(time.perf_counter() - t0, 3)
        store.mark_indexed(clf.classifier_id)  # only a finished run makes it the query default
        store.finish_run(run_id, stats.to_dict())
    finally:
        if owns_store:
            store.close()
    return stats
