"""LEDITS++ editor backend (Stable Diffusion 1.x / 2.x, and SDXL as `ledits-xl:`).

Why one file of ~700 lines: everything here serves one backend (spec, model identity, loading,
the diffusers fixes it needs, batching, the inversion cache), and the fixes only make sense
beside the calls they patch. Issue 11 moves it into `diffex/editing/ledits/` (spec, pipeline,
inversion cache) with the other editors.

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

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qsl

from PIL import Image

from .. import models
from ..errors import DiffexError
from ..hashing import hash_files, hash_json
from ..types import DIRECTIONS, Concept
from .base import EditOutput, EditSession, Editor


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


# Option -> (parser, default). Defaults are the DiffEx reference code's settings;
# device/dtype defaults depend on the machine and are resolved in `from_spec`.
OPTIONS: dict[str, Any] = {
    "size": int,
    "steps": int,
    "skip": float,
    "guidance": float,
    "threshold": float,
    "device": str,
    "dtype": str,
    "batch": int,
    "safety": _parse_bool,
    "revision": str,
    "allow_pickle": _parse_bool,
}
DEFAULTS: dict[str, Any] = {
    "size": 512, "steps": 50, "skip": 0.1, "guidance": 10.0, "threshold": 0.75, "batch": 1, "safety": True,
    "allow_pickle": False,
}
DTYPES = ("float16", "bfloat16", "float32")
# The reconstruction (null edit) is taken from the inversion of this seed; samples 0..k-1
# of the indexer share that inversion, so the baseline costs no extra inversion.
RECONSTRUCT_SEED = 0
# Inversions live in <cache>/inversions/ab/<inversion_key>.safetensors (+ .json sidecar).
INVERSIONS = "inversions"


def inversion_key(image_id: str, editor_id: str, seed: int) -> str:
    """Cache key of one image's inversion by one editor for one seed (`diffex verify` checks
    cached inversions against the store with it)."""
    return hash_json({"image": image_id, "editor": editor_id, "seed": int(seed)})[:32]


# Weight and config files whose bytes define a local model's identity.
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def parse_spec(rest: str) -> tuple[str, dict[str, str]]:
    """Split `MODEL[?k=v&...]` into the model and raw option strings; unknown keys raise."""
    model, _, query = rest.partition("?")
    if not model:
        raise DiffexError("ledits: needs a model id or path, e.g. ledits:stable-diffusion-v1-5/stable-diffusion-v1-5")
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DiffexError(f"unknown ledits option(s) {', '.join(unknown)}; valid options: {', '.join(OPTIONS)}")
    return model, options


def from_spec(rest: str) -> "LeditsEditor":
    return LeditsEditor(*parse_spec(rest))


def from_spec_xl(rest: str) -> "LeditsXLEditor":
    return LeditsXLEditor(*parse_spec(rest))


def _hub_commit(model: str, revision: str) -> str | None:
    """The commit `revision` of hub model `model` resolves to in the local Hugging Face cache
    (a 40-hex revision is a commit already), or None when the cache does not have it."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    snapshot = models.hub_snapshot(model, revision)  # .../models--org--name/snapshots/<commit>
    return snapshot.name if snapshot is not None else None


def _local_model_hash(path: Path) -> str:
    """sha256 over the weight and config files of a saved pipeline (relative name + bytes)."""
    files = [p for p in path.rglob("*") if p.is_file() and p.suffix in _IDENTITY_SUFFIXES]
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise DiffexError(f"{path} holds no .safetensors/.bin weights; expected a directory saved with save_pretrained")
    return hash_files(path, files)


