"""Taxonomy formats: the paper's JSON, the reference code's, node objects with prompts, YAML and
plain outlines all load into the same normalised tree; bad trees fail with one clear line."""

from __future__ import annotations

import json

import pytest

from diffex.errors import DiffexError
from diffex.taxonomy.tree import from_mapping, load_taxonomy, to_nested

from conftest import SMALL_NODES, SMALL_TAXONOMY

SMALL_PATHS = [
    "facial hair", "facial hair > beard", "facial hair > beard > goatee", "facial hair > beard > full beard",
    "facial hair > mustache", "facial hair > mustache > handlebar mustache", "headwear", "headwear > hat",
    "headwear > hat > top hat", "headwear > hat > cap", "hair colour", "hair colour > grey hair", "hair colour > red hair",
]

SMALL_YAML = """\
domain: cartoon faces
categories:
  facial hair:
    beard: [goatee, full beard]
    mustache:
      - handlebar mustache
  headwear:
    hat:
      - top hat
      - cap
  hair colour: [grey hair, red hair]
"""

SMALL_OUTLINE = """\
# domain: cartoon faces
# a comment line: plain-text outlines skip lines starting with '#'
facial hair
    beard
        - goatee
        - Full  Beard
    mustache
        - handlebar mustache
headwear
  hat
    * top hat
    * cap

hair colour
\t- grey hair
\t- red hair
"""

SMALL_MARKDOWN = """\
domain: cartoon faces

# Facial hair
## Beard
- goatee
- full beard
## Mustache
- handlebar mustache

# Headwear
- hat
  - top hat
  - cap

# Hair colour
1. grey hair
2. red hair
"""


def paths(tax):
    return [" > ".join(n.path) for n in tax.nodes]


@pytest.fixture
def small_id():
    return from_mapping(SMALL_TAXONOMY).taxonomy_id


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_paper_json_loads_in_order_with_parents(small_taxonomy):
    tax = load_taxonomy(small_taxonomy)
    assert paths(tax) == SMALL_PATHS and len(tax.nodes) == SMALL_NODES
    assert tax.domain == "cartoon faces" and tax.name == "taxonomy"
    goatee = next(n for n in tax.nodes if n.label == "goatee")
    assert goatee.prompt == "goatee" and tax.by_id()[goatee.parent_id].label == "beard"


def test_reference_code_format(tmp_path):
    """The public DiffEx code's nested file (its accessories.json): domain + categories -> item -> keywords."""
    ref = {"domain": "people", "categories": {"accessories": {"hat": ["fedora", "Beanie", "baseball cap"]}}}
    tax = load_taxonomy(write(tmp_path, "accessories.json", json.dumps(ref)))
    assert paths(tax) == ["accessories", "accessories > hat", "accessories > hat > fedora",
                          "accessories > hat > beanie", "accessories > hat > baseball cap"]
    assert tax.domain == "people"


def test_dict_of_dicts_and_node_objects_give_the_same_tree(small_id):
    dicts = {"facial hair": {"beard": {"goatee": {}, "full beard": None}, "mustache": {"handlebar mustache": {}}},
             "headwear": {"hat": {"top hat": [], "cap": {}}}, "hair colour": {"grey hair": {}, "red hair": {}}}
    objects = [
        {"name": "facial hair", "subtypes": [
            {"name": "beard", "subtypes": ["goatee", {"label": "full beard"}]},
            {"name": "mustache", "children": [{"name": "handlebar mustache", "description": "ignored"}]}]},
        {"name": "headwear", "subtypes": [{"name": "hat", "subtypes": ["top hat", "cap"]}]},
        {"label": "hair colour", "children": ["grey hair", "red hair"]},
    ]
    assert from_mapping({"domain": "cartoon faces", "categories": dicts}).taxonomy_id == small_id
    assert from_mapping({"domain": "cartoon faces", "categories": objects}).taxonomy_id == small_id


def test_per_node_prompts_in_both_styles(small_id):
    tree = json.loads(json.dumps(SMALL_TAXONOMY))
    tree["categories"]["facial hair"]["beard"] = [{"label": "Goatee", "prompt": "a  small goatee beard"}, "full beard"]
    tree["categories"]["headwear"] = {"hat": {"prompt": "a hat on the head", "children": ["top hat", "cap"]}}
    tax = from_mapping(tree)
    prompts = {n.label: n.prompt for n in tax.nodes}
    assert prompts["goatee"] == "a small goatee beard" and prompts["hat"] == "a hat on the head"
    assert prompts["cap"] == "cap" and prompts["headwear"] == "headwear"
    assert tax.taxonomy_id != small_id  # the prompt is what gets edited, so it is part of the identity
    assert from_mapping(to_nested(tax)).taxonomy_id == tax.taxonomy_id


def test_export_round_trip_keeps_the_id(small_id):
    nested = to_nested(from_mapping(SMALL_TAXONOMY))
    assert nested["categories"]["hair colour"] == ["grey hair", "red hair"]
    assert from_mapping(json.loads(json.dumps(nested))).taxonomy_id == small_id


