"""SPEC strings (`prefix:rest`) -> backend objects, shared by the editor, classifier and
embedder registries. Backends are imported lazily so `diffex query` never pays for torch."""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from .errors import DiffexError


def build(spec: str, table: Mapping[str, str], kind: str, valid: str, needs_colon: bool = False) -> Any:
    """Call the factory `table[prefix]` ("module:function") with the text after "prefix:".
    Raises DiffexError naming the valid SPECs when the prefix is unknown."""
    prefix, sep, rest = str(spec).partition(":")
    if "?" in prefix:  # options without a model (`demo?fail=0.2`): the factory gets "?fail=0.2"
        prefix, query = prefix.split("?", 1)
        rest, sep = "?" + query + sep + rest, ""
    if prefix not in table or (needs_colon and not sep):
        raise DiffexError(f"unknown {kind} spec {spec!r}; valid: {valid}")
    module_name, factory = table[prefix].split(":")
    return getattr(importlib.import_module(module_name), factory)(rest)
