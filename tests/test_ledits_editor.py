"""LEDITS++ editor on a tiny random-weight SD pipeline built on disk (offline, seconds).

One module-scoped run computes the fresh edits once; the other tests restore its cached
inversions into new editor objects and compare bytes, which keeps the suite fast.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from diffex.editing import load_editor  # noqa: E402
from diffex.errors import DiffexError  # noqa: E402
from diffex.hashing import hash_image  # noqa: E402
from diffex.types import Concept  # noqa: E402

from ledits_fixtures import BEARD, HAT, NO_BEARD, build_tiny_sd, one_torch_thread  # noqa: E402,F401 (autouse)
from ledits_fixtures import pixel_bytes as _bytes  # noqa: E402

OPTIONS = "?size=64&steps=4"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def photo():
    # 80x48 RGBA: exercises both the RGB conversion and the resize to 64x64.
    pixels = np.random.RandomState(0).randint(0, 256, size=(48, 80, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA")


@pytest.fixture(scope="module")
def fresh(model_path, photo, tmp_path_factory):
    """Edits from freshly computed inversions, and the cache dir they were written to."""
    cache_dir = tmp_path_factory.mktemp("cache")
    editor = load_editor("ledits:" + str(model_path) + OPTIONS)
    with editor.open(photo, hash_image(photo), cache_dir) as session:
        out = {
            "add": session.edit([BEARD], seed=0),
            "remove": session.edit([NO_BEARD], seed=0),
            "add_seed1": session.edit([BEARD], seed=1),
            "hat": session.edit([HAT], seed=0),
            "joint": session.edit([BEARD, HAT], seed=0),
            "baseline": session.reconstruct(),
            "meta": dict(session.meta),
        }
    out["cache_dir"] = cache_dir
    out["editor"] = editor
    return out


def test_sizes_conversion_and_fresh_inversions(fresh):
    for key in ("add", "remove", "joint", "baseline"):
        assert fresh[key].size == (64, 64) and fresh[key].mode == "RGB"
    meta = fresh["meta"]
    assert meta["resized"] is True and meta["original_mode"] == "RGBA"
    assert (meta["original_width"], meta["original_height"]) == (80, 48)
    # One inversion per seed, shared by every edit (and the baseline) of that seed.
    assert meta["inversions"] == 2 and meta["restored"] == 0
    assert fresh["editor"].counters["inversions"] == 2
    assert len(list((fresh["cache_dir"] / "inversions").rglob("*.safetensors"))) == 2


def test_edits_differ_by_direction_seed_and_joint(fresh):
    assert _bytes(fresh["add"]) != _bytes(fresh["baseline"])
    assert _bytes(fresh["add"]) != _bytes(fresh["remove"])
    assert _bytes(fresh["add"]) != _bytes(fresh["add_seed1"])
    assert _bytes(fresh["joint"]) not in {_bytes(fresh["add"]), _bytes(fresh["hat"])}


def test_cached_inversion_reproduces_fresh_edits_bit_for_bit(model_path, photo, fresh):
    editor = load_editor("ledits:" + str(model_path) + OPTIONS)  # new editor, new pipeline object
    assert editor.editor_id == fresh["editor"].editor_id
    pipe = editor.pipeline()
    assert pipe is not fresh["editor"].pipeline()
    calls = []
    original_invert = pipe.invert
    pipe.invert = lambda *a, **k: calls.append(1) or original_invert(*a, **k)
    with editor.open(photo, hash_image(photo), fresh["cache_dir"]) as session:
        add = session.edit([BEARD], seed=0)
        baseline = session.reconstruct()
        many = [session.edit([BEARD], seed=1), session.edit([BEARD], seed=0)]  # seeds swap inversions
        assert session.meta["restored"] == 2 and session.meta["inversions"] == 0
    assert calls == [] and editor.counters["inversions"] == 0
    assert _bytes(add) == _bytes(fresh["add"])  # same seed -> identical, across runs
    assert _bytes(baseline) == _bytes(fresh["baseline"])
    assert [_bytes(m) for m in many] == [_bytes(fresh["add_seed1"]), _bytes(fresh["add"])]


def test_sessions_sharing_one_pipeline_restore_their_own_inversion(photo, fresh):
    editor = fresh["editor"]
    other = Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
    with editor.open(photo, hash_image(photo), fresh["cache_dir"]) as a, editor.open(
        other, hash_image(other), fresh["cache_dir"]
    ) as b:
        b.edit([BEARD], seed=0)  # b's inversion is now on the shared pipeline
        assert _bytes(a.edit([BEARD], seed=0)) == _bytes(fresh["add"])


def test_editor_id_tracks_pixel_options_only(model_path, fresh):
    def editor_id(options: str) -> str:
        return load_editor("ledits:" + str(model_path) + options).editor_id

    base = fresh["editor"].editor_id
    assert editor_id(OPTIONS) == base
    assert editor_id("?size=64&steps=8") != base
    assert editor_id(OPTIONS + "&guidance=5") != base
    assert editor_id(OPTIONS + "&threshold=0.9") != base
    assert editor_id(OPTIONS + "&dtype=float16") != base
    assert editor_id(OPTIONS + "&device=cpu&batch=4") == base
    assert load_editor("ledits-xl:" + str(model_path) + OPTIONS).editor_id != base  # SDXL pipeline, other id
    config = fresh["editor"].config
    assert len(config["model"]["sha256"]) == 64
    assert config["scheduler"]["algorithm_type"] == "sde-dpmsolver++"
    commit = "0123456789abcdef0123456789abcdef01234567"
    hub = load_editor(f"ledits:some-org/some-model?revision={commit}")  # a commit needs no lookup
    assert hub.config["model"] == {"id": "some-org/some-model", "revision": commit}


def test_bad_specs_raise_diffex_errors(model_path, tmp_path):
    with pytest.raises(DiffexError, match="valid options: size, steps"):
        load_editor("ledits:" + str(model_path) + "?sise=64")
    with pytest.raises(DiffexError, match="multiple of 32"):
        load_editor("ledits:" + str(model_path) + "?size=50")
    with pytest.raises(DiffexError, match="does not exist"):
        load_editor("ledits:" + str(tmp_path / "no-such-model"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken" / "weights.safetensors").write_bytes(b"")
    broken = load_editor("ledits:" + str(tmp_path / "broken"))
    with pytest.raises(DiffexError, match=f"cannot load LEDITS\\+\\+ model '{re.escape(str(tmp_path / 'broken'))}': "):
        broken.pipeline()
    with pytest.raises(DiffexError, match="no .safetensors/.bin weights"):
        load_editor("ledits:" + str(tmp_path / "empty")).editor_id


def test_index_with_ledits_spec_stores_reuses_and_links_joint_edits(model_path, tmp_path, brightness):
    """The whole `diffex index` path with a diffusion editor, as a user would run it."""
    import duckdb

    from diffex import run_index

    imgs = tmp_path / "photos"
    imgs.mkdir()
    rng = np.random.RandomState(1)
    for i in range(2):  # plain photos: no demo metadata, odd sizes
        Image.fromarray(rng.randint(0, 256, size=(40 + 8 * i, 56, 3), dtype=np.uint8)).save(imgs / f"p{i}.png")
    tax = {"categories": {"facial hair": ["beard"], "headwear": ["hat"]}}
    spec = "ledits:" + str(model_path) + OPTIONS
    db = tmp_path / "l.duckdb"
    first = run_index(db, [str(imgs)], tax, brightness, spec, beam=0, samples=1, joint=2, joint_top=2)
    # per image: baseline + 4 nodes + 1 joint pair (facial hair + headwear)
    assert first.edits_computed == 2 * (1 + 4 + 1)
    again = run_index(db, [str(imgs)], tax, brightness, spec, beam=0, samples=1, joint=2, joint_top=2)
    assert (again.edits_computed, again.scores_computed) == (0, 0)
    con = duckdb.connect(str(db), read_only=True)
    try:
        paths = [r[0] for r in con.execute("SELECT cache_path FROM edits").fetchall()]
        joint = con.execute(
            """SELECT e.edit_id, list(n.label ORDER BY n.label) FROM edits e
               JOIN edit_nodes en USING (edit_id) JOIN nodes n USING (node_id)
               WHERE e.kind = 'joint' GROUP BY e.edit_id"""
        ).fetchall()
        editors = con.execute("SELECT name, spec FROM editors").fetchall()
    finally:
        con.close()
    for rel in paths:
        with Image.open(tmp_path / "l-cache" / rel) as im:
            assert im.size == (64, 64)
    assert len(joint) == 2 and all(len(labels) == 2 for _, labels in joint)
    assert editors == [("ledits", spec)]
    # inversions live in the same content-addressed cache, one per (image, seed)
    assert len(list((tmp_path / "l-cache" / "inversions").rglob("*.safetensors"))) == 2


def _unet_calls(pipe) -> list[int]:
    """Record the batch size of every UNet call on `pipe` (for cost assertions)."""
    calls: list[int] = []
    inner = pipe.unet.forward

    def forward(sample, *args, **kwargs):
        calls.append(int(sample.shape[0]))
        return inner(sample, *args, **kwargs)

    pipe.unet.forward = forward
    return calls


def test_baseline_is_the_pipelines_reconstruction_at_no_unet_cost(model_path, photo, tmp_path):
    editor = load_editor("ledits:" + str(model_path) + OPTIONS)
    with editor.open(photo, hash_image(photo), tmp_path) as session:
        session.edit([BEARD], seed=0)  # inverts seed 0 (the reconstruction seed)
        calls = _unet_calls(editor.pipeline())
        baseline = session.reconstruct()
        assert calls == []  # read from the inversion, only VAE-decoded
        # ... and it is exactly what LEDITS++ itself returns for "no editing prompt"
        pipe = editor.pipeline()
        reference = pipe(editing_prompt=None, output_type="pil").images[0]
        assert len(calls) == 4  # the pipeline's own reconstruction runs the UNet once per step
    assert _bytes(baseline) == _bytes(reference)
    assert _bytes(baseline) != _bytes(photo.convert("RGB").resize((64, 64)))


def _layout_rows(maps, heads: int):
    """Attention rows as a UNet attention layer hands them to the store: (prompt group, image,
    head)-major. `maps[g][b][h]` is one [pixels, tokens] map."""
    import torch

    return torch.stack([maps[g][b][h] for g in range(len(maps)) for b in range(len(maps[0])) for h in range(heads)])


def test_attention_store_regroups_rows_per_image():
    """The corrected store gives each image of a batch exactly the cross-attention maps it gets
    alone. Pure indexing on integer-valued maps, so the comparison is exact on any CPU; the
    pipeline's own store (diffusers 0.42.1) fails it, which is the bug the swap fixes."""
    import torch
    from diffusers.pipelines.ledits_pp import pipeline_leditspp_stable_diffusion as module

    from diffex.editing.ledits.patches import _PerImageAttentionStore

    fixed = type("LeditsAttentionStore", (_PerImageAttentionStore, module.LeditsAttentionStore), {})
    prompts, images, heads, res, tokens = 2, 3, 4, (2, 2), 5
    gen = torch.Generator().manual_seed(0)
    # group 0 is the unconditional branch, groups 1.. the editing prompts
    maps = [[[torch.randint(0, 50, (res[0] * res[1], tokens), generator=gen).float() for _ in range(heads)]
             for _ in range(images)] for _ in range(1 + prompts)]

    def aggregated(store_class, batch: list[int]):
        store = store_class(average=False, batch_size=len(batch), max_size=res[0] * res[1], max_resolution=None)
        store(_layout_rows([[g[b] for b in batch] for g in maps], heads), True, "up", prompts)
        names = [f"p{i}" for i in range(prompts)]
        return [store.aggregate_attention(store.step_store, names, res, ["up"], True, select=i) for i in range(prompts)]

    alone = [aggregated(fixed, [b]) for b in range(images)]
    together = aggregated(fixed, list(range(images)))
    for p in range(prompts):
        for b in range(images):
            assert torch.equal(together[p][b], alone[b][p][0])
    assert torch.equal(alone[0][0], aggregated(module.LeditsAttentionStore, [0])[0])  # one image: unchanged
    buggy = aggregated(module.LeditsAttentionStore, list(range(images)))
    assert not all(torch.equal(buggy[p][b], alone[b][p][0]) for p in range(prompts) for b in range(images))