def test_yaml_matches_json(tmp_path, small_id):
    tax = load_taxonomy(write(tmp_path, "small.yaml", SMALL_YAML))
    assert tax.taxonomy_id == small_id and tax.name == "small"
    # plain scalars stay text: `no`, `on` and `1920s` are labels, not booleans or numbers
    odd = load_taxonomy(write(tmp_path, "odd.yml", "style:\n  no: [on, 1920s]\n  yes:\n"))
    assert paths(odd) == ["style", "style > no", "style > no > on", "style > no > 1920s", "style > yes"]


@pytest.mark.parametrize("text,needle", [
    ("a:\n  b: []\na:\n  c: []\n", "duplicate key 'a' (line 3)"),
    ("a: [b, c\n", "not valid YAML"),
    ("a: &x [b, c]\nd: *x\n", "alias"),
    ("", "is empty"),
])
def test_bad_yaml(tmp_path, text, needle):
    with pytest.raises(DiffexError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_taxonomy(write(tmp_path, "bad.yaml", text))


def test_outlines_match_json(tmp_path, small_id):
    txt = load_taxonomy(write(tmp_path, "small.txt", SMALL_OUTLINE))
    assert paths(txt) == SMALL_PATHS and txt.taxonomy_id == small_id
    md = load_taxonomy(write(tmp_path, "small.md", SMALL_MARKDOWN))
    assert paths(md) == SMALL_PATHS and md.taxonomy_id == small_id


def test_outline_prompt_and_dedent(tmp_path):
    tax = load_taxonomy(write(tmp_path, "o.txt", "a\n    b :: a  bee\n  c\nd\n"))
    assert [(" > ".join(n.path), n.prompt) for n in tax.nodes] == [("a", "a"), ("a > b", "a bee"), ("a > c", "c"), ("d", "d")]


@pytest.mark.parametrize("data,needle", [
    ({"hats": ["cap", "  "]}, "empty label"),
    ({"hats": {"cap": {"hats": []}}}, "cycle: hats > cap > hats"),
    ({"a": ["cap"], "b": ["Cap"]}, "'cap' appears twice (a > cap and b > cap)"),
    ({"a": ["cap", "CAP "]}, "'cap' appears twice"),
    ({"a": ["x" * 121]}, "longer than 120 characters"),
    ({"a": [7]}, "label 7 is not text"),
    ({"a": [["b"]]}, "list inside a list under a"),
    ({"a": 3.5}, "neither a list nor an object"),
    ({"a": [{"label": "b", "prompt": " "}]}, "prompt of a > b is empty"),
    ({"a": [{"name": "b", "children": [], "subtypes": []}]}, "both 'children' and 'subtypes'"),
    ({}, "non-empty JSON object"),
    ({"categories": {"a": []}, "domain": 5}, "'domain' must be text"),
])
def test_bad_trees_are_one_line_errors(data, needle):
    with pytest.raises(DiffexError) as info:
        from_mapping(data)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_absurd_sizes():
    deep: dict = {}
    level = deep
    for i in range(9):
        level[f"l{i}"] = {}
        level = level[f"l{i}"]
    with pytest.raises(DiffexError, match="deeper than 8 levels"):
        from_mapping(deep)
    wide = {f"g{i}": [f"g{i} leaf {j}" for j in range(50)] for i in range(100)}  # 5100 nodes
    with pytest.raises(DiffexError, match="more than 5000 nodes"):
        from_mapping(wide)


def test_lenient_mode_merges_siblings_and_drops_repeats():
    notes: list[str] = []
    tax = from_mapping({"hat": ["Beanie", "beanie", "hat"], "Hat ": {"cap": []}, "bag": ["beanie", "tote"]},
                       merge_duplicates=True, notes=notes)
    assert paths(tax) == ["hat", "hat > beanie", "hat > cap", "bag", "bag > tote"]
    assert notes == ["merged duplicate 'hat'", "merged duplicate 'hat > beanie'",
                     "dropped 'hat > hat': the label repeats an ancestor",
                     "dropped 'bag > beanie': 'beanie' is already at 'hat > beanie'"]


def test_index_reads_yaml_and_outline_and_rejects_bad_yaml(tmp_path, demo_images, brightness, cli_run):
    db = tmp_path / "y.duckdb"
    yml = write(tmp_path, "t.yaml", "facial hair:\n  beard: [goatee]\n")
    result = cli_run("index", "--db", db, "--images", demo_images, "--taxonomy", yml, "--classifier", brightness,
                     "--beam", "0", "--samples", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["nodes_scored"] == 3
    bad = write(tmp_path, "bad.yml", "a:\n  - b\na:\n  - c\n")
    result = cli_run("index", "--db", db, "--images", demo_images, "--taxonomy", bad, "--classifier", brightness)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("Error: taxonomy has a duplicate key 'a' (line 3)")