class LeditsEditor(Editor):
    """LEDITS++ on a Stable Diffusion 1.x/2.x checkpoint (`LEditsPPPipelineStableDiffusion`).

    Holds ONE pipeline, loaded on first use. LEDITS++ keeps the current inversion(s) on the
    pipeline object, so sessions share it under a lock and re-apply their inversions whenever
    other sessions (or another seed) used the pipeline since (tracked by owner tokens).
    """

    name = "ledits"
    pipeline_class = "LEditsPPPipelineStableDiffusion"
    # Attributes `invert()` leaves on the pipeline and `__call__` reads (besides the scheduler).
    state_tensors = ("init_latents", "zs", "inversion_steps")
    state_values = ("batch_size", "eta")
    # Whether the null edit may be read from the inversion (see the module docstring);
    # only verified for the SD pipeline.
    latent_reconstruction = True

    def __init__(self, model: str, options: dict[str, str] | None = None):
        options = dict(options or {})
        parsed: dict[str, Any] = dict(DEFAULTS)
        for key, raw in options.items():
            try:
                parsed[key] = OPTIONS[key](raw)
            except ValueError:
                kind = "boolean (0/1)" if OPTIONS[key] is _parse_bool else OPTIONS[key].__name__
                raise DiffexError(f"ledits option {key}={raw!r} is not a valid {kind}") from None
        if parsed["size"] <= 0 or parsed["size"] % 32:
            raise DiffexError(f"ledits option size={parsed['size']} must be a positive multiple of 32")
        if parsed["steps"] < 1:
            raise DiffexError(f"ledits option steps={parsed['steps']} must be >= 1")
        if not 0 <= parsed["skip"] < 1:
            raise DiffexError(f"ledits option skip={parsed['skip']} must be in [0, 1)")
        if not 0 <= parsed["threshold"] <= 1:
            raise DiffexError(f"ledits option threshold={parsed['threshold']} must be in [0, 1]")
        if parsed["batch"] < 1:
            raise DiffexError(f"ledits option batch={parsed['batch']} must be >= 1")
        if "device" not in parsed:
            import torch

            parsed["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        if "dtype" not in parsed:
            parsed["dtype"] = "float16" if str(parsed["device"]).startswith("cuda") else "float32"
        if parsed["dtype"] not in DTYPES:
            raise DiffexError(f"ledits option dtype={parsed['dtype']!r}; valid: {', '.join(DTYPES)}")

        self.model = model
        self.options = parsed
        self.local_path: Path | None = None
        expanded = Path(os.path.expanduser(model))
        if expanded.exists():
            self.local_path = expanded
        elif models.looks_like_path(model):
            raise DiffexError(f"ledits model path {model} does not exist")
        self._config: dict[str, Any] | None = None
        self._pipe = None
        self._lock = threading.RLock()
        self._active: tuple | None = None  # (session tokens, seed) whose inversions are on the pipeline
        self._stacked: tuple[dict, dict] | None = None  # those inversions, as applied
        self.counters = {"inversions": 0, "restores": 0, "edits": 0, "reconstructions": 0, "blocked": 0}
        self.seconds = {"load": 0.0, "invert": 0.0, "edit": 0.0, "reconstruct": 0.0}

    # ----- identity -------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            if self.local_path is not None:
                model = {"sha256": _local_model_hash(self.local_path)}
                scheduler_file = self.local_path / "scheduler" / "scheduler_config.json"
                scheduler = json.loads(scheduler_file.read_text()) if scheduler_file.exists() else None
            else:
                # A hub checkpoint is pinned by id + the commit its revision points to (a branch
                # like "main" moves); its scheduler config comes with that commit.
                revision = self.options.get("revision", "main")
                commit = _hub_commit(self.model, revision)
                if commit is None:  # diffex downloads nothing (diffex/models.py)
                    raise models.not_present("LEDITS++", self.model, self.options.get("revision"))
                model = {"id": self.model, "revision": commit}
                scheduler = None
            if isinstance(scheduler, dict):
                scheduler = {k: v for k, v in scheduler.items() if not k.startswith("_")}
            o = self.options
            self._config = {
                "pipeline": self.pipeline_class,
                "model": model,
                "scheduler": scheduler,
                "size": o["size"],
                "steps": o["steps"],
                "skip": o["skip"],
                "guidance": o["guidance"],
                "threshold": o["threshold"],
                "dtype": o["dtype"],
                "safety": o["safety"],
                # What the seed drives, so a change of that contract changes the id.
                "seeding": "inversion",
            }
        return self._config

    # ----- pipeline -------------------------------------------------------------------
    def check(self, load: bool = False) -> None:
        """Fail now, with one line, if the model is absent or breaks the loading policy (file
        look-ups only); `load=True` also loads the pipeline (seconds to minutes)."""
        self._source()
        _ = self.editor_id
        if load:
            self.pipeline()

    def _source(self) -> "models.ModelSource":
        target = str(self.local_path) if self.local_path is not None else self.model
        return models.resolve("LEDITS++", target, allow_pickle=self.options["allow_pickle"],
                              revision=None if self.local_path is not None else self.options.get("revision"))

    def pipeline(self):
        """The loaded pipeline (loads on first call). Raises DiffexError when it cannot be loaded."""
        if self._pipe is None:
            with self._lock:
                if self._pipe is None:
                    self._pipe = self._load()
        return self._pipe

    def _load(self):
        import torch
        import diffusers

        start = time.perf_counter()
        cls = getattr(diffusers, self.pipeline_class)
        found = self._source()
        # diffusers >= 0.42 renamed torch_dtype to dtype (the old name still works, with a warning).
        from diffusers.utils import deprecation_utils

        dtype_key = "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
        kwargs: dict[str, Any] = {dtype_key: getattr(torch, self.options["dtype"])}
        if not self.options["safety"]:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        # the revision is resolved already: `found.path` is that commit's snapshot folder
        pipe = models.load_pretrained(cls, found, "LEDITS++", **kwargs)
        _use_ledits_scheduler(pipe)
        try:
            pipe = pipe.to(self.options["device"])
        except Exception as exc:
            raise DiffexError(f"cannot move the LEDITS++ pipeline to device {self.options['device']!r}: {exc}") from None
        pipe.set_progress_bar_config(disable=True)
        if getattr(pipe, "safety_checker", None) is not None:
            # it logs a warning per blanked batch; diffex counts those edits as 'blocked' instead
            logging.getLogger("diffusers.pipelines.stable_diffusion.safety_checker").setLevel(logging.ERROR)
        self.seconds["load"] += time.perf_counter() - start
        return pipe

    def generator(self, seed: int):
        import torch

        device = self.options["device"]
        return torch.Generator(device="cpu" if device == "mps" else device).manual_seed(int(seed))

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        return int(self.options["batch"])

    # ----- inversion state on the pipeline ----------------------------------------------
    def capture_states(self, pipe, count: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The inversion `invert()` left on `pipe` for `count` images, split per image:
        tensors (cloned, contiguous) and plain values."""
        shared = {
            "inversion_steps": pipe.inversion_steps.detach().contiguous().clone(),
            "scheduler_timesteps": pipe.scheduler.timesteps.detach().contiguous().clone(),
        }
        values = {name: _jsonable(getattr(pipe, name)) for name in self.state_values}
        values.update(batch_size=1, timestep_spacing=pipe.scheduler.config.timestep_spacing,
                      num_timesteps=int(len(pipe.scheduler.timesteps)))
        reconstruction = self._reconstruction_latents(pipe)
        states = []
        for b in range(count):
            tensors = dict(shared)
            tensors["init_latents"] = pipe.init_latents[b : b + 1].detach().contiguous().clone()
            tensors["zs"] = pipe.zs[:, b : b + 1].detach().contiguous().clone()  # (steps, batch, ...)
            if reconstruction is not None:
                tensors["reconstruction"] = reconstruction[b : b + 1].detach().contiguous().clone()
            states.append((tensors, dict(values)))
        return states

    def _reconstruction_latents(self, pipe):
        """The latents `__call__(editing_prompt=None)` would end in, if this scheduler makes
        them equal to the inversion's last data prediction; else None (run the pipeline)."""
        from diffusers import DPMSolverMultistepScheduler

        sched = pipe.scheduler
        if not (
            self.latent_reconstruction
            and isinstance(sched, DPMSolverMultistepScheduler)
            and sched.config.algorithm_type == "sde-dpmsolver++"
            and sched.config.final_sigmas_type == "zero"  # the last step lands on x0 exactly
            and sched.model_outputs[-1] is not None
        ):
            return None
        return sched.model_outputs[-1]

    def apply_state(self, pipe, tensors: dict[str, Any], values: dict[str, Any]) -> None:
        """Put (cached, possibly stacked) inversions back on `pipe`, exactly as `invert()` would
        have left them."""
        from diffusers.models.attention_processor import AttnProcessor

        device = pipe.device
        for name in self.state_tensors:
            setattr(pipe, name, tensors[name].to(device))
        for name in self.state_values:
            value = values[name]
            setattr(pipe, name, tuple(value) if isinstance(value, list) else value)
        # Restoring only the tensors gives a silently different image or an IndexError
        # (ENVIRONMENT.md): the edit reads timesteps from the scheduler's state.
        pipe.scheduler.register_to_config(timestep_spacing=values["timestep_spacing"])
        pipe.scheduler.set_timesteps(values["num_timesteps"])
        if not _tensor_equal(pipe.scheduler.timesteps, tensors["scheduler_timesteps"]):
            raise DiffexError("cached LEDITS++ inversion does not match this scheduler; delete the inversions cache")
        pipe.unet.set_attn_processor(AttnProcessor())  # what invert() does before its UNet passes

    def _out_of_memory(self, exc: BaseException) -> DiffexError:
        return DiffexError(
            f"out of GPU memory while running LEDITS++ at size={self.options['size']}, batch={self.options['batch']}: "
            "try a smaller batch (batch=1) or image size (e.g. size=384), or dtype=float16"
        )

    def open(self, image: Image.Image, image_id: str, cache_dir: Path) -> "LeditsSession":
        return LeditsSession(self, image, image_id, Path(cache_dir))

    # ----- batches of images ---------------------------------------------------------------
    def edit_batch(self, sessions: Sequence["LeditsSession"], concepts: Sequence[Concept], seed: int) -> list[EditOutput]:
        """The same edit of up to `batch` images per pipeline call (their inversions stacked).

        Batched pixels equal one-at-a-time pixels up to float rounding (the UNet sees a
        larger batch; LEDITS++'s thresholded masks can turn that into a few flipped pixels),
        which is why `batch` is not part of the editor id. Outputs are in `sessions` order."""
        out: list[EditOutput] = []
        step = max(1, self.batch_size)
        for start in range(0, len(sessions), step):
            out.extend(self._run_group(list(sessions[start : start + step]), tuple(concepts), int(seed)))
        return out

    def _run_group(self, sessions: list["LeditsSession"], concepts: tuple[Concept, ...], seed: int) -> list[EditOutput]:
        for c in concepts:
            if c.direction not in DIRECTIONS:
                raise DiffexError(f"concept direction {c.direction!r}; valid: {', '.join(DIRECTIONS)}")
        with self._lock:
            seed_ = RECONSTRUCT_SEED if not concepts else seed
            pipe = self._activate(sessions, seed_)  # may invert: timed as inversion, not here
            start = time.perf_counter()
            try:
                if not concepts and "reconstruction" in self._stacked[0]:
                    images, flags = self._decode(pipe, self._stacked[0]["reconstruction"])
                else:
                    o = self.options
                    kwargs: dict[str, Any] = {"editing_prompt": None}
                    if concepts:
                        kwargs = dict(
                            editing_prompt=[c.prompt for c in concepts],
                            reverse_editing_direction=[c.direction == "remove" for c in concepts],
                            edit_guidance_scale=o["guidance"],
                            edit_threshold=o["threshold"],
                        )
                    with _per_image_attention(pipe, len(sessions)):
                        result = pipe(generator=self.generator(seed_), output_type="pil", **kwargs)
                    images, flags = result.images, result.nsfw_content_detected
            except Exception as exc:
                _reraise(self, exc)
        seconds = time.perf_counter() - start
        self.seconds["edit" if concepts else "reconstruct"] += seconds
        self.counters["edits" if concepts else "reconstructions"] += len(sessions)
        outputs = []
        for i, session in enumerate(sessions):
            session.seconds += seconds / len(sessions)
            blocked = bool(flags and flags[i])
            if blocked:
                # The safety checker replaced the image with black: stored, never measured.
                session.meta["blocked"] = session.meta.get("blocked", 0) + 1
                self.counters["blocked"] += 1
            outputs.append(EditOutput(images[i], "blocked" if blocked else "ok"))
        return outputs

    def _decode(self, pipe, latents):
        """VAE-decode stored latents through the pipeline's own post-processing (the last
        lines of `__call__`: decode, safety checker, postprocess)."""
        import torch

        with torch.no_grad():
            latents = latents.to(pipe.device, dtype=pipe.vae.dtype)
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
            image, flags = pipe.run_safety_checker(image, pipe.device, pipe.text_encoder.dtype)
            denormalize = [True] * image.shape[0] if flags is None else [not f for f in flags]
            images = pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=denormalize)
        return images, flags

    def _activate(self, sessions: list["LeditsSession"], seed: int):
        """Make the pipeline hold these sessions' inversions for `seed`, stacked in order.
        Call with the lock held. Fresh and restored inversions both go through `apply_state`,
        so the two paths run exactly the same tensors through the edit."""
        states = self._inversions(sessions, seed)
        pipe = self.pipeline()
        key = (tuple(s.token for s in sessions), seed)
        if self._active != key:
            self._stacked = _stack(states)
            self.apply_state(pipe, *self._stacked)
            self._active = key
        return pipe

    def _inversions(self, sessions: list["LeditsSession"], seed: int) -> list[tuple[dict, dict]]:
        """Each session's inversion for `seed`: from memory, else the cache, else computed
        (all missing ones in one batched `invert()`) and cached per image."""
        missing = [s for s in sessions if s.cached_inversion(seed) is None]
        if missing:
            self._invert(missing, seed)
        return [s._inversions[seed] for s in sessions]

    def _invert(self, sessions: list["LeditsSession"], seed: int) -> None:
        pipe = self.pipeline()
        o = self.options
        start = time.perf_counter()
        with self._lock:
            try:
                pipe.invert(
                    image=[s.image for s in sessions] if len(sessions) > 1 else sessions[0].image,
                    num_inversion_steps=o["steps"],
                    skip=o["skip"],
                    # one generator per image: each image draws the noise it would draw alone
                    generator=[self.generator(seed) for _ in sessions] if len(sessions) > 1 else self.generator(seed),
                    height=o["size"],
                    width=o["size"],
                )
            except Exception as exc:
                _reraise(self, exc)
            self._active = None  # the pipeline now holds a raw invert(); re-applied by _activate
            states = self.capture_states(pipe, len(sessions))
        seconds = time.perf_counter() - start
        self.seconds["invert"] += seconds
        self.counters["inversions"] += len(sessions)
        for session, state in zip(sessions, states):
            session.seconds += seconds / len(sessions)
            session.meta["inversions"] += 1
            session.keep_inversion(seed, state)


class LeditsXLEditor(LeditsEditor):
    """LEDITS++ on SDXL (`LEditsPPPipelineStableDiffusionXL`): same options; its invert()
    also leaves the image `size` on the pipeline, used for SDXL's time ids."""

    name = "ledits-xl"
    pipeline_class = "LEditsPPPipelineStableDiffusionXL"
    state_values = ("batch_size", "eta", "size")
    # Its invert() ends with zero-noise steps, so the null edit is not the last data
    # prediction (measured): the baseline runs the pipeline.
    latent_reconstruction = False

    def __init__(self, model: str, options: dict[str, str] | None = None):
        super().__init__(model, options)
        if self.options["batch"] != 1:
            # diffusers 0.42.1's SDXL __call__ builds one image's time ids for the whole batch
            # (a shape error in the UNet), so only one image per call works.
            raise DiffexError("ledits-xl: batch must be 1 (diffusers' SDXL LEDITS++ pipeline edits one image per call)")


def _stack(states: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """Per-image inversions -> one batched inversion (images along the batch axis)."""
    import torch

    if len(states) == 1:
        return states[0]
    first_t, first_v = states[0]
    for t, _ in states[1:]:
        if not _tensor_equal(t["inversion_steps"], first_t["inversion_steps"]):
            raise DiffexError("LEDITS++ inversions with different timesteps cannot be batched")
    # Fresh inversions live on the pipeline's device, restored ones on the CPU: concatenate on
    # the CPU (a few MB); apply_state moves the result to the device.
    def cat(name: str, dim: int = 0):
        return torch.cat([t[name].cpu() for t, _ in states], dim=dim)

    tensors = {
        "inversion_steps": first_t["inversion_steps"],
        "scheduler_timesteps": first_t["scheduler_timesteps"],
        "init_latents": cat("init_latents"),
        "zs": cat("zs", dim=1),
    }
    if all("reconstruction" in t for t, _ in states):
        tensors["reconstruction"] = cat("reconstruction")
    return tensors, {**first_v, "batch_size": len(states)}


class _PerImageAttentionStore:
    """Replacement for diffusers' `LeditsAttentionStore.__call__` (0.42.1), which regroups the
    attention rows with `split(batch_size)` as if they were image-major. They are
    (prompt group, image, head)-major, so with several images each image's cross-attention
    mask mixed other images' heads and the batched edits came out wrong (max pixel
    difference 186 against one-at-a-time on the tiny test model). Identical for one image."""

    def __call__(self, attn, is_cross: bool, place_in_unet: str, editing_prompts, PnP=False):
        if attn.shape[1] <= self.max_size:
            groups = 1 + int(PnP) + editing_prompts  # unconditional [, PnP], one per editing prompt
            skip = 2 if PnP else 1
            heads = attn.shape[0] // (groups * self.batch_size)
            per_image = attn.reshape(groups, self.batch_size, heads, *attn.shape[1:]).transpose(0, 1)
            per_image = per_image.reshape(self.batch_size, groups * heads, *attn.shape[1:])
            self.forward(per_image[:, skip * heads :], is_cross, place_in_unet)


@contextmanager
def _per_image_attention(pipe, images: int):
    """While several images are edited in one call, build the pipeline's attention store from
    a class with the corrected `__call__` (the pipeline looks the class up in its module)."""
    module = sys.modules[type(pipe).__module__]
    original = getattr(module, "LeditsAttentionStore", None)
    if images < 2 or original is None:
        yield
        return
    module.LeditsAttentionStore = type("LeditsAttentionStore", (_PerImageAttentionStore, original), {})
    try:
        yield
    finally:
        module.LeditsAttentionStore = original


def _use_ledits_scheduler(pipe) -> None:
    """Give `pipe` the scheduler LEDITS++ inverts with: DPM-Solver++ SDE, order 2.

    A checkpoint that ships another scheduler (SD 1.5 ships PNDM, SDXL Euler) is loaded by
    diffusers 0.42.1 as a *deterministic* `dpmsolver++` DPMSolverMultistepScheduler, which the
    pipeline's constructor then keeps, and `invert()` fails with a bare NotImplementedError.
    (DDIM, the other scheduler it accepts, breaks `invert()` in this version; ENVIRONMENT.md.)
    The swap is a function of the checkpoint's scheduler config, which the editor id hashes."""
    from diffusers import DPMSolverMultistepScheduler

    sched = pipe.scheduler
    if (
        isinstance(sched, DPMSolverMultistepScheduler)
        and sched.config.algorithm_type == "sde-dpmsolver++"
        and sched.config.solver_order == 2
    ):
        return
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        sched.config, algorithm_type="sde-dpmsolver++", solver_order=2
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _tensor_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))


