"""The one write-then-rename: a file appears under its final name whole or not at all (a
killed run, a full disk or a concurrent reader never sees half a file)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: "str | Path") -> Iterator[Path]:
    """A temporary path beside `path` (same folder, so the rename is atomic) to write to; it is
    renamed onto `path` when the block ends without error, and removed otherwise."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: "str | Path", data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: "str | Path", text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
