"""The `ledits:` SPEC: its options and defaults, the model's identity (hub commit or the bytes
of a local directory), and the key of a cached inversion."""


from __future__ import annotations

from typing import Any


from ... import specs
from ...errors import DiffexError
from ...hashing import hash_json
# the model's identity is shared with the other diffusers editors (ip2p)
from ..diffusers_model import hub_commit as _hub_commit, local_model_hash as _local_model_hash  # noqa: F401


# Option -> (parser, default). Defaults are the DiffEx reference code's settings;
# device/dtype defaults depend on the machine and are resolved in `from_spec`.
OPTIONS: dict[str, Any] = {
    "size": int,
    "steps": int,
    "skip": float,
    "guidance": float,
    "threshold": float,
    "device": str,
    "dtype": str,
    "batch": int,
    "safety": specs.parse_bool,
    "revision": str,
    "allow_pickle": specs.parse_bool,
}
DEFAULTS: dict[str, Any] = {
    "size": 512, "steps": 50, "skip": 0.1, "guidance": 10.0, "threshold": 0.75, "batch": 1, "safety": True,
    "allow_pickle": False,
}
DTYPES = ("float16", "bfloat16", "float32")
# The reconstruction (null edit) is taken from the inversion of this seed; samples 0..k-1
# of the indexer share that inversion, so the baseline costs no extra inversion.
RECONSTRUCT_SEED = 0
# Inversions live in <cache>/inversions/ab/<inversion_key>.safetensors (+ .json sidecar).
INVERSIONS = "inversions"


def inversion_key(image_id: str, editor_id: str, seed: int) -> str:
    """Cache key of one image's inversion by one editor for one seed (`diffex verify` checks
    cached inversions against the store with it)."""
    return hash_json({"image": image_id, "editor": editor_id, "seed": int(seed)})[:32]


def parse_spec(rest: str) -> tuple[str, dict[str, str]]:
    """Split `MODEL[?k=v&...]` into the model and raw option strings (diffex/specs.py rules)."""
    if not rest.partition("?")[0]:
        raise DiffexError("ledits: needs a model id or path, e.g. ledits:stable-diffusion-v1-5/stable-diffusion-v1-5")
    return specs.split_spec("ledits", rest, dict.fromkeys(OPTIONS, ""))