def test_batched_images_match_one_at_a_time(model_path, tmp_path, monkeypatch):
    """batch=3 inverts and edits three images in one call each, and each image must get the
    edit it gets alone. What the code controls is compared: the cross-attention maps LEDITS++
    aggregates before it thresholds them. On this random-weight model they are nearly flat
    (spread ~0.003 around 1/77), so the 0.75-quantile masks built from them can flip on the
    last bits that batched and unbatched matmuls differ in, and those bits differ between
    CPUs (Intel, AMD): a flipped mask moved one joint-edit image by 33/255 on an AMD EPYC.
    So pixels are held only to "each image is its own edit", and the maps of the first step,
    before any mask acts, to float noise. diffusers' own store, which mixes images and
    heads, misses that bound by two orders of magnitude (checked below on this very model)."""
    import diffusers.pipelines.ledits_pp.pipeline_leditspp_stable_diffusion as module
    import torch

    from diffex.editing.ledits import editor as ledits  # the module that calls _per_image_attention

    recorded: dict = {}
    aggregate = module.LeditsAttentionStore.aggregate_attention

    def record(self, *args, **kwargs):
        out = aggregate(self, *args, **kwargs)
        recorded.setdefault(current[0], []).append(out.detach().clone())
        return out

    monkeypatch.setattr(module.LeditsAttentionStore, "aggregate_attention", record)
    current = [None]
    rng = np.random.RandomState(5)
    photos = [Image.fromarray(rng.randint(0, 256, size=(64, 64, 3), dtype=np.uint8)) for _ in range(3)]
    joint = (BEARD, Concept("hat", "remove"))
    results = {}
    for batch in (1, 3):
        editor = load_editor("ledits:" + str(model_path) + OPTIONS + f"&batch={batch}")
        assert editor.batch_size == batch
        calls = _unet_calls(editor.pipeline())
        sessions = [editor.open(p, hash_image(p), tmp_path / f"b{batch}") for p in photos]
        outs = []
        for concepts in ((BEARD,), joint):
            current[0] = (batch, concepts)
            outs.append(editor.edit_batch(sessions, concepts, 1))
        outs.append(editor.edit_batch(sessions, (), 0))
        results[batch] = [[np.asarray(o.image).astype(int) for o in group] for group in outs]
        assert all(o.status == "ok" for group in outs for o in group)
        # 2 seeds x 3 images inverted; 1 + 2 prompts in the joint edit; baselines cost nothing
        assert editor.counters["inversions"] == 6
        assert sum(calls) == 6 * 4 + 3 * 4 * 2 + 3 * 4 * 3
        assert max(calls) == (3 * 3 if batch == 3 else 3)  # batch=3: images share each UNet call
        for s in sessions:
            s.close()
    # the same batch=3 joint edit with diffusers' own attention store, for the contrast
    monkeypatch.setattr(ledits, "_per_image_attention", lambda pipe, images: __import__("contextlib").nullcontext())
    editor = load_editor("ledits:" + str(model_path) + OPTIONS + "&batch=3")
    sessions = [editor.open(p, hash_image(p), tmp_path / "b3") for p in photos]  # restores the inversions
    current[0] = "diffusers"
    editor.edit_batch(sessions, joint, 1)

    def first_step_error(batched: list) -> float:
        """Largest difference of the first step's maps (one per editing prompt) from the
        one-at-a-time maps, relative to the maps' own spread."""
        alone = recorded[(1, joint)]
        per_image = len(alone) // 3
        worst = 0.0
        for p in range(len(joint)):
            single = torch.cat([alone[img * per_image + p] for img in range(3)])
            spread = float(single.amax() - single.amin())
            worst = max(worst, float((batched[p] - single).abs().max()) / spread)
        return worst

    ours, theirs = first_step_error(recorded[(3, joint)]), first_step_error(recorded["diffusers"])
    assert ours < 1e-3, ours  # float noise: 2e-5 measured (Intel Xeon)
    assert theirs > 1e-3 and theirs > 20 * ours, (theirs, ours)  # 1e-2 measured
    for group, (one, three) in enumerate(zip(results[1], results[3])):
        for img, (a, b) in enumerate(zip(one, three)):
            # each image got its own edit: nearer its one-at-a-time self than any other image
            others = [np.abs(b - other).mean() for k, other in enumerate(one) if k != img]
            assert np.abs(a - b).mean() < min(others) / 10, (group, img)
    # the baseline only decodes the inversion (no thresholded mask): equal up to rounding
    for a, b in zip(results[1][2], results[3][2]):
        assert np.abs(a - b).max() <= 2


