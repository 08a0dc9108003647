"""Calibrate the demo CLIP's side-effect thresholds (diffex/embedding/side_effects.py) on demo
edits whose side effects are known (about 3 minutes on 2 cores).

    python scripts/calibrate_side_effects.py [--n 40] [--write]

For every concept c (each leaf and each top-level group of the demo taxonomy): negatives are
exact edits of every node unrelated to c, n/2 of each (siblings included: a beanie edit must not
read as a top hat); positives are n exact edits of random unrelated nodes with c also drawn (as
the misbehaving demo editor draws it, FaceSpec.with_extra). The threshold is the highest, over
the unrelated nodes, of the 95th percentile of that node's edits (never below 0.15), so no one
confusable node raises alarms on more than ~5% of its edits; recall is the share of positives
at or above it.
--write stores {"side_effects": {"default": ..., "thresholds": {...}, "calibration": {...}}}
in diffex/demo/clip/diffex.json.

Then validity once side effects are known (diffex/embedding/side_effects.py judges an edit with
side effects again on the part of its change they do not explain), with these thresholds:
  entangled edits: a node's exact edit with an unrelated leaf also drawn (the misbehaving
    editor's edit) - the share valid by its plain direction, and after the re-judgement;
  wrong edits: asked for a leaf, only an unrelated or sibling leaf drawn - the share the
    re-judgement would turn valid (it should stay near 0).
Last line: concepts=<n> median_recall=<r> min_recall=<m> (<concept>) entangled_valid_plain=<a>
entangled_valid=<b> wrong_rescued=<c>
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffex.demo.world import render, resolve_prompt, sample_spec, taxonomy_dict  # noqa: E402
from diffex.editing.demo import apply_concepts  # noqa: E402
from diffex.embedding.stage import TextTemplates, direction_scores  # noqa: E402
from diffex.embedding.clip import CALIBRATION_FILE, DEMO_CLIP_DIR, ClipEmbedder  # noqa: E402
from diffex.embedding.side_effects import flag, related, residual_scores, side_concepts  # noqa: E402
from diffex.taxonomy.tree import from_mapping  # noqa: E402
from diffex.types import Concept  # noqa: E402

SEEDS = range(9_200_000, 9_300_000)
FLOOR = 0.15


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="edits per concept and kind")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    emb = ClipEmbedder(str(DEMO_CLIP_DIR), batch_size=250)
    templates = TextTemplates(domain="cartoon faces")
    nodes = from_mapping(taxonomy_dict()).nodes
    concepts = side_concepts(nodes)
    rng = random.Random(0)
    neutral = emb.embed_texts([templates.neutral_text()])[0]
    text = dict(zip([c.label for c in concepts], emb.embed_texts([templates.concept_text(c.prompt) for c in concepts])))

    def exact_edit(node):
        while True:
            spec = sample_spec(rng.choice(SEEDS))
            edited = apply_concepts(spec, [Concept(node.prompt)], seed=rng.randrange(1000))
            if edited != spec:
                return spec, edited

    def sims(pairs, label):
        base = emb.embed_images([render(a) for a, _ in pairs])
        edit = emb.embed_images([render(b) for _, b in pairs])
        return direction_scores(edit, base, np.repeat(text[label][None], len(pairs), 0), neutral, np.ones(len(pairs)))[0]

    # negatives: a pool balanced over every node, so a confusable pair (a full beard read as a
    # bit of mustache) weighs as much as any other
    pool = [(n, *exact_edit(n)) for n in nodes for _ in range(args.n // 2)]
    base_v = emb.embed_images([render(a) for _, a, _ in pool])
    edit_v = emb.embed_images([render(b) for _, _, b in pool])
    thresholds, recall, false_alarms = {}, {}, {}
    for c in concepts:
        # per unrelated node, the 95th percentile of its edits' similarity toward c; the threshold
        # is the highest of them, so no single confusable node raises alarms on more than ~5% of
        # its edits (a real index sees many edits of few nodes, not a balanced mix)
        per_node = {}
        for k, (n, _, _) in enumerate(pool):
            if not related(n.path, c.path):
                per_node.setdefault(n.node_id, []).append(k)
        s_node = {nid: direction_scores(edit_v[ks], base_v[ks], np.repeat(text[c.label][None], len(ks), 0),
                                        neutral, np.ones(len(ks)))[0] for nid, ks in per_node.items()}
        s_neg = np.concatenate(list(s_node.values()))
        leaves = resolve_prompt(c.prompt)[1]
        pos = []
        while len(pos) < args.n:
            spec, edited = exact_edit(rng.choice([n for n in nodes if not related(n.path, c.path)]))
            leaf = rng.choice(leaves)
            with_side = edited.with_extra(leaf)
            if with_side != edited and spec.attrs[resolve_prompt(c.prompt)[0]] != leaf:  # new to the face
                pos.append((spec, with_side))
        s_pos = sims(pos, c.label)
        thresholds[c.label] = round(max(FLOOR, max(float(np.quantile(v, 0.95)) for v in s_node.values())), 3)
        recall[c.label] = round(float(np.mean(s_pos >= thresholds[c.label])), 3)
        false_alarms[c.label] = round(float(np.mean(s_neg >= thresholds[c.label])), 4)
        print(f"{c.label:20s} threshold={thresholds[c.label]:.3f} recall={recall[c.label]:.2f} "
              f"false_alarms={false_alarms[c.label]:.3f}", flush=True)
    if args.write:
        path = DEMO_CLIP_DIR / CALIBRATION_FILE
        data = json.loads(path.read_text(encoding="utf-8"))
        data["side_effects"] = {"default": round(float(np.median(list(thresholds.values()))), 3),
                                "thresholds": thresholds,
                                "calibration": {"script": "scripts/calibrate_side_effects.py", "n": args.n,
                                                "recall": recall, "false_alarms": false_alarms}}
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    plain_ok, kept_ok, rescued = validity_with_side_effects(emb, templates, nodes, concepts, thresholds, text, neutral,
                                                            exact_edit, rng, args.n * 5)
    worst = min(recall, key=recall.get)
    print(f"concepts={len(concepts)} median_recall={np.median(list(recall.values())):.2f} "
          f"min_recall={recall[worst]:.2f} ({worst}) entangled_valid_plain={plain_ok:.2f} "
          f"entangled_valid={kept_ok:.2f} wrong_rescued={rescued:.3f}")


def validity_with_side_effects(emb, templates, nodes, concepts, thresholds, text, neutral, exact_edit, rng, n):
    """(share of entangled edits valid by the plain direction, share valid after the re-judgement,
    share of wrong edits the re-judgement turns valid); see the module docstring."""
    leaves = [c for c in concepts if c.depth > 1]
    limits = [thresholds[c.label] for c in concepts]
    threshold = emb.validity_threshold

    def own_dirs(node):  # the node's own text and its descendants', as validity judges a group edit
        under = [m for m in nodes if m.path[: len(node.path)] == node.path]
        return np.stack([emb.embed_texts([templates.concept_text(m.prompt)])[0] - neutral for m in under])

    own_cache: dict = {}
    entangled, wrong = [], []
    while len(entangled) < n:
        node = rng.choice(nodes)
        spec, edited = exact_edit(node)
        side = rng.choice([c for c in leaves if not related(c.path, node.path)])
        leaf = resolve_prompt(side.prompt)[1][0]
        with_side = edited.with_extra(leaf)
        if with_side != edited and leaf not in spec.attrs.values():
            entangled.append((node, spec, with_side))
    while len(wrong) < n:
        node = rng.choice(leaves)
        spec = sample_spec(rng.choice(SEEDS))
        other = rng.choice([c for c in leaves if c.label != node.label])
        slot, values = resolve_prompt(other.prompt)
        if spec.attrs[slot] != values[0] and node.label not in spec.attrs.values():
            wrong.append((node, spec, spec.with_attr(slot, values[0])))
    out = []
    for rows in (entangled, wrong):
        base = emb.embed_images([render(a) for _, a, _ in rows])
        edit = emb.embed_images([render(b) for _, _, b in rows])
        sims = np.stack([direction_scores(edit, base, np.repeat(text[c.label][None], len(rows), 0), neutral,
                                          np.ones(len(rows)))[0] for c in concepts], axis=1)
        hits = flag(sims, [[node.path] for node, _, _ in rows], concepts, limits)
        owns = [own_cache.setdefault(node.node_id, own_dirs(node)) for node, _, _ in rows]
        plain = residual_scores(edit, base, owns, [[]] * len(rows))
        dirs = {c.node_id: text[c.label] - neutral for c in concepts}
        kept = np.maximum(plain, residual_scores(edit, base, owns, [[dirs[concepts[j].node_id] for j in h] for h in hits]))
        out.append((float(np.mean(plain >= threshold)), float(np.mean(kept >= threshold))))
    (plain_ok, kept_ok), (wrong_plain, wrong_kept) = out
    print(f"entangled edits valid: {plain_ok:.2f} by their plain direction, {kept_ok:.2f} once side effects are known; "
          f"wrong edits valid: {wrong_plain:.3f} -> {wrong_kept:.3f} (validity threshold {threshold})")
    return plain_ok, kept_ok, wrong_kept - wrong_plain


if __name__ == "__main__":
    main()
