"""Find and load input images; each gets its identity from its decoded pixels.

What a loaded image is: the first frame (animated GIF, APNG, WebP: the rest are ignored), turned
upright by its EXIF orientation, as 8-bit RGB (16-bit channels keep their high byte, alpha is
dropped, CMYK and palettes are converted). Its id is the sha256 of those pixels and the size, so
the same picture saved as PNG or BMP, or rotated by a tag instead of by its pixels, is one image.

Refused with a one-line error: files that do not decode, images smaller than MIN_IMAGE_SIDE on a
side, and images with more pixels than PIL's `Image.MAX_IMAGE_PIXELS` (89,478,485 by default,
about 9459x9459), read from the header before any pixel is decoded. A file named explicitly is
an error; files found in a folder or by a glob that are not images (by name or content) are
skipped, counted and reported in one warning.
"""

from __future__ import annotations

import glob
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DiffexError, DiffexWarning
from .hashing import hash_image
from .types import ImageRecord

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
MIN_IMAGE_SIDE = 8  # a 1x1 tracking pixel or a broken thumbnail carries nothing to edit or classify
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


class UnreadableImage(DiffexError):
    """An input file that is not a usable image; `reason` says why without the path."""

    def __init__(self, path: Path, reason: str, message: str | None = None):
        super().__init__(message or f"cannot read image {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass
class ImageFiles:
    """Candidate files in order: (path, named explicitly). `not_images` are files in the folders
    given whose names are not image files (skipped and counted, never opened)."""

    paths: list[tuple[Path, bool]] = field(default_factory=list)
    not_images: list[Path] = field(default_factory=list)


@dataclass
class LoadedImages:
    """The images to index (one per distinct picture) and what was left out: `skipped` holds
    (path, reason) for files from folders or globs that are not usable images."""

    items: list[tuple[ImageRecord, Image.Image]]
    skipped: list[tuple[Path, str]]
    duplicates: int = 0


def find_image_files(specs: Iterable[str]) -> ImageFiles:
    """Files, directories (their files with image suffixes, sorted) and globs, in order, without
    repeats. A spec that names nothing is an error; so is a folder with no image file at all."""
    found = ImageFiles()
    for spec in specs:
        spec = str(spec)
        p = Path(spec)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file())
            images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                others = f" ({len(files)} other files)" if files else ""
                raise DiffexError(f"no image files in directory {p}{others}")
            found.paths.extend((f, False) for f in images)
            found.not_images.extend(f for f in files if f.suffix.lower() not in IMAGE_SUFFIXES)
        elif p.exists():
            if not p.is_file():
                raise DiffexError(f"not a regular file: {p}")
            found.paths.append((p, True))
        elif any(ch in spec for ch in "*?["):
            files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
            if not files:
                raise DiffexError(f"no images match {spec!r}")
            found.paths.extend((f, False) for f in files)
        else:
            raise DiffexError(f"image not found: {spec}")
    seen: set[Path] = set()
    unique = []
    for path, explicit in found.paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((path, explicit))
    found.paths = unique
    return found


def expand_image_paths(specs: Iterable[str]) -> list[Path]:
    """The candidate image files of `specs` (see find_image_files), in order."""
    return [p for p, _ in find_image_files(specs).paths]


