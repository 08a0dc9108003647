"""A user's own code named by a `python:PATH_OR_MODULE:ATTR` SPEC, shared by the classifier and
editor plugins: the file or module is imported (it runs, as with any plugin) and ATTR is read
from it, with one-line errors for a missing file, a failed import or a missing attribute."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DiffexError
from .hashing import sha256_bytes


@dataclass(frozen=True)
class UserObject:
    """ATTR of the user's file or module. `source` is the module file's bytes (None for a module
    without a file): what a plugin's content hash is built from, so a moved file keeps its id."""

    value: Any
    target: str  # PATH_OR_MODULE as given
    attr: str
    module: str | None  # the module name when imported by name; None for a file
    source: bytes | None

    @property
    def name(self) -> str:
        return f"{Path(self.target).stem}:{self.attr}"


def split_python_spec(kind: str, rest: str) -> tuple[str, str]:
    """`PATH_OR_MODULE:ATTR` -> (target, attr); the last colon splits, so a Windows path works."""
    target, sep, attr = rest.rpartition(":")
    if not sep or not target or not attr:
        raise DiffexError(f"python {kind} spec must be python:PATH_OR_MODULE:ATTR, got python:{rest}")
    return target, attr


def import_target(kind: str, target: str) -> tuple[Any, bytes | None]:
    """The module at file `target` (ends in .py, or is a file) or named `target`, and its source
    bytes. Raises DiffexError naming `kind` (e.g. "classifier") when it cannot be imported."""
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise DiffexError(f"{kind} module file not found: {target}")
        name = f"diffex_user_{sha256_bytes(str(path.resolve()).encode())[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise DiffexError(f"importing {target} failed: {type(exc).__name__}: {exc}") from None
        return module, path.read_bytes()
    try:
        module = importlib.import_module(target)
    except ImportError as exc:
        raise DiffexError(f"cannot import {kind} module {target!r}: {exc}") from None
    except Exception as exc:  # the module itself raised while importing
        raise DiffexError(f"importing {target} failed: {type(exc).__name__}: {exc}") from None
    source = getattr(module, "__file__", None)
    return module, Path(source).read_bytes() if source else None


def load_user_object(kind: str, rest: str) -> UserObject:
    """ATTR of PATH_OR_MODULE for a `python:` SPEC's `rest`, not yet called."""
    target, attr = split_python_spec(kind, rest)
    module, source = import_target(kind, target)
    value = getattr(module, attr, None)
    if value is None:
        raise DiffexError(f"{target} has no attribute {attr!r}")
    is_file = target.endswith(".py") or Path(target).is_file()
    return UserObject(value, target, attr, None if is_file else target, source)
