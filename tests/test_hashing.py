"""Content hashes of model files: memoised across processes by path, size and mtime."""

from __future__ import annotations

import json
import os

from diffex import hashing


def test_file_hashes_are_memoised_on_disk_like_make(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFEX_CACHE_DIR", str(tmp_path / "user-cache"))
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    weights = model / "unet" / "weights.safetensors"
    weights.write_bytes(b"\x01" * 4096)
    (model / "config.json").write_text("{}")
    files = [weights, model / "config.json"]

    first = hashing.hash_files(model, files)
    memo = json.loads((tmp_path / "user-cache" / "file-hashes.json").read_text())
    assert list(memo.values()) == [first]
    assert hashing.hash_files(model, list(reversed(files))) == first  # order of the list is irrelevant

    # A new process (empty in-memory memo) trusts the disk memo while name, size and mtime hold:
    # rewrite the bytes in place, keep size and mtime, and the old hash comes back unread.
    stat = weights.stat()
    weights.write_bytes(b"\x02" * 4096)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    monkeypatch.setattr(hashing, "_FILE_HASHES", {})
    assert hashing.hash_files(model, files) == first
    # Any new mtime re-hashes and gives the new content's hash.
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = hashing.hash_files(model, files)
    assert changed != first and len(changed) == 64

    # A torn memo file is ignored (and rewritten), never an error.
    (tmp_path / "user-cache" / "file-hashes.json").write_text("{not json")
    monkeypatch.setattr(hashing, "_FILE_HASHES", {})
    assert hashing.hash_files(model, files) == changed
    assert changed in json.loads((tmp_path / "user-cache" / "file-hashes.json").read_text()).values()
