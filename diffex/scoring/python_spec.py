"""`python:PATH_OR_MODULE:ATTR`: any factory returning an object with `class_names` and a
batched `logits(images) -> [B, C]`. The user's own code is imported, as with any plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import DiffexError
from ..hashing import hash_json, hash_tensors, sha256_bytes
from ..user_code import load_user_object
from .base import LoadedClassifier


def _state_dict(obj: Any):
    for candidate in (obj, getattr(obj, "model", None)):
        if candidate is not None and callable(getattr(candidate, "state_dict", None)):
            return candidate.state_dict()
    return None


class PythonClassifier(LoadedClassifier):
    def __init__(self, obj: Any, name: str, source_bytes: bytes | None):
        names = getattr(obj, "class_names", None)
        if not names or not all(isinstance(n, str) for n in names):
            raise DiffexError(f"classifier {name!r} must have `class_names`, a non-empty list of strings")
        if len(set(names)) != len(names):
            raise DiffexError(f"classifier {name!r} has duplicate class names")
        if not callable(getattr(obj, "logits", None)):
            raise DiffexError(f"classifier {name!r} must have a `logits(images)` method")
        self.obj = obj
        self.name = name
        self._names = tuple(names)
        self.batch_size = int(getattr(obj, "batch_size", 64))
        extra = {"class_names": list(self._names), "preprocessing": getattr(obj, "preprocessing", None)}
        if callable(getattr(obj, "fingerprint", None)):
            self._id = hash_json({"fingerprint": str(obj.fingerprint()), **extra})[:32]
        elif (sd := _state_dict(obj)) is not None:
            # weights + preprocessing: a retrained model is new whatever its file is called
            self._id = hash_tensors(sd, extra)[:32]
        else:
            self._id = hash_json({"source": sha256_bytes(source_bytes or name.encode()), **extra})[:32]

    def logits(self, images: Sequence):
        out = self.obj.logits(list(images))
        # scores are stored by class index: a model whose class list moves would mislabel them
        now = getattr(self.obj, "class_names", None)
        if now is None or tuple(now) != self._names:
            raise DiffexError(f"classifier {self.name!r} changed its class_names between calls "
                              f"(was {', '.join(self._names)}; now {', '.join(map(str, now or []))}); "
                              "they must stay fixed, they index the stored scores")
        return out


def from_spec(rest: str) -> PythonClassifier:
    found = load_user_object("classifier", rest)
    factory = found.value
    obj = factory() if callable(factory) and not hasattr(factory, "logits") else factory
    return PythonClassifier(obj, name=found.name, source_bytes=found.source)