def test_safety_checker_blocks_are_stored_and_never_measured(tmp_path, brightness):
    import duckdb

    from diffex import run_index

    model = build_tiny_sd(tmp_path / "sd-checked", safety_checker="flag-all")  # blanks every output
    imgs = tmp_path / "photos"
    imgs.mkdir()
    Image.fromarray(np.random.RandomState(2).randint(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(imgs / "p.png")
    tax = {"categories": {"facial hair": ["beard"]}}
    spec = "ledits:" + str(model) + OPTIONS
    db = tmp_path / "s.duckdb"
    first = run_index(db, [str(imgs)], tax, brightness, spec, beam=0, samples=1)
    assert (first.edits_computed, first.edits_blocked) == (3, 3)  # baseline + 2 nodes, all blanked
    again = run_index(db, [str(imgs)], tax, brightness, spec, beam=0, samples=1)
    assert (again.edits_computed, again.edits_reused) == (0, 3)  # deterministic: not retried
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT DISTINCT status FROM edits").fetchall() == [("blocked",)]
        assert con.execute("SELECT count(*) FROM node_effects").fetchone()[0] == 0
    finally:
        con.close()
    # safety=0 loads the same weights without the checker: another editor id, real pixels
    unchecked = run_index(db, [str(imgs)], tax, brightness, spec + "&safety=0", beam=0, samples=1)
    assert (unchecked.edits_computed, unchecked.edits_blocked) == (3, 0)
    assert unchecked.editor_id != first.editor_id


def test_index_batches_images_and_resumes(model_path, tmp_path, brightness):
    from diffex import run_index

    imgs = tmp_path / "photos"
    imgs.mkdir()
    rng = np.random.RandomState(3)
    for i in range(3):
        Image.fromarray(rng.randint(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(imgs / f"p{i}.png")
    tax = {"categories": {"facial hair": ["beard"]}}
    spec = "ledits:" + str(model_path) + OPTIONS + "&batch=2"
    db = tmp_path / "b.duckdb"
    first = run_index(db, [str(imgs)], tax, brightness, spec, beam=0, samples=1)
    assert first.edits_computed == 3 * 3 and first.edits_blocked == 0
    # same editor id as batch=1, so a batch=1 run reuses every edit
    again = run_index(db, [str(imgs)], tax, brightness, "ledits:" + str(model_path) + OPTIONS, beam=0, samples=1)
    assert (again.edits_computed, again.scores_computed) == (0, 0)
    assert len(list((tmp_path / "b-cache" / "inversions").rglob("*.safetensors"))) == 3


def test_sdxl_variant_edits_restores_and_reconstructs(tmp_path):
    """`ledits-xl:` on a tiny SDXL pipeline: the same cache contract as SD; its baseline runs the
    pipeline (SDXL's inversion does not end in the null edit's latents)."""
    from ledits_fixtures import build_tiny_sdxl

    model = build_tiny_sdxl(tmp_path / "tiny-sdxl")
    photo = Image.fromarray(np.random.RandomState(4).randint(0, 256, size=(64, 64, 3), dtype=np.uint8))
    spec = "ledits-xl:" + str(model) + OPTIONS
    outputs = []
    for run in range(2):  # the second editor restores every inversion from the cache
        editor = load_editor(spec)
        calls = _unet_calls(editor.pipeline())
        with editor.open(photo, hash_image(photo), tmp_path / "cache") as session:
            outputs.append([session.edit([BEARD], seed=0), session.edit([NO_BEARD], seed=0)])
            before = len(calls)
            outputs[-1].append(session.reconstruct())
            assert len(calls) - before == 4  # 4 steps, unconditional branch only
            assert (session.meta["inversions"], session.meta["restored"]) == ((1, 0) if run == 0 else (0, 1))
    first, second = outputs
    assert all(im.size == (64, 64) for im in first)
    assert _bytes(first[0]) != _bytes(first[1])  # add and remove differ
    assert [_bytes(im) for im in first] == [_bytes(im) for im in second]
    with pytest.raises(DiffexError, match="batch must be 1"):
        load_editor(spec + "&batch=2")


# The schedulers the real checkpoints ship (scheduler/scheduler_config.json on the hub).
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
                  "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False}
SDXL_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "beta_start": 0.00085, "num_train_timesteps": 1000, "steps_offset": 1,
                  "timestep_spacing": "leading", "interpolation_type": "linear", "prediction_type": "epsilon",
                  "use_karras_sigmas": False}


@pytest.mark.parametrize("kind", ["ledits", "ledits-xl"])
def test_checkpoints_shipping_another_scheduler_get_the_ledits_one(kind, tmp_path):
    """SD 1.5 ships PNDM and SDXL Euler; plain from_pretrained gives a deterministic dpmsolver++
    that invert() rejects (NotImplementedError). diffex loads them with sde-dpmsolver++."""
    import json

    from ledits_fixtures import build_tiny_sdxl

    model = (build_tiny_sd if kind == "ledits" else build_tiny_sdxl)(tmp_path / "model")
    scheduler = SD15_SCHEDULER if kind == "ledits" else SDXL_SCHEDULER
    (model / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    editor = load_editor(f"{kind}:{model}{OPTIONS}")
    pipe = editor.pipeline()
    assert (type(pipe.scheduler).__name__, pipe.scheduler.config.algorithm_type) == (
        "DPMSolverMultistepScheduler", "sde-dpmsolver++")
    assert editor.config["scheduler"]["beta_schedule"] == "scaled_linear"  # the shipped config is hashed
    photo = Image.fromarray(np.random.RandomState(6).randint(0, 256, size=(64, 64, 3), dtype=np.uint8))
    with editor.open(photo, hash_image(photo), tmp_path / "cache") as session:
        assert session.edit([BEARD], seed=0).size == (64, 64)
        baseline = session.reconstruct()
        assert _bytes(baseline) == _bytes(pipe(editing_prompt=None, output_type="pil").images[0])


def test_hub_model_id_loads_offline_from_the_cache_pinned_to_its_commit(model_path, tmp_path, brightness):
    """`ledits:org/name` as a user types it, with the model in the Hugging Face cache and no
    HF_HUB_OFFLINE (diffex is offline anyway): the real hub loading path. The editor id pins
    the commit "main" points to."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    import duckdb

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-sd"
    shutil.copytree(model_path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    imgs = tmp_path / "photos"
    imgs.mkdir()
    Image.fromarray(np.random.RandomState(7).randint(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(imgs / "p.png")
    (tmp_path / "tax.json").write_text(json.dumps({"categories": {"facial hair": ["beard"]}}))
    env = {**{k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")},
           "HF_HUB_CACHE": str(tmp_path / "hub")}

    def index(editor: str) -> subprocess.CompletedProcess:
        args = ["index", "--db", tmp_path / "h.duckdb", "--images", imgs, "--taxonomy", tmp_path / "tax.json",
                "--classifier", brightness, "--editor", editor, "--beam", "0", "--samples", "1", "--json"]
        return subprocess.run([sys.executable, "-m", "diffex.cli.main", *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=300)

    done = index("ledits:tiny-org/tiny-sd?size=64&steps=2")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["edits_computed"] == 1 + 2  # baseline + 2 nodes
    con = duckdb.connect(str(tmp_path / "h.duckdb"), read_only=True)
    try:
        config = json.loads(con.execute("SELECT config FROM editors").fetchone()[0])
    finally:
        con.close()
    assert config["model"] == {"id": "tiny-org/tiny-sd", "revision": commit}
    missing = index("ledits:tiny-org/not-in-cache?size=64")
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert missing.stderr.startswith("Error: LEDITS++ model 'tiny-org/not-in-cache' is not in the local Hugging Face cache")
