"""The bad-input catalogue (issue 9, section 3), through the real CLI and `run_index` on real
DuckDB files. The rule: bad input gets one clear line and exit status 1 (2 for usage), never a
traceback or an "internal error", and never loses what a store already holds. Input problems
(images, taxonomies, classifiers) are found before a database is created or opened."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import BRIGHTNESS_CLASSIFIER, SMALL_NODES, SMALL_TAXONOMY
from PIL import Image

from diffex import run_index
from diffex.demo.world import METADATA_KEY, write_dataset
from diffex.editing.base import EditSession, Editor
from diffex.errors import DiffexWarning
from diffex.store.core import Store

IDX = ("--beam", "0", "--samples", "1")
N_IMAGES = 4
ALL_EDITS = N_IMAGES * (SMALL_NODES + 1)  # every node and the null-edit baseline, one seed
ALL_SCORES = 2 * (N_IMAGES + ALL_EDITS)  # two classes, originals and edits

# Classifiers that go wrong in the ways the issue lists. Different gains give different weight
# hashes, so each is a new classifier even against a store that already holds `make`.
MORE_CLASSIFIERS = '''
from pathlib import Path

FAIL_MARKER = Path(__file__).with_name("fail-mid-run")

class FailsMidRun(Brightness):
    """Raises on its 4th call while FAIL_MARKER exists: a model crashing after some commits."""
    batch_size = 2

    def __init__(self):
        super().__init__(3.0)
        self.calls = 0

    def logits(self, images):
        self.calls += 1
        if self.calls >= 4 and FAIL_MARKER.exists():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().logits(images)

class ShapeByBatch(Brightness):
    def logits(self, images):  # right for the one-image check, one column short for a batch
        out = super().logits(images)
        return out if len(images) == 1 else out[:, :1]

class NanLater(Brightness):
    calls = 0
    def logits(self, images):
        self.calls += 1
        out = super().logits(images)
        if self.calls > 1:
            out[0, 0] = float("nan")
        return out

class Inf(Brightness):
    def logits(self, images):
        return torch.full((len(images), 2), float("inf"))

class ShiftingClasses(Brightness):
    calls = 0
    @property
    def class_names(self):
        return ["dark", "bright"] if self.calls < 2 else ["bright", "dark"]
    def logits(self, images):
        self.calls += 1
        return super().logits(images)

def make_fails_mid_run():
    return FailsMidRun()

def make_shape_by_batch():
    return ShapeByBatch(6.0)

def make_nan_later():
    return NanLater(5.0)

def make_inf():
    return Inf(7.0)

def make_shifting_classes():
    return ShiftingClasses(8.0)
'''


# ----------------------------------------------------------------------------- helpers
def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def counts(db: Path) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("images", "nodes", "edits", "scores")}
    finally:
        con.close()


def clean_exit(result, code: int) -> None:
    """Exit `code` through click's own exit path: an escaped exception would also read exit 1."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit) or result.exception is None, repr(result.exception)
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output


def one_line_error(result, code: int, *needles: str) -> str:
    clean_exit(result, code)
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output
    return result.output


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height and that holds no pixels: opening it is cheap,
    decoding it fails, so an error naming its size proves it was refused before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def pixel_id(width: int, height: int, rgb: bytes) -> str:
    """The documented image id, computed without diffex: sha256 of 'WxH:' and the RGB bytes."""
    return hashlib.sha256(f"{width}x{height}:".encode() + rgb).hexdigest()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-input")
    write_dataset(root / "faces", N_IMAGES, start_seed=500)
    (root / "taxonomy.json").write_text(json.dumps(SMALL_TAXONOMY))
    (root / "clf").mkdir()
    (root / "clf" / "models.py").write_text(BRIGHTNESS_CLASSIFIER + MORE_CLASSIFIERS)
    return {"root": root, "faces": root / "faces", "taxonomy": root / "taxonomy.json", "models": root / "clf" / "models.py"}


