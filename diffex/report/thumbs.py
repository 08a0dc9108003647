"""Small thumbnails of cached images for the report: at most SIZE pixels on a side (never
enlarged), WebP, each made once per distinct picture however often the report shows it."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

SIZE = 128
QUALITY = 80


class Thumbnails:
    """Collects thumbnails by key; `uri(key)` is the data URI the report embeds once."""

    def __init__(self, size: int = SIZE, quality: int = QUALITY):
        self.size = size
        self.quality = quality
        self._uris: dict[str, str] = {}
        self.bytes = 0  # encoded image bytes (before base64)

    def add(self, key: str, path: Path) -> bool:
        """Make the thumbnail of `path` under `key`; False when the file does not decode."""
        if key in self._uris:
            return True
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((self.size, self.size))
                buf = io.BytesIO()
                im.save(buf, format="WEBP", quality=self.quality, method=4)
        except (OSError, ValueError, Image.DecompressionBombError):
            return False
        data = buf.getvalue()
        self.bytes += len(data)
        self._uris[key] = "data:image/webp;base64," + base64.b64encode(data).decode("ascii")
        return True

    def uris(self) -> dict[str, str]:
        return dict(self._uris)

    def __len__(self) -> int:
        return len(self._uris)
