"""Read commands start fast: `diffex --help`, `info` and `query` import none of torch,
transformers, diffusers or faiss (checked with `python -X importtime` in a fresh process; the
timing itself is bench/cli_startup.py's job)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = {"torch", "transformers", "diffusers", "faiss"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_images):
    from diffex import run_index

    db = tmp_path_factory.mktemp("startup") / "s.duckdb"
    taxonomy = db.parent / "t.json"
    taxonomy.write_text('{"domain": "cartoon faces", "categories": {"facial hair": ["goatee"]}}')
    run_index(db, [str(p) for p in sorted(demo_images.glob("*.png"))[:2]], taxonomy, "demo:v1", "demo", beam=0, samples=1)
    return db


def _imported(*args) -> set[str]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "diffex.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    assert {"click", "diffex.cli.output"} <= modules  # the measurement itself works
    return modules


@pytest.mark.parametrize("args", [["--help"], ["info", "--db"], ["query", "--db", "SELECT * FROM top_subtypes('old', 3)"]],
                         ids=["help", "info", "query"])
def test_read_commands_import_nothing_heavy(args, store):
    args = [*args[:2], store, *args[2:]] if "--db" in args else args
    heavy = _imported(*args) & HEAVY
    assert not heavy, f"diffex {args[0]} imported {sorted(heavy)}"
