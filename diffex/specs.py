"""SPEC strings (`prefix:MODEL?key=value&...`): the one option parser every registry uses
(editors, classifiers, embedders, VLMs) and the registry call itself.

Options, for every backend alike: `&`-separated `key=value`, %-decoded (a literal '+' stays
'+'); an unknown key, a key without `=` or a key given twice is a one-line DiffexError naming
the SPEC; true/false words are TRUE / FALSE below.

The other rule shared by every kind of stored thing, "the one named by id, 6-character id
prefix, name or spec, else the newest", is written once, in SQL: the `named_by` macro of
schema/views.sql, which the pick_* macros and Store.resolve_* both call.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping
from urllib.parse import unquote

from .errors import DiffexError

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off", ""})


def split_spec(prefix: str, rest: str, allowed: Mapping[str, str], *,
               needs_target: bool = True) -> tuple[str, dict[str, str]]:
    """`MODEL?k=v&k2=v2` -> ("MODEL", {k: v}). `allowed` maps option names to a short help used
    in the error for an unknown option; `needs_target=False` lets MODEL be empty (`demo?batch=8`)."""
    target, _, query = rest.partition("?")
    if needs_target and not target:
        raise DiffexError(f"{prefix} spec needs a model: {prefix}:MODEL_ID_OR_PATH[?option=value&...]")
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        key = unquote(key).strip()
        if key not in allowed:
            valid = ("; " if any(allowed.values()) else ", ").join(f"{k} ({v})" if v else k for k, v in allowed.items())
            raise DiffexError(f"unknown option {key!r} in {prefix}:{rest}; valid options: {valid}")
        if not eq:
            raise DiffexError(f"option {key!r} in {prefix}:{rest} needs a value: {key}=...")
        if key in options:
            raise DiffexError(f"option {key!r} given twice in {prefix}:{rest}")
        options[key] = unquote(value)
    return target, options


def parse_bool(raw: str) -> bool:
    """A TRUE or FALSE word; ValueError otherwise."""
    value = str(raw).strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(raw)


def flag(options: Mapping[str, str], key: str) -> bool:
    try:
        return parse_bool(options.get(key, "0"))
    except ValueError:
        raise DiffexError(f"option {key} must be 1 or 0, got {options[key]!r}") from None


def typed(prefix: str, options: Mapping[str, str], parsers: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    """Each raw option through its parser (int, float, str, parse_bool, ...); a bad value is one line."""
    out: dict[str, Any] = {}
    for key, raw in options.items():
        parser = parsers[key]
        try:
            out[key] = parser(raw)
        except ValueError:
            kind = "boolean (1/0, true/false, yes/no, on/off)" if parser is parse_bool else parser.__name__
            raise DiffexError(f"{prefix} option {key}={raw!r} is not a valid {kind}") from None
    return out


def float_list(options: Mapping[str, str], key: str, default: tuple[float, ...], n: int = 3) -> tuple[float, ...]:
    """`0.5` or `0.485,0.456,0.406` -> n floats (one value is repeated n times)."""
    if key not in options:
        return default
    try:
        values = tuple(float(v) for v in options[key].split(","))
    except ValueError:
        raise DiffexError(f"option {key} must be 1 or {n} comma-separated numbers, got {options[key]!r}") from None
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise DiffexError(f"option {key} must be 1 or {n} comma-separated numbers, got {options[key]!r}")
    return values


def name_list(options: Mapping[str, str], key: str) -> tuple[str, ...] | None:
    """`a,b,c` -> ("a", "b", "c"); None when absent; empty or repeated names are errors."""
    if key not in options:
        return None
    names = tuple(n.strip() for n in options[key].split(","))
    if not names or any(not n for n in names):
        raise DiffexError(f"option {key} has an empty name: {options[key]!r}")
    if len(set(names)) != len(names):
        raise DiffexError(f"option {key} repeats a name: {options[key]!r}")
    return names


def build(spec: str, table: Mapping[str, str], kind: str, valid: str, needs_colon: bool = False) -> Any:
    """Call the factory `table[prefix]` ("module:function") with the text after "prefix:".
    Raises DiffexError naming the valid SPECs when the prefix is unknown. Backends are imported
    here, on first use, so `diffex query` never pays for torch."""
    prefix, sep, rest = str(spec).partition(":")
    if "?" in prefix:  # options without a model (`demo?fail=0.2`): the factory gets "?fail=0.2"
        prefix, query = prefix.split("?", 1)
        rest, sep = "?" + query + sep + rest, ""
    if prefix not in table or (needs_colon and not sep):
        raise DiffexError(f"unknown {kind} spec {spec!r}; valid: {valid}")
    module_name, factory = table[prefix].split(":")
    return getattr(importlib.import_module(module_name), factory)(rest)
