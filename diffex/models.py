"""The one loading policy of every model diffex loads: classifiers (`hf:`, `clip:`,
`torchscript:`), embedders (`clip:`, `demo`), editors (`ledits:`, `ledits-xl:`) and the local
VLM (`hf:`). Every backend goes through this module, and a test checks that no other module
calls `from_pretrained` or `torch.load`.

The policy:
- Local only. A model is a local directory (written by `save_pretrained`) or a hub id that
  resolves through the local Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
  `~/.cache/huggingface/hub`), whatever `HF_HUB_OFFLINE` says: diffex downloads nothing.
  A hub id that is not in the cache fails at once (no network retries) with one line saying
  so; `from_pretrained` always gets the resolved directory and `local_files_only=True`.
- Safetensors only. A weight folder holding only pickle files (`pytorch_model.bin`, ...) is
  refused unless the SPEC says `allow_pickle=1` (transformers then still unpickles with
  `torch.load(weights_only=True)`).
- `trust_remote_code` off unless a SPEC asks for it.
- Quiet: library warnings, notices and progress bars are silenced while a model loads.
- One line: every failure is a DiffexError of one line naming the model.

SPEC options are parsed by diffex/specs.py, the one parser of every registry.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import DiffexError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_COMMIT = re.compile(r"[0-9a-f]{40}")


# ---------------------------------------------------------------------------- where a model is
@dataclass(frozen=True)
class ModelSource:
    """A model that is present on this machine. `path` is the directory to load from (a local
    directory, or the hub cache's snapshot folder of `hub_id` at `commit`)."""

    target: str  # as the user gave it
    path: Path
    hub_id: str | None = None
    commit: str | None = None
    use_safetensors: bool | None = True  # what to pass to from_pretrained (None: the library prefers safetensors)


def looks_like_path(target: str) -> bool:
    """A path, never a hub id ("name" or "owner/name"): so a typo never becomes a hub lookup."""
    return (target.startswith(("/", "./", "../", "~", ".\\")) or os.path.isabs(target)
            or target in (".", "..") or target.count("/") > 1 or not _HUB_ID.fullmatch(target))


def local_dir(kind: str, target: str) -> Path | None:
    """The model directory if `target` is local; None for a hub id. A path that does not exist
    is an error here, so it never turns into a hub lookup."""
    path = Path(target).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise DiffexError(f"{kind} model {target} is a file; give the directory written by save_pretrained")
    if looks_like_path(target):
        raise DiffexError(f"no {kind} model directory at {target}")
    return None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (as huggingface_hub
    reads it at import): HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME or ~/.cache."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_snapshot(hub_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of `hub_id` at `revision` (branch, tag or commit; default
    main), or None when the local cache does not hold it. Never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        found = snapshot_download(hub_id, revision=revision, cache_dir=str(hub_cache_dir()), local_files_only=True)
    except Exception:  # absent (LocalEntryNotFoundError) or an id the hub library rejects
        return None
    return Path(found) if found and Path(found).is_dir() else None


def not_present(kind: str, target: str, revision: str | None = None) -> DiffexError:
    at = f" at revision {revision}" if revision else ""
    return DiffexError(
        f"{kind} model {target!r}{at} is not in the local Hugging Face cache ({hub_cache_dir()}) and diffex downloads "
        f"nothing: give a local directory written by save_pretrained, or put the model in that cache first "
        f"(`hf download {target}` on a machine with network)"
    )


def check_weights(kind: str, directory: Path, allow_pickle: bool) -> bool | None:
    """What to pass as `use_safetensors`: True when every folder holding weights (the model,
    or each component of a pipeline) has safetensors. A folder with only pickle weights is
    refused unless `allow_pickle`: pickle files can run code when loaded."""
    files = [p for p in directory.rglob("*") if p.is_file() and ".cache" not in p.parts]
    safe = {p.parent for p in files if p.name.endswith((".safetensors", ".safetensors.index.json"))}
    pickled = {p.parent for p in files if p.suffix in PICKLE_SUFFIXES and p.name != "training_args.bin"}
    if not safe and not pickled:
        raise DiffexError(f"no model weights (*.safetensors) in {directory}")
    only_pickle = sorted(pickled - safe)
    if not only_pickle:
        return True
    if not allow_pickle:
        names = sorted(str(p.relative_to(directory)) for p in files if p.parent in only_pickle and p.suffix in PICKLE_SUFFIXES)
        raise DiffexError(
            f"{directory} has only pickle weights ({', '.join(names[:4])}); pickle files can run code when loaded, so "
            f"diffex refuses them: re-save with save_pretrained(dir, safe_serialization=True), or, if you trust "
            f"the files, add ?allow_pickle=1 to the {kind} spec"
        )
    return None if safe else False


