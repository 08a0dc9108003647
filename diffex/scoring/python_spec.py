"""`python:PATH_OR_MODULE:ATTR`: any factory returning an object with `class_names` and a
batched `logits(images) -> [B, C]`. The user's own code is imported, as with any plugin."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Sequence

from ..errors import DiffexError
from ..hashing import hash_json, hash_tensors, sha256_bytes
from .base import LoadedClassifier


def _import_target(target: str) -> tuple[Any, bytes | None]:
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise DiffexError(f"classifier module file not found: {target}")
        name = f"diffex_user_{sha256_bytes(str(path.resolve()).encode())[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise DiffexError(f"importing {target} failed: {type(exc).__name__}: {exc}") from None
        return module, path.read_bytes()
    try:
        module = importlib.import_module(target)
    except ImportError as exc:
        raise DiffexError(f"cannot import classifier module {target!r}: {exc}") from None
    source = getattr(module, "__file__", None)
    return module, Path(source).read_bytes() if source else None


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
    target, sep, attr = rest.rpartition(":")
    if not sep or not target or not attr:
        raise DiffexError(f"python classifier spec must be python:PATH_OR_MODULE:ATTR, got python:{rest}")
    module, source = _import_target(target)
    factory = getattr(module, attr, None)
    if factory is None:
        raise DiffexError(f"{target} has no attribute {attr!r}")
    obj = factory() if callable(factory) and not hasattr(factory, "logits") else factory
    return PythonClassifier(obj, name=f"{Path(target).stem}:{attr}", source_bytes=source)
