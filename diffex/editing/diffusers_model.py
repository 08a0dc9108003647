"""What every diffusers editor backend (LEDITS++, InstructPix2Pix) shares: where its model is,
the model's identity for the editor id, the device/dtype defaults, and loading a pipeline
through diffex's one loading policy (diffex/models.py: local files or the HF cache only,
safetensors, offline, quiet). No torch or diffusers import at module level."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .. import models
from ..errors import DiffexError
from ..hashing import hash_files

DTYPES = ("float16", "bfloat16", "float32")
# Weight and config files whose bytes define a local model's identity.
IDENTITY_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def hub_commit(model: str, revision: str) -> str | None:
    """The commit `revision` of hub model `model` resolves to in the local Hugging Face cache
    (a 40-hex revision is a commit already), or None when the cache does not have it."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    snapshot = models.hub_snapshot(model, revision)  # .../models--org--name/snapshots/<commit>
    return snapshot.name if snapshot is not None else None


def local_model_hash(path: Path) -> str:
    """sha256 over the weight and config files of a saved pipeline (relative name + bytes)."""
    files = [p for p in path.rglob("*") if p.is_file() and p.suffix in IDENTITY_SUFFIXES]
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise DiffexError(f"{path} holds no .safetensors/.bin weights; expected a directory saved with save_pretrained")
    return hash_files(path, files)


def local_path(kind: str, model: str) -> Path | None:
    """The model's directory when `model` is a path; None for a hub id. A path that does not
    exist is an error here, so a typo never turns into a hub lookup."""
    expanded = Path(os.path.expanduser(model))
    if expanded.exists():
        return expanded
    if models.looks_like_path(model):
        raise DiffexError(f"{kind} model path {model} does not exist")
    return None


def model_identity(kind: str, model: str, path: Path | None, revision: str | None) -> dict[str, Any]:
    """What pins the weights: the bytes of a local directory's weight and config files, or a
    hub id + the commit its revision resolves to in the cache (a branch like "main" moves)."""
    if path is not None:
        return {"sha256": local_model_hash(path)}
    commit = hub_commit(model, revision or "main")
    if commit is None:  # diffex downloads nothing (diffex/models.py)
        raise models.not_present(kind, model, revision)
    return {"id": model, "revision": commit}


def resolve_source(kind: str, model: str, path: Path | None, *, allow_pickle: bool,
                   revision: str | None) -> "models.ModelSource":
    """Where the model is, its weights checked against the pickle policy (file look-ups only)."""
    if path is not None:
        return models.resolve(kind, str(path), allow_pickle=allow_pickle)
    return models.resolve(kind, model, allow_pickle=allow_pickle, revision=revision)


def device_and_dtype(kind: str, device: str | None, dtype: str | None) -> tuple[str, str]:
    """Defaults: cuda if available, else cpu; float16 on cuda, else float32."""
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = "float16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise DiffexError(f"{kind} option dtype={dtype!r}; valid: {', '.join(DTYPES)}")
    return device, dtype


def load_pipeline(class_name: str, source: "models.ModelSource", kind: str, *, dtype: str, device: str,
                  safety: bool = True):
    """A diffusers pipeline class by name, loaded from `source` under the loading policy, moved
    to `device`, its progress bars off. `safety=False` loads it without its safety checker.
    Raises a one-line DiffexError."""
    import torch
    import diffusers
    from diffusers.utils import deprecation_utils

    cls = getattr(diffusers, class_name)
    # diffusers >= 0.42 renamed torch_dtype to dtype (the old name still works, with a warning).
    dtype_key = "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
    kwargs: dict[str, Any] = {dtype_key: getattr(torch, dtype)}
    if not safety:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    pipe = models.load_pretrained(cls, source, kind, **kwargs)
    try:
        pipe = pipe.to(device)
    except Exception as exc:
        raise DiffexError(f"cannot move the {kind} pipeline to device {device!r}: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generator(device: str, seed: int):
    """A torch.Generator seeded with `seed` on `device` (the CPU for mps, which has none)."""
    import torch

    return torch.Generator(device="cpu" if device == "mps" else device).manual_seed(int(seed))
