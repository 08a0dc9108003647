"""The demo editor's misbehaviour options (issue 13): seeded, part of the editor id, and the
plain demo editor exact and unchanged."""

from __future__ import annotations

from dataclasses import replace

import pytest
from PIL import Image

from diffex import DiffexError
from diffex.demo.world import render, sample_spec, save_png, spec_from_image
from diffex.editing import load_editor
from diffex.editing.demo import apply_concepts
from diffex.types import Concept

PLAIN_CONFIG = {"world_version": "faces-1", "size": 64, "sampling": "image-seed-prompt"}


def test_plain_demo_keeps_its_config_and_options_change_the_id():
    plain = load_editor("demo")
    assert plain.config == PLAIN_CONFIG  # the id every existing store holds
    a = load_editor("demo?entangle=beanie:top hat:0.5&fail=round glasses:0.6")
    b = load_editor("demo?fail=round glasses:0.6&entangle=beanie:top hat:0.5")
    c = load_editor("demo?entangle=beanie:top hat:0.4&fail=round glasses:0.6")
    assert a.editor_id == b.editor_id != plain.editor_id
    assert c.editor_id not in (a.editor_id, plain.editor_id)
    assert load_editor("demo?entangle=beanie:top hat:0").editor_id != plain.editor_id  # a rule, even a null one, is named


@pytest.mark.parametrize("spec, message", [
    ("demo?x=1", "unknown option 'x'"),
    ("demo?entangle=beanie:0.5", "expected A:B:P"),
    ("demo?fail=1.5", "in [0, 1]"),
    ("demo?entangle=beanie:tophat:0.5", "'tophat' is not a node"),
    ("demo?spill=beard:grey hair:0.3", "not a leaf"),
    ("demo:v1", "takes no model"),
])
def test_bad_options_are_one_line_errors(spec, message):
    with pytest.raises(DiffexError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_editor(spec)


def _faces(n, **attrs):
    out = []
    for seed in range(n):
        spec = sample_spec(seed)
        for slot, value in attrs.items():
            spec = spec.with_attr(slot.replace("_", " "), value)
        out.append(spec)
    return out


def test_entangle_brings_the_second_concept_at_its_rate_and_is_seeded(tmp_path):
    rules = load_editor("demo?entangle=beanie:top hat:0.5").rules
    faces = _faces(300, headwear="none")
    edited = [apply_concepts(f, [Concept("beanie")], seed=1, rules=rules) for f in faces]
    assert all(e.attrs["headwear"] == "beanie" for e in edited)
    share = sum(e.extras == ("top hat",) for e in edited) / len(edited)
    assert 0.42 < share < 0.58
    again = [apply_concepts(f, [Concept("beanie")], seed=1, rules=rules) for f in faces]
    assert again == edited  # same image, seed and prompt: the same draw
    # other prompts and the exact editor are untouched
    assert all(apply_concepts(f, [Concept("cap")], seed=1, rules=rules) == apply_concepts(f, [Concept("cap")], seed=1)
               for f in faces[:50])
    # a face that keeps the extra keeps it through its PNG metadata
    face = next(e for e in edited if e.extras)
    assert spec_from_image(Image.open(save_png(face, tmp_path / "f.png"))) == face
    assert render(face).tobytes() != render(replace(face, extras=())).tobytes()  # the top hat is drawn


def test_spill_follows_what_was_drawn_and_fail_changes_nothing():
    rules = load_editor("demo?spill=stubble:grey hair:1&fail=round glasses:1").rules
    faces = _faces(60, facial_hair="none", hair_colour="black hair")
    for f in faces:
        e = apply_concepts(f, [Concept("beard")], seed=3, rules=rules)  # a group edit landing on stubble spills too
        assert (e.attrs["hair colour"] == "grey hair") == (e.attrs["facial hair"] == "stubble")
        assert apply_concepts(f, [Concept("round glasses")], seed=3, rules=rules) == f
    assert render(faces[0]).info["diffex-demo"] == render(sample_spec(0).with_attr("facial hair", "none")
                                                           .with_attr("hair colour", "black hair")).info["diffex-demo"]
    assert "extras" not in render(faces[0]).info["diffex-demo"]
