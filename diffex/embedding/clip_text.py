"""CLIP's text tower in numpy, for query texts.

`diffex search "a face with a goatee"` encodes one short text. Through transformers that
means importing torch and transformers' model code first (about 3 s of a 3.5 s command on 2
cores), for a forward pass of milliseconds. This module runs the same computation as
transformers' `CLIPModel.get_text_features` (CLIPTextModel: token + position embeddings,
pre-LayerNorm transformer layers with causal attention, final LayerNorm, the state at EOS,
`text_projection`), reading the text weights from the same safetensors file and tokenizing
with the `tokenizers` library from the same tokenizer.json. Tests check it against
transformers to 1e-5 on random CLIPs and on the demo CLIP.

It is used only where it is known to be exact: a CLIPModel folder with float32 safetensors, a
tokenizer.json and an activation implemented here (`open` returns None otherwise), and, in
search, only for an embedder whose files are known to give the stored embedder id
(`stored_encoder`, through a memo the full embedder writes when it computes its id).
Anything else, and every image query, goes through the full transformers embedder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DiffexError
from ..hashing import hash_files, hash_json, memo_get, memo_put
from .base import Embedder

MEMO = "embedder-ids.json"  # in hashing.user_cache_dir(): hash of a model folder's files -> embedder id
# Bump when ClipEmbedder.embedder_id's recipe changes, so old memo entries stop matching.
ID_RECIPE = "clip-embedder-id-1"
_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")
_ACTIVATIONS = {
    "quick_gelu": lambda x: x / (1.0 + np.exp(np.minimum(-1.702 * x, 80.0))),  # x * sigmoid(1.702 x)
    "gelu_new": lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))),
    "gelu_pytorch_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))),
    "relu": lambda x: np.maximum(x, 0),
}


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


class ClipTextEncoder:
    """The text half of a saved CLIPModel, float32 numpy. `embed_texts` returns unit vectors."""

    def __init__(self, weights: dict[str, np.ndarray], config: dict, tokenizer, max_length: int):
        self.w = weights
        self.config = config
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-5))
        self.eos = config.get("eos_token_id")
        self.act = _ACTIVATIONS[config.get("hidden_act", "quick_gelu")]

    @classmethod
    def open(cls, directory: "str | Path") -> "ClipTextEncoder | None":
        """The encoder of the CLIPModel saved in `directory`, or None when this module cannot
        reproduce it exactly (then use the transformers embedder)."""
        directory = Path(directory)
        try:
            from safetensors import safe_open
            from tokenizers import Tokenizer
        except ImportError:  # pragma: no cover - both come with transformers
            return None
        try:
            config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
            tok_config_file = directory / "tokenizer_config.json"
            tok_config = json.loads(tok_config_file.read_text(encoding="utf-8")) if tok_config_file.is_file() else {}
        except (OSError, ValueError):
            return None
        text = config.get("text_config") or {}
        weights_file = directory / "model.safetensors"
        if (config.get("model_type") != "clip" or not weights_file.is_file()
                or not (directory / "tokenizer.json").is_file()
                or text.get("hidden_act", "quick_gelu") not in _ACTIVATIONS
                or text.get("position_embedding_type", "absolute") != "absolute"):
            return None
        needed = ["text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
                  "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias", "text_projection.weight"]
        try:
            n_layers = int(text["num_hidden_layers"])
            for i in range(n_layers):
                p = f"text_model.encoder.layers.{i}."
                needed += [p + f"{m}.{k}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                    "self_attn.out_proj", "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2")
                           for k in ("weight", "bias")]
            with safe_open(str(weights_file), framework="numpy") as f:
                present = set(f.keys())
                if not set(needed) <= present:
                    return None
                weights = {k: f.get_tensor(k) for k in needed}
            tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception:  # an unreadable or unusual file: the full embedder will say what is wrong
            return None
        if any(w.dtype != np.float32 for w in weights.values()):
            return None  # transformers would compute in that dtype; stay exact or stay out
        n_positions = weights["text_model.embeddings.position_embedding.weight"].shape[0]
        model_max = tok_config.get("model_max_length")
        max_length = int(min(model_max, n_positions)) if isinstance(model_max, (int, float)) and model_max > 0 else n_positions
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)
        return cls(weights, text, tokenizer, max_length)

    @property
    def dim(self) -> int:
        return int(self.w["text_projection.weight"].shape[0])

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(str(text)).ids

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            vec = self._project(self._pooled(self.ids(text)))
            out[row] = vec / max(float(np.linalg.norm(vec)), 1e-12)
        return out

    def _pooled(self, ids: list[int]) -> np.ndarray:
        w, eps = self.w, self.eps
        ids_arr = np.asarray(ids, dtype=np.int64)
        n = len(ids_arr)
        x = w["text_model.embeddings.token_embedding.weight"][ids_arr] + w["text_model.embeddings.position_embedding.weight"][:n]
        d = x.shape[-1]
        hd = d // self.heads
        causal = np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)
        for i in range(self.layers):
            p = f"text_model.encoder.layers.{i}."

            def lin(h, name):
                return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            h = _layer_norm(x, w[p + "layer_norm1.weight"], w[p + "layer_norm1.bias"], eps)
            q = lin(h, "self_attn.q_proj").reshape(n, self.heads, hd).transpose(1, 0, 2)
            k = lin(h, "self_attn.k_proj").reshape(n, self.heads, hd).transpose(1, 0, 2)
            v = lin(h, "self_attn.v_proj").reshape(n, self.heads, hd).transpose(1, 0, 2)
            scores = (q @ k.transpose(0, 2, 1)) * np.float32(hd**-0.5) + causal
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = scores / scores.sum(-1, keepdims=True)
            x = x + lin((attn @ v).transpose(1, 0, 2).reshape(n, d), "self_attn.out_proj")
            h = _layer_norm(x, w[p + "layer_norm2.weight"], w[p + "layer_norm2.bias"], eps)
            x = x + lin(self.act(lin(h, "mlp.fc1")).astype(np.float32), "mlp.fc2")
        x = _layer_norm(x, w["text_model.final_layer_norm.weight"], w["text_model.final_layer_norm.bias"], eps)
        # where transformers pools: the highest id under the legacy eos_token_id == 2, else the first EOS
        at = int(ids_arr.argmax()) if self.eos == 2 else int(np.argmax(ids_arr == self.eos))
        return x[at]

    def _project(self, pooled: np.ndarray) -> np.ndarray:
        return pooled @ self.w["text_projection.weight"].T


# ---------------------------------------------------------------------------- identity
def files_key(directory: "str | Path") -> str:
    """What a model folder's embedder id depends on: its files' bytes (memoised by name, size
    and mtime in hashing.hash_files), the transformers version that reads them, the recipe."""
    from importlib.metadata import PackageNotFoundError, version

    directory = Path(directory)
    files = [p for p in directory.rglob("*") if p.is_file() and p.suffix in _FILE_SUFFIXES and ".cache" not in p.parts]
    try:
        transformers_version = version("transformers")
    except PackageNotFoundError:  # pragma: no cover
        transformers_version = "none"
    return hash_json([hash_files(directory, files), transformers_version, ID_RECIPE])


def remember_embedder_id(directory: "str | Path", embedder_id: str) -> None:
    """Record that the files in `directory` make the embedder `embedder_id` (best effort)."""
    try:
        memo_put(MEMO, files_key(directory), embedder_id)
    except OSError:
        pass


class StoredTextEncoder(Embedder):
    """Query texts for the vectors a store holds, encoded by ClipTextEncoder. Image queries
    need the full embedder (`embed_images` raises)."""

    def __init__(self, encoder: ClipTextEncoder, embedder_id: str, spec: str, name: str):
        self.encoder = encoder
        self._id = embedder_id
        self.spec = spec
        self.name = name

    @property
    def embedder_id(self) -> str:
        return self._id

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.embed_texts(texts)

    def embed_images(self, images):
        raise DiffexError("the numpy CLIP text encoder embeds texts only; load the embedder for images")


def stored_encoder(row: dict) -> StoredTextEncoder | None:
    """A text encoder for the stored embedder `row` (embedder_id, spec, name) when its model is
    present, ClipTextEncoder can run it, and its files are known to give that id; else None."""
    from . import clip

    spec = row.get("spec") or ""
    try:
        if spec == "demo":
            directory = clip.DEMO_CLIP_DIR
        elif spec.startswith("clip:"):  # options (device, batch) do not change vectors
            from .. import models

            directory = models.resolve("CLIP", spec[len("clip:"):].partition("?")[0]).path
        else:
            return None
        if memo_get(MEMO, files_key(directory)) != row["embedder_id"]:
            return None  # unknown files (or changed since indexing): the full embedder decides
    except (DiffexError, OSError):
        return None
    encoder = ClipTextEncoder.open(directory)
    return StoredTextEncoder(encoder, row["embedder_id"], spec, row.get("name") or "clip") if encoder else None