def resolve(kind: str, target: str, *, allow_pickle: bool = False, revision: str | None = None) -> ModelSource:
    """Where `target` (a local directory or a hub id) is on this machine, its weights checked
    against the pickle policy. Fast: file-system look-ups only, no network and no model
    library imported. Raises a one-line DiffexError when the model is not present."""
    directory = local_dir(kind, target)
    hub_id = commit = None
    if directory is None:
        hub_id = target
        directory = hub_snapshot(target, revision)
        if directory is None:
            raise not_present(kind, target, revision)
        commit = directory.name if _COMMIT.fullmatch(directory.name) else None
    return ModelSource(target, directory, hub_id, commit, check_weights(kind, directory, allow_pickle))


# ---------------------------------------------------------------------------- loading
@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hugging Face libraries in offline mode while diffex loads: even a code path that ignores
    `local_files_only` makes no network call. Restored afterwards (a notebook keeps its own mode)."""
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    saved_const = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_const


@contextlib.contextmanager
def quiet(*libraries: str) -> Iterator[None]:
    """Silence transformers' and diffusers' notices, warnings and progress bars while a model
    loads: those of `libraries` (imported here: wrap the import itself, some notices come at
    import) and of any of the two the caller imported already."""
    restore = []
    for name in ("transformers", "diffusers"):
        if name not in sys.modules and name not in libraries:
            continue
        logging = __import__(f"{name}.utils.logging", fromlist=["logging"])
        verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        restore.append((logging, verbosity, bars))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logging, verbosity, bars in restore:
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception, cut at a word boundary."""
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__).rstrip(". ")
    if len(line) > limit:
        line = line[:limit].rsplit(" ", 1)[0] + " ..."
    return line


def load_error(kind: str, target: str, exc: BaseException) -> DiffexError:
    """One line for a model that is present but failed to load."""
    if "trust_remote_code" in str(exc):
        return DiffexError(f"{kind} model {target!r} needs its own code to load ({first_line(exc, 200)}); "
                           f"if you trust it, add ?trust_remote_code=1")
    return DiffexError(f"cannot load {kind} model {target!r}: {type(exc).__name__}: {first_line(exc)}")


def load_pretrained(loader: Any, source: ModelSource, kind: str, *, trust_remote_code: bool = False,
                    weights: bool = True, **kwargs: Any) -> Any:
    """`loader.from_pretrained` on the resolved directory, offline, quiet, local files only,
    `trust_remote_code` off unless asked. `weights=False` for tokenizers and processors (no
    `use_safetensors`). Raises a one-line DiffexError."""
    if weights:
        kwargs.setdefault("use_safetensors", source.use_safetensors)
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        with offline(), quiet():
            return loader.from_pretrained(str(source.path), local_files_only=True, **kwargs)
    except Exception as exc:  # transformers and diffusers raise OSError, ValueError, KeyError, ...
        raise load_error(kind, source.target, exc) from None


def torch_load(path: Path, *, allow_pickle: bool) -> Any:
    """`torch.load` of a file on the CPU: tensors and plain containers only
    (`weights_only=True`) unless `allow_pickle`, which unpickles anything (code included).
    Raises pickle.UnpicklingError, RuntimeError, ... for the caller to explain."""
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)


def load_safetensors(path: "str | Path") -> dict[str, Any]:
    """The tensors of a .safetensors file (shipped weights, a cached inversion), on the CPU:
    never unpickles, never touches the network."""
    from safetensors.torch import load_file

    return load_file(str(path))


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
