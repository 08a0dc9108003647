"""`diffex index` as a library call: taxonomy -> plan -> edit -> classify -> store, walking the
hierarchy with the beam search. Everything is keyed by content hashes, so a second run with the
same inputs computes nothing and a new classifier only re-scores the cached edits."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..analysis.beam import joint_candidates, joint_combinations, select_beam
from ..scoring import Classifier, load_classifier, score_images
from ..scoring.stage import ensure_scores
from ..editing.stage import EditRequest, baseline_request, ensure_edits
from ..editing import Editor, load_editor
from ..embedding.stage import TextTemplates, embed_nodes, ensure_embeddings, ensure_validity
from ..embedding.side_effects import ensure_side_effects  # issue 13
from ..embedding import Embedder, load_embedder
from ..errors import DiffexError, UsageError
from ..images import read_images
from ..store.locks import index_run_lock
from ..store.core import Store, check_db_path
from ..taxonomy.tree import load_taxonomy
from ..types import DIRECTIONS, Concept, Node, Taxonomy


@dataclass
class IndexStats:
    """What one index run did. `edits_reused` counts cached edits it needed and did not recompute."""

    images: int = 0
    images_skipped: int = 0  # files in the folders/globs given that are not usable images (warned about)
    nodes_scored: int = 0
    edits_computed: int = 0
    edits_reused: int = 0
    scores_computed: int = 0
    seconds: float = 0.0
    depth_reached: int = 0
    embeddings_computed: int = 0  # images and edits embedded (with --embedder)
    edits_invalid: int = 0  # edits judged invalid in this run (the concept never appeared)
    edits_blocked: int = 0  # edits computed in this run whose pixels the editor's safety checker withheld
    embedder_id: str = ""
    classifier_id: str = ""
    editor_id: str = ""
    taxonomy_id: str = ""
    beam: dict[str, list[str]] = field(default_factory=dict)  # class -> labels kept at any level
    # with joint >= 2: class -> {"nodes", "directions", "mean_delta_prob", "sum_single_delta_prob", "interaction", ...}
    best_joint: dict[str, dict[str, Any]] = field(default_factory=dict)
    joint_combinations: int = 0  # combinations scored with joint edits

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
    embedder: "str | Embedder | None" = None,
    validity_threshold: float | None = None,
    text_templates: "TextTemplates | None" = None,
    joint: int = 0,
    joint_top: int | None = None,
) -> IndexStats:
    """Index `images` against `taxonomy` with `editor` and `classifier` into the store at `db`.

    beam: nodes kept per class at each level (0 = expand the whole tree); samples: edit seeds per
    (image, node); depth: deepest level to score (None = all); classes: target classes of the
    beam search (default all; every class is scored regardless). embedder: an embedder SPEC
    (`clip:MODEL`, `demo`) to store CLIP vectors of originals, baselines, edits and node texts
    and judge every edit's validity (diffex/embedding/stage.py; invalid edits are left out of the effect
    views and of the beam search); validity_threshold overrides the embedder's own;
    text_templates: how concepts become text (default from the taxonomy's domain).
    joint: after the walk, combine `joint` (2..5) semantics into joint edits per target class,
    among the `joint_top` (default max(beam, 4)) strongest scored nodes of that class (rule in
    diffex/analysis/beam.py `compatible`); the best combination per class lands in `stats.best_joint`.
    Raises DiffexError on bad input.
    """
    t0 = time.perf_counter()
    # 1. check inputs before any compute
    if samples < 1:
        raise UsageError(f"--samples must be at least 1, got {samples}")
    if beam < 0:
        raise UsageError(f"--beam must be 0 (whole tree) or positive, got {beam}")
    if depth is not None and depth < 1:
        raise UsageError(f"--depth must be at least 1, got {depth}")
    if joint and not 2 <= joint <= 5:
        raise UsageError(f"--joint must be 0 (off) or 2 to 5 semantics per combination, got {joint}")
    if joint_top is not None and joint_top < joint:
        raise UsageError(f"--joint-top must be at least --joint ({joint}), got {joint_top}")
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise UsageError(f"unknown direction {bad[0] if bad else ''!r}; valid: {', '.join(DIRECTIONS)}")
    owns_store = not isinstance(db, Store)
    if owns_store:
        check_db_path(Path(db), read_only=False)  # a file as its folder, no permission: before any work
    # cheap inputs before models: a bad file fails in a second, not after loading a checkpoint
    tax = load_taxonomy(taxonomy)
    read = read_images(images)
    loaded = read.items
    clf = load_classifier(classifier)
    ed = load_editor(editor)
    emb = load_embedder(embedder) if embedder is not None else None
    for rec, im in loaded:
        ed.check_image(im, rec.uri)
    targets = list(classes) if classes else list(clf.class_names)
    unknown = [c for c in targets if c not in clf.class_names]
    if unknown:
        raise DiffexError(f"unknown class {unknown[0]!r}; {clf.spec or clf.name} has: {', '.join(clf.class_names)}")
    # a classifier that returns the wrong shape or NaN fails here, before anything is stored
    score_images(clf, [loaded[0][1]])
    pictures = {rec.image_id: im for rec, im in loaded}
    image_ids = [rec.image_id for rec, _ in loaded]
    templates = text_templates or TextTemplates(domain=tax.domain)

    # no database is created before the editor's model is known to load: a new one needs the
    # model for its first edits anyway; an existing one may need no edit (lazy load)
    ed.check(load=owns_store and not Path(db).exists())
    # one index run per store at a time; readers are served between its commits (docs/store.md)
    run_lock = index_run_lock(Path(db)) if owns_store else contextlib.nullcontext()
    run_lock.__enter__()
    try:
        store = Store.open(db, cache_dir=cache_dir, shared=True) if owns_store else db
    except BaseException:
        run_lock.__exit__(None, None, None)
        raise
    progress_bar = _progress_factory(progress)
    stats = IndexStats(images=len(loaded), images_skipped=len(read.skipped), classifier_id=clf.classifier_id,
                       editor_id=ed.editor_id, taxonomy_id=tax.taxonomy_id)
    try:
        run_id = store.start_run("index", {
            "images": [str(i) for i in images], "taxonomy": tax.taxonomy_id, "classifier": clf.spec,
            "editor": ed.spec, "beam": beam, "samples": samples, "depth": depth, "min_delta": min_delta,
            "classes": targets, "directions": list(directions), "embedder": emb.spec if emb else None,
            "joint": joint, "joint_top": joint_top,
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
            stats.edits_blocked += c.blocked
            return [r.edit_id(ed.editor_id) for r in reqs]

        def score(edit_ids: list[str]) -> None:
            rows = store.edits_by_id(edit_ids)
            items = [(eid, (lambda rel=rows[eid]["cache_path"]: store.cache.load(rel))) for eid in edit_ids]
            stats.scores_computed += ensure_scores(store, clf, items, progress_bar)

        # 3. originals and null-edit baselines (the reference every effect is measured against)
        stats.scores_computed += ensure_scores(
            store, clf, [(rec.image_id, (lambda im=im: im)) for rec, im in loaded], progress_bar
        )
        baseline_ids = count_edits([baseline_request(i) for i in image_ids])
        score(baseline_ids)

        def embed(edit_ids: list[str]) -> None:
            # vectors of these edits (and validity of the single ones): after scoring, before the beam
            if emb is None:
                return
            rows = store.edits_by_id(edit_ids)
            items = [(eid, "edit", (lambda rel=rows[eid]["cache_path"]: store.cache.load(rel))) for eid in edit_ids]
            stats.embeddings_computed += ensure_embeddings(store, emb, items, progress_bar)
            stats.edits_invalid += ensure_validity(store, emb, edit_ids, templates, validity_threshold).invalid
            # issue 13: what else each edit changed, against the taxonomy's leaves and top-level groups
            ensure_side_effects(store, emb, edit_ids, tax.nodes, templates)

        if emb is not None:
            stats.embedder_id = emb.embedder_id
            store.add_embedder(emb)
            embed_nodes(store, emb, tax.nodes, templates)
            stats.embeddings_computed += ensure_embeddings(
                store, emb, [(rec.image_id, "image", (lambda im=im: im)) for rec, im in loaded], progress_bar
            )
            embed(baseline_ids)

        # 4. beam search down the hierarchy
        frontier: list[Node] = tax.children(None)
        parent_effects: dict = {}
        level = 1
        scored_nodes: set[str] = set()
        all_effects: dict = {}  # every level's effects, for the joint step
        while frontier and (depth is None or level <= depth):
            reqs = [
                EditRequest(image_id=i, concepts=(Concept(n.prompt, d),), seed=s, node_ids=(n.node_id,))
                for n in frontier for i in image_ids for d in directions for s in range(samples)
            ]
            level_ids = count_edits(reqs)
            score(level_ids)
            embed(level_ids)
            scored_nodes.update(n.node_id for n in frontier)
            effects = store.node_effects_for(clf.classifier_id, ed.editor_id, [n.node_id for n in frontier], image_ids)
            all_effects.update(effects)
            kept = select_beam(frontier, effects, targets, beam, directions, min_delta, require_gain, parent_effects)
            for cls, nodes in kept.items():
                stats.beam.setdefault(cls, []).extend(n.label for n in nodes)
            expand = {n.node_id for nodes in kept.values() for n in nodes}
            stats.depth_reached = level
            parent_effects = effects
            frontier = [c for n in frontier if n.node_id in expand for c in tax.children(n.node_id)]
            level += 1
        stats.nodes_scored = len(scored_nodes)

        # 5. joint step: the best combination of `joint` semantics per target class
        if joint:
            scored = [n for n in tax.nodes if n.node_id in scored_nodes]
            top = joint_top or max(beam, 4)
            plans = {
                cls: joint_combinations(joint_candidates(scored, all_effects, cls, top, directions, min_delta), joint)
                for cls in targets
            }
            # concepts in path order: the edit id ignores prompt order, so the pixels must too
            combos = list(dict.fromkeys(tuple(sorted(c, key=lambda nd: nd[0].path)) for cs in plans.values() for c in cs))
            stats.joint_combinations = len(combos)
            joint_ids = count_edits([
                EditRequest(image_id=i, concepts=tuple(Concept(n.prompt, d) for n, d in combo), seed=s,
                            node_ids=tuple(n.node_id for n, _ in combo))
                for combo in combos for i in image_ids for s in range(samples)
            ])
            score(joint_ids)
            embed(joint_ids)
            found = store.joint_effects_for(clf.classifier_id, ed.editor_id, image_ids)
            for cls, cs in plans.items():
                rows = [found[key] for c in cs if (key := (tuple(sorted((n.node_id, d) for n, d in c)), cls)) in found]
                if rows:
                    stats.best_joint[cls] = max(rows, key=lambda r: (abs(r["mean_delta_prob"]), r["nodes"]))
        stats.seconds = round(time.perf_counter() - t0, 3)
        store.mark_indexed(clf.classifier_id)  # only a finished run makes it the query default
        store.finish_run(run_id, stats.to_dict())
    finally:
        if owns_store:
            store.close()
        run_lock.__exit__(None, None, None)
    return stats
