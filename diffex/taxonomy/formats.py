"""Readers that turn taxonomy files into a tree of raw `Entry`s; diffex/taxonomy/tree.py validates
and normalises that tree into a Taxonomy.

Accepted shapes (JSON or YAML):
- the paper's and the reference code's nested format
  `{"domain": ..., "name": ..., "categories": {"group": {"sub": ["leaf", ...]}}}`, any depth, with
  lists, objects, null or `[]` at the leaves, or the bare `{"group": {...}}` mapping;
- dict-of-dicts `{"group": {"sub": {"leaf": {}}}}`;
- lists of node objects `{"group": [{"name": "beard", "subtypes": [...]}]}` (`label` or `name`,
  `children` or `subtypes`), also at the top level;
- a per-node editing prompt: `{"label": "goatee", "prompt": "a goatee beard"}` in a list, or
  `goatee: {prompt: "a goatee beard", children: [...]}` as a value.
Plain indented outlines (.txt, .md): one label per line, nested by indentation, optional
`- `/`* `/`+ `/`1. ` bullets, Markdown `#` headings (in .md) as the upper levels,
`label :: prompt` for a prompt, and an optional `domain: ...` line before the first label.

With the envelope, its keys are the only valid top-level keys (a mistyped `"categorys"` is an
error, not a group); a bare mapping may not use `domain` or `name` as group labels.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DiffexError

CHILD_KEYS = ("children", "subtypes")
ENVELOPE_KEYS = ("categories", "domain", "name")
MAX_DEPTH = 8  # levels below the top; deeper trees are refused (each level costs a beam step)
SPEC_KEYS = {"label", "name", "prompt", "description", *CHILD_KEYS}
OUTLINE_SUFFIXES = {".txt", ".md", ".markdown", ".outline"}
YAML_SUFFIXES = {".yaml", ".yml"}


@dataclass
class Entry:
    """One node as written in the source, before normalisation (label may be any type)."""

    label: Any
    prompt: Any = None
    children: list["Entry"] = field(default_factory=list)


@dataclass
class ParsedTree:
    roots: list[Entry]
    name: str | None = None
    domain: str | None = None


def _where(path: tuple) -> str:
    return " > ".join(str(p) for p in path) or "the top level"


def _children_of(node: dict, path: tuple) -> Any:
    present = [k for k in CHILD_KEYS if k in node]
    if len(present) > 1:
        raise DiffexError(f"taxonomy node at {_where(path)} has both 'children' and 'subtypes'; use one")
    return node[present[0]] if present else None


def _is_item_spec(item: Any) -> bool:
    """`{"label"|"name": str, ...}` inside a list is one node, not a mapping of labels."""
    if not isinstance(item, dict) or not set(item) <= SPEC_KEYS:
        return False
    labels = [k for k in ("label", "name") if k in item]
    return len(labels) == 1 and isinstance(item[labels[0]], str) and (
        item.get("prompt") is None or isinstance(item.get("prompt"), str))


def _is_value_spec(value: Any) -> bool:
    """`goatee: {prompt: "...", children: ...}`: a value that describes its own key's node."""
    return (isinstance(value, dict) and isinstance(value.get("prompt"), str)
            and set(value) <= {"prompt", "description", *CHILD_KEYS})


def _entry(label: Any, value: Any, path: tuple) -> Entry:
    if _is_value_spec(value):
        return Entry(label, value["prompt"], entries(_children_of(value, path + (label,)), path + (label,)))
    return Entry(label, None, entries(value, path + (label,)))


