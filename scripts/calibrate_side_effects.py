"""Calibrate the demo CLIP's side-effect thresholds (diffex/embedding/side_effects.py) on demo
edits whose side effects are known (about 3 minutes on 2 cores).

    python scripts/calibrate_side_effects.py [--n 40] [--write]

For every concept c (each leaf and each top-level group of the demo taxonomy): negatives are
exact edits of a random node unrelated to c (siblings included: a beanie edit must not read as
a top hat); positives are the same edits with c also drawn (as the misbehaving demo editor draws
it, FaceSpec.with_extra). The threshold is the 99th percentile of the negatives (about 1% false
alarms per concept), never below 0.15; recall is the share of positives at or above it.
--write stores {"side_effects": {"default": ..., "thresholds": {...}, "calibration": {...}}}
in diffex/demo/clip/diffex.json. Last line: concepts=<n> median_recall=<r> min_recall=<m> (<concept>)
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
from diffex.editors.demo import apply_concepts  # noqa: E402
from diffex.embed import TextTemplates, direction_scores  # noqa: E402
from diffex.embedders.clip import CALIBRATION_FILE, DEMO_CLIP_DIR, ClipEmbedder  # noqa: E402
from diffex.embedding.side_effects import related, side_concepts  # noqa: E402
from diffex.taxonomy import from_mapping  # noqa: E402
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
    thresholds, recall = {}, {}
    for c in concepts:
        others = [n for n in nodes if not related(n.path, c.path)]
        cases = []
        while len(cases) < args.n:
            spec = sample_spec(rng.choice(SEEDS))
            node = rng.choice(others)
            edited = apply_concepts(spec, [Concept(node.prompt)], seed=rng.randrange(1000))
            if edited == spec:
                continue
            leaves = resolve_prompt(c.prompt)[1]
            with_side = edited.with_extra(rng.choice(leaves))
            if with_side == edited or any(with_side.attrs[s] == v for s, v in spec.attrs.items() if v in leaves):
                continue  # the concept was there already: not a side effect
            cases.append((spec, edited, with_side))
        base = emb.embed_images([render(s) for s, _, _ in cases])
        neg = emb.embed_images([render(e) for _, e, _ in cases])
        pos = emb.embed_images([render(w) for _, _, w in cases])
        text = np.repeat(emb.embed_texts([templates.concept_text(c.prompt)]), len(cases), 0)
        ones = np.ones(len(cases))
        s_neg = direction_scores(neg, base, text, neutral, ones)[0]
        s_pos = direction_scores(pos, base, text, neutral, ones)[0]
        thresholds[c.label] = round(max(FLOOR, float(np.quantile(s_neg, 0.99))), 3)
        recall[c.label] = round(float(np.mean(s_pos >= thresholds[c.label])), 3)
        print(f"{c.label:20s} threshold={thresholds[c.label]:.3f} recall={recall[c.label]:.2f} "
              f"false_alarms={np.mean(s_neg >= thresholds[c.label]):.3f}", flush=True)
    if args.write:
        path = DEMO_CLIP_DIR / CALIBRATION_FILE
        data = json.loads(path.read_text(encoding="utf-8"))
        data["side_effects"] = {"default": round(float(np.median(list(thresholds.values()))), 3),
                                "thresholds": thresholds,
                                "calibration": {"script": "scripts/calibrate_side_effects.py", "n": args.n,
                                                "recall": recall}}
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    worst = min(recall, key=recall.get)
    print(f"concepts={len(concepts)} median_recall={np.median(list(recall.values())):.2f} "
          f"min_recall={recall[worst]:.2f} ({worst})")


if __name__ == "__main__":
    main()