def _check_size(path: Path, width: int, height: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise _too_large(path, width * height, limit, f"{width}x{height}")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise UnreadableImage(path, f"{width}x{height} pixels, smaller than {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}",
                              f"image {path} is {width}x{height} pixels; diffex needs at least "
                              f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")


def _too_large(path: Path, pixels: int, limit: int, size: str = "") -> UnreadableImage:
    size = f" ({size})" if size else ""
    return UnreadableImage(
        path, f"{pixels} pixels{size}, more than the limit of {limit}",
        f"image {path} has {pixels} pixels{size}, more than the limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS); "
        "refused before decoding (a decompression bomb, or a photo to downscale first)")


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    if image.mode in _SIXTEEN_BIT or image.mode == "I":
        # PIL's own conversion clips 16-bit values at 255 (a white image): keep the high byte,
        # as PIL does for 16-bit RGB files. Mode I (32-bit) holding only 0..255 is 8-bit data.
        arr = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        if image.mode in _SIXTEEN_BIT or arr.max(initial=0) > 255:
            arr = arr >> 8
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        raise UnreadableImage(path, "floating-point pixels (mode F) have no agreed 0-255 range",
                              f"image {path} has floating-point pixels (mode F); save it as 8- or 16-bit")
    if image.mode == "RGB":
        return image
    with warnings.catch_warnings():
        # "Palette images with Transparency expressed in bytes should be converted to RGBA":
        # alpha is dropped on purpose (see the module docstring)
        warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
        return image.convert("RGB")


def load_image(path: Path) -> Image.Image:
    """Open fully (so bad files fail here, not mid-run) as upright 8-bit RGB (module docstring).
    PNG text chunks stay in `.info`. Raises UnreadableImage (a DiffexError) with one line."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # PIL warns between 1x and 2x its limit and raises above; _check_size refuses both
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_size(path, *im.size)  # from the header: nothing decoded yet
                im.load()
                info = dict(im.info)
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                upright = ImageOps.exif_transpose(im) if orientation in range(2, 9) else im
                rgb = _to_rgb(upright, path)
                if rgb is im:
                    rgb = im.copy()  # `im` is closed on leaving the block
        rgb.info.update({k: v for k, v in info.items() if isinstance(v, str)})
        return rgb
    except DiffexError:
        raise
    except FileNotFoundError:
        raise UnreadableImage(path, "not found", f"image not found: {path}") from None
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not an image file", f"not an image file: {path}") from None
    except Image.DecompressionBombError as exc:  # raised by Image.open itself, before we see the size
        m = re.search(r"\((\d+) pixels\)", str(exc))
        limit = Image.MAX_IMAGE_PIXELS or 0
        raise _too_large(path, int(m.group(1)), limit) if m else UnreadableImage(path, str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        # SyntaxError and EOFError: what some PIL plugins raise for a damaged header
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnreadableImage(path, reason) from None


def read_images(specs: Iterable[str]) -> LoadedImages:
    """Load every image once (duplicates by pixel content are kept once). A file named
    explicitly must be a usable image (else UnreadableImage); files found in folders or by globs
    that are not (by name or content) are skipped and reported in one DiffexWarning."""
    found = find_image_files(specs)
    items: list[tuple[ImageRecord, Image.Image]] = []
    skipped: list[tuple[Path, str]] = [(p, "not an image file by name") for p in found.not_images]
    seen: set[str] = set()
    duplicates = 0
    for path, explicit in found.paths:
        try:
            image = load_image(path)
        except UnreadableImage as exc:
            if explicit:
                raise
            skipped.append((path, exc.reason))
            continue
        image_id = hash_image(image)
        if image_id in seen:
            duplicates += 1
            continue
        seen.add(image_id)
        items.append((ImageRecord(image_id, str(path.resolve()), image.width, image.height), image))
    total = len(found.paths) + len(found.not_images)
    if not items:
        if skipped:
            path, reason = skipped[0]
            raise DiffexError(f"no usable images among {total} files (e.g. {path}: {reason})")
        raise DiffexError("no images given")
    if skipped:
        warnings.warn(DiffexWarning(skipped_summary(skipped, total)), stacklevel=2)
    return LoadedImages(items, skipped, duplicates)


def skipped_summary(skipped: list[tuple[Path, str]], total: int) -> str:
    """One line: how many files were skipped, grouped by reason, with an example of each."""
    by_reason: dict[str, list[Path]] = {}
    for path, reason in skipped:
        by_reason.setdefault(reason, []).append(path)
    parts = [f"{len(paths)}: {reason} (e.g. {paths[0].name})"
             for reason, paths in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    shown = "; ".join(parts[:3]) + (f"; {len(parts) - 3} other reasons" if len(parts) > 3 else "")
    return f"skipped {len(skipped)} of {total} files that are not usable images: {shown}"


def load_images(specs: Iterable[str]) -> list[tuple[ImageRecord, Image.Image]]:
    """The images of `specs`, once each (see read_images, which also says what was skipped)."""
    return read_images(specs).items
