"""A minimal client of an OpenAI-compatible chat endpoint (``POST <base>/chat/completions``).

Spoken with the standard library (``urllib``), so it needs no SDK and works with any server of
that protocol: OpenAI, vLLM's ``vllm serve``, SGLang, TGI, llama.cpp, LiteLLM. Request body
(OpenAI API reference, "Create chat completion"): ``model``, ``messages``
(``[{"role", "content"}, ...]``), ``temperature``, ``top_p``, ``max_tokens``, ``n`` = 1 and
``seed`` when given. The reply's ``choices[0].message.content`` and ``finish_reason`` are used.

Stop strings are not sent: OpenAI's API drops the stop string from the output and servers
differ in whether they can keep it, so the caller cuts the text at its stop strings itself
(see :mod:`megatron_brrm.distill.teachers`).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Dict, List, Optional

RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)


class ChatEndpointError(RuntimeError):
    """The endpoint refused a request or answered something that is not a chat completion
    (the message names the URL, the HTTP status and the start of the reply)."""


@dataclass
class ChatCompletion:
    """One answer: ``text`` (``message.content``; ``""`` when null) and ``finish_reason``
    (``"stop"``, ``"length"``, ... as the server reports it)."""

    text: str
    finish_reason: str


def chat_completions_url(url: str) -> str:
    """The endpoint URL: ``url`` itself when it ends in ``/chat/completions``, else
    ``url + "/chat/completions"`` (a base URL as ``OPENAI_BASE_URL``, e.g. ``http://host:8000/v1``).

    Raises:
        ValueError: not an ``http://`` or ``https://`` URL.
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"teacher URL {url!r} must start with http:// or https:// (e.g. http://localhost:8000/v1)")
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class OpenAIChatClient:
    """Send chat-completion requests to one endpoint.

    Args:
        url: base URL (``http://host:8000/v1``) or the full ``.../chat/completions`` URL.
        model: the ``model`` field (the served model name).
        api_key: sent as ``Authorization: Bearer <key>`` when given.
        timeout_s: per-request timeout, seconds.
        max_retries: retries of a request that failed with a connection error or HTTP
            408/409/429/5xx, with exponential back-off from ``backoff_s`` seconds.

    Raises:
        ValueError: a malformed URL.
    """

    def __init__(self, url: str, model: str, api_key: Optional[str] = None, timeout_s: float = 600.0,
                 max_retries: int = 3, backoff_s: float = 1.0):
        self.url = chat_completions_url(url)
        self.model = model
        self.api_key = api_key
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)

    def complete(self, messages: List[Dict[str, str]], *, temperature: float = 1.0, top_p: float = 1.0,
                 max_tokens: Optional[int] = None, seed: Optional[int] = None) -> ChatCompletion:
        """One completion of ``messages``.

        Raises:
            ChatEndpointError: an HTTP error other than a retried one, retries exhausted, or a
                reply without ``choices[0].message``.
        """
        body: Dict[str, object] = {"model": self.model, "messages": messages, "temperature": float(temperature),
                                   "top_p": float(top_p), "n": 1}
        if max_tokens is not None:
            body["max_tokens"] = int(max_tokens)
        if seed is not None:
            body["seed"] = int(seed)
        reply = self._post(json.dumps(body).encode("utf-8"))
        try:
            choice = reply["choices"][0]
            text = choice["message"].get("content") or ""
            return ChatCompletion(text=str(text), finish_reason=str(choice.get("finish_reason") or "stop"))
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ChatEndpointError(f"{self.url}: the reply is not a chat completion (no choices[0].message): "
                                    f"{json.dumps(reply)[:300]}") from None

    def _post(self, data: bytes) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                last = f"HTTP {exc.code}: {detail}"
                if exc.code in RETRY_STATUS:
                    continue
                raise ChatEndpointError(f"{self.url}: {last}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = f"cannot connect ({getattr(exc, 'reason', exc)})"
                continue
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                raise ChatEndpointError(f"{self.url}: the reply is not JSON: {raw[:300]!r}") from None
        raise ChatEndpointError(f"{self.url}: giving up after {self.max_retries + 1} attempt(s); last error: {last}")
