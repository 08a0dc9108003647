"""A procedural world of 64x64 cartoon faces whose attributes form a semantic hierarchy.
(One file of ~500 lines on purpose: the drawing, the spec (with the extra objects a misbehaving
editor adds) and its PNG encoding must change together.)

Every face is a `FaceSpec` (an image seed plus one leaf label, or "none", per slot, and an
age); `render` draws it deterministically and embeds the spec in the PNG, which is what
lets the demo editor make exact counterfactual edits. The image seed only jitters
position, size and colours, so changing one attribute and re-rendering changes nothing else.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from ..atomic import atomic_path
from ..errors import DiffexError

# Bump whenever a pixel of any rendering changes: the demo editor's identity includes it.
WORLD_VERSION = "faces-1"
IMAGE_SIZE = 64
METADATA_KEY = "diffex-demo"

# Paper-style hierarchy. A group maps to a list of leaves or to {sub: [leaves]};
# a sub with an empty list is itself a leaf (e.g. "sunglasses"). Every label in the tree,
# at any level, is unique: prompts are resolved by label.
HIERARCHY: dict = {
    "facial hair": {
        "beard": ["goatee", "full beard", "stubble"],
        "mustache": ["handlebar mustache", "pencil mustache"],
    },
    "eyewear": {
        "glasses": ["round glasses", "square glasses"],
        "sunglasses": [],
    },
    "headwear": {
        "hat": ["cap", "beanie", "top hat"],
        "headband": [],
    },
    "hair colour": ["black hair", "blonde hair", "red hair", "grey hair", "brown hair"],
    "expression": ["smiling", "neutral", "frowning", "surprised"],
    "background": ["blue background", "green background", "orange background", "purple background"],
    "skin tone": ["light skin", "medium skin", "dark skin"],
}

# Slots that may be empty; the others always hold one of their leaves.
OPTIONAL_SLOTS = ("facial hair", "eyewear", "headwear")
AGES = ("young", "old")

# Default sampling weights; slots not listed are uniform over their leaves.
DEFAULT_PROBS: dict[str, dict[str, float]] = {
    "facial hair": {"none": 0.5, "goatee": 0.1, "full beard": 0.1, "stubble": 0.1,
                    "handlebar mustache": 0.1, "pencil mustache": 0.1},
    "eyewear": {"none": 0.55, "round glasses": 0.15, "square glasses": 0.15, "sunglasses": 0.15},
    "headwear": {"none": 0.5, "cap": 0.125, "beanie": 0.125, "top hat": 0.125, "headband": 0.125},
    "age": {"young": 0.5, "old": 0.5},
}


def _leaves_of(value) -> list[str]:
    if isinstance(value, dict):
        out: list[str] = []
        for sub, leaves in value.items():
            out.extend(leaves if leaves else [sub])
        return out
    return list(value)


SLOTS: tuple[str, ...] = tuple(HIERARCHY)
SLOT_LEAVES: dict[str, tuple[str, ...]] = {slot: tuple(_leaves_of(v)) for slot, v in HIERARCHY.items()}
ALL_LEAVES: tuple[str, ...] = tuple(leaf for slot in SLOTS for leaf in SLOT_LEAVES[slot])


def _build_index() -> dict[str, tuple[str, tuple[str, ...]]]:
    """label -> (slot, leaves under it), for every node at every level."""
    index: dict[str, tuple[str, tuple[str, ...]]] = {}

    def put(label: str, slot: str, leaves) -> None:
        if label in index:
            raise AssertionError(f"duplicate label {label!r} in HIERARCHY")
        index[label] = (slot, tuple(leaves))

    for group, value in HIERARCHY.items():
        put(group, group, SLOT_LEAVES[group])
        if isinstance(value, dict):
            for sub, leaves in value.items():
                put(sub, group, leaves if leaves else [sub])
                for leaf in leaves:
                    put(leaf, group, [leaf])
        else:
            for leaf in value:
                put(leaf, group, [leaf])
    return index


_INDEX = _build_index()


def taxonomy_dict() -> dict:
    """The hierarchy as the taxonomy file format: {"domain": ..., "categories": HIERARCHY}."""
    return {"domain": "cartoon faces", "categories": json.loads(json.dumps(HIERARCHY))}


_PREFIXES = ("a photo of a face with ", "a face with ", "a person with ", "a photo of ", "with ", "an ", "a ")


def normalise_prompt(prompt: str) -> str:
    """Lowercase, strip, collapse spaces, drop a leading article or "a face with"."""
    text = re.sub(r"\s+", " ", str(prompt).strip().lower())
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    return text.replace("hair color", "hair colour").strip()


def resolve_prompt(prompt: str) -> tuple[str, list[str]] | None:
    """(slot, leaf labels under the node) for a node label at any level, or None if unknown."""
    hit = _INDEX.get(normalise_prompt(prompt))
    return (hit[0], list(hit[1])) if hit else None


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class FaceSpec:
    """Everything that determines a face: `attrs` maps every slot to a leaf label or "none"."""

    seed: int
    attrs: dict[str, str] = field(default_factory=dict)
    age: str = "young"
    # Leaves drawn over their slot's own (a misbehaving editor's side effects: a top hat drawn
    # with a beanie); only objects (OPTIONAL_SLOTS) layer. Empty for every face the world samples.
    extras: tuple[str, ...] = ()

    def with_attr(self, slot: str, value: str) -> "FaceSpec":
        if slot == "age":
            return replace(self, age=value)
        return replace(self, attrs={**self.attrs, slot: value})

    def with_extra(self, leaf: str) -> "FaceSpec":
        """`leaf` added on top of whatever its slot holds (set as the slot's value when that
        slot is empty, cannot layer, or already holds it)."""
        slot = _INDEX[leaf][0]
        current = self.attrs.get(slot)
        if current in ("none", leaf) or slot not in OPTIONAL_SLOTS:
            return self.with_attr(slot, leaf)
        return self if leaf in self.extras else replace(self, extras=self.extras + (leaf,))

    def to_json(self) -> str:
        data = {"world_version": WORLD_VERSION, "seed": self.seed,
                "attrs": {s: self.attrs[s] for s in SLOTS}, "age": self.age}
        if self.extras:  # absent otherwise, so every plain face keeps its bytes
            data["extras"] = list(self.extras)
        return json.dumps(data, sort_keys=True)


def _check_spec(spec: FaceSpec) -> None:
    # A bad spec would otherwise render something silently wrong.
    for slot in SLOTS:
        value = spec.attrs.get(slot)
        allowed = SLOT_LEAVES[slot] + (("none",) if slot in OPTIONAL_SLOTS else ())
        if value not in allowed:
            raise DiffexError(f"demo face slot {slot!r} has {value!r}; valid: {', '.join(allowed)}")
    if spec.age not in AGES:
        raise DiffexError(f"demo face age {spec.age!r}; valid: {', '.join(AGES)}")
    for leaf in spec.extras:
        if leaf not in ALL_LEAVES or _INDEX[leaf][0] not in OPTIONAL_SLOTS:
            raise DiffexError(f"demo face extra {leaf!r} is not a leaf of {', '.join(OPTIONAL_SLOTS)}")


HAT_PERCH = (0.8, -10.0)  # (scale, shift up) of a second hat


def _layers(spec: FaceSpec, slot: str) -> list[str]:
    """What to draw in `slot`, bottom first: its value, then any extras of that slot."""
    return [spec.attrs[slot]] + [x for x in spec.extras if _INDEX[x][0] == slot]


def _pick(rng: random.Random, weights: Mapping[str, float]) -> str:
    total = sum(weights.values())
    x = rng.random() * total
    for value, w in weights.items():
        x -= w
        if x < 0:
            return value
    return list(weights)[-1]


def sample_spec(seed: int, rng_probs: Mapping[str, Mapping[str, float]] | None = None) -> FaceSpec:
    """A random face for `seed` (deterministic). `rng_probs` overrides the weights of any slot
    or of "age", e.g. {"facial hair": {"none": 0.3, "goatee": 0.3, ...}}; values are relative."""
    probs = {**DEFAULT_PROBS, **(rng_probs or {})}
    rng = random.Random(f"diffex-demo-spec:{seed}")
    attrs = {}
    for slot in SLOTS:
        weights = probs.get(slot) or {leaf: 1.0 for leaf in SLOT_LEAVES[slot]}
        attrs[slot] = _pick(rng, weights)
    spec = FaceSpec(seed=int(seed), attrs=attrs, age=_pick(rng, probs["age"]))
    _check_spec(spec)
    return spec


# --------------------------------------------------------------------------- colours

SKIN = {"light skin": (247, 214, 184), "medium skin": (206, 150, 104), "dark skin": (128, 84, 56)}
HAIR = {"black hair": (34, 30, 30), "blonde hair": (238, 204, 112), "red hair": (196, 78, 34),
        "grey hair": (178, 178, 182), "brown hair": (112, 70, 40)}
BACKGROUND = {"blue background": (108, 160, 228), "green background": (128, 200, 128),
              "orange background": (242, 162, 84), "purple background": (176, 138, 212)}
HAT_COLOURS = [(40, 60, 150), (20, 130, 140), (180, 40, 120), (40, 120, 60), (200, 50, 50), (120, 60, 170)]
FRAME_COLOURS = [(25, 25, 25), (95, 55, 25), (40, 40, 100)]
INK = (40, 25, 25)


def _lum(c) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _jit(c, rng: random.Random, amount: int):
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in c)


def _scale(c, f: float):
    return tuple(max(0, min(255, int(v * f))) for v in c)


def _facial_hair_colour(hair, skin):
    """Hair colour, darkened until it stands out from the skin (a dark beard on dark skin,
    or a blonde one on light skin, vanishes at 64 px)."""
    colour = hair
    for _ in range(8):
        if abs(_lum(colour) - _lum(skin)) >= 60:
            break
        colour = _scale(colour, 0.7)
    if abs(_lum(colour) - _lum(skin)) < 45:
        colour = (20, 16, 16)
    return colour


# --------------------------------------------------------------------------- render

_SS = 4  # supersampling: draw at 256 px, box-downsample to 64 for soft edges


@dataclass(frozen=True)
class _Jitter:
    dx: float
    dy: float
    scale: float
    bg: tuple
    skin: tuple
    hair: tuple
    hat: tuple
    band: tuple
    frame: tuple
    cap_side: int
    stubble: tuple


def _jitter(seed: int) -> _Jitter:
    # Drawn in a fixed order and never conditioned on attributes, so an edit keeps every
    # other pixel-level choice of the original image.
    rng = random.Random(f"diffex-demo-jitter:{seed}")
    dx, dy = rng.uniform(-2, 2), rng.uniform(-1.5, 1.5)
    scale = rng.uniform(0.95, 1.05)
    bg = (rng.randint(-12, 12), rng.randint(-12, 12), rng.randint(-12, 12))
    skin = (rng.randint(-8, 8), rng.randint(-8, 8), rng.randint(-8, 8))
    hair = (rng.randint(-10, 10), rng.randint(-10, 10), rng.randint(-10, 10))
    hat = HAT_COLOURS[rng.randrange(len(HAT_COLOURS))]
    band = HAT_COLOURS[rng.randrange(len(HAT_COLOURS))]
    frame = FRAME_COLOURS[rng.randrange(len(FRAME_COLOURS))]
    cap_side = rng.choice((-1, 1))
    stubble = tuple((rng.uniform(-1, 1), rng.uniform(0, 1)) for _ in range(90))
    return _Jitter(dx, dy, scale, bg, skin, hair, hat, band, frame, cap_side, stubble)


def _add(c, d):
    return tuple(max(0, min(255, a + b)) for a, b in zip(c, d))


class _Pen:
    """Draws in 64-px face coordinates (origin at the face centre, scaled by the jitter)."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, cy: float, s: float):
        self.d, self.cx, self.cy, self.s = draw, cx, cy, s

    def p(self, x: float, y: float) -> tuple[float, float]:
        return ((self.cx + x * self.s) * _SS, (self.cy + y * self.s) * _SS)

    def box(self, x0, y0, x1, y1):
        a, b = self.p(x0, y0), self.p(x1, y1)
        return [a[0], a[1], b[0], b[1]]

    def w(self, width: float) -> int:
        return max(1, round(width * self.s * _SS))

    def ellipse(self, box, fill=None, outline=None, width=1.0):
        self.d.ellipse(self.box(*box), fill=fill, outline=outline, width=self.w(width))

    def chord(self, box, start, end, fill):
        self.d.chord(self.box(*box), start, end, fill=fill)

    def arc(self, box, start, end, fill, width=1.0):
        self.d.arc(self.box(*box), start, end, fill=fill, width=self.w(width))

    def rect(self, box, fill=None, outline=None, width=1.0, radius=0.0):
        self.d.rounded_rectangle(self.box(*box), radius=radius * self.s * _SS, fill=fill,
                                 outline=outline, width=self.w(width))

    def line(self, pts, fill, width=1.0):
        self.d.line([self.p(x, y) for x, y in pts], fill=fill, width=self.w(width), joint="curve")

    def poly(self, pts, fill):
        self.d.polygon([self.p(x, y) for x, y in pts], fill=fill)


