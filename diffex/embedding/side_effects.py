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

An edit that drew its concept and a side concept points between the two, so its direction
toward its own concept can fall below the validity threshold although it shows it (the
entangled edits of issue 13 then vanished from the effects as invalid, and with them the
confound). So an edit with side effects is judged again on the part of its change that they
do not explain: E(edit) - E(baseline) less its projection on the side concepts' text
directions, toward its own concept(s) as in validity. Its validity row keeps the better of
the two similarities; an edit that drew only the side concept has little left toward its
own and stays invalid (scripts/calibrate_side_effects.py measures both on the demo world).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .stage import NO_CHANGE, TextTemplates, best_direction_scores, direction_scores, ensure_texts
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


def residual_scores(edit_vecs: np.ndarray, base_vecs: np.ndarray, own_dirs: Sequence[np.ndarray],
                    side_dirs: Sequence[np.ndarray]) -> np.ndarray:
    """Per edit, the best cosine between its change with the side directions projected out and
    its own concept directions (rows of own_dirs[k], signed like validity's); side_dirs[k] are
    the text directions (rows) of the side concepts flagged for edit k (none: the plain change)."""
    out = np.zeros(len(edit_vecs))
    for k, (own, side) in enumerate(zip(own_dirs, side_dirs)):
        change = edit_vecs[k] - base_vecs[k]
        if len(side):
            basis, _ = np.linalg.qr(np.asarray(side, dtype=np.float64).T)
            change = change - basis @ (basis.T @ change)
        n_change, n_own = np.linalg.norm(change), np.linalg.norm(own, axis=1)
        cos = own @ change / np.maximum(n_change * n_own, 1e-12)
        out[k] = float(np.max(np.where((n_change > NO_CHANGE) & (n_own > NO_CHANGE), cos, 0.0)))
    return out


@dataclass
class SideEffectCounts:
    checked: int = 0       # edits checked against the concepts
    made_valid: int = 0    # invalid by their plain direction, valid once side effects are known
    made_invalid: int = 0  # the reverse (a re-check found fewer side effects than before)


def ensure_side_effects(store, embedder: Embedder, edit_ids: Sequence[str], nodes: Sequence[Node],
                        templates: TextTemplates) -> SideEffectCounts:
    """Check the single edits among `edit_ids` that this embedder judged (ensure_validity first;
    their vectors are stored) for side effects against `nodes`' leaves and top-level groups, unless
    already checked against the same concepts and thresholds, and judge the validity of those
    with side effects again (module docstring)."""
    concepts = side_concepts(nodes)
    counts = SideEffectCounts()
    if not concepts or not edit_ids:
        return counts
    thresholds = thresholds_for(embedder, concepts)
    fp = hash_json({"concepts": sorted(thresholds.items()), "templates": [templates.concept, templates.neutral,
                                                                          templates.domain]})[:32]
    checked = store.side_checked(embedder.embedder_id, list(dict.fromkeys(edit_ids)))
    todo_ids = [e for e, got in checked.items() if got != fp]
    edits = store.single_edits(todo_ids)
    if not edits:
        return counts
    paths = store.edit_node_paths([e["edit_id"] for e in edits])
    own = store.edit_concepts([e["edit_id"] for e in edits])
    own_texts = {e["edit_id"]: [templates.concept_text(p) for p in own.get(e["edit_id"], [e["prompt"]])] for e in edits}
    text_ids = ensure_texts(store, embedder, [templates.concept_text(c.prompt) for c in concepts] + [templates.neutral_text()]
                            + [t for ts in own_texts.values() for t in ts])
    wanted = {e["edit_id"] for e in edits} | {e["baseline_id"] for e in edits} | set(text_ids.values())
    ids, _, matrix = store.embeddings(embedder.embedder_id, item_ids=sorted(wanted))
    row = {i: k for k, i in enumerate(ids)}
    edit_vecs = matrix[[row[e["edit_id"]] for e in edits]]
    base_vecs = matrix[[row[e["baseline_id"]] for e in edits]]
    neutral = matrix[row[text_ids[templates.neutral_text()]]]
    concept_vecs = matrix[[row[text_ids[templates.concept_text(c.prompt)]] for c in concepts]]
    sims = np.stack([direction_scores(edit_vecs, base_vecs, np.repeat(concept_vecs[[j]], len(edits), 0),
                                      neutral, np.ones(len(edits)))[0] for j in range(len(concepts))], axis=1)
    concept_dirs = concept_vecs - neutral[None, :]
    limits = [thresholds[c.node_id] for c in concepts]
    hits = flag(sims, [paths.get(e["edit_id"], []) for e in edits], concepts, limits)
    rows = [(e["edit_id"], concepts[j].node_id, float(sims[k, j]), limits[j]) for k, e in enumerate(edits) for j in hits[k]]
    # validity, judged again on what the side effects leave (module docstring); the plain change
    # is scored too, as ensure_validity does, so a re-check that drops a side effect also drops its rescue
    pairs = [(k, t) for k, e in enumerate(edits) for t in own_texts[e["edit_id"]]]
    owner = np.array([k for k, _ in pairs])
    signs = np.array([-1.0 if e["direction"] == "remove" else 1.0 for e in edits])
    own_vecs = matrix[[row[text_ids[t]] for _, t in pairs]]
    best = best_direction_scores(edit_vecs[owner], base_vecs[owner], own_vecs, neutral, signs[owner], owner, len(edits))[0]
    for k in (k for k, found in enumerate(hits) if found):
        own_dirs = (own_vecs[owner == k] - neutral[None, :]) * signs[k]
        kept = residual_scores(edit_vecs[[k]], base_vecs[[k]], [own_dirs], [concept_dirs[hits[k]]])[0]
        best[k] = max(best[k], kept)
    verdicts = store.validity_rows(embedder.embedder_id, [e["edit_id"] for e in edits])
    rejudged = []
    for k, e in enumerate(edits):
        v = verdicts[e["edit_id"]]
        rejudged.append((e["edit_id"], float(best[k]), bool(best[k] >= v["threshold"])))
        counts.made_valid += rejudged[-1][2] and not v["valid"]
        counts.made_invalid += v["valid"] and not rejudged[-1][2]
    store.add_side_effects(embedder.embedder_id, fp, [e["edit_id"] for e in edits], rows, rejudged)
    counts.checked = len(edits)
    return counts