def clf(inputs, factory: str = "make") -> str:
    return f"python:{inputs['models']}:{factory}"


@pytest.fixture(scope="module")
def kept(inputs) -> Path:
    """A store with everything committed; input errors must leave its bytes as they are."""
    db = inputs["root"] / "kept" / "kept.duckdb"
    stats = run_index(db, [str(inputs["faces"])], inputs["taxonomy"], clf(inputs), "demo", beam=0, samples=1)
    assert (stats.images, stats.edits_computed) == (N_IMAGES, ALL_EDITS)
    assert counts(db) == {"images": N_IMAGES, "nodes": SMALL_NODES, "edits": ALL_EDITS, "scores": ALL_SCORES}
    return db


@pytest.fixture
def kept_copy(kept, tmp_path) -> Path:
    db = tmp_path / "copy" / "kept.duckdb"
    db.parent.mkdir()
    shutil.copyfile(kept, db)
    return db


def refused(cli_run, tmp_path, kept, args, code, *needles) -> str:
    """`index` with bad input: one line, the exit code, no database created at a new path and
    not a byte changed in an existing store."""
    fresh = tmp_path / "fresh" / "new.duckdb"
    before = sha(kept)
    for db in (fresh, kept):
        out = one_line_error(cli_run("index", "--db", db, *map(str, args)), code, *needles)
    assert not fresh.parent.exists(), "a database (or its folder) was created for bad input"
    assert sha(kept) == before
    return out


# ----------------------------------------------------------------------------- images refused
def _truncated_png(d: Path, faces: Path) -> Path:
    data = (faces / "face_00500.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    return d / "truncated.png"


def _empty_file(d: Path, faces: Path) -> Path:
    (d / "empty.png").write_bytes(b"")
    return d / "empty.png"


def _one_pixel(d: Path, faces: Path) -> Path:
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "pixel.png")
    return d / "pixel.png"


def _bomb(d: Path, faces: Path) -> Path:  # 10^10 pixels: PIL itself raises at 2x its limit
    return png_header_only(d / "bomb.png", 100_000, 100_000)


def _bomb_under_twice(d: Path, faces: Path) -> Path:  # 10^8 pixels: PIL would only warn, then decode
    return png_header_only(d / "big.png", 10_000, 10_000)


def _text_as_png(d: Path, faces: Path) -> Path:
    (d / "notes.png").write_text("not a picture")
    return d / "notes.png"


def _not_demo(d: Path, faces: Path) -> Path:  # a real photo-like PNG, but the demo editor needs its metadata
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / "photo.png")
    return d / "photo.png"


def _damaged_metadata(d: Path, faces: Path) -> Path:
    from PIL.PngImagePlugin import PngInfo

    face, = write_dataset(d / "other", 1, start_seed=600)  # pixels of its own (not a duplicate of a face given)
    info = PngInfo()
    info.add_text(METADATA_KEY, '{"world_version": ')
    Image.open(face).save(d / "damaged.png", pnginfo=info)
    return d / "damaged.png"


def _only_broken_folder(d: Path, faces: Path) -> Path:
    folder = d / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.jpg").write_text("no")
    return folder