def render(spec: FaceSpec) -> Image.Image:
    """Draw `spec` as a 64x64 RGB image; `image.info["diffex-demo"]` holds the spec as JSON.
    Raises DiffexError for an invalid spec. Same spec -> same pixels."""
    _check_spec(spec)
    a, j = spec.attrs, _jitter(spec.seed)
    skin = _add(SKIN[a["skin tone"]], j.skin)
    hair = _add(HAIR[a["hair colour"]], j.hair)
    beard = _facial_hair_colour(hair, skin)
    line = _scale(skin, 0.55)  # wrinkles: a darker shade of the skin, visible on every tone

    img = Image.new("RGB", (IMAGE_SIZE * _SS, IMAGE_SIZE * _SS), _add(BACKGROUND[a["background"]], j.bg))
    pen = _Pen(ImageDraw.Draw(img), 32 + j.dx, 37 + j.dy, j.scale)

    # 1. head: hair behind, ears, face, hair on top down to the hairline (y = -15)
    pen.ellipse((-18.5, -24, 18.5, 6), fill=hair)
    pen.ellipse((-18.5, -4, -13.5, 5), fill=skin)
    pen.ellipse((13.5, -4, 18.5, 5), fill=skin)
    pen.ellipse((-16, -20, 16, 20), fill=skin)
    pen.chord((-17.5, -24.5, 17.5, -5.5), 180, 360, fill=hair)

    # 2. age: forehead lines sit between hairline and brows, where no hat or glasses reach
    if spec.age == "old":
        for y in (-12.6, -10.4):
            pen.arc((-8, y - 1.5, 8, y + 2.5), 200, 340, fill=line, width=0.9)
        for side in (-1, 1):
            pen.arc((side * 6.5 - 3, -1.5, side * 6.5 + 3, 2.2), 20, 160, fill=line, width=0.8)
            pen.line([(side * 4.5, 4.5), (side * 6.8, 8), (side * 6.8, 11)], fill=line, width=0.8)
            pen.line([(side * 10.5, -4.2), (side * 13, -5.2)], fill=line, width=0.7)
            pen.line([(side * 10.5, -2.5), (side * 13, -2)], fill=line, width=0.7)

    # 3. facial hair that lies under the mouth
    for fh in _layers(spec, "facial hair"):
        if fh == "full beard":
            pen.chord((-16.3, -14, 16.3, 23), 0, 180, fill=beard)
            pen.ellipse((-7, 6, 7, 15), fill=skin)
        elif fh == "goatee":
            pen.poly([(-4, 13.5), (4, 13.5), (3.2, 18), (0.8, 22.5), (-0.8, 22.5), (-3.2, 18)], fill=beard)
        elif fh == "stubble":
            for u, v in j.stubble:
                y = 4.5 + v * 15
                half = 15.5 * (1 - ((y - 0) / 20.5) ** 2) ** 0.5
                x = u * half
                if abs(x) < 5.5 and 6 < y < 14:
                    continue  # keep the mouth clear
                pen.ellipse((x - 0.5, y - 0.5, x + 0.5, y + 0.5), fill=beard)

    # 4. eyes, brows, nose
    expr = a["expression"]
    for side in (-1, 1):
        ex = side * 6.5
        pen.ellipse((ex - 2.6, -5, ex + 2.6, -1), fill=(255, 255, 255))
        pen.ellipse((ex - 1.3, -4.3, ex + 1.3, -1.7), fill=INK)
        if expr == "frowning":  # steep brows, inner ends pulled down
            pen.line([(side * 2.8, -6), (side * 9.5, -9.5)], fill=INK, width=1.4)
        elif expr == "surprised":  # raised round brows
            pen.arc((ex - 3.5, -10, ex + 3.5, -6), 190, 350, fill=INK, width=1.2)
        elif expr == "smiling":
            pen.arc((ex - 3.5, -8.5, ex + 3.5, -5.5), 200, 340, fill=INK, width=1.2)
        else:
            pen.line([(side * 3.5, -7.2), (side * 9.5, -7.2)], fill=INK, width=1.2)
    pen.arc((-1.8, 2, 1.8, 5.5), 20, 160, fill=_scale(skin, 0.6), width=0.9)

    # 5. mouth: open shapes, since a thin arc reads as neutral at 64 px
    dark_red, teeth = (120, 20, 30), (250, 250, 250)
    if expr == "smiling":
        pen.chord((-5.5, 4.5, 5.5, 13.5), 0, 180, fill=dark_red)
        pen.rect((-3.8, 8.8, 3.8, 10.2), fill=teeth)
    elif expr == "frowning":
        pen.chord((-4.8, 8.5, 4.8, 16.5), 180, 360, fill=dark_red)
    elif expr == "surprised":
        pen.ellipse((-2.6, 7.5, 2.6, 13.5), fill=dark_red)
    else:
        pen.line([(-4, 10), (4, 10)], fill=dark_red, width=1.2)

    # 6. mustaches above the mouth
    for fh in _layers(spec, "facial hair"):
        if fh == "handlebar mustache":
            pen.poly([(-5.5, 6.2), (0, 5.4), (5.5, 6.2), (6.5, 8.2), (0, 7.4), (-6.5, 8.2)], fill=beard)
            for side in (-1, 1):
                pen.arc((side * 8 - 2.2, 3.6, side * 8 + 2.2, 8.4), 0 if side > 0 else 90, 90 if side > 0 else 180,
                        fill=beard, width=1.4)
        elif fh == "pencil mustache":
            pen.line([(-4.2, 6.6), (4.2, 6.6)], fill=beard, width=0.8)

    # 7. eyewear
    for ew in _layers(spec, "eyewear"):
        if ew == "round glasses":
            for side in (-1, 1):
                pen.ellipse((side * 6.5 - 4, -7, side * 6.5 + 4, 1), outline=j.frame, width=0.9)
            pen.arc((-2.8, -4.5, 2.8, -1.5), 200, 340, fill=j.frame, width=0.9)
        elif ew == "square glasses":
            for side in (-1, 1):
                pen.rect((side * 6.5 - 5, -6, side * 6.5 + 5, 0.2), outline=j.frame, width=1.3)
            pen.line([(-1.5, -4), (1.5, -4)], fill=j.frame, width=1.3)
            pen.line([(-11.5, -5), (-15.5, -5.5)], fill=j.frame, width=1.0)
            pen.line([(11.5, -5), (15.5, -5.5)], fill=j.frame, width=1.0)
        elif ew == "sunglasses":
            for side in (-1, 1):
                pen.rect((side * 6.5 - 5, -6, side * 6.5 + 5, -0.3), fill=(22, 22, 30), radius=2)
                pen.line([(side * 6.5 - 3, -4.5), (side * 6.5 - 1, -5.2)], fill=(110, 110, 130), width=0.6)
            pen.line([(-1.5, -4.5), (1.5, -4.5)], fill=(22, 22, 30), width=1.2)

    # 8. headwear: sits above the hairline, so it hides hair but never the forehead lines
    for k, hw in enumerate(_layers(spec, "headwear")):
        if k:  # a second hat perches on the first, smaller, so both show
            pen = _Pen(pen.d, pen.cx, pen.cy + HAT_PERCH[1] * pen.s, pen.s * HAT_PERCH[0])
        if hw == "top hat":
            pen.rect((-11, -32, 11, -16.5), fill=(24, 22, 26))
            pen.rect((-11, -20.5, 11, -17.5), fill=j.band)
            pen.rect((-19, -17.5, 19, -15.2), fill=(24, 22, 26), radius=1)
        elif hw == "cap":
            pen.chord((-17.8, -28, 17.8, -8), 180, 360, fill=j.hat)
            pen.rect((-17.8, -18.5, 17.8, -15.3), fill=j.hat)
            # the visor juts out to one side, which tells a cap from a beanie at 64 px
            visor = (2, -18.6, 27, -14.6) if j.cap_side > 0 else (-27, -18.6, -2, -14.6)
            pen.ellipse(visor, fill=_scale(j.hat, 0.7))
        elif hw == "beanie":
            pen.chord((-18, -29, 18, -10), 180, 360, fill=j.hat)
            pen.rect((-18.5, -20, 18.5, -15.2), fill=_scale(j.hat, 0.8), radius=1.5)
            for x in range(-15, 16, 3):
                pen.line([(x, -19.5), (x, -15.8)], fill=_scale(j.hat, 0.6), width=0.5)
            pen.ellipse((-3, -32.5, 3, -26.5), fill=_scale(j.hat, 1.25))
        elif hw == "headband":
            pen.rect((-17.6, -19.2, 17.6, -15.6), fill=j.band, radius=1.5)
            pen.line([(-17, -17.4), (17, -17.4)], fill=(255, 255, 255), width=0.6)

    out = img.reduce(_SS)
    out.info[METADATA_KEY] = spec.to_json()
    return out


