"""The demo-world editor: exact counterfactual edits of faces drawn by `diffex.demo.world`.

It stands in for a diffusion editor with the same interface, but an edit changes exactly
one attribute of the embedded spec and re-renders with the same image seed, so every
measured effect is the attribute's own. Group-level prompts ("beard") pick a sub-type
from the edit seed, as a diffusion editor's sample would; an unknown prompt returns the
unchanged image, like a silently failed diffusion edit.

Options make it misbehave on purpose, so side effects (diffex/embedding/side_effects.py) can
be tested against a known truth; each draw is seeded by (image, edit seed, prompt), and the
options are part of the editor's id (plain `demo` keeps its id):
    entangle=A:B:P  an edit asked for A also draws B with probability P (the prompt entangles)
    spill=A:B:P     any edit that lands on leaf A ("beard" landing on stubble too) also draws B
    fail=A:P        an edit asked for A changes nothing with probability P (fail=P: any edit)
several rules of one kind are comma-separated: `entangle=beanie:top hat:0.5,cap:headband:0.2`.
B is drawn over its slot's object when it shares the slot (a top hat perched on the beanie).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..demo.world import ALL_LEAVES, OPTIONAL_SLOTS, WORLD_VERSION, FaceSpec, normalise_prompt, render, resolve_prompt, spec_from_image
from ..errors import DiffexError
from ..specs import split_spec, typed
from ..types import Concept
from .base import EditSession, Editor


OPTIONS = {"entangle": "A:B:P,... an edit asked for A also draws B with probability P",
           "spill": "A:B:P,... an edit landing on leaf A also draws B with probability P",
           "fail": "A:P,... or P: an edit asked for A (or any) changes nothing with probability P"}

Rules = dict[str, tuple[tuple, ...]]  # kind -> ((A, B, P), ...) or, for fail, ((A or "*", P), ...)


def parse_rules(options: dict[str, str]) -> Rules:
    """The misbehaviour rules of the demo options (see the module docstring); DiffexError names a bad one."""
    rules: Rules = {}
    for kind, text in options.items():
        parsed = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            fields = [f.strip() for f in part.split(":")]
            if kind == "fail" and len(fields) == 1:
                fields = ["*"] + fields
            want = 2 if kind == "fail" else 3
            if len(fields) != want:
                raise DiffexError(f"demo option {kind}={part!r}: expected {OPTIONS[kind].split(' ')[0].rstrip(',.')}")
            try:
                p = float(fields[-1])
            except ValueError:
                p = -1.0
            if not 0.0 <= p <= 1.0:
                raise DiffexError(f"demo option {kind}={part!r}: the probability must be a number in [0, 1]")
            labels = [normalise_prompt(f) for f in fields[:-1]]
            for label in labels:
                if label != "*" and resolve_prompt(label) is None:
                    raise DiffexError(f"demo option {kind}={part!r}: {label!r} is not a node of the demo world")
            if kind == "spill" and labels[0] not in ALL_LEAVES:
                raise DiffexError(f"demo option spill={part!r}: {labels[0]!r} is not a leaf (spill starts from what was drawn)")
            parsed.append((*labels, p))
        rules[kind] = tuple(parsed)
    return rules


def _draw(spec: FaceSpec, seed: int, prompt: str, what: str) -> float:
    # one independent uniform per (image, edit seed, prompt, rule): never disturbs the sub-type draw
    return random.Random(f"diffex-demo-{what}:{spec.seed}:{seed}:{prompt}").random()


def _bring(spec: FaceSpec, node: str, seed: int, prompt: str) -> FaceSpec:
    slot, leaves = resolve_prompt(node)
    rng = random.Random(f"diffex-demo-side:{spec.seed}:{seed}:{prompt}:{node}")
    return spec.with_extra(leaves[rng.randrange(len(leaves))])


def apply_concepts(spec: FaceSpec, concepts: Sequence[Concept], seed: int, rules: Rules | None = None) -> FaceSpec:
    """The spec after applying `concepts` in order (a joint edit), misbehaving as `rules` say;
    see the module docstring."""
    rules = rules or {}
    for concept in concepts:
        if concept.direction not in ("add", "remove"):
            raise DiffexError(f"unknown edit direction {concept.direction!r}; valid: add, remove")
        resolved = resolve_prompt(concept.prompt)
        if resolved is None:
            continue
        slot, leaves = resolved
        prompt = normalise_prompt(concept.prompt)
        if any(a in ("*", prompt) and _draw(spec, seed, prompt, f"fail:{a}") < p for a, p in rules.get("fail", ())):
            continue
        if concept.direction == "add":
            # Seeded by (image, edit seed, prompt): like a diffusion sample, a group-level edit
            # lands on different sub-types for different images, and each concept of a joint
            # edit draws independently.
            rng = random.Random(f"diffex-demo-edit:{spec.seed}:{seed}:{prompt}")
            landed = leaves[rng.randrange(len(leaves))]
            spec = spec.with_attr(slot, landed)
            for a, b, p in rules.get("entangle", ()):
                if a == prompt and _draw(spec, seed, prompt, f"entangle:{b}") < p:
                    spec = _bring(spec, b, seed, prompt)
            for a, b, p in rules.get("spill", ()):
                if a == landed and _draw(spec, seed, prompt, f"spill:{a}:{b}") < p:
                    spec = _bring(spec, b, seed, prompt)
        elif spec.attrs.get(slot) in leaves and slot in OPTIONAL_SLOTS:
            # remove: a face has no "no hair colour", so those slots stay as they are
            spec = spec.with_attr(slot, "none")
    return spec


class DemoSession(EditSession):
    def __init__(self, spec: FaceSpec, rules: Rules | None = None, delay_s: float = 0.0):
        self.spec, self.rules, self.delay_s = spec, rules or {}, delay_s

    def reconstruct(self) -> Image.Image:
        self._wait()
        return render(self.spec)

    def edit(self, concepts: Sequence[Concept], seed: int) -> Image.Image:
        self._wait()
        return render(apply_concepts(self.spec, concepts, seed, self.rules))

    def _wait(self) -> None:
        if self.delay_s:  # stands for a diffusion edit's cost (bench/ray_scaling.py)
            time.sleep(self.delay_s)


class DemoEditor(Editor):
    """Edits only images that carry demo-world metadata (written by `diffex demo`)."""

    name = "demo"

    def __init__(self, options: dict[str, str] | None = None, delay_ms: float = 0.0, fail_image: str = ""):
        # misbehaviour options change pixels, so they are in `config`; delay_ms and fail_image do
        # not (a slow or failing run shares its edits with a plain `demo` run)
        self.options = dict(options or {})
        self.rules = parse_rules(self.options)
        self.delay_ms, self.fail_image = delay_ms, fail_image

    @property
    def config(self) -> dict[str, Any]:
        # "sampling" names the sub-type draw rule: changing it changes pixels, so it is keyed
        config: dict[str, Any] = {"world_version": WORLD_VERSION, "size": 64, "sampling": "image-seed-prompt"}
        if any(self.rules.values()):  # absent for the exact editor, which keeps its id
            config["misbehave"] = {k: [list(r) for r in v] for k, v in sorted(self.rules.items()) if v}
        return config

    def check_image(self, image: Image.Image, where: str) -> None:
        self._spec(image, where)

    def open(self, image: Image.Image, image_id: str, cache_dir: Path) -> DemoSession:
        """Raises DiffexError if `image` has no embedded demo spec."""
        if self.fail_image and image_id.startswith(self.fail_image):
            raise RuntimeError(f"demo editor asked to fail on image {image_id[:12]} (fail_image={self.fail_image})")
        return DemoSession(self._spec(image, getattr(image, "filename", "") or f"image {image_id[:12]}"),
                           self.rules, self.delay_ms / 1000.0)

    @staticmethod
    def _spec(image: Image.Image, where: str) -> FaceSpec:
        spec = spec_from_image(image)
        if spec is None:
            raise DiffexError(f"the demo editor only edits demo-world images (no diffex-demo metadata in {where}); "
                              "make some with `diffex demo`, or use a diffusion editor such as `ledits:MODEL`")
        return spec


def from_spec(rest: str) -> DemoEditor:
    """`demo`, or with options after `?` (`demo?...` or `demo:?...`): the misbehaviour options
    entangle/spill/fail (the module docstring; they change the editor id), `delay_ms=200`
    (sleep that long per edit, standing for a diffusion edit's cost) and `fail_image=PREFIX`
    (raise on images whose id starts with PREFIX: fault handling made testable); those two
    do not change the editor id."""
    allowed = {**OPTIONS, "delay_ms": "milliseconds slept per edit",
               "fail_image": "raise on images whose id starts with this"}
    target, options = split_spec("demo", rest, allowed, needs_target=False)
    if target:
        raise DiffexError(f"the demo editor takes no model, got 'demo:{rest}'; use 'demo', 'demo?entangle=A:B:P' "
                          "or 'demo:?delay_ms=200'")
    knobs = typed("demo", {k: v for k, v in options.items() if k in ("delay_ms", "fail_image")},
                  {"delay_ms": float, "fail_image": str})
    if knobs.get("delay_ms", 0) < 0:
        raise DiffexError(f"delay_ms must be 0 or more, got {knobs['delay_ms']:g}")
    return DemoEditor({k: v for k, v in options.items() if k in OPTIONS}, **knobs)
