"""What every model-file classifier adapter shares: SPEC options (`PATH?key=value&...`), the
refusal of pickle checkpoints, offline-friendly load errors, and path-free config hashing."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import unquote

from ..errors import DiffexError

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def split_spec(prefix: str, rest: str, allowed: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """`MODEL?k=v&k2=v2` -> ("MODEL", {k: v}); values are %-decoded (a literal '+' stays '+').
    `allowed` maps option names to a short help used in the error for an unknown option."""
    target, _, query = rest.partition("?")
    if not target:
        raise DiffexError(f"{prefix} classifier spec needs a model: {prefix}:MODEL_ID_OR_PATH[?option=value&...]")
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        key = unquote(key).strip()
        if key not in allowed:
            valid = "; ".join(f"{k} ({v})" for k, v in allowed.items())
            raise DiffexError(f"unknown option {key!r} in {prefix}:{rest}; valid: {valid}")
        if not eq:
            raise DiffexError(f"option {key!r} in {prefix}:{rest} needs a value: {key}=...")
        if key in options:
            raise DiffexError(f"option {key!r} given twice in {prefix}:{rest}")
        options[key] = unquote(value)
    return target, options


def flag(options: Mapping[str, str], key: str) -> bool:
    value = options.get(key, "0").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise DiffexError(f"option {key} must be 1 or 0, got {options[key]!r}")


def float_list(options: Mapping[str, str], key: str, default: tuple[float, ...], n: int = 3) -> tuple[float, ...]:
    """`0.5` or `0.485,0.456,0.406` -> n floats (one value is repeated n times)."""
    if key not in options:
        return default
    try:
        values = tuple(float(v) for v in options[key].split(","))
    except ValueError:
        raise DiffexError(f"option {key} must be 1 or {n} comma-separated numbers, got {options[key]!r}") from None
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise DiffexError(f"option {key} must be 1 or {n} comma-separated numbers, got {options[key]!r}")
    return values


def name_list(options: Mapping[str, str], key: str) -> tuple[str, ...] | None:
    """`a,b,c` -> ("a", "b", "c"); None when absent; empty or repeated names are errors."""
    if key not in options:
        return None
    names = tuple(n.strip() for n in options[key].split(","))
    if not names or any(not n for n in names):
        raise DiffexError(f"option {key} has an empty name: {options[key]!r}")
    if len(set(names)) != len(names):
        raise DiffexError(f"option {key} repeats a name: {options[key]!r}")
    return names


def local_dir(prefix: str, target: str) -> Path | None:
    """The model directory if `target` is local; None for a hub id. A path that does not exist
    is an error here, so it never turns into a network lookup."""
    path = Path(target).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise DiffexError(f"{prefix} model {target} is a file; give the directory written by save_pretrained")
    if target.startswith(("/", "./", "../", "~")) or target.count("/") > 1:
        raise DiffexError(f"no {prefix} model directory at {target}")
    return None


def safetensors_required(prefix: str, directory: Path | None, allow_pickle: bool) -> bool:
    """True when weights must come from safetensors. A local directory with only pickle weights
    (pytorch_model.bin, ...) is refused unless `allow_pickle` (even then transformers loads
    them with torch.load(weights_only=True), so no arbitrary object is unpickled)."""
    if directory is None:
        return not allow_pickle
    if any(directory.glob("*.safetensors")) or any(directory.glob("*.safetensors.index.json")):
        return True
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise DiffexError(f"no model weights (*.safetensors) in {directory}")
    if not allow_pickle:
        raise DiffexError(
            f"{directory} has only pickle weights ({', '.join(pickles)}); pickle files can run code when loaded, so "
            f"diffex refuses them: re-save with save_pretrained(dir, safe_serialization=True), or, if you trust "
            f"the file, add ?allow_pickle=1 to the {prefix} spec"
        )
    return False


def offline_mode() -> bool:
    return any(os.environ.get(k, "").strip().lower() in TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def load_error(prefix: str, target: str, exc: BaseException) -> DiffexError:
    """One line for a failed from_pretrained: what failed and how to load offline."""
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__).rstrip(".")
    if "trust_remote_code" in str(exc):
        return DiffexError(f"{prefix} model {target!r} needs its own code to load ({first[:200]}); "
                           f"if you trust it, add ?trust_remote_code=1")
    return DiffexError(
        f"cannot load {prefix} model {target!r}: {type(exc).__name__}: {first[:300]}. Without network, give a local "
        "directory written by save_pretrained, or a model already in the Hugging Face cache with HF_HUB_OFFLINE=1"
    )


def clean_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict without what depends on where or when it was saved (paths, versions)."""
    drop = {"transformers_version", "name_or_path", "dtype", "torch_dtype", "processor_class", "auto_map"}
    out = {}
    for key, value in config.items():
        key = str(key)  # id2label has int keys
        if key.startswith("_") or key in drop:
            continue
        out[key] = clean_config(value) if isinstance(value, Mapping) else value
    return out


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and weight-loading bars while a model loads."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