# --------------------------------------------------------------------------- PNG metadata


def save_png(image_or_spec: "Image.Image | FaceSpec", path) -> Path:
    """Write a PNG with a tEXt chunk `diffex-demo` holding the spec JSON (rendering a spec
    first). An image without the spec in `.info` is written without the chunk."""
    image = render(image_or_spec) if isinstance(image_or_spec, FaceSpec) else image_or_spec
    info = PngInfo()
    if METADATA_KEY in image.info:
        info.add_text(METADATA_KEY, image.info[METADATA_KEY])
    path = Path(path)
    image.save(path, format="PNG", pnginfo=info)
    return path


def spec_from_image(image: Image.Image) -> FaceSpec | None:
    """The spec embedded by `render`/`save_png`, or None if the image has none.
    Raises DiffexError if it was drawn by another world version (it could not be re-rendered)."""
    text = image.info.get(METADATA_KEY)
    if text is None:
        text = (getattr(image, "text", None) or {}).get(METADATA_KEY)
    if text is None:
        return None
    try:
        data = json.loads(text)
        version = data.get("world_version")
    except (ValueError, AttributeError):
        raise DiffexError(f"the {METADATA_KEY} metadata of this image is damaged (not a JSON object)") from None
    if version != WORLD_VERSION:
        raise DiffexError(f"demo image drawn by world {version!r}; "
                          f"this diffex draws {WORLD_VERSION!r}: regenerate it with `diffex demo`")
    try:
        spec = FaceSpec(seed=int(data["seed"]), attrs=dict(data["attrs"]), age=data["age"],
                        extras=tuple(data.get("extras", ())))
    except (KeyError, TypeError, ValueError) as exc:
        raise DiffexError(f"the {METADATA_KEY} metadata of this image is damaged ({type(exc).__name__}: {exc})") from None
    _check_spec(spec)
    return spec


def write_dataset(folder, n: int, start_seed: int = 0) -> list[Path]:
    """Render faces for seeds start_seed..start_seed+n-1 to `folder/face_{seed:05d}.png`. Each
    file is written under a temporary name and renamed, so a reader never sees half a PNG."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in range(start_seed, start_seed + n):
        path = folder / f"face_{seed:05d}.png"
        with atomic_path(path) as tmp:
            save_png(sample_spec(seed), tmp)
        out.append(path)
    return out
