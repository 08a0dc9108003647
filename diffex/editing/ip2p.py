"""InstructPix2Pix editor backend (`StableDiffusionInstructPix2PixPipeline`): an edit is a
written instruction, applied by sampling conditioned on the input image. No inversion.

SPEC: `ip2p:MODEL_ID_OR_PATH[?key=value&...]`, e.g. `ip2p:timbrooks/instruct-pix2pix?steps=20`.

Options (defaults = the diffusers pipeline's): size=512 (square input, multiple of 32),
steps=100, guidance=7.5 (text guidance), image_guidance=1.5, add='add {}' and remove='remove {}'
(the instruction for each direction, `{}` = the concept's prompt; a joint edit joins its
concepts' instructions with ' and '), dtype (float16 on cuda, else float32), device (cuda if
available, else cpu), batch=1 (images edited together in one pipeline call), safety=1,
revision (hub models), allow_pickle=1. Models load through diffex's loading policy
(diffex/models.py). The editor id hashes the model (hub id + commit, or the bytes of a local
directory's weight and config files) and every option that changes pixels, the templates
included; not device or batch (float rounding only).

Seeds: the edit seed seeds the sampler's noise (the initial latents, and the noise an
ancestral scheduler adds per step), so samples 0..k-1 of one edit are k draws.

The null edit is the pipeline run with an EMPTY instruction at seed 0, not the original
image: its output carries everything the editor does to any image (the VAE round trip, the
resize, the sampler's drift in colour and texture) and nothing an instruction asks for (with
an empty instruction the text-guidance term is exactly zero: the text and image branches
see the same embedding), so an effect measured against it is the instruction's own. The
original image would count those artefacts as every concept's effect.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from .. import models, specs
from ..errors import DiffexError
from ..types import DIRECTIONS, Concept
from . import diffusers_model as dm
from .base import EditOutput, EditSession, Editor

KIND = "InstructPix2Pix"
PIPELINE = "StableDiffusionInstructPix2PixPipeline"
RECONSTRUCT_SEED = 0
JOINT = " and "
# option -> (parser, help shown for an unknown option)
OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "size": (int, "square input size, multiple of 32 (512)"),
    "steps": (int, "sampling steps (100)"),
    "guidance": (float, "text guidance scale (7.5)"),
    "image_guidance": (float, "image guidance scale (1.5)"),
    "add": (str, "instruction to add a concept, {} = its prompt ('add {}')"),
    "remove": (str, "instruction to remove one ('remove {}')"),
    "device": (str, "cuda or cpu"),
    "dtype": (str, ", ".join(dm.DTYPES)),
    "batch": (int, "images per pipeline call (1)"),
    "safety": (specs.parse_bool, "1 keeps the model's safety checker (1)"),
    "revision": (str, "hub branch, tag or commit"),
    "allow_pickle": (specs.parse_bool, "1 accepts pickle weights (0)"),
}
DEFAULTS: dict[str, Any] = {"size": 512, "steps": 100, "guidance": 7.5, "image_guidance": 1.5,
                            "add": "add {}", "remove": "remove {}", "batch": 1, "safety": True,
                            "allow_pickle": False}
# option -> (rule it must meet, the rule in words)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "size": (lambda v: v > 0 and v % 32 == 0, "a positive multiple of 32"),
    "steps": (lambda v: v >= 1, ">= 1"),
    "guidance": (lambda v: v >= 0, ">= 0"),
    "image_guidance": (lambda v: v >= 0, ">= 0"),
    "batch": (lambda v: v >= 1, ">= 1"),
    "add": (lambda v: v.count("{}") == 1, "text with {} once, where the concept goes"),
    "remove": (lambda v: v.count("{}") == 1, "text with {} once, where the concept goes"),
}


def instruction(concepts: Sequence[Concept], templates: dict[str, str]) -> str:
    """The instruction text for `concepts` applied together: each concept's direction
    template filled with its prompt, joined with ' and '. No concepts: '' (the null edit)."""
    parts = []
    for c in concepts:
        if c.direction not in DIRECTIONS:
            raise DiffexError(f"concept direction {c.direction!r}; valid: {', '.join(DIRECTIONS)}")
        parts.append(templates[c.direction].replace("{}", c.prompt))
    return JOINT.join(parts)


class InstructPix2PixEditor(Editor):
    """One pipeline, loaded on first use; sessions keep no state but the prepared image."""

    name = "ip2p"

    def __init__(self, model: str, options: dict[str, str]):
        o = {**DEFAULTS, **specs.typed("ip2p", options, {k: parser for k, (parser, _) in OPTIONS.items()})}
        for key, (rule, words) in RULES.items():
            if not rule(o[key]):
                raise DiffexError(f"ip2p option {key}={o[key]!r} must be {words}")
        self.model = model
        self.size, self.steps, self.batch = o["size"], o["steps"], o["batch"]
        self.guidance, self.image_guidance = o["guidance"], o["image_guidance"]
        self.templates = {d: o[d] for d in DIRECTIONS}
        self.safety, self.allow_pickle, self.revision = o["safety"], o["allow_pickle"], o.get("revision")
        self.device, self.dtype = dm.device_and_dtype("ip2p", o.get("device"), o.get("dtype"))
        self.local_path = dm.local_path(KIND, model)
        self._config: dict[str, Any] | None = None
        self._pipe = None
        self._lock = threading.RLock()
        self.counters = {"edits": 0, "reconstructions": 0, "blocked": 0}
        self.seconds = {"load": 0.0, "edit": 0.0, "reconstruct": 0.0}

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            self._config = {
                "pipeline": PIPELINE,
                "model": dm.model_identity(KIND, self.model, self.local_path, self.revision),
                "size": self.size, "steps": self.steps, "guidance": self.guidance,
                "image_guidance": self.image_guidance, "dtype": self.dtype, "safety": self.safety,
                "instructions": {**self.templates, "joint": JOINT},
                # what the seed drives and what the null edit is: a change of either contract changes the id
                "seeding": "sample-noise",
                "null_edit": f"empty-instruction-seed-{RECONSTRUCT_SEED}",
            }
        return self._config

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        return self.batch

    def check(self, load: bool = False) -> None:
        """Fail now, with one line, if the model is absent or breaks the loading policy;
        `load=True` also loads the pipeline."""
        _ = self.editor_id  # hashes the model files, or finds the hub commit
        if load:
            self.pipeline()  # resolves the model on the way
        else:
            self._source()

    def _source(self) -> "models.ModelSource":
        return dm.resolve_source(KIND, self.model, self.local_path, allow_pickle=self.allow_pickle, revision=self.revision)

    def pipeline(self):
        """The loaded pipeline (loads on first call). Raises DiffexError when it cannot be loaded."""
        with self._lock:
            if self._pipe is None:
                start = time.perf_counter()
                self._pipe = dm.load_pipeline(PIPELINE, self._source(), KIND, dtype=self.dtype,
                                              device=self.device, safety=self.safety)
                self.seconds["load"] += time.perf_counter() - start
        return self._pipe

    def open(self, image: Image.Image, image_id: str, cache_dir: Path) -> "InstructPix2PixSession":
        return InstructPix2PixSession(self, image)

    def edit_batch(self, sessions: Sequence["InstructPix2PixSession"], concepts: Sequence[Concept],
                   seed: int) -> list[EditOutput]:
        """The same instruction on up to `batch` images per pipeline call, each image with its own
        generator seeded `seed` (so it draws the noise it would draw alone). `concepts == ()`:
        the null edit (empty instruction, seed 0). Outputs are in `sessions` order."""
        text = instruction(concepts, self.templates)
        seed = int(seed) if concepts else RECONSTRUCT_SEED
        out: list[EditOutput] = []
        for start in range(0, len(sessions), self.batch):
            group = list(sessions[start : start + self.batch])
            out.extend(self._run(group, text, seed, "edit" if concepts else "reconstruct"))
        return out

    def _run(self, sessions: list["InstructPix2PixSession"], text: str, seed: int, what: str) -> list[EditOutput]:
        pipe = self.pipeline()
        n = len(sessions)
        start = time.perf_counter()
        with self._lock:
            try:
                result = pipe(
                    prompt=[text] * n,
                    image=[s.image for s in sessions],
                    num_inference_steps=self.steps,
                    guidance_scale=self.guidance,
                    image_guidance_scale=self.image_guidance,
                    generator=[dm.generator(self.device, seed) for _ in sessions],
                    output_type="pil",
                )
            except Exception as exc:
                if "out of memory" in str(exc).lower():
                    raise DiffexError(f"out of GPU memory while running {KIND} at size={self.size}, batch={self.batch}: "
                                      "try batch=1, a smaller size, or dtype=float16") from None
                raise
        self.seconds[what] += time.perf_counter() - start
        self.counters["edits" if what == "edit" else "reconstructions"] += n
        flags = result.nsfw_content_detected
        outputs = []
        for i, image in enumerate(result.images):
            blocked = bool(flags and flags[i])  # the safety checker blanked it: stored, never measured
            self.counters["blocked"] += blocked
            outputs.append(EditOutput(image, "blocked" if blocked else "ok"))
        return outputs


class InstructPix2PixSession(EditSession):
    """One image, converted to RGB and resized to `size` x `size` (as LEDITS++ does)."""

    def __init__(self, editor: InstructPix2PixEditor, image: Image.Image):
        self.editor = editor
        size = editor.size
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        self.image = rgb.resize((size, size), Image.Resampling.BICUBIC) if rgb.size != (size, size) else rgb.copy()

    def reconstruct(self) -> Image.Image:
        return self.editor.edit_batch([self], (), RECONSTRUCT_SEED)[0].image

    def edit(self, concepts: Sequence[Concept], seed: int) -> Image.Image:
        if not concepts:
            raise DiffexError("edit needs at least one concept (use reconstruct() for the null edit)")
        return self.editor.edit_batch([self], tuple(concepts), seed)[0].image


def from_spec(rest: str) -> InstructPix2PixEditor:
    return InstructPix2PixEditor(*specs.split_spec("ip2p", rest, {k: words for k, (_, words) in OPTIONS.items()}))
