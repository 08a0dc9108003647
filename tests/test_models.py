"""The one loading policy (diffex/models.py): every backend loads through it, nothing is
downloaded, a model that is not present fails at once with one line, and no database is
created before the models a run needs are known to load."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffex import models
from diffex.errors import DiffexError

PACKAGE = Path(models.__file__).resolve().parent
DEMO_CLIP = PACKAGE / "demo" / "clip"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _calls(tree: ast.AST, attr: str, owner: str | None = None) -> list[ast.Call]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
            if owner is None or (isinstance(node.func.value, ast.Name) and node.func.value.id == owner):
                out.append(node)
    return out


def test_no_module_loads_a_model_around_the_policy():
    """A future backend cannot call from_pretrained / torch.load / a hub download itself."""
    policy = PACKAGE / "models.py"
    pattern = re.compile(r"\bfrom_pretrained\b|\btorch\.load\b|\bhf_hub_download\b|\bsnapshot_download\b")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == policy:
            continue
        text = path.read_text(encoding="utf-8")
        for i, line in enumerate(text.splitlines(), start=1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}")
        tree = ast.parse(text)
        # nor by name: getattr(cls, "from_" + "pretrained")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
                name = node.args[1] if len(node.args) > 1 else None
                if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                    continue  # a computed name: too clever to check, and none exists today
                if "pretrained" in name.value or name.value == "load":
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: getattr(..., {name.value!r})")
    assert not offenders, "load models through diffex/models.py:\n" + "\n".join(offenders)
    tree = ast.parse(policy.read_text(encoding="utf-8"))
    calls = _calls(tree, "from_pretrained")
    assert len(calls) == 1  # load_pretrained, the only door
    keywords = {k.arg: k.value for k in calls[0].keywords}
    assert isinstance(keywords.get("local_files_only"), ast.Constant) and keywords["local_files_only"].value is True
    loads = _calls(tree, "load", owner="torch")
    assert len(loads) == 1 and "weights_only" in {k.arg for k in loads[0].keywords}
    downloads = _calls(tree, "snapshot_download") + [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "snapshot_download"]
    assert downloads and all(
        any(k.arg == "local_files_only" and isinstance(k.value, ast.Constant) and k.value.value is True for k in c.keywords)
        for c in downloads)


def _fake_hub(root: Path, hub_id: str, source: Path) -> Path:
    """`source` laid out as the Hugging Face cache holds a downloaded model at COMMIT."""
    repo = root / ("models--" + hub_id.replace("/", "--"))
    shutil.copytree(source, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def test_hub_id_in_the_local_cache_loads_without_hf_hub_offline(tmp_path, monkeypatch, no_network):
    from diffex.scoring import load_classifier
    from diffex.embedding import load_embedder

    monkeypatch.setenv("HF_HUB_CACHE", str(_fake_hub(tmp_path / "hub", "tiny-org/demo-clip", DEMO_CLIP)))
    found = models.resolve("CLIP", "tiny-org/demo-clip")
    assert found.path == tmp_path / "hub" / "models--tiny-org--demo-clip" / "snapshots" / COMMIT
    assert (found.hub_id, found.commit, found.use_safetensors) == ("tiny-org/demo-clip", COMMIT, True)
    hub = load_embedder("clip:tiny-org/demo-clip")
    assert hub.spec == "clip:tiny-org/demo-clip"
    assert hub.embedder_id == load_embedder("demo").embedder_id  # the same model, found through the cache
    shipped = json.loads((DEMO_CLIP / "diffex.json").read_text())["validity_threshold"]
    assert hub.validity_threshold == shipped != 0.2  # its calibration file came along (0.2: none)
    clf = load_classifier("clip:tiny-org/demo-clip?labels=young person,old person")
    assert clf.class_names == ("young person", "old person")
    assert os.environ.get("HF_HUB_OFFLINE") is None  # the offline switch is diffex's, for its loads only


def test_missing_hub_model_is_one_line_without_any_network_call(tmp_path, monkeypatch, no_network):
    from diffex.scoring import load_classifier
    from diffex.embedding import load_embedder
    from diffex.taxonomy.vlm import load_vlm

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    expected = (r"^{kind} model 'org/absent' is not in the local Hugging Face cache \(" + re.escape(str(tmp_path / "empty"))
                + r"\) and diffex downloads nothing: give a local directory written by save_pretrained, .*"
                  r"`hf download org/absent`")
    start = time.perf_counter()
    for kind, load in [("CLIP", lambda: load_embedder("clip:org/absent")),
                       ("hf", lambda: load_classifier("hf:org/absent")),
                       ("clip", lambda: load_classifier("clip:org/absent?labels=a,b")),
                       ("VLM", lambda: load_vlm("hf:org/absent")._load())]:
        with pytest.raises(DiffexError, match=expected.format(kind=kind).replace("^VLM", "^cannot load VLM hf:org/absent: VLM")) as err:
            load()
        assert "\n" not in str(err.value)
    assert time.perf_counter() - start < 10  # was 33 s of network retries for one model


def test_pickle_policy_covers_every_component_of_a_pipeline(tmp_path):
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "vae").mkdir()
    (pipe / "model_index.json").write_text("{}")
    (pipe / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (pipe / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(DiffexError, match=r"only pickle weights \(unet/diffusion_pytorch_model.bin\).*allow_pickle=1"):
        models.check_weights("LEDITS++", pipe, allow_pickle=False)
    assert models.check_weights("LEDITS++", pipe, allow_pickle=True) is None  # the library prefers safetensors
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    assert models.check_weights("LEDITS++", pipe, allow_pickle=False) is True
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffexError, match="no model weights"):
        models.check_weights("hf", tmp_path / "empty", False)


def test_spec_that_looks_like_a_path_is_never_a_hub_lookup(tmp_path):
    for target in ("./missing", "/no/such/model", "a/b/c", "~/models/x", "name with spaces"):
        with pytest.raises(DiffexError, match=f"no hf model directory at {re.escape(target)}"):
            models.resolve("hf", target)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DiffexError, match="is a file"):
        models.resolve("hf", str(tmp_path / "file"))


def test_offline_switch_is_restored(monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    before = constants.HF_HUB_OFFLINE
    with models.offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True
    assert os.environ["HF_HUB_OFFLINE"] == "0" and constants.HF_HUB_OFFLINE == before


def test_index_with_an_uncached_hub_embedder_fails_at_once_and_creates_nothing(tmp_path, demo_images, small_taxonomy):
    """The issue's case, as a user runs it: no HF_HUB_OFFLINE, an empty HF_HOME."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env["HF_HOME"] = str(tmp_path / "hf-home")
    db = tmp_path / "audit.duckdb"
    args = ["index", "--db", db, "--images", demo_images, "--taxonomy", small_taxonomy, "--classifier", "demo:v1",
            "--embedder", "clip:openai/clip-vit-base-patch32"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "diffex.cli.main", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)
    seconds = time.perf_counter() - start
    assert done.returncode == 1, done.stderr
    assert done.stderr == (f"Error: CLIP model 'openai/clip-vit-base-patch32' is not in the local Hugging Face cache "
                           f"({tmp_path / 'hf-home' / 'hub'}) and diffex downloads nothing: give a local directory "
                           "written by save_pretrained, or put the model in that cache first "
                           "(`hf download openai/clip-vit-base-patch32` on a machine with network)\n")
    assert not db.exists() and not (tmp_path / "audit-cache").exists()
    assert seconds < 10, seconds  # imports included; was over 33 s


@pytest.mark.parametrize("case", ["broken", "uncached"])
def test_failed_ledits_load_leaves_no_new_database(case, tmp_path, demo_images, small_taxonomy, brightness, cli_run,
                                                   monkeypatch):
    pytest.importorskip("diffusers")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    if case == "broken":  # present, passes the file checks, fails inside diffusers
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "model_index.json").write_text("{}")
        (tmp_path / "broken" / "weights.safetensors").write_bytes(b"")
        editor, message = f"ledits:{tmp_path / 'broken'}?size=64", f"Error: cannot load LEDITS++ model '{tmp_path / 'broken'}': "
    else:
        editor, message = "ledits:tiny-org/not-in-cache?size=64", "Error: LEDITS++ model 'tiny-org/not-in-cache' is not in"
    db = tmp_path / "new.duckdb"
    result = cli_run("index", "--db", db, "--images", demo_images, "--taxonomy", small_taxonomy,
                     "--classifier", brightness, "--editor", editor, "--samples", "1")
    assert result.exit_code == 1 and result.output.startswith(message), result.output
    assert result.output.count("\n") == 1, result.output
    assert not db.exists() and not (tmp_path / "new-cache").exists()
