"""Measure what each demo classifier really learned, with the demo editor.

    python scripts/check_demo_classifier.py [--n 64] [--strict]

For n faces (half young, half old, from the default distribution) every leaf of the
hierarchy is added with the demo editor and P(old) is compared with the reconstruction.
Faces already holding a planted leaf are left out unless --natural (see balanced_specs).
The planted leaf of each version (ground_truth.json) must have by far the largest |mean
delta| and every other leaf must stay under 0.05; --strict exits 1 when that fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffex.scoring.base import score_images  # noqa: E402
from diffex.demo.classifier import CLASS_NAMES, VERSIONS, DemoClassifier, ground_truth  # noqa: E402
from diffex.demo.world import ALL_LEAVES, render, sample_spec  # noqa: E402
from diffex.editing.demo import DemoEditor  # noqa: E402
from diffex.types import Concept  # noqa: E402

CHECK_SEEDS_FROM = 3_000_000  # outside the training and test seeds


def balanced_specs(n: int, natural: bool = False) -> list:
    """n faces, the first n/2 young and the rest old, in seed order. Unless `natural`, faces
    that already hold a planted leaf are skipped: adding a sibling (a cap) to a young face
    with a top hat REPLACES the top hat and rightly lowers P(old) under v2, which is a real
    effect of the planted leaf that this check would otherwise charge to the sibling."""
    planted = {leaf for v in VERSIONS for leaf in ground_truth()[v]["planted"]}
    young, old, seed = [], [], CHECK_SEEDS_FROM
    while len(young) < n // 2 or len(old) < n - n // 2:
        spec = sample_spec(seed)
        seed += 1
        if not natural and planted & set(spec.attrs.values()):
            continue
        (young if spec.age == "young" else old).append(spec)
    return young[: n // 2] + old[: n - n // 2]


def leaf_effects(version: str, n: int = 64, seed: int = 0, natural: bool = False) -> dict[str, float]:
    """leaf -> mean over n faces of P(old | leaf added) - P(old | reconstruction)."""
    clf = DemoClassifier(version)
    k = CLASS_NAMES.index("old")
    editor = DemoEditor()
    sessions = [editor.open(render(s), f"check-{s.seed}", Path(".")) for s in balanced_specs(n, natural)]
    _, base = score_images(clf, [s.reconstruct() for s in sessions])
    effects = {}
    for leaf in ALL_LEAVES:
        _, probs = score_images(clf, [s.edit([Concept(leaf, "add")], seed) for s in sessions])
        effects[leaf] = float(np.mean(probs[:, k] - base[:, k]))
    return effects


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--natural", action="store_true", help="keep faces that already hold a planted leaf")
    args = parser.parse_args()
    truth, ok = ground_truth(), True
    for version in VERSIONS:
        effects = leaf_effects(version, args.n, natural=args.natural)
        ranked = sorted(effects.items(), key=lambda kv: -abs(kv[1]))
        planted = truth[version]["planted"]
        print(f"{version} ({truth[version]['rule']}; test accuracy {truth[version].get('test_accuracy')}):")
        for leaf, delta in ranked:
            print(f"  {leaf:20s} {delta:+.4f}{'   <- planted' if leaf in planted else ''}")
        others = [abs(d) for leaf, d in ranked if leaf not in planted]
        good = ranked[0][0] in planted and max(others) < 0.05
        print(f"  {'OK' if good else 'FAIL'}: top leaf {ranked[0][0]!r}, largest other |delta| {max(others):.4f}\n")
        ok = ok and good
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    raise SystemExit(main())