def entries(value: Any, path: tuple = ()) -> list[Entry]:
    """The child entries that `value` (a list, an object, a string or nothing) describes."""
    if len(path) > MAX_DEPTH:  # before recursing further: a 10,000-level file fails here, not in Python
        raise DiffexError(f"taxonomy is deeper than {MAX_DEPTH} levels (the limit) at {_where(path)}")
    if value is None or value == {} or value == [] or value == "":
        return []
    if isinstance(value, dict):
        return [_entry(k, v, path) for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        out: list[Entry] = []
        for item in value:
            if _is_item_spec(item):
                label = item["label"] if "label" in item else item["name"]
                out.append(Entry(label, item.get("prompt"), entries(_children_of(item, path + (label,)), path + (label,))))
            elif isinstance(item, dict):  # [{"beard": [...]}, "mustache"]
                out.extend(_entry(k, v, path) for k, v in item.items())
            elif isinstance(item, (list, tuple)):
                raise DiffexError(f"taxonomy has a list inside a list under {_where(path)}; give the sub-list a label")
            else:
                out.append(Entry(item))
        return out
    if isinstance(value, str):
        return [Entry(value)]
    raise DiffexError(f"taxonomy entry under {_where(path)} is neither a list nor an object: {value!r}")


def _check_envelope(data: dict) -> None:
    """Top-level keys: with "categories", only the envelope's; without it, no envelope key and
    nothing that looks like a mistyped one (it would silently become a group and be edited)."""
    valid = ", ".join(ENVELOPE_KEYS)
    keys = [k for k in data if isinstance(k, str)]
    if "categories" in data:
        unknown = [k for k in keys if k not in ENVELOPE_KEYS]
        if unknown:
            raise DiffexError(f"unknown top-level taxonomy key {unknown[0]!r}{_did_you_mean(unknown[0])}; "
                              f"next to \"categories\" the valid keys are: {valid}")
        return
    for key in keys:
        if (hint := _did_you_mean(key)):
            raise DiffexError(f"unknown top-level taxonomy key {key!r}{hint}; valid keys: {valid} "
                              "(or a bare mapping of groups, without any of them)")
    meta = [k for k in keys if k in ENVELOPE_KEYS]
    if meta:
        raise DiffexError(f"taxonomy has a top-level {meta[0]!r} but no \"categories\": put the groups under "
                          f"\"categories\" (valid keys: {valid}), or drop {meta[0]!r} for a bare mapping of groups")


def _did_you_mean(key: str) -> str:
    folded = key.strip().lower()
    if folded in ENVELOPE_KEYS and key != folded:
        return f" (did you mean {folded!r}?)"
    if key in ENVELOPE_KEYS:
        return ""
    close = difflib.get_close_matches(folded, ENVELOPE_KEYS, n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_nested(data: Any) -> ParsedTree:
    """Split the optional envelope (`domain`, `name`, `categories`) from the tree and read it."""
    name = domain = None
    tree = data
    if isinstance(data, dict):
        _check_envelope(data)
    if isinstance(data, dict) and "categories" in data:
        name, domain, tree = data.get("name"), data.get("domain"), data["categories"]
        for key, val in (("name", name), ("domain", domain)):
            if val is not None and not isinstance(val, str):
                raise DiffexError(f"taxonomy {key!r} must be text, got {val!r}")
    if not isinstance(tree, (dict, list)) or not tree:
        raise DiffexError("taxonomy must be a non-empty JSON object of groups (optionally under \"categories\")")
    return ParsedTree(entries(tree), name, domain)


# ---------------------------------------------------------------- YAML
def _yaml_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """safe_load that keeps every plain scalar as text (so `no:` stays 'no', `1920s` a label),
        refuses duplicate keys and refuses aliases (a YAML bomb would pass any node limit)."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise DiffexError(f"taxonomy YAML uses an alias (*name) at line {mark.line + 1}; write the labels out")
            return super().compose_node(parent, index)

    StrictLoader.yaml_implicit_resolvers = {
        ch: [(tag, rx) for tag, rx in rules if tag == "tag:yaml.org,2002:null"]
        for ch, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def mapping(loader, node):
        out: dict = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise DiffexError(f"taxonomy YAML key at line {key_node.start_mark.line + 1} is not a label: {key!r}")
            if key in out:
                raise DiffexError(f"taxonomy has a duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            out[key] = loader.construct_object(value_node, deep=True)
        return out

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return StrictLoader


def read_yaml(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DiffexError(f"taxonomy {where} is not valid YAML: {problem}{at}") from None


# ---------------------------------------------------------------- outline
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_BULLET = re.compile(r"^(?:[-*+]|\d+[.)])\s+(.*)$")
_DOMAIN = re.compile(r"^#?\s*domain\s*:\s*(.+)$", re.IGNORECASE)


def parse_outline(text: str, markdown: bool) -> ParsedTree:
    """An indented outline; headings (Markdown only) are levels above the bulleted lines."""
    roots: list[Entry] = []
    domain = None
    # stack of (kind, level, entry): kind 'h' (heading, level = number of #) or 'i' (indent column)
    stack: list[tuple[str, int, Entry]] = []
    in_fence = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.expandtabs(4).rstrip()
        body = line.strip()
        if body.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence or not body or body.startswith("<!--") or set(body) <= {"-", "=", "*", "_"}:
            continue
        if not roots and not stack and domain is None and (m := _DOMAIN.match(body)):
            domain = m.group(1).strip()
            continue
        heading = _HEADING.match(body) if markdown else None
        if body.startswith("#") and not heading:
            continue  # a comment (plain-text outlines) or a bare '#'
        if heading:
            kind, level, label = "h", len(heading.group(1)), heading.group(2).strip().strip("#").strip()
            while stack and (stack[-1][0] == "i" or stack[-1][1] >= level):
                stack.pop()
        else:
            bullet = _BULLET.match(body)
            kind, level, label = "i", len(line) - len(line.lstrip(" ")), bullet.group(1) if bullet else body
            while stack and stack[-1][0] == "i" and stack[-1][1] >= level:
                stack.pop()
        prompt = None
        if "::" in label:
            label, prompt = (part.strip() for part in label.split("::", 1))
        if not label:
            raise DiffexError(f"taxonomy outline line {lineno} has an empty label")
        entry = Entry(label, prompt)
        (stack[-1][2].children if stack else roots).append(entry)
        stack.append((kind, level, entry))
    if not roots:
        raise DiffexError("taxonomy outline has no labels")
    return ParsedTree(roots, None, domain)


# ---------------------------------------------------------------- files
def read_file(path: Path, reject_duplicate_keys) -> ParsedTree:
    """Read a taxonomy file by its suffix: .yaml/.yml, .txt/.md outlines, anything else JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DiffexError(f"cannot read taxonomy {path}: {exc}") from None
    suffix = path.suffix.lower()
    if suffix in OUTLINE_SUFFIXES:
        return parse_outline(text, markdown=suffix in {".md", ".markdown"})
    try:
        if suffix in YAML_SUFFIXES:
            data = read_yaml(text, str(path))
            if data is None:
                raise DiffexError(f"taxonomy {path} is empty")
            return parse_nested(data)
        try:
            data = json.loads(text, object_pairs_hook=reject_duplicate_keys)
        except json.JSONDecodeError as exc:
            raise DiffexError(f"taxonomy {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        return parse_nested(data)
    except RecursionError:  # the JSON or YAML parser itself, on thousands of nested brackets
        raise DiffexError(f"taxonomy {path} is nested too deeply to read (the limit is {MAX_DEPTH} levels)") from None
