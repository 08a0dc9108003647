"""Editor registry: a SPEC string names a backend and its model, e.g. `demo`, `ledits:PATH`,
`ip2p:PATH` or a user's own editor, `python:PATH_OR_MODULE:ATTR`."""

from __future__ import annotations

from ..specs import build
from .base import EditSession, Editor

# prefix -> "module:factory"; the factory takes the text after "prefix:" ("" when absent).
# Modules are imported lazily so `diffex query` never pays for torch or diffusers.
EDITORS: dict[str, str] = {
    "demo": "diffex.editing.demo:from_spec",
    "ledits": "diffex.editing.ledits:from_spec",
    "ledits-xl": "diffex.editing.ledits:from_spec_xl",
    "ip2p": "diffex.editing.ip2p:from_spec",
    "python": "diffex.editing.python_spec:from_spec",
}


def available_editors() -> list[str]:
    return sorted(EDITORS)


def load_editor(spec: "str | Editor") -> Editor:
    """Build an editor from a SPEC (`demo`, `ledits:MODEL_ID_OR_PATH?size=512&steps=50`)."""
    if isinstance(spec, Editor):
        return spec
    editor = build(spec, EDITORS, "editor", ", ".join(available_editors()))
    editor.spec = str(spec)
    return editor


__all__ = ["Editor", "EditSession", "load_editor", "available_editors", "EDITORS"]
