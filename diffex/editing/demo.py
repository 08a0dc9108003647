"""The demo-world editor: exact counterfactual edits of faces drawn by `diffex.demo.world`.

It stands in for a diffusion editor with the same interface, but an edit changes exactly
one attribute of the embedded spec and re-renders with the same image seed, so every
measured effect is the attribute's own. Group-level prompts ("beard") pick a sub-type
from the edit seed, as a diffusion editor's sample would; an unknown prompt returns the
unchanged image, like a silently failed diffusion edit.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..demo.world import OPTIONAL_SLOTS, WORLD_VERSION, FaceSpec, normalise_prompt, render, resolve_prompt, spec_from_image
from ..errors import DiffexError
from ..specs import split_spec, typed
from ..types import Concept
from .base import EditSession, Editor


def apply_concepts(spec: FaceSpec, concepts: Sequence[Concept], seed: int) -> FaceSpec:
    """The spec after applying `concepts` in order (a joint edit); see the module docstring."""
    for concept in concepts:
        if concept.direction not in ("add", "remove"):
            raise DiffexError(f"unknown edit direction {concept.direction!r}; valid: add, remove")
        resolved = resolve_prompt(concept.prompt)
        if resolved is None:
            continue
        slot, leaves = resolved
        if concept.direction == "add":
            # Seeded by (image, edit seed, prompt): like a diffusion sample, a group-level edit
            # lands on different sub-types for different images, and each concept of a joint
            # edit draws independently.
            rng = random.Random(f"diffex-demo-edit:{spec.seed}:{seed}:{normalise_prompt(concept.prompt)}")
            spec = spec.with_attr(slot, leaves[rng.randrange(len(leaves))])
        elif spec.attrs.get(slot) in leaves and slot in OPTIONAL_SLOTS:
            # remove: a face has no "no hair colour", so those slots stay as they are
            spec = spec.with_attr(slot, "none")
    return spec


class DemoSession(EditSession):
    def __init__(self, spec: FaceSpec, delay_s: float = 0.0):
        self.spec, self.delay_s = spec, delay_s

    def reconstruct(self) -> Image.Image:
        self._wait()
        return render(self.spec)

    def edit(self, concepts: Sequence[Concept], seed: int) -> Image.Image:
        self._wait()
        return render(apply_concepts(self.spec, concepts, seed))

    def _wait(self) -> None:
        if self.delay_s:  # stands for a diffusion edit's cost (bench/ray_scaling.py)
            time.sleep(self.delay_s)


class DemoEditor(Editor):
    """Edits only images that carry demo-world metadata (written by `diffex demo`)."""

    name = "demo"

    def __init__(self, delay_ms: float = 0.0, fail_image: str = ""):
        # neither changes pixels, so neither is in `config` (the editor id): a slow or failing
        # run shares its edits with a plain `demo` run
        self.delay_ms, self.fail_image = delay_ms, fail_image

    @property
    def config(self) -> dict[str, Any]:
        # "sampling" names the sub-type draw rule: changing it changes pixels, so it is keyed
        return {"world_version": WORLD_VERSION, "size": 64, "sampling": "image-seed-prompt"}

    def check_image(self, image: Image.Image, where: str) -> None:
        self._spec(image, where)

    def open(self, image: Image.Image, image_id: str, cache_dir: Path) -> DemoSession:
        """Raises DiffexError if `image` has no embedded demo spec."""
        if self.fail_image and image_id.startswith(self.fail_image):
            raise RuntimeError(f"demo editor asked to fail on image {image_id[:12]} (fail_image={self.fail_image})")
        return DemoSession(self._spec(image, getattr(image, "filename", "") or f"image {image_id[:12]}"),
                           self.delay_ms / 1000.0)

    @staticmethod
    def _spec(image: Image.Image, where: str) -> FaceSpec:
        spec = spec_from_image(image)
        if spec is None:
            raise DiffexError(f"the demo editor only edits demo-world images (no diffex-demo metadata in {where}); "
                              "make some with `diffex demo`, or use a diffusion editor such as `ledits:MODEL`")
        return spec


def from_spec(rest: str) -> DemoEditor:
    """`demo`, or `demo:?delay_ms=200` (sleep that long per edit, standing for a diffusion
    edit's cost) and `demo:?fail_image=PREFIX` (raise on images whose id starts with PREFIX:
    fault handling made testable). Neither changes the editor id."""
    target, options = split_spec("demo", rest, {"delay_ms": "milliseconds slept per edit",
                                                "fail_image": "raise on images whose id starts with this"},
                                 needs_target=False)
    if target:
        raise DiffexError(f"the demo editor takes no model, got 'demo:{rest}'; use 'demo' or 'demo:?delay_ms=200'")
    opts = typed("demo", options, {"delay_ms": float, "fail_image": str})
    if opts.get("delay_ms", 0) < 0:
        raise DiffexError(f"delay_ms must be 0 or more, got {opts['delay_ms']:g}")
    return DemoEditor(**opts)
