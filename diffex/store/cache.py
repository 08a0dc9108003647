"""The content-addressed image cache: edited images live at `<root>/ab/abcdef....png`,
named by the sha256 of their pixels, so a file can be checked and never goes stale."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..atomic import atomic_path, write_bytes
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

    # an image made elsewhere (a Ray worker without the shared cache) arrives as PNG bytes
    @staticmethod
    def encode(image: Image.Image) -> tuple[str, bytes]:
        """(pixel sha256, PNG bytes) of `image` as RGB, exactly what `put` would store."""
        import io

        rgb = image if image.mode == "RGB" else image.convert("RGB")
        buf = io.BytesIO()
        rgb.save(buf, format="PNG")
        return hash_image(rgb), buf.getvalue()

    def put_encoded(self, digest: str, data: bytes) -> tuple[str, str]:
        """Store PNG bytes from `encode` under their pixel hash; returns (digest, relative path)."""
        rel = f"{digest[:2]}/{digest}.png"
        path = self.root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(path, data)
        return digest, rel

    def path(self, rel: str) -> Path:
        return self.root / rel

    def has(self, rel: str | None) -> bool:
        return bool(rel) and (self.root / rel).is_file()

    def loader(self, rel: str):
        """A zero-argument loader of a cached image; its `cache_file` lets a remote worker be
        sent the file (its bytes or, on shared storage, its path) instead of decoded pixels."""
        def load() -> Image.Image:
            return self.load(rel)

        load.cache_file = self.root / rel  # type: ignore[attr-defined]
        return load

    def load(self, rel: str) -> Image.Image:
        with Image.open(self.root / rel) as im:
            return im.convert("RGB")
