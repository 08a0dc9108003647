"""The derived effect tables (schema v4) give exactly the answers of a recomputation from the
source rows, however the rows arrive: a randomized store written in interleaved batches (two
editors, two classifiers that scored different edits, two embedders whose verdicts disagree,
both directions, failed and recomputed edits, links added later), checked against effects
computed here in numpy from the very numbers that were written."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest

from diffex.errors import DiffexError
from diffex.store.core import Store
from diffex.taxonomy.tree import load_taxonomy
from diffex.types import EditRecord, ImageRecord

CLASSES = ["cat", "dog", "fox"]


def t975(df: int) -> float:
    """The SQL macro t975 (schema/views.sql), for the expected intervals."""
    table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
    if df <= 10:
        return table[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df * df)


class World:
    """Writes a random store through Store's public write methods and remembers what it wrote."""

    def __init__(self, path, seed: int):
        self.rng = np.random.RandomState(seed)
        self.store = Store.open(path)
        self.tax = load_taxonomy({"domain": "animals", "categories": {
            "fur": {"striped": ["tiger stripes", "zebra stripes"], "spotted": []}, "ears": ["pointy", "round"]}})
        self.store.add_taxonomy(self.tax)
        self.nodes = [n.node_id for n in self.tax.nodes]
        self.editors = [SimpleNamespace(editor_id=f"editor{i}", name=f"ed{i}", spec=f"demo?v={i}", config={}) for i in range(2)]
        for ed in self.editors:
            self.store.add_editor(ed)
        self.classifiers = [SimpleNamespace(classifier_id=f"clf-{c}", name=f"clf {c}", spec=f"python:x:{c}", class_names=CLASSES)
                            for c in "ab"]
        for c in self.classifiers:
            self.store.add_classifier(c)
        self.images = [ImageRecord(f"img{i:02d}" + "0" * 58, f"/photos/p{i}.png", 8, 8) for i in range(7)]
        self.images.append(ImageRecord("imgdup" + "0" * 58, "/other/p1.png", 8, 8))  # same file name as p1
        self.store.add_images(self.images)
        self.edits: dict[str, dict] = {}  # edit_id -> {image, editor, kind, direction, status, nodes}
        self.scores: dict[tuple[str, str], np.ndarray] = {}  # (classifier, item) -> (logits, probs)
        self.verdicts: list[tuple[str, dict[str, bool]]] = []  # (embedder, {edit: valid}) in registration order

    def plan(self, image, editor) -> list[EditRecord]:
        out = [EditRecord(f"b-{image.image_id[:6]}-{editor.editor_id}", image.image_id, editor.editor_id, "baseline",
                          (), "none", 0, "sha", "ab/x.png", "ok", 0.0, ())]
        for node in self.nodes:
            for direction in ("add", "remove"):
                for seed in range(self.rng.randint(1, 4)):
                    status = self.rng.choice(["ok", "ok", "ok", "ok", "failed", "blocked"])
                    out.append(EditRecord(f"e-{image.image_id[:6]}-{editor.editor_id}-{node}-{direction}-{seed}",
                                          image.image_id, editor.editor_id, "single", (node,), direction, seed,
                                          "sha", "ab/x.png", str(status), 0.0, (node,)))
        # a joint edit: never part of a single node's effect
        out.append(EditRecord(f"j-{image.image_id[:6]}-{editor.editor_id}", image.image_id, editor.editor_id, "joint",
                              tuple(self.nodes[:2]), "add", 0, "sha", "ab/x.png", "ok", 0.0, tuple(self.nodes[:2])))
        return out

    def write_edits(self, records: list[EditRecord]) -> None:
        self.store.add_edits(records)
        for r in records:
            self.edits[r.edit_id] = {"image": r.image_id, "editor": r.editor_id, "kind": r.kind,
                                     "direction": r.direction, "status": r.status, "nodes": set(r.node_ids)}

    def write_scores(self, classifier, item_ids: list[str]) -> None:
        logits = self.rng.normal(0, 2, size=(len(item_ids), len(CLASSES)))
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        self.store.add_scores(classifier.classifier_id, item_ids, logits, probs)
        for i, item in enumerate(item_ids):
            self.scores[(classifier.classifier_id, item)] = (logits[i], probs[i])

    def write_verdicts(self, embedder_id: str, edit_ids: list[str]) -> None:
        if not any(e == embedder_id for e, _ in self.verdicts):
            time.sleep(0.01)  # registration order decides which verdict is current
            self.store.add_embedder(SimpleNamespace(embedder_id=embedder_id, name=embedder_id, spec=embedder_id,
                                                    dim=2, metric="cosine"))
            self.verdicts.append((embedder_id, {}))
        valid = self.rng.rand(len(edit_ids)) > 0.3
        self.store.add_validity(embedder_id, [(e, 0.1, 0.9, 0.2, bool(v)) for e, v in zip(edit_ids, valid)])
        dict(self.verdicts)[embedder_id].update(zip(edit_ids, map(bool, valid)))

    def valid(self, edit_id: str) -> bool:
        for _, judged in reversed(self.verdicts):
            if edit_id in judged:
                return judged[edit_id]
        return True

    # ------------------------------------------------------------------ the expected answers
    def per_image(self):
        """{(clf, editor, node, direction, image, class): [(delta_prob, delta_logit, valid, edit)]}"""
        baselines = {(e["image"], e["editor"]): i for i, e in self.edits.items() if e["kind"] == "baseline" and e["status"] == "ok"}
        out = defaultdict(list)
        for clf in self.classifiers:
            c = clf.classifier_id
            for edit_id, e in self.edits.items():
                if e["kind"] != "single" or e["status"] != "ok" or (c, edit_id) not in self.scores:
                    continue
                base = baselines.get((e["image"], e["editor"]))
                if base is None or (c, base) not in self.scores:
                    continue
                (lg, pr), (blg, bpr) = self.scores[(c, edit_id)], self.scores[(c, base)]
                for node in e["nodes"]:
                    for k, name in enumerate(CLASSES):
                        out[(c, e["editor"], node, e["direction"], e["image"], name)].append(
                            (float(pr[k]) - float(bpr[k]), float(lg[k]) - float(blg[k]), self.valid(edit_id), edit_id,
                             float(bpr[k])))
        return out

    def node_effects(self, include_invalid: bool):
        per_node = defaultdict(list)
        for key, rows in self.per_image().items():
            kept = [r for r in rows if r[2] or include_invalid]
            mean = np.mean([r[0] for r in kept]) if kept else None
            logit = np.mean([r[1] for r in kept]) if kept else None
            per_node[key[:4] + key[5:]].append((mean, logit, len(kept), sum(not r[2] for r in rows)))
        out = {}
        for key, imgs in per_node.items():
            means = [m for m, _, _, _ in imgs if m is not None]
            n = len(means)
            mean = float(np.mean(means)) if n else None
            sd = float(np.std(means, ddof=1)) if n > 1 else 0.0
            half = t975(n - 1) * sd / math.sqrt(n) if n > 1 else None
            up = (sum(m > 0 for m in means) + 0.5 * sum(m == 0 for m in means)) / n if n else None
            out[key] = {
                "mean_delta_prob": mean,
                "ci_low": None if half is None else max(-1.0, mean - half),
                "ci_high": None if half is None else min(1.0, mean + half),
                "mean_delta_logit": float(np.mean([lg for m, lg, _, _ in imgs if m is not None])) if n else None,
                "n_images": n,
                "n_edits": sum(k for _, _, k, _ in imgs),
                "n_invalid": sum(i for _, _, _, i in imgs),
                "sign_consistency": None if up is None else (up if mean >= 0 else 1 - up),
                "effect": "none" if not mean else ("up" if mean > 0 else "down"),
            }
        return out


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return abs(a - b) <= 1e-9 * (1 + abs(b))


