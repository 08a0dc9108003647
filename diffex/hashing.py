"""Content hashes: every cached thing in diffex is keyed by one of these, never by name or time."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image

from . import atomic


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_json(obj: Any) -> str:
    """Hash of a JSON-serialisable value with sorted keys, so dict order never matters."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return sha256_bytes(text.encode("utf-8"))


def hash_image(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and the size: the same picture in PNG or BMP hashes the same."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    h = hashlib.sha256()
    h.update(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def hash_tensors(tensors: Mapping[str, Any], extra: Any = None) -> str:
    """Hash of named tensors (e.g. a state_dict) plus any JSON-able extra (preprocessing)."""
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        arr = t.detach().cpu().contiguous().numpy() if hasattr(t, "detach") else np.asarray(t)
        h.update(name.encode())
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    if extra is not None:
        h.update(hash_json(extra).encode())
    return h.hexdigest()


def node_id_for(path: tuple[str, ...]) -> str:
    """A node's identity is its normalised path, so renaming elsewhere in the tree never changes it."""
    return sha256_bytes("\x1f".join(path).encode("utf-8"))[:16]


def edit_id_for(image_id: str, editor_id: str, prompts: tuple[str, ...], direction: str, seed: int) -> str:
    """Key of one edit. Node ids are deliberately absent: two nodes asking the same edit share it."""
    return hash_json(
        {"image": image_id, "editor": editor_id, "prompts": sorted(prompts), "direction": direction, "seed": seed}
    )[:32]


# Files hashed in this process: (root, ((name, size, mtime_ns), ...)) -> sha256.
_FILE_HASHES: dict[tuple, str] = {}


def user_cache_dir() -> Path:
    """Where diffex keeps per-user memos: $DIFFEX_CACHE_DIR, else $XDG_CACHE_HOME/diffex,
    else ~/.cache/diffex."""
    if os.environ.get("DIFFEX_CACHE_DIR"):
        return Path(os.environ["DIFFEX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "diffex"


def hash_files(root: Path, files: Sequence[Path]) -> str:
    """sha256 over the relative names and bytes of `files` under `root` (model weights: GBs).

    Memoised like make: by resolved root and each file's (name, size, mtime_ns), in this process
    and across processes in `user_cache_dir()/file-hashes.json`, so a new `diffex index` does
    not read a 5 GB checkpoint again. A file rewritten in place with the same size and mtime
    keeps its old hash; touch it (any new mtime) to re-hash."""
    root = Path(root)
    ordered = sorted(files, key=lambda p: str(p.relative_to(root)))
    signature = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in ordered)
    key = (str(root.resolve()), signature)
    if key in _FILE_HASHES:
        return _FILE_HASHES[key]
    memo_key = hash_json(list(key))
    memo_path = user_cache_dir() / "file-hashes.json"
    memo = _read_memo(memo_path)
    digest = memo.get(memo_key)
    if digest is None:
        h = hashlib.sha256()
        for p in ordered:
            h.update(str(p.relative_to(root)).encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        digest = h.hexdigest()
        memo[memo_key] = digest
        _write_memo(memo_path, memo)
    _FILE_HASHES[key] = digest
    return digest


def memo_get(name: str, key: str) -> str | None:
    """A value remembered under `key` in the per-user memo file `name` (see user_cache_dir)."""
    return _read_memo(user_cache_dir() / name).get(key)


def memo_put(name: str, key: str, value: str) -> None:
    """Remember `value` under `key` in the per-user memo file `name` (best effort)."""
    path = user_cache_dir() / name
    memo = _read_memo(path)
    if memo.get(key) != value:
        memo[key] = value
        _write_memo(path, memo)


def _read_memo(path: Path) -> dict[str, str]:
    try:
        memo = json.loads(path.read_text())
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}  # absent, unreadable or torn: hash again


def _write_memo(path: Path, memo: dict[str, str]) -> None:
    # Best effort: a read-only home only costs re-hashing. Written under a temporary name and
    # renamed, so concurrent processes never read half a file.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(memo, sort_keys=True))
    except OSError:
        pass
