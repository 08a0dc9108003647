"""The demo-world editor: exact counterfactual edits of faces drawn by `diffex.demo.world`.

It stands in for a diffusion editor with the same interface, but an edit changes exactly
one attribute of the embedded spec and re-renders with the same image seed, so every
measured effect is the attribute's own. Group-level prompts ("beard") pick a sub-type
from the edit seed, as a diffusion editor's sample would; an unknown prompt returns the
unchanged image, like a silently failed diffusion edit.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..demo.world import OPTIONAL_SLOTS, WORLD_VERSION, FaceSpec, normalise_prompt, render, resolve_prompt, spec_from_image
from ..errors import DiffexError
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
    def __init__(self, spec: FaceSpec):
        self.spec = spec

    def reconstruct(self) -> Image.Image:
        return render(self.spec)

    def edit(self, concepts: Sequence[Concept], seed: int) -> Image.Image:
        return render(apply_concepts(self.spec, concepts, seed))


class DemoEditor(Editor):
    """Edits only images that carry demo-world metadata (written by `diffex demo`)."""

    name = "demo"

    @property
    def config(self) -> dict[str, Any]:
        # "sampling" names the sub-type draw rule: changing it changes pixels, so it is keyed
        return {"world_version": WORLD_VERSION, "size": 64, "sampling": "image-seed-prompt"}

    def check_image(self, image: Image.Image, where: str) -> None:
        self._spec(image, where)

    def open(self, image: Image.Image, image_id: str, cache_dir: Path) -> DemoSession:
        """Raises DiffexError if `image` has no embedded demo spec."""
        return DemoSession(self._spec(image, getattr(image, "filename", "") or f"image {image_id[:12]}"))

    @staticmethod
    def _spec(image: Image.Image, where: str) -> FaceSpec:
        spec = spec_from_image(image)
        if spec is None:
            raise DiffexError(f"the demo editor only edits demo-world images (no diffex-demo metadata in {where}); "
                              "make some with `diffex demo`, or use a diffusion editor such as `ledits:MODEL`")
        return spec


def from_spec(rest: str) -> DemoEditor:
    """`demo` takes no options."""
    if rest:
        raise DiffexError(f"the demo editor takes no options, got 'demo:{rest}'; use 'demo'")
    return DemoEditor()