def _check_node_effects(world: World) -> None:
    for view, include_invalid in (("node_effects", False), ("node_effects_all", True)):
        want = world.node_effects(include_invalid)
        rows = world.store._rows(f"SELECT * FROM {view}")
        got = {(r["classifier_id"], r["editor_id"], r["node_id"], r["direction"], r["class_name"]): r for r in rows}
        assert set(got) == set(want), view
        for key, expected in want.items():
            for col, value in expected.items():
                assert _close(got[key][col], value), (view, key, col, got[key][col], value)


def test_derived_effects_equal_a_recomputation_however_the_rows_arrive(tmp_path):
    world = World(tmp_path / "r.duckdb", seed=7)
    store = world.store
    plans = [r for img in world.images for ed in world.editors[: 1 + (img.image_id < "img03")] for r in world.plan(img, ed)]
    # 1. edits in two batches, scores for classifier a in chunks that straddle them
    half = len(plans) // 2
    world.write_edits(plans[:half])
    scorable = [r.edit_id for r in plans[:half] if r.status == "ok"]
    world.write_scores(world.classifiers[0], [i.image_id for i in world.images] + scorable[: len(scorable) // 2])
    world.write_edits(plans[half:])
    world.write_scores(world.classifiers[0], scorable[len(scorable) // 2:] + [r.edit_id for r in plans[half:] if r.status == "ok"])
    assert store.verify_effects() == {"effect_images": 0, "effect_nodes": 0, "effect_pairs": 0, "side_effects": 0}
    # 2. a first embedder judges most single edits; classifier b scores a random 80% of edits
    singles = [r.edit_id for r in plans if r.kind == "single" and r.status == "ok"]
    world.write_verdicts("emb-1", singles[: int(len(singles) * 0.9)])
    ok_items = [r.edit_id for r in plans if r.status == "ok"]
    chosen = [e for e in ok_items if world.rng.rand() < 0.8 or e.startswith("b-")]
    world.write_scores(world.classifiers[1], chosen)
    # 3. a later embedder re-judges some edits (its verdicts win), a classifier re-scores some items
    world.write_verdicts("emb-2", singles[::3])
    world.write_scores(world.classifiers[0], ok_items[::5])
    # 4. a failed edit recomputed successfully, then scored; a new node asks for existing edits
    failed = next(r for r in plans if r.kind == "single" and r.status == "failed")
    fixed = EditRecord(**{**failed.__dict__, "status": "ok"})
    world.write_edits([fixed])
    world.write_scores(world.classifiers[0], [fixed.edit_id])
    tax2 = load_taxonomy({"domain": "animals", "categories": {"fur": {"striped": ["tiger stripes"]}, "tail": ["bushy"]}})
    store.add_taxonomy(tax2)
    bushy = next(n.node_id for n in tax2.nodes if n.label == "bushy")
    reused = [r.edit_id for r in plans if r.kind == "single" and r.node_ids == (world.nodes[-1],)][:6]
    store.link_edit_nodes([(e, bushy) for e in reused])
    for e in reused:
        world.edits[e]["nodes"].add(bushy)

    assert store.verify_effects() == {"effect_images": 0, "effect_nodes": 0, "effect_pairs": 0, "side_effects": 0}
    _check_node_effects(world)
    # invalid edits were really excluded, and both directions and classifiers are covered
    keys = set(world.node_effects(False))
    assert {k[3] for k in keys} == {"add", "remove"} and {k[0] for k in keys} == {"clf-a", "clf-b"}
    assert sum(v["n_invalid"] for v in world.node_effects(False).values()) > 10

    # per image, and the pairing of two classifiers over the very same edits
    per_image = world.per_image()
    rows = store._rows("SELECT * FROM image_effects")
    assert len(rows) == len([k for k in per_image])
    for r in rows:
        kept = [x for x in per_image[(r["classifier_id"], r["editor_id"], r["node_id"], r["direction"], r["image_id"], r["class_name"])] if x[2]]
        assert _close(r["mean_delta_prob"], float(np.mean([x[0] for x in kept])) if kept else None)
        assert r["n_edits"] == len(kept)
    paired = store._rows("SELECT * FROM paired_image_effects('clf-a', 'clf-b')")
    expected = {}
    for (c, ed, node, d, img, cls), xs in per_image.items():
        if c != "clf-a":
            continue
        theirs = {x[3]: x for x in per_image.get(("clf-b", ed, node, d, img, cls), []) if x[2]}
        common = [(x, theirs[x[3]]) for x in xs if x[2] and x[3] in theirs]
        if common:
            expected[(cls, ed, node, d, img)] = (np.mean([a[0] for a, _ in common]), np.mean([b[0] for _, b in common]),
                                                 np.mean([b[0] - a[0] for a, b in common]), len(common))
    got = {(r["class_name"], r["editor_id"], r["node_id"], r["direction"], r["image_id"]): r for r in paired}
    assert set(got) == set(expected)
    mismatched = 0
    for key, (a, b, diff, n) in expected.items():
        r = got[key]
        assert _close(r["effect_a"], a) and _close(r["effect_b"], b) and _close(r["diff"], diff) and r["n_edits"] == n
        mismatched += n != len([x for x in per_image[("clf-a",) + key[1:] + (key[0],)] if x[2]])
    assert mismatched > 5  # the fallback that pairs edit by edit was exercised
    # compare_classifiers: the running pair sums plus the images paired edit by edit
    for direction in ("add", "remove"):
        by_node = defaultdict(list)
        for (cls, ed, node, d, img), v in expected.items():
            if cls == "dog" and d == direction:
                by_node[node].append(v)
        rows = store._rows("SELECT n.node_id, c.* FROM compare_classifiers('clf-a', 'clf-b', 'dog', edit_direction := ?) c "
                           "JOIN nodes n ON n.path = c.path", [direction])
        assert {r["node_id"] for r in rows} == set(by_node)
        for r in rows:
            vs = by_node[r["node_id"]]
            diffs = [v[2] for v in vs]
            assert r["n_images"] == len(vs) and r["n_edits"] == sum(v[3] for v in vs)
            assert r["diff"] == pytest.approx(round(float(np.mean(diffs)), 4), abs=1e-9)
            assert r["effect_a"] == pytest.approx(round(float(np.mean([v[0] for v in vs])), 4), abs=1e-9)
            if len(vs) > 1:
                half = t975(len(vs) - 1) * float(np.std(diffs, ddof=1)) / math.sqrt(len(vs))
                assert r["ci_high"] == pytest.approx(round(min(2.0, float(np.mean(diffs)) + half), 4), abs=1e-9)

    # one image's explanation: its nodes ranked by |effect|
    img = world.images[0]
    expl = store._rows("SELECT * FROM image_explanation(?, 'dog', classifier := 'clf-a')", [img.image_id[:8]])
    # (both editors' rows; a node whose every edit was judged invalid comes last, without an effect)
    mine = [[x[0] for x in xs if x[2]] for (c, ed, node, d, im, cls), xs in per_image.items()
            if c == "clf-a" and im == img.image_id and cls == "dog" and d == "add"]
    want = sorted((float(np.mean(v)) for v in mine if v), key=lambda m: -abs(m))
    assert [round(m, 4) for m in want] + [None] * sum(not v for v in mine) == [r["mean_delta_prob"] for r in expl]
    store.close()


def test_image_explanation_refuses_unknown_and_ambiguous_images(tmp_path):
    world = World(tmp_path / "r.duckdb", seed=1)
    world.write_edits(world.plan(world.images[0], world.editors[0]))
    store = world.store
    with pytest.raises(Exception, match="unknown image nosuch.png"):
        store._rows("SELECT * FROM image_explanation('nosuch.png', 'dog')")
    with pytest.raises(Exception, match=r"ambiguous image p1.png: 2 images match"):
        store._rows("SELECT * FROM image_explanation('p1.png', 'dog')")
    with pytest.raises(Exception, match="ambiguous image img0"):
        store._rows("SELECT * FROM image_explanation('img0', 'dog')")
    assert store._rows("SELECT * FROM image_explanation('/photos/p1.png', 'dog')") == []  # known, nothing scored
    store.close()


def test_effects_survive_a_migration_from_schema_3(tmp_path):
    """A frozen schema-3 store (tests/data/schema_v3.sql) with rows migrates in place, and every
    effect view gives the answers the schema-3 views (tests/data/views_v3.sql) gave before."""
    import duckdb
    from pathlib import Path

    from diffex.indexing.demo_run import run_demo  # noqa: F401  (the demo world makes realistic rows)

    data = Path(__file__).parent / "data"
    db = tmp_path / "v3.duckdb"
    con = duckdb.connect(str(db))
    con.execute((data / "schema_v3.sql").read_text())
    con.execute((data / "store_v3_rows.sql").read_text())
    con.execute((data / "views_v3.sql").read_text())
    queries = {
        "node_effects": "SELECT * FROM node_effects ORDER BY ALL",
        "node_effects_all": "SELECT * FROM node_effects_all ORDER BY ALL",
        "image_effects": "SELECT * FROM image_effects ORDER BY ALL",
        "top_subtypes": "SELECT * FROM top_subtypes('old', 10, classifier := 'demo:v1')",
        "top_remove": "SELECT * FROM top_nodes('old', 10, classifier := 'demo:v2', edit_direction := 'remove')",
        "effect_tree": "SELECT * FROM effect_tree('young', classifier := 'demo:v1')",
        "compare": "SELECT node, direction, effect_a, effect_b, diff, n_images, n_edits FROM compare_classifiers('demo:v1', 'demo:v2', 'old')",
        "edit_deltas": "SELECT * FROM edit_deltas ORDER BY ALL",
        "class_scores": "SELECT * FROM class_scores ORDER BY ALL",
        "joint": "SELECT * EXCLUDE (ci_low, ci_high, interaction_ci_low, interaction_ci_high) FROM top_combinations('old', 5)",
    }
    before = {}
    for name, sql in queries.items():
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description]
        # v4 clips intervals of a change in probability to [-1, 1] and names a classifier by its
        # spec (v3 printed `demo` for both demo versions): the two intended differences
        before[name] = [tuple(min(1.0, max(-1.0, v)) if c in ("ci_low", "ci_high") and v is not None
                              else None if c == "classifier_name" else v
                              for c, v in zip(cols, row)) for row in cur.fetchall()]
    assert all(before.values()), [k for k, v in before.items() if not v]
    con.close()

    store = Store.open(db)
    assert store.verify_effects() == {"effect_images": 0, "effect_nodes": 0, "effect_pairs": 0, "side_effects": 0}
    for name, sql in queries.items():
        cur = store.con.execute(sql)
        cols = [d[0] for d in cur.description]
        after = [tuple(None if c == "classifier_name" else v for c, v in zip(cols, row)) for row in cur.fetchall()]
        assert len(after) == len(before[name]), name
        for row_a, row_b in zip(after, before[name]):
            for a, b in zip(row_a, row_b):
                if isinstance(b, float) and a is not None:
                    assert a == pytest.approx(b, rel=1e-6, abs=1e-6), (name, row_a, row_b)
                else:
                    assert a == b, (name, row_a, row_b)
    store.close()
