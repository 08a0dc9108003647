"""Adaptive samples (issue 12): the same answer for a fraction of the diffusion.

The workload, and why: the demo world's faces (39 taxonomy nodes, class "old"), edited by a
diffusion-like editor (below), scored by a bench-only classifier, bench/palette_classifier.py
(a linear model on colour counts with graded weights on backgrounds, skin tones, hair colours,
the mouth and hats, so about 10 nodes clearly matter and the rest are near zero). demo:v1 has
only ~3 nodes with real effects, so a top-10 of it ranks noise and cannot judge a schedule
(`--classifier demo:v1` still runs it). The ground truth's own stability is printed (top-10
agreement of seeds 0-7 vs 8-15, and a bootstrap over images): the overlaps below mean
something only where it is near 1.0. Every schedule runs on exactly this workload.

Schedules, each indexed by `run_index` into a fresh store:
  (b) diffex fixed: beam 8, 4 samples of every node (`--samples 4`), inversions cached;
  (c) diffex adaptive: `--samples auto` (beam 8, top 10, at most 4 seeds);
  (a) the reference schedule (beam 8, top_k 25, 4 samples of every keyword, shared/docs/METHOD.md)
      draws exactly the edits of (b): same nodes, seeds and baseline (the demo reconstruction is
      the original), so its answer is (b)'s; it differs in cost, re-inverting for every edit.
Ground truth: every node, 16 samples of every image, computed in process with the same editor
and classifier objects (no store; the bench checks it matches (b)'s stored samples).

Cost: UNet evaluations by the LEDITS++ cost model (docs/ledits.md): inversion T, edit 2T,
baseline 0 with a cached inversion. (a) = 3T per edit; (b), (c) = T per distinct (image, seed)
+ 2T per edit (IndexStats.image_seeds, edits_requested). The model is checked once against UNet
calls counted on the tiny LEDITS++ pipeline (tests/ledits_fixtures.py) for a fixed and an
adaptive run. Answer quality: each schedule's top-10 by |mean delta P(old)| from its own draws,
overlap with the ground truth's top-10.

The editor (DiffusionLike, below; a bench-only editor, since the demo editor's misbehaviour
options are on another branch): the demo editor's group-level edits already land on a random
sub-type per (image, seed); on top, each edit fails (returns the image unchanged) with a
probability drawn per (image, prompt) in [fail, fail + resist], so a share of edits fail and an
edit's effect varies from image to image as a diffusion edit's does.

Usage: python bench/adaptive_cost.py [--images 24 --fail 0.1 --resist 0.4 --steps 10]
Last line: unet_evals_ratio=<adaptive/reference> top10_overlap=<adaptive> reference_top10_overlap=<reference>
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from diffex.demo.world import render  # noqa: E402
from diffex.editing.demo import DemoEditor, DemoSession, apply_concepts  # noqa: E402
from diffex.types import Concept  # noqa: E402


class _Session(DemoSession):
    def __init__(self, spec, fail: float, resist: float):
        super().__init__(spec)
        self.fail, self.resist = fail, resist

    def edit(self, concepts: Sequence[Concept], seed: int):
        key = "|".join(f"{c.direction}:{c.prompt}" for c in concepts)
        # how much this image resists this prompt: fixed per (image, prompt), as a diffusion
        # editor finds some pictures hard to edit; then each sample fails or not
        p_fail = self.fail + self.resist * random.Random(f"bench-resist:{self.spec.seed}:{key}").random()
        if random.Random(f"bench-fail:{self.spec.seed}:{seed}:{key}").random() < p_fail:
            return render(self.spec)
        return render(apply_concepts(self.spec, concepts, seed))


class DiffusionLike(DemoEditor):
    """The demo editor with diffusion-like failures (see the module docstring)."""

    name = "bench-diffusion-like"

    def __init__(self, fail: float = 0.1, resist: float = 0.4):
        self.fail, self.resist = fail, resist

    @property
    def config(self):
        return {**super().config, "fail": self.fail, "resist": self.resist}

    def open(self, image, image_id, cache_dir):
        return _Session(super().open(image, image_id, cache_dir).spec, self.fail, self.resist)


def top_of(rows: dict[str, float], k: int = 10) -> list[str]:
    return [n for n, _ in sorted(rows.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:k]]


def exact_deltas(paths: Sequence[str], nodes, editor, classifier, samples: int):
    """delta P(old) of every node on every image for seeds 0..samples-1, computed in process with
    the same editor and classifier objects run_index uses (no store: the slow part made cheap).
    Returns an array [node, image, seed]."""
    import numpy as np

    from diffex.images import load_image
    from diffex.scoring import score_images

    col = list(classifier.class_names).index("old")
    out = np.zeros((len(nodes), len(paths), samples))
    for j, path in enumerate(paths):
        session = editor.open(load_image(Path(path)), str(j), None)
        base = score_images(classifier, [session.reconstruct()])[1][0, col]
        for a, node in enumerate(nodes):
            edits = [session.edit((Concept(node.prompt, "add"),), s) for s in range(samples)]
            out[a, j] = score_images(classifier, edits)[1][:, col] - base
    return out


def agreement(deltas, rng, rounds: int = 200) -> tuple[float, float, float]:
    """How stable the ground truth's top-10 is: (split-half over seeds, mean and least top-10
    overlap of `rounds` bootstrap resamples of the images with the full top-10)."""
    import numpy as np

    def top(d):
        return set(np.argsort(-np.abs(d.mean(axis=(1, 2))), kind="stable")[:10])

    half = deltas.shape[2] // 2
    split = len(top(deltas[:, :, :half]) & top(deltas[:, :, half:])) / 10
    full = top(deltas)
    boot = [len(top(deltas[:, rng.integers(0, deltas.shape[1], deltas.shape[1])]) & full) / 10 for _ in range(rounds)]
    return split, float(np.mean(boot)), float(np.min(boot))


def check_cost_model(work: Path, steps: int) -> None:
    """Count real UNet calls of run_index with the ledits: editor on the tiny pipeline, fixed and
    adaptive, against T * image_seeds + 2T * edits."""
    import torch
    from bench.ledits_cost import UnetCounter, make_classifier, make_images
    from diffex import run_index
    from diffex.editing import load_editor
    from ledits_fixtures import build_tiny_sd

    torch.set_num_threads(1)
    model = build_tiny_sd(work / "tiny-sd")
    (work / "ledits-images").mkdir()
    paths = [str(p) for p in make_images(work / "ledits-images", 3, 32)]
    taxonomy = {"domain": "bench", "categories": {"red": ["crimson", "scarlet"], "blue": [], "beard": []}}
    for name, knobs in (("fixed", dict(samples=2, beam=0)), ("auto", dict(samples="auto", max_seeds=2, budget=14))):
        editor = load_editor(f"ledits:{model}?size=32&steps={steps}&skip=0.1")
        counter = UnetCounter(editor.pipeline().unet)
        stats = run_index(work / f"ledits-{name}.duckdb", paths, taxonomy, make_classifier(), editor, **knobs)
        # node edits 2T each, one inversion (T) per (image, seed), baselines 0 (read from the inversion)
        predicted = steps * stats.image_seeds + 2 * steps * stats.edits_requested
        print(f"cost model check ({name}, tiny LEDITS++ pipeline, T={steps}): {stats.edits_requested} node edits "
              f"(+{stats.edits_computed - stats.edits_requested} baselines) on {stats.image_seeds} (image, seed) pairs "
              f"-> predicted {predicted} UNet evals, counted {counter.evals}"
              f" ({'match' if predicted == counter.evals else 'MISMATCH'})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--fail", type=float, default=0.1, help="least failure probability of an edit")
    parser.add_argument("--resist", type=float, default=0.4, help="per-(image, prompt) extra failure probability, up to")
    parser.add_argument("--truth-samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="T, diffusion steps of the cost model and the check")
    parser.add_argument("--classifier", default=f"python:{ROOT / 'bench' / 'palette_classifier.py'}:palette",
                        help="the classifier SPEC (default: the bench's palette classifier; demo:v1 for the old workload)")
    parser.add_argument("--no-check", action="store_true", help="skip the UNet count check on the tiny pipeline")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import numpy as np

    from diffex import run_index
    from diffex.indexing.demo_run import prepare_inputs
    from diffex.scoring import load_classifier
    from diffex.store.core import Store
    from diffex.taxonomy.tree import load_taxonomy

    T = args.steps
    with tempfile.TemporaryDirectory(prefix="diffex-adaptive-") as tmp:
        work = Path(tmp)
        if not args.no_check:
            from diffusers.utils import logging as dlogging

            dlogging.set_verbosity_error()
            dlogging.disable_progress_bar()
            check_cost_model(work, T)
        inputs = prepare_inputs(work / "inputs.duckdb", args.images)
        images = [str(p) for p in inputs.images]
        tax = load_taxonomy(inputs.taxonomy)
        labels = {n.node_id: n.label for n in tax.nodes}
        editor = DiffusionLike(args.fail, args.resist)
        classifier = load_classifier(args.classifier)
        common = dict(classes=["old"], progress=False)
        results = {}
        for name, knobs in (("fixed", dict(beam=8, samples=4)), ("adaptive", dict(beam=8, samples="auto", top=10))):
            t0 = time.perf_counter()
            db = work / f"{name}.duckdb"  # a fresh store each: neither sees the other's edits
            stats = run_index(db, images, inputs.taxonomy, classifier, editor, **knobs, **common)
            with Store.open(db, read_only=True, shared=False) as store:
                rows = store._rows("SELECT n.node_id, s.mean_delta_prob FROM schedule_nodes s JOIN nodes n USING (node_key) "
                                   "WHERE s.n_samples > 0 "
                                   "AND s.mean_delta_prob IS NOT NULL AND s.class_index = ?",
                                   [list(classifier.class_names).index("old")])
                if name == "fixed":  # the store's effect (every stored sample) of each node the beam scored
                    found = store.node_effects_for(stats.classifier_id, stats.editor_id, [r["node_id"] for r in rows],
                                                   [r["image_id"] for r in store._rows("SELECT image_id FROM images")])
                    effects = {labels[n]: v for (n, d, c), v in found.items() if c == "old"}
                else:  # the schedule's own estimate from its own draws (the same samples, here)
                    effects = {labels[r["node_id"]]: r["mean_delta_prob"] for r in rows}
                    spent = store._rows("SELECT stop_reason, count(*) AS nodes, min(n_samples) AS lo, "
                                        "round(avg(n_samples)) AS mean, max(n_samples) AS hi FROM schedule_nodes "
                                        "WHERE class_index = ? GROUP BY ALL ORDER BY stop_reason",
                                        [list(classifier.class_names).index("old")])
            results[name] = {"stats": stats, "effects": effects, "wall": time.perf_counter() - t0,
                             "spent": spent if name == "adaptive" else []}

        t0 = time.perf_counter()
        deltas = exact_deltas(images, tax.nodes, editor, classifier, args.truth_samples)
        truth_wall = time.perf_counter() - t0
        truth_effects = {n.label: float(deltas[a].mean()) for a, n in enumerate(tax.nodes)}
        truth = top_of(truth_effects)
        # the in-process truth is the store's model exactly: seeds 0..3 of it are (b)'s samples
        first4 = {n.label: float(deltas[a, :, :4].mean()) for a, n in enumerate(tax.nodes)}
        drift = max(abs(first4[k] - v) for k, v in results["fixed"]["effects"].items())
        split, boot_mean, boot_min = agreement(deltas, np.random.default_rng(0))

        fixed, adaptive = results["fixed"]["stats"], results["adaptive"]["stats"]
        cost = {
            "(a) reference": 3 * T * fixed.edits_requested,
            "(b) diffex fixed": T * fixed.image_seeds + 2 * T * fixed.edits_requested,
            "(c) diffex adaptive": T * adaptive.image_seeds + 2 * T * adaptive.edits_requested,
        }
        answers = {"(a) reference": results["fixed"], "(b) diffex fixed": results["fixed"],
                   "(c) diffex adaptive": results["adaptive"]}
        ranked = sorted(truth_effects.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
        print(f"\nworkload: {args.images} demo images, {len(tax.nodes)} nodes, class old of {args.classifier.rsplit('/', 1)[-1]}, "
              f"editor fail {args.fail} + up to {args.resist} per (image, prompt); T={T}")
        print(f"ground truth (every node, {args.truth_samples} samples, in process, {truth_wall:.0f} s): "
              + ", ".join(f"{k} {v:+.3f}" for k, v in ranked[:14]) + f"; 15th+ |effect| <= {abs(ranked[14][1]):.3f}")
        print(f"ground truth stability: top-10 split-half (seeds 0-{args.truth_samples // 2 - 1} vs rest) {split:.2f}; "
              f"bootstrap over images mean {boot_mean:.2f}, least {boot_min:.2f}; store vs in-process drift {drift:.1e}")
        print(f"{'schedule':<22}{'nodes':>6}{'edits':>7}{'img-seeds':>10}{'UNet evals':>12}{'ratio':>7}{'top10':>7}")
        overlap = {}
        for name, r in answers.items():
            st = r["stats"]
            overlap[name] = len(set(top_of(r["effects"])) & set(truth)) / 10
            seeds = st.edits_requested if name.startswith("(a)") else st.image_seeds
            print(f"{name:<22}{st.nodes_scored:>6}{st.edits_requested:>7}{seeds:>10}{cost[name]:>12}"
                  f"{cost[name] / cost['(a) reference']:>7.3f}{overlap[name]:>7.2f}")
        missed = sorted(set(truth) - set(top_of(results["adaptive"]["effects"])))
        print("adaptive samples per node by stop reason (nodes: least/mean/most; cap "
              f"{4 * args.images}): " + "; ".join(f"{r['stop_reason']} {r['nodes']}: {r['lo']}/{r['mean']:.0f}/{r['hi']}"
                                                 for r in results["adaptive"]["spent"]))
        print(f"adaptive stop reasons: {adaptive.stop_reasons}; missed from the truth's top-10: {', '.join(missed) or 'none'}")
        print(f"wall s (busy shared machine, indicative): fixed {results['fixed']['wall']:.0f}, adaptive "
              f"{results['adaptive']['wall']:.0f}")
        ratio = cost["(c) diffex adaptive"] / cost["(a) reference"]
        print(f"unet_evals_ratio={ratio:.3f} top10_overlap={overlap['(c) diffex adaptive']:.2f} "
              f"reference_top10_overlap={overlap['(a) reference']:.2f}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
