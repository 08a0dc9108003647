"""InstructPix2Pix editor (`ip2p:`) on a tiny random-weight pipeline built and saved on disk,
loaded back by path through the loading policy (offline, seconds: 64 px, 2 steps)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from diffex.editing import load_editor  # noqa: E402
from diffex.editing.ip2p import instruction  # noqa: E402
from diffex.errors import DiffexError  # noqa: E402
from diffex.types import Concept  # noqa: E402

from ledits_fixtures import BEARD, HAT, NO_BEARD, build_tiny_ip2p, one_torch_thread  # noqa: E402,F401 (autouse)
from ledits_fixtures import pixel_bytes as _bytes  # noqa: E402

OPTIONS = "?size=64&steps=2"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_tiny_ip2p(tmp_path_factory.mktemp("tiny-ip2p"))


@pytest.fixture(scope="module")
def editor(model_path):
    return load_editor(f"ip2p:{model_path}{OPTIONS}")


@pytest.fixture(scope="module")
def photo():
    # 80x48 RGBA: exercises the RGB conversion and the resize to 64x64
    pixels = np.random.RandomState(0).randint(0, 256, size=(48, 80, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA")


def _prompts_seen(pipe) -> list[str]:
    """Record, decoded, every token sequence the pipeline's real text encoder receives."""
    seen: list[str] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        for row in ids.tolist():
            seen.append(pipe.tokenizer.decode(row, skip_special_tokens=True).strip())

    pipe.text_encoder.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_instruction_text_reaches_the_pipeline(editor, photo, tmp_path):
    seen = _prompts_seen(editor.pipeline())
    with editor.open(photo, "img", tmp_path) as session:
        session.edit([BEARD], seed=0)
        session.edit([NO_BEARD], seed=0)
        session.edit([BEARD, HAT], seed=0)
        session.reconstruct()
    # each call encodes the instruction, then the empty negative prompt for classifier-free guidance
    assert seen == ["add beard", "", "remove beard", "", "add beard and add hat", "", "", ""]


def test_seeds_directions_and_the_null_edit(editor, model_path, photo, tmp_path):
    with editor.open(photo, "img", tmp_path) as session:
        add0 = session.edit([BEARD], seed=0)
        add0_again = session.edit([BEARD], seed=0)
        add1 = session.edit([BEARD], seed=1)
        remove0 = session.edit([NO_BEARD], seed=0)
        baseline = session.reconstruct()
    assert add0.size == (64, 64) and add0.mode == "RGB"
    assert _bytes(add0) == _bytes(add0_again)
    assert _bytes(add0) != _bytes(add1)  # the seed draws the sampler's noise
    assert _bytes(add0) != _bytes(remove0)  # the instruction changes the pixels
    # the null edit is the pipeline's output for an empty instruction, not the input
    resized = photo.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
    assert _bytes(baseline) not in (_bytes(resized), _bytes(add0))
    # a fresh load of the same model reproduces the bytes: nothing depends on process state
    fresh = load_editor(f"ip2p:{model_path}{OPTIONS}")
    with fresh.open(photo, "img", tmp_path) as session:
        assert _bytes(session.edit([BEARD], seed=0)) == _bytes(add0)
        assert _bytes(session.reconstruct()) == _bytes(baseline)


def test_instruction_templates():
    templates = {"add": "give the person {}", "remove": "take away the {}"}
    assert instruction([BEARD], templates) == "give the person beard"
    assert instruction([NO_BEARD, HAT], templates) == "take away the beard and give the person hat"
    assert instruction([], templates) == ""
    with pytest.raises(DiffexError, match="concept direction 'swap'"):
        instruction([Concept("beard", "swap")], templates)


def test_index_run_stores_reuses_and_batches(model_path, tmp_path, brightness):
    """The whole `diffex index` path: a few images x a few nodes, then a rerun computes nothing,
    also with batch=2 (batching is not part of the editor id)."""
    import duckdb

    from diffex import run_index

    imgs = tmp_path / "photos"
    imgs.mkdir()
    rng = np.random.RandomState(1)
    for i in range(3):  # plain photos: no demo metadata, odd sizes
        Image.fromarray(rng.randint(0, 256, size=(40 + 8 * i, 56, 3), dtype=np.uint8)).save(imgs / f"p{i}.png")
    tax = {"categories": {"facial hair": ["beard"]}}
    spec = f"ip2p:{model_path}{OPTIONS}"
    db = tmp_path / "i.duckdb"
    first = run_index(db, [str(imgs)], tax, brightness, spec, beam=0, samples=2)
    # per image: baseline + 2 nodes x 2 samples
    assert first.edits_computed == 3 * (1 + 2 * 2) and first.edits_blocked == 0
    again = run_index(db, [str(imgs)], tax, brightness, spec + "&batch=2", beam=0, samples=2)
    assert (again.edits_computed, again.scores_computed, again.editor_id) == (0, 0, first.editor_id)
    con = duckdb.connect(str(db), read_only=True)
    try:
        editors = con.execute("SELECT name, spec, config FROM editors").fetchall()
        outputs = con.execute("SELECT kind, count(*), count(DISTINCT output_sha256) FROM edits GROUP BY kind ORDER BY kind").fetchall()
    finally:
        con.close()
    assert [(name, s) for name, s, _ in editors] == [("ip2p", spec)]
    assert json.loads(editors[0][2])["instructions"] == {"add": "add {}", "remove": "remove {}", "joint": " and "}
    # every edit of every image and seed is its own picture
    assert outputs == [("baseline", 3, 3), ("single", 12, 12)]


