"""`python:PATH_OR_MODULE:ATTR` editors: the README's example runs as printed, is keyed by its
code and config (not its path), and every malformed plugin fails with one line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from diffex import run_index
from diffex.editing import load_editor
from diffex.errors import DiffexError

README = Path(__file__).resolve().parents[1] / "README.md"
TAXONOMY = {"categories": {"light": ["sun", "lamp"]}}


def readme_example() -> str:
    """The code block after `<!-- example: my_editor.py -->` in the README, verbatim."""
    text = README.read_text()
    found = re.search(r"<!-- example: my_editor\.py -->\n```python\n(.*?)\n```", text, re.S)
    assert found, "the README lost its python: editor example"
    return found.group(1) + "\n"


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.RandomState(5)
    for i in range(2):  # plain photos: the demo editor would refuse them
        Image.fromarray(rng.randint(40, 200, size=(24, 32, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


@pytest.fixture
def example(tmp_path) -> Path:
    path = tmp_path / "plugins" / "my_editor.py"
    path.parent.mkdir()
    path.write_text(readme_example())
    return path


def test_readme_example_indexes_edits_and_reuses_them(example, photos, tmp_path, brightness):
    spec = f"python:{example}:make"
    db = tmp_path / "p.duckdb"
    both = ("add", "remove")
    first = run_index(db, [str(photos)], TAXONOMY, brightness, spec, beam=0, samples=2, directions=both)
    # per image: the baseline + 3 nodes x 2 directions x 2 samples
    assert first.edits_computed == 2 * (1 + 3 * 2 * 2)
    again = run_index(db, [str(photos)], TAXONOMY, brightness, spec, beam=0, samples=2, directions=both)
    assert (again.edits_computed, again.scores_computed, again.editor_id) == (0, 0, first.editor_id)

    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT name, spec FROM editors").fetchall() == [("python", spec)]
        deltas = con.execute(
            "SELECT direction, min(delta_logit), max(delta_logit) FROM edit_deltas WHERE class_name = 'bright' "
            "GROUP BY direction ORDER BY direction").fetchall()
        samples = con.execute(
            "SELECT count(*), count(DISTINCT output_sha256) FROM edits e JOIN edit_nodes en USING (edit_id) "
            "JOIN nodes n USING (node_id) WHERE n.label = 'sun' AND e.direction = 'add'").fetchone()
    finally:
        con.close()
    # the brightness classifier sees what the example does: every add brightens, every remove darkens
    (add, add_lo, _), (remove, _, remove_hi) = deltas
    assert (add, remove) == ("add", "remove") and add_lo > 0 > remove_hi
    # seeds are honoured: 2 images x 2 samples of one node, four different pictures
    assert samples == (4, 4)


def test_id_is_the_code_and_config_not_the_path(example, tmp_path, monkeypatch):
    first = load_editor(f"python:{example}:make")
    moved = tmp_path / "elsewhere" / "renamed.py"
    moved.parent.mkdir()
    shutil.copyfile(example, moved)
    assert load_editor(f"python:{moved}:make").editor_id == first.editor_id
    assert load_editor(f"python:{moved}:Brighten").editor_id != first.editor_id  # another ATTR
    assert first.config["config"] == {"version": 1} and first.config["name"] == "brighten"

    moved.write_text(example.read_text().replace('{"version": 1}', '{"version": 2}'))
    assert load_editor(f"python:{moved}:make").editor_id != first.editor_id  # its config
    moved.write_text(example.read_text() + "# a comment is a code change too\n")
    assert load_editor(f"python:{moved}:make").editor_id != first.editor_id

    # by module name: the name and the module file's bytes
    monkeypatch.syspath_prepend(str(example.parent))
    by_module = load_editor("python:my_editor:make")
    assert by_module.config["code"]["module"] == "my_editor"
    assert by_module.config["code"]["source"] == first.config["code"]["source"]
    assert by_module.editor_id != first.editor_id


BROKEN = '''
from PIL import Image

class NoOpen:
    config = {}

class NotADict:
    config = ["a"]
    def open(self, image, image_id, cache_dir):
        return None

class BadSession:
    def reconstruct(self):
        return "not an image"
    def edit(self, concepts, seed):
        raise RuntimeError("model exploded")

class Bad:
    config = {"v": 1}
    def open(self, image, image_id, cache_dir):
        return BadSession()

class NoEdit:
    config = {}
    def open(self, image, image_id, cache_dir):
        return object()

def raising():
    raise ValueError("no GPU here")

number = 3
'''


@pytest.mark.parametrize("attr, message", [
    ("missing", "has no attribute 'missing'"),
    ("NoOpen", "NoOpen is not an editor (NoOpen): it needs `config` and `open(image, image_id, cache_dir)`"),
    ("number", "number is not an editor (int)"),
    ("NotADict", "config must be a dict, got list"),
    ("raising", "editor factory broken:raising failed: ValueError: no GPU here"),
])
def test_malformed_plugins_fail_at_load_with_one_line(attr, message, tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(BROKEN)
    with pytest.raises(DiffexError, match=re.escape(message)) as err:
        load_editor(f"python:{path}:{attr}")
    assert "\n" not in str(err.value)


def test_a_session_returning_the_wrong_thing_fails_with_one_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(BROKEN)
    image = Image.new("RGB", (8, 8))
    with load_editor(f"python:{path}:Bad").open(image, "x", tmp_path) as session:
        with pytest.raises(DiffexError, match="reconstruct\\(\\) returned str, expected a PIL image"):
            session.reconstruct()
        with pytest.raises(DiffexError, match="edit\\(\\) failed: RuntimeError: model exploded"):
            session.edit((), 0)
    with pytest.raises(DiffexError, match="open\\(\\) returned object, which has no reconstruct\\(\\) method"):
        load_editor(f"python:{path}:NoEdit").open(image, "x", tmp_path)


@pytest.mark.parametrize("spec, message", [
    ("python:{tmp}/nowhere.py:make", "editor module file not found: {tmp}/nowhere.py"),
    ("python:no_such_module_xyz:make", "cannot import editor module 'no_such_module_xyz'"),
    ("python:{tmp}/broken.py:missing", "{tmp}/broken.py has no attribute 'missing'"),
    ("python:{tmp}/broken.py", "python editor spec must be python:PATH_OR_MODULE:ATTR"),
])
def test_cli_reports_bad_python_editor_specs_in_one_line(spec, message, tmp_path, photos, classifier_file, cli_run):
    (tmp_path / "broken.py").write_text(BROKEN)
    tax = tmp_path / "tax.json"
    tax.write_text('{"categories": {"light": ["sun"]}}')
    db = tmp_path / "never.duckdb"
    result = cli_run("index", "--db", db, "--images", photos, "--taxonomy", tax,
                     "--classifier", f"python:{classifier_file}:make", "--editor", spec.format(tmp=tmp_path))
    assert result.exit_code == 1
    assert message.format(tmp=tmp_path) in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not db.exists()