IMAGE_CASES = {
    "truncated png": (_truncated_png, ["cannot read image", "truncated"]),
    "0-byte file": (_empty_file, ["not an image file"]),
    "1x1 image": (_one_pixel, ["is 1x1 pixels; diffex needs at least 8x8"]),
    "decompression bomb": (_bomb, ["10000000000 pixels, more than the limit of 89478485", "refused before decoding"]),
    "bomb under 2x PIL's limit": (_bomb_under_twice, ["100000000 pixels (10000x10000), more than the limit", "refused before decoding"]),
    "text file named .png": (_text_as_png, ["not an image file"]),
    "non-demo image, demo editor": (_not_demo, ["demo editor only edits demo-world images"]),
    "damaged demo metadata": (_damaged_metadata, ["diffex-demo metadata of this image is damaged"]),
    "folder of only broken files": (_only_broken_folder, ["no usable images among 2 files (e.g. ", "a.png: not an image file)"]),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_bad_image_is_refused_before_any_database(case, inputs, kept, tmp_path, cli_run):
    make, needles = IMAGE_CASES[case]
    bad = make(tmp_path, inputs["faces"])
    good = [] if bad.is_dir() else ["--images", inputs["faces"]]  # a folder's bad files alone; a bad file among good ones
    refused(cli_run, tmp_path, kept, [*good, "--images", bad, "--taxonomy", inputs["taxonomy"],
                                      "--classifier", clf(inputs), *IDX], 1, *needles)


# ----------------------------------------------------------------------------- images accepted
class Brighten(Editor):
    """A pixel editor for images without demo metadata: each concept adds 40 to every channel."""

    name = "brighten"
    config = {"op": "+40 per concept"}

    def open(self, image, image_id, cache_dir):
        return _BrightenSession(image)


class _BrightenSession(EditSession):
    def __init__(self, image):
        self.image = image

    def reconstruct(self):
        return self.image

    def edit(self, concepts, seed):
        return Image.fromarray(np.clip(np.asarray(self.image, dtype=np.int16) + 40 * len(concepts), 0, 255).astype(np.uint8))


def test_unusual_formats_load_as_documented(inputs, tmp_path):
    """CMYK, 16-bit, palette with transparency, animated GIF (first frame) and EXIF rotation
    (applied): each is indexed, and its id is the documented hash of the pixels it shows."""
    d = tmp_path / "formats"
    d.mkdir()
    plain = np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(plain).save(d / "plain.png")
    Image.new("CMYK", (16, 16), (255, 0, 255, 0)).save(d / "cmyk.jpg", quality=95)  # green in CMYK
    Image.fromarray(np.full((16, 16), 40_000, dtype=np.uint16)).save(d / "grey16.png")
    Image.new("RGBA", (16, 16), (0, 255, 255, 128)).convert("P").save(d / "palette.png")  # alpha as tRNS bytes
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    sideways = np.zeros((8, 16, 3), dtype=np.uint8)
    sideways[:, :8] = (255, 255, 0)
    sideways[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(sideways).save(d / "rotated.png", exif=exif)

    db = tmp_path / "formats.duckdb"
    with warnings.catch_warnings():  # no warning: neither diffex's nor PIL's about palette transparency
        warnings.filterwarnings("error", category=UserWarning, module="PIL")
        warnings.filterwarnings("error", category=DiffexWarning)
        stats = run_index(db, [str(d)], {"effects": ["brightness"]}, clf(inputs), Brighten(), beam=0, samples=1)
    assert stats.images == 6 and stats.images_skipped == 0
    with Store.open(db, read_only=True) as store:
        stored = {Path(r["uri"]).name: r for r in store._rows("SELECT image_id, uri, width, height FROM images")}
    upright = np.rot90(sideways, k=-1)  # what a viewer shows: 16 high, 8 wide
    assert (stored["rotated.png"]["width"], stored["rotated.png"]["height"]) == (8, 16)
    assert stored["rotated.png"]["image_id"] == pixel_id(8, 16, np.ascontiguousarray(upright).tobytes())
    assert stored["plain.png"]["image_id"] == pixel_id(20, 12, plain.tobytes())  # ordinary ids unchanged
    assert stored["grey16.png"]["image_id"] == pixel_id(16, 16, bytes([40_000 >> 8]) * 3 * 256)  # not clipped white
    assert stored["palette.png"]["image_id"] == pixel_id(16, 16, bytes([0, 255, 255]) * 256)  # alpha dropped
    assert stored["animated.gif"]["image_id"] == pixel_id(16, 16, bytes([255, 0, 0]) * 256)  # first frame
    green = np.asarray(Image.open(d / "cmyk.jpg").convert("RGB"), dtype=int)  # JPEG is lossy: the colour, roughly
    assert green[..., 1].min() > 240 and green[..., [0, 2]].max() < 15
    assert stored["cmyk.jpg"]["image_id"] == pixel_id(16, 16, green.astype(np.uint8).tobytes())


def test_folder_of_10000_files_skips_non_images_with_a_count(inputs, tmp_path, cli_run):
    folder = tmp_path / "many"
    faces = write_dataset(folder, N_IMAGES, start_seed=500)
    data = [f.read_bytes() for f in faces]
    for i in range(2000):  # copies: the same pixels are one image
        (folder / f"copy_{i:05d}.png").write_bytes(data[i % N_IMAGES])
    for i in range(7000):
        (folder / f"note_{i:05d}.txt").write_bytes(b"x")
    for i in range(10_000 - 2000 - 7000 - N_IMAGES):
        (folder / f"broken_{i:05d}.png").write_bytes(b"not a png")
    assert sum(1 for _ in folder.iterdir()) == 10_000
    db = tmp_path / "many.duckdb"
    t0 = time.perf_counter()
    result = cli_run("index", "--db", db, "--images", folder, "--taxonomy", inputs["taxonomy"], "--classifier", clf(inputs),
                     *IDX, "--json")
    seconds = time.perf_counter() - t0
    clean_exit(result, 0)
    assert result.stderr.splitlines() == [
        "Warning: skipped 7996 of 10000 files that are not usable images: 7000: not an image file by name "
        "(e.g. note_00000.txt); 996: not an image file (e.g. broken_00000.png)"]
    stats = json.loads(result.stdout)
    assert (stats["images"], stats["images_skipped"], stats["edits_computed"]) == (N_IMAGES, 7996, ALL_EDITS)
    assert counts(db)["images"] == N_IMAGES
    assert seconds < 60, f"10,000 files took {seconds:.1f} s"  # about 3 s on a 2-core machine


# ----------------------------------------------------------------------------- taxonomies
def _nested(depth: int) -> dict:
    tree: dict = {}
    level = tree
    for i in range(depth):
        level[f"level {i}"] = {}
        level = level[f"level {i}"]
    return tree


TAXONOMY_CASES = {
    "mistyped top-level key": ({"domain": "faces", "categorys": {"facial hair": ["goatee"]}},
                               ["unknown top-level taxonomy key 'categorys' (did you mean 'categories'?)",
                                "categories, domain, name"]),
    "unknown key beside categories": ({"categories": {"hats": ["cap"]}, "version": 2},
                                      ["unknown top-level taxonomy key 'version'", "categories, domain, name"]),
    "domain without categories": ({"domain": "faces", "facial hair": ["goatee"]},
                                  ["top-level 'domain' but no \"categories\""]),
    "10,000 nodes": ({f"group {i}": [f"group {i} leaf {j}" for j in range(99)] for i in range(100)},
                     ["more than 5000 nodes (the limit"]),
    "depth 12": (_nested(12), ["deeper than 8 levels (the limit)"]),
    "100,000 nested brackets": ("[" * 100_000 + "]" * 100_000, ["nested too deeply to read"]),
    "control character": ({"hats": ["top\x1b[31mhat"]}, ["contains the control character U+001B"]),
    "bidi override": ({"hats": ["top \u202ehat"]}, ["contains the control character U+202E"]),
    "duplicate siblings": ({"hats": ["cap", "Cap "]}, ["'cap' appears twice"]),
    "same label in NFC and NFD": ({"accents": ["caf\u00e9", "cafe\u0301"]}, ["'caf\u00e9' appears twice"]),
    "no groups": ({"domain": "faces", "categories": {}}, ["non-empty JSON object"]),
}


@pytest.mark.parametrize("case", list(TAXONOMY_CASES))
def test_bad_taxonomy_is_refused_before_any_database(case, inputs, kept, tmp_path, cli_run):
    data, needles = TAXONOMY_CASES[case]
    path = tmp_path / "taxonomy.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    out = refused(cli_run, tmp_path, kept, ["--images", inputs["faces"], "--taxonomy", path,
                                            "--classifier", clf(inputs), *IDX], 1, *needles)
    assert len(out) < 400


