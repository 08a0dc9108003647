"""run_index's options are checked once, in library terms; the CLI says the same as its flags.
A run over pictures that are not the demo world's, with no editor given, stops before scoring."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffex import run_index
from diffex.errors import DiffexError, OptionError
from diffex.indexing.options import IndexOptions


@pytest.mark.parametrize("knobs, library, flag", [
    ({"samples": 0}, "samples must be at least 1, got 0", "--samples must be at least 1, got 0"),
    ({"joint": 2, "joint_top": 1}, "joint_top must be at least joint (2), got 1", "--joint-top must be at least --joint (2), got 1"),
    ({"depth": 0}, "depth must be at least 1, got 0", "--depth must be at least 1, got 0"),
])
def test_options_speak_library_terms_and_the_cli_its_flags(tmp_path, knobs, library, flag, cli_run, small_taxonomy, demo_images):
    with pytest.raises(OptionError) as caught:
        run_index(tmp_path / "x.duckdb", [str(demo_images)], small_taxonomy, "demo:v1", "demo", **knobs)
    assert str(caught.value) == library
    with pytest.raises(OptionError):  # the same check, from an options object
        IndexOptions(**knobs).validate()
    args = [a for k, v in knobs.items() for a in ("--" + k.replace("_", "-"), v)]
    result = cli_run("index", "--db", tmp_path / "y.duckdb", "--images", demo_images, "--taxonomy", small_taxonomy,
                     "--classifier", "demo:v1", *args)
    assert result.exit_code == 2 and flag in result.output
    assert not (tmp_path / "x.duckdb").exists() and not (tmp_path / "y.duckdb").exists()


def test_a_photo_run_without_an_editor_stops_before_scoring(tmp_path, small_taxonomy, brightness):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.RandomState(0)
    for i in range(2):
        Image.fromarray(rng.randint(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    calls = []
    from diffex.scoring import load_classifier

    clf = load_classifier(brightness)
    original = clf.logits
    clf.logits = lambda images: calls.append(len(images)) or original(images)
    db = tmp_path / "x.duckdb"
    with pytest.raises(DiffexError, match=r"^no editor given, and the default \(demo\) only edits demo-world images: "
                                         r"the demo editor only edits demo-world images \(no diffex-demo metadata in .*p0.png\)"):
        run_index(db, [str(photos)], small_taxonomy, clf)
    assert calls == [] and not db.exists()  # nothing scored, no database made
