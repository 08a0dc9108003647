"""The `hf:MODEL_ID_OR_PATH` VLM: a local transformers image-text-to-text model (AutoProcessor +
AutoModelForImageTextToText, greedy decoding), loaded by diffex's policy (diffex/models.py):
a local folder or the local Hugging Face cache, safetensors, `trust_remote_code` off."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .. import models, specs
from ..errors import DiffexError, UsageError
from ..hashing import sha256_bytes
from .vlm import _thumbnail


class HFVLM:
    """A local transformers image-text-to-text model, loaded on first use, greedy decoding."""

    def __init__(self, model_id: str, max_new_tokens: int = 1024, device: str = "cpu"):
        if not model_id:
            raise UsageError("hf VLM spec needs a model id or path, e.g. hf:HuggingFaceTB/SmolVLM-256M-Instruct")
        self.spec = f"hf:{model_id}"
        model_id, options = specs.split_spec("hf", model_id, {"allow_pickle": "1 accepts pickle weights"})
        self.allow_pickle = specs.flag(options, "allow_pickle")
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