def test_unicode_quotes_and_sql_labels_are_plain_text(inputs, kept_copy, cli_run):
    labels = ["robert'); drop table images;--", "\"quoted\" hat", "o'brien cap", "caf\u00e9 \U0001F3A9", "\u5e3d\u5b50"]
    tax = kept_copy.parent / "odd.json"
    tax.write_text(json.dumps({"domain": "faces", "categories": {"Odd Labels \u00c9": labels, "Empty Group": []}}))
    before = counts(kept_copy)
    result = cli_run("index", "--db", kept_copy, "--images", inputs["faces"], "--taxonomy", tax,
                     "--classifier", clf(inputs), *IDX, "--json")
    clean_exit(result, 0)
    assert result.stderr == ""
    con = duckdb.connect(str(kept_copy), read_only=True)
    try:
        stored = {r[0] for r in con.execute("SELECT label FROM nodes").fetchall()}
    finally:
        con.close()
    assert {"odd labels \u00e9", "empty group", *labels} <= stored  # stored as written (lower case), not executed
    after = counts(kept_copy)
    assert after["images"] == before["images"] and after["nodes"] == before["nodes"] + len(labels) + 2
    assert after["edits"] >= before["edits"]


@pytest.mark.parametrize("name,text,needle", [
    ("meta.txt", "name: faces\nversion: 2\ncategories:\n  goatee\n  top hat\n",
     "has top-level labels that look like metadata, not semantics: 'name: faces', 'version: 2', 'categories:'"),
    ("one.json", '{"beard": []}', "has a single node ('beard')"),
])
def test_implausible_taxonomy_warns_before_any_edit(name, text, needle, inputs, tmp_path, cli_run):
    path = tmp_path / name
    path.write_text(text)
    db = tmp_path / "warned.duckdb"
    with warnings.catch_warnings():  # the library warns before it creates the database
        warnings.simplefilter("error", DiffexWarning)
        with pytest.raises(DiffexWarning, match="look like metadata|single node"):
            run_index(db, [str(inputs["faces"])], path, clf(inputs), "demo", beam=0, samples=1)
    assert not db.exists()
    result = cli_run("index", "--db", db, "--images", inputs["faces"], "--taxonomy", path, "--classifier", clf(inputs), *IDX)
    clean_exit(result, 0)
    warning, = result.stderr.splitlines()  # the CLI prints it as one line, on stderr
    assert warning.startswith("Warning: taxonomy ") and needle in warning


