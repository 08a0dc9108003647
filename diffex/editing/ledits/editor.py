"""The LEDITS++ editor: loading the pipeline through diffex's policy, the inversion state it
carries, and batches of images edited together (the package docstring tells the whole story)."""


from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ... import models, specs
from ...errors import DiffexError
from ...types import DIRECTIONS, Concept
from ..base import EditOutput, Editor
from ..diffusers_model import resolve_source
from .patches import _jsonable, _per_image_attention, _stack, _tensor_equal, _use_ledits_scheduler
from .session import LeditsSession, _reraise
from .spec import DEFAULTS, DTYPES, OPTIONS, RECONSTRUCT_SEED, _hub_commit, _local_model_hash, parse_spec


def from_spec(rest: str) -> "LeditsEditor":
    return LeditsEditor(*parse_spec(rest))


def from_spec_xl(rest: str) -> "LeditsXLEditor":
    return LeditsXLEditor(*parse_spec(rest))


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
        parsed.update(specs.typed("ledits", options, OPTIONS))
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
        return resolve_source("LEDITS++", self.model, self.local_path, allow_pickle=self.options["allow_pickle"],
                              revision=self.options.get("revision"))

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
