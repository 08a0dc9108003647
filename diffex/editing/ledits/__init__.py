"""LEDITS++ editor backend (Stable Diffusion 1.x / 2.x, and SDXL as `ledits-xl:`).

This package: spec.py (options, model identity, inversion keys), editor.py (the editor:
pipeline loading, inversion state on the pipeline, batches), patches.py (the diffusers fixes),
session.py (one image: the inversion cache).

SPEC: `ledits:MODEL_ID_OR_PATH[?key=value&...]`, e.g.
`ledits:stable-diffusion-v1-5/stable-diffusion-v1-5?steps=50&guidance=10`.

Options (defaults = the DiffEx reference code): size=512 (square input, multiple of 32),
steps=50 (inversion steps), skip=0.1, guidance=10 (edit_guidance_scale), threshold=0.75
(edit_threshold), dtype (float16 on cuda, else float32), device (cuda if available, else
cpu), batch=1 (images inverted and edited together in one UNet batch; same edit, several
images), safety=1 (keep the model's safety checker; 0 loads without it), revision (hub
models), allow_pickle=1 (accept a component saved only as pickle, e.g.
diffusion_pytorch_model.bin). Models load through diffex's loading policy (diffex/models.py):
a local directory, or a hub id already in the local Hugging Face cache; nothing is
downloaded. The editor id hashes the model (hub id + revision, or the bytes of a local
directory's weight and config files) and every option that changes pixels; not device or
batch, which change pixels only at the level of float rounding (see `edit_batch`).

Invert once, edit many. LEDITS++ draws fresh noise while inverting (the edit itself is
deterministic given the inversion: `__call__` passes the stored noise maps `zs` to the
scheduler), so the sample seed is what seeds the *inversion*. One inversion per
(image, editor, seed) is computed once, written to the content-addressed cache as
safetensors + a small JSON (the scheduler state that must go with it) and restored for
every later edit of that image and seed, in this run or any later one. A restored
inversion gives edits bit-identical to a fresh `invert()` + edit (tests check this).

The null-edit baseline costs no UNet evaluation: with the sde-dpmsolver++ scheduler
LEDITS++ uses, the reconstruction `__call__(editing_prompt=None)` would compute ends in the
data prediction of the inversion's own last step, which `invert()` leaves in the scheduler.
It is kept with the inversion and only VAE-decoded (bit-identical to the pipeline's
reconstruction; tested). Other schedulers fall back to running the pipeline.
"""

from .editor import LeditsEditor, LeditsXLEditor, from_spec, from_spec_xl
from .session import LeditsSession
from .spec import DEFAULTS, INVERSIONS, OPTIONS, RECONSTRUCT_SEED, inversion_key, parse_spec

__all__ = ["LeditsEditor", "LeditsXLEditor", "LeditsSession", "from_spec", "from_spec_xl", "parse_spec",
           "inversion_key", "INVERSIONS", "OPTIONS", "DEFAULTS", "RECONSTRUCT_SEED"]
