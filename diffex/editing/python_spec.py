"""`python:PATH_OR_MODULE:ATTR`: a user's own editor (README, "Your own editor").

ATTR is an editor object, or a class or function that returns one when called with no
arguments. An editor is anything shaped like `diffex.editing.Editor` (subclassing it is the
easy way, not a requirement): a `config` mapping (everything that changes its output pixels)
and `open(image, image_id, cache_dir)` returning a session with `reconstruct()` (the null
edit) and `edit(concepts, seed)`, each returning a PIL image. Optional: `name`, `batch_size`,
`check`, `check_image`, `edit_batch`, and a session's `close`.

The editor id is a content hash of the code and the config, never of a path: the module
file's bytes (and the module name when imported by name), ATTR and `config`. Editing the
file or changing the config makes a new editor; moving the file does not. What the file
does not show (weights it loads, a package it imports) belongs in `config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..errors import DiffexError
from ..hashing import hash_json, sha256_bytes
from ..types import Concept
from ..user_code import UserObject, load_user_object
from .base import EditOutput, EditSession, Editor


def _is_editor(obj: Any) -> bool:
    return isinstance(obj, Editor) or (callable(getattr(obj, "open", None)) and hasattr(obj, "config"))


class PythonEditor(Editor):
    """Wraps the user's editor: checks what it returns and keys it by its code and config."""

    name = "python"

    def __init__(self, found: UserObject):
        factory = found.value
        obj = factory
        if isinstance(factory, type) or (callable(factory) and not _is_editor(factory)):
            try:
                obj = factory()
            except Exception as exc:
                raise DiffexError(f"editor factory {found.name} failed: {type(exc).__name__}: {exc}") from None
        if not _is_editor(obj):
            raise DiffexError(f"{found.name} is not an editor ({type(obj).__name__}): it needs `config` and "
                              "`open(image, image_id, cache_dir)`, as diffex.editing.Editor has")
        try:
            config = obj.config
        except Exception as exc:
            raise DiffexError(f"editor {found.name}: reading its config failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(config, Mapping):
            raise DiffexError(f"editor {found.name}: config must be a dict, got {type(config).__name__}")
        self.user = obj
        self.label = found.name
        own_name = getattr(obj, "name", None)
        self._config = {
            "code": {"source": sha256_bytes(found.source) if found.source is not None else None,
                     "module": found.module, "attr": found.attr},
            "name": own_name if isinstance(own_name, str) else None,
            # hashed as JSON: keys sorted, values that are not JSON by their str()
            "config": dict(config),
        }
        batch = getattr(obj, "batch_size", 1)
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise DiffexError(f"editor {found.name}: batch_size must be a positive int, got {batch!r}")
        self._batch = batch
        _ = hash_json(self._config)  # a config that cannot be hashed fails here, not mid-run

    @property
    def config(self) -> dict[str, Any]:
        return self._config

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        return self._batch

    def check(self, load: bool = False) -> None:
        if callable(getattr(self.user, "check", None)):
            self._call("check", self.user.check, load=load)

    def check_image(self, image: Image.Image, where: str) -> None:
        if callable(getattr(self.user, "check_image", None)):
            self._call("check_image", self.user.check_image, image, where)

    def open(self, image: Image.Image, image_id: str, cache_dir: Path) -> "PythonSession":
        session = self._call("open", self.user.open, image, image_id, cache_dir)
        for method in ("reconstruct", "edit"):
            if not callable(getattr(session, method, None)):
                raise DiffexError(f"editor {self.label}: open() returned {type(session).__name__}, "
                                  f"which has no {method}() method")
        return PythonSession(self, session)

    def edit_batch(self, sessions: Sequence["PythonSession"], concepts: Sequence[Concept], seed: int) -> list[EditOutput]:
        own = getattr(type(self.user), "edit_batch", None)
        if own is None or own is Editor.edit_batch:
            return [EditOutput(s.reconstruct() if not concepts else s.edit(concepts, seed)) for s in sessions]
        outputs = self._call("edit_batch", self.user.edit_batch, [s.inner for s in sessions], tuple(concepts), seed)
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else outputs
        if not isinstance(outputs, list) or len(outputs) != len(sessions):
            raise DiffexError(f"editor {self.label}: edit_batch() must return one output per session "
                              f"({len(sessions)}), got {type(outputs).__name__}")
        checked = []
        for out in outputs:  # an EditOutput (to report 'blocked') or a bare image
            out = out if isinstance(out, EditOutput) else EditOutput(out)
            self._image(out.image, "edit_batch")
            checked.append(out)
        return checked

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DiffexError:
            raise
        except Exception as exc:
            raise DiffexError(f"editor {self.label}: {what}() failed: {type(exc).__name__}: {exc}") from None

    def _image(self, value: Any, what: str) -> Image.Image:
        if not isinstance(value, Image.Image):
            raise DiffexError(f"editor {self.label}: {what}() returned {type(value).__name__}, expected a PIL image")
        return value


class PythonSession(EditSession):
    def __init__(self, editor: PythonEditor, inner: Any):
        self.editor = editor
        self.inner = inner

    def reconstruct(self) -> Image.Image:
        return self.editor._image(self.editor._call("reconstruct", self.inner.reconstruct), "reconstruct")

    def edit(self, concepts: Sequence[Concept], seed: int) -> Image.Image:
        return self.editor._image(self.editor._call("edit", self.inner.edit, tuple(concepts), int(seed)), "edit")

    def close(self) -> None:
        if callable(getattr(self.inner, "close", None)):
            self.editor._call("close", self.inner.close)


def from_spec(rest: str) -> PythonEditor:
    return PythonEditor(load_user_object("editor", rest))
