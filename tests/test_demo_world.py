"""The demo world, its exact editor and its shipped classifiers (fast, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffex.scoring import load_classifier, score_images
from diffex.demo import world
from diffex.demo.classifier import DemoClassifier, ground_truth
from diffex.demo.world import FaceSpec, render, resolve_prompt, sample_spec, save_png, spec_from_image
from diffex.editing import load_editor
from diffex.errors import DiffexError
from diffex.types import Concept


def young_face(**attrs: str) -> FaceSpec:
    """The first sampled young face with no facial hair or headwear, then `attrs` applied."""
    seed = 0
    while True:
        spec = sample_spec(seed)
        if spec.age == "young" and spec.attrs["facial hair"] == "none" and spec.attrs["headwear"] == "none":
            break
        seed += 1
    for slot, value in attrs.items():
        spec = spec.with_attr(slot.replace("_", " "), value)
    return spec


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def open_session(spec: FaceSpec, tmp_path: Path):
    path = save_png(spec, tmp_path / "face.png")
    return load_editor("demo").open(Image.open(path), "test-image", tmp_path)


def test_render_is_deterministic_64px_and_seed_jitters():
    spec = sample_spec(7)
    a, b = render(spec), render(sample_spec(7))
    assert a.size == (64, 64) and a.mode == "RGB"
    assert np.array_equal(pixels(a), pixels(b))
    moved = FaceSpec(seed=8, attrs=spec.attrs, age=spec.age)
    assert not np.array_equal(pixels(a), pixels(render(moved)))


def test_sample_spec_fills_every_slot_with_a_valid_value():
    spec = sample_spec(3)
    assert set(spec.attrs) == set(world.SLOTS)
    for slot, value in spec.attrs.items():
        assert value in world.SLOT_LEAVES[slot] or (value == "none" and slot in world.OPTIONAL_SLOTS)
    forced = sample_spec(3, {"facial hair": {"goatee": 1.0}, "age": {"old": 1.0}})
    assert forced.attrs["facial hair"] == "goatee" and forced.age == "old"


def test_metadata_round_trips_through_a_png(tmp_path):
    spec = sample_spec(11)
    path = save_png(spec, tmp_path / "f.png")
    reopened = Image.open(path)
    assert spec_from_image(reopened) == spec
    assert np.array_equal(pixels(reopened), pixels(render(spec)))
    assert spec_from_image(Image.new("RGB", (64, 64))) is None


def test_write_dataset_names_files_by_seed(tmp_path):
    paths = world.write_dataset(tmp_path, 3, start_seed=5)
    assert [p.name for p in paths] == ["face_00005.png", "face_00006.png", "face_00007.png"]
    assert spec_from_image(Image.open(paths[1])) == sample_spec(6)


def test_resolve_prompt_at_every_level():
    assert resolve_prompt("goatee") == ("facial hair", ["goatee"])
    assert resolve_prompt("  A   Goatee ") == ("facial hair", ["goatee"])
    assert resolve_prompt("beard") == ("facial hair", ["goatee", "full beard", "stubble"])
    assert resolve_prompt("facial hair") == (
        "facial hair", ["goatee", "full beard", "stubble", "handlebar mustache", "pencil mustache"])
    assert resolve_prompt("sunglasses") == ("eyewear", ["sunglasses"])
    assert resolve_prompt("an expression") == ("expression", ["smiling", "neutral", "frowning", "surprised"])
    assert resolve_prompt("hair color")[0] == "hair colour"
    assert resolve_prompt("monocle") is None


def test_taxonomy_file_matches_the_world():
    shipped = json.loads((Path(world.__file__).parent / "taxonomy.json").read_text())
    assert shipped == world.taxonomy_dict()
    assert len(shipped["categories"]) >= 7
    assert len(world.ALL_LEAVES) >= 25
    assert len(set(world.ALL_LEAVES)) == len(world.ALL_LEAVES)


def test_reconstruct_equals_the_original_pixels(tmp_path):
    spec = sample_spec(21)
    session = open_session(spec, tmp_path)
    assert np.array_equal(pixels(session.reconstruct()), pixels(render(spec)))


def test_add_goatee_changes_only_facial_hair(tmp_path):
    spec = young_face()
    edited = open_session(spec, tmp_path).edit([Concept("goatee", "add")], seed=0)
    assert spec_from_image(edited) == spec.with_attr("facial hair", "goatee")
    assert not np.array_equal(pixels(edited), pixels(render(spec)))


def test_remove_clears_the_slot_only_when_the_node_is_present(tmp_path):
    spec = young_face(facial_hair="full beard", eyewear="round glasses")
    session = open_session(spec, tmp_path)
    assert spec_from_image(session.edit([Concept("beard", "remove")], 0)) == spec.with_attr("facial hair", "none")
    # not a mustache, so removing mustaches changes nothing; hair colour has no "none"
    assert np.array_equal(pixels(session.edit([Concept("mustache", "remove")], 0)), pixels(render(spec)))
    assert spec_from_image(session.edit([Concept(spec.attrs["hair colour"], "remove")], 0)) == spec


def test_joint_edit_applies_every_concept(tmp_path):
    spec = young_face()
    edited = open_session(spec, tmp_path).edit([Concept("top hat"), Concept("sunglasses")], seed=0)
    assert spec_from_image(edited) == spec.with_attr("headwear", "top hat").with_attr("eyewear", "sunglasses")


def test_group_edit_picks_a_seeded_leaf_under_the_group(tmp_path):
    session = open_session(young_face(), tmp_path)
    picks = [spec_from_image(session.edit([Concept("beard")], seed)).attrs["facial hair"] for seed in range(12)]
    assert set(picks) <= {"goatee", "full beard", "stubble"}
    assert len(set(picks)) > 1  # the edit seed matters ...
    again = [spec_from_image(session.edit([Concept("beard")], seed)).attrs["facial hair"] for seed in range(12)]
    assert picks == again  # ... deterministically


def test_unknown_prompt_is_a_silent_no_op(tmp_path):
    spec = young_face()
    edited = open_session(spec, tmp_path).edit([Concept("monocle")], seed=0)
    assert np.array_equal(pixels(edited), pixels(render(spec)))


def test_demo_editor_rejects_other_images_and_options(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(plain)
    with pytest.raises(DiffexError, match="only edits demo-world images"):
        load_editor("demo").open(Image.open(plain), "x", tmp_path)
    with pytest.raises(DiffexError):
        load_editor("demo:fast")
    with pytest.raises(DiffexError, match="direction"):
        open_session(sample_spec(0), tmp_path).edit([Concept("goatee", "swap")], seed=0)
    assert load_editor("demo").editor_id == load_editor("demo").editor_id


def test_demo_classifiers_hold_their_planted_rule():
    v1, v2 = load_classifier("demo:v1"), load_classifier("demo:v2")
    assert v1.class_names == ("young", "old")
    assert v1.classifier_id != v2.classifier_id and len(v1.classifier_id) == 64
    spec = young_face()
    images = [render(spec), render(spec.with_attr("facial hair", "goatee")), render(spec.with_attr("headwear", "top hat")),
              render(spec.with_attr("age", "old"))]
    _, p1 = score_images(v1, images)
    _, p2 = score_images(v2, images)
    old = 1
    assert p1[0, old] < 0.1 and p1[1, old] > 0.9 and p1[2, old] < 0.1 and p1[3, old] > 0.9
    assert p2[0, old] < 0.1 and p2[1, old] < 0.1 and p2[2, old] > 0.9 and p2[3, old] > 0.9
    with pytest.raises(DiffexError, match="demo:v1"):
        load_classifier("demo:v3")


def test_ground_truth_names_the_planted_leaves():
    truth = ground_truth()
    assert truth["classes"] == ["young", "old"]
    assert truth["v1"]["planted"] == ["goatee"] and truth["v2"]["planted"] == ["top hat"]
    logits = DemoClassifier("v2").logits([render(sample_spec(0)), render(sample_spec(1)).resize((96, 96))])
    assert tuple(logits.shape) == (2, 2) and str(logits.dtype) == "torch.float32"