def test_batched_images_match_one_at_a_time(model_path, tmp_path):
    rng = np.random.RandomState(2)
    images = [Image.fromarray(rng.randint(0, 256, size=(64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    single = load_editor(f"ip2p:{model_path}{OPTIONS}")
    batched = load_editor(f"ip2p:{model_path}{OPTIONS}&batch=2")
    alone = [single.edit_batch([single.open(im, str(i), tmp_path)], (BEARD,), 3)[0].image for i, im in enumerate(images)]
    together = batched.edit_batch([batched.open(im, str(i), tmp_path) for i, im in enumerate(images)], (BEARD,), 3)
    assert batched.counters["edits"] == 2
    for a, b in zip(alone, together):
        # the same noise per image; a larger UNet batch differs by float rounding at most
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b.image, dtype=int)).max() <= 2


def test_editor_id_tracks_model_and_pixel_options(model_path, editor, tmp_path):
    def spec(**options) -> str:
        return f"ip2p:{model_path}?" + "&".join(f"{k}={v}" for k, v in {"size": 64, "steps": 2, **options}.items())

    base = editor.editor_id
    assert load_editor(spec(device="cpu", batch=4)).editor_id == base
    changed = dict(steps=3, size=96, guidance=5, image_guidance=1.2, add="put%20on%20{}", remove="{}%20gone", safety=0)
    for key, value in changed.items():
        assert load_editor(spec(**{key: value})).editor_id != base, key
    # a model whose files differ (here its scheduler config) is another editor; a copy is the same
    copy = tmp_path / "copy"
    shutil.copytree(model_path, copy)
    assert load_editor(f"ip2p:{copy}{OPTIONS}").editor_id == base
    config_file = copy / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["beta_end"] = 0.02
    config_file.write_text(json.dumps(config))
    assert load_editor(f"ip2p:{copy}{OPTIONS}").editor_id != base
    commit = "0123456789abcdef0123456789abcdef01234567"
    hub = load_editor(f"ip2p:some-org/some-model?revision={commit}")  # a commit needs no lookup
    assert hub.config["model"] == {"id": "some-org/some-model", "revision": commit}


@pytest.mark.parametrize("rest, message", [
    ("{m}?sise=64", "unknown option 'sise' in ip2p:"),
    ("{m}?size=50", "ip2p option size=50 must be a positive multiple of 32"),
    ("{m}?steps=0", "ip2p option steps=0 must be >= 1"),
    ("{m}?guidance=lots", "ip2p option guidance='lots' is not a valid float"),
    ("{m}?add=add", "ip2p option add='add' must be text with {{}} once, where the concept goes"),
    ("{m}?safety=maybe", "ip2p option safety='maybe' is not a valid boolean"),
    ("{m}?dtype=int8", "ip2p option dtype='int8'; valid: float16, bfloat16, float32"),
    ("{tmp}/no-such-model", "InstructPix2Pix model path {tmp}/no-such-model does not exist"),
    ("", "ip2p spec needs a model"),
])
def test_bad_specs_raise_one_line_errors(rest, message, model_path, tmp_path):
    with pytest.raises(DiffexError, match=re.escape(message.format(tmp=tmp_path))) as err:
        load_editor("ip2p:" + rest.format(m=model_path, tmp=tmp_path))
    assert "\n" not in str(err.value)


def test_absent_or_broken_models_fail_before_any_store(model_path, tmp_path, monkeypatch, brightness, cli_run):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(DiffexError, match="'some-org/some-model' is not in the local Hugging Face cache"):
        load_editor("ip2p:some-org/some-model").check()
    pickled = tmp_path / "pickled"
    shutil.copytree(model_path, pickled)
    for weights in pickled.rglob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(DiffexError, match="only pickle weights"):
        load_editor(f"ip2p:{pickled}").check()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "weights.safetensors").write_bytes(b"")
    with pytest.raises(DiffexError, match=f"cannot load InstructPix2Pix model '{re.escape(str(tmp_path / 'broken'))}': "):
        load_editor(f"ip2p:{tmp_path / 'broken'}").pipeline()
    imgs = tmp_path / "photos"
    imgs.mkdir()
    Image.new("RGB", (32, 32), (90, 90, 90)).save(imgs / "grey.png")
    tax = tmp_path / "tax.json"
    tax.write_text('{"categories": {"facial hair": ["beard"]}}')
    db = tmp_path / "never.duckdb"
    result = cli_run("index", "--db", db, "--images", imgs, "--taxonomy", tax, "--classifier", brightness,
                     "--editor", "ip2p:some-org/some-model")
    assert result.exit_code == 1 and "is not in the local Hugging Face cache" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not db.exists()
