"""A bench-only classifier for bench/adaptive_cost.py: `python:bench/palette_classifier.py:palette`.

Why it exists: demo:v1 has about three taxonomy nodes with a real effect on "old" (goatee and
its ancestors); the rest are within noise of zero, so a top-10 of demo:v1 ranks noise and no
schedule can be judged by it. This classifier reads pixels only (a linear model on colour
counts, then a sigmoid), with graded weights on colours that many of the demo world's
attributes paint: backgrounds, skin tones, hair colours, the mouth (whose area depends on the
expression), white (teeth, eyes), near-black (top hat, sunglasses, black hair) and the hat/band
colours. So a dozen or more nodes have distinct real effects on P(old) and the others are near
zero. Effects still vary per image: the sigmoid's slope depends on the rest of the picture, and
an attribute's pixels cover others' (a hat hides hair), as a real classifier's would.

The weights were set once, by the attributes' pixel areas, so that effects are graded and
spread; they were not adjusted to favour any schedule (all schedules score with this model).
"""

from __future__ import annotations

import numpy as np

from diffex.demo.world import BACKGROUND, HAIR, HAT_COLOURS, SKIN

# (reference colour, match radius, weight on the logit of "old" per unit pixel fraction)
_PALETTE = (
    [(BACKGROUND["blue background"], 30, 0.0), (BACKGROUND["green background"], 30, 0.8),
     (BACKGROUND["orange background"], 30, 2.4), (BACKGROUND["purple background"], 30, -1.6)]
    + [(SKIN["light skin"], 22, 0.0), (SKIN["medium skin"], 22, 1.5), (SKIN["dark skin"], 22, 3.0)]
    + [(HAIR["black hair"], 24, 2.0), (HAIR["blonde hair"], 24, -6.0), (HAIR["red hair"], 24, -3.0),
       (HAIR["grey hair"], 24, 9.0), (HAIR["brown hair"], 24, 1.0)]
    + [((120, 20, 30), 30, 40.0), ((250, 250, 250), 20, -30.0)]
    + [(c, 20, 6.0) for c in HAT_COLOURS]
)
_COLOURS = np.array([c for c, _, _ in _PALETTE], dtype=np.float32)  # [K, 3]
_RADII = np.array([r for _, r, _ in _PALETTE], dtype=np.float32)
_WEIGHTS = np.array([w for _, _, w in _PALETTE], dtype=np.float64)
_BIAS = -1.2


class PaletteClassifier:
    """young / old from colour counts; logits [0, s] so P(old) = sigmoid(s)."""

    class_names = ["young", "old"]
    batch_size = 256

    def fingerprint(self) -> str:
        return repr((_PALETTE, _BIAS, "palette-1"))

    def logits(self, images):
        out = np.zeros((len(images), 2), dtype=np.float64)
        for i, image in enumerate(images):
            px = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 1, 3)
            near = np.linalg.norm(px - _COLOURS[None], axis=2) <= _RADII[None]  # [P, K]
            out[i, 1] = _BIAS + float(near.mean(axis=0) @ _WEIGHTS)
        return out


def palette() -> PaletteClassifier:
    return PaletteClassifier()