# ----------------------------------------------------------------------------- classifiers
@pytest.mark.parametrize("factory,needles", [
    ("make_inf", ["returned NaN or infinite logits for 1 of 1 images"]),
    ("make_wrong_shape", ["returned shape (1, 3), expected (1, 2)"]),
])
def test_classifier_wrong_from_the_start_is_refused_before_any_database(factory, needles, inputs, kept, tmp_path, cli_run):
    models = f"python:{inputs['models']}:{factory}"
    refused(cli_run, tmp_path, kept, ["--images", inputs["faces"], "--taxonomy", inputs["taxonomy"], "--classifier", models,
                                      *IDX], 1, *needles)


@pytest.mark.parametrize("factory,needles", [
    ("make_shape_by_batch", ["returned shape (4, 1), expected (4, 2)"]),
    ("make_nan_later", ["returned NaN or infinite logits for 1 of 4 images"]),
    ("make_shifting_classes", ["changed its class_names between calls (was dark, bright; now bright, dark)"]),
])
def test_classifier_going_wrong_mid_run_stops_with_one_line_and_keeps_the_store(factory, needles, inputs, kept_copy, cli_run):
    before = counts(kept_copy)
    result = cli_run("index", "--db", kept_copy, "--images", inputs["faces"], "--taxonomy", inputs["taxonomy"],
                     "--classifier", clf(inputs, factory), *IDX)
    one_line_error(result, 1, *needles)
    assert counts(kept_copy) == before  # the failing batch stored nothing, and nothing was lost


