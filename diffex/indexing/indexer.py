"""`diffex index` as a library call: taxonomy -> plan -> edit -> classify -> store, walking the
hierarchy with the beam search. run_index reads top to bottom: check the inputs, open the store,
register, originals and baselines, the beam walk, the joint step, finish. Everything is keyed by content hashes, so a second run with the
same inputs computes nothing and a new classifier only re-scores the cached edits."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..analysis.adaptive import AdaptiveSchedule
from ..analysis.beam import joint_candidates, joint_combinations, select_beam
from ..scoring import Classifier, load_classifier, score_images
from ..scoring.stage import ensure_scores
from ..editing.stage import EditRequest, baseline_request, ensure_edits
from ..editing import Editor, load_editor
from ..embedding.stage import TextTemplates, embed_nodes, ensure_embeddings, ensure_validity
from ..embedding.side_effects import ensure_side_effects  # issue 13
from ..embedding import load_embedder
from ..errors import DiffexError
from ..images import read_images
from ..store.locks import index_run_lock
from ..store.core import Store, check_db_path
from ..taxonomy.tree import load_taxonomy
from ..types import Concept, Node, Taxonomy
from .options import IndexOptions


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
    edits_failed: int = 0  # edits whose editor call raised: stored as 'failed', retried by the next run
    failures: list[dict] = field(default_factory=list)  # {"image_id", "edits", "error"} of each failed group
    embedder_id: str = ""
    classifier_id: str = ""
    editor_id: str = ""
    taxonomy_id: str = ""
    beam: dict[str, list[str]] = field(default_factory=dict)  # class -> labels kept at any level
    # with joint >= 2: class -> {"nodes", "directions", "mean_delta_prob", "sum_single_delta_prob", "interaction", ...}
    best_joint: dict[str, dict[str, Any]] = field(default_factory=dict)
    joint_combinations: int = 0  # combinations scored with joint edits
    # the schedule (issue 12): "fixed" (samples N) or "auto"; node edits it asked for (computed or
    # reused) and the distinct (image, seed) pairs among them (what an inversion-caching editor inverts)
    schedule: str = "fixed"
    edits_requested: int = 0
    image_seeds: int = 0
    stop_reasons: dict[str, int] = field(default_factory=dict)  # with auto: reason -> nodes

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
    editor: "str | Editor | None" = None,
    options: IndexOptions | None = None,
    **knobs: Any,
) -> IndexStats:
    """Index `images` against `taxonomy` with `editor` and `classifier` into the store at `db`.

    The knobs (beam, samples, depth, min_delta, classes, directions, require_gain, cache_dir,
    progress, embedder, validity_threshold, text_templates, joint, joint_top) are IndexOptions'
    (diffex/indexing/options.py), given as one `options` object or as keywords. `editor` None is
    the demo editor, which edits only demo-world images: a run over other pictures stops before
    any scoring, asking for an editor. Raises DiffexError on bad input (OptionError for a bad knob).
    """
    if options is not None and knobs:
        raise TypeError(f"give the knobs in `options` or as keywords, not both (got {', '.join(knobs)})")
    opts = (options or IndexOptions(**knobs)).validate()
    run = _Run(db, opts)
    run.check_inputs(images, taxonomy, classifier, editor)
    with run.open_store(), run.open_executor():
        run.register()
        run.score_originals_and_baselines()
        if opts.adaptive:
            run.walk_adaptively()
        else:
            run.walk_the_beam()
        if opts.joint:
            run.joint_step()
        run.finish()
    return run.stats


class _Run:
    """One index run, its steps in the order run_index calls them. Everything is keyed by content
    hashes, so a step finds what an earlier run computed and only counts it as reused."""

    def __init__(self, db: "str | Path | Store", opts: IndexOptions):
        self.t0 = time.perf_counter()
        self.db, self.opts = db, opts
        self.owns_store = not isinstance(db, Store)
        self.progress_bar = _progress_factory(opts.progress)
        self._requested: set[str] = set()
        self._image_seeds: set[tuple[str, int]] = set()

    # 1. inputs, cheap ones first: a bad file fails in a second, not after loading a checkpoint
    def check_inputs(self, images, taxonomy, classifier, editor) -> None:
        opts = self.opts
        if self.owns_store:
            check_db_path(Path(self.db), read_only=False)  # a file as its folder, no permission: before any work
        self.images_given, self.taxonomy_given = images, taxonomy
        self.tax = load_taxonomy(taxonomy)
        read = read_images(images)
        self.loaded = read.items
        self.clf = load_classifier(classifier)
        self.ed = load_editor(editor if editor is not None else "demo")
        self.emb = load_embedder(opts.embedder) if opts.embedder is not None else None
        self.given_specs = {"editor": editor if editor is not None else "demo", "classifier": classifier,
                            "embedder": opts.embedder}
        for rec, im in self.loaded:
            try:
                self.ed.check_image(im, rec.uri)
            except DiffexError as exc:
                if editor is None:  # the default was chosen for the user: say so, and what to give instead
                    raise DiffexError(f"no editor given, and the default (demo) only edits demo-world images: {exc}") from None
                raise
        self.targets = list(opts.classes) if opts.classes else list(self.clf.class_names)
        unknown = [c for c in self.targets if c not in self.clf.class_names]
        if unknown:
            raise DiffexError(f"unknown class {unknown[0]!r}; {self.clf.spec or self.clf.name} has: {', '.join(self.clf.class_names)}")
        # a classifier that returns the wrong shape or NaN fails here, before anything is stored
        score_images(self.clf, [self.loaded[0][1]])
        self.pictures = {rec.image_id: im for rec, im in self.loaded}
        self.image_ids = [rec.image_id for rec, _ in self.loaded]
        self.templates = opts.text_templates or TextTemplates(domain=self.tax.domain)
        self.stats = IndexStats(images=len(self.loaded), images_skipped=len(read.skipped),
                                classifier_id=self.clf.classifier_id, editor_id=self.ed.editor_id,
                                taxonomy_id=self.tax.taxonomy_id)

    # 2. the store, held for the whole run (one index run per store; readers are served between commits)
    @contextlib.contextmanager
    def open_store(self):
        # no database is created before the editor's model is known to load: a new one needs the
        # model for its first edits anyway; an existing one may need no edit (lazy load)
        self.ed.check(load=self.owns_store and not Path(self.db).exists())
        if not self.owns_store:
            self.store = self.db
            yield self.store
            return
        with index_run_lock(Path(self.db)):  # docs/store.md
            self.store = Store.open(self.db, cache_dir=self.opts.cache_dir, shared=True)
            try:
                yield self.store
            finally:
                self.store.close()

    # 2b. where the edit, classify and embed work runs: here, or on a pool of Ray actors
    #     (diffex/indexing/ray_pool.py); either way this process alone writes the store
    @contextlib.contextmanager
    def open_executor(self):
        self.executor = None
        if self.opts.ray is None:
            yield None
            return
        from .ray_pool import RayPlacement, start_pool

        opts = self.opts
        placement = RayPlacement(opts.ray, opts.ray_actors, opts.ray_gpus_per_actor,
                                 str(opts.ray_temp_dir) if opts.ray_temp_dir else None, opts.ray_shared_cache)
        self.executor = start_pool(placement, self.ed, self.clf, self.emb, self.given_specs, self.store.cache.root)
        try:
            yield self.executor
        finally:
            self.executor.close()

    # 3. what this run is about
    def register(self) -> None:
        opts, store, tax = self.opts, self.store, self.tax
        self.run_id = store.start_run("index", {
            "images": [str(i) for i in self.images_given], "taxonomy": tax.taxonomy_id, "classifier": self.clf.spec,
            "editor": self.ed.spec, **opts.record(), "classes": self.targets,
            "embedder": self.emb.spec if self.emb else None,
        })
        given = self.taxonomy_given
        store.add_taxonomy(tax, source=str(given) if isinstance(given, (str, Path)) else None)
        store.add_editor(self.ed)
        store.add_classifier(self.clf, mark_indexed=False)
        store.add_images([rec for rec, _ in self.loaded])
        if self.emb is not None:
            self.stats.embedder_id = self.emb.embedder_id
            store.add_embedder(self.emb)
            embed_nodes(store, self.emb, tax.nodes, self.templates)

    # 4. originals and null-edit baselines: the reference every effect is measured against
    def score_originals_and_baselines(self) -> None:
        originals = [(rec.image_id, (lambda im=im: im)) for rec, im in self.loaded]
        self.stats.scores_computed += ensure_scores(self.store, self.clf, originals, self.progress_bar, self.executor)
        if self.emb is not None:
            self.stats.embeddings_computed += ensure_embeddings(
                self.store, self.emb, [(i, "image", load) for i, load in originals], self.progress_bar, self.executor)
        self._edit_score_embed([baseline_request(i) for i in self.image_ids])

    # 5. beam search down the hierarchy
    def walk_the_beam(self) -> None:
        opts, stats, store = self.opts, self.stats, self.store
        frontier: list[Node] = self.tax.children(None)
        parent_effects: dict = {}
        level = 1
        self.scored_nodes: set[str] = set()
        self.all_effects: dict = {}  # every level's effects, for the joint step
        while frontier and (opts.depth is None or level <= opts.depth):
            self._edit_score_embed([
                EditRequest(image_id=i, concepts=(Concept(n.prompt, d),), seed=s, node_ids=(n.node_id,))
                for n in frontier for i in self.image_ids for d in opts.directions for s in range(opts.samples)
            ])
            self.scored_nodes.update(n.node_id for n in frontier)
            effects = store.node_effects_for(self.clf.classifier_id, self.ed.editor_id,
                                             [n.node_id for n in frontier], self.image_ids)
            self.all_effects.update(effects)
            kept = select_beam(frontier, effects, self.targets, opts.beam, opts.directions, opts.min_delta,
                               opts.require_gain, parent_effects)
            for cls, nodes in kept.items():
                stats.beam.setdefault(cls, []).extend(n.label for n in nodes)
            expand = {n.node_id for nodes in kept.values() for n in nodes}
            stats.depth_reached = level
            parent_effects = effects
            frontier = [c for n in frontier if n.node_id in expand for c in self.tax.children(n.node_id)]
            level += 1
        stats.nodes_scored = len(self.scored_nodes)
        self._record_fixed_schedule()

    # 5 (samples "auto"). the adaptive schedule decides (diffex/analysis/adaptive.py); this loop
    # only runs the edits it asks for, one batch at a time, and hands back what they measured
    def walk_adaptively(self) -> None:
        opts, stats, store = self.opts, self.stats, self.store
        schedule = AdaptiveSchedule(self.tax.children, self.image_ids, self.targets, opts.directions, opts.beam,
                                    top=opts.top, max_seeds=opts.max_seeds, min_delta=opts.min_delta,
                                    depth=opts.depth, budget=opts.budget)
        nodes = self.tax.by_id()
        while batch := schedule.next_batch():
            self._edit_score_embed([
                EditRequest(image_id=d.image_id, concepts=(Concept(nodes[d.node_id].prompt, d.direction),), seed=d.seed,
                            node_ids=(d.node_id,))
                for d in batch
            ])
            schedule.observe(store.sample_deltas(self.clf.classifier_id, self.ed.editor_id,
                                                 sorted({d.node_id for d in batch}), self.image_ids, self.targets))
        records = schedule.records()
        store.add_schedule(self.run_id, self.clf.classifier_id, self.ed.editor_id, "auto", records)
        self.scored_nodes = {r["node_id"] for r in records if r["n_samples"]}
        self.all_effects = {(r["node_id"], r["direction"], r["class_name"]): r["mean_delta_prob"]
                            for r in records if r["mean_delta_prob"] is not None}
        for cls in self.targets:
            stats.beam[cls] = [nodes[n].label for n, _ in schedule.ranking(cls)[: opts.top]]
        reasons = {s.node.node_id: s.stop for s in schedule.states.values()}
        stats.stop_reasons = {r: sum(1 for v in reasons.values() if v == r) for r in sorted(set(reasons.values()))}
        stats.schedule = "auto"
        stats.nodes_scored = len(self.scored_nodes)
        stats.depth_reached = max((nodes[n].depth for n in self.scored_nodes), default=0)

    def _record_fixed_schedule(self) -> None:
        """schedule_nodes rows of a fixed run: 'fixed' for every scored node, 'pruned' for the
        children of scored nodes the beam did not expand (within the depth asked for)."""
        opts, n_images = self.opts, len(self.image_ids)
        rows = []
        for node in self.tax.nodes:
            if node.node_id in self.scored_nodes:
                reason, n = "fixed", n_images
            elif node.parent_id in self.scored_nodes and (opts.depth is None or node.depth <= opts.depth):
                reason, n = "pruned", 0
            else:
                continue
            rows.extend({"node_id": node.node_id, "direction": d, "class_name": cls, "n_images": n,
                         "n_samples": n * opts.seeds, "mean_delta_prob": self.all_effects.get((node.node_id, d, cls)),
                         "ci_low": None, "ci_high": None, "stop_reason": reason}
                        for d in opts.directions for cls in self.targets)
        self.store.add_schedule(self.run_id, self.clf.classifier_id, self.ed.editor_id, "fixed", rows)

    # 6. joint step: the best combination of `joint` semantics per target class
    def joint_step(self) -> None:
        opts, stats = self.opts, self.stats
        scored = [n for n in self.tax.nodes if n.node_id in self.scored_nodes]
        top = opts.joint_top or max(opts.beam, 4)
        plans = {
            cls: joint_combinations(joint_candidates(scored, self.all_effects, cls, top, opts.directions, opts.min_delta),
                                    opts.joint)
            for cls in self.targets
        }
        # concepts in path order: the edit id ignores prompt order, so the pixels must too
        combos = list(dict.fromkeys(tuple(sorted(c, key=lambda nd: nd[0].path)) for cs in plans.values() for c in cs))
        stats.joint_combinations = len(combos)
        self._edit_score_embed([
            EditRequest(image_id=i, concepts=tuple(Concept(n.prompt, d) for n, d in combo), seed=s,
                        node_ids=tuple(n.node_id for n, _ in combo))
            for combo in combos for i in self.image_ids for s in range(opts.seeds)
        ])
        found = self.store.joint_effects_for(self.clf.classifier_id, self.ed.editor_id, self.image_ids)
        for cls, cs in plans.items():
            rows = [found[key] for c in cs if (key := (tuple(sorted((n.node_id, d) for n, d in c)), cls)) in found]
            if rows:
                stats.best_joint[cls] = max(rows, key=lambda r: (abs(r["mean_delta_prob"]), r["nodes"]))

    # 7. only a finished run makes the classifier the query default
    def finish(self) -> None:
        self.stats.seconds = round(time.perf_counter() - self.t0, 3)
        self.store.mark_indexed(self.clf.classifier_id)
        self.store.finish_run(self.run_id, self.stats.to_dict())

    # the unit every step repeats: edit (or reuse), score the edits, embed them and judge validity
    def _edit_score_embed(self, reqs: list[EditRequest]) -> None:
        store, stats, ed = self.store, self.stats, self.ed
        for r in reqs:  # what the schedule asked for, computed or not (its cost in any cost model)
            if r.concepts and r.edit_id(ed.editor_id) not in self._requested:
                self._requested.add(r.edit_id(ed.editor_id))
                self._image_seeds.add((r.image_id, r.seed))
        stats.edits_requested, stats.image_seeds = len(self._requested), len(self._image_seeds)
        counts = ensure_edits(store, ed, self.pictures, reqs, self.progress_bar, self.executor)
        stats.edits_computed += counts.computed
        stats.edits_reused += counts.reused
        stats.edits_blocked += counts.blocked
        stats.edits_failed += counts.failed
        stats.failures += counts.failures
        rows = store.edits_by_id([r.edit_id(ed.editor_id) for r in reqs])
        # a failed edit has no pixels: nothing to score or embed (the next run retries it)
        edit_ids = [eid for eid in dict.fromkeys(r.edit_id(ed.editor_id) for r in reqs) if rows[eid]["status"] != "failed"]
        loads = {eid: store.cache.loader(rows[eid]["cache_path"]) for eid in edit_ids}
        stats.scores_computed += ensure_scores(store, self.clf, list(loads.items()), self.progress_bar, self.executor)
        if self.emb is not None:  # after scoring, before the beam looks at the effects
            stats.embeddings_computed += ensure_embeddings(
                store, self.emb, [(eid, "edit", load) for eid, load in loads.items()], self.progress_bar, self.executor)
            stats.edits_invalid += ensure_validity(store, self.emb, edit_ids, self.templates,
                                                   self.opts.validity_threshold).invalid
            # issue 13: what else each edit changed, against the taxonomy's leaves and top-level groups
            side = ensure_side_effects(store, self.emb, edit_ids, self.tax.nodes, self.templates)
            # an edit that showed its concept beside a side effect is valid after all
            stats.edits_invalid = max(0, stats.edits_invalid - side.made_valid + side.made_invalid)
