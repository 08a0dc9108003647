"""The adaptive schedule (issue 12): its decisions on constructed effects (pure, no store), and
end to end through run_index: every draw stored, stop reasons in the views, a larger budget
extending the same cache, and the same top nodes as the fixed schedule on the exact demo editor."""

from __future__ import annotations

import random
import statistics

import pytest

from diffex import run_index
from diffex.analysis.adaptive import AdaptiveSchedule, t_quantile
from diffex.store.core import Store
from diffex.taxonomy.tree import load_taxonomy

TREE = {"domain": "toy", "categories": {
    "strong": ["strong a", "strong b"],
    "zero": ["zero a", "zero b"],
    "edge": ["edge a"],
    "weak": ["weak a", "weak b"],
}}
IMAGES = [f"{i:064x}" for i in range(12)]


def simulate(effects, noise, images=IMAGES, **knobs):
    """Run a schedule to the end against effects[label] + seeded noise[label]; returns it and its draws."""
    tax = load_taxonomy(TREE)
    labels = {n.node_id: n.label for n in tax.nodes}
    schedule = AdaptiveSchedule(tax.children, images, ["c"], **knobs)
    draws = []
    while batch := schedule.next_batch():
        draws.extend(batch)
        schedule.observe(
            (d.node_id, d.direction, d.image_id, d.seed, "c",
             effects.get(labels[d.node_id], 0.0)
             + noise.get(labels[d.node_id], 0.0) * random.Random(f"{d.node_id}{d.image_id}{d.seed}").gauss(0, 1))
            for d in batch)
    return schedule, draws, labels


def stops(schedule, labels):
    return {labels[n]: (s.stop, s.k) for n, s in schedule.states.items()}


EFFECTS = {"strong": 0.5, "strong a": 0.6, "strong b": 0.4, "edge": 0.2, "edge a": 0.2, "weak": 0.01, "weak a": 0.01}
NOISE = {"strong": 0.05, "strong a": 0.05, "strong b": 0.05, "edge": 0.5, "edge a": 1.5, "weak": 0.002, "weak a": 0.002}


def test_clear_nodes_stop_early_and_uncertain_ones_draw_to_the_cap():
    schedule, draws, labels = simulate(EFFECTS, NOISE, beam=8, top=3, first=8, max_seeds=4)
    got = stops(schedule, labels)
    # far above / exactly at zero: decided on the first 8 units (one seed of 8 images)
    assert got["strong"] == ("in", 8) and got["strong a"] == ("in", 8)
    assert got["zero"] == ("out", 8) and got["zero a"] == ("out", 8)
    # noisy nodes near the cut-off between the 3rd and 4th: more seeds, up to the cap (4 seeds x 12 images)
    assert got["edge"][1] > 3 * 8 and got["edge"][0] in ("out", "cap")
    assert got["edge a"] == ("cap", 48)
    # a precise small effect below the cut: out early, without the cap
    assert got["weak"][0] == "out" and got["weak"][1] < 48
    assert len(draws) == len(set(draws))  # nothing drawn twice
    # images before seeds: a node with 12 units has seed 0 of all 12 images
    units = [(d.image_id, d.seed) for d in draws if labels[d.node_id] == "edge"]
    assert set(units[:12]) == {(i, 0) for i in IMAGES}


def test_children_of_a_pruned_node_are_never_edited():
    # beam 1 over four groups: only the strongest group's children can enter
    schedule, draws, labels = simulate(EFFECTS, NOISE, beam=1, top=10, first=8, max_seeds=2)
    edited = {labels[d.node_id] for d in draws}
    got = stops(schedule, labels)
    assert {"strong a", "strong b"} <= edited
    assert got["zero a"] == ("pruned", 0) and got["zero b"] == ("pruned", 0) and "zero a" not in edited
    assert got["weak a"] == ("pruned", 0) and "weak b" not in edited
    records = {(labels[r["node_id"]], r["stop_reason"], r["n_samples"]) for r in schedule.records()}
    assert ("zero a", "pruned", 0) in records


