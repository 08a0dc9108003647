"""Editor registry: a SPEC string names a backend and its model, e.g. `demo` or `ledits:PATH`."""

from __future__ import annotations

from ..specs import build
from .base import EditSession, Editor

# prefix -> "module:factory"; the factory takes the text after "prefix:" ("" when absent).
# Modules are imported lazily so `diffex query` never pays for torch or diffusers.
EDITORS: dict[str, str] = {
    "demo": "diffex.editing.demo:from_spec",
    "ledits": "diffex.editing.ledits:from_spec",
    "ledits-xl": "diffex.editing.ledits:from_spec_xl",
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
