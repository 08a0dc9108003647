"""Shared fixtures: small demo-world images, taxonomies and a real (tiny) classifier file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffex.demo.world import write_dataset

REPO = Path(__file__).resolve().parents[1]
DEMO_TAXONOMY = REPO / "diffex" / "demo" / "taxonomy.json"

@pytest.fixture(scope="session", autouse=True)
def private_user_cache(tmp_path_factory):
    """Per-user memos (model file hashes) go to a temporary dir, not the tester's ~/.cache;
    set in the environment so CLI subprocesses inherit it."""
    import os

    before = os.environ.get("DIFFEX_CACHE_DIR")
    os.environ["DIFFEX_CACHE_DIR"] = str(tmp_path_factory.mktemp("user-cache"))
    yield
    if before is None:
        os.environ.pop("DIFFEX_CACHE_DIR", None)
    else:
        os.environ["DIFFEX_CACHE_DIR"] = before


SMALL_TAXONOMY = {
    "domain": "cartoon faces",
    "categories": {
        "facial hair": {"beard": ["goatee", "full beard"], "mustache": ["handlebar mustache"]},
        "headwear": {"hat": ["top hat", "cap"]},
        "hair colour": ["grey hair", "red hair"],
    },
}
SMALL_NODES = 13  # 3 groups + beard, mustache, hat + 7 leaves

# A real torch classifier on mean colour: "bright" rises with the image's mean intensity.
BRIGHTNESS_CLASSIFIER = '''
import numpy as np
import torch

class Brightness:
    class_names = ["dark", "bright"]
    preprocessing = {"op": "mean rgb / 255 - 0.5"}

    def __init__(self, gain):
        self.model = torch.nn.Linear(3, 2)
        with torch.no_grad():
            self.model.weight.copy_(torch.tensor([[-gain] * 3, [gain] * 3]))
            self.model.bias.zero_()

    def logits(self, images):
        x = np.stack([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) / 255 - 0.5 for im in images])
        return self.model(torch.from_numpy(x))

def make():
    return Brightness(4.0)

def make_retrained():
    return Brightness(9.0)

class Broken(Brightness):
    def logits(self, images):
        return torch.zeros(len(images), 3)

class Nan(Brightness):
    def logits(self, images):
        return torch.full((len(images), 2), float("nan"))

def make_wrong_shape():
    return Broken(1.0)

def make_nan():
    return Nan(1.0)
'''


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo-images")
    write_dataset(folder, 6, start_seed=500)
    return folder


@pytest.fixture(scope="session")
def classifier_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clf") / "brightness.py"
    path.write_text(BRIGHTNESS_CLASSIFIER)
    return path


@pytest.fixture(scope="session")
def brightness(classifier_file) -> str:
    return f"python:{classifier_file}:make"


@pytest.fixture
def small_taxonomy(tmp_path) -> Path:
    path = tmp_path / "taxonomy.json"
    path.write_text(json.dumps(SMALL_TAXONOMY))
    return path


@pytest.fixture
def cli_run():
    """Run the diffex CLI in-process with the same error policy as the console script."""
    from diffex.cli.main import cli

    def run(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, [str(a) for a in args], input=input, prog_name="diffex")

    return run


@pytest.fixture(scope="session")
def demo_v1_v2(tmp_path_factory):
    """Issue 14: a small demo store indexed with demo:v1 by `diffex demo` (which writes its
    report), then with demo:v2 by `diffex check --images --taxonomy` (the incremental path: only
    v2's forward passes over the cached edits). Shared by test_report.py and test_check.py."""
    from diffex.cli.main import cli

    tmp = tmp_path_factory.mktemp("demo-v1-v2")
    db = tmp / "demo.duckdb"
    run = lambda *a: CliRunner().invoke(cli, [str(x) for x in a], prog_name="diffex")  # noqa: E731
    demo = run("demo", "--db", db, "--images", "8", "--samples", "1")
    assert demo.exit_code == 0, demo.output
    policy = tmp / "policy.toml"
    policy.write_text('[[rule]]\nnode = "top hat"\nclass = "old"\nmax_abs_effect = 0.1\n')
    check = run("check", "--db", db, "--classifier", "demo:v2", "--policy", policy,
                "--images", tmp / "demo-images", "--taxonomy", tmp / "demo-taxonomy.json")
    return {"db": db, "tmp": tmp, "demo": demo, "check_v2": check, "policy": policy}
