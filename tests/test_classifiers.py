"""Classifier SPECs beyond the core: hf:, torchscript:, clip:. Each test builds a tiny random
model locally (nothing is downloaded), loads it through its SPEC string, indexes demo images
with it and checks the identity rules: same weights + preprocessing = same id, wherever the
files live; one changed weight or preprocessing setting = a new id."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffex import DiffexError, open_store, run_index
from diffex.scoring import load_classifier, score_images
from diffex.images import load_images

TAX = {"domain": "cartoon faces", "categories": {"hair colour": ["red hair", "grey hair"]}}  # 3 nodes
WORDS = ["a", "photo", "of", "young", "old", "person", "face"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from diffex.demo.world import write_dataset

    folder = tmp_path_factory.mktemp("clf-images")
    write_dataset(folder, 3, start_seed=700)
    return folder


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=2, id2label={0: "young", 1: "old"},
                       label2id={"young": 0, "old": 1})
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return folder


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def ts_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ts") / "tiny.pt"
    torch.jit.save(torch.jit.script(TinyNet().eval()), str(path))
    return path


def _write_word_tokenizer(folder: Path) -> dict[str, int]:
    """A CLIP BPE tokenizer whose merges spell out exactly WORDS (ENVIRONMENT.md's recipe)."""
    chars = [chr(i) for i in range(33, 127)]
    vocab: dict[str, int] = {}
    for ch in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(ch, len(vocab))
    merges: list[str] = []
    for word in WORDS:
        toks = list(word[:-1]) + [word[-1] + "</w>"]
        while len(toks) > 1:
            merges.append(f"{toks[0]} {toks[1]}")
            vocab.setdefault(toks[0] + toks[1], len(vocab))
            toks = [toks[0] + toks[1]] + toks[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return vocab


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    folder.mkdir()
    vocab = _write_word_tokenizer(folder)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    eos = vocab["<|endoftext|>"]
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _index(tmp_path, images, spec):
    return run_index(tmp_path / "x.duckdb", [str(images)], TAX, spec, "demo", beam=0, samples=1)


def _bump_one_weight(safetensors_file: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(safetensors_file))
    key = sorted(state)[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] += 1e-3
    save_file(state, str(safetensors_file), metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------- hf


def test_hf_classifier_indexes_and_scores_like_transformers(tmp_path, images, hf_dir):
    from transformers import AutoModelForImageClassification, ViTImageProcessorPil

    clf = load_classifier(f"hf:{hf_dir}")
    assert clf.class_names == ("young", "old")
    stats = _index(tmp_path, images, f"hf:{hf_dir}")
    assert stats.images == 3 and stats.nodes_scored == 3 and stats.edits_computed == 3 * (1 + 3)
    assert stats.classifier_id == clf.classifier_id
    # the stored scores are the model's own logits on the processor's pixels
    pictures = [im for _, im in load_images([str(images)])]
    model = AutoModelForImageClassification.from_pretrained(hf_dir).eval()
    pixels = ViTImageProcessorPil.from_pretrained(hf_dir)(images=pictures, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits.numpy()
    logits, probs = score_images(clf, pictures)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    with open_store(tmp_path / "x.duckdb", read_only=True) as store:
        stored = store.con.execute(
            "SELECT logit FROM scores WHERE classifier_id = ? AND item_id IN (SELECT image_id FROM images) "
            "ORDER BY item_id, class_index", [clf.classifier_id]).fetchall()
        ids = [r[0] for r in store.con.execute("SELECT image_id FROM images ORDER BY image_id").fetchall()]
    order = [ids.index(rec.image_id) for rec, _ in load_images([str(images)])]
    np.testing.assert_allclose(np.array(stored).reshape(3, 2)[order], expected, atol=1e-5)


def test_hf_id_hashes_weights_and_preprocessing_not_the_path(tmp_path, hf_dir):
    original = load_classifier(f"hf:{hf_dir}").classifier_id
    moved = tmp_path / "elsewhere" / "renamed-model"
    shutil.copytree(hf_dir, moved)
    assert load_classifier(f"hf:{moved}").classifier_id == original
    _bump_one_weight(moved / "model.safetensors")
    retrained = load_classifier(f"hf:{moved}").classifier_id
    assert retrained != original
    other_prep = tmp_path / "other-prep"
    shutil.copytree(hf_dir, other_prep)
    cfg = json.loads((other_prep / "preprocessor_config.json").read_text())
    cfg["image_mean"] = [0.4, 0.4, 0.4]
    (other_prep / "preprocessor_config.json").write_text(json.dumps(cfg))
    assert load_classifier(f"hf:{other_prep}").classifier_id not in (original, retrained)


def test_hf_pickle_checkpoint_is_refused_unless_allowed(tmp_path, hf_dir):
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(hf_dir, pickled)
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(DiffexError, match=r"only pickle weights \(pytorch_model.bin\).*allow_pickle=1"):
        load_classifier(f"hf:{pickled}")
    # opted in (still torch.load(weights_only=True)): the same weights give the same id
    assert load_classifier(f"hf:{pickled}?allow_pickle=1").classifier_id == load_classifier(f"hf:{hf_dir}").classifier_id


def test_hf_spec_errors_are_one_line(cli_run, tmp_path, images, hf_dir, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # diffex is offline whatever this says
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    db = tmp_path / "x.duckdb"
    tax = tmp_path / "t.json"
    tax.write_text(json.dumps(TAX))
    cases = {
        "hf:some-org/not-downloaded": "'some-org/not-downloaded' is not in the local Hugging Face cache",
        f"hf:{tmp_path}/missing/model": "no hf model directory",
        f"hf:{hf_dir}?trust_remote_code=maybe": "must be 1 or 0",
        f"hf:{hf_dir}?colour=1": "unknown option 'colour'",
        "hf:": "needs a model",
    }
    for spec, message in cases.items():
        result = cli_run("index", "--db", db, "--images", images, "--taxonomy", tax, "--classifier", spec)
        assert result.exit_code == 1, (spec, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not db.exists()  # nothing was created for a classifier that never loaded


# ---------------------------------------------------------------------------------- torchscript


def test_torchscript_classifier_with_spec_preprocessing(tmp_path, images, ts_file, cli_run):
    spec = f"torchscript:{ts_file}?class_names=cat,dog,bird&size=32&mean=0.5&std=0.25"
    clf = load_classifier(spec)
    assert clf.class_names == ("cat", "dog", "bird")
    pictures = [im for _, im in load_images([str(images)])]
    x = np.stack([np.asarray(im.resize((32, 32), 2), dtype=np.float32) / 255 for im in pictures])
    x = torch.from_numpy((x - 0.5) / 0.25).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = torch.jit.load(str(ts_file))(x).numpy()
    np.testing.assert_allclose(score_images(clf, pictures)[0], expected, atol=1e-5)
    tax = tmp_path / "t.json"
    tax.write_text(json.dumps(TAX))
    result = cli_run("index", "--db", tmp_path / "x.duckdb", "--images", images, "--taxonomy", tax,
                     "--classifier", spec, "--beam", "0", "--samples", "1", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["classifier_id"] == clf.classifier_id and stats["edits_computed"] == 12
    with open_store(tmp_path / "x.duckdb", read_only=True) as store:
        assert store.resolve_classifier(spec)["class_names"] == ["cat", "dog", "bird"]


def test_torchscript_id_follows_weights_and_preprocessing(tmp_path, ts_file):
    base = load_classifier(f"torchscript:{ts_file}?class_names=a,b,c&size=32").classifier_id
    copy = tmp_path / "deploy" / "model-final-v7.pt"
    copy.parent.mkdir()
    shutil.copyfile(ts_file, copy)
    assert load_classifier(f"torchscript:{copy}?class_names=a,b,c&size=32").classifier_id == base
    assert load_classifier(f"torchscript:{copy}?class_names=a,b,c&size=40").classifier_id != base
    assert load_classifier(f"torchscript:{copy}?class_names=a,b,c&size=32&std=0.5").classifier_id != base
    module = torch.jit.load(str(copy))
    with torch.no_grad():
        module.head.bias[0] += 1e-3
    torch.jit.save(module, str(copy))
    assert load_classifier(f"torchscript:{copy}?class_names=a,b,c&size=32").classifier_id != base


def test_torchscript_refuses_pickles_and_needs_class_names(tmp_path, ts_file):
    with pytest.raises(DiffexError, match=r"needs its class names: add \?class_names="):
        load_classifier(f"torchscript:{ts_file}")
    pickled = tmp_path / "model.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()), pickled)
    with pytest.raises(DiffexError, match=r"pickled Python object.*allow_pickle=1"):
        load_classifier(f"torchscript:{pickled}?class_names=a,b")
    clf = load_classifier(f"torchscript:{pickled}?class_names=a,b&allow_pickle=1&size=8")  # the user's explicit choice
    assert clf.class_names == ("a", "b")
    weights = tmp_path / "weights.pt"
    torch.save(TinyNet().state_dict(), weights)
    with pytest.raises(DiffexError, match="holds a state_dict, not a model"):
        load_classifier(f"torchscript:{weights}?class_names=a,b,c")
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(DiffexError, match="not a TorchScript archive"):
        load_classifier(f"torchscript:{text}?class_names=a,b")
    for bad, message in [("size=big", "whole number"), ("mean=1,2", "1 or 3"), ("class_names=a,a", "repeats"),
                         ("std=0", "positive"), ("resample=cubic", "unknown resample")]:
        with pytest.raises(DiffexError, match=message):
            load_classifier(f"torchscript:{ts_file}?{bad}")


# ---------------------------------------------------------------------------------------- clip


CLIP_SPEC = "clip:{}?labels=young person,old person&template=a photo of a {{}}"


def test_clip_zero_shot_logits_are_scaled_cosines(tmp_path, images, clip_dir):
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    spec = CLIP_SPEC.format(clip_dir)
    clf = load_classifier(spec)
    assert clf.class_names == ("young person", "old person")
    pictures = [im for _, im in load_images([str(images)])]
    model = CLIPModel.from_pretrained(clip_dir).eval()
    enc = CLIPTokenizer.from_pretrained(clip_dir)(["a photo of a young person", "a photo of a old person"],
                                                   padding=True, return_tensors="pt")
    pixels = CLIPImageProcessorPil.from_pretrained(clip_dir)(images=pictures, return_tensors="pt")["pixel_values"]
    with torch.no_grad():  # CLIP's own forward: logit_scale.exp() * cosine
        expected = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels).logits_per_image
    np.testing.assert_allclose(score_images(clf, pictures)[0], expected.numpy(), atol=1e-4)
    stats = _index(tmp_path, images, spec)
    assert stats.classifier_id == clf.classifier_id and stats.scores_computed == 3 + 12


def test_clip_id_and_spec_errors(tmp_path, clip_dir):
    base = load_classifier(CLIP_SPEC.format(clip_dir)).classifier_id
    moved = tmp_path / "copy"
    shutil.copytree(clip_dir, moved)
    assert load_classifier(CLIP_SPEC.format(moved)).classifier_id == base
    # the default template is the one above: same id; another template is another classifier
    assert load_classifier(f"clip:{moved}?labels=young person,old person").classifier_id == base
    assert load_classifier(f"clip:{moved}?labels=young person,old person&template=a {{}} face").classifier_id != base
    assert load_classifier(f"clip:{moved}?labels=old person,young person&template=a photo of a {{}}").classifier_id != base
    _bump_one_weight(moved / "model.safetensors")
    assert load_classifier(CLIP_SPEC.format(moved)).classifier_id != base
    for bad, message in [(f"clip:{clip_dir}", "at least two labels"),
                         (f"clip:{clip_dir}?labels=a,b&template=a photo", "must contain"),
                         (f"clip:{tmp_path}/none/clip?labels=a,b", "no clip model directory")]:
        with pytest.raises(DiffexError, match=message):
            load_classifier(bad)


def test_one_store_scores_cached_edits_with_every_kind(tmp_path, images, hf_dir, ts_file, clip_dir):
    specs = [f"hf:{hf_dir}", f"torchscript:{ts_file}?class_names=a,b,c&size=32", CLIP_SPEC.format(clip_dir)]
    first = _index(tmp_path, images, specs[0])
    for spec in specs[1:]:
        again = _index(tmp_path, images, spec)
        assert again.edits_computed == 0 and again.edits_reused == first.edits_computed  # only forward passes
    with open_store(tmp_path / "x.duckdb", read_only=True) as store:
        assert len(store.classifiers()) == 3
        rows = store.top_subtypes("old person", 5, classifier=specs[2])
    assert {r["node"] for r in rows} == {"red hair", "grey hair"}
