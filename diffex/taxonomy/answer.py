"""Reading a VLM's answer: model output is repaired where that is safe (prose around the JSON,
code fences, trailing commas, set-style `{"a", "b"}` objects, truncated JSON, a wrapper key, a
list of groups, duplicate siblings); otherwise Unparseable."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


from ..errors import DiffexError
from .tree import from_mapping
from ..types import Taxonomy

WRAPPER_KEYS = {"taxonomy", "hierarchy", "semantics", "attributes", "features", "result", "output", "data", "tree"}


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