def test_model_raising_mid_run_stops_cleanly_and_the_same_command_resumes(inputs, tmp_path, cli_run):
    db = tmp_path / "resume.duckdb"
    args = ["index", "--db", db, "--images", inputs["faces"], "--taxonomy", inputs["taxonomy"],
            "--classifier", clf(inputs, "make_fails_mid_run"), *IDX, "--json"]
    marker = inputs["models"].with_name("fail-mid-run")
    marker.touch()
    try:
        one_line_error(cli_run(*args), 1, "make_fails_mid_run' failed on a batch of 2 images: RuntimeError: CUDA error: "
                       "an illegal memory access was encountered; scores committed so far are kept, the same command resumes")
    finally:
        marker.unlink()
    committed = counts(db)
    assert committed["images"] == N_IMAGES and 0 < committed["scores"] < ALL_SCORES and committed["edits"] > 0
    result = cli_run(*args)
    clean_exit(result, 0)
    stats = json.loads(result.output)
    assert stats["edits_reused"] == committed["edits"] and stats["edits_computed"] == ALL_EDITS - committed["edits"]
    assert 2 * stats["scores_computed"] == ALL_SCORES - committed["scores"]  # nothing scored twice
    assert counts(db) == {"images": N_IMAGES, "nodes": SMALL_NODES, "edits": ALL_EDITS, "scores": ALL_SCORES}


# ----------------------------------------------------------------------------- stores
def _random_bytes(db: Path) -> None:
    db.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())


