"""Ask a vision-language model for the semantic hierarchy of a domain, as DiffEx does: show it a
few sample images and ask for every category and fine-grained sub-type that a text-driven image
editor could apply, as nested JSON.


VLM backends: taxonomy/vlm.py (openai:MODEL, hf:MODEL_ID_OR_PATH); reading the answer:
taxonomy/answer.py.

Answers are cached in the store's `vlm_responses` table under hash(model, prompt, image ids), so
asking again costs nothing. An answer that cannot be repaired is saved to a file and the one-line
error names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..errors import DiffexError, OptionError
from ..hashing import hash_image, hash_json
from ..images import expand_image_paths, load_image
from .tree import MAX_DEPTH, to_nested
from ..types import Taxonomy
from .answer import Unparseable, taxonomy_from_answer
from .vlm import VLM, load_vlm
from .vlm_hf import HFVLM


# ---------------------------------------------------------------- the question
def build_prompt(levels: int = 3, domain: str | None = None) -> str:
    """The instruction sent with the sample images (our wording, in the spirit of the paper's)."""
    if not 1 <= levels <= MAX_DEPTH:
        raise OptionError("levels", f"must be between 1 and {MAX_DEPTH}, got {levels}")
    about = f"The images come from one domain: {domain}." if domain else "The images come from one domain."
    shape = {1: '["category", ...]', 2: '{"category": ["sub-type", ...]}'}.get(
        levels, '{"category": {"sub-type": ["finer sub-type", ...]}}')
    return (
        f"{about} We will edit such images with a text-driven diffusion editor, one short phrase at a "
        "time, to find out which visual attributes an image classifier depends on.\n"
        "Look at the images and list every visual category that could be changed in images of this "
        "domain (for example appearance, clothing, accessories, shape, colour, texture, background, "
        "lighting), and within each category every specific, fine-grained sub-type. Use short, "
        "concrete, visually grounded noun phrases that work as editing prompts on their own "
        "(\"goatee\", \"straw hat\"), never vague words (\"nice\", \"other\"). Use each phrase only "
        f"once in the whole hierarchy. Go {levels} level{'s' if levels > 1 else ''} deep.\n"
        f"Answer with JSON only, no explanation, shaped like {shape}."
    )


def pick_images(images: "str | Path | Sequence", samples: int) -> list[tuple[str, Image.Image]]:
    """`samples` images spread evenly over the sorted files (deterministic), loaded as RGB."""
    if samples < 1:
        raise OptionError("samples", f"must be at least 1, got {samples}")
    specs = [images] if isinstance(images, (str, Path)) else list(images)
    paths = expand_image_paths(str(s) for s in specs)
    if not paths:
        raise DiffexError("no images given")
    if len(paths) > samples:
        step = len(paths) / samples
        paths = [paths[int(i * step)] for i in range(samples)]
    return [(str(p), load_image(p)) for p in paths]


# ---------------------------------------------------------------- the command
@dataclass
class Proposal:
    """What `propose_taxonomy` found. `cached` is True when no model was asked."""

    taxonomy: Taxonomy
    status: str
    repairs: list[str]
    response_id: str
    cached: bool
    images: list[str]
    model: str
    out: str | None = None

    def to_dict(self) -> dict:
        groups = self.taxonomy.children(None)
        return {"taxonomy_id": self.taxonomy.taxonomy_id, "nodes": len(self.taxonomy.nodes), "groups": len(groups),
                "status": self.status, "repairs": self.repairs, "response_id": self.response_id,
                "cached": self.cached, "images": self.images, "model": self.model, "out": self.out}


def propose_taxonomy(
    images: "str | Path | Sequence",
    vlm: "str | VLM",
    *,
    levels: int = 3,
    samples: int = 8,
    db: "str | Path | None" = None,
    out: "str | Path | None" = None,
    domain: str | None = None,
    refresh: bool = False,
    rejected_dir: "str | Path | None" = None,
) -> Proposal:
    """Show `samples` images to the VLM and turn its answer into a Taxonomy.

    With `db`, the answer is cached (asking again with the same model, prompt and images costs
    nothing; `refresh` asks anyway) and the taxonomy is stored as a version ready for curation.
    `out` receives the paper-style JSON. An answer that cannot be repaired is saved to a text
    file (beside `out`, else beside `db`, else in the current folder) and a DiffexError names it.
    """
    from ..store.core import Store  # local: only needed with a database

    # 1. check inputs and pick the images
    prompt = build_prompt(levels, domain)
    model = load_vlm(vlm)
    picked = pick_images(images, samples)
    image_ids = [hash_image(im) for _, im in picked]
    response_id = hash_json({"model": model.model_key, "prompt": prompt, "images": image_ids})[:32]
    if db is not None and not Path(db).exists() and isinstance(model, HFVLM):
        # a new database holds no cached answer, so the model will be needed: load it before
        # the file is created, and a model that cannot load leaves no empty database behind
        model._load()
    store = Store.open(db) if db is not None else None
    try:
        # 2. the cached answer, or ask the model
        row = store.vlm_response(response_id) if store is not None and not refresh else None
        raw = row["raw_text"] if row else model.complete(prompt, [im for _, im in picked])
        # 3. parse, repair or reject
        name = domain or "proposed"
        try:
            tax, parsed = taxonomy_from_answer(raw, name=name, domain=domain)
        except Unparseable as exc:
            if store is not None:
                store.put_vlm_response(response_id, model.model_key, prompt, image_ids, raw, None, "rejected")
            saved = _save_rejected(raw, response_id, rejected_dir or (Path(out).parent if out else Path(db).parent if db else Path.cwd()))
            raise DiffexError(f"the VLM answer is not a usable taxonomy ({exc}); raw text saved to {saved}"
                              + (" (ask again with --refresh)" if row else "")) from None
        if store is not None:
            store.put_vlm_response(response_id, model.model_key, prompt, image_ids, raw, to_nested(tax), parsed.status)
            note = f"proposed by {model.spec} from {len(picked)} image(s), {levels} level(s)"
            store.add_taxonomy(tax, source=f"vlm:{model.spec}", note=note)
        # 4. write the file
        if out is not None:
            path = Path(out)
            if path.is_dir():
                raise DiffexError(f"--out {path} is a directory; give a file such as {path / 'taxonomy.json'}")
            path.write_text(json.dumps(to_nested(tax), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    finally:
        if store is not None:
            store.close()
    return Proposal(tax, parsed.status, parsed.repairs, response_id, row is not None,
                    [p for p, _ in picked], model.spec, str(out) if out is not None else None)


def _save_rejected(raw: str, response_id: str, folder: "str | Path") -> Path:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"vlm-rejected-{response_id[:12]}.txt"
        path.write_text(raw, encoding="utf-8")
    except OSError as exc:
        raise DiffexError(f"the VLM answer is not a usable taxonomy, and saving it failed: {exc}") from None
    return path