class LeditsSession(EditSession):
    """Edits of one image. `meta` records how the input was prepared (original size, resized)
    and how many inversions were computed, restored and edits blocked."""

    def __init__(self, editor: LeditsEditor, image: Image.Image, image_id: str, cache_dir: Path):
        self.editor = editor
        self.image_id = image_id
        self.cache_dir = cache_dir
        size = editor.options["size"]
        original_mode = image.mode
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        resized = rgb.size != (size, size)
        self.image = rgb.resize((size, size), Image.Resampling.BICUBIC) if resized else rgb.copy()
        self.meta: dict[str, Any] = {
            "original_width": image.width,
            "original_height": image.height,
            "original_mode": original_mode,
            "resized": resized,
            "size": size,
            "inversions": 0,  # computed here
            "restored": 0,  # loaded from the cache
        }
        self.token = uuid.uuid4().hex
        self._inversions: dict[int, tuple[dict, dict]] = {}
        self.seconds = 0.0

    # ----- inversion cache -------------------------------------------------------------
    def inversion_key(self, seed: int) -> str:
        return inversion_key(self.image_id, self.editor.editor_id, seed)

    def inversion_path(self, seed: int) -> Path:
        key = self.inversion_key(seed)
        return self.cache_dir / INVERSIONS / key[:2] / f"{key}.safetensors"

    def cached_inversion(self, seed: int) -> tuple[dict, dict] | None:
        """This image's inversion for `seed` from memory or the on-disk cache, else None."""
        if seed not in self._inversions:
            state = self._load_cached(self.inversion_path(seed), seed)
            if state is None:
                return None
            self._inversions[seed] = state
        return self._inversions[seed]

    def keep_inversion(self, seed: int, state: tuple[dict, dict]) -> None:
        """Remember a freshly computed inversion and write it to the cache."""
        self._save(self.inversion_path(seed), seed, *state)
        self._inversions[seed] = state

    def _load_cached(self, path: Path, seed: int) -> tuple[dict, dict] | None:
        side = path.with_suffix(".json")
        if not (path.exists() and side.exists()):
            return None
        from safetensors.torch import load_file

        try:
            values = json.loads(side.read_text())
            tensors = load_file(str(path))
        except Exception:
            return None  # a torn or foreign file: recompute and overwrite
        required = {*self.editor.state_tensors, "scheduler_timesteps"}
        if values.get("key") != self.inversion_key(seed) or not required <= set(tensors) <= required | {"reconstruction"}:
            return None
        self.meta["restored"] += 1
        self.editor.counters["restores"] += 1
        return tensors, values

    def _save(self, path: Path, seed: int, tensors: dict, values: dict) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        side = path.with_suffix(".json")
        record = {**values, "key": self.inversion_key(seed), "image_id": self.image_id,
                  "editor_id": self.editor.editor_id, "seed": int(seed)}
        # Write to temporary names and rename, so a crash never leaves a half file under the key.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp))
        tmp_side = tmp.with_suffix(".json")
        tmp_side.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp_side, side)
        os.replace(tmp, path)

    # ----- edits -------------------------------------------------------------------------
    def reconstruct(self) -> Image.Image:
        """The null edit, from the inversion of RECONSTRUCT_SEED (shared with that sample's
        edits), so the baseline carries exactly the inversion/VAE artefacts the edits do."""
        return self.editor.edit_batch([self], (), RECONSTRUCT_SEED)[0].image

    def edit(self, concepts: Sequence[Concept], seed: int) -> Image.Image:
        if not concepts:
            raise DiffexError("edit needs at least one concept (use reconstruct() for the null edit)")
        return self.editor.edit_batch([self], tuple(concepts), seed)[0].image

    def close(self) -> None:
        self._inversions.clear()
        if self.editor._active is not None and self.token in self.editor._active[0]:
            self.editor._active = None


def _reraise(editor: LeditsEditor, exc: BaseException) -> None:
    """Turn a GPU out-of-memory error into a one-line DiffexError; re-raise anything else as is."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        raise editor._out_of_memory(exc) from None
    raise exc
