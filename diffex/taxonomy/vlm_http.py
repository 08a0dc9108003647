"""The `openai:MODEL` VLM: an OpenAI-compatible chat-completions endpoint over urllib (no client
library); `OPENAI_BASE_URL` (default https://api.openai.com/v1) and `OPENAI_API_KEY`."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request

from PIL import Image

from ..errors import DiffexError, UsageError
from .vlm import data_url

DEFAULT_BASE_URL = "https://api.openai.com/v1"


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
