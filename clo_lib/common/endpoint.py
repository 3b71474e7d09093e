"""A minimal client for OpenAI-compatible chat endpoints (OpenAI, vLLM, llama.cpp server, ...).

Used by the LLM translator and the LLM judge. Standard library only, so no SDK version has to match the server.
The key is read from the environment variable named in params at call time; it is sent in the Authorization header
and never printed, logged or written anywhere. Transient failures (connection errors, 429, 5xx) are retried with
exponential back-off; other HTTP errors fail at once with the server's message.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from clo_lib.common.errors import CloError


class EndpointError(CloError, RuntimeError):
    pass


@dataclass
class ChatEndpoint:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    retries: int = 5
    backoff_s: float = 1.0  # first wait; doubles each retry
    timeout_s: float = 120.0

    def check(self) -> None:
        """Fail before any work when the endpoint cannot be used: no URL, or the key variable is unset."""
        if not self.base_url:
            raise EndpointError("no endpoint URL configured; set the *_base_url field in params")
        if not os.environ.get(self.api_key_env):
            raise EndpointError(f"environment variable {self.api_key_env} is not set; export the endpoint's key "
                                "there (a local server without auth accepts any value, e.g. EMPTY)")

    def chat(self, messages: list[dict], temperature: float = 0.0, max_tokens: int | None = None) -> str:
        """The assistant message's text for one chat request."""
        return self.completion(messages, temperature, max_tokens)[0]

    def completion(self, messages: list[dict], temperature: float = 0.0,
                   max_tokens: int | None = None) -> tuple[str, str | None]:
        """(the assistant message's text, the choice's finish_reason: "length" when max_tokens stopped it)."""
        self.check()
        body = {"model": self.model, "messages": messages, "temperature": temperature}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        request = urllib.request.Request(
            self.base_url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode("utf-8"), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {os.environ[self.api_key_env]}"},
        )
        wait = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                choice = payload["choices"][0]
                return choice["message"]["content"] or "", choice.get("finish_reason")
            except urllib.error.HTTPError as err:
                transient = err.code == 429 or err.code >= 500
                detail = err.read().decode("utf-8", "replace")[:300]
                if not transient or attempt == self.retries:
                    raise EndpointError(f"{self.base_url}: HTTP {err.code} from the endpoint: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == self.retries:
                    raise EndpointError(
                        f"{self.base_url}: unreachable after {self.retries + 1} tries ({err})") from None
            except (KeyError, IndexError, json.JSONDecodeError):
                raise EndpointError(f"{self.base_url}: the reply is not an OpenAI chat completion") from None
            time.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")
