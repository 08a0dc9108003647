"""Find and load input images; each gets its identity from its decoded pixels."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable

from PIL import Image, UnidentifiedImageError

from .errors import DiffexError
from .hashing import hash_image
from .types import ImageRecord

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def expand_image_paths(specs: Iterable[str]) -> list[Path]:
    """Files, directories (their image files, sorted) and globs, in order, without repeats."""
    out: list[Path] = []
    for spec in specs:
        spec = str(spec)
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise DiffexError(f"no image files in directory {p}")
            out.extend(found)
        elif p.exists():
            out.append(p)
        elif any(ch in spec for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
            if not found:
                raise DiffexError(f"no images match {spec!r}")
            out.extend(found)
        else:
            raise DiffexError(f"image not found: {spec}")
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def load_image(path: Path) -> Image.Image:
    """Open fully (so bad files fail here, not mid-run). PNG text chunks stay in `.info`."""
    try:
        with Image.open(path) as im:
            im.load()
            info = dict(im.info)
            rgb = im.convert("RGB")
            rgb.info.update({k: v for k, v in info.items() if isinstance(v, str)})
            return rgb
    except FileNotFoundError:
        raise DiffexError(f"image not found: {path}") from None
    except UnidentifiedImageError:
        raise DiffexError(f"not an image file: {path}") from None
    except (OSError, ValueError) as exc:
        raise DiffexError(f"cannot read image {path}: {exc}") from None


def load_images(specs: Iterable[str]) -> list[tuple[ImageRecord, Image.Image]]:
    """Load every image once; duplicates by pixel content are kept once."""
    out: list[tuple[ImageRecord, Image.Image]] = []
    seen: set[str] = set()
    for path in expand_image_paths(specs):
        image = load_image(path)
        image_id = hash_image(image)
        if image_id in seen:
            continue
        seen.add(image_id)
        out.append((ImageRecord(image_id, str(path.resolve()), image.width, image.height), image))
    if not out:
        raise DiffexError("no images given")
    return out