def _truncated_store(db: Path) -> None:
    with open(db, "r+b") as fh:
        fh.truncate(db.stat().st_size // 2)


def _newer_schema(db: Path) -> None:
    db.unlink()
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE diffex_schema (version INTEGER); INSERT INTO diffex_schema VALUES (99)")
    con.close()


def _other_duckdb(db: Path) -> None:
    db.unlink()
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()


STORE_CASES = {
    "random bytes": (_random_bytes, ["cannot open database", "not a valid DuckDB database file"]),
    "truncated store": (_truncated_store, ["is damaged", "it was truncated, restore it from a copy"]),
    "newer schema": (_newer_schema, ["schema version 99 is newer than this diffex supports"]),
    "not a diffex store": (_other_duckdb, ["not a diffex store"]),
}


@pytest.mark.parametrize("case", list(STORE_CASES))
def test_damaged_or_foreign_store_is_refused_untouched(case, inputs, kept_copy, cli_run):
    damage, needles = STORE_CASES[case]
    damage(kept_copy)
    before = sha(kept_copy)
    for args in (["index", "--db", kept_copy, "--images", inputs["faces"], "--taxonomy", inputs["taxonomy"],
                  "--classifier", clf(inputs), *IDX], ["info", "--db", kept_copy], ["migrate", "--db", kept_copy]):
        one_line_error(cli_run(*args), 1, *needles)
    assert sha(kept_copy) == before
    assert not Path(f"{kept_copy}.wal").exists()


def test_database_whose_folder_is_a_file(inputs, tmp_path, cli_run):
    blocker = tmp_path / "data"
    blocker.write_text("a file where a folder should be")
    for args in (["index", "--db", blocker / "sub" / "x.duckdb", "--images", inputs["faces"], "--taxonomy", inputs["taxonomy"],
                  "--classifier", clf(inputs), *IDX], ["demo", "--db", blocker / "x.duckdb", "--images", "2"],
                 ["migrate", "--db", blocker / "x.duckdb"]):
        one_line_error(cli_run(*args), 1, f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "a file where a folder should be"


def test_database_in_a_folder_without_write_permission(inputs, tmp_path, cli_run):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root: the permission bits do not apply, so there is no error to see
            pytest.skip("running as root: a folder's write permission does not stop this process")
        one_line_error(cli_run("index", "--db", folder / "x.duckdb", "--images", inputs["faces"], "--taxonomy",
                               inputs["taxonomy"], "--classifier", clf(inputs), *IDX), 1, "no write permission")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_disk_full_during_a_commit_keeps_what_was_committed_and_resumes(inputs, tmp_path, cli_run, monkeypatch):
    db = tmp_path / "full.duckdb"
    args = ["index", "--db", db, "--images", inputs["faces"], "--taxonomy", inputs["taxonomy"], "--classifier", clf(inputs),
            *IDX, "--json"]
    real_add_edits, calls = Store.add_edits, []

    def add_edits_until_the_disk_fills(self, records, **kwargs):
        calls.append(len(records))
        if len(calls) == 3:
            raise duckdb.IOException('IO Error: Could not write file "full.duckdb.wal": No space left on device')
        return real_add_edits(self, records, **kwargs)

    monkeypatch.setattr(Store, "add_edits", add_edits_until_the_disk_fills)
    one_line_error(cli_run(*args), 1, "storage failed: IO Error: Could not write file \"full.duckdb.wal\": "
                   "No space left on device; everything committed before it is kept")
    monkeypatch.setattr(Store, "add_edits", real_add_edits)
    committed = counts(db)
    assert committed["edits"] == sum(calls[:2]) > 0  # the two commits before the failure, all of them
    result = cli_run(*args)
    clean_exit(result, 0)
    stats = json.loads(result.output)
    assert stats["edits_reused"] == committed["edits"] and stats["edits_computed"] == ALL_EDITS - committed["edits"]
    assert counts(db) == {"images": N_IMAGES, "nodes": SMALL_NODES, "edits": ALL_EDITS, "scores": ALL_SCORES}


def test_real_write_failure_is_one_line_and_loses_nothing(inputs, kept_copy, tmp_path):
    """A real failed write, not a mock: the process may not grow any file past 4 KiB
    (RLIMIT_FSIZE, so writes fail with EFBIG as they would with ENOSPC on a full disk)."""
    more = tmp_path / "six"
    write_dataset(more, N_IMAGES + 2, start_seed=500)  # the kept store's 4 faces and 2 new ones
    before = counts(kept_copy)
    cmd = [sys.executable, "-m", "diffex.cli.main", "index", "--db", str(kept_copy), "--images", str(more),
           "--taxonomy", str(inputs["taxonomy"]), "--classifier", clf(inputs), *IDX]

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr.startswith("Error: storage failed: ") and failed.stderr.count("\n") == 1, failed.stderr
    assert "File too large" in failed.stderr and "everything committed before it is kept" in failed.stderr
    assert all(counts(kept_copy)[t] >= n for t, n in before.items())  # nothing committed was lost
    resumed = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    six = N_IMAGES + 2
    assert counts(kept_copy) == {"images": six, "nodes": SMALL_NODES, "edits": six * (SMALL_NODES + 1),
                                 "scores": 2 * (six + six * (SMALL_NODES + 1))}


# ----------------------------------------------------------------------------- usage
@pytest.mark.parametrize("extra,needle", [
    ([], "give images with --images"),
    (["--joint", "9"], "--joint must be 0 (off) or 2 to 5"),
    (["--depth", "0"], "--depth must be at least 1"),
])
def test_usage_errors_exit_2(extra, needle, inputs, kept, tmp_path, cli_run):
    images = [] if not extra else ["--images", inputs["faces"]]
    refused(cli_run, tmp_path, kept, [*images, "--taxonomy", inputs["taxonomy"], "--classifier", clf(inputs), *extra], 2, needle)


def test_an_unknown_choice_is_clicks_usage_error(inputs, tmp_path, cli_run):
    result = cli_run("index", "--db", tmp_path / "x.duckdb", "--images", inputs["faces"], "--taxonomy", inputs["taxonomy"],
                     "--classifier", clf(inputs), "--direction", "sideways")
    clean_exit(result, 2)
    assert result.output.splitlines()[-1].startswith("Error: Invalid value for '--direction': 'sideways' is not one of")
    assert not (tmp_path / "x.duckdb").exists()