def test_the_draws_are_deterministic_and_a_larger_budget_extends_them():
    _, full, _ = simulate(EFFECTS, NOISE, beam=8, top=2)
    _, again, _ = simulate(EFFECTS, NOISE, beam=8, top=2, images=list(reversed(IMAGES)))
    assert full == again  # same inputs (in any order), same draws
    small_schedule, small, labels = simulate(EFFECTS, NOISE, beam=8, top=2, budget=60)
    assert len(small) == 60 and set(small) <= set(full)
    assert "budget" in {s.stop for s in small_schedule.states.values()}
    # the most informative first: every group got its first units before any node a second round
    assert {labels[d.node_id] for d in small[:32]} == {"strong", "zero", "edge", "weak"}


def test_t_quantile_is_exact():
    # table values of Student's t (two-sided)
    for conf, df, want in ((0.95, 1, 12.706), (0.95, 2, 4.303), (0.95, 7, 2.365), (0.99, 5, 4.032),
                           (0.999, 10, 4.587), (0.95, 200, 1.972)):
        assert t_quantile(conf, df) == pytest.approx(want, abs=1e-3)


def test_intervals_are_for_these_images_and_corrected_for_repeated_looks():
    tree = {"domain": "toy", "categories": {f"n{i}": [] for i in range(200)}}
    tax = load_taxonomy(tree)
    images = IMAGES[:10]
    schedule = AdaptiveSchedule(tax.children, images, ["c"], top=10, first=4, max_seeds=4)
    # looks at 4, 6, 9, 14, 21, 32, 40 units: each interval at 1 - 0.05/7
    assert schedule.looks == 7 and schedule.look_confidence == pytest.approx(1 - 0.05 / 7)
    rng = random.Random(7)
    truth, image_effect = {}, {}
    for n in tax.nodes:  # effects vary a lot between images, little between seeds
        centre = rng.choice((0.0, 0.05, 0.3))
        image_effect[n.node_id] = {i: centre + rng.gauss(0, 0.1) for i in images}
        truth[n.node_id] = sum(image_effect[n.node_id].values()) / len(images)  # the effect on these images
    while batch := schedule.next_batch():
        schedule.observe((d.node_id, d.direction, d.image_id, d.seed, "c",
                          image_effect[d.node_id][d.image_id] + random.Random(str(d)).gauss(0, 0.02)) for d in batch)
    estimates = {n: schedule.estimate(n, "add", "c") for n in truth}
    covered = sum(e.low <= truth[n] <= e.high for n, e in estimates.items())
    assert covered >= 0.95 * len(truth)
    # every image drawn, two seeds each: what is left is seed noise, far below the spread between images
    node = tax.nodes[0].node_id
    two = AdaptiveSchedule(tax.children, images, ["c"], first=20, max_seeds=4)
    two.next_batch()
    two.observe((node, "add", i, s, "c", image_effect[node][i] + random.Random(f"{i}{s}").gauss(0, 0.02))
                for i in images for s in (0, 1))
    e = two.estimate(node, "add", "c")
    spread = statistics.stdev(image_effect[node].values()) / len(images) ** 0.5
    assert e.n_samples == 20 and e.low <= truth[node] <= e.high and (e.high - e.low) / 2 < 0.02 < spread
    # one seed of every image: no estimate of the seed noise, so no shrinking on a guess
    one = AdaptiveSchedule(tax.children, images, ["c"], first=10, max_seeds=4)
    one.next_batch()
    one.observe((node, "add", i, 0, "c", image_effect[node][i]) for i in images)
    e = one.estimate(node, "add", "c")
    assert (e.high - e.low) / 2 == pytest.approx(t_quantile(one.look_confidence, 9) * spread)


def _demo_db(tmp_path, name):
    return tmp_path / f"{name}.duckdb"


