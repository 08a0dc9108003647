"""The content-addressed image cache: edited images live at `<root>/ab/abcdef....png`,
named by the sha256 of their pixels, so a file can be checked and never goes stale."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..atomic import atomic_path
from ..hashing import hash_image


class ImageCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def put(self, image: Image.Image) -> tuple[str, str]:
        """Store `image` (as RGB PNG); returns (pixel sha256, path relative to the root)."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        digest = hash_image(rgb)
        rel = f"{digest[:2]}/{digest}.png"
        path = self.root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # write-then-rename: a killed run never leaves a half-written file under the final name
            with atomic_path(path) as tmp:
                rgb.save(tmp, format="PNG")
        return digest, rel

    def path(self, rel: str) -> Path:
        return self.root / rel

    def has(self, rel: str | None) -> bool:
        return bool(rel) and (self.root / rel).is_file()

    def load(self, rel: str) -> Image.Image:
        with Image.open(self.root / rel) as im:
            return im.convert("RGB")
