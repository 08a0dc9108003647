"""Ask a vision-language model for the semantic hierarchy of a domain, as DiffEx does: show it a
few sample images and ask for every category and fine-grained sub-type that a text-driven image
editor could apply, as nested JSON.

VLM SPECs:
- `openai:MODEL`: any OpenAI-compatible chat-completions endpoint, over urllib (no client library);
  `OPENAI_BASE_URL` (default https://api.openai.com/v1) and `OPENAI_API_KEY`.
- `hf:MODEL_ID_OR_PATH`: a local transformers image-text-to-text model (AutoProcessor +
  AutoModelForImageTextToText, greedy decoding), loaded by diffex's policy (diffex/models.py):
  a local folder or the local Hugging Face cache, safetensors, `trust_remote_code` off.

Answers are cached in the store's `vlm_responses` table under hash(model, prompt, image ids), so
asking again costs nothing. Model output is repaired where that is safe (prose around the JSON,
code fences, trailing commas, set-style `{"a", "b"}` objects, truncated JSON, a wrapper key, a
list of groups, duplicate siblings); otherwise the raw text is saved to a file and the one-line
error names it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from PIL import Image

from .. import models
from ..errors import DiffexError, UsageError
from ..hashing import hash_image, hash_json, sha256_bytes
from ..images import expand_image_paths, load_image
from .tree import MAX_DEPTH, from_mapping, to_nested
from ..types import Taxonomy

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_IMAGE_SIDE = 512  # images are sent downscaled: enough to see the semantics, small to upload
WRAPPER_KEYS = {"taxonomy", "hierarchy", "semantics", "attributes", "features", "result", "output", "data", "tree"}


# ---------------------------------------------------------------- the question
def build_prompt(levels: int = 3, domain: str | None = None) -> str:
    """The instruction sent with the sample images (our wording, in the spirit of the paper's)."""
    if not 1 <= levels <= MAX_DEPTH:
        raise UsageError(f"--levels must be between 1 and {MAX_DEPTH}, got {levels}")
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
        raise UsageError(f"--samples must be at least 1, got {samples}")
    specs = [images] if isinstance(images, (str, Path)) else list(images)
    paths = expand_image_paths(str(s) for s in specs)
    if not paths:
        raise DiffexError("no images given")
    if len(paths) > samples:
        step = len(paths) / samples
        paths = [paths[int(i * step)] for i in range(samples)]
    return [(str(p), load_image(p)) for p in paths]


def _thumbnail(image: Image.Image) -> Image.Image:
    im = image.copy()
    im.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return im


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    _thumbnail(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------- models
class VLM(Protocol):
    spec: str
    model_key: str  # what identifies the answers: part of the cache key

    def complete(self, prompt: str, images: list[Image.Image]) -> str: ...


class OpenAIVLM:
    """A chat-completions endpoint; one request with the prompt and the images as data URLs."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, timeout: float = 120.0):
        if not model:
            raise UsageError("openai VLM spec needs a model name, e.g. openai:gpt-4o-mini")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.spec = f"openai:{model}"
        # the server matters as much as the name: two servers may serve different "gpt-4o"s
        self.model_key = f"openai:{model}@{self.base_url}"

    def request_body(self, prompt: str, images: list[Image.Image]) -> dict:
        content = [{"type": "text", "text": prompt}]
        content += [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
        return {"model": self.model, "messages": [{"role": "user", "content": content}]}

    def complete(self, prompt: str, images: list[Image.Image]) -> str:
        url = f"{self.base_url}/chat/completions"
        if not self.api_key and self.base_url == DEFAULT_BASE_URL:
            raise DiffexError("set OPENAI_API_KEY (or OPENAI_BASE_URL for another OpenAI-compatible server)")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = json.dumps(self.request_body(prompt, images)).encode("utf-8")
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (http(s) only, checked below)
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise DiffexError(f"VLM endpoint {url} answered HTTP {exc.code}: {_error_message(exc)}") from None
        except (socket.timeout, TimeoutError):
            raise DiffexError(f"VLM endpoint {url} did not answer within {self.timeout:g} s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise DiffexError(f"VLM endpoint {url} did not answer within {self.timeout:g} s") from None
            raise DiffexError(f"cannot reach VLM endpoint {url}: {reason}") from None
        except (OSError, ValueError) as exc:
            raise DiffexError(f"cannot reach VLM endpoint {url}: {exc}") from None
        try:
            data = json.loads(payload)
            message = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise DiffexError(f"VLM endpoint {url} sent no chat completion: {payload[:120]!r}") from None
        if isinstance(message, list):  # content parts
            message = "".join(p.get("text", "") for p in message if isinstance(p, dict))
        if not isinstance(message, str):
            raise DiffexError(f"VLM endpoint {url} sent a completion without text")
        return message


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode("utf-8", "replace")
    except OSError:
        body = ""
    try:
        msg = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        msg = body or exc.reason
    return " ".join(str(msg).split())[:200]


class HFVLM:
    """A local transformers image-text-to-text model, loaded on first use, greedy decoding."""

    def __init__(self, model_id: str, max_new_tokens: int = 1024, device: str = "cpu"):
        if not model_id:
            raise UsageError("hf VLM spec needs a model id or path, e.g. hf:HuggingFaceTB/SmolVLM-256M-Instruct")
        self.spec = f"hf:{model_id}"
        model_id, options = models.split_spec("hf", model_id, {"allow_pickle": "1 accepts pickle weights"})
        self.allow_pickle = models.flag(options, "allow_pickle")
        self.model_id = model_id
        self.max_new_tokens = max_new_tokens
        self.device = device
        config = Path(model_id) / "config.json"
        # a local folder is known by its config; a hub id by its name (a revision is the user's to pin)
        ident = sha256_bytes(config.read_bytes())[:16] if config.is_file() else "hub"
        self.model_key = f"hf:{model_id}@{ident}:greedy:{max_new_tokens}"
        self._model = self._processor = None

    def _load(self) -> None:
        if self._model is not None:
            return
        # diffex's loading policy (diffex/models.py): a local folder or the local HF cache,
        # safetensors, no remote code; every failure one line naming the model
        try:
            found = models.resolve("VLM", self.model_id, allow_pickle=self.allow_pickle)
            with models.quiet("transformers"):
                from transformers import AutoModelForImageTextToText, AutoProcessor

            self._processor = models.load_pretrained(AutoProcessor, found, "VLM", weights=False)
            self._model = models.load_pretrained(AutoModelForImageTextToText, found, "VLM")
        except DiffexError as exc:
            reason = str(exc).removeprefix(f"cannot load VLM model {self.model_id!r}: ")
            raise DiffexError(f"cannot load VLM {self.spec}: {reason}") from None
        self._model.to(self.device).eval()
        if not getattr(self._processor, "chat_template", None):
            raise DiffexError(f"VLM {self.spec} has no chat template; it is not an instruction-tuned image-text model")

    def complete(self, prompt: str, images: list[Image.Image]) -> str:
        import torch

        self._load()
        messages = [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]}]
        text = self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self._processor(images=[_thumbnail(im) for im in images], text=text, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self._processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]


def load_vlm(spec: "str | VLM", **options: Any) -> VLM:
    """`openai:MODEL` or `hf:MODEL_ID_OR_PATH` (or an object with `complete`, passed through)."""
    if not isinstance(spec, str):
        return spec
    kind, _, rest = spec.partition(":")
    if kind == "openai":
        return OpenAIVLM(rest, **{k: v for k, v in options.items() if k in ("base_url", "api_key", "timeout")})
    if kind == "hf":
        return HFVLM(rest, **{k: v for k, v in options.items() if k in ("max_new_tokens", "device")})
    raise UsageError(f"unknown VLM spec {spec!r}; valid: openai:MODEL, hf:MODEL_ID_OR_PATH")


# ---------------------------------------------------------------- reading the answer
class Unparseable(DiffexError):
    """The answer holds no taxonomy that can be recovered safely."""


def _scan(text: str) -> tuple[str, int | None, list]:
    """One pass over JSON-ish text starting at '{' or '['. Returns (cleaned text, end of the first
    complete value or None, the last safe cut: (position in cleaned text, open brackets)).
    Cleaning drops trailing commas and turns set-style members (`{"a", "b"}`) into keys."""
    out: list[str] = []
    stack: list[list] = []  # [bracket, expecting_key]
    safe: list = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j, esc = i + 1, False
            while j < n and (esc or text[j] != '"'):
                esc = (text[j] == "\\") and not esc
                j += 1
            if j >= n:  # the text ends inside a string
                return "".join(out), None, safe
            out.append(text[i:j + 1])
            is_key = bool(stack) and stack[-1][0] == "{" and stack[-1][1]
            if is_key:
                k = j + 1
                while k < n and text[k].isspace():
                    k += 1
                if k < n and text[k] in ",}":  # a set member: {"beanie", "fedora"}
                    out.append(": null")
                    safe.append((len("".join(out)), [s[0] for s in stack]))
            else:
                safe.append((len("".join(out)), [s[0] for s in stack]))
            i = j + 1
            continue
        if c in "{[":
            stack.append([c, True])
        elif c in "}]":
            if not stack or {"{": "}", "[": "]"}[stack[-1][0]] != c:
                raise Unparseable(f"mismatched {c!r} in the JSON")
            stack.pop()
            # a trailing comma before the closer
            k = len(out) - 1
            while k >= 0 and out[k].isspace():
                k -= 1
            if k >= 0 and out[k] == ",":
                del out[k]
            out.append(c)
            safe.append((len("".join(out)), [s[0] for s in stack]))
            i += 1
            if not stack:
                return "".join(out), i, safe
            continue
        elif c == ":" and stack and stack[-1][0] == "{":
            stack[-1][1] = False
        elif c == "," and stack and stack[-1][0] == "{":
            stack[-1][1] = True
        out.append(c)
        i += 1
        if c.isalnum() and i < n and not text[i].isalnum() and stack:  # the end of null/true/a number
            safe.append((len("".join(out)), [s[0] for s in stack]))
    return "".join(out), None, safe


class _Siblings(list):
    """An object whose keys repeat, kept as a list of one-key objects for the sibling merge."""


def _duplicates_kept(pairs: list[tuple[str, Any]]) -> Any:
    """JSON object hook: duplicate keys become sibling entries (merged later, with a note)."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) == len(keys):
        return dict(pairs)
    return _Siblings({k: v} for k, v in pairs)


@dataclass
class ParsedAnswer:
    data: Any
    status: str  # 'ok' | 'repaired'
    repairs: list[str] = field(default_factory=list)


def parse_answer(text: str) -> ParsedAnswer:
    """Find the taxonomy JSON in a model's answer, repairing what is safe. Raises Unparseable."""
    repairs: list[str] = []
    body = text.strip()
    fence = re.search(r"```[a-zA-Z]*\s*\n?(.*?)(?:```|$)", body, flags=re.DOTALL)
    if fence and ("{" in fence.group(1) or "[" in fence.group(1)):
        repairs.append("removed a code fence")
        inner = fence.group(1)
        if body[: fence.start()].strip() or body[fence.end():].strip():
            repairs.append("ignored text around the JSON")
        body = inner.strip()
    starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
    if not starts:
        raise Unparseable("the answer holds no JSON object")
    start = min(starts)
    if body[:start].strip() and "ignored text around the JSON" not in repairs:
        repairs.append("ignored text around the JSON")
    cleaned, end, safe = _scan(body[start:])
    if end is None:
        if not safe:
            raise Unparseable("the JSON is cut off before its first complete entry")
        pos, open_brackets = safe[-1]
        cleaned = cleaned[:pos].rstrip().rstrip(",") + "".join("}" if b == "{" else "]" for b in reversed(open_brackets))
        repairs.append("closed JSON that was cut off (the unfinished last entry is dropped)")
    elif body[start + end:].strip() and "ignored text around the JSON" not in repairs:
        repairs.append("ignored text around the JSON")
    try:
        data = json.loads(cleaned, object_pairs_hook=_duplicates_kept)
    except json.JSONDecodeError as exc:
        raise Unparseable(f"the JSON cannot be read: {exc.msg} at column {exc.colno}") from None
    if cleaned != body[start:start + (end or len(body))].strip() and end is not None:
        repairs.append("fixed trailing commas or set-style objects")
    data = _unwrap(data, repairs)
    return ParsedAnswer(data, "repaired" if repairs else "ok", repairs)


def _unwrap(data: Any, repairs: list[str]) -> Any:
    """Bring known wrong shapes to the paper's `{"group": {...}}` (with an optional envelope)."""
    if isinstance(data, dict):
        meta = {k: data[k] for k in ("domain", "name") if isinstance(data.get(k), str)}
        rest = {k: v for k, v in data.items() if k not in meta}
        if "categories" in rest:
            return data
        if len(rest) == 1:
            (key, value), = rest.items()
            if key.strip().lower() in WRAPPER_KEYS and isinstance(value, (dict, list)) and value:
                repairs.append(f"unwrapped the {key!r} key")
                return {**meta, "categories": value}
        if not rest:
            raise Unparseable("the JSON holds no categories")
        return data
    if isinstance(data, list):
        if not data:
            raise Unparseable("the JSON is an empty list")
        if not isinstance(data, _Siblings) and any(isinstance(item, dict) for item in data):
            repairs.append("read a top-level list as the list of groups")
        return data
    raise Unparseable(f"the JSON is a {type(data).__name__}, not an object of categories")


def taxonomy_from_answer(text: str, name: str = "proposed", domain: str | None = None) -> tuple[Taxonomy, ParsedAnswer]:
    """Parse and validate an answer into a Taxonomy; duplicate siblings merge, repeated labels drop."""
    parsed = parse_answer(text)
    notes: list[str] = []
    try:
        tax = from_mapping(parsed.data, name=name, domain=domain, merge_duplicates=True, notes=notes)
    except Unparseable:
        raise
    except DiffexError as exc:
        raise Unparseable(str(exc)) from None
    if notes:
        parsed.repairs.extend(notes)
        parsed.status = "repaired"
    return tax, parsed


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
