"""`diffex check` (issue 14): a policy gate for CI on the demo world, where demo:v2 relies on
top hats and demo:v1 does not."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

POLICY = """
[[rule]]
node = "top hat"          # a node label or path
class = "old"
max_abs_effect = 0.1

[[rule]]
under = "skin tone"
class = "*"
max_abs_effect = 0.2
bound = "mean"

[[rule]]
node = "headwear > hat > top hat"
class = "old"
against = "demo:v1"
max_growth = 0.1

[[rule]]
class = "old"
against = "demo:v1"
no_new_in_top = 3
"""


@pytest.fixture
def policy(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


def test_check_indexes_a_new_classifier_from_the_cached_edits_only(demo_v1_v2):
    result = demo_v1_v2["check_v2"]
    assert "indexed demo:v2: edits computed 0," in result.stderr
    assert result.exit_code == 1, result.output  # and v2 violates the top hat rule at once
    assert "FAIL" in result.stdout and "top hat" in result.stdout


def test_v1_passes_and_v2_violates_with_junit_and_json(demo_v1_v2, policy, tmp_path, cli_run):
    db = demo_v1_v2["db"]
    v1 = cli_run("check", "--db", db, "--classifier", "demo:v1", "--policy", policy, "--junit", tmp_path / "v1.xml")
    assert v1.exit_code == 0, v1.output
    assert "every rule passes" in v1.stdout

    v2 = cli_run("check", "--db", db, "--classifier", "demo:v2", "--policy", policy, "--junit", tmp_path / "v2.xml", "--json")
    assert v2.exit_code == 1, v2.output
    report = json.loads(v2.stdout)
    status = {r["index"]: r["passed"] for r in report["rules"]}
    assert status == {1: False, 2: True, 3: False, 4: False} and report["passed"] is False
    top_hat = report["rules"][0]
    assert top_hat["violations"][0]["node"] == "headwear > hat > top hat"
    worst = top_hat["violations"][0]
    assert worst["value"] == pytest.approx(max(abs(worst["ci_low"]), abs(worst["ci_high"]))) and worst["value"] > 0.1
    assert report["rules"][2]["worst"] > 0.1  # top hat's |effect| grew against v1
    assert "headwear > hat > top hat" in {v["node"] for v in report["rules"][3]["violations"]}

    for name, failures in (("v1.xml", set()), ("v2.xml", {1, 3, 4})):
        root = ET.parse(tmp_path / name).getroot()
        cases = root.findall("./testsuite/testcase")
        assert len(cases) == 4 and root.get("tests") == "4" and root.get("failures") == str(len(failures))
        failed = {i + 1 for i, c in enumerate(cases) if c.find("failure") is not None}
        assert failed == failures
    case = ET.parse(tmp_path / "v2.xml").getroot().find("./testsuite/testcase")
    assert "top hat" in case.get("name") and "top hat / old" in case.find("failure").text


@pytest.mark.parametrize("rule, message", [
    ('node = "monocle"\nclass = "old"\nmax_abs_effect = 0.1', "unknown node 'monocle'"),
    ('node = "top hat"\nclass = "ancient"\nmax_abs_effect = 0.1', "unknown class 'ancient'"),
    ('node = "top hat"\nclass = "old"\nagainst = "demo:v9"\nmax_growth = 0.1', "unknown classifier 'demo:v9'"),
    ('node = "top hat"\nclass = "old"\nmax_abs_effect = 0.1\nmax_effect = 2', "unknown key 'max_effect'"),
    ('node = "top hat"\nclass = "old"', "give exactly one of"),
    ('class = "old"\nno_new_in_top = 5', "needs against"),
])
def test_a_rule_that_cannot_be_evaluated_is_an_error_not_a_pass(demo_v1_v2, tmp_path, cli_run, rule, message):
    path = tmp_path / "bad.toml"
    path.write_text("[[rule]]\n" + rule + "\n")
    result = cli_run("check", "--db", demo_v1_v2["db"], "--classifier", "demo:v1", "--policy", path)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_an_unknown_classifier_says_how_to_index_it(demo_v1_v2, policy, cli_run):
    result = cli_run("check", "--db", demo_v1_v2["db"], "--classifier", "hf:./my-vit", "--policy", policy)
    assert result.exit_code == 2
    assert "unknown classifier 'hf:./my-vit'" in result.output and "--images PATH --taxonomy FILE" in result.output
    half = cli_run("check", "--db", demo_v1_v2["db"], "--classifier", "demo:v1", "--policy", policy, "--images", "x")
    assert half.exit_code == 2 and "together" in half.output


def test_bad_policy_files(demo_v1_v2, tmp_path, cli_run):
    for text, message in (("[[rule]\n", "not valid TOML"), ("title = 1\n", "must hold [[rule]] tables")):
        path = tmp_path / "p.toml"
        path.write_text(text)
        result = cli_run("check", "--db", demo_v1_v2["db"], "--classifier", "demo:v1", "--policy", path)
        assert result.exit_code == 2 and message in result.output, result.output
    missing = cli_run("check", "--db", demo_v1_v2["db"], "--classifier", "demo:v1", "--policy", tmp_path / "none.toml")
    assert missing.exit_code == 2 and "no policy file" in missing.output
