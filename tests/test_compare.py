"""Comparing classifier versions over the very same cached edits: the demo's planted change
(v1: goatee -> old, v2: top hat -> old) must be flagged and unchanged nodes must not be."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from diffex import DiffexError, open_store, run_index, run_query
from diffex.analysis.compare import benjamini_hochberg, compare_classifiers, mean_interval, sign_flip_p_value
from diffex.store.core import Store
from diffex.demo.classifier import ground_truth
from diffex.indexing.demo_run import run_demo
from diffex.demo.world import write_dataset

# The planted change shows only on faces it can flip (young, without the attribute), about
# one in three. 16 faces cannot reach significance after correcting for 39 nodes (a paired
# test over 5 informative images has p >= 2/2**5); 32 just do (adjusted p ~0.04); 40 leave
# a margin (~0.007) so a retrained demo classifier does not make this test flaky.
N_IMAGES = 40


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    db = tmp_path_factory.mktemp("compare") / "demo.duckdb"
    # no embedder: this test pairs every edit, valid or not (validity has its own tests)
    v1 = run_demo(db, n_images=N_IMAGES, classifier="demo:v1", samples=1, embedder=None)
    v2 = run_demo(db, n_images=N_IMAGES, classifier="demo:v2", samples=1, embedder=None)
    assert v2["stats"]["edits_computed"] == 0  # v2 only re-scores v1's cached edits
    return db, v1, v2


def _under(slot: str, path: str) -> bool:
    return path == slot or path.startswith(slot + " > ")


def test_demo_v1_vs_v2_flags_the_planted_change_and_nothing_unrelated(demo_pair):
    db, v1, v2 = demo_pair
    truth = ground_truth()
    result = compare_classifiers(db, "demo:v1", "demo:v2", "old")
    rows = {r.node: r for r in result.rows}
    assert len(rows) == 39 and all(r.n_images == N_IMAGES and r.n_edits == N_IMAGES for r in rows.values())
    flagged = {r.node for r in result.changed}
    planted_v1, planted_v2 = truth["v1"]["planted"][0], truth["v2"]["planted"][0]
    assert {planted_v1, planted_v2} <= flagged
    assert rows[planted_v1].diff < -0.2 and rows[planted_v2].diff > 0.2  # v2 dropped goatee, took up top hat
    # every flag lies in the two slots the retraining touched (replacing a goatee or a top hat
    # by a sibling changes too); nothing elsewhere in the hierarchy moved
    slots = (truth["v1"]["slot"], truth["v2"]["slot"])
    assert all(any(_under(s, r.path) for s in slots) for r in result.changed), flagged
    unrelated = [r for r in result.rows if not any(_under(s, r.path) for s in slots)]
    assert len(unrelated) == 39 - 8 - 6 and not any(r.significant for r in unrelated)  # 8 + 6 nodes in the slots
    assert all(abs(r.diff) < 0.02 for r in unrelated)
    # paired: the effects are each version's own, on the same edits
    for r in result.rows:
        assert r.diff == pytest.approx(r.effect_b - r.effect_a, abs=1e-12)
    with open_store(db, read_only=True) as store:
        a = {x["node"]: x["mean_delta_prob"] for x in store.top_subtypes("old", 50, classifier="demo:v1")}
        b = {x["node"]: x["mean_delta_prob"] for x in store.top_subtypes("old", 50, classifier="demo:v2")}
    for name in a:
        assert rows[name].effect_a == pytest.approx(a[name], abs=1e-4) and rows[name].effect_b == pytest.approx(b[name], abs=1e-4)
    assert "permutation" in result.method


def test_sql_macro_agrees_with_the_library(demo_pair):
    db, _, _ = demo_pair
    lib = {r.node: r for r in compare_classifiers(db, "demo:v1", "demo:v2", "old").rows}
    sql = run_query(db, "SELECT * FROM compare_classifiers('demo:v1', 'demo:v2', 'old')").dicts()
    assert {r["node"] for r in sql} == set(lib)
    for r in sql:
        x = lib[r["node"]]
        assert (r["effect_a"], r["effect_b"], r["diff"]) == pytest.approx((x.effect_a, x.effect_b, x.diff), abs=1e-4)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((x.ci_low, x.ci_high), abs=1e-4)
        assert 0 <= r["p_t_test"] <= r["p_t_test_bh"] + 1e-12 and r["p_t_test_bh"] <= 1
    # a t-test is not a permutation test, but on the demo both flag the same nodes
    assert {r["node"] for r in sql if r["significant"]} == {n for n, x in lib.items() if x.significant}
    assert sql[0]["significant"] and sql[0]["node"] in {"goatee", "top hat", "hat"}
    with pytest.raises(DiffexError, match="unknown class"):
        run_query(db, "SELECT * FROM compare_classifiers('demo:v1', 'demo:v2', 'ancient')")


def test_cli_compare_json_and_errors(demo_pair, cli_run):
    db, _, _ = demo_pair
    result = cli_run("compare", "--db", db, "--classifier", "demo:v1", "--classifier", "demo:v2", "--class", "old",
                     "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {"node", "effect_a", "effect_b", "diff", "p_permutation", "p_permutation_bh", "significant"} <= set(rows[0])
    assert "p_value" not in rows[0]  # the SQL macro's t-test p; the CLI's test is a permutation test
    assert rows[0]["significant"] and {"goatee", "top hat"} <= {r["node"] for r in rows if r["significant"]}
    table = cli_run("compare", "--db", db, "--classifier", "demo:v1", "--classifier", "demo:v2", "--class", "old", "--changed")
    assert table.exit_code == 0 and "goatee" in table.output and "grey hair" not in table.output
    assert "node effects changed from A=demo:v1 to B=demo:v2" in table.output
    both = json.loads(cli_run("compare", "--db", db, "--classifier", "demo:v1", "--classifier", "demo:v2",
                              "--format", "json").output)
    assert {r["class_name"] for r in both} == {"young", "old"} and len(both) == 2 * 39
    for args, code, message in [
        (["--classifier", "demo:v1"], 2, "exactly twice"),
        (["--classifier", "demo:v1", "--classifier", "demo:v1"], 1, "are the same classifier"),
        (["--classifier", "demo:v1", "--classifier", "demo:v9"], 1, "unknown classifier 'demo:v9'"),
        (["--classifier", "demo:v1", "--classifier", "demo:v2", "--class", "ancient"], 1, "unknown class 'ancient'"),
        (["--classifier", "demo:v1", "--classifier", "demo:v2", "--alpha", "2"], 2, "alpha must be between 0 and 1"),
    ]:
        out = cli_run("compare", "--db", db, *args)
        assert out.exit_code == code and message in out.output and len(out.output.strip().splitlines()) == 1, out.output


def test_only_edits_scored_by_both_are_paired(tmp_path, classifier_file):
    db = tmp_path / "x.duckdb"
    all_images, some = tmp_path / "all", tmp_path / "some"
    write_dataset(all_images, 5, start_seed=900)
    write_dataset(some, 2, start_seed=900)  # the same first two faces
    tax = {"categories": {"hair colour": ["grey hair", "black hair"]}}
    a = run_index(db, [str(all_images)], tax, f"python:{classifier_file}:make", beam=0, samples=2)
    b = run_index(db, [str(some)], tax, f"python:{classifier_file}:make_retrained", beam=0, samples=2)
    assert b.edits_computed == 0
    result = compare_classifiers(db, a.classifier_id, b.classifier_id[:10], "bright")
    assert {r.n_images for r in result.rows} == {2} and {r.n_edits for r in result.rows} == {4}
    # effect_a is A's effect on the shared images only, recomputed here from the raw per-image rows
    ie = run_query(db, "SELECT node, image_id, mean_delta_prob FROM image_effects WHERE classifier_id = $a "
                       "AND class_name = 'bright'", {"a": a.classifier_id}).rows
    shared = {r[0] for r in run_query(db, "SELECT image_id FROM image_effects WHERE classifier_id = $b",
                                      {"b": b.classifier_id}).rows}
    for r in result.rows:
        expected = np.mean([v for n, i, v in ie if n == r.node and i in shared])
        assert r.effect_a == pytest.approx(expected, abs=1e-12)
    # grey hair brightens faces under both versions; the retrained (higher-gain) one reacts more
    grey = next(r for r in result.rows if r.node == "grey hair")
    assert grey.effect_a > 0 and grey.effect_b > grey.effect_a and grey.p_permutation == pytest.approx(0.5)
    other = tmp_path / "other.duckdb"
    run_index(other, [str(some)], tax, f"python:{classifier_file}:make", beam=0, samples=1, directions=("remove",))
    run_index(other, [str(some)], tax, f"python:{classifier_file}:make_retrained", beam=0, samples=1,
              directions=("remove",))
    with pytest.raises(DiffexError, match="no 'add' edits were scored by both"):
        compare_classifiers(other, "brightness:make", "brightness:make_retrained")


def test_sign_flip_and_benjamini_hochberg_by_hand():
    assert sign_flip_p_value(np.array([1.0, 1.0, 1.0, 1.0])) == 2 / 16  # exact: 2 of 16 sign patterns
    assert sign_flip_p_value(np.array([1.0, -1.0])) == 1.0
    assert sign_flip_p_value(np.zeros(5)) == 1.0
    # |sum| >= 0.9 for the observed signs, with the -0.1 flipped (1.1), and both negated: 4 of 16
    assert sign_flip_p_value(np.array([0.5, 0.2, 0.3, -0.1])) == 4 / 16
    many = np.full(30, 0.1)
    p = sign_flip_p_value(many, n_permutations=999, seed=3)
    assert p == sign_flip_p_value(many, n_permutations=999, seed=3) and p == pytest.approx(1 / 1000)
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.5, None])
    assert q[:4] == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5]) and q[4] is None


def test_sql_t_test_p_value_is_close_to_exact(tmp_path):
    exact = {(2.0, 10): 0.07339, (3.0, 5): 0.03010, (2.5, 31): 0.01792, (2.2, 15): 0.04390, (4.0, 3): 0.02801}
    with open_store(tmp_path / "t.duckdb") as store:
        for (t, df), p in exact.items():
            got = store.con.execute("SELECT t_test_p2(?, ?)", [t, df]).fetchone()[0]
            assert abs(got - p) < 0.003, (t, df, got, p)
        assert store.con.execute("SELECT normal_p2(1.959964)").fetchone()[0] == pytest.approx(0.05, abs=1e-6)
        assert math.isclose(store.con.execute("SELECT t_test_p2(0.0, 7)").fetchone()[0], 1.0, abs_tol=1e-6)


def test_intervals_stay_within_what_the_quantity_can_take():
    d = np.array([1.9, 1.5, 1.95, 1.2])
    half = 3.182 * d.std(ddof=1) / 2  # t(0.975, 3), n = 4
    assert d.mean() + half > 2  # the plain t interval reaches past the largest possible difference
    assert mean_interval(d, -2, 2) == pytest.approx((d.mean() - half, 2.0))
    assert mean_interval(np.array([0.9, -0.9]), -1, 1) == (-1, 1)
    inside = np.array([0.1, 0.2, 0.15, 0.05, 0.12])
    plain = 2.776 * inside.std(ddof=1) / np.sqrt(5)
    assert mean_interval(inside, -1, 1) == pytest.approx((inside.mean() - plain, inside.mean() + plain))
    assert mean_interval(np.array([0.3]), -1, 1) is None


class _PairedRows(Store):
    """A store answering compare_classifiers' three questions from fixed per-image rows."""

    def __init__(self, diffs):
        self.diffs = diffs

    def resolve_classifier(self, which):
        return {"classifier_id": which, "name": which, "spec": which, "class_names": ["old"]}

    def check_class(self, class_name, classifier):
        return None

    def paired_image_effects(self, a, b, class_name, direction):
        return [{"path": "hat", "node": "hat", "parent": None, "depth": 1, "class_name": "old",
                 "effect_a": -d / 2, "effect_b": d / 2, "diff": d, "n_edits": 1} for d in self.diffs]


def test_compare_clips_the_interval_of_a_difference_to_minus_two_two():
    diffs = [1.9, 1.5, 1.95, 1.2]  # B reverses what A learned, on four images
    row = compare_classifiers(_PairedRows(diffs), "a", "b", "old").rows[0]
    assert row.ci_high == 2.0 and row.ci_low == pytest.approx(mean_interval(np.array(diffs), -2, 2)[0])
    assert row.p_permutation == pytest.approx(2 / 16) and row.p_value == row.p_permutation  # old name kept
    assert row.p_permutation_bh == row.p_adjusted == pytest.approx(2 / 16)
