"""Classifier registry: `demo:v1`, `python:PATH_OR_MODULE:ATTR`, and the adapters in later modules."""

from __future__ import annotations

from ..specs import build
from .base import Classifier, score_images

# prefix -> "module:factory"; the factory takes the text after "prefix:".
CLASSIFIERS: dict[str, str] = {
    "demo": "diffex.demo.classifier:from_spec",
    "python": "diffex.scoring.python_spec:from_spec",
    "hf": "diffex.scoring.hf:from_spec",
    "torchscript": "diffex.scoring.torchscript:from_spec",
    "clip": "diffex.scoring.clip:from_spec",
}


def available_classifiers() -> list[str]:
    return sorted(CLASSIFIERS)


def load_classifier(spec: "str | Classifier") -> Classifier:
    """Build a classifier from a SPEC such as `demo:v1` or `python:my_models.py:make_model`."""
    if isinstance(spec, Classifier):
        return spec
    valid = ", ".join(p + ":..." for p in available_classifiers())
    clf = build(spec, CLASSIFIERS, "classifier", valid, needs_colon=True)
    clf.spec = str(spec)
    return clf


__all__ = ["Classifier", "load_classifier", "available_classifiers", "score_images", "CLASSIFIERS"]
