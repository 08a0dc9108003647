"""LEDITS++ on CUDA in fp16 (the configuration users index with). Off by default: `pytest -m gpu`.

Same tiny pipeline as tests/test_ledits_editor.py; checks that the fp16 path runs, that a
restored inversion reproduces the fresh edits bit for bit on the GPU, and that batched images
match one-at-a-time ones within fp16 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffex.editing import load_editor  # noqa: E402
from diffex.hashing import hash_image  # noqa: E402
from diffex.types import Concept  # noqa: E402

from ledits_fixtures import build_tiny_sd  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_fp16_cuda_edits_restore_and_batch(tmp_path):
    model = build_tiny_sd(tmp_path / "tiny-sd")
    rng = np.random.RandomState(5)
    photos = [Image.fromarray(rng.randint(0, 256, size=(64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    concepts = (Concept("beard"), Concept("hat", "remove"))
    results = {}
    for batch in (1, 4):
        spec = f"ledits:{model}?size=64&steps=4&device=cuda&batch={batch}"
        runs = []
        for _ in range(2):  # fresh inversions, then restored from the cache
            editor = load_editor(spec)
            assert editor.options["dtype"] == "float16"
            sessions = [editor.open(p, hash_image(p), tmp_path / f"cache-{batch}") for p in photos]
            outs = editor.edit_batch(sessions, concepts, 1) + editor.edit_batch(sessions, (), 0)
            runs.append([np.asarray(o.image).astype(int) for o in outs])
            for s in sessions:
                s.close()
        assert all((a == b).all() for a, b in zip(*runs))  # restored == fresh, on the GPU
        results[batch] = runs[0]
    # a batch mixing one restored inversion (CPU tensors from the cache) with fresh ones (GPU)
    editor = load_editor(f"ledits:{model}?size=64&steps=4&device=cuda&batch=4")
    sessions = [editor.open(p, hash_image(p), tmp_path / "cache-mixed") for p in photos]
    editor.edit_batch(sessions[:1], concepts, 1)
    mixed = load_editor(f"ledits:{model}?size=64&steps=4&device=cuda&batch=4")
    sessions = [mixed.open(p, hash_image(p), tmp_path / "cache-mixed") for p in photos]
    outs = mixed.edit_batch(sessions, concepts, 1)
    assert (mixed.counters["restores"], mixed.counters["inversions"]) == (1, 3)
    assert all(np.abs(np.asarray(o.image).astype(int) - r).mean() < 0.5 for o, r in zip(outs, results[4][:4]))
    for a, b in zip(results[1], results[4]):
        assert a.shape == (64, 64, 3)
        assert np.abs(a - b).mean() < 0.5  # fp16 rounding, not another image's attention
