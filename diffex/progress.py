"""Work in committed chunks with an optional progress bar, shared by the classify and embed stages."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")


def in_chunks(items: Sequence[T], size: int, progress: Callable | None = None, desc: str = "", unit: str = "img") -> Iterator[Sequence[T]]:
    """Yield `items` `size` at a time; the bar (from `progress(total=..., desc=..., unit=...)`)
    advances only after the caller has finished a chunk, and is closed however the loop ends."""
    bar = progress(total=len(items), desc=desc, unit=unit) if progress and items else None
    try:
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            yield chunk
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
