"""Side effects of edits (issue 13): what else an edit changed besides its own concept.

For every single edit judged by an embedder, and every concept of the taxonomy that is a leaf
or a top-level group, other than the edit's own node, its ancestors and its descendants:

    side_sim(edit, c) = cos(E(edit) - E(baseline), T(c) - T(neutral))

the directional similarity of edit validity (diffex/embed.py), always toward c (+1), whatever
the edit's direction: a removal that greys the hair still added grey hair. A concept counts
when side_sim reaches its own threshold (the embedder's per-concept calibration; the demo CLIP's
is measured by scripts/calibrate_side_effects.py on edits whose side effects are known). A
group is kept only when none of its leaves is (the leaf says more). Only those rows are
stored (sparse); the edit is marked checked with a fingerprint of the concept set and
thresholds, so a later taxonomy or calibration re-checks it. Side effects belong to the edit
and the embedder: every classifier reuses them (the query macros read them per node).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .stage import TextTemplates, direction_scores, ensure_texts
from .base import Embedder
from ..hashing import hash_json
from ..types import Node


def side_concepts(nodes: Sequence[Node]) -> list[Node]:
    """The concepts side effects are measured against: every leaf and every top-level group."""
    parents = {n.parent_id for n in nodes}
    return [n for n in nodes if n.depth == 1 or n.node_id not in parents]


def related(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """True when one path is a prefix of the other (same node, ancestor or descendant)."""
    k = min(len(a), len(b))
    return a[:k] == b[:k]


def thresholds_for(embedder: Embedder, concepts: Sequence[Node]) -> dict[str, float]:
    """{node_id: threshold}: the embedder's calibrated one for the concept's label, else its default."""
    table = getattr(embedder, "side_effect_thresholds", {}) or {}
    default = float(getattr(embedder, "side_effect_threshold", embedder.validity_threshold))
    return {c.node_id: float(table.get(c.label, default)) for c in concepts}


def flag(sims: np.ndarray, edit_paths: Sequence[Sequence[tuple[str, ...]]], concepts: Sequence[Node],
         thresholds: Sequence[float]) -> list[list[int]]:
    """Per edit (rows of `sims`, one column per concept), the concept indices it shows as side
    effects: at or above threshold, unrelated to every node the edit was made for, and a group
    only when none of its leaves is flagged."""
    out = []
    for row, paths in zip(sims, edit_paths):
        hits = [j for j, c in enumerate(concepts)
                if row[j] >= thresholds[j] and not any(related(c.path, p) for p in paths)]
        leaves_hit = {concepts[j].path[0] for j in hits if concepts[j].depth > 1}
        out.append([j for j in hits if concepts[j].depth > 1 or concepts[j].path[0] not in leaves_hit])
    return out


def ensure_side_effects(store, embedder: Embedder, edit_ids: Sequence[str], nodes: Sequence[Node],
                        templates: TextTemplates) -> int:
    """Check the single edits among `edit_ids` that this embedder judged (ensure_validity first;
    their vectors are stored) for side effects against `nodes`' leaves and top-level groups, unless
    already checked against the same concepts and thresholds. Returns how many edits were checked."""
    concepts = side_concepts(nodes)
    if not concepts or not edit_ids:
        return 0
    thresholds = thresholds_for(embedder, concepts)
    fp = hash_json({"concepts": sorted(thresholds.items()), "templates": [templates.concept, templates.neutral,
                                                                          templates.domain]})[:32]
    checked = store.side_checked(embedder.embedder_id, list(dict.fromkeys(edit_ids)))
    todo_ids = [e for e, got in checked.items() if got != fp]
    edits = store.single_edits(todo_ids)
    if not edits:
        return 0
    paths = store.edit_node_paths([e["edit_id"] for e in edits])
    text_ids = ensure_texts(store, embedder, [templates.concept_text(c.prompt) for c in concepts] + [templates.neutral_text()])
    wanted = {e["edit_id"] for e in edits} | {e["baseline_id"] for e in edits} | set(text_ids.values())
    ids, _, matrix = store.embeddings(embedder.embedder_id, item_ids=sorted(wanted))
    row = {i: k for k, i in enumerate(ids)}
    edit_vecs = matrix[[row[e["edit_id"]] for e in edits]]
    base_vecs = matrix[[row[e["baseline_id"]] for e in edits]]
    neutral = matrix[row[text_ids[templates.neutral_text()]]]
    sims = np.stack([direction_scores(edit_vecs, base_vecs, np.repeat(matrix[[row[text_ids[templates.concept_text(c.prompt)]]]], len(edits), 0),
                                      neutral, np.ones(len(edits)))[0] for c in concepts], axis=1)
    limits = [thresholds[c.node_id] for c in concepts]
    hits = flag(sims, [paths.get(e["edit_id"], []) for e in edits], concepts, limits)
    rows = [(e["edit_id"], concepts[j].node_id, float(sims[k, j]), limits[j]) for k, e in enumerate(edits) for j in hits[k]]
    store.add_side_effects(embedder.embedder_id, fp, [e["edit_id"] for e in edits], rows)
    return len(edits)
