"""The pluggable LLM of the curator: a protocol, an OpenAI-compatible client and a local model.

``make_llm("http://127.0.0.1:8000/v1#qwen")`` talks to a server; ``make_llm("SmolLM2-135M-Instruct")``
loads a model through polyverse on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from ...errors import ConfigError, PolyverseError


@runtime_checkable
class LLM(Protocol):
    """Anything that completes a prompt: the curator's only need."""

    def complete(self, prompt: str, max_tokens: int) -> str: ...


class LLMError(PolyverseError):
    """One request failed (timeout, bad answer): that sample falls back or is rejected."""


class LLMUnavailable(LLMError):
    """The LLM cannot be used at all (unreachable, refused, no model): the run stops."""


@dataclass(frozen=True)
class EndpointConfig:
    """An OpenAI-compatible endpoint: ``url`` (``/v1`` added to a bare host), ``model`` (None: the
    first that ``/v1/models`` lists), per-request ``timeout`` in seconds, ``max_retries``."""

    url: str
    model: str | None = None
    timeout: float = 120.0
    max_retries: int = 1
    temperature: float = 0.0

    def __post_init__(self):
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"not an http(s) URL: {self.url!r}")
        if self.timeout <= 0 or self.max_retries < 0:
            raise ConfigError(f"timeout must be > 0 and max_retries >= 0, got {self.timeout}, {self.max_retries}")

    @property
    def base_url(self) -> str:
        """``http://host:8000`` -> ``http://host:8000/v1``; a URL with a path is kept as given."""
        parts = urlsplit(self.url)
        path = parts.path if parts.path.strip("/") else "/v1"
        return urlunsplit((parts.scheme, parts.netloc, path.rstrip("/"), "", ""))


class OpenAILLM:
    """Chat completions from an OpenAI-compatible server (one user message, temperature 0)."""

    def __init__(self, cfg: EndpointConfig):
        import openai

        self.cfg = cfg
        self._openai = openai
        self._client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get("OPENAI_API_KEY") or "none",
                                     timeout=cfg.timeout, max_retries=cfg.max_retries)
        self._model = cfg.model

    @property
    def model(self) -> str:
        """The model name: given, or the first one the server lists (asked once)."""
        if self._model is None:
            models = self._call(lambda: list(self._client.models.list()))
            if not models:
                raise LLMUnavailable(f"the LLM endpoint {self.cfg.base_url} lists no models: name one as URL#model")
            self._model = models[0].id
        return self._model

    def complete(self, prompt: str, max_tokens: int) -> str:
        """The assistant's reply to ``prompt`` (at most ``max_tokens`` tokens)."""
        model = self.model
        resp = self._call(lambda: self._client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}],
            max_tokens=int(max_tokens), temperature=self.cfg.temperature))
        if not getattr(resp, "choices", None):
            raise LLMError(f"the LLM endpoint {self.cfg.base_url} answered without choices")
        return resp.choices[0].message.content or ""

    def _call(self, fn):
        oa, url = self._openai, self.cfg.base_url
        try:
            return fn()
        except oa.APITimeoutError:
            raise LLMError(f"the LLM endpoint {url} did not answer within {self.cfg.timeout:g} s") from None
        except oa.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise LLMUnavailable(f"cannot reach the LLM endpoint {url} ({type(cause).__name__}: {cause}); "
                                 "is an OpenAI-compatible server running there?") from None
        except (oa.AuthenticationError, oa.PermissionDeniedError, oa.NotFoundError) as exc:
            raise LLMUnavailable(f"the LLM endpoint {url} refused: {exc.status_code} {_msg(exc)}") from None
        except oa.APIStatusError as exc:
            raise LLMError(f"the LLM endpoint {url} answered {exc.status_code}: {_msg(exc)}") from None
        except oa.OpenAIError as exc:
            raise LLMError(f"the LLM endpoint {url} failed: {exc}") from None


def _msg(exc) -> str:
    return str(getattr(exc, "message", exc))[:200]


class LocalLLM:
    """A model loaded through polyverse on first use; replies with ``generate(..., chat=True)``."""

    def __init__(self, spec: str, method: str = "auto"):
        self.spec, self.method = spec, method
        self._model = None

    def complete(self, prompt: str, max_tokens: int) -> str:
        if self._model is None:
            import polyverse

            self._model = polyverse.load(self.spec)  # a bad name raises ModelNotFound: the run stops
        try:
            return self._model.generate(prompt, method=self.method, max_new_tokens=int(max_tokens), chat=True).text
        except Exception as exc:  # a prompt over the context, a failed pass: this sample falls back
            raise LLMError(f"local model {self.spec} failed: {exc}") from exc


def make_llm(spec: str, *, timeout: float = 120.0, max_retries: int = 1) -> LLM:
    """``http(s)://host[:port][/v1][#model]`` -> OpenAILLM; anything else -> LocalLLM(spec).

    >>> make_llm("http://127.0.0.1:8000#my-model").cfg.model
    'my-model'
    """
    spec = spec.strip()
    if not spec:
        raise ConfigError("--llm needs a URL or a model name")
    if spec.startswith(("http://", "https://")):
        url, _, model = spec.partition("#")
        return OpenAILLM(EndpointConfig(url, model or None, timeout, max_retries))
    return LocalLLM(spec)