def test_adaptive_index_end_to_end(tmp_path, demo_images, small_taxonomy):
    images = [str(demo_images)]
    fixed = run_index(_demo_db(tmp_path, "fixed"), images, small_taxonomy, "demo:v1", "demo", beam=0, samples=4,
                      classes=["old"])
    auto = run_index(_demo_db(tmp_path, "auto"), images, small_taxonomy, "demo:v1", "demo", beam=0, samples="auto",
                     top=3, max_seeds=4, classes=["old"])
    assert auto.schedule == "auto" and auto.edits_computed == auto.edits_requested + 6  # + the 6 baselines
    assert auto.edits_requested < fixed.edits_requested
    with Store.open(_demo_db(tmp_path, "fixed"), read_only=True) as store:
        fixed_top = [r["node"] for r in store.top_subtypes("old", 3)]
    with Store.open(_demo_db(tmp_path, "auto"), read_only=True) as store:
        auto_top = [r["node"] for r in store.top_subtypes("old", 3)]
        rows = store._rows("SELECT node, schedule_samples, n_edits, stop_reason FROM node_effects_schedule "
                           "WHERE class_name = 'old' ORDER BY path")
        drawn = store._rows("SELECT count(*) AS n FROM edits WHERE kind = 'single'")[0]["n"]
    assert auto_top[0] == fixed_top[0] == "goatee" and set(auto_top) == set(fixed_top)
    # every sample drawn is stored and counted in the effect views, with its stop reason
    assert drawn == auto.edits_requested
    assert all(r["schedule_samples"] == r["n_edits"] and r["stop_reason"] in ("in", "out", "close", "cap") for r in rows)
    assert sum(r["schedule_samples"] for r in rows) == auto.edits_requested

    # a larger budget extends the same cache: a budgeted run first, then the full one reuses it all
    db = _demo_db(tmp_path, "grow")
    first = run_index(db, images, small_taxonomy, "demo:v1", "demo", beam=0, samples="auto", top=3, max_seeds=4,
                      classes=["old"], budget=40)
    assert first.edits_requested == 40 and first.stop_reasons.get("budget")
    second = run_index(db, images, small_taxonomy, "demo:v1", "demo", beam=0, samples="auto", top=3, max_seeds=4,
                       classes=["old"])
    assert second.edits_requested == auto.edits_requested  # the same draws as a fresh full run
    assert second.edits_reused == 40 + 6 and second.edits_computed == auto.edits_requested - 40
    third = run_index(db, images, small_taxonomy, "demo:v1", "demo", beam=0, samples="auto", top=3, max_seeds=4,
                      classes=["old"])
    assert third.edits_computed == 0
    with Store.open(db, read_only=True) as store:
        latest = store._rows("SELECT DISTINCT stop_reason FROM node_schedule")
    assert "budget" not in {r["stop_reason"] for r in latest}  # the view shows the latest run's reasons


@pytest.mark.parametrize("knobs, message", [
    ({"samples": "many"}, "samples must be a number of seeds or 'auto'"),
    ({"samples": 2, "budget": 10}, "budget only applies to the adaptive schedule"),
    ({"samples": "auto", "budget": 0}, "budget must be at least 1 edit"),
])
def test_bad_adaptive_options_are_one_line_errors(tmp_path, demo_images, small_taxonomy, knobs, message):
    from diffex.errors import OptionError

    with pytest.raises(OptionError, match=message):
        run_index(tmp_path / "x.duckdb", [str(demo_images)], small_taxonomy, "demo:v1", "demo", **knobs)
    assert not (tmp_path / "x.duckdb").exists()


def test_cli_samples_auto(tmp_path, demo_images, small_taxonomy, cli_run):
    result = cli_run("index", "--db", tmp_path / "c.duckdb", "--images", demo_images, "--taxonomy", small_taxonomy,
                     "--classifier", "demo:v1", "--samples", "auto", "--budget", "30", "--classes", "old")
    assert result.exit_code == 0, result.output
    assert "adaptive schedule: 30 node edits" in result.output and "budget" in result.output
    bad = cli_run("index", "--db", tmp_path / "d.duckdb", "--images", demo_images, "--taxonomy", small_taxonomy,
                  "--classifier", "demo:v1", "--samples", "lots")
    assert bad.exit_code == 2 and "--samples must be a number of seeds or 'auto'" in bad.output
